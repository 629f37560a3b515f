//! Any produce payload: batch validation must accept or refuse it, never
//! panic; whatever it accepts must parse again batch by batch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_broker::log::{batch, validate_batches};

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = validate_batches(bytes::Bytes::copy_from_slice(data), usize::MAX) {
        let mut pos = 0;
        for h in &v.headers {
            let again = batch::parse_and_verify(&v.bytes[pos..]).expect("accepted batch re-parses");
            assert_eq!(again.len, h.len);
            pos += h.len;
        }
        assert_eq!(pos, v.bytes.len());
    }
});
