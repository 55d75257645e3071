//! CI identity and reconciliation (`cmdb/reconcile.rs`) on real SQLite files: one test per rule
//! and per ambiguous case — IP change (serial and MAC), two identical products without a
//! serial, a serial claimed twice, a device seen by two agents, a replaced device, one MAC
//! behind several unit ids, a re-key with a baseline and a change record, an unreachable poll of
//! a serial-keyed device, and refused identity evidence.

mod common;

use common::{Fixture, T0, count, plc, plc_key};
use outpost_collector::cmdb::baseline::Scope;
use outpost_collector::cmdb::change_record::ChangeInput;
use outpost_collector::cmdb::query::AssetRow;
use outpost_collector::{Cmdb, Ingest};
use outpost_proto::model::{AssetObservation, DeviceIdentity, Endpoint, PollStatus};

const SERIAL_KEY: &str = "zone/cell-1/serial/ACME/PLC-9/SN 1234567";
const MAC: &str = "02:00:5e:10:00:07";

/// Applies one summary of `assets` from `f`'s agent, received at `at`.
fn apply(f: &mut Fixture, ingest: &mut Ingest, assets: Vec<AssetObservation>, at: u64) {
    let wire = f.seal(&f.summary(assets));
    ingest.envelope(&wire, "127.0.0.1:9", at).expect("applied");
}

/// `plc(i)` (ACME PLC-9 at 10.0.0.<i+1>) with a serial and/or MAC.
fn device(i: u32, serial: Option<&str>, mac: Option<&str>) -> AssetObservation {
    let mut obs = plc(i, vec![10, 20]);
    obs.serial = serial.map(str::to_owned);
    obs.mac = mac.map(str::to_owned);
    obs
}

/// The same observation reached at another host.
fn at_host(mut obs: AssetObservation, host: &str) -> AssetObservation {
    obs.endpoint = Endpoint::Tcp {
        host: host.into(),
        port: 502,
    };
    obs
}

fn unreachable(obs: &AssetObservation) -> AssetObservation {
    AssetObservation {
        status: PollStatus::Unreachable("connect timed out".into()),
        identity: DeviceIdentity::default(),
        blocks: vec![],
        serial: None,
        ..obs.clone()
    }
}

fn asset(cmdb: &Cmdb, key: &str) -> AssetRow {
    cmdb.assets()
        .unwrap()
        .into_iter()
        .find(|a| a.ci_key == key)
        .unwrap_or_else(|| panic!("no CI {key}"))
}

fn keys(cmdb: &Cmdb) -> Vec<String> {
    cmdb.assets()
        .unwrap()
        .into_iter()
        .map(|a| a.ci_key)
        .collect()
}

fn events(cmdb: &Cmdb, kind: &str) -> Vec<outpost_collector::cmdb::query::EventRow> {
    cmdb.events(None)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind)
        .collect()
}

fn counter(cmdb: &Cmdb, name: &str) -> i64 {
    cmdb.connection()
        .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .unwrap_or(0)
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
fn a_device_with_a_serial_keeps_its_ci_when_its_ip_changes() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let before = device(1, Some("SN 1234567"), None);
    let moved = at_host(before.clone(), "10.0.0.50");
    // The agent polls both addresses; first the device answers on the old one...
    apply(
        &mut f,
        &mut ingest,
        vec![before.clone(), unreachable(&moved)],
        T0 + 1_000,
    );
    // ...then on the new one only.
    apply(
        &mut f,
        &mut ingest,
        vec![unreachable(&before), moved.clone()],
        T0 + 2_000,
    );
    // Again, unchanged: nothing more happens.
    apply(
        &mut f,
        &mut ingest,
        vec![unreachable(&before), moved.clone()],
        T0 + 3_000,
    );

    let cmdb = ingest.cmdb();
    let a = asset(cmdb, SERIAL_KEY);
    assert_eq!(a.identity_basis, "serial");
    assert_eq!(a.serial_number.as_deref(), Some("SN 1234567"));
    assert_eq!(a.endpoint, "tcp://10.0.0.50:502");
    assert_eq!(a.status, "ok");
    assert_eq!(a.observed_by.len(), 1);
    assert_eq!(a.observed_by[0].endpoint, "tcp://10.0.0.50:502");
    let moves = events(cmdb, "address_changed");
    assert_eq!(moves.len(), 1, "{moves:#?}");
    assert_eq!(moves[0].asset.as_deref(), Some(SERIAL_KEY));
    assert_eq!(moves[0].detail["old_endpoint"], "tcp://10.0.0.2:502");
    assert_eq!(moves[0].detail["endpoint"], "tcp://10.0.0.50:502");
    // The silent old address is its own (address-keyed, unreachable) CI, not the device.
    let old = asset(cmdb, &plc_key(1));
    assert_eq!(old.status, "unreachable");
    assert_eq!(old.identity_basis, "address");
    // The placeholder for the new address (it never answered) was this device all along.
    let placeholder = asset(cmdb, "zone/cell-1/modbus/tcp://10.0.0.50:502/unit/1");
    assert_eq!(placeholder.replaced_by.as_deref(), Some(SERIAL_KEY));
    assert_eq!(cmdb.assets().unwrap().len(), 3);
    assert_eq!(count(cmdb, "events", "kind = 'asset_new'"), 3);
    assert_eq!(counter(cmdb, "address_changes"), 1);

    // The device goes silent at its new address: its CI says so; the placeholder stays retired.
    apply(
        &mut f,
        &mut ingest,
        vec![unreachable(&before), unreachable(&moved)],
        T0 + 4_000,
    );
    let cmdb = ingest.cmdb();
    assert_eq!(asset(cmdb, SERIAL_KEY).status, "unreachable");
    let placeholder = asset(cmdb, "zone/cell-1/modbus/tcp://10.0.0.50:502/unit/1");
    assert_eq!(placeholder.replaced_by.as_deref(), Some(SERIAL_KEY));
    assert_eq!(cmdb.assets().unwrap().len(), 3);
}

#[test]
fn a_device_known_by_its_mac_keeps_its_ci_when_its_ip_changes() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let before = device(1, None, Some("02-00-5E-10-00-07"));
    apply(&mut f, &mut ingest, vec![before.clone()], T0 + 1_000);
    apply(
        &mut f,
        &mut ingest,
        vec![at_host(before, "10.0.0.51")],
        T0 + 2_000,
    );
    let cmdb = ingest.cmdb();
    let key = format!("zone/cell-1/mac/{MAC}/unit/1");
    assert_eq!(keys(cmdb), std::slice::from_ref(&key));
    let a = asset(cmdb, &key);
    assert_eq!(a.identity_basis, "mac");
    assert_eq!(a.mac_address.as_deref(), Some(MAC));
    assert_eq!(a.endpoint, "tcp://10.0.0.51:502");
    assert_eq!(events(cmdb, "address_changed").len(), 1);
}

#[test]
fn two_identical_products_without_a_serial_are_two_cis() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    // Same vendor, product code and revision; no serial, no MAC (RTU-like).
    apply(
        &mut f,
        &mut ingest,
        vec![plc(1, vec![1]), plc(2, vec![1])],
        T0,
    );
    apply(
        &mut f,
        &mut ingest,
        vec![plc(1, vec![1]), plc(2, vec![1])],
        T0 + 1,
    );
    let cmdb = ingest.cmdb();
    assert_eq!(keys(cmdb), [plc_key(1), plc_key(2)]);
    assert!(
        cmdb.assets()
            .unwrap()
            .iter()
            .all(|a| a.identity_basis == "address")
    );
    assert_eq!(count(cmdb, "events", "kind = 'ci_rekeyed'"), 0);
}

#[test]
fn a_serial_claimed_by_two_devices_at_once_merges_nothing() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    // The first device is known by its serial...
    apply(
        &mut f,
        &mut ingest,
        vec![device(1, Some("SN 1234567"), None)],
        T0,
    );
    // ...then a second device answers with the same serial (a cloned configuration).
    let both = vec![
        device(1, Some("SN 1234567"), None),
        device(2, Some("SN 1234567"), None),
    ];
    apply(&mut f, &mut ingest, both.clone(), T0 + 1_000);
    apply(&mut f, &mut ingest, both.clone(), T0 + 2_000);
    // Changing register values (the slow path every poll) do not repeat the event.
    let mut changed = both;
    for (i, d) in changed.iter_mut().enumerate() {
        d.blocks[0] = plc(1, vec![11, i as u16]).blocks[0].clone();
    }
    apply(&mut f, &mut ingest, changed, T0 + 3_000);

    let cmdb = ingest.cmdb();
    // The known CI stays where it is; the newcomer is its own CI on its address key.
    let mut all = keys(cmdb);
    all.sort();
    let mut want = vec![plc_key(2), SERIAL_KEY.to_owned()];
    want.sort();
    assert_eq!(all, want);
    assert_eq!(
        asset(cmdb, SERIAL_KEY).endpoint,
        "tcp://10.0.0.2:502",
        "the serial CI did not move"
    );
    assert_eq!(asset(cmdb, &plc_key(2)).identity_basis, "address");
    let dups = events(cmdb, "identity_duplicate");
    assert_eq!(dups.len(), 2, "one per claimant: {dups:#?}");
    assert!(dups.iter().all(|e| e.detail["claimed_key"] == SERIAL_KEY));
    assert_eq!(count(cmdb, "events", "kind = 'address_changed'"), 0);
}

#[test]
fn a_serial_first_seen_twice_in_one_summary_gives_two_address_cis() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(
        &mut f,
        &mut ingest,
        vec![
            device(1, Some("SN 1234567"), None),
            device(2, Some("SN 1234567"), None),
        ],
        T0,
    );
    let cmdb = ingest.cmdb();
    assert_eq!(keys(cmdb), [plc_key(1), plc_key(2)]);
    // The serial is still recorded (it is evidence), just not the identity.
    assert!(
        cmdb.assets()
            .unwrap()
            .iter()
            .all(|a| a.serial_number.as_deref() == Some("SN 1234567"))
    );
    assert_eq!(counter(cmdb, "identity_duplicates"), 2);
}

#[test]
fn a_device_seen_by_two_agents_is_one_ci_with_two_observations() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let mut g = second_agent(&f, &mut ingest);
    let direct = device(1, Some("SN 1234567"), None);
    // gw-2 reaches it through a NAT router: another address, the same device.
    let natted = at_host(direct.clone(), "192.168.7.2");
    for round in 0..2 {
        let t = T0 + round * 10_000;
        apply(&mut f, &mut ingest, vec![direct.clone()], t + 1_000);
        apply(&mut g, &mut ingest, vec![natted.clone()], t + 2_000);
    }
    let cmdb = ingest.cmdb();
    assert_eq!(keys(cmdb), [SERIAL_KEY]);
    let a = asset(cmdb, SERIAL_KEY);
    let seen: Vec<(&str, &str)> = a
        .observed_by
        .iter()
        .map(|o| (o.agent_id.as_str(), o.endpoint.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("gw-1", "tcp://10.0.0.2:502"),
            ("gw-2", "tcp://192.168.7.2:502")
        ]
    );
    assert_eq!(a.observed_by[1].last_seen.ms(), (T0 + 12_000) as i64);
    assert_eq!(a.observed_by[0].last_seen.ms(), (T0 + 11_000) as i64);
    // Two vantage points are not a move.
    assert_eq!(count(cmdb, "events", "kind = 'address_changed'"), 0);
    assert_eq!(count(cmdb, "events", "kind = 'asset_new'"), 1);
}

#[test]
fn unchanged_reports_keep_every_observer_and_the_ci_current() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let mut g = second_agent(&f, &mut ingest);
    let direct = device(1, Some("SN 1234567"), None);
    let natted = at_host(direct.clone(), "192.168.7.2");
    apply(&mut f, &mut ingest, vec![direct.clone()], T0 + 1_000);
    apply(&mut g, &mut ingest, vec![natted.clone()], T0 + 2_000);
    // gw-1 keeps reporting the device unchanged; gw-2 (which wrote it last) goes quiet.
    apply(&mut f, &mut ingest, vec![direct.clone()], T0 + 11_000);
    apply(&mut f, &mut ingest, vec![direct.clone()], T0 + 21_000);
    let a = asset(ingest.cmdb(), SERIAL_KEY);
    assert_eq!(
        a.last_polled.ms(),
        (T0 + 21_000) as i64,
        "the CI is current"
    );
    let by: Vec<(&str, i64)> = a
        .observed_by
        .iter()
        .map(|o| (o.agent_id.as_str(), o.last_seen.ms()))
        .collect();
    assert_eq!(
        by,
        [
            ("gw-1", (T0 + 21_000) as i64),
            ("gw-2", (T0 + 2_000) as i64)
        ]
    );
    // One agent alone: its unchanged summaries write no observation row, yet it stays current.
    let mut h = Fixture::new();
    let mut solo = h.ingest();
    for round in 0..3 {
        apply(&mut h, &mut solo, vec![direct.clone()], T0 + round * 10_000);
    }
    let a = asset(solo.cmdb(), SERIAL_KEY);
    assert_eq!(a.observed_by.len(), 1);
    assert_eq!(a.observed_by[0].last_seen.ms(), (T0 + 20_000) as i64);
    assert_eq!(a.last_polled.ms(), (T0 + 20_000) as i64);
}

#[test]
fn a_replaced_device_is_a_new_ci_and_the_old_one_is_marked() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(
        &mut f,
        &mut ingest,
        vec![device(1, Some("SN 1234567"), None)],
        T0,
    );
    // Same address, same product, another serial: the PLC was swapped.
    apply(
        &mut f,
        &mut ingest,
        vec![device(1, Some("SN 7654321"), None)],
        T0 + 1_000,
    );
    apply(
        &mut f,
        &mut ingest,
        vec![device(1, Some("SN 7654321"), None)],
        T0 + 2_000,
    );
    let cmdb = ingest.cmdb();
    let new_key = "zone/cell-1/serial/ACME/PLC-9/SN 7654321";
    let mut all = keys(cmdb);
    all.sort();
    assert_eq!(all, [SERIAL_KEY, new_key]);
    assert_eq!(
        asset(cmdb, SERIAL_KEY).replaced_by.as_deref(),
        Some(new_key)
    );
    assert_eq!(asset(cmdb, new_key).replaced_by, None);
    let replaced = events(cmdb, "device_replaced");
    assert_eq!(replaced.len(), 1);
    assert_eq!(replaced[0].asset.as_deref(), Some(SERIAL_KEY));
    assert_eq!(replaced[0].detail["old_serial"], "SN 1234567");
    assert_eq!(replaced[0].detail["new_serial"], "SN 7654321");
    assert_eq!(count(cmdb, "events", "kind = 'asset_new'"), 2);
}

#[test]
fn a_device_swapped_back_is_current_again() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let (one, two) = (
        device(1, Some("SN 1234567"), None),
        device(1, Some("SN 7654321"), None),
    );
    let two_key = "zone/cell-1/serial/ACME/PLC-9/SN 7654321";
    apply(&mut f, &mut ingest, vec![one.clone()], T0);
    apply(&mut f, &mut ingest, vec![two], T0 + 1_000);
    apply(&mut f, &mut ingest, vec![one.clone()], T0 + 2_000);
    apply(&mut f, &mut ingest, vec![one], T0 + 3_000);
    let cmdb = ingest.cmdb();
    assert_eq!(asset(cmdb, SERIAL_KEY).replaced_by, None);
    assert_eq!(
        asset(cmdb, two_key).replaced_by.as_deref(),
        Some(SERIAL_KEY)
    );
    assert_eq!(cmdb.assets().unwrap().len(), 2);
    assert_eq!(events(cmdb, "device_replaced").len(), 2);
}

#[test]
fn one_mac_behind_several_unit_ids_is_several_cis() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let units: Vec<AssetObservation> = (1..=3)
        .map(|u| {
            let mut o = device(1, None, Some(MAC));
            o.unit_id = u;
            o
        })
        .collect();
    apply(&mut f, &mut ingest, units.clone(), T0);
    apply(&mut f, &mut ingest, units, T0 + 1_000);
    let cmdb = ingest.cmdb();
    let want: Vec<String> = (1..=3)
        .map(|u| format!("zone/cell-1/mac/{MAC}/unit/{u}"))
        .collect();
    assert_eq!(keys(cmdb), want);
    let shared = events(cmdb, "identity_shared");
    assert_eq!(shared.len(), 2, "raised when the 2nd and 3rd unit appear");
    assert_eq!(
        shared[1].detail["other_unit_ids"],
        serde_json::json!([1, 2])
    );
}

#[test]
fn a_ci_that_gains_a_serial_is_rekeyed_with_its_history_baseline_and_change_records() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(&mut f, &mut ingest, vec![plc(1, vec![10, 20])], T0 + 1_000);
    ingest
        .cmdb_mut()
        .approve_baseline(&Scope::All, "alice", "initial", T0 + 1_500)
        .unwrap();
    let rec = ChangeInput {
        ticket: "CHG1".into(),
        asset: plc_key(1),
        from: outpost_collector::time::rfc3339((T0 + 5_000) as i64),
        to: outpost_collector::time::rfc3339((T0 + 9_000) as i64),
        expect: vec!["block.setpoints[101]=25".into()],
        ..ChangeInput::default()
    };
    ingest
        .cmdb_mut()
        .add_changes(&[("cli".into(), rec)], "cli", T0 + 1_600)
        .unwrap();
    // A new profile names the serial object: the CI gains the stronger key.
    apply(
        &mut f,
        &mut ingest,
        vec![device(1, Some("SN 1234567"), None)],
        T0 + 2_000,
    );
    {
        let cmdb = ingest.cmdb();
        assert_eq!(keys(cmdb), [SERIAL_KEY]);
        let rekeyed = events(cmdb, "ci_rekeyed");
        assert_eq!(rekeyed.len(), 1);
        assert_eq!(rekeyed[0].detail["old_key"], plc_key(1));
        assert_eq!(rekeyed[0].detail["new_basis"], "serial");
        // History and earlier events follow the CI.
        let history = cmdb.history(Some(SERIAL_KEY), None).unwrap();
        assert!(history.len() >= 7, "{history:#?}");
        let new_here = format!("kind = 'asset_new' AND asset = '{SERIAL_KEY}'");
        assert_eq!(count(cmdb, "events", &new_here), 1);
        assert_eq!(
            count(cmdb, "relations", &format!("from_ci = '{}'", plc_key(1))),
            0
        );
        assert_eq!(
            count(cmdb, "relations", &format!("from_ci = '{SERIAL_KEY}'")),
            2
        );
        // The baseline (by asset id) still holds; nothing drifted by gaining a key.
        let drift = cmdb.drift().unwrap();
        assert_eq!(drift.len(), 1);
        assert_eq!(drift[0].ci_key, SERIAL_KEY);
        assert_eq!(drift[0].state, "in_baseline");
        assert_eq!(cmdb.alerts(None).unwrap().len(), 0);
        assert_eq!(cmdb.changes().unwrap()[0].asset, SERIAL_KEY);
    }
    // The change record made for the old key still authorises the change.
    let mut changed = device(1, Some("SN 1234567"), None);
    changed.blocks[0] = plc(1, vec![10, 25]).blocks[0].clone();
    apply(&mut f, &mut ingest, vec![changed], T0 + 6_000);
    let cmdb = ingest.cmdb();
    assert_eq!(
        cmdb.alerts(None).unwrap().len(),
        0,
        "authorised, not alerted"
    );
    assert_eq!(cmdb.changes().unwrap()[0].state, "implemented");
}

#[test]
fn an_unreachable_poll_of_a_serial_device_stays_on_its_ci() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let dev = device(1, Some("SN 1234567"), None);
    apply(&mut f, &mut ingest, vec![dev.clone()], T0);
    apply(&mut f, &mut ingest, vec![unreachable(&dev)], T0 + 1_000);
    apply(&mut f, &mut ingest, vec![dev], T0 + 2_000);
    let cmdb = ingest.cmdb();
    assert_eq!(keys(cmdb), [SERIAL_KEY]);
    assert_eq!(count(cmdb, "events", "kind = 'asset_unreachable'"), 1);
    assert_eq!(count(cmdb, "events", "kind = 'asset_recovered'"), 1);
    assert_eq!(asset(cmdb, SERIAL_KEY).identity_basis, "serial");
}

#[test]
fn identity_evidence_that_names_no_device_is_refused_and_counted() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let mut nameless = device(1, Some("N/A"), Some("00:00:00:00:00:00"));
    apply(&mut f, &mut ingest, vec![nameless.clone()], T0);
    // A serial without a vendor name cannot be a serial key either.
    nameless = device(2, Some("SN 42"), None);
    nameless.identity.vendor_name = None;
    apply(&mut f, &mut ingest, vec![nameless], T0 + 1_000);
    let cmdb = ingest.cmdb();
    assert_eq!(keys(cmdb), [plc_key(1), plc_key(2)]);
    assert_eq!(counter(cmdb, "identity_refused"), 3);
}

#[test]
fn exports_carry_serial_mac_and_what_the_key_rests_on() {
    use outpost_collector::export::{Inventory, csv, cyclonedx, servicenow};
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply(
        &mut f,
        &mut ingest,
        vec![device(1, Some("SN 1234567"), Some(MAC))],
        T0,
    );
    apply(
        &mut f,
        &mut ingest,
        vec![device(1, Some("SN 7654321"), Some(MAC))],
        T0 + 1_000,
    );
    let inv = Inventory::read(ingest.cmdb(), None).unwrap();
    let ire = servicenow::payload(&inv);
    let items = ire["items"].as_array().unwrap();
    let old = items
        .iter()
        .find(|i| i["values"]["serial_number"] == "SN 1234567")
        .expect("the replaced device");
    assert_eq!(old["values"]["mac_address"], MAC);
    assert_eq!(old["values"]["operational_status"], "6");
    let new = items
        .iter()
        .find(|i| i["values"]["serial_number"] == "SN 7654321")
        .expect("the new device");
    assert_eq!(new["values"]["operational_status"], "1");
    servicenow::check_shape(&ire).unwrap();

    let text = String::from_utf8(csv::render(&inv).unwrap()).unwrap();
    assert!(
        text.lines()
            .next()
            .unwrap()
            .ends_with("serial_number,mac_address,identity_basis,replaced_by")
    );
    assert!(
        text.contains(&format!("SN 7654321,{MAC},serial,\n")),
        "{text}"
    );

    let bom = cyclonedx::bom(&inv, T0 as i64);
    let props = bom["components"][0]["properties"].to_string();
    assert!(
        props.contains("serial_number") && props.contains(MAC),
        "{props}"
    );
}

#[test]
fn the_identity_migration_keeps_existing_cis_on_their_address_keys_with_one_observation() {
    use outpost_collector::cmdb::schema::{MIGRATIONS, SCHEMA_VERSION};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("before-identity.sqlite");
    let at = MIGRATIONS
        .iter()
        .position(|m| m.contains("CREATE TABLE asset_observations"))
        .expect("the identity migration is listed");
    {
        // A CMDB as the collector before this migration left it, with one CI.
        let conn = rusqlite::Connection::open(&db).unwrap();
        for m in &MIGRATIONS[..at] {
            conn.execute_batch(m).unwrap();
        }
        conn.pragma_update(None, "user_version", at as u32).unwrap();
        conn.execute_batch(&format!(
            "INSERT INTO zones VALUES ('cell-1', 0);
             INSERT INTO agents (agent_id, enrolled_at_ms) VALUES ('gw-1', 0);
             INSERT INTO assets (ci_key, zone, agent_id, name, endpoint, unit_id, ident_method,
                 status, content_hash, first_seen_ms, last_seen_ms, last_polled_ms,
                 last_envelope_seq)
             VALUES ('{}', 'cell-1', 'gw-1', 'plc-1', 'tcp://10.0.0.2:502', 1, 'none', 'ok',
                 x'00', 1000, 2000, 3000, 7);",
            plc_key(1)
        ))
        .unwrap();
    }
    let cmdb = Cmdb::open_existing(&db).unwrap();
    assert_eq!(cmdb.schema_version().unwrap(), SCHEMA_VERSION);
    let a = asset(&cmdb, &plc_key(1));
    assert_eq!(a.identity_basis, "address");
    assert_eq!(
        (a.serial_number, a.mac_address, a.replaced_by),
        (None, None, None)
    );
    assert_eq!(a.observed_by.len(), 1);
    let o = &a.observed_by[0];
    assert_eq!(
        (o.agent_id.as_str(), o.endpoint.as_str()),
        ("gw-1", "tcp://10.0.0.2:502")
    );
    assert_eq!((o.first_seen.ms(), o.last_seen.ms()), (1000, 3000));
}
