//! Key lifecycle and chain hygiene at ingest: key handover (rotation), declared restarts after
//! agent state loss, clock skew, late envelopes, and the audit of what was stored — with real
//! signatures and a real SQLite file.

mod common;

use common::{Fixture, T0};
use outpost_collector::audit;
use outpost_collector::ingest::Reason;
use outpost_proto::envelope::{self, MAX_ENVELOPE_BYTES};
use outpost_proto::model::{Body, Heartbeat};
use outpost_proto::{ChainTip, Digest, SequenceVerdict, SigningKey, handover};

/// Seals `body` after `tip` with `key` at agent time `time_ms`.
fn seal(f: &Fixture, key: &SigningKey, tip: &ChainTip, time_ms: u64, body: &Body) -> Vec<u8> {
    envelope::seal(key, &f.agent, &f.zone, tip, time_ms, body)
        .unwrap()
        .wire
}

fn tip_of(wire: &[u8], key: &SigningKey) -> ChainTip {
    envelope::parse(wire)
        .unwrap()
        .verify(&key.public_key())
        .unwrap()
        .tip()
}

fn beat(f: &Fixture, tip: &ChainTip) -> Body {
    Body::Heartbeat(Heartbeat {
        agent: f.agent.clone(),
        zone: f.zone.clone(),
        last_seq: tip.seq,
        last_hash: tip.hash,
        interval_ms: 1000,
        last_summary_seq: 0,
    })
}

fn events(f: &Fixture, kind: &str) -> Vec<serde_json::Value> {
    let cmdb = outpost_collector::Cmdb::open_existing(&f.db).unwrap();
    let mut stmt = cmdb
        .connection()
        .prepare("SELECT detail FROM events WHERE kind = ?1 ORDER BY event_id")
        .unwrap();
    stmt.query_map([kind], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|d| serde_json::from_str(&d.unwrap()).unwrap())
        .collect()
}

#[test]
fn key_handover_enrolls_the_successor_and_retires_the_old_key() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let first = f.seal(&f.summary(vec![]));
    ingest.envelope(&first, "p", T0 + 10).unwrap();

    let (new, _) = SigningKey::generate().unwrap();
    let announce = handover::announce(&f.agent, &f.zone, &f.key, &new, f.tip.seq + 1);
    let wire = seal(&f, &f.key, &f.tip, T0 + 20, &Body::KeyHandover(announce));
    let applied = ingest.envelope(&wire, "p", T0 + 20).unwrap();
    assert_eq!(applied.verdict, SequenceVerdict::Next);
    let handover_tip = tip_of(&wire, &f.key);

    let keys = ingest.cmdb().key_list().unwrap();
    let old_row = keys
        .iter()
        .find(|k| k.key_id == f.key.key_id().to_string())
        .unwrap();
    let new_row = keys
        .iter()
        .find(|k| k.key_id == new.key_id().to_string())
        .unwrap();
    assert_eq!(old_row.status, "retired");
    assert_eq!(
        old_row.superseded_by.as_deref(),
        Some(new.key_id().to_string().as_str())
    );
    assert_eq!(old_row.handover_seq, Some(handover_tip.seq as i64));
    assert_eq!(new_row.status, "active");
    assert_eq!(new_row.agent_id, "gw-1");
    assert_eq!(new_row.zones, vec!["cell-1".to_owned()]);
    let rotated = events(&f, "key_rotated");
    assert_eq!(rotated.len(), 1);
    assert_eq!(rotated[0]["new_key_id"], new.key_id().to_string());

    // The chain continues under the new key.
    let next = seal(&f, &new, &handover_tip, T0 + 30, &beat(&f, &handover_tip));
    let applied = ingest.envelope(&next, "p", T0 + 30).unwrap();
    assert_eq!(applied.verdict, SequenceVerdict::Next);
    let next_tip = tip_of(&next, &new);

    // The old key is refused from now on: no grace window.
    let stale = seal(&f, &f.key, &next_tip, T0 + 40, &beat(&f, &next_tip));
    let err = ingest.envelope(&stale, "p", T0 + 40).unwrap_err();
    assert_eq!(err.reason, Reason::KeyRetired, "{err}");

    // History: every stored envelope still verifies against the stored keys.
    let report = audit::verify(&f.db).unwrap();
    assert!(report.clean(), "{:?}", report.findings);
    assert_eq!(report.envelopes_checked, 3);
    assert_eq!(report.keys_checked, 2);
}

#[test]
fn forged_or_conflicting_handovers_are_refused_and_change_nothing() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let first = f.seal(&f.summary(vec![]));
    ingest.envelope(&first, "p", T0 + 10).unwrap();
    let (new, _) = SigningKey::generate().unwrap();
    let (mallory, _) = SigningKey::generate().unwrap();

    // Substituted key without its proof of possession.
    let mut forged = handover::announce(&f.agent, &f.zone, &f.key, &new, f.tip.seq + 1);
    forged.new_public_key = mallory.public_key().0;
    forged.new_key_id = mallory.key_id();
    let wire = seal(&f, &f.key, &f.tip, T0 + 20, &Body::KeyHandover(forged));
    let err = ingest.envelope(&wire, "p", T0 + 20).unwrap_err();
    assert_eq!(err.reason, Reason::BadHandover, "{err}");
    assert!(err.detail.contains("proof of possession"), "{err}");

    // Proof bound to another sequence number (replayed from elsewhere).
    let moved = handover::announce(&f.agent, &f.zone, &f.key, &new, f.tip.seq + 7);
    let wire = seal(&f, &f.key, &f.tip, T0 + 20, &Body::KeyHandover(moved));
    let err = ingest.envelope(&wire, "p", T0 + 20).unwrap_err();
    assert_eq!(err.reason, Reason::BadHandover, "{err}");

    // Handing over to a key that already speaks for another agent.
    let other = outpost_proto::AgentId::new("gw-2").unwrap();
    ingest
        .cmdb_mut()
        .enroll(&new.public_key(), &other, std::slice::from_ref(&f.zone), T0)
        .unwrap();
    let taken = handover::announce(&f.agent, &f.zone, &f.key, &new, f.tip.seq + 1);
    let wire = seal(&f, &f.key, &f.tip, T0 + 20, &Body::KeyHandover(taken));
    let err = ingest.envelope(&wire, "p", T0 + 20).unwrap_err();
    assert_eq!(err.reason, Reason::BadHandover, "{err}");
    assert!(err.detail.contains("gw-2"), "{err}");

    let keys = ingest.cmdb().key_list().unwrap();
    let old_row = keys
        .iter()
        .find(|k| k.key_id == f.key.key_id().to_string())
        .unwrap();
    assert_eq!(old_row.status, "active");
    assert_eq!(
        ingest
            .cmdb()
            .counter("envelopes_rejected.bad_handover")
            .unwrap(),
        3
    );
}

#[test]
fn far_future_timestamps_are_refused_within_a_configurable_skew() {
    let f = Fixture::new();
    let mut ingest = f.ingest();
    let now = T0 + 1_000;
    // 4 minutes ahead: within the default 5 minutes.
    let ok = seal(&f, &f.key, &f.tip, now + 240_000, &beat(&f, &f.tip));
    ingest.envelope(&ok, "p", now).unwrap();
    let tip = tip_of(&ok, &f.key);
    // 6 minutes ahead: refused with its own reason.
    let ahead = seal(&f, &f.key, &tip, now + 360_000, &beat(&f, &tip));
    let err = ingest.envelope(&ahead, "p", now).unwrap_err();
    assert_eq!(err.reason, Reason::FutureTimestamp, "{err}");
    assert!(err.detail.contains("--max-clock-skew"), "{err}");
    assert_eq!(
        ingest.cmdb().quarantine(Some(1)).unwrap()[0].reason,
        "future_timestamp"
    );
    // Raised to 10 minutes, the same envelope is accepted.
    ingest.set_max_clock_skew(std::time::Duration::from_secs(600));
    ingest.envelope(&ahead, "p", now).unwrap();
}

#[test]
fn declared_restart_after_state_loss_is_reported_not_refused() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    for i in 0..3 {
        let w = f.seal(&f.summary(vec![]));
        ingest.envelope(&w, "p", T0 + 10 + i).unwrap();
    }
    let last = f.tip;
    // The agent lost its state dir: a new chain (zero prev_hash) at its clock.
    let restart = ChainTip::restart_at(T0 + 5_000);
    let w = seal(&f, &f.key, &restart, T0 + 5_000, &beat(&f, &restart));
    let applied = ingest.envelope(&w, "192.0.2.9:1", T0 + 5_000).unwrap();
    assert_eq!(applied.verdict, SequenceVerdict::Restart { last: last.seq });
    let lost = events(&f, "agent_state_lost");
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0]["previous_seq"], last.seq);
    assert_eq!(lost[0]["new_seq"], T0 + 5_000);
    assert_eq!(lost[0]["peer"], "192.0.2.9:1");
    // And an alert in the outbox for the SIEM sinks, on the gateway's CI.
    let alerts = ingest.cmdb().alerts(None).unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(
        (a.kind.as_str(), a.category.as_str(), a.severity_id),
        ("agent_state_lost", "agent", 3)
    );
    assert_eq!(a.asset, "gateway/gw-1");
    assert_eq!(a.envelope_seq, (T0 + 5_000) as i64);
    assert_eq!(a.detail["previous_seq"], last.seq);
    let ocsf = outpost_collector::alert::ocsf::event(a);
    assert_eq!(ocsf["class_uid"], 5019);
    assert!(ocsf["message"].as_str().unwrap().contains("lost state"));
    assert_eq!(ingest.cmdb().counter("envelopes_rejected").unwrap(), 0);
    // The new chain continues normally.
    let t = tip_of(&w, &f.key);
    let w = seal(&f, &f.key, &t, T0 + 6_000, &beat(&f, &t));
    assert_eq!(
        ingest.envelope(&w, "p", T0 + 6_000).unwrap().verdict,
        SequenceVerdict::Next
    );
    let report = audit::verify(&f.db).unwrap();
    assert!(report.clean(), "{:?}", report.findings);
    assert!(report.discontinuities.iter().any(|d| d.kind == "restart"));
}

#[test]
fn undeclared_rewind_and_rewinding_restart_are_replays() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    for i in 0..3 {
        let w = f.seal(&f.summary(vec![]));
        ingest.envelope(&w, "p", T0 + 10 + i).unwrap();
    }
    // Undeclared: the agent starts over at 1 as if nothing happened (new content, same numbers).
    let genesis_again = seal(
        &f,
        &f.key,
        &ChainTip::GENESIS,
        T0 + 100,
        &beat(&f, &ChainTip::GENESIS),
    );
    let err = ingest.envelope(&genesis_again, "p", T0 + 100).unwrap_err();
    assert_eq!(err.reason, Reason::Replay, "{err}");
    let rewound = ChainTip {
        seq: 1,
        hash: Digest([9; 32]),
    };
    let w = seal(&f, &f.key, &rewound, T0 + 100, &beat(&f, &rewound));
    let err = ingest.envelope(&w, "p", T0 + 100).unwrap_err();
    assert_eq!(err.reason, Reason::Replay, "{err}");
    assert!(events(&f, "agent_state_lost").is_empty());
    assert!(ingest.cmdb().alerts(None).unwrap().is_empty());
}

#[test]
fn a_late_envelope_is_refused_and_counted_as_reordered() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let first = f.seal(&f.summary(vec![]));
    let second = f.seal(&f.summary(vec![]));
    let third = f.seal(&f.summary(vec![]));
    ingest.envelope(&first, "p", T0 + 10).unwrap();
    ingest.envelope(&third, "p", T0 + 11).unwrap(); // a gap: 2 missing
    let err = ingest.envelope(&second, "p", T0 + 12).unwrap_err();
    assert_eq!(err.reason, Reason::Replay);
    assert!(err.detail.starts_with("late:"), "{err}");
    assert_eq!(ingest.cmdb().counter("envelopes_late").unwrap(), 1);
    // A copy of a stored one is a plain replay, not late.
    let err = ingest.envelope(&third, "p", T0 + 13).unwrap_err();
    assert!(!err.detail.starts_with("late:"), "{err}");
    assert_eq!(ingest.cmdb().counter("envelopes_late").unwrap(), 1);
    assert_eq!(
        ingest.cmdb().counter("envelopes_rejected.replay").unwrap(),
        2
    );
}

#[test]
fn oversize_truncated_and_deeply_nested_input_is_refused() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let good = f.seal(&f.summary(vec![]));

    let err = ingest
        .envelope(&vec![0x80; MAX_ENVELOPE_BYTES + 1], "p", T0)
        .unwrap_err();
    assert_eq!(err.reason, Reason::Oversize, "{err}");

    for cut in [1, good.len() / 2, good.len() - 1] {
        let err = ingest.envelope(&good[..cut], "p", T0).unwrap_err();
        assert_eq!(err.reason, Reason::Malformed, "cut at {cut}: {err}");
    }

    // 10 000 nested arrays as the whole envelope: refused, bounded, no stack overflow.
    let mut deep = vec![0x81u8; 10_000];
    deep.push(0x00);
    let err = ingest.envelope(&deep, "p", T0).unwrap_err();
    assert_eq!(err.reason, Reason::Malformed, "{err}");

    // ...and inside a correctly signed body: an unknown field of a heartbeat whose value is
    // nested 10 000 deep (skipping it recurses; the bound applies).
    let mut body = vec![0xa1, 0x69];
    body.extend_from_slice(b"heartbeat");
    body.extend_from_slice(&[0xa1, 0x62, b'z', b'z']);
    body.extend_from_slice(&deep);
    let deep = body;
    let wire = f.seal_raw("gw-1", "cell-1", deep);
    let err = ingest.envelope(&wire, "p", T0).unwrap_err();
    assert_eq!(err.reason, Reason::MalformedBody, "{err}");
    assert!(err.detail.contains("nested deeper"), "{err}");
}

#[test]
fn the_two_stage_pipeline_accepts_the_new_key_right_after_its_handover() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let first = f.seal(&f.summary(vec![]));
    let (new, _) = SigningKey::generate().unwrap();
    let announce = handover::announce(&f.agent, &f.zone, &f.key, &new, f.tip.seq + 1);
    let handover_wire = seal(&f, &f.key, &f.tip, T0 + 20, &Body::KeyHandover(announce));
    let mut tip = tip_of(&handover_wire, &f.key);
    let mut items = vec![
        (first, "p".to_owned(), T0 + 10),
        (handover_wire, "p".to_owned(), T0 + 20),
    ];
    // Back to back under the new key: the checker thread may look before the handover commits.
    for i in 0..5 {
        let w = seal(&f, &new, &tip, T0 + 30 + i, &beat(&f, &tip));
        tip = tip_of(&w, &new);
        items.push((w, "p".to_owned(), T0 + 30 + i));
    }
    let results = outpost_collector::pipeline::ingest_all(&mut ingest, items).unwrap();
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(ingest.cmdb().counter("envelopes_rejected").unwrap(), 0);
}
