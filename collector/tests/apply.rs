//! Applying verified summaries: CIs, attributes, history, relations, events, counters.

mod common;

use common::{Fixture, T0, count, gateway, plc, plc_key};
use outpost_proto::SequenceVerdict;
use outpost_proto::model::{PollStatus, RegisterBlock, RegisterKind};

#[test]
fn first_summary_creates_cis_attributes_relations_and_events() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let mut summary = f.summary(vec![plc(1, vec![10, 20]), plc(2, vec![30])]);
    summary.gateway = Some(gateway());
    let wire = f.seal(&summary);
    let applied = ingest.envelope(&wire, "127.0.0.1:9", T0 + 1_000).unwrap();
    assert_eq!(applied.seq, 1);
    assert_eq!(applied.verdict, SequenceVerdict::First);
    assert_eq!(applied.outcome.assets_new, 2);

    let cmdb = ingest.cmdb();
    let assets = cmdb.assets().unwrap();
    assert_eq!(assets.len(), 2);
    let a = &assets[0];
    assert_eq!(a.ci_key, plc_key(1));
    assert_eq!(a.name, "plc-1");
    assert_eq!(a.endpoint, "tcp://10.0.0.2:502");
    assert_eq!(a.zone, "cell-1");
    assert_eq!(a.agent_id, "gw-1");
    assert_eq!(a.status, "ok");
    assert_eq!(a.vendor_name.as_deref(), Some("ACME"));
    assert_eq!(a.product_code.as_deref(), Some("PLC-9"));
    assert_eq!(a.revision.as_deref(), Some("1.0"));
    assert_eq!(a.vendor_url, None);
    assert_eq!(a.ident_method, "read_device_identification");
    assert_eq!(a.first_seen.ms(), (T0 + 1_000) as i64);
    assert_eq!(a.last_seen.map(|t| t.ms()), Some((T0 + 1_000) as i64));
    assert_eq!(a.last_envelope_seq, 1);
    assert_eq!(a.blocks.len(), 1);
    assert_eq!(a.blocks[0].name, "setpoints");
    assert_eq!(a.blocks[0].values, vec![10, 20]);
    assert_eq!(a.blocks[0].kind.as_deref(), Some("holding"));
    assert_eq!(a.blocks[0].start, Some(100));

    // Attributes: exactly the non-null ones, each with one history row (old value NULL).
    let mut attrs: Vec<(String, Option<String>)> = cmdb
        .connection()
        .prepare(
            "SELECT attribute, value FROM asset_attributes JOIN assets USING (asset_id)
             WHERE ci_key = ?1 ORDER BY attribute",
        )
        .unwrap()
        .query_map([plc_key(1)], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let block = attrs.remove(0);
    assert_eq!(block.0, "block.setpoints");
    assert!(block.1.unwrap().contains("\"values\":[10,20]"));
    let names: Vec<&str> = attrs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "ident_method",
            "name",
            "product_code",
            "revision",
            "status",
            "vendor_name"
        ]
    );
    let history = cmdb.history(Some(&plc_key(1)), None).unwrap();
    assert_eq!(history.len(), 7);
    assert!(history.iter().all(|h| h.old_value.is_none()));
    assert!(
        history
            .iter()
            .all(|h| h.envelope_seq == 1 && h.agent_id == "gw-1")
    );
    assert_eq!(history[0].envelope_hash, f.tip.hash.to_string());

    // Relations.
    let rel: Vec<(String, String, String)> = cmdb
        .connection()
        .prepare("SELECT from_ci, type, to_ci FROM relations ORDER BY from_ci, type")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let expect = |from: &str, t: &str, to: &str| (from.to_owned(), t.to_owned(), to.to_owned());
    assert_eq!(
        rel,
        vec![
            expect("gateway/gw-1", "hosts", "agent/gw-1"),
            expect(&plc_key(1), "located_in", "zone/cell-1"),
            expect(&plc_key(1), "reported_by", "agent/gw-1"),
            expect(&plc_key(2), "located_in", "zone/cell-1"),
            expect(&plc_key(2), "reported_by", "agent/gw-1"),
        ]
    );

    // Agent tip, gateway, envelope kept verbatim, events, counters.
    let agents = cmdb.agents().unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].last_seq, Some(1));
    assert_eq!(agents[0].last_hash, Some(f.tip.hash.to_string()));
    assert_eq!(agents[0].assets, 2);
    let gw = agents[0].gateway.as_ref().unwrap();
    assert_eq!(gw.hostname.as_deref(), Some("gw-host"));
    assert_eq!(gw.interfaces[0]["name"], "eth0");
    let raw: Vec<u8> = cmdb
        .connection()
        .query_row("SELECT raw FROM envelopes WHERE seq = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(raw, wire);
    let kinds: Vec<String> = cmdb
        .events(None)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["agent_first_seen", "asset_new", "asset_new"]);
    assert_eq!(cmdb.counter("envelopes_accepted").unwrap(), 1);
    assert_eq!(cmdb.counter("assets_new").unwrap(), 2);
}

#[test]
fn identical_summary_adds_no_history_but_updates_last_seen() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let summary = f.summary(vec![plc(1, vec![1, 2, 3])]);
    let first = f.seal(&summary);
    ingest.envelope(&first, "p", T0).unwrap();
    let history_before = count(ingest.cmdb(), "attribute_history", "1");
    let events_before = count(ingest.cmdb(), "events", "1");

    let second = f.seal(&summary);
    let applied = ingest.envelope(&second, "p", T0 + 60_000).unwrap();
    assert_eq!(applied.verdict, SequenceVerdict::Next);
    assert_eq!(applied.outcome.assets_unchanged, 1);
    assert_eq!(applied.outcome.attribute_changes, 0);

    let cmdb = ingest.cmdb();
    assert_eq!(count(cmdb, "attribute_history", "1"), history_before);
    assert_eq!(count(cmdb, "events", "1"), events_before);
    let a = &cmdb.assets().unwrap()[0];
    assert_eq!(a.first_seen.ms(), T0 as i64);
    assert_eq!(a.last_seen.unwrap().ms(), (T0 + 60_000) as i64);
    assert_eq!(a.last_polled.ms(), (T0 + 60_000) as i64);
    assert_eq!(a.last_envelope_seq, 2);
    assert_eq!(cmdb.counter("envelopes_accepted").unwrap(), 2);
}

#[test]
fn changed_block_is_one_history_row_and_one_asset_changed_event() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let wire = f.seal(&f.summary(vec![plc(1, vec![1, 2]), plc(2, vec![5])]));
    ingest.envelope(&wire, "p", T0).unwrap();
    let history_before = count(ingest.cmdb(), "attribute_history", "1");

    let wire = f.seal(&f.summary(vec![plc(1, vec![1, 9]), plc(2, vec![5])]));
    let applied = ingest.envelope(&wire, "p", T0 + 1).unwrap();
    assert_eq!(applied.outcome.assets_changed, 1);
    assert_eq!(applied.outcome.attribute_changes, 1);

    let cmdb = ingest.cmdb();
    assert_eq!(
        count(cmdb, "attribute_history", "1"),
        history_before + 1,
        "exactly one new history row"
    );
    let last = cmdb.history(None, Some(1)).unwrap().remove(0);
    assert_eq!(last.asset, plc_key(1));
    assert_eq!(last.attribute, "block.setpoints");
    assert!(last.old_value.unwrap().contains("[1,2]"));
    assert!(last.new_value.unwrap().contains("[1,9]"));
    assert_eq!(last.envelope_seq, 2);

    let changed: Vec<_> = cmdb
        .events(None)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "asset_changed")
        .collect();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].asset.as_deref(), Some(plc_key(1).as_str()));
    let change = &changed[0].detail["changes"][0];
    assert_eq!(change["attribute"], "block.setpoints");
    let old = RegisterBlock::new("setpoints", RegisterKind::Holding, 100, vec![1, 2]);
    let new = RegisterBlock::new("setpoints", RegisterKind::Holding, 100, vec![1, 9]);
    assert_eq!(change["old"], old.hash.to_string());
    assert_eq!(change["new"], new.hash.to_string());
    assert_eq!(cmdb.counter("assets_changed").unwrap(), 1);
}

#[test]
fn firmware_change_is_drift() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let wire = f.seal(&f.summary(vec![plc(1, vec![1])]));
    ingest.envelope(&wire, "p", T0).unwrap();
    let mut upgraded = plc(1, vec![1]);
    upgraded.identity.revision = Some("2.0".into());
    let wire = f.seal(&f.summary(vec![upgraded]));
    ingest.envelope(&wire, "p", T0 + 1).unwrap();
    let cmdb = ingest.cmdb();
    assert_eq!(cmdb.assets().unwrap()[0].revision.as_deref(), Some("2.0"));
    let e = cmdb.events(Some(1)).unwrap().remove(0);
    assert_eq!(e.kind, "asset_changed");
    assert_eq!(
        e.detail["changes"],
        serde_json::json!([{"attribute": "revision", "old": "1.0", "new": "2.0"}])
    );
}

#[test]
fn unreachable_keeps_identity_and_recovery_is_an_event() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let wire = f.seal(&f.summary(vec![plc(1, vec![1])]));
    ingest.envelope(&wire, "p", T0).unwrap();

    let mut down = plc(1, vec![]);
    down.status = PollStatus::Unreachable("connect timeout after 2s".into());
    down.identity = Default::default();
    down.blocks.clear();
    let wire = f.seal(&f.summary(vec![down]));
    ingest.envelope(&wire, "p", T0 + 10).unwrap();
    {
        let cmdb = ingest.cmdb();
        let a = &cmdb.assets().unwrap()[0];
        assert_eq!(a.status, "unreachable");
        assert_eq!(a.last_problem.as_deref(), Some("connect timeout after 2s"));
        assert_eq!(a.vendor_name.as_deref(), Some("ACME"), "identity kept");
        assert_eq!(a.blocks.len(), 1, "blocks kept");
        assert_eq!(a.last_seen.unwrap().ms(), T0 as i64, "last answered at T0");
        assert_eq!(a.last_polled.ms(), (T0 + 10) as i64);
        let e = cmdb.events(Some(1)).unwrap().remove(0);
        assert_eq!(e.kind, "asset_unreachable");
        assert_eq!(e.detail["reason"], "connect timeout after 2s");
        let last = cmdb.history(None, Some(1)).unwrap().remove(0);
        assert_eq!(last.attribute, "status");
        assert_eq!(last.new_value.as_deref(), Some("unreachable"));
    }

    let wire = f.seal(&f.summary(vec![plc(1, vec![1])]));
    ingest.envelope(&wire, "p", T0 + 20).unwrap();
    let cmdb = ingest.cmdb();
    let a = &cmdb.assets().unwrap()[0];
    assert_eq!(a.status, "ok");
    assert_eq!(a.last_problem, None);
    assert_eq!(a.last_seen.unwrap().ms(), (T0 + 20) as i64);
    // Recovered, and the presence streak's end recorded (one poll, no alert).
    let mut kinds: Vec<String> = cmdb
        .events(Some(2))
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["asset_recovered", "device_returned"]);
    assert_eq!(count(cmdb, "events", "kind = 'asset_changed'"), 0);
}

#[test]
fn gap_is_recorded_with_the_exact_range() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let summary = f.summary(vec![plc(1, vec![1])]);
    let first = f.seal(&summary);
    ingest.envelope(&first, "p", T0).unwrap();
    for _ in 0..3 {
        f.seal(&summary); // sealed but lost on the way: seq 2, 3, 4
    }
    let fifth = f.seal(&summary);
    let applied = ingest.envelope(&fifth, "p", T0 + 1).unwrap();
    assert_eq!(applied.verdict, SequenceVerdict::Gap { from: 2, to: 4 });
    let cmdb = ingest.cmdb();
    let gap = cmdb
        .events(None)
        .unwrap()
        .into_iter()
        .find(|e| e.kind == "sequence_gap")
        .unwrap();
    assert_eq!(gap.agent_id.as_deref(), Some("gw-1"));
    assert_eq!(gap.detail["from_seq"], 2);
    assert_eq!(gap.detail["to_seq"], 4);
    assert_eq!(gap.detail["missing"], 3);
    assert_eq!(gap.detail["received_seq"], 5);
    assert_eq!(cmdb.counter("sequence_gaps").unwrap(), 1);
    assert_eq!(cmdb.counter("envelopes_missing").unwrap(), 3);
    assert_eq!(cmdb.agents().unwrap()[0].last_seq, Some(5));
}

#[test]
fn chain_break_is_accepted_and_recorded() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let summary = f.summary(vec![plc(1, vec![1])]);
    ingest.envelope(&f.seal(&summary), "p", T0).unwrap();
    // The agent's state was restored from an old backup: seq 2 names a different predecessor.
    f.tip.hash = outpost_proto::Digest([9; 32]);
    let applied = ingest.envelope(&f.seal(&summary), "p", T0 + 1).unwrap();
    assert_eq!(applied.verdict, SequenceVerdict::ChainBreak);
    let cmdb = ingest.cmdb();
    let e = cmdb.events(Some(1)).unwrap().remove(0);
    assert_eq!(e.kind, "chain_break");
    assert_eq!(e.detail["prev_hash"], "09".repeat(32));
    assert_eq!(cmdb.counter("chain_breaks").unwrap(), 1);
}

#[test]
fn duplicate_device_in_one_summary_keeps_the_first() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let mut twin = plc(1, vec![7]);
    twin.name = "same-device-again".into();
    let wire = f.seal(&f.summary(vec![plc(1, vec![1]), twin]));
    let applied = ingest.envelope(&wire, "p", T0).unwrap();
    assert_eq!(applied.outcome.assets, 1);
    let cmdb = ingest.cmdb();
    assert_eq!(cmdb.assets().unwrap()[0].name, "plc-1");
    assert_eq!(cmdb.counter("summary_duplicate_assets").unwrap(), 1);
}

#[test]
fn a_second_writer_cannot_make_the_asset_cache_stale() {
    let mut f = Fixture::new();
    let mut a = f.ingest();
    let mut b = f.ingest();
    a.envelope(&f.seal(&f.summary(vec![plc(1, vec![1])])), "p", T0)
        .unwrap();
    // Another writer applies a change...
    b.envelope(&f.seal(&f.summary(vec![plc(1, vec![2])])), "p", T0 + 1)
        .unwrap();
    // ...so the first one must notice that [1] is a change back, not "unchanged".
    let applied = a
        .envelope(&f.seal(&f.summary(vec![plc(1, vec![1])])), "p", T0 + 2)
        .unwrap();
    assert_eq!(applied.outcome.assets_changed, 1);
    let cmdb = a.cmdb();
    assert_eq!(cmdb.assets().unwrap()[0].blocks[0].values, vec![1]);
    assert_eq!(count(cmdb, "events", "kind = 'asset_changed'"), 2);
}

#[test]
fn a_device_reported_by_another_agent_changes_hands() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let (key2, _) = outpost_proto::SigningKey::generate().unwrap();
    let gw2 = outpost_proto::AgentId::new("gw-2").unwrap();
    ingest
        .cmdb_mut()
        .enroll(&key2.public_key(), &gw2, std::slice::from_ref(&f.zone), T0)
        .unwrap();
    ingest
        .envelope(&f.seal(&f.summary(vec![plc(1, vec![1])])), "p", T0)
        .unwrap();

    let mut g = Fixture {
        dir: tempfile::tempdir().unwrap(),
        db: f.db.clone(),
        key: key2,
        agent: gw2,
        zone: f.zone.clone(),
        tip: outpost_proto::ChainTip::GENESIS,
    };
    let applied = ingest
        .envelope(&g.seal(&g.summary(vec![plc(1, vec![1])])), "p", T0 + 1)
        .unwrap();
    assert_eq!(applied.outcome.assets_new, 0);
    {
        let cmdb = ingest.cmdb();
        assert_eq!(cmdb.assets().unwrap()[0].agent_id, "gw-2");
        let reporters: Vec<String> = cmdb
            .connection()
            .prepare("SELECT to_ci FROM relations WHERE type = 'reported_by'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(reporters, ["agent/gw-2"]);
    }
    // gw-1 reports it again, unchanged in content: it must still be re-assigned, not skipped.
    ingest
        .envelope(&f.seal(&f.summary(vec![plc(1, vec![1])])), "p", T0 + 2)
        .unwrap();
    assert_eq!(ingest.cmdb().assets().unwrap()[0].agent_id, "gw-1");
    assert_eq!(ingest.cmdb().assets().unwrap().len(), 1);
}
