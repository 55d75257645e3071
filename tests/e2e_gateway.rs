//! The gateway self-inventory end to end with real processes: `outpost-agent run --once`
//! (with `[gateway]` lists on) → real UDP → `outpost-collector serve` → a real SQLite file,
//! read back through `outpost-collector … --json`. A listener the test starts (an
//! `outpost-sim` process, stopped by its PID) shows up with its executable in the next cycle,
//! raises a `gateway` alert against the approved baseline, and is gone after it stops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use outpost_testbed::harness::{self, ChildGuard};
use outpost_testbed::scenario::{AgentSetup, agent_config, devices_from_sim_json};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn bin(name: &str) -> PathBuf {
    harness::binary(name).unwrap_or_else(|e| panic!("{e}"))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Runs `name args` to completion, bounded by [`WAIT`] (a hung child is killed by its PID).
fn run(name: &str, args: &[&str]) -> Output {
    harness::run_bounded(name, args, WAIT)
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

fn start_collector(dir: &Path, db: &Path) -> (ChildGuard, SocketAddr) {
    harness::start_diode_collector(dir, db, &[], WAIT)
}

/// Runs one agent cycle and waits until the collector has applied `envelopes` in all; returns
/// the gateway CI as `agents --json` shows it.
fn cycle(config: &Path, db: &Path, envelopes: i64) -> Value {
    run_ok(
        "outpost-agent",
        &["run", "--config", path(config), "--once"],
    );
    let mut agent = Value::Null;
    let done = harness::wait_for(WAIT, || {
        agent = collector_json("agents", db)["agents"][0].clone();
        (agent["envelopes_accepted"].as_i64() >= Some(envelopes)).then_some(())
    });
    assert!(
        done.is_some(),
        "envelope {envelopes} not applied: {agent:#}"
    );
    agent["gateway"].clone()
}

fn listens(gateway: &Value, protocol: &str, addr: SocketAddr) -> Option<Value> {
    gateway["inventory"]["listening"]
        .as_array()?
        .iter()
        .find(|s| {
            s["protocol"] == protocol
                && s["address"] == addr.ip().to_string().as_str()
                && s["port"] == addr.port()
        })
        .cloned()
}

#[test]
fn the_gateway_ci_holds_the_inventory_and_a_new_listener_is_judged() {
    let dir = harness::temp_dir("e2e-gateway").expect("temp dir");
    let dir = dir.path();
    let keys = dir.join("keys");
    run_ok(
        "outpost-agent",
        &["keygen", "--out", path(&keys), "--agent", "gw-inv"],
    );
    let db = dir.join("cmdb.sqlite");
    run_ok(
        "outpost-collector",
        &[
            "enroll",
            "--db",
            path(&db),
            "--zone",
            "cell-inv",
            "--key",
            path(&keys.join("agent.pub")),
        ],
    );
    let (mut collector, listen) = start_collector(dir, &db);

    // A gateway-only agent with the self-inventory on.
    let state = dir.join("state");
    let key_file = keys.join("agent.key");
    let mut setup = AgentSetup::new("gw-inv", "cell-inv", &state, &key_file, listen);
    setup.gateway_inventory = true;
    let config = dir.join("agent.toml");
    let text = format!("devices = []\n{}", agent_config(&setup, &[]));
    std::fs::write(&config, text).expect("write config");

    // `outpost-agent gateway --json` prints the same facts without sending anything.
    let printed: Value = serde_json::from_str(&run_ok(
        "outpost-agent",
        &["gateway", "--config", path(&config), "--json"],
    ))
    .expect("gateway --json is JSON");
    assert_eq!(printed["schema"], "outpost.gateway.v1");
    let agent_exe = std::fs::canonicalize(bin("outpost-agent")).expect("agent binary");
    let collector_exe = std::fs::canonicalize(bin("outpost-collector")).expect("collector");
    assert!(
        printed["executables"]
            .as_array()
            .expect("executables")
            .iter()
            .any(|e| e["exe"] == path(&agent_exe))
            || printed["truncated"].to_string().contains("executables"),
        "the agent itself is not among {printed:#}"
    );

    // Cycle 1: the gateway CI holds the facts; the collector's own socket is there, owned.
    let gw = cycle(&config, &db, 1);
    assert_eq!(gw["ci_key"], "gateway/gw-inv");
    let own = listens(&gw, "udp", listen).unwrap_or_else(|| panic!("{listen} missing: {gw:#}"));
    assert_eq!(own["exe"], path(&collector_exe));
    assert!(
        gw["inventory"]["executables"].as_array().is_some(),
        "{gw:#}"
    );
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
            "commissioning",
        ],
    );

    // A listener the test starts (a real process) shows up in the next cycle with its
    // executable, and is judged: a `gateway` alert names it.
    let sim_ready = dir.join("sim.json");
    let mut sim = ChildGuard::spawn(
        "outpost-sim",
        Command::new(bin("outpost-sim"))
            .args(["--bind", "127.0.7.1", "--ready-file", path(&sim_ready)])
            .stdout(Stdio::null())
            .stdin(Stdio::null()),
    )
    .expect("listener starts");
    let plant = harness::wait_ready_json(&sim_ready, WAIT).expect("listener ready");
    let opened = devices_from_sim_json(&plant).expect("simulator JSON")[0].addr;
    let gw = cycle(&config, &db, 2);
    let found = listens(&gw, "tcp", opened).unwrap_or_else(|| panic!("{opened} missing: {gw:#}"));
    let sim_exe = std::fs::canonicalize(bin("outpost-sim")).expect("sim binary");
    assert_eq!(found["exe"], path(&sim_exe));
    let fact = format!("listening tcp {opened}");
    let alerts = collector_json("alerts", &db);
    let alert = alerts["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .find(|a| {
            a["detail"]["changes"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["attribute"] == fact.as_str()))
        })
        .unwrap_or_else(|| panic!("no alert names {fact}: {alerts:#}"))
        .clone();
    assert_eq!(alert["category"], "gateway");
    assert_eq!(alert["severity_id"], 4);
    assert_eq!(alert["asset"], "gateway/gw-inv");

    // Stopped by its PID: gone in the next cycle.
    sim.stop(Duration::from_secs(10)).expect("listener stops");
    let gw = cycle(&config, &db, 3);
    assert!(listens(&gw, "tcp", opened).is_none(), "{gw:#}");
    let history = run_ok(
        "outpost-collector",
        &[
            "history",
            "--db",
            path(&db),
            "--asset",
            "gateway/gw-inv",
            "--json",
        ],
    );
    let history: Value = serde_json::from_str(&history).expect("history --json");
    let listening_changes = history["history"]
        .as_array()
        .expect("history rows")
        .iter()
        .filter(|h| h["attribute"] == "listening")
        .count();
    assert!(listening_changes >= 3, "{history:#}");

    collector
        .stop(Duration::from_secs(10))
        .expect("collector stops");
}
