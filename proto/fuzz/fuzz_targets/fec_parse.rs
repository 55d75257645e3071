//! Any bytes through `fec::parse` and the reassembler's FEC path: never panics (raptorq panics
//! on some malformed packets, so this is the guard that parse checks everything first), never
//! completes a message from garbage, and what parses is within the limits.
//!
//! The first input byte is a mode: bit 0 writes a valid magic/version/kind and sane OTI fields
//! over the header, bit 1 then fixes the CRC, so the fuzzer reaches the parameter checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_proto::envelope::MAX_ENVELOPE_BYTES;
use outpost_proto::fec::{
    self, FEC_HEADER_LEN, FEC_VERSION, MAX_BLOCK_BYTES, MAX_REPAIR_SYMBOLS, MAX_SOURCE_SYMBOLS,
    MAX_WINDOW_ENVELOPES,
};
use outpost_proto::frame::MAGIC;
use outpost_proto::reassembly::{Reassembler, ReassemblyLimits};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut d = rest.to_vec();
    if mode & 1 == 1 && d.len() >= FEC_HEADER_LEN + 4 {
        d[..2].copy_from_slice(&MAGIC);
        d[2] = FEC_VERSION;
        d[3] = 1;
        d[17] = 0;
        d[20] = 1;
        d[21] = 0;
        d[22] = 1;
        d[23] = 8;
        d[30] = 0;
        d[31] = 0;
        if mode & 2 == 2 {
            d[32..36].fill(0);
            let crc = crc32(&d);
            d[32..36].copy_from_slice(&crc.to_be_bytes());
        }
    }
    if let Ok((h, packet)) = fec::parse(&d, MAX_BLOCK_BYTES) {
        assert!(h.source_symbols <= MAX_SOURCE_SYMBOLS);
        assert!(h.repair_symbols <= MAX_REPAIR_SYMBOLS);
        assert!(h.transfer_len as usize <= MAX_BLOCK_BYTES);
        assert!(h.envelopes >= 1 && h.envelopes <= MAX_WINDOW_ENVELOPES);
        assert_eq!(packet.len(), 4 + usize::from(h.symbol_size));
    }
    // Any bytes as a rebuilt window: split never panics and returns what the count says.
    if let Some((&n, content)) = rest.split_first()
        && let Ok(envelopes) = fec::split(content, u16::from(n))
    {
        assert_eq!(envelopes.len(), usize::from(n));
        assert!(
            envelopes
                .iter()
                .all(|e| !e.is_empty() && e.len() <= MAX_ENVELOPE_BYTES)
        );
    }
    let mut r = Reassembler::new(ReassemblyLimits::default());
    // The same datagram twice, and from two sources: duplicates and tables exercised.
    for (source, now) in [(0u8, 0u64), (0, 1), (1, 2)] {
        if let Ok(messages) = r.push(source, &d, now) {
            // A single valid symbol can complete a one-symbol block; what it holds must split.
            assert!(
                messages
                    .iter()
                    .all(|m| !m.is_empty() && m.len() <= MAX_ENVELOPE_BYTES)
            );
        }
    }
    let _ = r.poll_dropped(u64::MAX);
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
