//! Any bytes through the bounded CBOR decoder as a `Body`: never panics, and whatever decodes
//! re-encodes to something that decodes to the same value. A decoded change set's bound check
//! (what the collector runs before applying it) never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_proto::Body;
use outpost_proto::cbor;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = cbor::decode::<Body>(data) else {
        return;
    };
    if let Body::Changes(set) = &body {
        let _ = set.check();
    }
    let bytes = cbor::encode(&body).expect("a decoded body encodes");
    assert_eq!(
        cbor::decode::<Body>(&bytes).expect("re-encoded body decodes"),
        body
    );
});
