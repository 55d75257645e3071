//! Change events (`Body::Changes`) on real SQLite files: every outcome (applied,
//! already_current, stale_base, unknown_asset, awaiting_snapshot, other_agent, inconsistent),
//! judgement of applied changes at once, and no second alert from the next snapshot.

mod common;

use common::{Fixture, T0, count, gateway, plc, plc_key};
use outpost_collector::cmdb::baseline::Scope;
use outpost_collector::{Cmdb, Ingest};
use outpost_proto::changes::{
    AssetRef, BlockChange, BlockRef, Change, ChangeKind, ChangeSet, FieldChange, diff_ranges,
};
use outpost_proto::envelope;
use outpost_proto::model::{AssetObservation, Body, RegisterBlock, RegisterKind};
use outpost_proto::{AgentId, ChainTip, SigningKey};

fn seal_body(f: &mut Fixture, body: &Body) -> Vec<u8> {
    let sealed = envelope::seal(&f.key, &f.agent, &f.zone, &f.tip, T0 + f.tip.seq, body).unwrap();
    f.tip = sealed.tip;
    sealed.wire
}

fn snapshot(f: &mut Fixture, ingest: &mut Ingest, assets: Vec<AssetObservation>, at: u64) {
    let mut s = f.summary(assets);
    s.gateway = Some(gateway());
    let wire = f.seal(&s);
    ingest.envelope(&wire, "127.0.0.1:9", at).expect("applied");
}

fn send(f: &mut Fixture, ingest: &mut Ingest, changes: Vec<Change>, at: u64) {
    let body = Body::Changes(ChangeSet {
        agent: f.agent.clone(),
        zone: f.zone.clone(),
        observed_ms: at - 100,
        base_summary_seq: 1,
        changes,
        truncated: false,
    });
    let wire = seal_body(f, &body);
    ingest.envelope(&wire, "127.0.0.1:9", at).expect("applied");
}

fn asset_ref(i: u32) -> AssetRef {
    let obs = plc(i, vec![]);
    AssetRef {
        name: obs.name,
        endpoint: obs.endpoint,
        unit_id: obs.unit_id,
    }
}

/// The setpoints block of `plc(i, ..)` changing from `before` to `after`.
fn block(i: u32, before: &[u16], after: &[u16]) -> Change {
    let (ranges, truncated) = diff_ranges(before, after);
    Change {
        asset: Some(asset_ref(i)),
        what: ChangeKind::Block(BlockChange {
            block: BlockRef {
                name: "setpoints".into(),
                kind: RegisterKind::Holding,
                start: 100,
            },
            len: after.len() as u16,
            before_hash: RegisterBlock::content_hash(RegisterKind::Holding, 100, before),
            after_hash: RegisterBlock::content_hash(RegisterKind::Holding, 100, after),
            ranges,
            truncated,
        }),
    }
}

fn outcomes(cmdb: &Cmdb) -> Vec<String> {
    cmdb.observed_changes(None)
        .unwrap()
        .into_iter()
        .map(|r| r.outcome)
        .collect()
}

fn approve(cmdb: &mut Cmdb) {
    cmdb.approve_baseline(&Scope::All, "alice", "CHG-initial", T0)
        .unwrap();
}

#[test]
fn an_applied_block_change_raises_one_alert_and_the_next_snapshot_none() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![10, 20])], T0 + 1_000);
    approve(ingest.cmdb_mut());
    send(
        &mut f,
        &mut ingest,
        vec![block(1, &[10, 20], &[10, 99])],
        T0 + 2_000,
    );
    assert_eq!(outcomes(ingest.cmdb()), ["applied"]);
    let alerts = ingest.cmdb().alerts(None).unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].kind, "unauthorised_change");
    assert_eq!(alerts[0].category, "config");
    assert_eq!(
        alerts[0].envelope_seq, 2,
        "the alert's evidence is the change event"
    );
    let change = &alerts[0].detail["changes"][0];
    assert_eq!(change["attribute"], "block.setpoints");
    let row = &ingest.cmdb().observed_changes(None).unwrap()[0];
    assert_eq!(row.after["ranges"][0]["address"], 101);
    assert_eq!(row.after["ranges"][0]["after"][0], 99);
    // The snapshot that follows shows the same state: no second alert.
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![10, 99])], T0 + 3_000);
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![10, 99])], T0 + 4_000);
    assert_eq!(ingest.cmdb().alerts(None).unwrap().len(), 1);
    let drift = ingest.cmdb().drift().unwrap();
    assert_eq!(drift[0].state, "drift");
    // And a snapshot showing the old value again is a change back (judged from the snapshot).
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![10, 20])], T0 + 5_000);
    assert_eq!(ingest.cmdb().drift().unwrap()[0].state, "in_baseline");
}

#[test]
fn an_identity_change_is_applied_as_firmware_and_updates_the_asset() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![1])], T0 + 1_000);
    approve(ingest.cmdb_mut());
    let change = Change {
        asset: Some(asset_ref(1)),
        what: ChangeKind::Identity(FieldChange {
            field: "revision".into(),
            before: Some("1.0".into()),
            after: Some("2.0".into()),
        }),
    };
    send(&mut f, &mut ingest, vec![change], T0 + 2_000);
    assert_eq!(outcomes(ingest.cmdb()), ["applied"]);
    let alerts = ingest.cmdb().alerts(None).unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].category, "identity");
    assert_eq!(
        count(
            ingest.cmdb(),
            "assets",
            &format!("ci_key = '{}' AND revision = '2.0'", plc_key(1))
        ),
        1
    );
}

#[test]
fn a_change_the_cmdb_already_holds_is_already_current() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![10, 20])], T0 + 1_000);
    approve(ingest.cmdb_mut());
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![10, 99])], T0 + 2_000);
    assert_eq!(ingest.cmdb().alerts(None).unwrap().len(), 1);
    send(
        &mut f,
        &mut ingest,
        vec![block(1, &[10, 20], &[10, 99])],
        T0 + 3_000,
    );
    assert_eq!(outcomes(ingest.cmdb()), ["already_current"]);
    assert_eq!(
        ingest.cmdb().alerts(None).unwrap().len(),
        1,
        "no second alert"
    );
}

#[test]
fn a_change_from_a_value_the_cmdb_never_had_is_stale() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![10, 20])], T0 + 1_000);
    approve(ingest.cmdb_mut());
    send(
        &mut f,
        &mut ingest,
        vec![block(1, &[10, 50], &[10, 60])],
        T0 + 2_000,
    );
    assert_eq!(outcomes(ingest.cmdb()), ["stale_base"]);
    assert!(ingest.cmdb().alerts(None).unwrap().is_empty());
    let row = &ingest.cmdb().observed_changes(None).unwrap()[0];
    assert!(
        row.detail.as_deref().unwrap_or("").contains("before hash"),
        "{row:?}"
    );
}

#[test]
fn an_asset_never_seen_in_a_snapshot_is_recorded_not_applied() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![1])], T0 + 1_000);
    approve(ingest.cmdb_mut());
    let appeared = Change {
        asset: Some(asset_ref(2)),
        what: ChangeKind::Appeared(plc(2, vec![]).identity),
    };
    send(
        &mut f,
        &mut ingest,
        vec![block(2, &[1], &[2]), appeared],
        T0 + 2_000,
    );
    assert_eq!(outcomes(ingest.cmdb()), ["unknown_asset", "unknown_asset"]);
    assert_eq!(
        count(
            ingest.cmdb(),
            "assets",
            &format!("ci_key = '{}'", plc_key(2))
        ),
        0
    );
    assert!(ingest.cmdb().alerts(None).unwrap().is_empty());
    let rows = ingest.cmdb().observed_changes(None).unwrap();
    assert_eq!(rows[1].category, "appeared");
    assert_eq!(rows[1].asset.as_deref(), Some(plc_key(2).as_str()));
}

#[test]
fn a_gateway_kernel_change_is_applied_and_judged_and_ports_are_recorded() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![1])], T0 + 1_000);
    approve(ingest.cmdb_mut());
    let host = |field: &str, before: Option<&str>, after: Option<&str>| Change {
        asset: None,
        what: ChangeKind::Host(FieldChange {
            field: field.into(),
            before: before.map(str::to_owned),
            after: after.map(str::to_owned),
        }),
    };
    send(
        &mut f,
        &mut ingest,
        vec![
            host("kernel_version", Some("6.12"), Some("6.13")),
            host("listening", None, Some("tcp/4444 0.0.0.0 /tmp/nc")),
            host(
                "interface",
                Some("eth0 02:00:00:00:00:01"),
                Some("eth0 02:00:00:00:00:02"),
            ),
        ],
        T0 + 2_000,
    );
    assert_eq!(
        outcomes(ingest.cmdb()),
        ["applied", "recorded", "awaiting_snapshot"]
    );
    let alerts = ingest.cmdb().alerts(None).unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].asset, "gateway/gw-1");
    assert_eq!(alerts[0].category, "identity");
    assert_eq!(alerts[0].detail["changes"][0]["after"], "6.13");
    // The snapshot showing the new kernel raises nothing more.
    let mut s = f.summary(vec![plc(1, vec![1])]);
    let mut g = gateway();
    g.kernel_version = Some("6.13".into());
    s.gateway = Some(g);
    let wire = f.seal(&s);
    ingest
        .envelope(&wire, "127.0.0.1:9", T0 + 3_000)
        .expect("applied");
    assert_eq!(ingest.cmdb().alerts(None).unwrap().len(), 1);
}

#[test]
fn truncated_blocks_and_gateway_facts_await_the_snapshot() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![0; 600])], T0 + 1_000);
    let all_new: Vec<u16> = vec![7; 600];
    let cut = block(1, &[0; 600], &all_new);
    let ChangeKind::Block(b) = &cut.what else {
        unreachable!()
    };
    assert!(b.truncated);
    let host = Change {
        asset: None,
        what: ChangeKind::Host(FieldChange {
            field: "interface".into(),
            before: None,
            after: Some("eth1 02:00:00:00:00:09".into()),
        }),
    };
    send(&mut f, &mut ingest, vec![cut, host], T0 + 2_000);
    assert_eq!(
        outcomes(ingest.cmdb()),
        ["awaiting_snapshot", "awaiting_snapshot"]
    );
    let rows = ingest.cmdb().observed_changes(None).unwrap();
    assert!(rows[0].truncated);
    assert_eq!(rows[1].category, "host");
    assert_eq!(rows[1].asset.as_deref(), Some("gateway/gw-1"));
}

#[test]
fn ranges_that_do_not_rebuild_the_hash_are_inconsistent() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![10, 20])], T0 + 1_000);
    let mut lying = block(1, &[10, 20], &[10, 99]);
    if let ChangeKind::Block(b) = &mut lying.what {
        b.ranges[0].after[0] = 98;
    }
    send(&mut f, &mut ingest, vec![lying], T0 + 2_000);
    assert_eq!(outcomes(ingest.cmdb()), ["inconsistent"]);
    assert_eq!(
        count(
            ingest.cmdb(),
            "asset_attributes",
            "attribute = 'block.setpoints' AND value LIKE '%99%'"
        ),
        0
    );
}

#[test]
fn a_ci_reported_by_another_agent_is_not_applied() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![10, 20])], T0 + 1_000);
    // gw-2 reports the same device in the same zone later: it takes the CI over.
    let (key2, _) = SigningKey::generate().unwrap();
    let agent2 = AgentId::new("gw-2").unwrap();
    Cmdb::open(&f.db)
        .unwrap()
        .enroll(
            &key2.public_key(),
            &agent2,
            std::slice::from_ref(&f.zone),
            T0,
        )
        .unwrap();
    let mut s = f.summary(vec![plc(1, vec![10, 20])]);
    s.agent = agent2.clone();
    let wire = envelope::seal(
        &key2,
        &agent2,
        &f.zone,
        &ChainTip::GENESIS,
        T0,
        &Body::Summary(s),
    )
    .unwrap()
    .wire;
    ingest
        .envelope(&wire, "127.0.0.1:9", T0 + 1_500)
        .expect("applied");
    send(
        &mut f,
        &mut ingest,
        vec![block(1, &[10, 20], &[10, 99])],
        T0 + 2_000,
    );
    assert_eq!(outcomes(ingest.cmdb()), ["other_agent"]);
}

#[test]
fn a_change_set_naming_another_agent_is_quarantined() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![10, 20])], T0 + 1_000);
    let body = Body::Changes(ChangeSet {
        agent: AgentId::new("someone-else").unwrap(),
        zone: f.zone.clone(),
        observed_ms: T0,
        base_summary_seq: 1,
        changes: vec![block(1, &[10, 20], &[10, 99])],
        truncated: false,
    });
    let wire = seal_body(&mut f, &body);
    assert!(ingest.envelope(&wire, "127.0.0.1:9", T0 + 2_000).is_err());
    assert!(outcomes(ingest.cmdb()).is_empty());
    assert_eq!(
        count(ingest.cmdb(), "quarantine", "reason = 'body_mismatch'"),
        1
    );
}

#[test]
fn an_unstable_block_is_one_unauthorised_and_one_unstable_alert_across_events_and_snapshots() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![0])], T0 + 1_000);
    approve(ingest.cmdb_mut());
    // What an agent with change events sends for a block that changes every poll: the first
    // change, then `unstable` once, then nothing while it keeps changing; a snapshot each cycle.
    send(&mut f, &mut ingest, vec![block(1, &[0], &[1])], T0 + 2_000);
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![1])], T0 + 2_100);
    let unstable = Change {
        asset: Some(asset_ref(1)),
        what: ChangeKind::Unstable(BlockRef {
            name: "setpoints".into(),
            kind: RegisterKind::Holding,
            start: 100,
        }),
    };
    send(&mut f, &mut ingest, vec![unstable], T0 + 3_000);
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![2])], T0 + 3_100);
    for i in 3..8u16 {
        snapshot(
            &mut f,
            &mut ingest,
            vec![plc(1, vec![i])],
            T0 + 1_000 * u64::from(i + 1),
        );
    }
    let kinds: Vec<String> = ingest
        .cmdb()
        .alerts(None)
        .unwrap()
        .into_iter()
        .map(|a| a.kind)
        .collect();
    assert_eq!(kinds, ["unauthorised_change", "unstable_value"]);
    assert_eq!(outcomes(ingest.cmdb()), ["applied", "recorded"]);
}

#[test]
fn without_change_events_consecutive_changes_are_still_one_unstable_alert() {
    // The snapshot-only rule is unchanged: a change in two consecutive summaries.
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![0])], T0 + 1_000);
    approve(ingest.cmdb_mut());
    for i in 1..6u16 {
        snapshot(
            &mut f,
            &mut ingest,
            vec![plc(1, vec![i])],
            T0 + 1_000 * u64::from(i + 1),
        );
    }
    let kinds: Vec<String> = ingest
        .cmdb()
        .alerts(None)
        .unwrap()
        .into_iter()
        .map(|a| a.kind)
        .collect();
    assert_eq!(kinds, ["unauthorised_change", "unstable_value"]);
}

#[test]
fn the_listing_shows_each_change_with_its_outcome_as_text_and_json() {
    use outpost_collector::render::Format;
    use outpost_collector::render_drift::{SCHEMA_CHANGES_OBSERVED, observed_changes};
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    snapshot(&mut f, &mut ingest, vec![plc(1, vec![10, 20])], T0 + 1_000);
    send(
        &mut f,
        &mut ingest,
        vec![block(1, &[10, 20], &[10, 99]), block(2, &[1], &[2])],
        T0 + 2_000,
    );
    let rows = ingest.cmdb().observed_changes(None).unwrap();
    let text = observed_changes(&rows, Format::Text, 0);
    assert!(text.contains("101: [20] → [99]"), "{text}");
    assert!(
        text.contains("applied") && text.contains("unknown_asset"),
        "{text}"
    );
    assert!(text.contains("2 change events"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&observed_changes(&rows, Format::Json, 0)).unwrap();
    assert_eq!(json["schema"], SCHEMA_CHANGES_OBSERVED);
    assert_eq!(json["changes"][1]["outcome"], "unknown_asset");
    // --limit keeps the newest
    let newest = ingest.cmdb().observed_changes(Some(1)).unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].outcome, "unknown_asset");
}
