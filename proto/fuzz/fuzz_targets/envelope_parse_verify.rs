//! Envelope parsing and verification under a fixed key.
//!
//! The first byte picks the mode:
//! - even: the rest is an arbitrary wire form: parse, verify, decode the body; nothing may
//!   panic, and (the fuzzer cannot sign) nothing may verify;
//! - odd: the rest is a list of (position, xor) edits applied to a valid sealed envelope;
//!   an envelope that differs from the original in any byte must not verify (the outer
//!   array must be canonical too: see `outer_array_header_must_be_exact` in proto/tests).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outpost_proto::chain::ChainTip;
use outpost_proto::envelope;
use outpost_proto::model::{Body, Summary};
use outpost_proto::{AgentId, SigningKey, ZoneId};

/// RFC 8410 PKCS#8 v1 prefix for an Ed25519 private key; the 32-byte seed follows.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

struct Fixture {
    key: SigningKey,
    wire: Vec<u8>,
    verified: envelope::Verified,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut doc = PKCS8_PREFIX.to_vec();
        doc.extend_from_slice(&[7u8; 32]);
        let key = SigningKey::from_pkcs8(&doc).expect("fixed test key loads");
        let agent = AgentId::new("gw-fuzz").expect("valid id");
        let zone = ZoneId::new("cell-1").expect("valid id");
        let body = Body::Summary(Summary {
            agent: agent.clone(),
            zone: zone.clone(),
            started_ms: 1,
            finished_ms: 2,
            gateway: None,
            assets: vec![],
        });
        let wire = envelope::seal(&key, &agent, &zone, &ChainTip::GENESIS, 3, &body)
            .expect("seals")
            .wire;
        let verified = envelope::parse(&wire)
            .and_then(|u| u.verify(&key.public_key()))
            .expect("fixture verifies");
        Fixture {
            key,
            wire,
            verified,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(u) = envelope::parse(rest) {
            let _ = u.header();
            if let Ok(v) = u.verify(&f.key.public_key()) {
                // Only the fixture's own wire form can get here.
                assert_eq!(rest, &f.wire[..]);
                assert_eq!(v.hash, f.verified.hash);
                let _ = v.body();
            }
        }
        return;
    }
    let mut wire = f.wire.clone();
    for edit in rest.chunks_exact(3) {
        let at = usize::from(u16::from_be_bytes([edit[0], edit[1]])) % wire.len();
        wire[at] ^= edit[2];
    }
    if wire == f.wire {
        return;
    }
    let verdict = envelope::parse(&wire).and_then(|u| u.verify(&f.key.public_key()));
    assert!(verdict.is_err(), "an edited envelope verified");
});
