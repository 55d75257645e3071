//! Evidence packs with real processes: `outpost-sim` → `outpost-agent` (two cycles) → real UDP
//! → `outpost-collector serve` → a real SQLite file; then `outpost-collector evidence keygen`,
//! `evidence` and `evidence verify` as an operator and an auditor run them, and a tampered copy
//! of the pack for each way of tampering.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use outpost_collector::evidence::manifest::{self, Manifest};
use outpost_proto::{Digest, SigningKey};
use outpost_testbed::ews::write_register_blocking;
use outpost_testbed::harness::{self, ChildGuard};
use outpost_testbed::scenario::{AgentSetup, agent_config, devices_from_sim_json};
use outpost_testbed::sim::default_plant;
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

fn start_collector(dir: &Path, db: &Path) -> (ChildGuard, SocketAddr) {
    let ready = dir.join("collector.ready");
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

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// `evidence verify` on `dir`: (exit code, stdout).
fn verify(dir: &Path, pin: Option<&Path>) -> (i32, String) {
    let mut args = vec!["evidence", "verify", path(dir)];
    if let Some(p) = pin {
        args.extend(["--collector-key", path(p)]);
    }
    let out = run("outpost-collector", &args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn assert_tampered(dir: &Path, pin: Option<&Path>, expect: &[&str]) {
    let (code, text) = verify(dir, pin);
    assert_eq!(
        code,
        3,
        "tampered pack {} must fail with 3:\n{text}",
        dir.display()
    );
    assert!(text.contains("TAMPERED OR DAMAGED"), "{text}");
    for e in expect {
        assert!(text.contains(e), "expected {e:?} in:\n{text}");
    }
}

/// Rewrites `manifest.json` with fresh hashes of the pack's files and signs it with `key`
/// (what someone who edited a pack and holds *some* key would do).
fn reseal(dir: &Path, key: &SigningKey) {
    let m_path = dir.join("manifest.json");
    let mut m: Manifest =
        serde_json::from_slice(&std::fs::read(&m_path).expect("manifest")).expect("manifest JSON");
    for f in &mut m.files {
        let bytes = std::fs::read(dir.join(&f.path)).expect("file");
        f.sha256 = Digest::of(&bytes).to_string();
        f.bytes = bytes.len() as u64;
    }
    m.collector_key_id = key.key_id().to_string();
    let bytes = serde_json::to_vec_pretty(&m).expect("json");
    std::fs::write(&m_path, &bytes).expect("write manifest");
    std::fs::write(dir.join("manifest.sig"), manifest::sign(key, &bytes)).expect("write sig");
}

#[test]
fn evidence_pack_from_a_real_run_verifies_offline_and_every_tampering_fails() {
    let tmp = harness::temp_dir("e2e-evidence").expect("temp dir");
    let dir = tmp.path();

    let sim_ready = dir.join("sim.json");
    let mut sim = ChildGuard::spawn(
        "outpost-sim",
        Command::new(bin("outpost-sim"))
            .args(["--bind", "127.0.8.1", "--ready-file", path(&sim_ready)])
            .stdout(Stdio::null())
            .stdin(Stdio::null()),
    )
    .expect("simulator starts");
    let plant = harness::wait_ready_json(&sim_ready, WAIT).expect("simulator ready");
    let devices = devices_from_sim_json(&plant).expect("simulator JSON");

    let keys = dir.join("keys");
    run_ok(
        "outpost-agent",
        &["keygen", "--out", path(&keys), "--agent", "gw-ev"],
    );
    let db = dir.join("cmdb.sqlite");
    run_ok(
        "outpost-collector",
        &[
            "enroll",
            "--db",
            path(&db),
            "--zone",
            "cell-ev",
            "--key",
            path(&keys.join("agent.pub")),
        ],
    );
    let (mut collector, listen) = start_collector(dir, &db);
    let state = dir.join("state");
    let key_file = keys.join("agent.key");
    let setup = AgentSetup::new("gw-ev", "cell-ev", &state, &key_file, listen);
    let config = dir.join("agent.toml");
    std::fs::write(&config, agent_config(&setup, &devices)).expect("write config");
    let units: usize = default_plant().iter().map(|d| d.unit_ids.len()).sum();
    run_ok(
        "outpost-agent",
        &["run", "--config", path(&config), "--once"],
    );
    wait_db("the first summary", || {
        collector_json("assets", &db)["assets"]
            .as_array()
            .map_or(0, Vec::len)
            == units
    });
    let first_seq = collector_json("agents", &db)["agents"][0]["last_seq"]
        .as_u64()
        .expect("last_seq");
    // The zone's state approved as the baseline, then an engineering workstation changes the
    // mixer's setpoint without a change record: the next summary is judged unauthorised.
    run_ok(
        "outpost-collector",
        &[
            "baseline",
            "approve",
            "--db",
            path(&db),
            "--zone",
            "cell-ev",
            "--by",
            "auditor",
            "--reason",
            "commissioning",
        ],
    );
    let mixer = devices
        .iter()
        .find(|d| d.name == "mixer-plc")
        .expect("mixer-plc");
    write_register_blocking(mixer.addr, 1, 100, 1350).expect("FC 6 write");
    run_ok(
        "outpost-agent",
        &["run", "--config", path(&config), "--once"],
    );
    wait_db("the second summary", || {
        collector_json("agents", &db)["agents"][0]["last_seq"] == first_seq + 1
    });
    collector
        .stop(Duration::from_secs(5))
        .expect("collector stops");
    sim.stop(Duration::from_secs(5)).expect("simulator stops");

    // The operator: a key, then a pack.
    let ek = dir.join("evidence-key");
    let out = run_ok(
        "outpost-collector",
        &["evidence", "keygen", "--out", path(&ek)],
    );
    assert!(out.contains("evidence.pub"), "{out}");
    let again = run(
        "outpost-collector",
        &["evidence", "keygen", "--out", path(&ek)],
    );
    assert!(!again.status.success(), "keygen must not overwrite a key");
    let pub_key = ek.join("evidence.pub");
    // The period: the last hour (a period starting long before the first check would,
    // rightly, show CIs not checked for more than 35 days).
    let now = i64::try_from(outpost_collector::time::now_ms()).expect("clock");
    let from = outpost_collector::time::rfc3339(now - 3_600_000);
    let from_other = outpost_collector::time::rfc3339(now - 1_800_000);
    let pack = dir.join("pack");
    let out = run_ok(
        "outpost-collector",
        &[
            "evidence",
            "--db",
            path(&db),
            "--zone",
            "cell-ev",
            "--from",
            &from,
            "--out",
            path(&pack),
            "--key",
            path(&ek.join("evidence.key")),
        ],
    );
    assert!(out.contains("2 envelopes"), "{out}");
    // A pack is never written over another.
    let over = run(
        "outpost-collector",
        &[
            "evidence",
            "--db",
            path(&db),
            "--zone",
            "cell-ev",
            "--from",
            &from,
            "--out",
            path(&pack),
            "--key",
            path(&ek.join("evidence.key")),
        ],
    );
    assert!(!over.status.success());
    assert!(String::from_utf8_lossy(&over.stderr).contains("not empty"));

    // What it holds.
    let report: Value =
        serde_json::from_slice(&std::fs::read(pack.join("report.json")).expect("report.json"))
            .expect("report JSON");
    assert_eq!(report["schema"], "outpost.evidence.report.v1");
    assert_eq!(report["envelopes"], 2);
    assert_eq!(report["by_kind"]["summary"], 2);
    let inventory = report["inventory"].as_array().expect("inventory");
    assert_eq!(inventory.len(), units + 1, "every unit and the gateway");
    assert!(
        inventory
            .iter()
            .all(|c| c["within_limit"] == true && c["checks"] == 2),
        "{report:#}"
    );
    let plc = inventory
        .iter()
        .find(|c| c["class"] == "field_device" && c["identity"]["revision"].is_string())
        .expect("an identified device");
    assert!(
        plc["cip010"]["os_firmware"]
            .as_str()
            .is_some_and(|s| s.contains("firmware")),
        "{plc:#}"
    );
    assert!(
        plc["cip010"]["patches"].is_null(),
        "patches are not collected"
    );
    assert_eq!(report["monitoring"]["cis_within_limit"], units as u64 + 1);
    let changes: Value =
        serde_json::from_slice(&std::fs::read(pack.join("changes.json")).expect("changes"))
            .expect("changes JSON");
    let html = std::fs::read_to_string(pack.join("report.html")).expect("html");
    assert!(html.contains("data-envelopes=\"2\""), "{html}");
    assert!(html.contains("CIP-010 R1.1"));
    // The drift records: the approved baselines and the unauthorised change, naming the
    // envelope (in the pack) it was observed in.
    assert_eq!(changes["available"], true, "{changes:#}");
    assert_eq!(
        changes["baselines"].as_array().map(Vec::len),
        Some(units),
        "{changes:#}"
    );
    let change = &changes["changes"][0];
    assert_eq!(change["verdict"], "unauthorised", "{changes:#}");
    assert!(
        change["ci_key"]
            .as_str()
            .is_some_and(|k| k.contains(&mixer.addr.to_string()))
    );
    assert_eq!(change["envelope_seq"], first_seq + 1);
    assert!(html.contains("none: investigate"), "{html}");
    let envelope_files: Vec<PathBuf> = std::fs::read_dir(pack.join("envelopes/gw-ev"))
        .expect("envelopes dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(envelope_files.len(), 2);

    // The auditor: clean, with and without the pinned key.
    let (code, text) = verify(&pack, Some(&pub_key));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("OK:"), "{text}");
    assert!(text.contains("checked 8 files, 2 envelopes"), "{text}");
    let (code, text) = verify(&pack, None);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("note: no --collector-key"), "{text}");

    // 1. One flipped byte in an envelope file.
    let t = dir.join("t-flip");
    copy_dir(&pack, &t);
    let victim = t.join(envelope_files[0].strip_prefix(&pack).expect("inside pack"));
    let mut bytes = std::fs::read(&victim).expect("envelope");
    let at = bytes.len() - 10; // inside the signature
    bytes[at] ^= 0x01;
    std::fs::write(&victim, bytes).expect("write");
    assert_tampered(
        &t,
        Some(&pub_key),
        &["hash_mismatch: envelopes/gw-ev/", "bad_signature:"],
    );

    // 2. An edited report.
    let t = dir.join("t-html");
    copy_dir(&pack, &t);
    let edited = html.replace("data-envelopes=\"2\"", "data-envelopes=\"3\"");
    std::fs::write(t.join("report.html"), edited).expect("write");
    assert_tampered(
        &t,
        Some(&pub_key),
        &[
            "hash_mismatch: report.html",
            "report_mismatch: report.html differs",
        ],
    );

    // 3. A removed envelope file.
    let t = dir.join("t-remove");
    copy_dir(&pack, &t);
    std::fs::remove_file(t.join(envelope_files[1].strip_prefix(&pack).expect("inside")))
        .expect("remove");
    assert_tampered(&t, Some(&pub_key), &["missing_file: envelopes/gw-ev/"]);

    // 4. A swapped manifest: another pack's (a shorter period), with the signature kept.
    let other = dir.join("pack-other");
    run_ok(
        "outpost-collector",
        &[
            "evidence",
            "--db",
            path(&db),
            "--zone",
            "cell-ev",
            "--from",
            &from_other,
            "--out",
            path(&other),
            "--key",
            path(&ek.join("evidence.key")),
        ],
    );
    let t = dir.join("t-swap");
    copy_dir(&pack, &t);
    std::fs::copy(other.join("manifest.json"), t.join("manifest.json")).expect("swap");
    assert_tampered(
        &t,
        Some(&pub_key),
        &["manifest_signature: the signature in manifest.sig does not verify"],
    );

    // 5. An edited report.json, re-hashed and re-signed with someone else's key: caught by
    // the recomputation even without a pinned key, and by the pin.
    let t = dir.join("t-forged");
    copy_dir(&pack, &t);
    let mut forged = report.clone();
    forged["monitoring"]["outside_limit"] = Value::Array(vec![]);
    forged["envelopes"] = Value::from(5);
    std::fs::write(
        t.join("report.json"),
        serde_json::to_vec_pretty(&forged).expect("json"),
    )
    .expect("write");
    let (mallory, _) = SigningKey::generate().expect("key");
    std::fs::write(t.join("collector.pub"), mallory.public_key().to_line(None)).expect("write");
    reseal(&t, &mallory);
    assert_tampered(
        &t,
        None,
        &["report_mismatch: report.json.envelopes says 5, but the envelopes give 2"],
    );
    assert_tampered(
        &t,
        Some(&pub_key),
        &["collector_key_not_pinned", "manifest_signature"],
    );

    // 6. A change record pointing at an envelope that is not in the pack (re-signed by a
    // stranger: the pin is what catches the signature; the cross-check names the change).
    let t = dir.join("t-change");
    copy_dir(&pack, &t);
    let mut ch = changes.clone();
    ch["changes"][0]["envelope_seq"] = Value::from(first_seq + 7);
    std::fs::write(
        t.join("changes.json"),
        serde_json::to_vec_pretty(&ch).expect("json"),
    )
    .expect("write");
    std::fs::write(t.join("collector.pub"), mallory.public_key().to_line(None)).expect("w");
    reseal(&t, &mallory);
    assert_tampered(&t, None, &["change_without_envelope: change"]);

    // 7. An added file.
    let t = dir.join("t-added");
    copy_dir(&pack, &t);
    std::fs::write(t.join("envelopes/gw-ev/extra.cbor"), b"x").expect("write");
    assert_tampered(
        &t,
        Some(&pub_key),
        &["unlisted_file: envelopes/gw-ev/extra.cbor"],
    );

    // 8. An envelope dropped from the pack together with its index row, everything re-hashed
    // and re-signed (by a key that is not the pin): without the pin the report recomputation
    // still names it.
    let t = dir.join("t-dropped");
    copy_dir(&pack, &t);
    let index_path = t.join("envelopes/index.json");
    let mut index: Value =
        serde_json::from_slice(&std::fs::read(&index_path).expect("index")).expect("index JSON");
    let dropped = index["envelopes"].as_array_mut().expect("rows").remove(0);
    std::fs::write(
        &index_path,
        serde_json::to_vec_pretty(&index).expect("json"),
    )
    .expect("w");
    let dropped_file = dropped["file"].as_str().expect("file").to_owned();
    std::fs::remove_file(t.join(&dropped_file)).expect("remove");
    let m_path = t.join("manifest.json");
    let mut m: Manifest =
        serde_json::from_slice(&std::fs::read(&m_path).expect("m")).expect("manifest");
    m.files.retain(|f| f.path != dropped_file);
    std::fs::write(&m_path, serde_json::to_vec_pretty(&m).expect("json")).expect("w");
    std::fs::write(t.join("collector.pub"), mallory.public_key().to_line(None)).expect("w");
    reseal(&t, &mallory);
    assert_tampered(&t, None, &["report_mismatch: report.json"]);
}
