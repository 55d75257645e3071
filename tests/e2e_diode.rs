//! End to end with real processes: `outpost-sim` (Modbus TCP plant) → `outpost-agent` →
//! real UDP → `outpost-collector serve` → a real SQLite file, read back through
//! `outpost-collector … --json` as an ITSM script would.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use outpost_proto::chain::ChainTip;
use outpost_proto::envelope::seal;
use outpost_proto::frame::fragment;
use outpost_proto::{AgentId, SigningKey, ZoneId};
use outpost_testbed::harness::{self, ChildGuard};
use outpost_testbed::scenario::{AgentSetup, agent_config, devices_from_sim_json};
use outpost_testbed::sim::default_plant;
use outpost_testbed::workload::summary_body;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn bin(name: &str) -> PathBuf {
    harness::binary(name).unwrap_or_else(|e| panic!("{e}"))
}

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

fn run_ok(name: &str, args: &[&str]) -> String {
    let out = run(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn collector_json(what: &str, db: &Path) -> Value {
    let text = run_ok("outpost-collector", &[what, "--db", path(db), "--json"]);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what} --json is not JSON ({e}): {text}"))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A collector process serving `db` on a free loopback port; returns it and its address.
fn start_collector(dir: &Path, db: &Path) -> (ChildGuard, SocketAddr) {
    let ready = dir.join("collector.ready");
    let child = ChildGuard::spawn(
        "outpost-collector",
        Command::new(bin("outpost-collector"))
            .args([
                "serve",
                "--db",
                path(db),
                "--diode-listen",
                "127.0.0.1:0",
                "--ready-file",
                path(&ready),
            ])
            .stdin(Stdio::null()),
    )
    .expect("collector starts");
    let addr = harness::wait_ready_file(&ready, WAIT)
        .expect("collector ready")
        .trim()
        .parse()
        .expect("ready file holds an address");
    (child, addr)
}

/// Polls `cond` on the CMDB until it holds (at most [`WAIT`]).
fn wait_db(what: &str, mut cond: impl FnMut() -> bool) {
    assert!(
        harness::wait_for(WAIT, || cond().then_some(())).is_some(),
        "timed out waiting for {what}"
    );
}

#[test]
fn plant_to_cmdb_through_real_processes_with_exact_identities() {
    let dir = harness::temp_dir("e2e-diode").expect("temp dir");
    let dir = dir.path();

    // The plant, as its own process.
    let sim_ready = dir.join("sim.json");
    let mut sim = ChildGuard::spawn(
        "outpost-sim",
        Command::new(bin("outpost-sim"))
            .args(["--bind", "127.0.3.1", "--ready-file", path(&sim_ready)])
            .stdout(Stdio::null())
            .stdin(Stdio::null()),
    )
    .expect("simulator starts");
    let plant = harness::wait_ready_json(&sim_ready, WAIT).expect("simulator ready");
    let devices = devices_from_sim_json(&plant).expect("simulator JSON");
    assert_eq!(devices.len(), default_plant().len());

    // Key, enrolment, collector.
    let keys = dir.join("keys");
    run_ok(
        "outpost-agent",
        &["keygen", "--out", path(&keys), "--agent", "gw-e2e"],
    );
    let db = dir.join("cmdb.sqlite");
    run_ok(
        "outpost-collector",
        &[
            "enroll",
            "--db",
            path(&db),
            "--zone",
            "cell-e2e",
            "--key",
            path(&keys.join("agent.pub")),
        ],
    );
    let (mut collector, listen) = start_collector(dir, &db);

    // The agent, one cycle, as its own process.
    let state = dir.join("state");
    let key_file = keys.join("agent.key");
    let setup = AgentSetup::new("gw-e2e", "cell-e2e", &state, &key_file, listen);
    let config = dir.join("agent.toml");
    std::fs::write(&config, agent_config(&setup, &devices)).expect("write config");
    run_ok(
        "outpost-agent",
        &["run", "--config", path(&config), "--once"],
    );

    let expected_units: usize = default_plant().iter().map(|d| d.unit_ids.len()).sum();
    let mut assets = Value::Null;
    wait_db("every device in the CMDB", || {
        assets = collector_json("assets", &db);
        assets["assets"].as_array().map_or(0, Vec::len) == expected_units
    });
    assert_eq!(assets["schema"], "outpost.assets.v2");

    // Every device with its exact identity, as the simulator defines it.
    for spec in default_plant() {
        let d = devices
            .iter()
            .find(|d| d.name == spec.name)
            .expect("device");
        for unit in &spec.unit_ids {
            let row = assets["assets"]
                .as_array()
                .expect("assets")
                .iter()
                .find(|a| a["name"] == spec.name.as_str() && a["unit_id"] == *unit)
                .unwrap_or_else(|| panic!("{} unit {unit} missing: {assets:#}", spec.name));
            assert_eq!(row["zone"], "cell-e2e");
            assert_eq!(row["agent_id"], "gw-e2e");
            assert_eq!(row["endpoint"], format!("tcp://{}", d.addr));
            assert_eq!(row["status"], "ok", "{row:#}");
            let id = &spec.identity;
            if spec.behaviour == outpost_testbed::sim::Behaviour::NoDeviceId {
                assert_eq!(row["ident_method"], "report_server_id", "{row:#}");
                continue;
            }
            assert_eq!(row["ident_method"], "read_device_identification");
            assert_eq!(row["vendor_name"], id.vendor_name.as_str());
            assert_eq!(row["product_code"], id.product_code.as_str());
            assert_eq!(row["revision"], id.revision.as_str());
            assert_eq!(row["vendor_url"].as_str(), id.vendor_url.as_deref());
            assert_eq!(row["product_name"].as_str(), id.product_name.as_deref());
            assert_eq!(row["model_name"].as_str(), id.model_name.as_deref());
            assert_eq!(
                row["user_application_name"].as_str(),
                id.user_application_name.as_deref()
            );
            // The configured configuration block, with the device's exact register values.
            let (start, values) = &spec.holding[0];
            let block = row["blocks"]
                .as_array()
                .and_then(|b| b.iter().find(|b| b["start"] == *start))
                .unwrap_or_else(|| panic!("{}: block at {start} missing: {row:#}", spec.name));
            let got: Vec<u64> = block["values"]
                .as_array()
                .expect("values")
                .iter()
                .filter_map(Value::as_u64)
                .collect();
            let want: Vec<u64> = values.iter().map(|v| u64::from(*v)).collect();
            assert_eq!(got, want, "{}: register values", spec.name);
        }
    }

    // A second run of the agent process continues the chain: the next seq, no gap, nothing
    // refused. (A first run starts a declared chain at the agent's clock.)
    let first_seq = collector_json("agents", &db)["agents"][0]["last_seq"]
        .as_u64()
        .expect("last_seq");
    assert!(first_seq > 1_700_000_000_000, "{first_seq}");
    run_ok(
        "outpost-agent",
        &["run", "--config", path(&config), "--once"],
    );
    wait_db("the second envelope applied", || {
        collector_json("agents", &db)["agents"][0]["last_seq"] == first_seq + 1
    });
    let events = collector_json("events", &db);
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(!kinds.contains(&"sequence_gap"), "{kinds:?}");
    assert!(!kinds.contains(&"chain_break"), "{kinds:?}");
    let quarantine = collector_json("quarantine", &db);
    assert_eq!(
        quarantine["quarantine"].as_array().map(Vec::len),
        Some(0),
        "{quarantine:#}"
    );
    let gateways = collector_json("agents", &db);
    assert!(
        gateways["agents"][0]["gateway"]["cpu_count"].as_u64() >= Some(1),
        "gateway host facts recorded: {gateways:#}"
    );

    // Both stop cleanly on SIGTERM.
    let status = collector
        .stop(Duration::from_secs(10))
        .expect("collector stops");
    assert!(status.success(), "collector exit: {status}");
    let status = sim.stop(Duration::from_secs(10)).expect("simulator stops");
    assert!(status.success(), "simulator exit: {status}");
}

/// Everything hostile a collector process can receive, over real UDP: each is refused with its
/// own reason and counter, and only the genuine envelope reaches the CMDB.
#[test]
fn collector_process_refuses_hostile_datagrams_and_counts_each() {
    let dir = harness::temp_dir("e2e-hostile").expect("temp dir");
    let dir = dir.path();
    let agent = AgentId::new("gw-h").expect("id");
    let zone = ZoneId::new("cell-h").expect("id");
    let other_zone = ZoneId::new("cell-other").expect("id");
    let (key, _) = SigningKey::generate().expect("key");
    let (stranger, _) = SigningKey::generate().expect("key");
    let pub_file = dir.join("gw-h.pub");
    std::fs::write(&pub_file, key.public_key().to_line(Some(&agent))).expect("pub");
    let db = dir.join("cmdb.sqlite");
    run_ok(
        "outpost-collector",
        &[
            "enroll",
            "--db",
            path(&db),
            "--zone",
            "cell-h",
            "--key",
            path(&pub_file),
        ],
    );
    let (mut collector, listen) = start_collector(dir, &db);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut id = 1000u64;
    let mut send = |wire: &[u8]| {
        id += 1;
        for d in fragment(id, wire).expect("fragment") {
            sock.send_to(&d, listen).expect("send");
        }
    };

    let body = summary_body(&agent, &zone, 3, 1);
    let good = seal(&key, &agent, &zone, &ChainTip::GENESIS, 1, &body).expect("seal");
    // 1. garbage, 2. a datagram with a broken checksum, 3. a header claiming a huge message.
    sock.send_to(b"\x00\x01garbage that is not a frame at all", listen)
        .expect("send");
    let mut corrupt = fragment(1, &good.wire).expect("fragment")[0].clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    sock.send_to(&corrupt, listen).expect("send");
    let mut huge = fragment(2, &good.wire).expect("fragment")[0].clone();
    huge[16..20].copy_from_slice(&(64u32 << 20).to_be_bytes());
    huge[20..24].fill(0);
    let crc = crc32fast::hash(&huge);
    huge[20..24].copy_from_slice(&crc.to_be_bytes());
    sock.send_to(&huge, listen).expect("send");
    // 4. an unknown agent's key, 5. a tampered signature, 6. a zone the key is not trusted for.
    send(
        &seal(&stranger, &agent, &zone, &ChainTip::GENESIS, 1, &body)
            .expect("seal")
            .wire,
    );
    let mut tampered = good.wire.clone();
    let at = tampered.len() - 10;
    tampered[at] ^= 0x01;
    send(&tampered);
    let body_other = summary_body(&agent, &other_zone, 3, 1);
    send(
        &seal(
            &key,
            &agent,
            &other_zone,
            &ChainTip::GENESIS,
            1,
            &body_other,
        )
        .expect("seal")
        .wire,
    );
    // 7. the genuine envelope, then 8. an exact copy of it (a duplicate, as a FEC repeat round
    // can deliver: counted, not quarantined), then 9. a different envelope at the same
    // sequence number (a replay).
    send(&good.wire);
    wait_db("the genuine envelope applied", || {
        collector_json("agents", &db)["agents"][0]["last_seq"] == 1
    });
    send(&good.wire);
    let other_body = summary_body(&agent, &zone, 3, 2);
    let replay = seal(&key, &agent, &zone, &ChainTip::GENESIS, 1, &other_body).expect("seal");
    assert_ne!(replay.wire, good.wire);
    send(&replay.wire);

    let counter = |stats: &Value, name: &str| stats["counters"][name].as_i64().unwrap_or(0);
    let mut stats = Value::Null;
    wait_db("the replay counted", || {
        stats = collector_json("stats", &db);
        counter(&stats, "envelopes_rejected.replay") == 1
    });
    for (name, want) in [
        ("datagrams_rejected.bad_checksum", 1),
        ("datagrams_rejected.message_too_large", 1),
        ("envelopes_rejected.unknown_key", 1),
        ("envelopes_rejected.bad_signature", 1),
        ("envelopes_rejected.zone_not_authorised", 1),
        ("envelopes_rejected.replay", 1),
        ("envelopes_duplicate", 1),
    ] {
        assert_eq!(counter(&stats, name), want, "{name}: {stats:#}");
    }
    let garbage: i64 = [
        "datagrams_rejected.bad_magic",
        "datagrams_rejected.datagram_too_short",
    ]
    .iter()
    .map(|n| counter(&stats, n))
    .sum();
    assert_eq!(garbage, 1, "garbage datagram counted: {stats:#}");

    let quarantine = collector_json("quarantine", &db);
    let reasons: Vec<&str> = quarantine["quarantine"]
        .as_array()
        .expect("quarantine")
        .iter()
        .filter_map(|q| q["reason"].as_str())
        .collect();
    for reason in [
        "bad_checksum",
        "message_too_large",
        "unknown_key",
        "bad_signature",
        "zone_not_authorised",
        "replay",
    ] {
        assert!(
            reasons.contains(&reason),
            "{reason} not quarantined: {reasons:?}"
        );
    }
    // Only the genuine envelope's three assets, in the right zone.
    let assets = collector_json("assets", &db);
    let rows = assets["assets"].as_array().expect("assets");
    assert_eq!(rows.len(), 3, "{assets:#}");
    assert!(rows.iter().all(|a| a["zone"] == "cell-h"));

    let status = collector
        .stop(Duration::from_secs(10))
        .expect("collector stops");
    assert!(status.success(), "collector exit: {status}");
}
