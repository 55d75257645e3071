//! The `outpost-agent` binary as an operator runs it: real processes, real UDP on 127.0.0.1.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use outpost_proto::reassembly::{Reassembler, ReassemblyLimits};
use outpost_proto::{PublicKey, envelope};

const BIN: &str = env!("CARGO_BIN_EXE_outpost-agent");

fn agent(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run outpost-agent")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_config(dir: &Path, target: std::net::SocketAddr, devices: &str) -> std::path::PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "agent_id = \"gw-cli\"\nzone = \"cell-9\"\nstate_dir = \"state\"\nkey_file = \"keys/agent.key\"\npoll_interval = \"1s\"\n{devices}\n[diode]\ntarget = \"{target}\"\n[modbus]\nconnect_timeout = \"300ms\"\nrequest_timeout = \"200ms\"\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn keygen_then_run_once_sends_a_verifiable_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let out = agent(&[
        "keygen",
        "--out",
        keys.to_str().unwrap(),
        "--agent",
        "gw-cli",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("key id:") && stdout.contains("agent.pub"),
        "{stdout}"
    );
    let again = agent(&["keygen", "--out", keys.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("refusing to overwrite"));

    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // One device that is not there: reported inside the summary, not a failure.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let devices = format!("[[devices]]\nname = \"gone\"\naddress = \"{closed}\"\n");
    let config = write_config(dir.path(), rx.local_addr().unwrap(), "");
    let text_cfg = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text_cfg}\n{devices}")).unwrap();

    let check = agent(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(text(&check.stdout).contains(&format!("device gone at {closed} unit ids [1]")));

    let run = agent(&["run", "--config", config.to_str().unwrap(), "--once"]);
    let stderr = text(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(
        stderr.contains("starting a new chain at sequence"),
        "{stderr}"
    );
    assert!(stderr.contains("cycle "), "{stderr}");

    let (public, named) =
        PublicKey::parse_file(&std::fs::read_to_string(keys.join("agent.pub")).unwrap()).unwrap();
    assert_eq!(named.as_ref().map(|a| a.as_str()), Some("gw-cli"));
    let mut r = Reassembler::new(ReassemblyLimits::default());
    let mut buf = [0u8; 2048];
    let wire = loop {
        let (n, from) = rx.recv_from(&mut buf).unwrap();
        if let Some(m) = r.push(from, &buf[..n], 0).unwrap().pop() {
            break m;
        }
    };
    let v = envelope::parse(&wire).unwrap().verify(&public).unwrap();
    // A first run has no chain tip: it declares a new chain (zero prev_hash) at the clock.
    assert!(v.header.seq > 1_700_000_000_000, "{}", v.header.seq);
    assert_eq!(v.header.prev_hash, outpost_proto::Digest::ZERO);
    assert_eq!(v.header.zone.as_str(), "cell-9");
}

#[test]
fn failures_exit_nonzero_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let target = "127.0.0.1:9".parse().unwrap();

    let config = write_config(dir.path(), target, "devices = []\npoll_intervall = \"5s\"");
    let out = agent(&["run", "--config", config.to_str().unwrap(), "--once"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("agent.toml") && err.contains("poll_intervall"),
        "{err}"
    );

    let config = write_config(dir.path(), target, "devices = []");
    let out = agent(&["run", "--config", config.to_str().unwrap(), "--once"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("keys/agent.key: cannot open private key"),
        "{err}"
    );

    let out = agent(&["check-config", "--config", "/nonexistent/agent.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/agent.toml: cannot read config"));
}

#[test]
fn run_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    assert!(
        agent(&["keygen", "--out", keys.to_str().unwrap()])
            .status
            .success()
    );
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let config = write_config(dir.path(), rx.local_addr().unwrap(), "devices = []");
    let mut child = Command::new(BIN)
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first cycle runs at once: wait for its first datagram.
    let mut buf = [0u8; 2048];
    let got = rx.recv_from(&mut buf);
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: signalling the child this test started, by its pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("agent did not stop within 5 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(got.is_ok(), "no datagram from the running agent");
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    use std::io::Read as _;
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
}

#[test]
fn gateway_prints_the_self_inventory_without_a_config() {
    let out = agent(&["gateway"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for section in [
        "hostname ",
        "kernel ",
        "interfaces (",
        "listening (",
        "executables (",
    ] {
        assert!(stdout.contains(section), "{section:?} missing:\n{stdout}");
    }
    let out = agent(&["gateway", "--config", "/nonexistent/agent.toml", "--json"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/nonexistent/agent.toml"),
        "{}",
        text(&out.stderr)
    );
}
