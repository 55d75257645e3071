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
use outpost_proto::fec::{self, FecParams, Window};
use outpost_proto::frame;
use outpost_proto::reassembly::{MAX_PENDING, Reassembler, ReassemblyLimits};

/// Sources at and above this one only ever send garbage.
const GARBAGE: u16 = 256;

#[derive(Debug, Arbitrary)]
enum Op {
    /// Cut a new message of `len` bytes (filled from `fill`) from `source` into fragments.
    NewMessage { source: u8, len: u16, fill: u8 },
    /// A window of `count` envelopes of about `len` bytes each from `source`, FEC-coded (first
    /// round, then the repeat round when `repeat`).
    NewWindow {
        source: u8,
        count: u8,
        len: u16,
        fill: u8,
        repeat: bool,
    },
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
    let mut originals: HashMap<(u8, u64, usize), Vec<u8>> = HashMap::new();
    let mut now = 0u64;
    for op in input.ops.into_iter().take(512) {
        let pushed = match op {
            Op::NewMessage { source, len, fill } => {
                let id = messages.len() as u64;
                let body: Vec<u8> = (0..usize::from(len).max(1))
                    .map(|i| (i as u8).wrapping_mul(fill | 1))
                    .collect();
                let parts = frame::fragment(id, &body).expect("fragments");
                originals.insert((source, id, 0), body.clone());
                messages.push((source, id, body, parts));
                continue;
            }
            Op::NewWindow {
                source,
                count,
                len,
                fill,
                repeat,
            } => {
                let id = messages.len() as u64;
                let mut w = Window::new();
                for n in 0..usize::from(count % 16).max(1) {
                    let body: Vec<u8> = (0..(usize::from(len % 4096) + n).max(1))
                        .map(|i| (i as u8 ^ n as u8).wrapping_mul(fill | 1))
                        .collect();
                    w.push(&body).expect("fits");
                    originals.insert((source, id, n), body);
                }
                let params = FecParams {
                    repeat,
                    ..FecParams::default()
                };
                let enc = fec::encode_window(id, &w, params).expect("encodes");
                let mut parts = enc.first;
                parts.extend(enc.repeat);
                messages.push((source, id, Vec::new(), parts));
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
                if matches!(&out, Ok(m) if !m.is_empty()) {
                    assert!(frame::parse_any(&bytes, usize::MAX).is_ok());
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
        if let (source, Ok(completed)) = pushed {
            if source >= GARBAGE {
                continue;
            }
            for done in completed {
                // Message ids are unique here, so the completion is identifiable.
                let matches = originals
                    .iter()
                    .any(|((s, _, _), body)| u16::from(*s) == source && *body == done);
                assert!(matches, "completed a message that was never sent");
            }
        }
    }
});
