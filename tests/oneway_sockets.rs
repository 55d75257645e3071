//! The running agent's sockets, read from the kernel (`/proc/<pid>/fd`, `/proc/<pid>/net/*`):
//! no listening socket ever, and in diode mode one UDP socket, connected to the diode target,
//! that the agent never reads. Runs as any user on loopback.
//!
//! "Never reads" is shown, not assumed: the test sends datagrams to the agent's UDP socket from
//! the diode target's own address (the only source a connected socket accepts), and the
//! kernel's receive queue of that socket stays full while the agent keeps sending; an agent
//! that read its socket would empty it.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outpost_testbed::harness::{self, ChildGuard, LOCALHOST};
use outpost_testbed::mosquitto::{Broker, BrokerSpec};
use outpost_testbed::procnet::{self, ESTABLISHED, ProcessSockets, Proto};
use outpost_testbed::scenario::{AgentSetup, agent_config, devices_from_sim_json};

const WAIT: Duration = Duration::from_secs(20);
/// How long the sockets are watched: several 1 s poll cycles.
const WATCH: Duration = Duration::from_secs(4);

fn bin(name: &str) -> PathBuf {
    harness::binary(name).unwrap_or_else(|e| panic!("{e}"))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn keygen(dir: &Path, agent: &str) -> PathBuf {
    let keys = dir.join("keys");
    let out = Command::new(bin("outpost-agent"))
        .args(["keygen", "--out", path(&keys), "--agent", agent])
        .stdin(Stdio::null())
        .output()
        .expect("run keygen");
    assert!(out.status.success(), "keygen failed: {out:?}");
    keys.join("agent.key")
}

fn start_agent(dir: &Path, config: &Path) -> ChildGuard {
    ChildGuard::spawn(
        "outpost-agent",
        Command::new(bin("outpost-agent"))
            .args(["run", "--config", path(config)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log")).expect("log file")),
    )
    .expect("agent starts")
}

/// The agent's sockets. A TCP socket between `socket()` and `connect()` is in no table yet, so
/// a sample with an unexplained socket is taken again (up to 10 times, 10 ms apart); one that
/// stays unexplained is reported by the caller.
fn settled_sockets(pid: u32) -> ProcessSockets {
    let mut sockets = procnet::process_sockets(pid).expect("read /proc of the agent");
    for _ in 0..10 {
        if sockets.other_inodes.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        sockets = procnet::process_sockets(pid).expect("read /proc of the agent");
    }
    sockets
}

/// Samples the agent's sockets every 50 ms for `watch`, checking `each` on every sample.
fn watch_sockets(pid: u32, watch: Duration, mut each: impl FnMut(&ProcessSockets)) -> usize {
    let until = Instant::now() + watch;
    let mut samples = 0;
    while Instant::now() < until {
        let sockets = settled_sockets(pid);
        each(&sockets);
        samples += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    samples
}

#[test]
fn diode_agent_listens_on_nothing_and_never_reads_its_one_connected_udp_socket() {
    let tmp = harness::temp_dir("oneway-sockets").expect("temp dir");
    let dir = tmp.path();

    let sim_ready = dir.join("sim.json");
    let _sim = ChildGuard::spawn(
        "outpost-sim",
        Command::new(bin("outpost-sim"))
            .args(["--bind", "127.0.9.1", "--ready-file", path(&sim_ready)])
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )
    .expect("simulator starts");
    let plant = harness::wait_ready_json(&sim_ready, WAIT).expect("simulator ready");
    let devices = devices_from_sim_json(&plant).expect("simulator JSON");
    let device_addrs: Vec<SocketAddr> = devices.iter().map(|d| d.addr).collect();

    // The test plays the diode: a plain UDP socket the agent sends to.
    let diode = UdpSocket::bind((LOCALHOST, 0)).expect("bind the diode socket");
    diode
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let target = diode.local_addr().expect("diode address");

    let key_file = keygen(dir, "gw-sockets");
    let state = dir.join("state");
    let setup = AgentSetup::new("gw-sockets", "cell-sockets", &state, &key_file, target);
    let config = dir.join("agent.toml");
    std::fs::write(&config, agent_config(&setup, &devices)).expect("write config");
    let agent = start_agent(dir, &config);
    let pid = agent.pid();

    // The agent sends: its first datagram names its source address.
    let mut buf = vec![0u8; 2048];
    let started = Instant::now();
    let agent_addr = loop {
        if let Ok((_, from)) = diode.recv_from(&mut buf) {
            break from;
        }
        assert!(
            started.elapsed() < WAIT,
            "no datagram from the agent within {WAIT:?}: {}",
            std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
        );
    };

    // Across several poll cycles (Modbus connections opening and closing): never a listening
    // socket, never a socket the tables do not explain, exactly one UDP socket, connected to
    // the diode, and TCP only toward the plant's devices.
    let mut tcp_seen = 0usize;
    let samples = watch_sockets(pid, WATCH, |s| {
        assert!(s.other_inodes.is_empty(), "sockets of another kind: {s:#?}");
        assert!(
            s.named_or_listening_unix().is_empty(),
            "a unix socket another process could use: {s:#?}"
        );
        assert!(s.inet.iter().all(|r| !r.is_listening()), "{s:#?}");
        let udp: Vec<_> = s.inet.iter().filter(|r| r.proto == Proto::Udp).collect();
        assert_eq!(udp.len(), 1, "exactly one UDP socket: {s:#?}");
        assert!(udp[0].is_connected(), "{s:#?}");
        assert_eq!(udp[0].state, ESTABLISHED, "{s:#?}");
        assert_eq!(udp[0].remote, target, "{s:#?}");
        assert_eq!(udp[0].local.port(), agent_addr.port(), "{s:#?}");
        for r in s.inet.iter().filter(|r| r.proto == Proto::Tcp) {
            tcp_seen += 1;
            assert!(
                device_addrs.contains(&r.remote),
                "TCP socket not toward a plant device: {r:?}"
            );
        }
    });
    eprintln!(
        "{samples} samples of the agent's sockets over {WATCH:?}: no listener, one connected \
         UDP socket, {tcp_seen} sightings of Modbus TCP connections to the plant"
    );

    // Datagrams from the diode's own address are queued for the agent's socket …
    let inode_of = |port: u16| {
        procnet::socket_tables(pid)
            .expect("read /proc")
            .into_iter()
            .find(|r| r.proto == Proto::Udp && r.local.port() == port)
            .expect("the agent's UDP socket")
    };
    let empty = inode_of(agent_addr.port());
    assert_eq!(empty.rx_queue, 0, "{empty:?}");
    for i in 0..5 {
        diode
            .send_to(format!("return path attempt {i}").as_bytes(), agent_addr)
            .expect("send to the agent");
    }
    // … and a datagram from anyone else is not delivered to it at all (connected socket).
    let stranger = UdpSocket::bind((LOCALHOST, 0)).expect("bind");
    stranger
        .send_to(b"from a stranger", agent_addr)
        .expect("send");

    let queued = harness::wait_for(WAIT, || {
        let r = inode_of(agent_addr.port());
        (r.rx_queue > 0).then_some(r)
    })
    .expect("the datagrams reached the agent's receive queue");
    // Several heartbeat/poll cycles later the queue is untouched while the agent kept sending.
    let mut sent_meanwhile = 0usize;
    let until = Instant::now() + WATCH;
    while Instant::now() < until {
        if diode.recv_from(&mut buf).is_ok() {
            sent_meanwhile += 1;
        }
    }
    let later = inode_of(agent_addr.port());
    assert!(sent_meanwhile > 0, "the agent stopped sending");
    assert_eq!(
        later.rx_queue, queued.rx_queue,
        "the agent's receive queue changed: it read from its socket ({queued:?} → {later:?})"
    );
    eprintln!(
        "receive queue {} bytes, unread after {WATCH:?} while the agent sent {sent_meanwhile} datagrams",
        later.rx_queue
    );
}

#[test]
fn mqtt_agent_holds_exactly_one_outbound_tcp_connection_and_nothing_else() {
    let tmp = harness::temp_dir("oneway-mqtt").expect("temp dir");
    let dir = tmp.path();
    let broker = Broker::start_new(&dir.join("broker"), &BrokerSpec::default())
        .unwrap_or_else(|e| panic!("mosquitto: {e}"));

    let key_file = keygen(dir, "gw-mqtt-sockets");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "agent_id = \"gw-mqtt-sockets\"\nzone = \"cell-m\"\ndevices = []\nstate_dir = {:?}\n\
             key_file = {:?}\npoll_interval = \"1s\"\n\n[mqtt]\nurl = {:?}\n",
            path(&dir.join("state")),
            path(&key_file),
            broker.url(),
        ),
    )
    .expect("write config");
    let agent = start_agent(dir, &config);
    let pid = agent.pid();

    let connected = harness::wait_for(WAIT, || {
        let s = procnet::process_sockets(pid).ok()?;
        s.inet
            .iter()
            .any(|r| r.remote == broker.addr() && r.state == ESTABLISHED)
            .then_some(())
    });
    assert!(
        connected.is_some(),
        "the agent never connected to the broker: {}",
        std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
    );
    let samples = watch_sockets(pid, WATCH, |s| {
        assert!(s.other_inodes.is_empty(), "sockets of another kind: {s:#?}");
        assert!(
            s.named_or_listening_unix().is_empty(),
            "a unix socket another process could use: {s:#?}"
        );
        assert_eq!(s.inet.len(), 1, "one socket only: {s:#?}");
        let r = &s.inet[0];
        assert_eq!(r.proto, Proto::Tcp, "{s:#?}");
        assert!(!r.is_listening(), "{s:#?}");
        assert_eq!(r.remote, broker.addr(), "{s:#?}");
    });
    eprintln!("{samples} samples: one outbound TCP connection to the broker, nothing else");
}
