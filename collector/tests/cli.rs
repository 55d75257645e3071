//! The `outpost-collector` binary as a user runs it: enroll, serve (real process, real UDP,
//! SIGTERM), every listing in text and JSON, and the error messages.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Fixture, plc, plc_key};
use outpost_proto::frame;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_outpost-collector");

/// Runs the binary to completion, bounded: a command that should return but does not (a
/// `serve` that should have refused to start, say) is killed by its PID after 60 s and fails
/// the test instead of hanging it.
fn run(args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run outpost-collector");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("wait for outpost-collector"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{args:?} did not finish within 60 s (killed PID {pid})");
        }
    }
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(what: &str, db: &Path) -> Value {
    let text = ok(&[what, "--db", db.to_str().unwrap(), "--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what} --json: {e}\n{text}"))
}

/// Kills the child on drop so a failing test never leaves a server behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn enroll_takes_the_agent_from_the_key_file_or_the_flag() {
    let f = Fixture::new();
    let db = f.dir.path().join("cli.sqlite");
    let db_s = db.to_str().unwrap();
    let named = f.dir.path().join("named.pub");
    std::fs::write(&named, f.key.public_key().to_line(Some(&f.agent))).unwrap();
    let out = ok(&[
        "enroll",
        "--db",
        db_s,
        "--zone",
        "cell-1",
        "--zone",
        "cell-2",
        "--key",
        named.to_str().unwrap(),
    ]);
    assert!(out.contains("enrolled key"), "{out}");
    assert!(out.contains("agent gw-1"), "{out}");
    assert!(out.contains("cell-1, cell-2"), "{out}");
    // Again: nothing changes, and it says so.
    let out = ok(&[
        "enroll",
        "--db",
        db_s,
        "--zone",
        "cell-1",
        "--key",
        named.to_str().unwrap(),
    ]);
    assert!(out.contains("nothing changed"), "{out}");

    let (other, _) = outpost_proto::SigningKey::generate().unwrap();
    let anonymous = f.dir.path().join("anonymous.pub");
    std::fs::write(&anonymous, other.public_key().to_line(None)).unwrap();
    let err = fails(&[
        "enroll",
        "--db",
        db_s,
        "--zone",
        "cell-1",
        "--key",
        anonymous.to_str().unwrap(),
    ]);
    assert!(
        err.contains("anonymous.pub does not name an agent"),
        "{err}"
    );
    assert!(err.contains("--agent"), "{err}");
    ok(&[
        "enroll",
        "--db",
        db_s,
        "--zone",
        "cell-1",
        "--key",
        anonymous.to_str().unwrap(),
        "--agent",
        "gw-9",
    ]);
    // The first key is gw-1's: it cannot also be gw-2's.
    let err = fails(&[
        "enroll",
        "--db",
        db_s,
        "--zone",
        "cell-1",
        "--key",
        named.to_str().unwrap(),
        "--agent",
        "gw-2",
    ]);
    assert!(
        err.contains("names agent gw-1 but --agent says gw-2"),
        "{err}"
    );

    let agents = json("agents", &db);
    assert_eq!(agents["schema"], "outpost.agents.v1");
    let ids: Vec<&str> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gw-1", "gw-9"]);
    assert_eq!(
        agents["agents"][0]["keys"][0]["zones"],
        serde_json::json!(["cell-1", "cell-2"])
    );
    assert_eq!(agents["agents"][0]["last_seq"], Value::Null);
}

#[test]
fn errors_name_the_file_and_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sqlite");
    let err = fails(&["assets", "--db", missing.to_str().unwrap()]);
    assert!(err.contains("missing.sqlite"), "{err}");
    assert!(
        err.contains("run `outpost-collector enroll` first"),
        "{err}"
    );
    assert!(!missing.exists(), "a query must not create the CMDB");

    let err = fails(&[
        "enroll",
        "--db",
        missing.to_str().unwrap(),
        "--zone",
        "z",
        "--key",
        dir.path().join("nope.pub").to_str().unwrap(),
    ]);
    assert!(err.contains("nope.pub"), "{err}");
    assert!(err.contains("outpost-agent keygen"), "{err}");

    let bad = dir.path().join("bad.pub");
    std::fs::write(&bad, "ssh-ed25519 AAAA me@host\n").unwrap();
    let err = fails(&[
        "enroll",
        "--db",
        missing.to_str().unwrap(),
        "--zone",
        "z",
        "--key",
        bad.to_str().unwrap(),
    ]);
    assert!(err.contains("bad.pub"), "{err}");
    assert!(err.contains("outpost-ed25519"), "{err}");

    let err = fails(&[
        "serve",
        "--db",
        missing.to_str().unwrap(),
        "--diode-listen",
        "127.0.0.1:0",
    ]);
    assert!(
        err.contains("run `outpost-collector enroll` first"),
        "{err}"
    );
}

#[test]
fn serve_process_applies_envelopes_and_stops_cleanly_on_sigterm() {
    let mut f = Fixture::new();
    let db = f.db.clone();
    let db_s = db.to_str().unwrap().to_owned();
    let ready = f.dir.path().join("ready");
    let child = Command::new(BIN)
        .args([
            "serve",
            "--db",
            &db_s,
            "--diode-listen",
            "127.0.0.1:0",
            "--ready-file",
        ])
        .arg(&ready)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr: SocketAddr = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            break text.trim().parse().unwrap();
        }
        assert!(
            server.0.try_wait().unwrap().is_none(),
            "collector exited early"
        );
        assert!(Instant::now() < deadline, "no ready file");
        std::thread::sleep(Duration::from_millis(20));
    };

    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let assets: Vec<_> = (0..30).map(|i| plc(i, vec![i as u16; 20])).collect();
    let wire = f.seal(&f.summary(assets));
    for part in frame::fragment(7, &wire).unwrap() {
        sender.send_to(&part, addr).unwrap();
    }
    sender
        .send_to(b"this is not an Outpost diode datagram at all", addr)
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = json("stats", &db);
        if stats["counters"]["envelopes_accepted"] == 1
            && stats["counters"]["datagrams_rejected"] == 1
        {
            break;
        }
        assert!(Instant::now() < deadline, "not applied: {stats:#}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // SIGTERM → exit status 0.
    let pid = i32::try_from(server.0.id()).unwrap();
    // SAFETY: kill(2) on the pid of the child this test spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "collector ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    let mut log = String::new();
    if let Some(mut stderr) = server.0.stderr.take() {
        use std::io::Read as _;
        stderr.read_to_string(&mut log).unwrap();
    }
    assert!(log.contains("collector listening"), "{log}");
    assert!(log.contains("refused datagram"), "{log}");
    assert!(log.contains("SIGTERM"), "{log}");

    // Every listing, as text and as JSON.
    let assets = json("assets", &db);
    assert_eq!(assets["schema"], "outpost.assets.v2");
    assert!(assets["generated_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(assets["assets"].as_array().unwrap().len(), 30);
    let first = assets["assets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "plc-0")
        .unwrap();
    assert_eq!(first["ci_key"], plc_key(0));
    assert_eq!(first["blocks"][0]["values"].as_array().unwrap().len(), 20);
    assert_eq!(first["last_envelope_seq"], 1);

    let events = json("events", &db);
    assert_eq!(events["schema"], "outpost.events.v1");
    assert_eq!(events["events"][0]["kind"], "agent_first_seen");
    let history = json("history", &db);
    assert_eq!(history["schema"], "outpost.history.v1");
    let one = ok(&["history", "--db", &db_s, "--json", "--asset", &plc_key(3)]);
    let one: Value = serde_json::from_str(&one).unwrap();
    let rows = one["history"].as_array().unwrap();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|h| h["asset"] == plc_key(3).as_str()));
    let err = fails(&["history", "--db", &db_s, "--asset", "zone/x/modbus/none"]);
    assert!(err.contains("no asset with CI key"), "{err}");

    let quarantine = json("quarantine", &db);
    assert_eq!(quarantine["schema"], "outpost.quarantine.v1");
    assert_eq!(quarantine["quarantine"][0]["stage"], "datagram");
    assert_eq!(quarantine["quarantine"][0]["reason"], "bad_magic");
    let stats = json("stats", &db);
    assert_eq!(stats["schema"], "outpost.stats.v1");
    assert_eq!(stats["totals"]["assets"], 30);

    let table = ok(&["assets", "--db", &db_s]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("plc-0"), "{table}");
    assert!(table.trim_end().ends_with("30 assets"), "{table}");
    for what in ["agents", "events", "history", "quarantine", "stats"] {
        let text = ok(&[what, "--db", &db_s]);
        assert!(!text.is_empty(), "{what}");
    }
    let newest = ok(&["events", "--db", &db_s, "--json", "--limit", "2"]);
    let newest: Value = serde_json::from_str(&newest).unwrap();
    assert_eq!(newest["events"].as_array().unwrap().len(), 2);
}
