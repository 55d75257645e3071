//! A sequence of datagrams into one Reassembler: real fragments of messages (so CRCs are
//! right), pushed in a fuzzer-chosen order with duplicates, corruptions, garbage and clock
//! jumps. Nothing panics, the table stays bounded, and every completed message from a real
//! source is exactly a message that source sent. Garbage comes from sources of its own: the
//! CRC is not authentication (libFuzzer can compute one), so a garbage datagram with a right
//! CRC may legitimately complete a garbage message; it must then at least be a valid frame.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use outpost_proto::frame;
use outpost_proto::reassembly::{MAX_PENDING, Reassembler, ReassemblyLimits};

/// Sources at and above this one only ever send garbage.
const GARBAGE: u16 = 256;

#[derive(Debug, Arbitrary)]
enum Op {
    /// Cut a new message of `len` bytes (filled from `fill`) from `source` into fragments.
    NewMessage { source: u8, len: u16, fill: u8 },
    /// Push fragment `index` of message `message`.
    Push { message: u8, index: u8 },
    /// Push it with one byte changed.
    Corrupt {
        message: u8,
        index: u8,
        at: u16,
        xor: u8,
    },
    /// Push arbitrary bytes.
    Garbage { source: u8, bytes: Vec<u8> },
    /// Let time pass and collect drops.
    Advance { ms: u16 },
}

#[derive(Debug, Arbitrary)]
struct Input {
    small_budget: bool,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let limits = if input.small_budget {
        ReassemblyLimits {
            max_message_bytes: 64 * 1024,
            max_pending_bytes: 100_000,
            timeout_ms: 1_000,
        }
    } else {
        ReassemblyLimits::default()
    };
    let mut r = Reassembler::new(limits);
    let mut messages: Vec<(u8, u64, Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
    let mut originals: HashMap<(u8, u64), Vec<u8>> = HashMap::new();
    let mut now = 0u64;
    for op in input.ops.into_iter().take(512) {
        let pushed = match op {
            Op::NewMessage { source, len, fill } => {
                let id = messages.len() as u64;
                let body: Vec<u8> = (0..usize::from(len).max(1))
                    .map(|i| (i as u8).wrapping_mul(fill | 1))
                    .collect();
                let parts = frame::fragment(id, &body).expect("fragments");
                originals.insert((source, id), body.clone());
                messages.push((source, id, body, parts));
                continue;
            }
            Op::Push { message, index } => {
                let Some((source, _, _, parts)) = messages.get(usize::from(message)) else {
                    continue;
                };
                let part = &parts[usize::from(index) % parts.len()];
                (u16::from(*source), r.push(u16::from(*source), part, now))
            }
            Op::Corrupt {
                message,
                index,
                at,
                xor,
            } => {
                let Some((source, _, _, parts)) = messages.get(usize::from(message)) else {
                    continue;
                };
                let mut part = parts[usize::from(index) % parts.len()].clone();
                let at = usize::from(at) % part.len();
                part[at] ^= xor.max(1);
                let out = r.push(u16::from(*source), &part, now);
                assert!(out.is_err(), "a corrupted datagram was accepted");
                (u16::from(*source), out)
            }
            Op::Garbage { source, bytes } => {
                let from = GARBAGE + u16::from(source);
                let out = r.push(from, &bytes, now);
                if let Ok(Some(_)) = &out {
                    assert!(frame::parse(&bytes, usize::MAX).is_ok());
                }
                (from, out)
            }
            Op::Advance { ms } => {
                now += u64::from(ms);
                let _ = r.poll_dropped(now);
                continue;
            }
        };
        assert!(r.pending() <= MAX_PENDING);
        if let (source, Ok(Some(done))) = pushed {
            if source >= GARBAGE {
                continue;
            }
            // Message ids are unique here, so the completion is identifiable.
            let matches = originals
                .iter()
                .any(|((s, _), body)| u16::from(*s) == source && *body == done);
            assert!(matches, "completed a message that was never sent");
        }
    }
});
