//! Change events end to end with real processes: `outpost-sim` → `outpost-agent` (1 s polls,
//! `[changes] events = true`, volatile process blocks) → UDP → `outpost-collector serve
//! --alert-syslog` → a real SQLite file and a syslog listener (a UDP socket in this test).
//!
//! Volatile values changing every poll send no change event; one register written by a test
//! engineering workstation is exactly one change event, applied and judged at once into one
//! alert whose evidence is that event (the snapshot after it raises nothing); a restarted agent
//! compares with its persisted state and sends no change event.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outpost_testbed::ews::write_register_blocking;
use outpost_testbed::harness::{self, ChildGuard};
use outpost_testbed::scenario::{AgentSetup, agent_config, devices_from_sim_json};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn bin(name: &str) -> PathBuf {
    harness::binary(name).unwrap_or_else(|e| panic!("{e}"))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn run_ok(name: &str, args: &[&str]) -> String {
    let out = Command::new(bin(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
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

fn list(what: &str, field: &str, db: &Path) -> Vec<Value> {
    collector_json(what, db)[field]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn last_seq(db: &Path) -> i64 {
    collector_json("agents", db)["agents"][0]["last_seq"]
        .as_i64()
        .unwrap_or(0)
}

/// Waits until `n` more envelopes than `from` have been applied.
fn wait_envelopes(db: &Path, from: i64, n: i64) -> i64 {
    harness::wait_for(WAIT, || {
        let seq = last_seq(db);
        (seq >= from + n).then_some(seq)
    })
    .unwrap_or_else(|| panic!("timed out waiting for {n} envelopes after seq {from}"))
}

/// Every syslog datagram that arrives within `wait`.
fn syslog_messages(listener: &UdpSocket, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if left.is_zero() || out.len() >= 100 {
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
fn one_register_write_is_one_change_event_and_one_alert_volatile_values_and_restart_none() {
    let dir = harness::temp_dir("e2e-changes").expect("temp dir");
    let dir = dir.path();

    let sim_ready = dir.join("sim.json");
    let mut sim = ChildGuard::spawn(
        "outpost-sim",
        Command::new(bin("outpost-sim"))
            .args(["--bind", "127.0.12.1", "--ready-file", path(&sim_ready)])
            .stdout(Stdio::null())
            .stdin(Stdio::null()),
    )
    .expect("simulator starts");
    let plant = harness::wait_ready_json(&sim_ready, WAIT).expect("simulator ready");
    let devices = devices_from_sim_json(&plant).expect("simulator JSON");
    let mixer_addr: SocketAddr = devices
        .iter()
        .find(|d| d.name == "mixer-plc")
        .expect("mixer-plc")
        .addr;

    let keys = dir.join("keys");
    run_ok(
        "outpost-agent",
        &["keygen", "--out", path(&keys), "--agent", "gw-changes"],
    );
    let db = dir.join("cmdb.sqlite");
    run_ok(
        "outpost-collector",
        &[
            "enroll",
            "--db",
            path(&db),
            "--zone",
            "cell-c",
            "--key",
            path(&keys.join("agent.pub")),
        ],
    );
    let siem = UdpSocket::bind("127.0.0.1:0").expect("syslog listener");
    let siem_url = format!("udp://{}", siem.local_addr().expect("addr"));
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
    let mut setup = AgentSetup::new("gw-changes", "cell-c", &state, &key_file, listen);
    setup.volatile_process = true;
    let config = dir.join("agent.toml");
    // Gateway host changes are left out: on a shared test machine other processes open
    // sockets and start programs, which the agent would rightly report.
    let text = format!(
        "{}\n[changes]\nevents = true\ngateway = false\n",
        agent_config(&setup, &devices)
    );
    std::fs::write(&config, text).expect("config");
    let mut agent = start_agent(&config);
    let expected: usize = devices.iter().map(|d| d.unit_ids.len()).sum();
    harness::wait_for(WAIT, || {
        (list("assets", "assets", &db).len() == expected).then_some(())
    })
    .expect("every device in the CMDB");
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
            "CHG-initial",
        ],
    );

    // Volatile process values change on every poll: several cycles, no change event.
    let seq = wait_envelopes(&db, last_seq(&db), 6);
    let history = list("history", "history", &db);
    let volatile_changes = history
        .iter()
        .filter(|r| r["attribute"].as_str() == Some("block.process-0"))
        .count();
    assert!(
        volatile_changes >= 3,
        "the volatile block did change ({volatile_changes} changes)"
    );
    let events = list("changes-observed", "changes", &db);
    assert!(events.is_empty(), "{events:#?}");
    assert!(list("alerts", "alerts", &db).is_empty());
    assert!(state.join("observed-state.cbor").exists());

    // An engineering workstation writes the mixer's speed setpoint.
    write_register_blocking(mixer_addr, 1, 100, 1350).expect("FC 6 write");
    let event = harness::wait_for(WAIT, || {
        list("changes-observed", "changes", &db).into_iter().next()
    })
    .expect("a change event");
    assert_eq!(event["category"], "block");
    assert_eq!(event["outcome"], "applied", "{event:#}");
    assert_eq!(event["asset_name"], "mixer-plc");
    assert_eq!(event["attribute"], "block.config-100");
    assert_eq!(
        event["after"]["ranges"],
        serde_json::json!([{"address": 100, "before": [1200], "after": [1350]}])
    );
    assert!(event["envelope_seq"].as_i64() > Some(seq));
    let alerts = list("alerts", "alerts", &db);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["kind"], "unauthorised_change");
    assert_eq!(alerts[0]["asset_name"], "mixer-plc");
    assert_eq!(
        alerts[0]["envelope_seq"], event["envelope_seq"],
        "the alert's evidence is the change event"
    );
    let syslog = harness::wait_for(WAIT, || {
        let m = syslog_messages(&siem, Duration::from_millis(200));
        (!m.is_empty()).then_some(m)
    })
    .expect("the alert on the syslog listener");
    assert_eq!(syslog.len(), 1, "{syslog:#?}");

    // The value stays: more cycles (snapshots showing it) add neither events nor alerts.
    wait_envelopes(&db, last_seq(&db), 4);
    assert_eq!(list("changes-observed", "changes", &db).len(), 1);
    assert_eq!(list("alerts", "alerts", &db).len(), 1);
    assert!(syslog_messages(&siem, Duration::from_millis(300)).is_empty());

    // The agent restarts: it compares with its persisted state, so no change event.
    agent.stop(Duration::from_secs(10)).expect("agent stops");
    let before_restart = last_seq(&db);
    let mut agent = start_agent(&config);
    wait_envelopes(&db, before_restart, 4);
    let events = list("changes-observed", "changes", &db);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(list("alerts", "alerts", &db).len(), 1);
    assert!(syslog_messages(&siem, Duration::from_millis(300)).is_empty());
    let q = list("quarantine", "quarantine", &db);
    assert!(q.is_empty(), "{q:#?}");

    agent.stop(Duration::from_secs(10)).expect("agent stops");
    let status = collector
        .stop(Duration::from_secs(10))
        .expect("collector stops");
    assert!(status.success(), "collector exit: {status}");
    sim.stop(Duration::from_secs(10)).expect("simulator stops");
}

/// A firmware change and a vanished device through real agent and collector processes, as
/// change events with their categories (the plant runs in this test so its firmware can change).
#[test]
fn firmware_change_and_vanished_device_are_change_events_with_their_categories() {
    use outpost_testbed::scenario::PlantDevice;
    use outpost_testbed::sim::{Plant, default_plant};

    let dir = harness::temp_dir("e2e-changes-kinds").expect("temp dir");
    let dir = dir.path();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let specs = default_plant();
    let pick =
        |name: &str| -> Vec<_> { specs.iter().filter(|s| s.name == name).cloned().collect() };
    let plant = runtime
        .block_on(Plant::start_local(pick("mixer-plc")))
        .expect("plant");
    let extra = runtime
        .block_on(Plant::start_local(pick("pump-vfd")))
        .expect("extra device");
    let devices: Vec<PlantDevice> = plant
        .devices()
        .iter()
        .chain(extra.devices().iter())
        .map(PlantDevice::from)
        .collect();

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
    let text = format!(
        "{}\n[changes]\nevents = true\ngateway = false\nunreachable_polls = 2\n",
        agent_config(&setup, &devices)
    );
    std::fs::write(&config, text).expect("config");
    let mut agent = start_agent(&config);
    harness::wait_for(WAIT, || {
        (list("assets", "assets", &db).len() == 2).then_some(())
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

    // Firmware: an identity change event, applied; the alert is identity, high.
    plant.set_revision(0, "V1.12.0.0").expect("new firmware");
    let event = harness::wait_for(WAIT, || {
        list("changes-observed", "changes", &db).into_iter().next()
    })
    .expect("a change event");
    assert_eq!(
        (
            event["category"].as_str(),
            event["attribute"].as_str(),
            event["outcome"].as_str()
        ),
        (Some("identity"), Some("revision"), Some("applied")),
        "{event:#}"
    );
    assert_eq!(event["after"], "V1.12.0.0");
    let alerts = list("alerts", "alerts", &db);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["category"], "identity");
    assert_eq!(alerts[0]["envelope_seq"], event["envelope_seq"]);

    // The pump vanishes: `disappeared` after two unreachable polls, once.
    runtime.block_on(extra.stop());
    let gone = harness::wait_for(WAIT, || {
        list("changes-observed", "changes", &db)
            .into_iter()
            .find(|e| e["category"] == "disappeared")
    })
    .expect("a disappeared event");
    assert_eq!(gone["asset_name"], "pump-vfd");
    assert_eq!(gone["outcome"], "recorded");
    assert_eq!(gone["after"]["polls"], 2, "{gone:#}");
    wait_envelopes(&db, last_seq(&db), 3);
    let events = list("changes-observed", "changes", &db);
    assert_eq!(events.len(), 2, "{events:#?}");

    agent.stop(Duration::from_secs(10)).expect("agent stops");
    collector
        .stop(Duration::from_secs(10))
        .expect("collector stops");
    runtime.block_on(plant.stop());
}
