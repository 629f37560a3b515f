//! Any produce payload: batch validation must accept or refuse it, never
//! panic; whatever it accepts must parse again to the same header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::batch::{self, validate_produce};

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = validate_produce(bytes::Bytes::copy_from_slice(data), usize::MAX) {
        let again = batch::parse_and_verify(&v.bytes).expect("accepted batch re-parses");
        assert_eq!(again.len, v.bytes.len());
        assert_eq!(again, v.header);
    }
});
