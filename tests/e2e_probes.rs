//! Segmentation probes end to end on loopback: `outpost-agent run` (with `[segmentation]`) →
//! real TCP connects → a signed probe report over real UDP → `outpost-collector serve` → a real
//! SQLite file → `outpost-collector probes --json` and `alerts --json`.
//!
//! Targets are sockets this test owns: a listener (must-not-reach: connected → violation), a
//! closed port (must-not-reach: refused → still a violation, the reset proves the packet got
//! there), a conduit that is down (may-reach: refused → conduit_down) and one that is up. Then
//! the agent runs in the background mode with the down conduit listening again →
//! conduit_restored. The listener also proves the probe sends nothing: the accepted connection
//! reads end-of-file with zero bytes.

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use outpost_testbed::harness::{self, ChildGuard};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn bin(name: &str) -> PathBuf {
    harness::binary(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `name args` to completion, bounded by [`WAIT`] (a hung child is killed by its PID).
fn run(name: &str, args: &[&str]) -> Output {
    harness::run_bounded(name, args, WAIT)
}

fn run_ok(name: &str, args: &[&str]) -> String {
    let out = run(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn collector_json(what: &str, db: &Path) -> Value {
    let text = run_ok("outpost-collector", &[what, "--db", path(db), "--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what} --json ({e}): {text}"))
}

fn alert_kinds(db: &Path) -> Vec<String> {
    collector_json("alerts", db)["alerts"]
        .as_array()
        .expect("alerts array")
        .iter()
        .map(|a| a["kind"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// A loopback port nobody listens on (bound, then released).
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn start_collector(dir: &Path, db: &Path) -> (ChildGuard, SocketAddr) {
    let alerts = dir.join("alerts.ocsf.jsonl");
    harness::start_diode_collector(dir, db, &["--alert-file", path(&alerts)], WAIT)
}

fn state_of<'a>(probes: &'a Value, target: &SocketAddr) -> &'a Value {
    probes["state"]
        .as_array()
        .expect("state array")
        .iter()
        .find(|s| s["target"] == target.to_string())
        .unwrap_or_else(|| panic!("no state for {target}: {probes:#}"))
}

#[test]
fn probes_on_loopback_raise_violations_and_conduit_alerts() {
    let tmp = harness::temp_dir("e2e-probes").expect("temp dir");
    let dir = tmp.path();
    let keys = dir.join("keys");
    run_ok(
        "outpost-agent",
        &["keygen", "--out", path(&keys), "--agent", "gw-p"],
    );
    let db = dir.join("cmdb.sqlite");
    run_ok(
        "outpost-collector",
        &[
            "enroll",
            "--db",
            path(&db),
            "--zone",
            "cell-p",
            "--key",
            path(&keys.join("agent.pub")),
        ],
    );
    let (mut collector, listen) = start_collector(dir, &db);

    let it_service = TcpListener::bind("127.0.0.1:0").expect("bind IT listener");
    let it_addr = it_service.local_addr().expect("addr");
    let closed = closed_port();
    let conduit_down = closed_port();
    let conduit_up = TcpListener::bind("127.0.0.1:0").expect("bind conduit");
    let conduit_up_addr = conduit_up.local_addr().expect("addr");

    // What the probe sent to the IT listener: read until EOF (bounded by a read timeout).
    let sniffer = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut conn, _) = it_service.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf)?;
        Ok(buf.len())
    });

    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "agent_id = \"gw-p\"\nzone = \"cell-p\"\nstate_dir = {:?}\nkey_file = {:?}\n\
             poll_interval = \"1s\"\ndevices = []\n\n[diode]\ntarget = \"{listen}\"\n\n\
             [segmentation]\nmust_not_reach = [\"{it_addr}\", \"{closed}\"]\n\
             may_reach = [\"{conduit_down}\", \"{conduit_up_addr}\"]\ninterval = \"1m\"\n\
             connect_timeout = \"1s\"\nmax_probes_per_sec = 20\n",
            path(&dir.join("state")),
            path(&keys.join("agent.key")),
        ),
    )
    .expect("write config");
    let checked = run_ok(
        "outpost-agent",
        &["check-config", "--config", path(&config)],
    );
    assert!(
        checked.contains("segmentation probes every 1m: 4 targets"),
        "{checked}"
    );

    run_ok(
        "outpost-agent",
        &["run", "--config", path(&config), "--once"],
    );
    let probes = harness::wait_for(WAIT, || {
        let p = collector_json("probes", &db);
        (p["state"].as_array().map_or(0, Vec::len) == 4).then_some(p)
    })
    .expect("the probe report reaches the CMDB");
    assert_eq!(state_of(&probes, &it_addr)["outcome"], "connected");
    assert_eq!(state_of(&probes, &it_addr)["problem"], true);
    assert_eq!(state_of(&probes, &closed)["outcome"], "refused");
    assert_eq!(state_of(&probes, &closed)["problem"], true);
    assert_eq!(state_of(&probes, &conduit_down)["problem"], true);
    assert_eq!(state_of(&probes, &conduit_up_addr)["outcome"], "connected");
    assert_eq!(state_of(&probes, &conduit_up_addr)["problem"], false);
    assert_eq!(probes["violations"], 2);
    assert_eq!(probes["conduits_down"], 1);
    assert_eq!(probes["schema"], "outpost.probes.v1");
    let mut kinds = alert_kinds(&db);
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "conduit_down",
            "segmentation_violation",
            "segmentation_violation"
        ]
    );
    // The table says it in words, problems first.
    let table = run_ok("outpost-collector", &["probes", "--db", path(&db)]);
    let first_rows: Vec<&str> = table.lines().skip(1).take(3).collect();
    assert!(
        first_rows
            .iter()
            .all(|l| l.starts_with("VIOLATION") || l.starts_with("CONDUIT DOWN")),
        "{table}"
    );
    assert!(table.contains("4 probe targets"), "{table}");
    // Delivered through the alert pipeline as OCSF Detection Findings naming the target.
    let ocsf = dir.join("alerts.ocsf.jsonl");
    let findings = harness::wait_for(WAIT, || {
        let text = std::fs::read_to_string(&ocsf).ok()?;
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (events.len() >= 3).then_some(events)
    })
    .expect("three OCSF events delivered to the alert file");
    let violation = findings
        .iter()
        .find(|e| e["unmapped"]["outpost"]["kind"] == "segmentation_violation")
        .expect("a violation event");
    assert_eq!(violation["class_uid"], 2004);
    assert_eq!(violation["severity_id"], 4);
    assert_eq!(violation["dst_endpoint"]["ip"], "127.0.0.1");

    // The probe connected and closed without sending a byte.
    let sent = sniffer
        .join()
        .expect("sniffer thread")
        .expect("accepted the probe");
    assert_eq!(sent, 0, "the probe must not send anything");

    // Background mode: the conduit is back; the first round runs at start.
    let conduit_back = TcpListener::bind(conduit_down).expect("rebind the conduit port");
    let mut agent = ChildGuard::spawn(
        "outpost-agent",
        Command::new(bin("outpost-agent"))
            .args(["run", "--config", path(&config)])
            .stdin(Stdio::null()),
    )
    .expect("agent starts");
    let restored = harness::wait_for(WAIT, || {
        alert_kinds(&db)
            .iter()
            .any(|k| k == "conduit_restored")
            .then_some(())
    });
    agent.stop(Duration::from_secs(5)).expect("agent stops");
    drop(conduit_back);
    assert!(
        restored.is_some(),
        "no conduit_restored: {:?}",
        alert_kinds(&db)
    );
    let history = collector_json_all(&db);
    assert!(
        history["history"].as_array().map_or(0, Vec::len) >= 8,
        "two rounds of four results: {history:#}"
    );
    // The violations stay open and are not alerted again.
    let kinds = alert_kinds(&db);
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "segmentation_violation")
            .count(),
        2,
        "{kinds:?}"
    );
    collector
        .stop(Duration::from_secs(5))
        .expect("collector stops");
    drop(conduit_up);
}

fn collector_json_all(db: &Path) -> Value {
    let text = run_ok(
        "outpost-collector",
        &["probes", "--db", path(db), "--json", "--all"],
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("probes --all ({e}): {text}"))
}
