//! Any bytes through `frame::parse`: never panics; what parses is consistent, and a
//! one-datagram message re-frames to exactly the same bytes (the framing is canonical).
//!
//! The first input byte is a mode: bit 0 writes a valid magic/version/kind over the header,
//! bit 1 then fixes the CRC, so the fuzzer reaches the length and index checks behind them
//! instead of spending its time guessing a CRC-32.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_proto::envelope::MAX_ENVELOPE_BYTES;
use outpost_proto::frame::{self, FRAME_VERSION, HEADER_LEN, MAGIC, MAX_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut d = rest.to_vec();
    if mode & 1 == 1 && d.len() >= HEADER_LEN {
        d[..2].copy_from_slice(&MAGIC);
        d[2] = FRAME_VERSION;
        d[3] = 0;
        if mode & 2 == 2 {
            d[20..24].fill(0);
            let crc = crc32(&d);
            d[20..24].copy_from_slice(&crc.to_be_bytes());
        }
    }
    let Ok((h, payload)) = frame::parse(&d, MAX_ENVELOPE_BYTES) else {
        return;
    };
    assert!(h.index < h.count);
    assert!(payload.len() <= MAX_PAYLOAD);
    assert!(h.total_len as usize <= MAX_ENVELOPE_BYTES);
    if h.count == 1 {
        let again = frame::fragment(h.message_id, payload).expect("a parsed payload frames");
        assert_eq!(again, vec![d.clone()]);
    }
});

/// CRC-32 (IEEE), bitwise: the fuzz crate keeps its dependencies to proto and libfuzzer.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
