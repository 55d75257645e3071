//! MQTT-side ingest: QoS 1 redelivery is recognised as a duplicate (not applied twice, not a
//! replay attack), and a signed data-lost notice is applied as a chained envelope plus an event.

mod common;

use common::{Fixture, T0, plc};
use outpost_collector::Reason;
use outpost_proto::envelope;
use outpost_proto::model::{Body, DataLost};

fn count(f: &Fixture, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(&f.db).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn redelivered_envelope_is_a_duplicate_not_a_replay() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    ingest.recognise_redelivery(true);
    let first = f.seal(&f.summary(vec![plc(1, vec![1])]));
    let second = f.seal(&f.summary(vec![plc(1, vec![2])]));
    ingest.envelope(&first, "mqtt:t", T0).unwrap();
    ingest.envelope(&second, "mqtt:t", T0).unwrap();
    let history = count(&f, "SELECT COUNT(*) FROM attribute_history");
    let events = count(&f, "SELECT COUNT(*) FROM events");
    for wire in [&first, &second, &second] {
        let r = ingest.envelope(wire, "mqtt:t", T0).unwrap_err();
        assert_eq!(r.reason, Reason::Duplicate, "{r}");
    }
    assert_eq!(count(&f, "SELECT COUNT(*) FROM envelopes"), 2);
    assert_eq!(count(&f, "SELECT COUNT(*) FROM quarantine"), 0);
    assert_eq!(
        count(
            &f,
            "SELECT value FROM counters WHERE name = 'envelopes_duplicate'"
        ),
        3
    );
    // No duplicate history rows, no events.
    assert_eq!(count(&f, "SELECT COUNT(*) FROM attribute_history"), history);
    assert_eq!(count(&f, "SELECT COUNT(*) FROM events"), events);
}

#[test]
fn without_redelivery_a_copy_is_a_replay() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let wire = f.seal(&f.summary(vec![plc(1, vec![1])]));
    ingest.envelope(&wire, "p", T0).unwrap();
    assert_eq!(
        ingest.envelope(&wire, "p", T0).unwrap_err().reason,
        Reason::Replay
    );
}

#[test]
fn data_lost_notice_is_applied_and_recorded() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let first = f.seal(&f.summary(vec![plc(1, vec![1])]));
    ingest.envelope(&first, "p", T0).unwrap();
    // Envelopes 2..=3 were dropped at the agent; 4 is the notice.
    f.tip.seq += 2;
    let notice = Body::DataLost(DataLost {
        agent: f.agent.clone(),
        zone: f.zone.clone(),
        from_seq: 2,
        to_seq: 3,
        dropped: 2,
        reason: "spool_full".into(),
    });
    let sealed = envelope::seal(&f.key, &f.agent, &f.zone, &f.tip, T0, &notice).unwrap();
    f.tip = sealed.tip;
    let applied = ingest.envelope(&sealed.wire, "p", T0).unwrap();
    assert_eq!(applied.seq, 4);
    assert_eq!(
        count(
            &f,
            "SELECT COUNT(*) FROM events WHERE kind = 'data_lost' AND json_extract(detail, '$.from_seq') = 2 AND json_extract(detail, '$.to_seq') = 3"
        ),
        1
    );
    assert_eq!(
        count(
            &f,
            "SELECT COUNT(*) FROM events WHERE kind = 'sequence_gap'"
        ),
        1
    );
    // The chain continues after the notice.
    let next = f.seal(&f.summary(vec![plc(1, vec![1])]));
    assert_eq!(ingest.envelope(&next, "p", T0).unwrap().seq, 5);

    // A notice naming a range that is not behind it is refused.
    let bad = Body::DataLost(DataLost {
        agent: f.agent.clone(),
        zone: f.zone.clone(),
        from_seq: 9,
        to_seq: 99,
        dropped: 1,
        reason: "spool_full".into(),
    });
    let sealed = envelope::seal(&f.key, &f.agent, &f.zone, &f.tip, T0, &bad).unwrap();
    assert_eq!(
        ingest.envelope(&sealed.wire, "p", T0).unwrap_err().reason,
        Reason::BodyMismatch
    );
}
