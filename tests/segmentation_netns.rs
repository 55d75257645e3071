//! Segmentation probes across real network namespaces: a "plant" namespace (the agent) and an
//! "IT" namespace (a service that must not be reachable, and the collector) joined by a veth
//! pair. Two runs of `outpost-agent run --once` in the plant namespace:
//!
//! 1. No firewall: the IT service answers the probe (connected), a closed IT port answers with
//!    a reset (refused) → both are `segmentation_violation` alerts.
//! 2. nftables in the plant namespace drops every TCP packet toward the IT subnet (UDP to the
//!    collector, the conduit, still passes): both probes time out → blocked; the violations
//!    clear with `segmentation_restored`, and the rule's counter shows it dropped the probes.
//!
//! Needs root, `ip` and `nft`. Without them it prints `SKIPPED` with the reason and passes,
//! unless `OUTPOST_REQUIRE_NETNS=1` is set, which turns the skip into a failure. Namespaces are
//! named `outpost-ow-<pid>-sg-…` so a killed run's leftovers are removed by the lab's stale
//! cleanup; they are deleted by name when the test ends, also on panic.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use outpost_testbed::harness::{self, ChildGuard};
use outpost_testbed::netns::{Netns, lab_unavailable};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const IT_ADDR: &str = "10.204.0.2";
const IT_SERVICE_PORT: u16 = 8443;
const IT_CLOSED_PORT: u16 = 9;
const COLLECTOR_PORT: u16 = 7000;

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

fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn collector_json(what: &str, db: &Path) -> Value {
    let text = run_ok("outpost-collector", &[what, "--db", path(db), "--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what} --json is not JSON ({e})"))
}

fn alert_kinds(db: &Path) -> Vec<String> {
    collector_json("alerts", db)["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| a["kind"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn logs(dir: &Path) -> String {
    ["agent-1.log", "agent-2.log", "collector.log"]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("--- {f}\n{}", tail.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `outpost-agent run --once` inside `plant`, bounded; its log goes to `dir/<log>`.
fn agent_once(plant: &Netns, config: &Path, dir: &Path, log: &str) {
    let file = std::fs::File::create(dir.join(log)).expect("log file");
    let mut agent = ChildGuard::spawn(
        "outpost-agent",
        plant
            .command(bin("outpost-agent"))
            .args(["run", "--config", path(config), "--once"])
            .stdout(Stdio::null())
            .stderr(file),
    )
    .expect("agent starts");
    let status = agent
        .wait_timeout(WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir)));
    assert!(status.success(), "agent --once failed\n{}", logs(dir));
}

/// The probe state row for `port` on the IT host.
fn state(db: &Path, port: u16) -> Value {
    let target = format!("{IT_ADDR}:{port}");
    collector_json("probes", db)["state"]
        .as_array()
        .expect("state")
        .iter()
        .find(|s| s["target"] == target.as_str())
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn it_reachable_from_the_plant_is_a_violation_and_blocked_is_clean() {
    if let Some(why) = lab_unavailable() {
        let msg = format!(
            "SKIPPED segmentation_netns: {why}. Run as root with iproute2 and nftables to show \
             both probe outcomes."
        );
        assert!(
            std::env::var_os("OUTPOST_REQUIRE_NETNS").is_none(),
            "{msg} (OUTPOST_REQUIRE_NETNS is set, so this is a failure)"
        );
        eprintln!("{msg}");
        return;
    }
    let tmp = harness::temp_dir("segmentation-netns").expect("temp dir");
    let dir = tmp.path();
    // Declared before every process: dropped last, after the processes inside were stopped.
    let pid = std::process::id();
    let plant = Netns::create(&format!("outpost-ow-{pid}-sg-plant")).expect("plant namespace");
    let it = Netns::create(&format!("outpost-ow-{pid}-sg-it")).expect("IT namespace");
    let short = pid % 1_000_000;
    let (plant_if, it_if) = (format!("ow{short}sgp"), format!("ow{short}sgi"));
    sh(
        "ip",
        &[
            "link",
            "add",
            &plant_if,
            "netns",
            plant.name(),
            "type",
            "veth",
            "peer",
            "name",
            &it_if,
            "netns",
            it.name(),
        ],
    );
    for (ns, dev, addr) in [
        (&plant, &plant_if, "10.204.0.1/30"),
        (&it, &it_if, "10.204.0.2/30"),
    ] {
        ns.ip(&["addr", "add", addr, "dev", dev]).expect("address");
        ns.ip(&["link", "set", dev, "up"]).expect("link up");
    }

    // The IT service: a listener created inside the IT namespace (a socket stays in the
    // namespace it was made in).
    let service_addr: SocketAddr = format!("{IT_ADDR}:{IT_SERVICE_PORT}")
        .parse()
        .expect("addr");
    let service = it
        .run_inside(move || TcpListener::bind(service_addr))
        .expect("thread in the IT namespace")
        .expect("IT service listens");

    // Key, enrolment, and the collector in the IT namespace.
    let keys = dir.join("keys");
    run_ok(
        "outpost-agent",
        &["keygen", "--out", path(&keys), "--agent", "gw-seg"],
    );
    let db = dir.join("cmdb.sqlite");
    run_ok(
        "outpost-collector",
        &[
            "enroll",
            "--db",
            path(&db),
            "--zone",
            "cell-seg",
            "--key",
            path(&keys.join("agent.pub")),
        ],
    );
    let collector_ready = dir.join("collector.ready");
    let _collector = ChildGuard::spawn(
        "outpost-collector",
        it.command(bin("outpost-collector"))
            .args(["serve", "--db", path(&db), "--diode-listen"])
            .arg(format!("{IT_ADDR}:{COLLECTOR_PORT}"))
            .args(["--ready-file", path(&collector_ready)])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("collector.log")).expect("log")),
    )
    .expect("collector starts");
    harness::wait_ready_file(&collector_ready, WAIT).expect("collector ready");

    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "agent_id = \"gw-seg\"\nzone = \"cell-seg\"\nstate_dir = {:?}\nkey_file = {:?}\n\
             devices = []\n\n[diode]\ntarget = \"{IT_ADDR}:{COLLECTOR_PORT}\"\n\n\
             [segmentation]\nmust_not_reach = [\"{IT_ADDR}:{IT_SERVICE_PORT}\", \
             \"{IT_ADDR}:{IT_CLOSED_PORT}\"]\nconnect_timeout = \"1s\"\n",
            path(&dir.join("state")),
            path(&keys.join("agent.key")),
        ),
    )
    .expect("write config");

    // Run 1: nothing in the way.
    agent_once(&plant, &config, dir, "agent-1.log");
    let reached = harness::wait_for(WAIT, || {
        let s = state(&db, IT_SERVICE_PORT);
        (!s.is_null()).then_some(s)
    })
    .unwrap_or_else(|| panic!("no probe state arrived\n{}", logs(dir)));
    assert_eq!(reached["outcome"], "connected", "{reached:#}");
    assert_eq!(reached["problem"], true);
    let closed = state(&db, IT_CLOSED_PORT);
    assert_eq!(closed["outcome"], "refused", "{closed:#}");
    assert_eq!(closed["problem"], true);
    assert_eq!(
        alert_kinds(&db),
        ["segmentation_violation", "segmentation_violation"]
    );

    // Run 2: the plant's firewall drops TCP toward IT (the UDP conduit still passes).
    let rules = dir.join("plant.nft");
    std::fs::write(
        &rules,
        "table inet outpost_segmentation {\n  counter it_tcp_dropped {}\n  chain output {\n    \
         type filter hook output priority 0; policy accept;\n    ip daddr 10.204.0.0/30 meta \
         l4proto tcp counter name it_tcp_dropped drop\n  }\n}\n",
    )
    .expect("rules file");
    let loaded = plant
        .command("nft")
        .args(["-f", path(&rules)])
        .output()
        .expect("run nft");
    assert!(
        loaded.status.success(),
        "nft refused the rules: {}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    agent_once(&plant, &config, dir, "agent-2.log");
    let blocked = harness::wait_for(WAIT, || {
        let s = state(&db, IT_SERVICE_PORT);
        (s["outcome"] == "timed_out").then_some(s)
    })
    .unwrap_or_else(|| panic!("the blocked round did not arrive\n{}", logs(dir)));
    assert_eq!(blocked["problem"], false, "{blocked:#}");
    assert_eq!(state(&db, IT_CLOSED_PORT)["outcome"], "timed_out");
    let probes = collector_json("probes", &db);
    assert_eq!(probes["violations"], 0, "{probes:#}");
    let mut kinds = alert_kinds(&db);
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "segmentation_restored",
            "segmentation_restored",
            "segmentation_violation",
            "segmentation_violation"
        ]
    );
    // The rule saw the probes (SYNs and their retransmissions).
    let counter = plant
        .command("nft")
        .args([
            "list",
            "counter",
            "inet",
            "outpost_segmentation",
            "it_tcp_dropped",
        ])
        .output()
        .expect("run nft");
    let text = String::from_utf8_lossy(&counter.stdout);
    let packets: u64 = text
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        packets >= 2,
        "the firewall counted no dropped probes: {text}"
    );
    drop(service);
}
