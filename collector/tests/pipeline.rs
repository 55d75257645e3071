//! Two-stage ingest gives exactly the CMDB that one-envelope-at-a-time ingest gives.

mod common;

use common::{Fixture, T0, count, plc, snapshot};
use outpost_collector::{Cmdb, Ingest, Reason, pipeline};
use outpost_proto::SigningKey;

#[test]
fn pipelined_ingest_equals_sequential_ingest() {
    let mut f = Fixture::new();
    let mut wires = Vec::new();
    for n in 0..12u16 {
        let mut assets: Vec<_> = (0..5).map(|i| plc(i, vec![i as u16])).collect();
        assets[n as usize % 5] = plc(n as u32 % 5, vec![n]); // something changes each time
        let wire = f.seal(&f.summary(assets));
        if n != 4 {
            wires.push(wire); // seq 5 is lost: a gap
        }
    }
    let replay = wires[2].clone();
    wires.push(replay);
    wires.push(b"garbage".to_vec());
    let (stranger, _) = SigningKey::generate().unwrap();
    f.key = stranger;
    wires.push(f.seal(&f.summary(vec![])));

    let items = |wires: &[Vec<u8>]| -> Vec<(Vec<u8>, String, u64)> {
        wires
            .iter()
            .enumerate()
            .map(|(n, w)| (w.clone(), "192.0.2.1:9".to_owned(), T0 + n as u64 * 1_000))
            .collect()
    };

    // Sequential, into the fixture's CMDB.
    let mut sequential = f.ingest();
    let seq_results: Vec<_> = items(&wires)
        .into_iter()
        .map(|(w, p, t)| sequential.envelope(&w, &p, t))
        .collect();

    // Pipelined, into a copy of the CMDB as it was before (same enrolment).
    let db2 = f.dir.path().join("pipelined.sqlite");
    let mut cmdb2 = Cmdb::open(&db2).unwrap();
    let trusted = sequential
        .cmdb()
        .agents()
        .unwrap()
        .remove(0)
        .keys
        .remove(0)
        .key_id;
    let key = outpost_proto::KeyId::from_hex(&trusted).unwrap();
    let public = sequential.cmdb().trusted_key(&key).unwrap().unwrap();
    cmdb2
        .enroll(&public.public_key, &public.agent, &public.zones, T0)
        .unwrap();
    let mut pipelined = Ingest::new(cmdb2);
    let pipe_results = pipeline::ingest_all(&mut pipelined, items(&wires)).unwrap();

    assert_eq!(seq_results, pipe_results);
    let reasons: Vec<Option<Reason>> = pipe_results
        .iter()
        .map(|r| r.as_ref().err().map(|e| e.reason))
        .collect();
    assert_eq!(
        &reasons[11..],
        [
            Some(Reason::Replay),
            Some(Reason::Malformed),
            Some(Reason::UnknownKey)
        ]
    );
    assert_eq!(snapshot(sequential.cmdb()), snapshot(pipelined.cmdb()));
    assert_eq!(
        sequential.cmdb().stats().unwrap().counters,
        pipelined.cmdb().stats().unwrap().counters
    );
    assert_eq!(
        count(pipelined.cmdb(), "events", "kind = 'sequence_gap'"),
        1
    );
    assert_eq!(count(pipelined.cmdb(), "quarantine", "1"), 3);
}

#[test]
fn a_key_revoked_between_check_and_apply_is_honoured() {
    let mut f = Fixture::new();
    let wire = f.seal(&f.summary(vec![plc(1, vec![1])]));
    let mut ingest = f.ingest();
    let checker = pipeline::Checker::open(&f.db).unwrap();
    let checked = checker.check(&wire).unwrap();
    ingest
        .cmdb()
        .connection()
        .execute("UPDATE agent_keys SET status = 'revoked'", [])
        .unwrap();
    let err = ingest.apply_checked(checked, &wire, "p", T0).unwrap_err();
    assert_eq!(err.reason, Reason::KeyRevoked);
    assert_eq!(ingest.cmdb().counter("envelopes_accepted").unwrap(), 0);
    assert_eq!(
        count(ingest.cmdb(), "quarantine", "reason = 'key_revoked'"),
        1
    );
}

#[test]
fn the_checker_keeps_keys_but_honours_a_revocation_at_apply_time() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let checker = pipeline::Checker::open(&f.db).unwrap();
    let first = f.seal(&f.summary(vec![plc(1, vec![1])]));
    let checked = checker.check(&first).unwrap(); // the key is now kept by the checker
    ingest.apply_checked(checked, &first, "p", T0).unwrap();
    ingest
        .cmdb()
        .connection()
        .execute("UPDATE agent_keys SET status = 'revoked'", [])
        .unwrap();
    // The checker may pass it on (it kept the key), the writer must refuse it.
    let second = f.seal(&f.summary(vec![plc(1, vec![1])]));
    let result = match checker.check(&second) {
        Ok(checked) => ingest.apply_checked(checked, &second, "p", T0 + 1),
        Err(refusal) => ingest.finish_refused(refusal, &second, "p", T0 + 1),
    };
    assert_eq!(result.unwrap_err().reason, Reason::KeyRevoked);
    assert_eq!(ingest.cmdb().counter("envelopes_accepted").unwrap(), 1);
}

#[test]
fn the_checker_sees_a_zone_enrolled_after_it_kept_the_key() {
    let mut f = Fixture::new();
    let checker = pipeline::Checker::open(&f.db).unwrap();
    checker
        .check(&f.seal(&f.summary(vec![plc(1, vec![1])])))
        .unwrap(); // kept, trusted for cell-1 only
    let cell2 = outpost_proto::ZoneId::new("cell-2").unwrap();
    f.zone = cell2.clone();
    let wire = f.seal(&f.summary(vec![plc(1, vec![1])]));
    assert_eq!(
        checker.check(&wire).unwrap_err().reason,
        Reason::ZoneNotAuthorised
    );
    // The operator adds the zone (another process, another connection).
    let mut cmdb = Cmdb::open_existing(&f.db).unwrap();
    cmdb.enroll(
        &f.key.public_key(),
        &f.agent,
        &[outpost_proto::ZoneId::new("cell-1").unwrap(), cell2],
        T0,
    )
    .unwrap();
    checker
        .check(&wire)
        .expect("checked against what is enrolled now, not the kept key");
}
