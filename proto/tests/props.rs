//! Property tests of proto's codecs, envelopes, framing and reassembly.
//!
//! Strategies build arbitrary but valid values (identifiers obey their alphabet); the
//! properties are the ones the rest of Outpost relies on: what is encoded decodes to the same
//! value, what is sealed verifies, a single changed byte never verifies, fragments reassemble
//! in any order with duplicates, and no input panics the parsers.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use outpost_proto::cbor;
use outpost_proto::chain::ChainTip;
use outpost_proto::envelope::{self, Digest, MAX_ENVELOPE_BYTES};
use outpost_proto::frame::{self, MAX_DATAGRAM, MAX_PAYLOAD};
use outpost_proto::model::{
    AssetObservation, Body, DeviceIdentity, Endpoint, Heartbeat, HostDisk, HostExecutable,
    HostFacts, HostList, IdentMethod, ListeningSocket, MAX_PROBE_TARGETS, MAX_PROBE_TEXT,
    NetInterface, PollStatus, ProbeExpect, ProbeOutcome, ProbeReport, ProbeResult, RegisterBlock,
    RegisterKind, SocketProtocol, Summary,
};
use outpost_proto::reassembly::{Reassembler, ReassemblyLimits};
use outpost_proto::{AgentId, SigningKey, ZoneId};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

const ID_PATTERN: &str = "[A-Za-z0-9][A-Za-z0-9._-]{0,63}";

fn agent_id() -> impl Strategy<Value = AgentId> {
    ID_PATTERN.prop_map(|s| AgentId::new(s).expect("pattern yields valid ids"))
}

fn zone_id() -> impl Strategy<Value = ZoneId> {
    ID_PATTERN.prop_map(|s| ZoneId::new(s).expect("pattern yields valid ids"))
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including empty strings and control characters.
    ".{0,24}"
}

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    prop_oneof![
        (text(), any::<u16>()).prop_map(|(host, port)| Endpoint::Tcp { host, port }),
        text().prop_map(|device| Endpoint::Rtu { device }),
    ]
}

fn status() -> impl Strategy<Value = PollStatus> {
    prop_oneof![
        Just(PollStatus::Ok),
        Just(PollStatus::Partial),
        text().prop_map(PollStatus::Unreachable),
    ]
}

fn identity() -> impl Strategy<Value = DeviceIdentity> {
    (
        prop_oneof![
            Just(IdentMethod::None),
            Just(IdentMethod::ReadDeviceIdentification),
            Just(IdentMethod::ReportServerId),
        ],
        vec(option::of(text()), 7),
        proptest::collection::btree_map(any::<u8>(), text(), 0..4),
    )
        .prop_map(|(method, f, other)| DeviceIdentity {
            method,
            vendor_name: f[0].clone(),
            product_code: f[1].clone(),
            revision: f[2].clone(),
            vendor_url: f[3].clone(),
            product_name: f[4].clone(),
            model_name: f[5].clone(),
            user_application_name: f[6].clone(),
            other,
        })
}

fn block() -> impl Strategy<Value = RegisterBlock> {
    (
        text(),
        prop_oneof![
            Just(RegisterKind::Coil),
            Just(RegisterKind::DiscreteInput),
            Just(RegisterKind::Holding),
            Just(RegisterKind::Input),
        ],
        any::<u16>(),
        vec(any::<u16>(), 0..32),
        any::<bool>(),
        digest(),
    )
        .prop_map(|(name, kind, start, values, consistent, hash)| {
            let mut b = RegisterBlock::new(name, kind, start, values);
            if !consistent {
                // A receiver must carry an inconsistent hash faithfully too (and check it).
                b.hash = hash;
            }
            b
        })
}

fn asset() -> impl Strategy<Value = AssetObservation> {
    (
        text(),
        endpoint(),
        any::<u8>(),
        status(),
        identity(),
        vec(block(), 0..4),
        vec(text(), 0..3),
        option::of(text()),
        option::of(text()),
        option::of(text()),
    )
        .prop_map(
            |(
                name,
                endpoint,
                unit_id,
                status,
                identity,
                blocks,
                problems,
                profile,
                serial,
                mac,
            )| {
                AssetObservation {
                    name,
                    endpoint,
                    unit_id,
                    status,
                    identity,
                    blocks,
                    problems,
                    profile,
                    serial,
                    mac,
                }
            },
        )
}

fn host() -> impl Strategy<Value = HostFacts> {
    (
        vec(option::of(text()), 4),
        text(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        vec(
            (text(), option::of(text()), vec(text(), 0..3)).prop_map(|(name, mac, addresses)| {
                NetInterface {
                    name,
                    mac,
                    addresses,
                }
            }),
            0..3,
        ),
        text(),
    )
        .prop_map(
            |(f, cpu_arch, cpu_count, memory_bytes, boot_time, interfaces, agent_version)| {
                HostFacts {
                    hostname: f[0].clone(),
                    os_name: f[1].clone(),
                    os_version: f[2].clone(),
                    kernel_version: f[3].clone(),
                    cpu_arch,
                    cpu_count,
                    memory_bytes,
                    boot_time,
                    interfaces,
                    agent_version,
                    ..HostFacts::default()
                }
            },
        )
        .prop_flat_map(|base| (Just(base), host_lists()))
        .prop_map(
            |(base, (cpu_model, disks, listening, executables, truncated, problems))| HostFacts {
                cpu_model,
                disks,
                listening,
                executables,
                truncated,
                problems,
                ..base
            },
        )
}

type HostLists = (
    Option<String>,
    Vec<HostDisk>,
    Vec<ListeningSocket>,
    Vec<HostExecutable>,
    Vec<HostList>,
    Vec<String>,
);

fn host_lists() -> impl Strategy<Value = HostLists> {
    (
        option::of(text()),
        vec(
            (text(), text(), any::<u64>()).prop_map(|(mount_point, file_system, total_bytes)| {
                HostDisk {
                    mount_point,
                    file_system,
                    total_bytes,
                }
            }),
            0..3,
        ),
        vec(
            (any::<bool>(), any::<u16>(), text(), option::of(text())).prop_map(
                |(tcp, port, address, exe)| ListeningSocket {
                    protocol: if tcp {
                        SocketProtocol::Tcp
                    } else {
                        SocketProtocol::Udp
                    },
                    port,
                    address,
                    exe,
                },
            ),
            0..4,
        ),
        vec(
            (text(), option::of(text())).prop_map(|(name, exe)| HostExecutable { name, exe }),
            0..4,
        ),
        vec(
            prop_oneof![
                Just(HostList::Interfaces),
                Just(HostList::Disks),
                Just(HostList::Listening),
                Just(HostList::Executables),
            ],
            0..2,
        ),
        vec(text(), 0..2),
    )
}

fn summary() -> impl Strategy<Value = Summary> {
    (
        agent_id(),
        zone_id(),
        any::<u64>(),
        any::<u64>(),
        option::of(host()),
        vec(asset(), 0..6),
    )
        .prop_map(
            |(agent, zone, started_ms, finished_ms, gateway, assets)| Summary {
                agent,
                zone,
                started_ms,
                finished_ms,
                gateway,
                assets,
            },
        )
}

fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    (
        agent_id(),
        zone_id(),
        any::<u64>(),
        any::<[u8; 32]>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(agent, zone, last_seq, h, interval_ms, last_summary_seq)| Heartbeat {
                agent,
                zone,
                last_seq,
                last_hash: Digest::of(&h),
                interval_ms,
                last_summary_seq,
            },
        )
}

fn probe_result() -> impl Strategy<Value = ProbeResult> {
    (
        text(),
        text(),
        prop_oneof![Just(ProbeExpect::MustNotReach), Just(ProbeExpect::MayReach)],
        prop_oneof![
            Just(ProbeOutcome::Connected),
            Just(ProbeOutcome::Refused),
            Just(ProbeOutcome::TimedOut),
            Just(ProbeOutcome::Error),
        ],
        any::<u32>(),
        option::of(text()),
    )
        .prop_map(
            |(target, rule, expect, outcome, elapsed_ms, detail)| ProbeResult {
                target,
                rule,
                expect,
                outcome,
                elapsed_ms,
                detail,
            },
        )
}

fn probe_report() -> impl Strategy<Value = ProbeReport> {
    (
        agent_id(),
        zone_id(),
        any::<u64>(),
        any::<u64>(),
        vec(probe_result(), 0..8),
    )
        .prop_map(
            |(agent, zone, started_ms, finished_ms, results)| ProbeReport {
                agent,
                zone,
                started_ms,
                finished_ms,
                results,
            },
        )
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        4 => summary().prop_map(Body::Summary),
        1 => heartbeat().prop_map(Body::Heartbeat),
        1 => probe_report().prop_map(Body::Probes),
    ]
}

/// The agent and zone a body names.
fn origin(body: &Body) -> (&AgentId, &ZoneId) {
    match body {
        Body::Summary(s) => (&s.agent, &s.zone),
        Body::Heartbeat(h) => (&h.agent, &h.zone),
        Body::DataLost(d) => (&d.agent, &d.zone),
        Body::KeyHandover(k) => (&k.agent, &k.zone),
        Body::Probes(p) => (&p.agent, &p.zone),
        Body::Changes(c) => (&c.agent, &c.zone),
    }
}

fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("system RNG").0)
}

fn sealed_wire(body: &Body, seq: u64, time_ms: u64) -> Vec<u8> {
    let (agent, zone) = origin(body);
    let tip = ChainTip {
        seq,
        hash: Digest::of(&seq.to_be_bytes()),
    };
    envelope::seal(key(), agent, zone, &tip, time_ms, body)
        .expect("sealing a bounded body succeeds")
        .wire
}

/// Deterministic shuffle and duplication driven by a seed (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn probe_reports_round_trip_and_bounds_are_judged(r in probe_report()) {
        let body = Body::Probes(r.clone());
        let bytes = cbor::encode(&body).unwrap();
        prop_assert_eq!(cbor::decode::<Body>(&bytes).unwrap(), body);
        // The bounds check agrees with a plain reading of the rules.
        let mut seen = std::collections::BTreeSet::new();
        let texts_ok = r.results.iter().all(|p| {
            [Some(&p.target), Some(&p.rule), p.detail.as_ref()]
                .into_iter()
                .flatten()
                .all(|t| t.len() <= MAX_PROBE_TEXT && !t.chars().any(char::is_control))
        });
        let unique = r.results.iter().all(|p| seen.insert((p.expect, p.target.clone())));
        let nonempty = r.results.iter().all(|p| !p.target.is_empty());
        let expected = texts_ok && unique && nonempty && r.started_ms <= r.finished_ms;
        prop_assert_eq!(r.check_bounds().is_ok(), expected, "{:?}", r.check_bounds());
    }

    #[test]
    fn probe_reports_above_the_target_cap_are_refused(extra in 1usize..4) {
        let results = (0..MAX_PROBE_TARGETS + extra)
            .map(|i| ProbeResult {
                target: format!("192.0.2.{}:{}", i % 250, 1000 + i),
                rule: "192.0.2.0/24".into(),
                expect: ProbeExpect::MustNotReach,
                outcome: ProbeOutcome::TimedOut,
                elapsed_ms: 2000,
                detail: None,
            })
            .collect();
        let r = ProbeReport {
            agent: AgentId::new("a").unwrap(),
            zone: ZoneId::new("z").unwrap(),
            started_ms: 1,
            finished_ms: 2,
            results,
        };
        let err = r.check_bounds().unwrap_err();
        prop_assert!(err.contains("more than 256"), "{}", err);
        let mut capped = r.clone();
        capped.results.truncate(MAX_PROBE_TARGETS);
        prop_assert!(capped.check_bounds().is_ok());
    }

    #[test]
    fn body_and_summary_round_trip_through_cbor(s in summary()) {
        let bytes = cbor::encode(&s).unwrap();
        prop_assert_eq!(cbor::decode::<Summary>(&bytes).unwrap(), s.clone());
        let body = Body::Summary(s);
        let bytes = cbor::encode(&body).unwrap();
        prop_assert_eq!(cbor::decode::<Body>(&bytes).unwrap(), body);
    }

    #[test]
    fn sealed_envelopes_parse_and_verify(
        b in body(),
        seq in 0u64..u64::MAX,
        time_ms in any::<u64>(),
    ) {
        let (agent, zone) = origin(&b);
        let tip = ChainTip { seq, hash: Digest::of(&seq.to_be_bytes()) };
        let sealed = envelope::seal(key(), agent, zone, &tip, time_ms, &b).unwrap();
        let v = envelope::parse(&sealed.wire).unwrap().verify(&key().public_key()).unwrap();
        prop_assert_eq!(v.header.seq, seq + 1);
        prop_assert_eq!(v.header.prev_hash, tip.hash);
        prop_assert_eq!(v.header.time_ms, time_ms);
        prop_assert_eq!(&v.header.agent, agent);
        prop_assert_eq!(&v.header.zone, zone);
        prop_assert_eq!(v.header.key_id, key().key_id());
        prop_assert_eq!(v.tip(), sealed.tip);
        prop_assert_eq!(v.body().unwrap(), b);
    }

    /// A changed byte anywhere — header, body or signature — never verifies: the signature
    /// covers every byte of `signed`, a changed signature cannot verify (ring rejects
    /// non-canonical S, and any other R or S fails the equation), and a changed length or type
    /// byte breaks the parse (the outer array must be canonical, see
    /// [`outer_array_header_must_be_exact`]).
    #[test]
    fn a_flipped_byte_never_verifies(
        b in body(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let wire = sealed_wire(&b, 7, 1_700_000_000_000);
        let mut bad = wire.clone();
        let i = at.index(bad.len());
        bad[i] ^= mask;
        check_flip(&wire, &bad, i).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn fragments_reassemble_in_any_order_with_duplicates(
        message in vec(any::<u8>(), 1..=64 * 1024),
        message_id in any::<u64>(),
        seed in 1u64..,
        duplicates in 0usize..8,
    ) {
        let parts = frame::fragment(message_id, &message).unwrap();
        prop_assert_eq!(parts.len(), frame::fragment_count(message.len()));
        prop_assert!(parts.iter().all(|p| p.len() <= MAX_DATAGRAM));
        let mut rng = Rng(seed);
        let mut sent = parts.clone();
        for _ in 0..duplicates {
            let dup = parts[rng.below(parts.len())].clone();
            let at = rng.below(sent.len() + 1);
            sent.insert(at, dup);
        }
        for i in (1..sent.len()).rev() {
            sent.swap(i, rng.below(i + 1));
        }
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let mut done = Vec::new();
        for (t, d) in sent.iter().enumerate() {
            done.extend(r.push("peer", d, t as u64).unwrap());
        }
        prop_assert_eq!(done.len(), 1, "exactly one completion");
        prop_assert_eq!(&done[0], &message);
        prop_assert_eq!(r.pending(), 0);
        prop_assert_eq!(r.stats().completed, 1);
        prop_assert!(r.poll_dropped(u64::MAX).is_empty());
    }

    #[test]
    fn garbage_datagrams_never_panic_and_never_complete(
        datagrams in vec(
            prop_oneof![
                vec(any::<u8>(), 0..1300),
                // Plausible headers (magic, version, kind) over random rest: only the CRC
                // stands between these and the table.
                vec(any::<u8>(), 20..1200).prop_map(|mut d| {
                    d[..4].copy_from_slice(&[b'O', b'D', 1, 0]);
                    d
                }),
                // The same for FEC symbols, with sane OTI fields.
                vec(any::<u8>(), 40..1200).prop_map(|mut d| {
                    d[..4].copy_from_slice(&[b'O', b'D', 3, 1]);
                    d[17] = 0;
                    d[20..24].copy_from_slice(&[1, 0, 1, 8]);
                    d[30..32].fill(0);
                    d
                }),
            ],
            0..64,
        ),
        times in vec(any::<u64>(), 64),
    ) {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        for (d, now) in datagrams.iter().zip(&times) {
            let out = r.push(0u32, d, *now);
            prop_assert!(out.is_err() || out.is_ok_and(|m| m.is_empty()), "garbage completed a message");
            let _ = r.poll_dropped(*now);
        }
    }

    #[test]
    fn a_flipped_byte_in_a_datagram_is_refused(
        message in vec(any::<u8>(), 1..4000),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let parts = frame::fragment(1, &message).unwrap();
        let mut d = parts[0].clone();
        let i = at.index(d.len());
        d[i] ^= mask;
        prop_assert!(frame::parse(&d, MAX_ENVELOPE_BYTES).is_err());
        let mut r = Reassembler::new(ReassemblyLimits::default());
        prop_assert!(r.push((), &d, 0).is_err());
    }

    #[test]
    fn frame_parse_never_panics(bytes in vec(any::<u8>(), 0..1400), max in any::<usize>()) {
        if let Ok((h, payload)) = frame::parse(&bytes, max) {
            prop_assert!(payload.len() <= MAX_PAYLOAD);
            prop_assert!(h.index < h.count);
            prop_assert!(h.total_len as usize <= max.min(MAX_ENVELOPE_BYTES));
        }
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..2048)) {
        let _ = cbor::decode::<Body>(&bytes);
        let _ = cbor::decode::<BTreeMap<String, u64>>(&bytes);
        if let Ok(u) = envelope::parse(&bytes) {
            prop_assert!(u.verify(&key().public_key()).is_err());
        }
    }
}

fn verify(wire: &[u8]) -> Result<outpost_proto::Verified, outpost_proto::EnvelopeError> {
    envelope::parse(wire).and_then(|u| u.verify(&key().public_key()))
}

/// `bad` is `good` with byte `i` changed: it must not verify, wherever the byte is.
fn check_flip(good: &[u8], bad: &[u8], i: usize) -> Result<(), String> {
    match verify(bad) {
        Err(_) => Ok(()),
        Ok(_) => Err(format!(
            "byte {i} {:#04x} -> {:#04x} still verified",
            good[i], bad[i]
        )),
    }
}

fn small_body() -> Body {
    Body::Summary(Summary {
        agent: AgentId::new("gw-1").unwrap(),
        zone: ZoneId::new("cell-1").unwrap(),
        started_ms: 1,
        finished_ms: 2,
        gateway: None,
        assets: vec![],
    })
}

/// Every byte position of one envelope, every single-bit flip and the full inversion (the
/// proptest above tries arbitrary changes): never verifies.
#[test]
fn every_byte_of_an_envelope_is_covered() {
    let wire = sealed_wire(&small_body(), 41, 1_700_000_000_000);
    assert!(verify(&wire).is_ok());
    for i in 0..wire.len() {
        for mask in [0x01u8, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xFF] {
            let mut bad = wire.clone();
            bad[i] ^= mask;
            if let Err(e) = check_flip(&wire, &bad, i) {
                panic!("{e}");
            }
        }
    }
}

/// Regression: `envelope::parse` once accepted any outer array header (0x83..=0x97, 0x9F) in
/// place of 0x82, so one signed envelope had many wire forms. The outer wrapper must now be in
/// canonical form.
#[test]
fn outer_array_header_must_be_exact() {
    let wire = sealed_wire(&small_body(), 1, 1);
    for b in 0x80..=0x9Fu8 {
        if b == 0x82 {
            continue;
        }
        let mut bad = wire.clone();
        bad[0] = b;
        assert!(verify(&bad).is_err(), "outer header {b:#04x} accepted");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any loss pattern that leaves `K + 2` symbols of a message rebuilds it exactly, in any
    /// order, exactly once.
    #[test]
    fn fec_rebuilds_from_any_k_plus_two_symbols(
        len in 1usize..40_000,
        seed in any::<u64>(),
    ) {
        use outpost_proto::fec::{self, FecParams};
        let message: Vec<u8> = (0..len).map(|i| (i as u64).wrapping_mul(seed | 1) as u8).collect();
        let mut d = fec::encode(3, &message, FecParams::default()).unwrap();
        let (h, _) = fec::parse(&d[0], fec::MAX_BLOCK_BYTES).unwrap();
        // Deterministic shuffle from the seed, then keep K + 2.
        let mut x = seed;
        for i in (1..d.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            d.swap(i, (x % (i as u64 + 1)) as usize);
        }
        d.truncate(usize::from(h.source_symbols) + 2);
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let mut done = Vec::new();
        for (t, dg) in d.iter().enumerate() {
            done.extend(r.push(1u8, dg, t as u64).unwrap());
        }
        prop_assert_eq!(done.len(), 1);
        prop_assert_eq!(&done[0], &message);
        prop_assert_eq!(r.pending_bytes(), 0);
    }

    /// A window of envelopes of any sizes comes back as exactly those envelopes, in order,
    /// once, from any `K + 2` of its symbols (either round when repeated), whatever the order.
    #[test]
    fn a_window_rebuilds_into_its_envelopes_from_any_k_plus_two_symbols(
        sizes in vec(1usize..6_000, 1..40),
        seed in any::<u64>(),
        repeat in any::<bool>(),
        from_repeat in any::<bool>(),
    ) {
        use outpost_proto::fec::{self, FecParams, Window};
        let envelopes: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(n, &len)| (0..len).map(|i| (i as u64 ^ n as u64).wrapping_mul(seed | 1) as u8).collect())
            .collect();
        let mut w = Window::new();
        for e in &envelopes {
            w.push(e).unwrap();
        }
        let params = FecParams { repeat, ..FecParams::default() };
        let enc = fec::encode_window(seed, &w, params).unwrap();
        let mut d = if repeat && from_repeat { enc.repeat } else { enc.first };
        let (h, _) = fec::parse(&d[0], fec::MAX_BLOCK_BYTES).unwrap();
        prop_assert_eq!(usize::from(h.envelopes), envelopes.len());
        prop_assert!(d.iter().all(|x| x.len() <= MAX_DATAGRAM));
        let mut x = seed | 1;
        for i in (1..d.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            d.swap(i, (x % (i as u64 + 1)) as usize);
        }
        d.truncate(usize::from(h.source_symbols) + 2);
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let mut done = Vec::new();
        for (t, dg) in d.iter().enumerate() {
            done.extend(r.push(1u8, dg, t as u64).unwrap());
        }
        prop_assert_eq!(done, envelopes);
        prop_assert_eq!(r.pending_bytes(), 0);
    }
}
