//! End to end with real processes: a device with a serial number moves to another address.
//! `outpost-sim` serves the default plant (its Phoenix Contact coupler gives serial
//! `SN 1234567` in FC 43 object 0x80, which the built-in profile names) on 127.0.41.x; the agent
//! polls the coupler's old and new addresses; the simulator is stopped and restarted on
//! 127.0.42.x; after the next cycle the CMDB holds one CI for the coupler, keyed by vendor +
//! product + serial, at its new address, with one `address_changed` event.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use outpost_testbed::harness::{self, ChildGuard};
use outpost_testbed::scenario::{AgentSetup, PlantDevice, agent_config, devices_from_sim_json};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
const COUPLER_KEY: &str = "zone/cell-id/serial/Phoenix Contact/2703981/SN 1234567";

fn bin(name: &str) -> PathBuf {
    harness::binary(name).unwrap_or_else(|e| panic!("{e}"))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn run_ok(name: &str, args: &[&str]) -> String {
    let out: Output = Command::new(bin(name))
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
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what} --json ({e}): {text}"))
}

/// The simulator's default plant from `first` on `port`; returns it and its coupler.
fn start_sim(dir: &Path, first: Ipv4Addr, port: u16) -> (ChildGuard, PlantDevice) {
    let ready = dir.join(format!("sim-{first}.json"));
    let sim = ChildGuard::spawn(
        "outpost-sim",
        Command::new(bin("outpost-sim"))
            .args([
                "--bind",
                &first.to_string(),
                "--port",
                &port.to_string(),
                "--ready-file",
                path(&ready),
            ])
            .stdout(Stdio::null())
            .stdin(Stdio::null()),
    )
    .expect("simulator starts");
    let plant = harness::wait_ready_json(&ready, WAIT).expect("simulator ready");
    let coupler = devices_from_sim_json(&plant)
        .expect("simulator JSON")
        .into_iter()
        .find(|d| d.name == "io-coupler")
        .expect("the default plant has its coupler");
    (sim, coupler)
}

fn coupler_rows(assets: &Value) -> Vec<Value> {
    assets["assets"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| r["vendor_name"] == "Phoenix Contact")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn events_of(db: &Path, kind: &str) -> Vec<Value> {
    collector_json("events", db)["events"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["kind"] == kind).cloned().collect())
        .unwrap_or_default()
}

#[test]
fn a_device_that_moves_to_another_address_stays_one_ci() {
    let dir = harness::temp_dir("e2e-identity").expect("temp dir");
    let dir = dir.path();
    let (old_net, new_net) = (Ipv4Addr::new(127, 0, 41, 1), Ipv4Addr::new(127, 0, 42, 1));
    let port = harness::free_tcp_addr(IpAddr::V4(old_net))
        .expect("a free port")
        .port();

    let (mut sim, coupler) = start_sim(dir, old_net, port);
    // The coupler's address once the plant restarts on the other network (same position).
    let offset = u32::from(*match &coupler.addr {
        SocketAddr::V4(a) => a.ip(),
        SocketAddr::V6(_) => panic!("the simulator binds IPv4"),
    }) - u32::from(old_net);
    let moved = PlantDevice {
        name: "io-coupler-moved".into(),
        addr: SocketAddr::from((Ipv4Addr::from(u32::from(new_net) + offset), port)),
        ..coupler.clone()
    };

    let keys = dir.join("keys");
    run_ok(
        "outpost-agent",
        &["keygen", "--out", path(&keys), "--agent", "gw-id"],
    );
    let db = dir.join("cmdb.sqlite");
    run_ok(
        "outpost-collector",
        &[
            "enroll",
            "--db",
            path(&db),
            "--zone",
            "cell-id",
            "--key",
            path(&keys.join("agent.pub")),
        ],
    );
    let ready = dir.join("collector.ready");
    let mut collector = ChildGuard::spawn(
        "outpost-collector",
        Command::new(bin("outpost-collector"))
            .args(["serve", "--db", path(&db), "--diode-listen", "127.0.0.1:0"])
            .args(["--ready-file", path(&ready)])
            .stdin(Stdio::null()),
    )
    .expect("collector starts");
    let listen: SocketAddr = harness::wait_ready_file(&ready, WAIT)
        .expect("collector ready")
        .trim()
        .parse()
        .expect("ready file holds an address");

    let state = dir.join("state");
    let key_file = keys.join("agent.key");
    let mut setup = AgentSetup::new("gw-id", "cell-id", &state, &key_file, listen);
    setup.request_timeout = Duration::from_millis(500);
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        agent_config(&setup, &[coupler.clone(), moved.clone()]),
    )
    .expect("write config");
    let cycle = || {
        run_ok(
            "outpost-agent",
            &["run", "--config", path(&config), "--once"],
        )
    };

    // Cycle 1: the coupler answers at its old address, with its serial number.
    cycle();
    let found = harness::wait_for(WAIT, || {
        let assets = collector_json("assets", &db);
        coupler_rows(&assets)
            .into_iter()
            .find(|r| r["ci_key"] == COUPLER_KEY)
    });
    let first = found.expect("the coupler's CI keyed by its serial number");
    assert_eq!(first["identity_basis"], "serial", "{first:#}");
    assert_eq!(first["serial_number"], "SN 1234567");
    assert_eq!(first["endpoint"], format!("tcp://{}", coupler.addr));

    // The plant moves: stopped (by its PID) and started on the other network.
    sim.stop(Duration::from_secs(5)).expect("simulator stops");
    let (_sim2, coupler2) = start_sim(dir, new_net, port);
    assert_eq!(coupler2.addr, moved.addr);

    // Cycle 2: the old address is silent, the new one answers with the same serial.
    cycle();
    let moves = harness::wait_for(WAIT, || {
        let moves = events_of(&db, "address_changed");
        (!moves.is_empty()).then_some(moves)
    })
    .expect("an address_changed event");
    assert_eq!(moves.len(), 1, "{moves:#?}");
    assert_eq!(moves[0]["asset"], COUPLER_KEY);
    assert_eq!(
        moves[0]["detail"]["old_endpoint"],
        format!("tcp://{}", coupler.addr)
    );
    assert_eq!(
        moves[0]["detail"]["endpoint"],
        format!("tcp://{}", moved.addr)
    );

    let assets = collector_json("assets", &db);
    assert_eq!(assets["schema"], "outpost.assets.v2");
    let serial_cis: Vec<Value> = coupler_rows(&assets)
        .into_iter()
        .filter(|r| r["serial_number"] == "SN 1234567")
        .collect();
    assert_eq!(serial_cis.len(), 1, "one CI for the coupler: {assets:#}");
    let ci = &serial_cis[0];
    assert_eq!(ci["ci_key"], COUPLER_KEY);
    assert_eq!(ci["endpoint"], format!("tcp://{}", moved.addr));
    assert_eq!(ci["status"], "ok");
    assert_eq!(ci["observed_by"][0]["agent_id"], "gw-id");
    assert_eq!(
        ci["observed_by"][0]["endpoint"],
        format!("tcp://{}", moved.addr)
    );
    assert!(events_of(&db, "device_replaced").is_empty());

    collector
        .stop(Duration::from_secs(5))
        .expect("collector stops");
}
