//! Proof of one-way, in real network namespaces (see `testbed::netns` for the topology).
//!
//! The agent runs alone in a namespace whose firewall drops every frame arriving on the
//! conduit interface (an nftables `netdev` ingress hook, policy drop: established, related, ARP,
//! ICMP — everything) and every inbound packet other than replies from the plant on
//! connections the agent opened. The plant simulator (real Modbus TCP on port 502) is in its
//! own namespace on the other side; the collector is in the IT namespace.
//!
//! What it proves: nothing sent from the IT side reaches the agent's namespace — TCP probes to
//! any port and UDP aimed at the agent's own sending port get no answer at all (not even a
//! reset or an ICMP error) and are counted as dropped at the conduit — while delivery over the
//! diode still works end to end: the collector's CMDB holds every device of the plant, and keeps
//! receiving after the attack. A control probe before the firewall is loaded gets a TCP reset,
//! so the probe can tell reachable from unreachable.
//!
//! Needs root, `ip` and `nft`. Without them it prints `SKIPPED` with the reason and passes,
//! unless `OUTPOST_REQUIRE_NETNS=1` is set, which turns the skip into a failure.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use outpost_testbed::harness::{self, ChildGuard};
use outpost_testbed::netns::{
    AGENT_CONDUIT_SIDE, COLLECTOR, OneWayLab, PLANT_FIRST_DEVICE, lab_unavailable,
};
use outpost_testbed::procnet::{self, Proto};
use outpost_testbed::scenario::{AgentSetup, agent_config, devices_from_sim_json};
use outpost_testbed::sim::default_plant;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
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

fn collector_json(what: &str, db: &Path) -> Value {
    let text = run_ok("outpost-collector", &[what, "--db", path(db), "--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what} --json is not JSON ({e})"))
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).expect("log file")
}

fn logs(dir: &Path) -> String {
    ["agent.log", "collector.log", "sim.log"]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("--- {f} (last lines)\n{}", tail.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// How a probe from the IT side ended.
#[derive(Debug, PartialEq, Eq)]
enum ProbeOutcome {
    /// Nothing came back within the timeout: the packets vanished.
    Silence,
    /// A TCP reset or an ICMP error came back: the packets reached the agent's namespace.
    Refused,
    /// The connection was accepted.
    Connected,
    Other(String),
}

fn tcp_probe(target: SocketAddr) -> ProbeOutcome {
    match TcpStream::connect_timeout(&target, PROBE_TIMEOUT) {
        Ok(_) => ProbeOutcome::Connected,
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            ProbeOutcome::Silence
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => ProbeOutcome::Refused,
        Err(e) => ProbeOutcome::Other(e.to_string()),
    }
}

/// Sends `count` datagrams from the IT side to `target` on a connected socket, then waits for
/// anything at all: an answer, or the ICMP port-unreachable error the kernel reports as
/// `ECONNREFUSED`.
fn udp_probe(target: SocketAddr, count: usize) -> ProbeOutcome {
    let sock = match UdpSocket::bind(SocketAddr::new(IpAddr::V4(COLLECTOR), 0)) {
        Ok(s) => s,
        Err(e) => return ProbeOutcome::Other(format!("bind: {e}")),
    };
    if let Err(e) = sock
        .connect(target)
        .and_then(|()| sock.set_read_timeout(Some(PROBE_TIMEOUT)))
    {
        return ProbeOutcome::Other(format!("connect: {e}"));
    }
    for i in 0..count {
        match sock.send(format!("hostile datagram {i}").as_bytes()) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return ProbeOutcome::Refused,
            Err(e) => return ProbeOutcome::Other(format!("send: {e}")),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut buf = [0u8; 64];
    match sock.recv(&mut buf) {
        Ok(_) => ProbeOutcome::Connected,
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            ProbeOutcome::Silence
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => ProbeOutcome::Refused,
        Err(e) => ProbeOutcome::Other(e.to_string()),
    }
}

fn accepted_envelopes(db: &Path) -> u64 {
    collector_json("agents", db)["agents"][0]["envelopes_accepted"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn agent_sealed_in_its_namespace_delivers_and_nothing_from_the_it_side_reaches_it() {
    if let Some(why) = lab_unavailable() {
        let msg = format!(
            "SKIPPED oneway_netns: {why}. Run as root with iproute2 and nftables to prove one-way."
        );
        assert!(
            std::env::var_os("OUTPOST_REQUIRE_NETNS").is_none(),
            "{msg} (OUTPOST_REQUIRE_NETNS is set, so this is a failure)"
        );
        eprintln!("{msg}");
        return;
    }
    let tmp = harness::temp_dir("oneway-netns").expect("temp dir");
    let dir = tmp.path();
    // Declared before every process: dropped last, so the namespaces are deleted (by name)
    // after the processes inside them were stopped, also when an assertion fails.
    let lab = OneWayLab::build("n").expect("namespaces, veth pairs, addresses, routes");
    let agent_conduit = |port| SocketAddr::new(IpAddr::V4(AGENT_CONDUIT_SIDE), port);

    // Control: without the firewall the agent's namespace answers a TCP probe with a reset,
    // so the probe below can tell the difference.
    let control = lab
        .it
        .run_inside(move || tcp_probe(agent_conduit(9)))
        .expect("probe thread");
    assert_eq!(
        control,
        ProbeOutcome::Refused,
        "control probe before the firewall: the agent namespace should answer with a reset"
    );

    lab.seal_agent().expect("nftables rules load");
    let ruleset = lab.ruleset().expect("nft list ruleset");
    eprintln!("agent namespace firewall:\n{ruleset}");

    // The plant: real Modbus TCP on port 502 in the plant namespace.
    let sim_ready = dir.join("sim.json");
    let _sim = ChildGuard::spawn(
        "outpost-sim",
        lab.plant
            .command(bin("outpost-sim"))
            .args(["--bind", &PLANT_FIRST_DEVICE.to_string(), "--port", "502"])
            .args(["--ready-file", path(&sim_ready)])
            .stdout(Stdio::null())
            .stderr(log_file(dir, "sim.log")),
    )
    .expect("simulator starts");
    let plant = harness::wait_ready_json(&sim_ready, WAIT).expect("simulator ready");
    let devices = devices_from_sim_json(&plant).expect("simulator JSON");
    assert_eq!(devices.len(), default_plant().len());

    // Key, enrolment, and the collector in the IT namespace.
    let keys = dir.join("keys");
    run_ok(
        "outpost-agent",
        &["keygen", "--out", path(&keys), "--agent", "gw-oneway"],
    );
    let db = dir.join("cmdb.sqlite");
    run_ok(
        "outpost-collector",
        &[
            "enroll",
            "--db",
            path(&db),
            "--zone",
            "cell-oneway",
            "--key",
            path(&keys.join("agent.pub")),
        ],
    );
    let target = OneWayLab::collector_addr(COLLECTOR_PORT);
    let collector_ready = dir.join("collector.ready");
    let _collector = ChildGuard::spawn(
        "outpost-collector",
        lab.it
            .command(bin("outpost-collector"))
            .args([
                "serve",
                "--db",
                path(&db),
                "--diode-listen",
                &target.to_string(),
            ])
            .args(["--ready-file", path(&collector_ready)])
            .stdout(Stdio::null())
            .stderr(log_file(dir, "collector.log")),
    )
    .expect("collector starts");
    harness::wait_ready_file(&collector_ready, WAIT).expect("collector ready");

    // The agent, sealed in its namespace, polling every second.
    let state = dir.join("state");
    let key_file = keys.join("agent.key");
    let setup = AgentSetup::new("gw-oneway", "cell-oneway", &state, &key_file, target);
    let config = dir.join("agent.toml");
    std::fs::write(&config, agent_config(&setup, &devices)).expect("write config");
    let agent = ChildGuard::spawn(
        "outpost-agent",
        lab.agent
            .command(bin("outpost-agent"))
            .args(["run", "--config", path(&config)])
            .stdout(Stdio::null())
            .stderr(log_file(dir, "agent.log")),
    )
    .expect("agent starts");
    let pid = agent.pid();
    // `ip netns exec` execs the program, so this PID is the agent itself.
    let exe = harness::wait_for(WAIT, || {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .filter(|exe| exe.ends_with("outpost-agent"))
    });
    assert!(exe.is_some(), "pid {pid} never became outpost-agent");

    // Delivery over the diode: every device of the plant reaches the CMDB.
    let expected_units: usize = default_plant().iter().map(|d| d.unit_ids.len()).sum();
    let delivered = harness::wait_for(WAIT, || {
        let assets = collector_json("assets", &db);
        (assets["assets"].as_array().map_or(0, Vec::len) == expected_units).then_some(assets)
    });
    let assets = delivered.unwrap_or_else(|| {
        panic!(
            "the CMDB never held all {expected_units} devices\n{}",
            logs(dir)
        )
    });
    for row in assets["assets"].as_array().expect("assets") {
        assert_eq!(row["agent_id"], "gw-oneway");
        assert_eq!(row["status"], "ok", "{row:#}");
        let endpoint = row["endpoint"].as_str().unwrap_or_default();
        assert!(endpoint.starts_with("tcp://10.203.1."), "{row:#}");
    }

    // The agent's sockets, seen from its own namespace: nothing listens; one UDP socket,
    // connected to the diode target; TCP only toward the plant's port 502.
    let sockets = procnet::process_sockets(pid).expect("read /proc");
    assert!(
        sockets.inet.iter().all(|s| !s.is_listening()),
        "{sockets:#?}"
    );
    let udp: Vec<_> = sockets
        .inet
        .iter()
        .filter(|s| s.proto == Proto::Udp)
        .collect();
    assert_eq!(udp.len(), 1, "exactly one UDP socket: {sockets:#?}");
    assert_eq!(udp[0].remote, target, "{sockets:#?}");
    let udp_port = udp[0].local.port();
    let udp_inode = udp[0].inode;
    for s in sockets.inet.iter().filter(|s| s.proto == Proto::Tcp) {
        let IpAddr::V4(ip) = s.remote.ip() else {
            panic!("unexpected IPv6 TCP socket {s:?}");
        };
        assert!(
            ip.octets()[..3] == [10, 203, 1] && s.remote.port() == 502,
            "a TCP socket not toward the plant: {s:?}"
        );
    }

    // The attack from the IT side: TCP to well-known ports and to the agent's own UDP port,
    // UDP straight at the agent's sending port. Every probe must meet silence.
    let before = lab.counters().expect("nft counters");
    let accepted_before = accepted_envelopes(&db);
    let probes = lab
        .it
        .run_inside(move || {
            let mut out = Vec::new();
            for port in [22, 502, COLLECTOR_PORT, udp_port] {
                out.push((format!("tcp {port}"), tcp_probe(agent_conduit(port))));
            }
            out.push((
                format!("udp {udp_port} ×5"),
                udp_probe(agent_conduit(udp_port), 5),
            ));
            out
        })
        .expect("probe thread");
    for (what, outcome) in &probes {
        assert_eq!(
            *outcome,
            ProbeOutcome::Silence,
            "probe {what} from the IT side got an answer; firewall:\n{}",
            lab.ruleset().unwrap_or_default()
        );
    }
    let after = lab.counters().expect("nft counters");
    eprintln!("firewall counters before the probes {before:?}, after {after:?}");
    // 4 TCP probes (at least one SYN each) and 5 datagrams, all dropped at the conduit.
    assert!(
        after.conduit_dropped >= before.conduit_dropped + 4 + 5,
        "the probes were not counted as dropped at the conduit: before {before:?}, after {after:?}"
    );
    assert!(
        after.plant_replies > 0,
        "Modbus replies from the plant: {after:?}"
    );

    // Nothing reached the agent's socket, and delivery goes on after the attack.
    let row = procnet::socket_tables(pid)
        .expect("read /proc")
        .into_iter()
        .find(|r| r.inode == udp_inode)
        .expect("the diode socket is still there");
    assert_eq!(
        row.rx_queue, 0,
        "something reached the diode socket: {row:?}"
    );
    assert_eq!(row.drops, Some(0), "{row:?}");
    assert!(
        harness::wait_for(WAIT, || (accepted_envelopes(&db) > accepted_before)
            .then_some(()))
        .is_some(),
        "no envelope accepted after the probes\n{}",
        logs(dir)
    );

    // The proof holds for the agent's whole namespace, not only its conduit interface: a
    // connection attempt from the plant side is dropped too (only replies are accepted).
    let from_plant = lab
        .plant
        .run_inside(|| {
            tcp_probe(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 203, 0, 2)),
                22,
            ))
        })
        .expect("probe thread");
    assert_eq!(from_plant, ProbeOutcome::Silence);
    let last = lab.counters().expect("nft counters");
    assert!(last.input_dropped > after.input_dropped, "{last:?}");
}
