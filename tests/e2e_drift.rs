//! Drift end to end with real processes: `outpost-sim` → `outpost-agent` (1 s polls, volatile
//! process blocks) → UDP → `outpost-collector serve --alert-file --alert-syslog` → a real
//! SQLite file, an OCSF JSON-lines file and a syslog listener (a UDP socket in this test).
//! A test engineering workstation writes registers over Modbus.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use outpost_testbed::ews::write_register_blocking;
use outpost_testbed::harness::{self, ChildGuard};
use outpost_testbed::scenario::{AgentSetup, agent_config, devices_from_sim_json};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

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

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn collector_json(what: &str, db: &Path) -> Value {
    let text = run_ok("outpost-collector", &[what, "--db", path(db), "--json"]);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what} --json is not JSON ({e}): {text}"))
}

fn last_seq(db: &Path) -> i64 {
    collector_json("agents", db)["agents"][0]["last_seq"]
        .as_i64()
        .unwrap_or(0)
}

/// Waits until `n` more envelopes than `from` have been applied; returns the new tip.
fn wait_envelopes(db: &Path, from: i64, n: i64) -> i64 {
    harness::wait_for(WAIT, || {
        let seq = last_seq(db);
        (seq >= from + n).then_some(seq)
    })
    .unwrap_or_else(|| panic!("timed out waiting for {n} envelopes after seq {from}"))
}

fn alerts(db: &Path) -> Vec<Value> {
    collector_json("alerts", db)["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Every syslog datagram that arrives within `wait`.
fn syslog_messages(listener: &UdpSocket, wait: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        if left.is_zero() {
            break;
        }
        listener
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        match listener.recv(&mut buf) {
            Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    out
}

fn ocsf_lines(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("OCSF line {l:?}: {e}")))
        .collect()
}

fn start_agent(config: &Path) -> ChildGuard {
    ChildGuard::spawn(
        "outpost-agent",
        Command::new(bin("outpost-agent"))
            .args(["run", "--config", path(config)])
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )
    .expect("agent starts")
}

#[test]
fn register_write_alerts_once_authorised_change_and_volatile_values_and_restart_do_not() {
    let dir = harness::temp_dir("e2e-drift").expect("temp dir");
    let dir = dir.path();

    let sim_ready = dir.join("sim.json");
    let mut sim = ChildGuard::spawn(
        "outpost-sim",
        Command::new(bin("outpost-sim"))
            .args(["--bind", "127.0.5.1", "--ready-file", path(&sim_ready)])
            .stdout(Stdio::null())
            .stdin(Stdio::null()),
    )
    .expect("simulator starts");
    let plant = harness::wait_ready_json(&sim_ready, WAIT).expect("simulator ready");
    let devices = devices_from_sim_json(&plant).expect("simulator JSON");
    let mixer = devices
        .iter()
        .find(|d| d.name == "mixer-plc")
        .expect("mixer-plc");
    let mixer_addr: SocketAddr = mixer.addr;

    let keys = dir.join("keys");
    run_ok(
        "outpost-agent",
        &["keygen", "--out", path(&keys), "--agent", "gw-drift"],
    );
    let db = dir.join("cmdb.sqlite");
    run_ok(
        "outpost-collector",
        &[
            "enroll",
            "--db",
            path(&db),
            "--zone",
            "cell-d",
            "--key",
            path(&keys.join("agent.pub")),
        ],
    );

    // The SIEM: a syslog listener on a real UDP socket.
    let siem = UdpSocket::bind("127.0.0.1:0").expect("syslog listener");
    let siem_url = format!("udp://{}", siem.local_addr().expect("addr"));
    let ocsf = dir.join("alerts.ocsf.jsonl");
    let ready = dir.join("collector.ready");
    let mut collector = ChildGuard::spawn(
        "outpost-collector",
        Command::new(bin("outpost-collector"))
            .args([
                "serve",
                "--db",
                path(&db),
                "--diode-listen",
                "127.0.0.1:0",
                "--ready-file",
                path(&ready),
                "--alert-file",
                path(&ocsf),
                "--alert-syslog",
                &siem_url,
            ])
            .stdin(Stdio::null()),
    )
    .expect("collector starts");
    let listen: SocketAddr = harness::wait_ready_file(&ready, WAIT)
        .expect("collector ready")
        .trim()
        .parse()
        .expect("address");

    let state = dir.join("state");
    let key_file = keys.join("agent.key");
    let mut setup = AgentSetup::new("gw-drift", "cell-d", &state, &key_file, listen);
    setup.volatile_process = true;
    let config = dir.join("agent.toml");
    std::fs::write(&config, agent_config(&setup, &devices)).expect("config");
    assert!(
        std::fs::read_to_string(&config)
            .expect("config")
            .contains("volatile = true")
    );
    let mut agent = start_agent(&config);
    let expected: usize = devices.iter().map(|d| d.unit_ids.len()).sum();
    harness::wait_for(WAIT, || {
        (collector_json("assets", &db)["assets"]
            .as_array()
            .map_or(0, Vec::len)
            == expected)
            .then_some(())
    })
    .expect("every device in the CMDB");

    // Approve everything as observed.
    let out = run_ok(
        "outpost-collector",
        &[
            "baseline",
            "approve",
            "--db",
            path(&db),
            "--all",
            "--by",
            "e2e",
            "--reason",
            "CHG-initial",
        ],
    );
    assert!(out.contains(&format!("{expected} asset(s)")), "{out}");

    // Process values change on every poll: several polls, no alert.
    let seq = last_seq(&db);
    let seq = wait_envelopes(&db, seq, 4);
    assert!(alerts(&db).is_empty(), "{:#?}", alerts(&db));
    let process_changes = collector_json("history", &db)["history"]
        .as_array()
        .map_or(0, |h| {
            h.iter()
                .filter(|r| r["attribute"].as_str() == Some("block.process-0"))
                .filter(|r| r["envelope_seq"].as_i64() > Some(seq - 4))
                .count()
        });
    assert!(
        process_changes >= 3,
        "the volatile block did change while no alert was raised ({process_changes})"
    );
    let drift = collector_json("drift", &db);
    assert!(
        drift["drift"]
            .as_array()
            .expect("drift")
            .iter()
            .all(|d| d["state"] == "in_baseline"),
        "{drift:#}"
    );

    // An engineering workstation changes the mixer's speed setpoint: one unauthorised alert.
    write_register_blocking(mixer_addr, 1, 100, 1350).expect("FC 6 write");
    let alert = harness::wait_for(WAIT, || alerts(&db).into_iter().next()).expect("an alert");
    assert_eq!(alert["kind"], "unauthorised_change");
    assert_eq!(alert["category"], "config");
    assert_eq!(alert["asset_name"], "mixer-plc");
    assert_eq!(alert["zone"], "cell-d");
    assert_eq!(alert["agent_id"], "gw-drift");
    let change = &alert["detail"]["changes"][0];
    assert_eq!(change["attribute"], "block.config-100");
    assert_eq!(
        change["registers"],
        serde_json::json!([{"address": 100, "before": 1200, "after": 1350}])
    );
    let syslog = syslog_messages(&siem, Duration::from_secs(5));
    assert_eq!(syslog.len(), 1, "{syslog:#?}");
    assert!(syslog[0].starts_with("<36>1 "), "{}", syslog[0]);
    let seq_attr = format!("envelope_seq=\"{}\"", alert["envelope_seq"]);
    assert!(syslog[0].contains(&seq_attr), "{}", syslog[0]);
    let lines = ocsf_lines(&ocsf);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["class_uid"], 5019);
    assert_eq!(lines[0]["severity_id"], 3);
    assert_eq!(lines[0]["device"]["name"], "mixer-plc");
    assert_eq!(
        lines[0]["unmapped"]["outpost"]["evidence"]["envelope_hash"],
        alert["envelope_hash"]
    );

    // The changed value stays: further polls raise nothing more.
    let seq = wait_envelopes(&db, last_seq(&db), 3);
    assert_eq!(alerts(&db).len(), 1);
    assert!(syslog_messages(&siem, Duration::from_millis(300)).is_empty());

    // The same kind of change inside an approved window: authorised, evidence, no alert.
    let now = outpost_collector::time::now_ms() as i64;
    let from = outpost_collector::time::rfc3339(now - 60_000);
    let to = outpost_collector::time::rfc3339(now + 600_000);
    run_ok(
        "outpost-collector",
        &[
            "change",
            "add",
            "--db",
            path(&db),
            "--ticket",
            "CHG0031337",
            "--asset",
            "mixer-plc",
            "--from",
            &from,
            "--to",
            &to,
            "--expect",
            "block.config-100[101]=360",
        ],
    );
    write_register_blocking(mixer_addr, 1, 101, 360).expect("FC 6 write");
    let record = harness::wait_for(WAIT, || {
        let c = collector_json("changes", &db)["changes"][0].clone();
        (c["state"] == "implemented").then_some(c)
    })
    .expect("change record implemented");
    let ev = &record["evidence"][0];
    assert!(ev["envelope_seq"].as_i64() > Some(seq - 1), "{ev:#}");
    assert_eq!(ev["envelope_hash"].as_str().map(str::len), Some(64));
    assert_eq!(ev["agent_id"], "gw-drift");
    assert_eq!(
        ev["changes"][0]["registers"],
        serde_json::json!([{"address": 101, "before": 300, "after": 360}])
    );
    let totals = &collector_json("changes", &db)["totals"];
    assert_eq!(
        (
            totals["authorised"].as_i64(),
            totals["unauthorised"].as_i64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(alerts(&db).len(), 1);
    assert!(syslog_messages(&siem, Duration::from_millis(300)).is_empty());

    // The agent restarts: same state, no false drift.
    agent.stop(Duration::from_secs(10)).expect("agent stops");
    let before_restart = last_seq(&db);
    let mut agent = start_agent(&config);
    wait_envelopes(&db, before_restart, 3);
    assert_eq!(alerts(&db).len(), 1, "{:#?}", alerts(&db));
    assert!(syslog_messages(&siem, Duration::from_millis(300)).is_empty());
    assert_eq!(ocsf_lines(&ocsf).len(), 1);
    let q = collector_json("quarantine", &db);
    assert_eq!(q["quarantine"].as_array().map(Vec::len), Some(0), "{q:#}");

    agent.stop(Duration::from_secs(10)).expect("agent stops");
    let status = collector
        .stop(Duration::from_secs(10))
        .expect("collector stops");
    assert!(status.success(), "collector exit: {status}");
    sim.stop(Duration::from_secs(10)).expect("simulator stops");
}

/// Firmware change, a new device and a vanished one, each with its category, through real
/// agent and collector processes (the plant runs in this test so its firmware can change).
#[test]
fn firmware_new_device_and_vanished_device_get_their_categories() {
    use outpost_testbed::scenario::PlantDevice;
    use outpost_testbed::sim::{Plant, default_plant};

    let dir = harness::temp_dir("e2e-drift-kinds").expect("temp dir");
    let dir = dir.path();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let specs = default_plant();
    let main_specs: Vec<_> = specs
        .iter()
        .filter(|s| s.name == "mixer-plc" || s.name == "io-coupler")
        .cloned()
        .collect();
    let extra_specs: Vec<_> = specs
        .iter()
        .filter(|s| s.name == "pump-vfd")
        .cloned()
        .collect();
    let plant = runtime
        .block_on(Plant::start_local(main_specs))
        .expect("plant");
    let extra = runtime
        .block_on(Plant::start_local(extra_specs))
        .expect("extra device");
    let main_devices: Vec<PlantDevice> = plant.devices().iter().map(PlantDevice::from).collect();
    let extra_devices: Vec<PlantDevice> = extra.devices().iter().map(PlantDevice::from).collect();

    let keys = dir.join("keys");
    run_ok(
        "outpost-agent",
        &["keygen", "--out", path(&keys), "--agent", "gw-kinds"],
    );
    let db = dir.join("cmdb.sqlite");
    run_ok(
        "outpost-collector",
        &[
            "enroll",
            "--db",
            path(&db),
            "--zone",
            "cell-k",
            "--key",
            path(&keys.join("agent.pub")),
        ],
    );
    let ocsf = dir.join("alerts.ocsf.jsonl");
    let ready = dir.join("collector.ready");
    let mut collector = ChildGuard::spawn(
        "outpost-collector",
        Command::new(bin("outpost-collector"))
            .args([
                "serve",
                "--db",
                path(&db),
                "--diode-listen",
                "127.0.0.1:0",
                "--ready-file",
                path(&ready),
                "--alert-file",
                path(&ocsf),
                "--unreachable-polls",
                "2",
            ])
            .stdin(Stdio::null()),
    )
    .expect("collector starts");
    let listen: SocketAddr = harness::wait_ready_file(&ready, WAIT)
        .expect("collector ready")
        .trim()
        .parse()
        .expect("address");
    let state = dir.join("state");
    let key_file = keys.join("agent.key");
    let setup = AgentSetup::new("gw-kinds", "cell-k", &state, &key_file, listen);
    let config = dir.join("agent.toml");
    std::fs::write(&config, agent_config(&setup, &main_devices)).expect("config");
    let mut agent = start_agent(&config);
    harness::wait_for(WAIT, || {
        (collector_json("assets", &db)["assets"]
            .as_array()
            .map_or(0, Vec::len)
            == 2)
            .then_some(())
    })
    .expect("both devices in the CMDB");
    run_ok(
        "outpost-collector",
        &[
            "baseline",
            "approve",
            "--db",
            path(&db),
            "--all",
            "--by",
            "e2e",
            "--reason",
            "initial",
        ],
    );

    // Firmware: identity, high.
    plant.set_revision(0, "V1.12.0.0").expect("new firmware");
    let a = harness::wait_for(WAIT, || alerts(&db).into_iter().next()).expect("firmware alert");
    assert_eq!(
        (
            a["kind"].as_str(),
            a["category"].as_str(),
            a["severity_id"].as_i64()
        ),
        (Some("unauthorised_change"), Some("identity"), Some(4)),
        "{a:#}"
    );
    assert_eq!(a["asset_name"], "mixer-plc");
    assert_eq!(a["detail"]["changes"][0]["after"], "V1.12.0.0");

    // A device appears in the baselined zone: new device, high, OCSF 5001.
    agent.stop(Duration::from_secs(10)).expect("agent stops");
    let all: Vec<PlantDevice> = main_devices.iter().chain(&extra_devices).cloned().collect();
    std::fs::write(&config, agent_config(&setup, &all)).expect("config");
    let mut agent = start_agent(&config);
    let a = harness::wait_for(WAIT, || alerts(&db).into_iter().nth(1)).expect("new-device alert");
    assert_eq!(
        (
            a["kind"].as_str(),
            a["category"].as_str(),
            a["severity_id"].as_i64()
        ),
        (Some("new_device"), Some("new_device"), Some(4)),
        "{a:#}"
    );
    assert_eq!(a["asset_name"], "pump-vfd");

    // Approved, then it vanishes: presence, low.
    run_ok(
        "outpost-collector",
        &[
            "baseline",
            "approve",
            "--db",
            path(&db),
            "--asset",
            "pump-vfd",
            "--by",
            "e2e",
            "--reason",
            "commissioned",
        ],
    );
    runtime.block_on(extra.stop());
    let a = harness::wait_for(WAIT, || alerts(&db).into_iter().nth(2)).expect("presence alert");
    assert_eq!(
        (
            a["kind"].as_str(),
            a["category"].as_str(),
            a["severity_id"].as_i64()
        ),
        (Some("device_unreachable"), Some("presence"), Some(2)),
        "{a:#}"
    );
    assert_eq!(a["asset_name"], "pump-vfd");
    // After `serve --unreachable-polls 2` consecutive unreachable polls, not the first.
    assert_eq!(a["detail"]["unreachable_polls"], 2, "{a:#}");

    // Nothing else, and every alert in the OCSF file with its class.
    wait_envelopes(&db, last_seq(&db), 2);
    assert_eq!(alerts(&db).len(), 3, "{:#?}", alerts(&db));
    let classes = harness::wait_for(WAIT, || {
        let lines = ocsf_lines(&ocsf);
        (lines.len() == 3).then(|| {
            lines
                .iter()
                .map(|l| l["class_uid"].as_i64().unwrap_or(0))
                .collect::<Vec<_>>()
        })
    })
    .expect("three OCSF lines");
    assert_eq!(classes, [5019, 5001, 5019]);

    agent.stop(Duration::from_secs(10)).expect("agent stops");
    collector
        .stop(Duration::from_secs(10))
        .expect("collector stops");
    runtime.block_on(plant.stop());
}
