//! Whole cycles: real Modbus devices on 127.0.0.1, a real UDP receiver standing in for the
//! diode, envelopes reassembled and verified with the agent's public key.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Behaviour, Device, closed_port, start};
use outpost_agent::{Agent, AgentError, Config, keyfile};
use outpost_proto::chain::{SequenceVerdict, judge};
use outpost_proto::envelope;
use outpost_proto::model::{Body, IdentMethod, PollStatus, Summary};
use outpost_proto::reassembly::{Reassembler, ReassemblyLimits};
use outpost_proto::{PublicKey, Verified};

struct Setup {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    rx: UdpSocket,
    public: PublicKey,
}

fn setup(devices_toml: &str, extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    keyfile::generate(&dir.path().join("keys"), None).unwrap();
    let public_text = std::fs::read_to_string(dir.path().join("keys/agent.pub")).unwrap();
    let (public, _) = PublicKey::parse_file(&public_text).unwrap();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let text = format!(
        r#"
agent_id = "gw-test"
zone = "cell-1"
state_dir = "state"
key_file = "keys/agent.key"
poll_interval = "1s"
{extra}
[diode]
target = "{}"
max_datagrams_per_sec = 50000

[modbus]
connect_timeout = "500ms"
request_timeout = "300ms"
min_request_gap = "2ms"

{devices_toml}
"#,
        rx.local_addr().unwrap()
    );
    let config_path = dir.path().join("agent.toml");
    std::fs::write(&config_path, text).unwrap();
    Setup {
        dir,
        config_path,
        rx,
        public,
    }
}

fn device_toml(name: &str, addr: std::net::SocketAddr, with_block: bool) -> String {
    let mut t = format!("[[devices]]\nname = \"{name}\"\naddress = \"{addr}\"\n");
    if with_block {
        t.push_str("[[devices.blocks]]\nname = \"setpoints\"\nkind = \"holding\"\nstart = 100\ncount = 8\n");
    }
    t
}

/// Receives `datagrams` datagrams and reassembles them into one envelope, verified.
fn receive(rx: &UdpSocket, datagrams: usize, key: &PublicKey) -> (Verified, Summary) {
    let mut r = Reassembler::new(ReassemblyLimits::default());
    let mut buf = [0u8; 2048];
    let mut message = None;
    for _ in 0..datagrams {
        let (n, from) = rx.recv_from(&mut buf).unwrap();
        if let Some(m) = r.push(from, &buf[..n], 0).unwrap().pop() {
            message = Some(m);
        }
    }
    let wire = message.expect("a whole envelope");
    let verified = envelope::parse(&wire).unwrap().verify(key).unwrap();
    let Body::Summary(summary) = verified.body().unwrap() else {
        panic!("a cycle sends a summary");
    };
    (verified, summary)
}

fn load(path: &Path) -> Config {
    Config::load(path).unwrap()
}

#[tokio::test]
async fn cycles_poll_seal_persist_and_send_a_chain() {
    let full = start(Device::new(Behaviour::Identity)).await;
    let legacy = start(Device::new(Behaviour::NoFc43)).await;
    let mute: Vec<_> = [
        start(Device::new(Behaviour::Silent)).await,
        start(Device::new(Behaviour::Silent)).await,
        start(Device::new(Behaviour::Silent)).await,
    ]
    .into();
    let mut devices = device_toml("mixer-plc", full.addr, true);
    devices += &device_toml("legacy-plc", legacy.addr, true);
    for (i, m) in mute.iter().enumerate() {
        devices += &device_toml(&format!("mute-{i}"), m.addr, true);
    }
    devices += &device_toml("gone", closed_port(), false);
    let s = setup(&devices, "");

    let mut agent = Agent::new(load(&s.config_path)).unwrap();
    // No chain tip yet: a declared new chain (zero prev_hash) starting at the clock, so that
    // an agent that lost its state never reuses a sequence number.
    let base = agent.tip().seq;
    assert!(
        base > 1_700_000_000_000,
        "new chain starts at the clock: {base}"
    );
    let started = Instant::now();
    let first = agent.run_cycle().await.unwrap();
    let took = started.elapsed();
    assert_eq!(first.seq, base + 1);
    assert_eq!(first.devices, 6);
    assert_eq!((first.ok, first.partial, first.unreachable), (2, 0, 4));
    assert!(first.datagrams >= 1);
    // Each silent device costs about 3 request timeouts (0.9 s); polled concurrently, three of
    // them do not add up.
    assert!(took < Duration::from_millis(2500), "{took:?}");

    let (v1, summary) = receive(&s.rx, first.datagrams, &s.public);
    assert_eq!(v1.header.seq, base + 1);
    assert_eq!(v1.header.prev_hash, outpost_proto::Digest::ZERO);
    assert_eq!(v1.header.agent.as_str(), "gw-test");
    assert_eq!(judge(None, &v1.header), SequenceVerdict::First);
    assert_eq!(v1.tip(), agent.tip());
    let names: Vec<&str> = summary.assets.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "mixer-plc",
            "legacy-plc",
            "mute-0",
            "mute-1",
            "mute-2",
            "gone"
        ]
    );
    let mixer = &summary.assets[0];
    assert_eq!(mixer.status, PollStatus::Ok);
    assert_eq!(
        mixer.identity.vendor_name.as_deref(),
        Some("ACME Automation")
    );
    assert_eq!(mixer.blocks[0].values, (1100..1108).collect::<Vec<u16>>());
    assert_eq!(
        summary.assets[1].identity.method,
        IdentMethod::ReportServerId
    );
    assert!(
        matches!(summary.assets[5].status, PollStatus::Unreachable(ref why) if why.contains("refused"))
    );
    let gw = summary.gateway.as_ref().expect("gateway facts");
    assert!(gw.cpu_count >= 1);
    assert!(summary.finished_ms >= summary.started_ms);

    let second = agent.run_cycle().await.unwrap();
    assert_eq!(second.seq, base + 2);
    let (v2, _) = receive(&s.rx, second.datagrams, &s.public);
    assert_eq!(v2.header.prev_hash, v1.hash);
    assert_eq!(judge(Some(&v1.tip()), &v2.header), SequenceVerdict::Next);

    // A second agent on the same state directory is refused while the first runs.
    match Agent::new(load(&s.config_path)) {
        Err(AgentError::State(e)) => assert!(e.to_string().contains("another outpost-agent")),
        other => panic!("expected a lock error, got {other:?}"),
    }

    // Restart: the chain continues from the persisted tip.
    drop(agent);
    let mut agent = Agent::new(load(&s.config_path)).unwrap();
    assert_eq!(agent.tip(), v2.tip());
    let third = agent.run_cycle().await.unwrap();
    let (v3, _) = receive(&s.rx, third.datagrams, &s.public);
    assert_eq!(v3.header.seq, base + 3);
    assert_eq!(judge(Some(&v2.tip()), &v3.header), SequenceVerdict::Next);
    drop(s.dir);
}

#[tokio::test]
async fn gateway_only_agent_sends_host_facts() {
    let s = setup("", "devices = []");
    let mut agent = Agent::new(load(&s.config_path)).unwrap();
    let base = agent.tip().seq;
    let report = agent.run_cycle().await.unwrap();
    assert_eq!((report.seq, report.devices), (base + 1, 0));
    let (_, summary) = receive(&s.rx, report.datagrams, &s.public);
    assert!(summary.assets.is_empty());
    assert!(summary.gateway.is_some());
}

#[tokio::test]
async fn run_cycles_on_schedule_until_shutdown() {
    let s = setup("", "devices = []");
    let mut agent = Agent::new(load(&s.config_path)).unwrap();
    let base = agent.tip().seq;
    let started = Instant::now();
    agent
        .run(tokio::time::sleep(Duration::from_millis(1500)))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Cycles at 0 s and 1 s.
    assert_eq!(agent.tip().seq, base + 2);
}

#[test]
fn refuses_to_start_on_bad_key_or_corrupt_state() {
    use std::os::unix::fs::PermissionsExt as _;
    let s = setup("", "devices = []");
    let key = s.dir.path().join("keys/agent.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Agent::new(load(&s.config_path)).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    std::fs::create_dir_all(s.dir.path().join("state")).unwrap();
    std::fs::write(s.dir.path().join("state/chain-tip.toml"), "seq = 3\n").unwrap();
    let err = Agent::new(load(&s.config_path)).unwrap_err().to_string();
    assert!(err.contains("chain state is corrupt"), "{err}");
}

#[tokio::test]
async fn snapshot_every_n_cycles_and_no_change_set_while_nothing_changes() {
    let full = start(Device::new(Behaviour::Identity)).await;
    let devices = device_toml("mixer-plc", full.addr, true);
    let s = setup(
        &devices,
        "[changes]\nevents = true\ngateway = false\nsnapshot_every = 3\n",
    );
    let mut agent = Agent::new(load(&s.config_path)).unwrap();
    let base = agent.tip().seq;
    let mut snapshots = Vec::new();
    for _ in 0..4 {
        let r = agent.run_cycle().await.unwrap();
        assert_eq!(r.changes, 0, "nothing changed: no change set");
        snapshots.push(r.snapshot);
    }
    assert_eq!(snapshots, [true, false, false, true]);
    assert_eq!(
        agent.tip().seq,
        base + 2,
        "only the two snapshots were sealed"
    );
    assert!(s.dir.path().join("state/observed-state.cbor").is_file());
}
