//! Segmentation probe reports at ingest: the state machine (a violation is alerted once and
//! restored once; a conduit likewise), refused reports change nothing, removed targets are
//! recorded — with real signatures and a real SQLite file.

mod common;

use common::{Fixture, T0, count};
use outpost_collector::alert::ocsf;
use outpost_collector::ingest::Reason;
use outpost_collector::{Cmdb, Ingest};
use outpost_proto::envelope;
use outpost_proto::model::{Body, ProbeExpect, ProbeOutcome, ProbeReport, ProbeResult};

const IT: &str = "192.0.2.50:445";
const BROKER: &str = "192.0.2.10:1883";

fn result(target: &str, expect: ProbeExpect, outcome: ProbeOutcome) -> ProbeResult {
    ProbeResult {
        target: target.into(),
        rule: format!("{target} (rule)"),
        expect,
        outcome,
        elapsed_ms: 3,
        detail: None,
    }
}

fn report(f: &Fixture, results: Vec<ProbeResult>) -> ProbeReport {
    ProbeReport {
        agent: f.agent.clone(),
        zone: f.zone.clone(),
        started_ms: T0,
        finished_ms: T0 + 100,
        results,
    }
}

/// Seals `body` as the next envelope of the fixture's chain and ingests it.
fn send(f: &mut Fixture, ingest: &mut Ingest, body: Body) -> Result<(), Reason> {
    let sealed = envelope::seal(&f.key, &f.agent, &f.zone, &f.tip, T0 + f.tip.seq, &body).unwrap();
    let outcome = ingest.envelope(&sealed.wire, "p", T0 + f.tip.seq + 1);
    // A refused envelope leaves the chain where it was; the fixture follows the collector.
    if outcome.is_ok() {
        f.tip = sealed.tip;
    }
    outcome.map(|_| ()).map_err(|e| e.reason)
}

fn round(f: &mut Fixture, ingest: &mut Ingest, results: Vec<ProbeResult>) {
    let body = Body::Probes(report(f, results));
    send(f, ingest, body).unwrap();
}

fn alert_kinds(cmdb: &Cmdb) -> Vec<String> {
    cmdb.alerts(None)
        .unwrap()
        .into_iter()
        .map(|a| a.kind)
        .collect()
}

#[test]
fn a_violation_is_alerted_once_and_restored_once() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let must = ProbeExpect::MustNotReach;
    round(
        &mut f,
        &mut ingest,
        vec![result(IT, must, ProbeOutcome::TimedOut)],
    );
    assert!(alert_kinds(ingest.cmdb()).is_empty());

    round(
        &mut f,
        &mut ingest,
        vec![result(IT, must, ProbeOutcome::Connected)],
    );
    round(
        &mut f,
        &mut ingest,
        vec![result(IT, must, ProbeOutcome::Connected)],
    );
    // A reset still proves the packet arrived: the violation stays open, no second alert.
    round(
        &mut f,
        &mut ingest,
        vec![result(IT, must, ProbeOutcome::Refused)],
    );
    assert_eq!(alert_kinds(ingest.cmdb()), ["segmentation_violation"]);
    let state = ingest.cmdb().probe_state().unwrap();
    assert_eq!(state.len(), 1);
    assert!(state[0].problem);
    assert_eq!(state[0].outcome, "refused");
    let violation = &ingest.cmdb().alerts(None).unwrap()[0];
    assert_eq!(state[0].alert_id, Some(violation.alert_id));
    assert_eq!(violation.severity_id, 4);
    assert_eq!(violation.asset_name, IT);
    assert_eq!(violation.detail["outcome"], "connected");

    // Its OCSF form is a Detection Finding naming the target.
    let event = ocsf::event(violation);
    assert_eq!(event["class_uid"], 2004);
    assert_eq!(event["dst_endpoint"]["ip"], "192.0.2.50");
    assert_eq!(event["dst_endpoint"]["port"], 445);
    assert!(
        event["message"]
            .as_str()
            .unwrap()
            .contains("segmentation violation"),
        "{event}"
    );

    round(
        &mut f,
        &mut ingest,
        vec![result(IT, must, ProbeOutcome::TimedOut)],
    );
    round(
        &mut f,
        &mut ingest,
        vec![result(IT, must, ProbeOutcome::TimedOut)],
    );
    let alerts = ingest.cmdb().alerts(None).unwrap();
    let kinds: Vec<&str> = alerts.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(kinds, ["segmentation_violation", "segmentation_restored"]);
    assert_eq!(alerts[1].severity_id, 1);
    assert_eq!(alerts[1].detail["cleared_alert_id"], alerts[0].alert_id);
    let state = ingest.cmdb().probe_state().unwrap();
    assert!(!state[0].problem && state[0].alert_id.is_none());
    assert_eq!(state[0].outcome, "timed_out");
    // Every result is history.
    assert_eq!(ingest.cmdb().probe_history(100).unwrap().len(), 6);
    let cmdb = Cmdb::open_existing(&f.db).unwrap();
    assert_eq!(count(&cmdb, "events", "kind = 'segmentation_violation'"), 1);
    assert_eq!(count(&cmdb, "events", "kind = 'segmentation_restored'"), 1);
}

#[test]
fn a_conduit_down_is_alerted_once_and_restored_once() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let may = ProbeExpect::MayReach;
    round(
        &mut f,
        &mut ingest,
        vec![result(BROKER, may, ProbeOutcome::Connected)],
    );
    round(
        &mut f,
        &mut ingest,
        vec![result(BROKER, may, ProbeOutcome::TimedOut)],
    );
    // Refused is still down for a conduit: nothing listens where the zone relies on it.
    round(
        &mut f,
        &mut ingest,
        vec![result(BROKER, may, ProbeOutcome::Refused)],
    );
    assert_eq!(alert_kinds(ingest.cmdb()), ["conduit_down"]);
    assert_eq!(ingest.cmdb().alerts(None).unwrap()[0].severity_id, 3);
    round(
        &mut f,
        &mut ingest,
        vec![result(BROKER, may, ProbeOutcome::Connected)],
    );
    round(
        &mut f,
        &mut ingest,
        vec![result(BROKER, may, ProbeOutcome::Connected)],
    );
    assert_eq!(
        alert_kinds(ingest.cmdb()),
        ["conduit_down", "conduit_restored"]
    );
}

#[test]
fn refused_reports_are_quarantined_and_write_no_probe_rows() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let must = ProbeExpect::MustNotReach;
    // Another agent's name in the body.
    let mut other = report(&f, vec![result(IT, must, ProbeOutcome::Connected)]);
    other.agent = outpost_proto::AgentId::new("gw-9").unwrap();
    assert_eq!(
        send(&mut f, &mut ingest, Body::Probes(other)),
        Err(Reason::BodyMismatch)
    );
    // The same target twice under one expectation.
    let twice = report(
        &f,
        vec![
            result(IT, must, ProbeOutcome::Connected),
            result(IT, must, ProbeOutcome::TimedOut),
        ],
    );
    assert_eq!(
        send(&mut f, &mut ingest, Body::Probes(twice)),
        Err(Reason::BodyMismatch)
    );
    let cmdb = Cmdb::open_existing(&f.db).unwrap();
    assert_eq!(count(&cmdb, "probe_results", "1"), 0);
    assert_eq!(count(&cmdb, "probe_state", "1"), 0);
    assert_eq!(count(&cmdb, "alerts", "1"), 0);
    assert_eq!(count(&cmdb, "quarantine", "1"), 2);
}

#[test]
fn a_target_dropped_from_the_config_leaves_the_state_with_an_event() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let must = ProbeExpect::MustNotReach;
    round(
        &mut f,
        &mut ingest,
        vec![
            result(IT, must, ProbeOutcome::Connected),
            result(BROKER, ProbeExpect::MayReach, ProbeOutcome::Connected),
        ],
    );
    round(
        &mut f,
        &mut ingest,
        vec![result(
            BROKER,
            ProbeExpect::MayReach,
            ProbeOutcome::Connected,
        )],
    );
    let state = ingest.cmdb().probe_state().unwrap();
    assert_eq!(state.len(), 1);
    assert_eq!(state[0].target, BROKER);
    let cmdb = Cmdb::open_existing(&f.db).unwrap();
    assert_eq!(count(&cmdb, "events", "kind = 'probe_target_removed'"), 1);
    // Not proven restored: no restored alert.
    assert_eq!(alert_kinds(&cmdb), ["segmentation_violation"]);
}
