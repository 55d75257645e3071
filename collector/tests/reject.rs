//! Every refusal path: quarantine row with the right reason, counters, CMDB unchanged.

mod common;

use common::{Fixture, T0, count, plc, snapshot};
use outpost_collector::{Cmdb, Ingest, Reason};
use outpost_proto::envelope;
use outpost_proto::frame::FrameError;
use outpost_proto::model::{Body, RegisterBlock};
use outpost_proto::reassembly::{DropReason, Dropped};
use outpost_proto::{AgentId, ChainTip, SigningKey, ZoneId};

/// Ingests `wire`, expects `reason`, and checks quarantine, counters and an unchanged CMDB.
fn expect_refused(ingest: &mut Ingest, wire: &[u8], reason: Reason) {
    let before = snapshot(ingest.cmdb());
    let q_before = count(ingest.cmdb(), "quarantine", "1");
    let total_before = ingest.cmdb().counter("envelopes_rejected").unwrap();
    let reason_before = ingest.cmdb().counter(reason.counter()).unwrap();

    let err = ingest.envelope(wire, "192.0.2.7:4000", T0 + 5).unwrap_err();
    assert_eq!(err.reason, reason, "{err}");

    let cmdb = ingest.cmdb();
    assert_eq!(snapshot(cmdb), before, "CMDB changed by a refused envelope");
    assert_eq!(count(cmdb, "quarantine", "1"), q_before + 1);
    let q = cmdb.quarantine(Some(1)).unwrap().remove(0);
    assert_eq!(q.reason, reason.as_str());
    assert_eq!(q.stage, "envelope");
    assert_eq!(q.peer, "192.0.2.7:4000");
    assert_eq!(q.raw_len, wire.len() as i64);
    assert_eq!(q.detail, err.detail);
    let raw: Vec<u8> = cmdb
        .connection()
        .query_row(
            "SELECT raw FROM quarantine ORDER BY quarantine_id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(raw, wire);
    assert_eq!(
        cmdb.counter("envelopes_rejected").unwrap(),
        total_before + 1
    );
    assert_eq!(cmdb.counter(reason.counter()).unwrap(), reason_before + 1);
}

#[test]
fn garbage_is_malformed() {
    let f = Fixture::new();
    let mut ingest = f.ingest();
    expect_refused(
        &mut ingest,
        b"\xff\x00 definitely not CBOR",
        Reason::Malformed,
    );
    let q = ingest.cmdb().quarantine(None).unwrap().remove(0);
    assert_eq!(q.agent_claimed, None);
}

#[test]
fn unknown_key() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let (stranger, _) = SigningKey::generate().unwrap();
    f.key = stranger;
    let wire = f.seal(&f.summary(vec![plc(1, vec![1])]));
    expect_refused(&mut ingest, &wire, Reason::UnknownKey);
    let q = ingest.cmdb().quarantine(None).unwrap().remove(0);
    assert_eq!(q.agent_claimed.as_deref(), Some("gw-1"));
    assert_eq!(q.key_claimed, Some(f.key.key_id().to_string()));
    assert_eq!(q.seq_claimed, Some(1));
    assert!(
        q.detail.contains("outpost-collector enroll"),
        "{}",
        q.detail
    );
}

#[test]
fn agent_mismatch() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    // gw-1's key signing as gw-2 (the summary agrees with the header, so only the key check
    // can catch it).
    f.agent = AgentId::new("gw-2").unwrap();
    let wire = f.seal(&f.summary(vec![plc(1, vec![1])]));
    expect_refused(&mut ingest, &wire, Reason::AgentMismatch);
}

#[test]
fn zone_not_authorised() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    f.zone = ZoneId::new("cell-2").unwrap();
    let wire = f.seal(&f.summary(vec![plc(1, vec![1])]));
    expect_refused(&mut ingest, &wire, Reason::ZoneNotAuthorised);
}

#[test]
fn replay_of_an_accepted_envelope() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let wire = f.seal(&f.summary(vec![plc(1, vec![1])]));
    ingest.envelope(&wire, "p", T0).unwrap();
    expect_refused(&mut ingest, &wire, Reason::Replay);
    // An older one after a newer one is refused too.
    let second = f.seal(&f.summary(vec![plc(1, vec![2])]));
    let third = f.seal(&f.summary(vec![plc(1, vec![3])]));
    ingest.envelope(&third, "p", T0).unwrap();
    expect_refused(&mut ingest, &second, Reason::Replay);
}

#[test]
fn bad_block_hash() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let mut lying = plc(1, vec![1, 2]);
    lying.blocks[0] = RegisterBlock {
        values: vec![1, 3],
        ..lying.blocks[0].clone()
    };
    let wire = f.seal(&f.summary(vec![plc(2, vec![1]), lying]));
    expect_refused(&mut ingest, &wire, Reason::BadBlockHash);
}

#[test]
fn body_mismatch() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let mut summary = f.summary(vec![plc(1, vec![1])]);
    summary.zone = ZoneId::new("cell-9").unwrap();
    let wire = f.seal(&summary);
    expect_refused(&mut ingest, &wire, Reason::BodyMismatch);
}

#[test]
fn malformed_body() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let wire = f.seal_raw("gw-1", "cell-1", b"\x82 not a body".to_vec());
    expect_refused(&mut ingest, &wire, Reason::MalformedBody);
    // A well-formed CBOR value of the wrong shape is malformed too.
    let wire = f.seal_raw(
        "gw-1",
        "cell-1",
        outpost_proto::cbor::encode(&"hello").unwrap(),
    );
    expect_refused(&mut ingest, &wire, Reason::MalformedBody);
}

#[test]
fn sequence_beyond_the_cmdb_range_is_refused() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    // Signed and otherwise valid, but seq i64::MAX + 1 cannot be stored.
    f.tip = ChainTip {
        seq: i64::MAX as u64,
        hash: outpost_proto::Digest::ZERO,
    };
    let wire = f.seal(&f.summary(vec![]));
    expect_refused(&mut ingest, &wire, Reason::BadSequence);
}

#[test]
fn every_single_byte_tamper_is_refused_and_never_applied() {
    let mut f = Fixture::new();
    let wire = f.seal(&f.summary(vec![]));
    assert!(wire.len() < 400, "keep this envelope small: {}", wire.len());
    let mut ingest = f.ingest();
    let before = snapshot(ingest.cmdb());
    let mut attempts = 0;
    // Spread over time within the quarantine budget, so that every attempt gets its row.
    let mut now = T0;
    let mut tick = || {
        now += 1_000 / outpost_collector::budget::ROWS_PER_SEC;
        now
    };
    for i in 0..wire.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = wire.clone();
            bad[i] ^= flip;
            let err = ingest
                .envelope(&bad, "p", tick())
                .expect_err("tampered envelope accepted");
            assert_ne!(err.reason, Reason::Storage, "byte {i}: {err}");
            attempts += 1;
        }
    }
    // Truncations and an extension, too.
    for len in [0, 1, wire.len() / 2, wire.len() - 1] {
        assert!(ingest.envelope(&wire[..len], "p", tick()).is_err());
        attempts += 1;
    }
    let mut longer = wire.clone();
    longer.push(0);
    assert!(ingest.envelope(&longer, "p", tick()).is_err());
    attempts += 1;

    let cmdb = ingest.cmdb();
    assert_eq!(snapshot(cmdb), before);
    assert_eq!(count(cmdb, "quarantine", "1"), attempts);
    assert_eq!(cmdb.counter("envelopes_rejected").unwrap(), attempts);
    assert_eq!(cmdb.counter("envelopes_accepted").unwrap(), 0);
    // The untouched envelope is still good afterwards.
    ingest.envelope(&wire, "p", tick()).unwrap();
}

#[test]
fn revoked_key_is_refused_quarantined_and_alerted() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let good = f.seal(&f.summary(vec![]));
    ingest.envelope(&good, "p", T0 + 5).unwrap();
    let done = ingest
        .cmdb_mut()
        .revoke_key(&f.key.key_id(), "laptop stolen", T0 + 6)
        .unwrap();
    assert!(done.changed);
    let listed = ingest.cmdb().key_list().unwrap();
    assert_eq!(listed[0].status, "revoked");
    assert_eq!(listed[0].revoked_reason.as_deref(), Some("laptop stolen"));

    let wire = f.seal(&f.summary(vec![]));
    let err = ingest
        .envelope(&wire, "192.0.2.7:4000", T0 + 7)
        .unwrap_err();
    assert_eq!(err.reason, Reason::KeyRevoked, "{err}");
    let cmdb = ingest.cmdb();
    let q = cmdb.quarantine(Some(1)).unwrap().remove(0);
    assert_eq!(q.reason, "key_revoked");
    assert_eq!(cmdb.counter("envelopes_rejected.key_revoked").unwrap(), 1);
    // The alert names agent, key and peer.
    let (agent, detail): (String, String) = cmdb
        .connection()
        .query_row(
            "SELECT agent_id, detail FROM events WHERE kind = 'revoked_key_used'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(agent, "gw-1");
    let detail: serde_json::Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(detail["key_id"], f.key.key_id().to_string());
    assert_eq!(detail["peer"], "192.0.2.7:4000");
    assert_eq!(detail["agent"], "gw-1");
    // The same as an alert in the outbox: an OCSF Detection Finding for the SIEM sinks.
    let alerts = cmdb.alerts(None).unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(
        (a.kind.as_str(), a.category.as_str(), a.severity_id),
        ("revoked_key_used", "security", 4)
    );
    assert_eq!(
        (a.asset.as_str(), a.agent_id.as_str()),
        ("agent/gw-1", "gw-1")
    );
    assert_eq!(a.detail["peer"], "192.0.2.7:4000");
    let ocsf = outpost_collector::alert::ocsf::event(a);
    assert_eq!(
        (&ocsf["class_uid"], &ocsf["category_uid"]),
        (&2004.into(), &2.into())
    );
    assert!(
        ocsf["finding_info"]["title"]
            .as_str()
            .unwrap()
            .contains("192.0.2.7:4000")
    );
    assert_eq!(cmdb.counter("alerts_raised").unwrap(), 1);
    let revoked_events: i64 = cmdb
        .connection()
        .query_row(
            "SELECT count(*) FROM events WHERE kind = 'key_revoked'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(revoked_events, 1);
    // Revoked stays revoked: re-enrolling is refused.
    let err = ingest
        .cmdb_mut()
        .enroll(
            &f.key.public_key(),
            &f.agent,
            std::slice::from_ref(&f.zone),
            T0,
        )
        .unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
}

#[test]
fn refused_datagrams_and_drops_are_counted() {
    let f = Fixture::new();
    let mut ingest = f.ingest();
    let datagram = vec![0x42u8; 100_000];
    ingest
        .datagram_rejected(
            "198.51.100.1:1",
            &FrameError::TooLong(100_000),
            &datagram,
            T0,
        )
        .unwrap();
    ingest
        .datagram_rejected(
            "198.51.100.1:1",
            &FrameError::BadMagic(*b"GE"),
            b"GET /",
            T0,
        )
        .unwrap();
    let dropped = Dropped {
        source: "198.51.100.1:1",
        message_id: 77,
        received: 1,
        count: 3,
        envelopes: 1,
        reason: DropReason::Expired,
    };
    ingest
        .reassembly_dropped("198.51.100.1:1", &dropped, T0)
        .unwrap();
    let cmdb = ingest.cmdb();
    assert_eq!(cmdb.counter("datagrams_rejected").unwrap(), 2);
    assert_eq!(
        cmdb.counter("datagrams_rejected.datagram_too_long")
            .unwrap(),
        1
    );
    assert_eq!(cmdb.counter("datagrams_rejected.bad_magic").unwrap(), 1);
    let q = cmdb.quarantine(None).unwrap();
    assert_eq!(q[0].stage, "datagram");
    assert_eq!(q[0].raw_len, 100_000);
    assert_eq!(q[0].stored_len, 2 * 1024, "datagram copy is capped");
    assert_eq!(q[1].reason, "bad_magic");
    assert_eq!(cmdb.counter("reassembly_dropped.expired").unwrap(), 1);
    let e = cmdb.events(None).unwrap().remove(0);
    assert_eq!(e.kind, "reassembly_dropped");
    assert_eq!(e.detail["message_id"], 77);
    assert_eq!(e.detail["fragments_received"], 1);
    assert_eq!(e.detail["fragments_total"], 3);
}

#[test]
fn rejections_survive_reopening() {
    let f = Fixture::new();
    {
        let mut ingest = f.ingest();
        assert!(ingest.envelope(b"junk", "p", T0).is_err());
    }
    let cmdb = Cmdb::open_existing(&f.db).unwrap();
    assert_eq!(cmdb.counter("envelopes_rejected.malformed").unwrap(), 1);
    // And a valid body kind check: seal with the real API still works after all that.
    let sealed = envelope::seal(
        &f.key,
        &f.agent,
        &f.zone,
        &ChainTip::GENESIS,
        T0,
        &Body::Summary(f.summary(vec![])),
    )
    .unwrap();
    let mut ingest = Ingest::new(cmdb);
    ingest.envelope(&sealed.wire, "p", T0).unwrap();
}

#[test]
fn a_flood_is_counted_in_full_but_quarantined_within_budget() {
    use outpost_collector::budget::{ROW_BURST, ROWS_PER_SEC};
    let f = Fixture::new();
    let mut ingest = f.ingest();
    let flood = 2_000u64;
    for i in 0..flood {
        let garbage = format!("GET /{i} HTTP/1.1\r\nHost: collector\r\n\r\n");
        ingest
            .datagram_rejected(
                "203.0.113.9:80",
                &FrameError::BadMagic(*b"GE"),
                garbage.as_bytes(),
                T0,
            )
            .unwrap();
    }
    // One second later the budget has refilled a little.
    for _ in 0..100 {
        assert!(
            ingest
                .envelope(b"junk", "203.0.113.9:80", T0 + 1_000)
                .is_err()
        );
    }
    ingest.flush_counts(T0 + 1_000).unwrap();
    let cmdb = ingest.cmdb();
    assert_eq!(
        cmdb.counter("datagrams_rejected.bad_magic").unwrap(),
        flood as i64
    );
    assert_eq!(cmdb.counter("envelopes_rejected.malformed").unwrap(), 100);
    let rows = count(cmdb, "quarantine", "1");
    assert_eq!(rows, (ROW_BURST + ROWS_PER_SEC) as i64);
    assert_eq!(
        cmdb.counter("quarantine_suppressed").unwrap(),
        flood as i64 + 100 - rows
    );
}
