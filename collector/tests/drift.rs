//! Drift judgement on real SQLite files: baselines, change records (authorised vs
//! unauthorised), volatile blocks, new and unreachable devices, bad change records, and alert
//! delivery to real sockets and files.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{Fixture, T0, count, gateway, plc, plc_key};
use outpost_collector::alert::{AlertConfig, Dispatcher, SinkSpec};
use outpost_collector::cmdb::baseline::{DriftError, Scope};
use outpost_collector::cmdb::change_record::{ChangeInput, parse_csv};
use outpost_collector::{Cmdb, Ingest};
use outpost_proto::model::{AssetObservation, PollStatus, RegisterBlock, RegisterKind};
use serde_json::Value;

const MINUTE: u64 = 60_000;

fn rfc(ms: u64) -> String {
    outpost_collector::time::rfc3339(ms as i64)
}

/// Applies one summary of `assets` received at `at`.
fn apply(f: &mut Fixture, ingest: &mut Ingest, assets: Vec<AssetObservation>, at: u64) {
    let wire = f.seal(&f.summary(assets));
    ingest.envelope(&wire, "127.0.0.1:9", at).expect("applied");
}

fn approve_all(cmdb: &mut Cmdb) {
    cmdb.approve_baseline(&Scope::All, "alice", "CHG-initial", T0)
        .expect("approved");
}

fn change(ticket: &str, asset: &str, from: u64, to: u64, expect: &[&str]) -> ChangeInput {
    ChangeInput {
        ticket: ticket.into(),
        asset: asset.into(),
        from: rfc(from),
        to: rfc(to),
        expect: expect.iter().map(|s| s.to_string()).collect(),
        ..ChangeInput::default()
    }
}

fn with_volatile(mut obs: AssetObservation, pv: Vec<u16>) -> AssetObservation {
    obs.blocks
        .push(RegisterBlock::new("pv", RegisterKind::Input, 0, pv).with_volatile(true));
    obs
}

#[test]
fn unauthorised_register_change_raises_one_config_alert_with_evidence() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(&mut f, &mut ingest, vec![plc(1, vec![10, 20])], T0 + 1_000);
    // Before a baseline, changes are history only.
    apply(&mut f, &mut ingest, vec![plc(1, vec![10, 21])], T0 + 2_000);
    assert_eq!(ingest.cmdb().alerts(None).unwrap().len(), 0);
    approve_all(ingest.cmdb_mut());
    let drift = ingest.cmdb().drift().unwrap();
    assert_eq!(drift[0].state, "in_baseline");
    assert_eq!(drift[0].approved_by.as_deref(), Some("alice"));

    apply(&mut f, &mut ingest, vec![plc(1, vec![10, 99])], T0 + 3_000);
    // The same state again: no new alert.
    apply(&mut f, &mut ingest, vec![plc(1, vec![10, 99])], T0 + 4_000);
    let alerts = ingest.cmdb().alerts(None).unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(a.kind, "unauthorised_change");
    assert_eq!(a.category, "config");
    assert_eq!(a.severity_id, 3);
    assert_eq!(a.asset, plc_key(1));
    assert_eq!(a.zone, "cell-1");
    assert_eq!(a.agent_id, "gw-1");
    assert_eq!(a.envelope_seq, 3);
    assert_eq!(a.raised_at.ms(), (T0 + 3_000) as i64);
    let change = &a.detail["changes"][0];
    assert_eq!(change["attribute"], "block.setpoints");
    assert_eq!(
        change["registers"],
        serde_json::json!([{"address": 101, "before": 21, "after": 99}])
    );
    let drift = ingest.cmdb().drift().unwrap();
    assert_eq!(drift[0].state, "drift");
    assert_eq!(drift[0].differences.len(), 1);
    assert_eq!(drift[0].differences[0]["registers"][0]["after"], 99);

    // Back to the approved value: recorded, no alert.
    apply(&mut f, &mut ingest, vec![plc(1, vec![10, 21])], T0 + 5_000);
    assert_eq!(ingest.cmdb().alerts(None).unwrap().len(), 1);
    assert_eq!(ingest.cmdb().drift().unwrap()[0].state, "in_baseline");
    let totals = ingest.cmdb().change_totals().unwrap();
    assert_eq!(
        (
            totals.unauthorised,
            totals.authorised,
            totals.back_to_baseline
        ),
        (1, 0, 1)
    );
}

#[test]
fn firmware_change_is_an_identity_alert_of_high_severity() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(&mut f, &mut ingest, vec![plc(1, vec![1])], T0 + 1_000);
    approve_all(ingest.cmdb_mut());
    let mut flashed = plc(1, vec![1]);
    flashed.identity.revision = Some("2.0".into());
    apply(&mut f, &mut ingest, vec![flashed], T0 + 2_000);
    let alerts = ingest.cmdb().alerts(None).unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].category, "identity");
    assert_eq!(alerts[0].severity_id, 4);
    assert_eq!(
        alerts[0].detail["changes"][0],
        serde_json::json!({"attribute": "revision", "before": "1.0", "after": "2.0"})
    );
}

#[test]
fn change_inside_an_approved_window_is_authorised_with_evidence_and_no_alert() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(&mut f, &mut ingest, vec![plc(1, vec![10, 20])], T0 + 1_000);
    approve_all(ingest.cmdb_mut());
    let rec = change(
        "CHG0031337",
        "plc-1",
        T0,
        T0 + 10 * MINUTE,
        &["block.setpoints[101]=25"],
    );
    ingest
        .cmdb_mut()
        .add_changes(&[("cli".into(), rec)], "cli", T0)
        .unwrap();
    apply(&mut f, &mut ingest, vec![plc(1, vec![10, 25])], T0 + 2_000);
    assert_eq!(ingest.cmdb().alerts(None).unwrap().len(), 0);
    let changes = ingest.cmdb().changes().unwrap();
    assert_eq!(changes[0].state, "implemented");
    let ev = &changes[0].evidence[0];
    assert_eq!(ev["envelope_seq"], 2);
    assert_eq!(ev["envelope_hash"], f.tip.hash.to_string());
    assert_eq!(ev["observed_at"], rfc(T0 + 2_000));
    assert_eq!(ev["changes"][0]["registers"][0]["before"], 20);
    assert_eq!(ev["changes"][0]["registers"][0]["after"], 25);
    // Differs from the baseline, but explained by the record until confirmed.
    let drift = ingest.cmdb().drift().unwrap();
    assert_eq!(drift[0].state, "authorised");
    assert_eq!(drift[0].pending_ticket.as_deref(), Some("CHG0031337"));

    let confirmed = ingest
        .cmdb_mut()
        .confirm_change("CHG0031337", "bob", T0 + 3_000)
        .unwrap();
    assert_eq!(confirmed.len(), 1);
    assert_eq!(confirmed[0].moved, ["block.setpoints"]);
    assert!(confirmed[0].unexplained.is_empty());
    let drift = ingest.cmdb().drift().unwrap();
    assert_eq!(drift[0].state, "in_baseline");
    assert_eq!(drift[0].baseline_ticket.as_deref(), Some("CHG0031337"));
    let totals = ingest.cmdb().change_totals().unwrap();
    assert_eq!((totals.authorised, totals.unauthorised), (1, 0));
    assert_eq!(totals.verified_percent, Some(100.0));
}

#[test]
fn wrong_value_or_outside_the_window_is_unauthorised_and_names_the_near_miss() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(&mut f, &mut ingest, vec![plc(1, vec![10])], T0 + 1_000);
    approve_all(ingest.cmdb_mut());
    let recs = vec![
        (
            "a".into(),
            change(
                "CHG1",
                &plc_key(1),
                T0,
                T0 + MINUTE,
                &["block.setpoints[100]=11"],
            ),
        ),
        (
            "b".into(),
            change("CHG2", &plc_key(1), T0 + 60 * MINUTE, T0 + 61 * MINUTE, &[]),
        ),
    ];
    ingest.cmdb_mut().add_changes(&recs, "test", T0).unwrap();
    // In CHG1's window but a different value than expected.
    apply(&mut f, &mut ingest, vec![plc(1, vec![12])], T0 + 2_000);
    let alerts = ingest.cmdb().alerts(None).unwrap();
    assert_eq!(alerts.len(), 1);
    let miss = &alerts[0].detail["near_misses"][0];
    assert_eq!(miss["ticket"], "CHG1");
    assert_eq!(miss["mismatches"][0]["expected"], "11");
    assert_eq!(miss["mismatches"][0]["observed"], "12");
    // Outside every window.
    apply(
        &mut f,
        &mut ingest,
        vec![plc(1, vec![13])],
        T0 + 30 * MINUTE,
    );
    assert_eq!(ingest.cmdb().alerts(None).unwrap().len(), 2);
    let states: Vec<String> = ingest
        .cmdb()
        .changes()
        .unwrap()
        .into_iter()
        .map(|c| c.state)
        .collect();
    assert_eq!(states, ["open", "open"]);
}

#[test]
fn an_authorised_change_never_explains_away_an_earlier_unauthorised_one() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(&mut f, &mut ingest, vec![plc(1, vec![10, 20])], T0 + 1_000);
    approve_all(ingest.cmdb_mut());
    // Unauthorised: register 100 and the firmware.
    let mut tampered = plc(1, vec![66, 20]);
    tampered.identity.revision = Some("6.6".into());
    apply(&mut f, &mut ingest, vec![tampered.clone()], T0 + 2_000);
    // Then an authorised change of register 101 in the same block.
    let rec = change(
        "CHG7",
        "plc-1",
        T0,
        T0 + MINUTE,
        &["block.setpoints[101]=25"],
    );
    ingest
        .cmdb_mut()
        .add_changes(&[("cli".into(), rec)], "cli", T0)
        .unwrap();
    let mut next = plc(1, vec![66, 25]);
    next.identity.revision = Some("6.6".into());
    apply(&mut f, &mut ingest, vec![next], T0 + 3_000);
    assert_eq!(ingest.cmdb().alerts(None).unwrap().len(), 1);
    assert_eq!(ingest.cmdb().changes().unwrap()[0].state, "implemented");
    let drift = &ingest.cmdb().drift().unwrap()[0];
    assert_eq!(drift.state, "drift", "{drift:#?}");
    assert!(drift.differences.iter().all(|d| d["authorised"] == false));
    let confirmed = ingest
        .cmdb_mut()
        .confirm_change("CHG7", "bob", T0 + 4_000)
        .unwrap();
    assert!(confirmed[0].moved.is_empty(), "{confirmed:?}");
    assert_eq!(confirmed[0].unexplained, ["block.setpoints", "revision"]);
    assert_eq!(ingest.cmdb().drift().unwrap()[0].state, "drift");
}

#[test]
fn a_config_value_changing_every_poll_is_reported_once_as_unstable() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(&mut f, &mut ingest, vec![plc(1, vec![0])], T0 + 1_000);
    approve_all(ingest.cmdb_mut());
    // A counter in a block nobody marked volatile: changes on every one of 20 polls.
    for i in 1..=20u16 {
        apply(
            &mut f,
            &mut ingest,
            vec![plc(1, vec![i])],
            T0 + 1_000 + u64::from(i) * 1_000,
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
    assert_eq!(
        count(ingest.cmdb(), "detected_changes", "verdict = 'unstable'"),
        19
    );
    // It settles for a poll, then changes again: a new unauthorised change.
    apply(&mut f, &mut ingest, vec![plc(1, vec![20])], T0 + 30_000);
    apply(&mut f, &mut ingest, vec![plc(1, vec![77])], T0 + 31_000);
    assert_eq!(ingest.cmdb().alerts(None).unwrap().len(), 3);
    // An operator reverting it at the next poll is not "unstable": back to baseline.
    apply(&mut f, &mut ingest, vec![plc(1, vec![0])], T0 + 32_000);
    assert_eq!(ingest.cmdb().alerts(None).unwrap().len(), 3);
    assert_eq!(ingest.cmdb().drift().unwrap()[0].state, "in_baseline");
}

#[test]
fn auto_confirm_moves_the_baseline_at_once() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(&mut f, &mut ingest, vec![plc(1, vec![10])], T0 + 1_000);
    approve_all(ingest.cmdb_mut());
    let mut rec = change("CHG9", "plc-1", T0, T0 + MINUTE, &[]);
    rec.auto_confirm = true;
    ingest
        .cmdb_mut()
        .add_changes(&[("cli".into(), rec)], "cli", T0)
        .unwrap();
    apply(&mut f, &mut ingest, vec![plc(1, vec![11])], T0 + 2_000);
    let changes = ingest.cmdb().changes().unwrap();
    assert_eq!(changes[0].state, "confirmed");
    assert_eq!(changes[0].confirmed_by.as_deref(), Some("auto"));
    assert_eq!(ingest.cmdb().drift().unwrap()[0].state, "in_baseline");
    assert!(ingest.cmdb().alerts(None).unwrap().is_empty());
}

#[test]
fn volatile_blocks_changing_every_poll_never_alert() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(
        &mut f,
        &mut ingest,
        vec![with_volatile(plc(1, vec![10]), vec![0, 0])],
        T0 + 1_000,
    );
    approve_all(ingest.cmdb_mut());
    for i in 1..=50u16 {
        let obs = with_volatile(plc(1, vec![10]), vec![i, i.wrapping_mul(7)]);
        apply(
            &mut f,
            &mut ingest,
            vec![obs],
            T0 + 1_000 + u64::from(i) * 1_000,
        );
    }
    assert!(ingest.cmdb().alerts(None).unwrap().is_empty());
    assert_eq!(ingest.cmdb().drift().unwrap()[0].state, "in_baseline");
    assert_eq!(count(ingest.cmdb(), "detected_changes", "1"), 0);
}

#[test]
fn new_device_in_a_baselined_zone_and_unreachable_baselined_device_alert() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(&mut f, &mut ingest, vec![plc(1, vec![1])], T0 + 1_000);
    approve_all(ingest.cmdb_mut());
    apply(
        &mut f,
        &mut ingest,
        vec![down(1), plc(2, vec![5])],
        T0 + 2_000,
    );
    // Unreachable for the default three consecutive polls before the presence alert.
    apply(
        &mut f,
        &mut ingest,
        vec![down(1), plc(2, vec![5])],
        T0 + 3_000,
    );
    apply(
        &mut f,
        &mut ingest,
        vec![down(1), plc(2, vec![5])],
        T0 + 4_000,
    );
    let alerts = ingest.cmdb().alerts(None).unwrap();
    let kinds: Vec<(&str, &str, i64)> = alerts
        .iter()
        .map(|a| (a.kind.as_str(), a.category.as_str(), a.severity_id))
        .collect();
    assert_eq!(
        kinds,
        [
            ("new_device", "new_device", 4),
            ("device_unreachable", "presence", 2),
        ]
    );
    assert_eq!(alerts[0].asset, plc_key(2));
    assert_eq!(alerts[0].detail["revision"], "1.0");
    assert_eq!(alerts[1].detail["unreachable_polls"], 3);
    assert_eq!(alerts[1].detail["reason"], "connect timed out");
    assert_eq!(alerts[1].raised_at.ms(), (T0 + 4_000) as i64);
}

/// plc-`n` not answering.
fn down(n: u32) -> AssetObservation {
    let mut d = plc(n, vec![]);
    d.status = PollStatus::Unreachable("connect timed out".into());
    d.blocks.clear();
    d
}

fn events_of(cmdb: &Cmdb, kind: &str) -> Vec<Value> {
    let conn = cmdb.connection();
    let mut stmt = conn
        .prepare("SELECT detail FROM events WHERE kind = ?1 ORDER BY event_id")
        .unwrap();
    stmt.query_map([kind], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|d| serde_json::from_str(&d.unwrap()).unwrap())
        .collect()
}

#[test]
fn a_flapping_device_raises_no_presence_alert_and_a_long_outage_exactly_one() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    assert_eq!(ingest.cmdb().unreachable_polls().unwrap(), 3, "the default");
    let mut at = T0 + 1_000;
    let mut poll = |f: &mut Fixture, ingest: &mut Ingest, obs: AssetObservation| {
        apply(f, ingest, vec![obs], at);
        at += 1_000;
    };
    poll(&mut f, &mut ingest, plc(1, vec![1]));
    approve_all(ingest.cmdb_mut());
    // Flapping: down for two polls, back, down for two, back (the second time with a new
    // reason, so the changed-observation path counts too).
    for round in 0..2 {
        poll(&mut f, &mut ingest, down(1));
        let mut again = down(1);
        if round == 1 {
            again.status = PollStatus::Unreachable("connection refused".into());
        }
        poll(&mut f, &mut ingest, again);
        poll(&mut f, &mut ingest, plc(1, vec![1]));
    }
    assert_eq!(
        ingest.cmdb().alerts(None).unwrap().len(),
        0,
        "flapping: no alert"
    );
    let returned = events_of(ingest.cmdb(), "device_returned");
    assert_eq!(returned.len(), 2, "{returned:#?}");
    assert_eq!(returned[0]["unreachable_polls"], 2);
    assert!(returned[0]["unreachable_alert_id"].is_null());

    // A real outage: five polls, one alert at the third.
    for _ in 0..5 {
        poll(&mut f, &mut ingest, down(1));
    }
    let alerts = ingest.cmdb().alerts(None).unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].kind, "device_unreachable");
    assert_eq!(alerts[0].detail["unreachable_polls"], 3);
    assert_eq!(alerts[0].detail["threshold_polls"], 3);
    // Back: an informational device_returned alert naming the outage.
    poll(&mut f, &mut ingest, plc(1, vec![1]));
    let alerts = ingest.cmdb().alerts(None).unwrap();
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    let back = &alerts[1];
    assert_eq!(
        (back.kind.as_str(), back.category.as_str(), back.severity_id),
        ("device_returned", "presence", 1)
    );
    assert_eq!(back.detail["unreachable_polls"], 5);
    assert_eq!(back.detail["unreachable_alert_id"], alerts[0].alert_id);
    let event = outpost_collector::alert::ocsf::event(back);
    assert_eq!(event["class_uid"], 5019);
    assert_eq!(event["severity"], "Informational");
    let returned = events_of(ingest.cmdb(), "device_returned");
    assert_eq!(returned.len(), 3);
    assert_eq!(returned[2]["alert_id"], alerts[1].alert_id);
}

#[test]
fn unreachable_polls_of_one_alerts_at_the_first_unreachable_poll() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    ingest.cmdb_mut().set_unreachable_polls(1).unwrap();
    assert_eq!(ingest.cmdb().unreachable_polls().unwrap(), 1);
    apply(&mut f, &mut ingest, vec![plc(1, vec![1])], T0 + 1_000);
    approve_all(ingest.cmdb_mut());
    apply(&mut f, &mut ingest, vec![down(1)], T0 + 2_000);
    apply(&mut f, &mut ingest, vec![down(1)], T0 + 3_000);
    let alerts = ingest.cmdb().alerts(None).unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].detail["unreachable_polls"], 1);
    // Still gone: no second alert.
    apply(&mut f, &mut ingest, vec![down(1)], T0 + 4_000);
    assert_eq!(ingest.cmdb().alerts(None).unwrap().len(), 1);
}

/// Applies one summary with the gateway's facts.
fn apply_gw(f: &mut Fixture, ingest: &mut Ingest, g: outpost_proto::model::HostFacts, at: u64) {
    let mut summary = f.summary(vec![plc(1, vec![1])]);
    summary.gateway = Some(g);
    let wire = f.seal(&summary);
    ingest.envelope(&wire, "127.0.0.1:9", at).expect("applied");
}

#[test]
fn gateway_host_changes_are_judged_by_category() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply_gw(&mut f, &mut ingest, gateway(), T0 + 1_000);
    let done = ingest
        .cmdb_mut()
        .approve_baseline(&Scope::All, "alice", "initial", T0)
        .unwrap();
    assert_eq!((done.assets, done.gateways), (1, 1));
    // A reboot (boot time) and more memory are not configuration changes.
    let mut rebooted = gateway();
    rebooted.boot_time += 3_600;
    rebooted.memory_bytes *= 2;
    apply_gw(&mut f, &mut ingest, rebooted, T0 + 2_000);
    assert!(ingest.cmdb().alerts(None).unwrap().is_empty());

    // A new kernel: identity; a new interface: config.
    let mut kernel = gateway();
    kernel.kernel_version = Some("6.13".into());
    apply_gw(&mut f, &mut ingest, kernel.clone(), T0 + 3_000);
    let mut nic = kernel.clone();
    nic.interfaces.push(outpost_proto::model::NetInterface {
        name: "wlan0".into(),
        mac: Some("02:00:00:00:00:99".into()),
        addresses: vec![],
    });
    apply_gw(&mut f, &mut ingest, nic.clone(), T0 + 4_000);
    let alerts = ingest.cmdb().alerts(None).unwrap();
    let got: Vec<(&str, &str, i64)> = alerts
        .iter()
        .map(|a| (a.asset.as_str(), a.category.as_str(), a.severity_id))
        .collect();
    assert_eq!(
        got,
        [
            ("gateway/gw-1", "identity", 4),
            ("gateway/gw-1", "config", 3)
        ]
    );
    assert_eq!(alerts[0].asset_name, "gw-host");
    assert_eq!(
        alerts[0].detail["changes"][0],
        serde_json::json!({"attribute": "kernel_version", "before": "6.12", "after": "6.13"})
    );
    let row = ingest
        .cmdb()
        .drift()
        .unwrap()
        .into_iter()
        .find(|d| d.ci_key == "gateway/gw-1")
        .unwrap();
    assert_eq!(row.state, "drift");
    assert_eq!(row.differences.len(), 2);

    // An OS upgrade under a change record for the gateway: authorised.
    let rec = change(
        "CHG-OS",
        "gateway/gw-1",
        T0,
        T0 + 10 * MINUTE,
        &["os_version=14"],
    );
    ingest
        .cmdb_mut()
        .add_changes(&[("cli".into(), rec)], "cli", T0)
        .unwrap();
    let mut upgraded = nic;
    upgraded.os_version = Some("14".into());
    apply_gw(&mut f, &mut ingest, upgraded, T0 + 5_000);
    assert_eq!(ingest.cmdb().alerts(None).unwrap().len(), 2);
    assert_eq!(ingest.cmdb().changes().unwrap()[0].state, "implemented");
    let confirmed = ingest
        .cmdb_mut()
        .confirm_change("CHG-OS", "bob", T0 + 6_000)
        .unwrap();
    assert_eq!(confirmed[0].moved, ["os_version"]);
    assert_eq!(confirmed[0].unexplained, ["interfaces", "kernel_version"]);
}

#[test]
fn bad_change_records_are_refused_with_clear_errors_and_nothing_stored() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(&mut f, &mut ingest, vec![plc(1, vec![1])], T0 + 1_000);
    let cmdb = ingest.cmdb_mut();
    let invalid = |e: DriftError| e.to_string();

    let inverted = change("CHG1", "plc-1", T0 + MINUTE, T0, &[]);
    let good = change("CHG2", "plc-1", T0, T0 + MINUTE, &[]);
    let err = invalid(
        cmdb.add_changes(
            &[("line 2".into(), good.clone()), ("line 3".into(), inverted)],
            "f.csv",
            T0,
        )
        .unwrap_err(),
    );
    assert!(
        err.contains("line 3: ticket CHG1: the window ends"),
        "{err}"
    );
    assert!(err.contains("no change records stored"), "{err}");

    let unknown = change("CHG3", "no-such-plc", T0, T0 + MINUTE, &[]);
    let err = invalid(
        cmdb.add_changes(&[("x".into(), unknown)], "cli", T0)
            .unwrap_err(),
    );
    assert!(err.contains("no asset \"no-such-plc\""), "{err}");

    let bad_expect = change("CHG4", "plc-1", T0, T0 + MINUTE, &["setpoint"]);
    let err = invalid(
        cmdb.add_changes(&[("x".into(), bad_expect)], "cli", T0)
            .unwrap_err(),
    );
    assert!(err.contains("not field=value"), "{err}");

    let bad_time = ChangeInput {
        from: "yesterday".into(),
        ..change("CHG5", "plc-1", T0, T0 + MINUTE, &[])
    };
    let err = invalid(
        cmdb.add_changes(&[("x".into(), bad_time)], "cli", T0)
            .unwrap_err(),
    );
    assert!(err.contains("not an RFC 3339 time"), "{err}");
    assert_eq!(count(cmdb, "change_records", "1"), 0);

    // Duplicates: the whole import is refused.
    cmdb.add_changes(&[("x".into(), good.clone())], "cli", T0)
        .unwrap();
    let err = invalid(
        cmdb.add_changes(&[("x".into(), good)], "cli", T0)
            .unwrap_err(),
    );
    assert!(err.contains("already recorded"), "{err}");
    assert_eq!(count(cmdb, "change_records", "1"), 1);

    // Malformed CSV never reaches the CMDB.
    assert!(parse_csv("ticket;asset\nCHG;x\n").is_err());

    // Approving nothing or an unknown zone.
    let err = invalid(
        cmdb.approve_baseline(&Scope::Zone("nowhere".into()), "a", "r", T0)
            .unwrap_err(),
    );
    assert!(err.contains("no zone \"nowhere\""), "{err}");
    let err = invalid(cmdb.approve_baseline(&Scope::All, "", "r", T0).unwrap_err());
    assert!(err.contains("--by"), "{err}");
}

#[test]
fn alerts_reach_a_syslog_listener_and_an_ocsf_file_and_a_down_sink_retries() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(&mut f, &mut ingest, vec![plc(1, vec![1])], T0 + 1_000);
    approve_all(ingest.cmdb_mut());
    apply(&mut f, &mut ingest, vec![plc(1, vec![2])], T0 + 2_000);

    let listener = UdpSocket::bind("127.0.0.1:0").unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // A TCP port nobody listens on: bind, learn the port, close.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let file = f.dir.path().join("alerts.ocsf.jsonl");
    let sinks = vec![
        SinkSpec::OcsfFile(file.clone()),
        SinkSpec::syslog(&format!("udp://{}", listener.local_addr().unwrap())).unwrap(),
        SinkSpec::syslog(&format!("tcp://{down}")).unwrap(),
    ];
    let dispatcher = Dispatcher::start(AlertConfig {
        db: f.db.clone(),
        sinks,
    })
    .unwrap();
    let mut buf = [0u8; 65536];
    let n = listener.recv(&mut buf).expect("a syslog datagram");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.starts_with("<36>1 "), "{msg}"); // auth facility, warning (config)
    assert!(
        msg.contains(" unauthorised_change [outpost@32473 alert_id=\"1\""),
        "{msg}"
    );
    let body: Value = serde_json::from_str(&msg[msg.find("] ").unwrap() + 2..]).unwrap();
    assert_eq!(body["class_uid"], 5019);

    // The file sink, and failures on the down sink counted while it stays pending.
    let ok = wait_for(|| {
        let c = Cmdb::open_existing(&f.db).unwrap();
        let sinks = c.alert_sinks().unwrap();
        let tcp = sinks.iter().find(|s| s.sink.starts_with("syslog+tcp"))?;
        let file_done = sinks
            .iter()
            .any(|s| s.sink.starts_with("ocsf-file") && s.delivered == 1);
        (file_done && tcp.failures >= 2 && tcp.delivered == 0).then_some(())
    });
    assert!(ok.is_some(), "file delivered and TCP failures counted");
    dispatcher.stop();
    let lines = std::fs::read_to_string(&file).unwrap();
    assert_eq!(lines.lines().count(), 1);
    let e: Value = serde_json::from_str(lines.trim()).unwrap();
    assert_eq!(e["unmapped"]["outpost"]["evidence"]["envelope_seq"], 2);
    let c = Cmdb::open_existing(&f.db).unwrap();
    assert!(c.counter("alert_delivery_failures").unwrap() >= 2);
    assert_eq!(
        c.pending_alerts(&format!("syslog+tcp://{down}"), 10)
            .unwrap()
            .len(),
        1
    );
}

/// Polls `f` for up to 15 s.
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn a_syslog_tcp_sink_that_comes_back_gets_the_pending_alert_octet_counted() {
    use std::io::Read as _;
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(&mut f, &mut ingest, vec![plc(1, vec![1])], T0 + 1_000);
    approve_all(ingest.cmdb_mut());
    let mut flashed = plc(1, vec![1]);
    flashed.identity.revision = Some("9.9".into());
    apply(&mut f, &mut ingest, vec![flashed], T0 + 2_000);

    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sink = SinkSpec::syslog(&format!("tcp://{addr}")).unwrap();
    let name = sink.name();
    let dispatcher = Dispatcher::start(AlertConfig {
        db: f.db.clone(),
        sinks: vec![sink],
    })
    .unwrap();
    // Down first: failures are counted, the alert stays pending.
    let failed = wait_for(|| {
        let c = Cmdb::open_existing(&f.db).unwrap();
        let s = c.alert_sinks().unwrap();
        (s[0].failures >= 1).then_some(())
    });
    assert!(failed.is_some());
    // The SIEM comes up on the same address; the retry delivers.
    let listener = std::net::TcpListener::bind(addr).expect("rebind the SIEM port");
    let (mut conn, _) = listener.accept().expect("the collector reconnects");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let frame = loop {
        let n = conn.read(&mut buf).expect("read");
        assert!(n > 0, "connection closed early");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((len, rest)) = text.split_once(' ')
            && let Ok(len) = len.parse::<usize>()
            && rest.len() >= len
        {
            break rest[..len].to_owned();
        }
    };
    // identity change: auth facility (4), severity 2 (high) → <34>
    assert!(frame.starts_with("<34>1 "), "{frame}");
    assert!(frame.contains("category=\"identity\""), "{frame}");
    let delivered = wait_for(|| {
        let c = Cmdb::open_existing(&f.db).unwrap();
        c.pending_alerts(&name, 10).unwrap().is_empty().then_some(c)
    })
    .expect("marked delivered");
    dispatcher.stop();
    let attempts: i64 = delivered
        .connection()
        .query_row("SELECT attempts FROM alert_deliveries", [], |r| r.get(0))
        .unwrap();
    assert!(attempts >= 2, "{attempts}");
    assert_eq!(delivered.alerts(None).unwrap()[0].delivered_to, [name]);
}

/// Reads one HTTP request (headers and a Content-Length body) and answers with `status`.
fn http_exchange(listener: &std::net::TcpListener, status: &str) -> String {
    use std::io::{Read as _, Write as _};
    let (mut conn, _) = listener.accept().expect("a webhook request");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let request = loop {
        let n = conn.read(&mut buf).expect("read");
        assert!(n > 0, "connection closed early");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if body.len() >= len {
                break text;
            }
        }
    };
    let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    conn.write_all(reply.as_bytes()).unwrap();
    request
}

#[test]
fn a_webhook_gets_the_ocsf_event_and_an_error_answer_is_retried() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(&mut f, &mut ingest, vec![plc(1, vec![1])], T0 + 1_000);
    approve_all(ingest.cmdb_mut());
    apply(&mut f, &mut ingest, vec![plc(1, vec![2])], T0 + 2_000);

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let sink = SinkSpec::webhook(&url).unwrap();
    assert!(SinkSpec::webhook("ftp://x/y").is_err());
    assert!(SinkSpec::webhook("not a url").is_err());
    let name = sink.name();
    let dispatcher = Dispatcher::start(AlertConfig {
        db: f.db.clone(),
        sinks: vec![sink],
    })
    .unwrap();
    // The SIEM's endpoint fails once, then accepts.
    let first = http_exchange(&listener, "503 Service Unavailable");
    assert!(first.starts_with("POST /hook HTTP/1.1"), "{first}");
    let second = http_exchange(&listener, "200 OK");
    let body = &second[second.find("\r\n\r\n").unwrap() + 4..];
    let event: Value = serde_json::from_str(body).expect("OCSF JSON body");
    assert_eq!(event["class_uid"], 5019);
    assert_eq!(event["unmapped"]["outpost"]["evidence"]["envelope_seq"], 2);
    let c = wait_for(|| {
        let c = Cmdb::open_existing(&f.db).unwrap();
        c.pending_alerts(&name, 10).unwrap().is_empty().then_some(c)
    })
    .expect("marked delivered");
    dispatcher.stop();
    let sink = &c.alert_sinks().unwrap()[0];
    assert_eq!((sink.delivered, sink.failures), (1, 1));
    assert!(
        sink.last_error.as_deref().unwrap_or("").contains("503"),
        "{sink:?}"
    );
}

#[test]
fn confirm_polls_holds_a_change_until_seen_m_times_and_a_glitch_never_alerts() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    assert_eq!(ingest.cmdb().confirm_polls().unwrap(), 1, "the default");
    ingest.cmdb_mut().set_confirm_polls(3).unwrap();
    let mut at = T0 + 1_000;
    let mut poll = |f: &mut Fixture, ingest: &mut Ingest, obs: AssetObservation| {
        apply(f, ingest, vec![obs], at);
        at += 1_000;
    };
    poll(
        &mut f,
        &mut ingest,
        with_volatile(plc(1, vec![10, 20]), vec![0]),
    );
    approve_all(ingest.cmdb_mut());
    // A one-poll glitch, then back: never judged, recorded as not confirmed.
    poll(
        &mut f,
        &mut ingest,
        with_volatile(plc(1, vec![10, 99]), vec![1]),
    );
    for pv in 2..5 {
        poll(
            &mut f,
            &mut ingest,
            with_volatile(plc(1, vec![10, 20]), vec![pv]),
        );
    }
    // (The glitch's return was its first flap; the value is back where it was.)
    assert_eq!(ingest.cmdb().alerts(None).unwrap().len(), 0);
    assert_eq!(events_of(ingest.cmdb(), "change_not_confirmed").len(), 1);

    // A real change: pending for two polls (a volatile block changing counts as a sighting,
    // and so does an unchanged summary), judged at the third with that envelope as evidence.
    poll(
        &mut f,
        &mut ingest,
        with_volatile(plc(1, vec![10, 77]), vec![5]),
    );
    poll(
        &mut f,
        &mut ingest,
        with_volatile(plc(1, vec![10, 77]), vec![6]),
    );
    assert_eq!(
        ingest.cmdb().alerts(None).unwrap().len(),
        0,
        "not yet confirmed"
    );
    poll(
        &mut f,
        &mut ingest,
        with_volatile(plc(1, vec![10, 77]), vec![6]),
    );
    let alerts = ingest.cmdb().alerts(None).unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].kind, "unauthorised_change");
    assert_eq!(
        alerts[0].detail["changes"][0]["registers"],
        serde_json::json!([{"address": 101, "before": 20, "after": 77}])
    );
    assert_eq!(alerts[0].envelope_seq, 8, "the confirming envelope");
    // Unreachable polls never confirm: a change, then the device drops, then it answers.
    poll(
        &mut f,
        &mut ingest,
        with_volatile(plc(1, vec![11, 77]), vec![7]),
    );
    for _ in 0..4 {
        poll(&mut f, &mut ingest, down(1));
    }
    assert_eq!(
        ingest.cmdb().alerts(None).unwrap().len(),
        2,
        "only the presence alert"
    );
    assert_eq!(
        ingest.cmdb().alerts(None).unwrap()[1].kind,
        "device_unreachable"
    );
}

#[test]
fn with_confirm_polls_a_flapping_config_value_raises_one_unstable_alert() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    ingest.cmdb_mut().set_confirm_polls(2).unwrap();
    apply(&mut f, &mut ingest, vec![plc(1, vec![10, 20])], T0 + 1_000);
    approve_all(ingest.cmdb_mut());
    for i in 0..20u64 {
        let v = 30 + (i % 7) as u16;
        apply(
            &mut f,
            &mut ingest,
            vec![plc(1, vec![10, v])],
            T0 + 2_000 + i * 1_000,
        );
    }
    let alerts = ingest.cmdb().alerts(None).unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].kind, "unstable_value");
    assert_eq!(alerts[0].category, "config");
    assert_eq!(
        alerts[0].detail["changes"][0]["attribute"],
        "block.setpoints"
    );
    // It settles on a new value: recorded as unstable, no second alert.
    for i in 0..3u64 {
        apply(
            &mut f,
            &mut ingest,
            vec![plc(1, vec![10, 50])],
            T0 + 30_000 + i * 1_000,
        );
    }
    assert_eq!(ingest.cmdb().alerts(None).unwrap().len(), 1);
    let totals = ingest.cmdb().change_totals().unwrap();
    assert_eq!(totals.unauthorised, 0);
    assert_eq!(ingest.cmdb().drift().unwrap()[0].state, "drift");
}

/// A second agent, `gw-2`, enrolled for the same zone of `f`'s CMDB.
fn second_agent(f: &Fixture, ingest: &mut Ingest) -> Fixture {
    let (key2, _) = outpost_proto::SigningKey::generate().unwrap();
    let gw2 = outpost_proto::AgentId::new("gw-2").unwrap();
    ingest
        .cmdb_mut()
        .enroll(&key2.public_key(), &gw2, std::slice::from_ref(&f.zone), T0)
        .unwrap();
    Fixture {
        dir: tempfile::tempdir().unwrap(),
        db: f.db.clone(),
        key: key2,
        agent: gw2,
        zone: f.zone.clone(),
        tip: outpost_proto::ChainTip::GENESIS,
    }
}

#[test]
fn two_agents_reporting_one_device_differently_raise_one_conflict_and_no_drift_verdicts() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(&mut f, &mut ingest, vec![plc(1, vec![10, 20])], T0 + 1_000);
    approve_all(ingest.cmdb_mut());
    // An auto-confirming change record covering the CI: a conflict must not move the baseline.
    let mut rec = change("CHG1", "plc-1", T0, T0 + 10 * MINUTE, &[]);
    rec.auto_confirm = true;
    ingest
        .cmdb_mut()
        .add_changes(&[("cli".into(), rec)], "cli", T0)
        .unwrap();
    let mut g = second_agent(&f, &mut ingest);
    // gw-2 sees 99 where gw-1 sees 20, alternating for ten polls each.
    for i in 0..10u64 {
        apply(
            &mut g,
            &mut ingest,
            vec![plc(1, vec![10, 99])],
            T0 + 2_000 + i * 1_000,
        );
        apply(
            &mut f,
            &mut ingest,
            vec![plc(1, vec![10, 20])],
            T0 + 2_500 + i * 1_000,
        );
    }
    let alerts = ingest.cmdb().alerts(None).unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(
        (a.kind.as_str(), a.category.as_str(), a.severity_id),
        ("conflicting_observation", "config", 3)
    );
    assert_eq!(a.detail["agents"], serde_json::json!(["gw-1", "gw-2"]));
    let c = &a.detail["changes"][0];
    assert_eq!(
        (&c["before_agent"], &c["after_agent"]),
        (&"gw-1".into(), &"gw-2".into())
    );
    assert_eq!(
        c["registers"],
        serde_json::json!([{"address": 101, "before": 20, "after": 99}])
    );
    // Every alternation is an event; none was judged; the record was not used and the baseline
    // did not move.
    assert_eq!(
        events_of(ingest.cmdb(), "conflicting_observation").len(),
        20
    );
    let totals = ingest.cmdb().change_totals().unwrap();
    assert_eq!((totals.unauthorised, totals.authorised), (0, 0));
    assert_eq!(count(ingest.cmdb(), "detected_changes", "1"), 0);
    assert_eq!(
        count(ingest.cmdb(), "change_records", "state = 'open'"),
        1,
        "the change record is untouched"
    );
    assert_eq!(
        count(ingest.cmdb(), "baselines", "approved_by = 'alice'"),
        1
    );
    let reports: i64 = ingest
        .cmdb()
        .connection()
        .query_row("SELECT reports FROM observation_conflicts", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(reports, 20);

    // gw-2 now agrees: the conflict closes; a later real change by one agent is judged again.
    apply(&mut g, &mut ingest, vec![plc(1, vec![10, 20])], T0 + 30_000);
    assert_eq!(events_of(ingest.cmdb(), "conflict_resolved").len(), 1);
    assert_eq!(count(ingest.cmdb(), "observation_conflicts", "1"), 0);
    apply(&mut g, &mut ingest, vec![plc(1, vec![10, 21])], T0 + 31_000);
    let alerts = ingest.cmdb().alerts(None).unwrap();
    assert_eq!(
        alerts.len(),
        1,
        "inside CHG1's window with no expectations: authorised"
    );
    assert_eq!(ingest.cmdb().change_totals().unwrap().authorised, 1);
}
