//! Any bytes a client can put in a frame: decoding must return a request or
//! an error, never panic or abort.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sluice_protocol::decode_request(bytes::Bytes::copy_from_slice(data));
});
