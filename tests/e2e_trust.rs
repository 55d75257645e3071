//! Key lifecycle, state loss and audit with real processes: `outpost-agent` (rotate-key, run
//! --once) → real UDP → `outpost-collector serve` → a real SQLite file; `key list|revoke` and
//! `audit verify` as an operator runs them; tampering done with the `sqlite3` CLI.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use outpost_proto::chain::ChainTip;
use outpost_proto::envelope::seal;
use outpost_proto::frame::fragment;
use outpost_proto::model::{Body, Heartbeat};
use outpost_proto::{AgentId, Digest, SigningKey, ZoneId};
use outpost_testbed::harness::{self, ChildGuard};
use outpost_testbed::scenario::{AgentSetup, agent_config};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn bin(name: &str) -> PathBuf {
    harness::binary(name).unwrap_or_else(|e| panic!("{e}"))
}

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
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

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn collector_json(args: &[&str], db: &Path) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--db", path(db), "--json"]);
    let text = run_ok("outpost-collector", &all);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{args:?} --json is not JSON ({e}): {text}"))
}

fn start_collector(dir: &Path, db: &Path) -> (ChildGuard, SocketAddr) {
    let ready = dir.join("collector.ready");
    let _ = std::fs::remove_file(&ready);
    let child = ChildGuard::spawn(
        "outpost-collector",
        Command::new(bin("outpost-collector"))
            .args([
                "serve",
                "--db",
                path(db),
                "--diode-listen",
                "127.0.0.1:0",
                "--ready-file",
                path(&ready),
                "--max-clock-skew",
                "5m",
            ])
            .stdin(Stdio::null()),
    )
    .expect("collector starts");
    let addr = harness::wait_ready_file(&ready, WAIT)
        .expect("collector ready")
        .trim()
        .parse()
        .expect("ready file holds an address");
    (child, addr)
}

fn wait_db(what: &str, mut cond: impl FnMut() -> bool) {
    assert!(
        harness::wait_for(WAIT, || cond().then_some(())).is_some(),
        "timed out waiting for {what}"
    );
}

fn counter(db: &Path, name: &str) -> i64 {
    collector_json(&["stats"], db)["counters"][name]
        .as_i64()
        .unwrap_or(0)
}

fn agent_row(db: &Path) -> Value {
    collector_json(&["agents"], db)["agents"][0].clone()
}

fn event_kinds(db: &Path) -> Vec<String> {
    collector_json(&["events"], db)["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .collect()
}

fn quarantine_reasons(db: &Path) -> Vec<String> {
    collector_json(&["quarantine"], db)["quarantine"]
        .as_array()
        .expect("quarantine")
        .iter()
        .filter_map(|q| q["reason"].as_str().map(str::to_owned))
        .collect()
}

/// An agent with no devices (gateway facts only) sending to `listen`.
struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    db: PathBuf,
    key_file: PathBuf,
    config: PathBuf,
}

fn world(prefix: &str) -> World {
    let tmp = harness::temp_dir(prefix).expect("temp dir");
    let dir = tmp.path().to_owned();
    let keys = dir.join("keys");
    run_ok(
        "outpost-agent",
        &["keygen", "--out", path(&keys), "--agent", "gw-t"],
    );
    let db = dir.join("cmdb.sqlite");
    run_ok(
        "outpost-collector",
        &[
            "enroll",
            "--db",
            path(&db),
            "--zone",
            "cell-t",
            "--key",
            path(&keys.join("agent.pub")),
        ],
    );
    World {
        key_file: keys.join("agent.key"),
        config: dir.join("agent.toml"),
        _tmp: tmp,
        dir,
        db,
    }
}

fn write_config(w: &World, listen: SocketAddr) {
    let state = w.dir.join("state");
    let setup = AgentSetup::new("gw-t", "cell-t", &state, &w.key_file, listen);
    let config = format!("devices = []\n{}", agent_config(&setup, &[]));
    std::fs::write(&w.config, config).expect("write config");
}

fn agent_once(w: &World) -> String {
    let out = run(
        "outpost-agent",
        &["run", "--config", path(&w.config), "--once"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "agent run --once: {stderr}");
    stderr
}

fn applied(db: &Path) -> i64 {
    agent_row(db)["envelopes_accepted"].as_i64().unwrap_or(0)
}

/// Sends `wire` to the collector as diode datagrams.
fn send(listen: SocketAddr, id: u64, wire: &[u8]) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for d in fragment(id, wire).expect("fragment") {
        sock.send_to(&d, listen).expect("send");
    }
}

/// A heartbeat after the collector's recorded tip, sealed with `key`.
fn heartbeat_after_tip(db: &Path, key: &SigningKey) -> Vec<u8> {
    let row = agent_row(db);
    let tip = ChainTip {
        seq: row["last_seq"].as_u64().expect("last_seq"),
        hash: Digest::from_hex(row["last_hash"].as_str().expect("last_hash")).expect("hash"),
    };
    let agent = AgentId::new("gw-t").expect("id");
    let zone = ZoneId::new("cell-t").expect("id");
    let body = Body::Heartbeat(Heartbeat {
        agent: agent.clone(),
        zone: zone.clone(),
        last_seq: tip.seq,
        last_hash: tip.hash,
        interval_ms: 60_000,
        last_summary_seq: 0,
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    seal(key, &agent, &zone, &tip, now, &body)
        .expect("seal")
        .wire
}

fn audit(db: &Path) -> (Option<i32>, String, Value) {
    let out = run("outpost-collector", &["audit", "verify", "--db", path(db)]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let json_out = run(
        "outpost-collector",
        &["audit", "verify", "--db", path(db), "--json"],
    );
    assert_eq!(json_out.status.code(), out.status.code());
    let doc: Value = serde_json::from_slice(&json_out.stdout).unwrap_or_else(|e| {
        panic!(
            "audit --json is not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&json_out.stdout),
            String::from_utf8_lossy(&json_out.stderr)
        )
    });
    (out.status.code(), text, doc)
}

fn sqlite(db: &Path, sql: &str) {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .expect("the sqlite3 CLI runs (apt install sqlite3)");
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_db(from: &Path, to: &Path) {
    std::fs::copy(from, to).expect("copy db");
}

#[test]
fn key_rotation_revocation_and_audit_through_real_processes() {
    let w = world("e2e-trust");
    let (mut collector, listen) = start_collector(&w.dir, &w.db);
    write_config(&w, listen);

    // 1. A cycle under the first key.
    agent_once(&w);
    wait_db("first envelope", || applied(&w.db) == 1);
    let old_key = SigningKey::from_pkcs8(&std::fs::read(&w.key_file).expect("key")).expect("key");

    // 2. Stage a new key; the next cycle announces it (signed by both) and switches.
    let staged = run_ok(
        "outpost-agent",
        &["rotate-key", "--config", path(&w.config)],
    );
    assert!(staged.contains("staged key:"), "{staged}");
    let refused = run(
        "outpost-agent",
        &["rotate-key", "--config", path(&w.config)],
    );
    assert!(!refused.status.success(), "a second staging needs --force");
    let stderr = agent_once(&w);
    assert!(stderr.contains("key handover sent"), "{stderr}");
    wait_db("handover and summary applied", || applied(&w.db) == 3);
    let new_key = SigningKey::from_pkcs8(&std::fs::read(&w.key_file).expect("key")).expect("key");
    assert_ne!(new_key.key_id(), old_key.key_id());
    assert!(!w.dir.join("keys/agent.key.next").exists());

    let keys = collector_json(&["key", "list"], &w.db);
    assert_eq!(keys["schema"], "outpost.keys.v1");
    let find = |id: String| {
        keys["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .find(|k| k["key_id"] == id.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("key {id} not listed: {keys:#}"))
    };
    let old_row = find(old_key.key_id().to_string());
    let new_row = find(new_key.key_id().to_string());
    assert_eq!(old_row["status"], "retired");
    assert_eq!(old_row["superseded_by"], new_key.key_id().to_string());
    assert_eq!(new_row["status"], "active");
    assert_eq!(new_row["agent_id"], "gw-t");
    assert_eq!(new_row["zones"], serde_json::json!(["cell-t"]));
    let kinds = event_kinds(&w.db);
    assert!(kinds.contains(&"key_rotated".to_owned()), "{kinds:?}");
    assert!(!kinds.contains(&"chain_break".to_owned()), "{kinds:?}");
    assert!(!kinds.contains(&"sequence_gap".to_owned()), "{kinds:?}");
    assert!(quarantine_reasons(&w.db).is_empty());

    // 3. The old key after the handover: refused as key_retired.
    send(listen, 77, &heartbeat_after_tip(&w.db, &old_key));
    wait_db("old key refused", || {
        counter(&w.db, "envelopes_rejected.key_retired") == 1
    });

    // 4. Revoke the new key: the agent's next envelope is quarantined and alerted.
    let out = run_ok(
        "outpost-collector",
        &[
            "key",
            "revoke",
            "--db",
            path(&w.db),
            "--key-id",
            &new_key.key_id().to_string(),
            "--reason",
            "gateway disk imaged by a contractor",
        ],
    );
    assert!(out.contains("revoked key"), "{out}");
    agent_once(&w);
    wait_db("revoked key refused", || {
        counter(&w.db, "envelopes_rejected.key_revoked") == 1
    });
    let events = collector_json(&["events"], &w.db);
    let alert = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["kind"] == "revoked_key_used")
        .cloned()
        .unwrap_or_else(|| panic!("no revoked_key_used event: {events:#}"));
    let alert_text = alert.to_string();
    assert!(
        alert_text.contains(&new_key.key_id().to_string()),
        "{alert_text}"
    );
    assert!(alert_text.contains("gw-t"), "{alert_text}");
    assert!(alert_text.contains("127.0.0.1:"), "{alert_text}");
    let listed = run_ok("outpost-collector", &["key", "list", "--db", path(&w.db)]);
    assert!(listed.contains("revoked"), "{listed}");
    assert!(listed.contains("gateway disk imaged"), "{listed}");

    let status = collector
        .stop(Duration::from_secs(10))
        .expect("collector stops");
    assert!(status.success(), "collector exit: {status}");

    // 5. Audit: clean, the handover and history verify.
    let (code, text, doc) = audit(&w.db);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(doc["schema"], "outpost.audit.v1");
    assert_eq!(doc["clean"], true);
    assert_eq!(doc["audit"]["envelopes_checked"], 3);
    assert_eq!(doc["audit"]["keys_checked"], 2);

    // 6. One byte of one stored envelope, edited with the sqlite3 CLI: caught.
    let t1 = w.dir.join("tamper-byte.sqlite");
    copy_db(&w.db, &t1);
    sqlite(
        &t1,
        "UPDATE envelopes SET raw = CAST(substr(raw, 1, length(raw) - 6) \
         || CASE WHEN substr(raw, length(raw) - 5, 1) = x'41' THEN x'42' ELSE x'41' END \
         || substr(raw, length(raw) - 4) AS BLOB) WHERE envelope_id = 2;",
    );
    let (code, text, doc) = audit(&t1);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("TAMPERING"), "{text}");
    assert_eq!(doc["clean"], false);
    assert_eq!(
        doc["audit"]["findings"][0]["kind"], "bad_signature",
        "{doc:#}"
    );
    assert_eq!(doc["audit"]["findings"][0]["envelope_id"], 2, "{doc:#}");

    // 7. A deleted row: the next row's recorded verdict no longer matches the chain.
    let t2 = w.dir.join("tamper-delete.sqlite");
    copy_db(&w.db, &t2);
    sqlite(&t2, "DELETE FROM envelopes WHERE envelope_id = 2;");
    let (code, text, _) = audit(&t2);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("verdict_mismatch"), "{text}");

    // ...and a deleted last row: the agent's stored tip gives it away.
    let t3 = w.dir.join("tamper-tail.sqlite");
    copy_db(&w.db, &t3);
    sqlite(
        &t3,
        "DELETE FROM envelopes WHERE envelope_id = (SELECT max(envelope_id) FROM envelopes);",
    );
    let (code, text, _) = audit(&t3);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("tip_mismatch"), "{text}");

    // 8. An edited key: its public key replaced by another (the stranger's) key.
    let t4 = w.dir.join("tamper-key.sqlite");
    copy_db(&w.db, &t4);
    let (stranger, _) = SigningKey::generate().expect("key");
    let hex: String = stranger
        .public_key()
        .0
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    sqlite(
        &t4,
        &format!(
            "UPDATE agent_keys SET public_key = x'{hex}' WHERE key_id = '{}';",
            old_key.key_id()
        ),
    );
    let (code, text, doc) = audit(&t4);
    assert_eq!(code, Some(3), "{text}");
    let kinds: Vec<&str> = doc["audit"]["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"key_tampered"), "{kinds:?}");
    assert!(kinds.contains(&"bad_signature"), "{kinds:?}");

    // ...and a key row moved to another agent.
    let t5 = w.dir.join("tamper-key-agent.sqlite");
    copy_db(&w.db, &t5);
    sqlite(
        &t5,
        &format!(
            "INSERT INTO agents (agent_id, enrolled_at_ms) VALUES ('gw-evil', 0); \
             UPDATE agent_keys SET agent_id = 'gw-evil' WHERE key_id = '{}';",
            new_key.key_id()
        ),
    );
    let (code, text, _) = audit(&t5);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("key_not_authorised"), "{text}");

    // A missing file is an error (exit 1), not a clean audit.
    let out = run(
        "outpost-collector",
        &["audit", "verify", "--db", path(&w.dir.join("nope.sqlite"))],
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn state_loss_is_reported_as_a_restart_and_an_undeclared_rewind_stays_a_replay() {
    let w = world("e2e-restart");
    let (mut collector, listen) = start_collector(&w.dir, &w.db);
    write_config(&w, listen);
    let state = w.dir.join("state");

    agent_once(&w);
    wait_db("first envelope", || applied(&w.db) == 1);
    let saved_tip = std::fs::read(state.join("chain-tip.toml")).expect("tip file");
    agent_once(&w);
    wait_db("second envelope", || applied(&w.db) == 2);
    let before = agent_row(&w.db)["last_seq"].as_u64().expect("seq");

    // The state directory is lost: the agent declares a new chain; reported, not refused.
    std::fs::remove_dir_all(&state).expect("remove state");
    let stderr = agent_once(&w);
    assert!(stderr.contains("starting a new chain"), "{stderr}");
    wait_db("restart applied", || applied(&w.db) == 3);
    let after = agent_row(&w.db)["last_seq"].as_u64().expect("seq");
    assert!(after > before, "{after} > {before}");
    let kinds = event_kinds(&w.db);
    assert!(kinds.contains(&"agent_state_lost".to_owned()), "{kinds:?}");
    assert!(quarantine_reasons(&w.db).is_empty());
    agent_once(&w);
    wait_db("chain continues", || applied(&w.db) == 4);

    // An undeclared rewind (an old chain tip restored from a backup): a replay, quarantined.
    std::fs::write(state.join("chain-tip.toml"), &saved_tip).expect("restore old tip");
    agent_once(&w);
    wait_db("rewind refused", || {
        counter(&w.db, "envelopes_rejected.replay") == 1
    });
    assert_eq!(applied(&w.db), 4);
    let lost = event_kinds(&w.db)
        .iter()
        .filter(|k| *k == "agent_state_lost")
        .count();
    assert_eq!(lost, 1);

    let status = collector
        .stop(Duration::from_secs(10))
        .expect("collector stops");
    assert!(status.success(), "collector exit: {status}");
    let (code, text, doc) = audit(&w.db);
    assert_eq!(code, Some(0), "{text}");
    let restarts = doc["audit"]["discontinuities"]
        .as_array()
        .expect("discontinuities")
        .iter()
        .filter(|d| d["kind"] == "restart")
        .count();
    assert_eq!(restarts, 1, "{doc:#}");
}
