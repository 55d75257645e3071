//! Any bytes through the bounded CBOR decoder as a `Body`: never panics, and whatever decodes
//! re-encodes to something that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_proto::Body;
use outpost_proto::cbor;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = cbor::decode::<Body>(data) else {
        return;
    };
    let bytes = cbor::encode(&body).expect("a decoded body encodes");
    assert_eq!(
        cbor::decode::<Body>(&bytes).expect("re-encoded body decodes"),
        body
    );
});
