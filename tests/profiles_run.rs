//! Device profiles in `outpost-agent run`, against the plant simulator over real TCP:
//! - a profile in the user directory (`[profiles] dir`) replaces the built-in one of the same
//!   name, and the observation names the profile applied (explicit blocks win over it);
//! - end to end with real processes (`outpost-sim` → agent → UDP → collector → SQLite): the
//!   profile's volatile block is reported on every poll but never judged, while its
//!   configuration block is (an engineering workstation's write raises one alert);
//! - a broken profile file stops the agent at start with the file and the field named.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use outpost_agent::config::{BlockConfig, DeviceAddress, DeviceConfig};
use outpost_agent::modbus::poll::poll_device_with;
use outpost_agent::modbus::read_only::Timing;
use outpost_agent::profile::Library;
use outpost_proto::model::{PollStatus, RegisterKind};
use outpost_testbed::ews::write_register_blocking;
use outpost_testbed::harness::{self, ChildGuard};
use outpost_testbed::scenario::{AgentSetup, PlantDevice, agent_config, devices_from_sim_json};
use outpost_testbed::sim::{Plant, default_plant};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// A user profile replacing the built-in `schneider-modicon-m2xx`: other block names and sizes.
const USER_M2XX: &str = r#"
name = "schneider-modicon-m2xx"
description = "site override: only the first four setpoints, live values volatile"

[match]
vendor = "Schneider Electric"
product = "TM2[24]1*"

[[blocks]]
name = "setpoints"
kind = "holding"
start = 100
count = 4

[[blocks]]
name = "live"
kind = "input"
start = 0
count = 4
volatile = true
"#;

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

fn last_seq(db: &Path) -> i64 {
    collector_json("agents", db)["agents"][0]["last_seq"]
        .as_i64()
        .unwrap_or(0)
}

fn wait_envelopes(db: &Path, from: i64, n: i64) -> i64 {
    harness::wait_for(WAIT, || {
        let seq = last_seq(db);
        (seq >= from + n).then_some(seq)
    })
    .unwrap_or_else(|| panic!("timed out waiting for {n} envelopes after seq {from}"))
}

fn alerts(db: &Path) -> Vec<Value> {
    collector_json("alerts", db)["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn user_dir() -> tempfile::TempDir {
    let dir = harness::temp_dir("profiles-user").expect("temp dir");
    std::fs::write(dir.path().join("m2xx-site.toml"), USER_M2XX).expect("write profile");
    dir
}

fn device(addr: SocketAddr, blocks: Vec<BlockConfig>) -> DeviceConfig {
    DeviceConfig {
        name: "mixer-plc".into(),
        address: DeviceAddress {
            host: addr.ip().to_string(),
            port: addr.port(),
        },
        unit_ids: vec![1],
        blocks,
    }
}

#[tokio::test]
async fn a_user_profile_replaces_the_built_in_one_and_explicit_blocks_win() {
    let plant = Plant::start_local(default_plant()).await.expect("plant");
    let addr = plant.devices()[0].addr; // mixer-plc: Schneider Electric TM221CE24T
    let timing = Timing {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(1000),
        min_request_gap: Duration::from_millis(5),
    };
    let names = |obs: &outpost_proto::model::AssetObservation| -> Vec<(String, bool, usize)> {
        obs.blocks
            .iter()
            .map(|b| (b.name.clone(), b.volatile, b.values.len()))
            .collect()
    };

    // Built-in profiles only.
    let builtin = Library::builtin().expect("built-in profiles");
    let obs = poll_device_with(&device(addr, vec![]), timing, Some(&builtin)).await;
    assert_eq!(obs[0].status, PollStatus::Ok, "{:?}", obs[0].problems);
    assert_eq!(obs[0].profile.as_deref(), Some("schneider-modicon-m2xx"));
    assert_eq!(
        names(&obs[0]),
        vec![("config".into(), false, 8), ("process".into(), true, 4)]
    );

    // The user directory's file of the same name replaces it.
    let dir = user_dir();
    let lib = Library::with_dir(dir.path()).expect("user profiles");
    let p = lib.get("schneider-modicon-m2xx").expect("profile");
    assert!(p.origin.ends_with("m2xx-site.toml"), "{}", p.origin);
    let obs = poll_device_with(&device(addr, vec![]), timing, Some(&lib)).await;
    assert_eq!(obs[0].status, PollStatus::Ok, "{:?}", obs[0].problems);
    assert_eq!(obs[0].profile.as_deref(), Some("schneider-modicon-m2xx"));
    assert_eq!(
        names(&obs[0]),
        vec![("setpoints".into(), false, 4), ("live".into(), true, 4)]
    );

    // Blocks in the config win: no profile applied.
    let explicit = BlockConfig {
        name: "speed".into(),
        kind: RegisterKind::Holding,
        start: 100,
        count: 1,
        volatile: false,
    };
    let obs = poll_device_with(&device(addr, vec![explicit]), timing, Some(&lib)).await;
    assert_eq!(obs[0].profile, None);
    assert_eq!(names(&obs[0]), vec![("speed".into(), false, 1)]);
    // Profiles off: identity only.
    let obs = poll_device_with(&device(addr, vec![]), timing, None).await;
    assert_eq!(obs[0].profile, None);
    assert!(obs[0].blocks.is_empty());
    assert_eq!(
        obs[0].identity.vendor_name.as_deref(),
        Some("Schneider Electric")
    );
    plant.stop().await;
}

#[test]
fn a_profiles_volatile_block_is_reported_but_not_judged() {
    let dir = harness::temp_dir("profiles-e2e").expect("temp dir");
    let dir = dir.path();
    let sim_ready = dir.join("sim.json");
    let _sim = ChildGuard::spawn(
        "outpost-sim",
        Command::new(bin("outpost-sim"))
            .args(["--bind", "127.0.95.1", "--ready-file", path(&sim_ready)])
            .stdout(Stdio::null())
            .stdin(Stdio::null()),
    )
    .expect("simulator starts");
    let plant = harness::wait_ready_json(&sim_ready, WAIT).expect("simulator ready");
    let devices = devices_from_sim_json(&plant).expect("simulator JSON");
    let mixer = devices
        .iter()
        .find(|d| d.name == "mixer-plc")
        .expect("mixer-plc");
    let mixer_addr = mixer.addr;

    let keys = dir.join("keys");
    run_ok(
        "outpost-agent",
        &["keygen", "--out", path(&keys), "--agent", "gw-prof"],
    );
    let db = dir.join("cmdb.sqlite");
    run_ok(
        "outpost-collector",
        &[
            "enroll",
            "--db",
            path(&db),
            "--zone",
            "cell-p",
            "--key",
            path(&keys.join("agent.pub")),
        ],
    );
    let ready = dir.join("collector.ready");
    let _collector = ChildGuard::spawn(
        "outpost-collector",
        Command::new(bin("outpost-collector"))
            .args([
                "serve",
                "--db",
                path(&db),
                "--diode-listen",
                "127.0.0.1:0",
                "--ready-file",
                path(&ready),
            ])
            .stdin(Stdio::null()),
    )
    .expect("collector starts");
    let listen: SocketAddr = harness::wait_ready_file(&ready, WAIT)
        .expect("collector ready")
        .trim()
        .parse()
        .expect("address");

    // The mixer, configured without blocks; the site's profile directory overrides its profile.
    let profiles = user_dir();
    let state = dir.join("state");
    let key_file = keys.join("agent.key");
    let setup = AgentSetup::new("gw-prof", "cell-p", &state, &key_file, listen);
    let bare = PlantDevice {
        holding: vec![],
        process: vec![],
        ..mixer.clone()
    };
    let mut text = agent_config(&setup, &[bare]);
    text.push_str(&format!(
        "\n[profiles]\ndir = {:?}\n",
        profiles.path().display().to_string()
    ));
    let config = dir.join("agent.toml");
    std::fs::write(&config, &text).expect("config");
    let mut agent = ChildGuard::spawn(
        "outpost-agent",
        Command::new(bin("outpost-agent"))
            .args(["run", "--config", path(&config)])
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )
    .expect("agent starts");

    let row = harness::wait_for(WAIT, || {
        collector_json("assets", &db)["assets"]
            .as_array()
            .and_then(|a| a.first().cloned())
    })
    .expect("the mixer in the CMDB");
    let mut blocks: Vec<&str> = row["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    blocks.sort_unstable();
    assert_eq!(blocks, vec!["live", "setpoints"], "{row:#}");
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
            "CHG-initial",
        ],
    );

    // The live values change on every poll: several polls, recorded, no alert, no drift.
    let seq = wait_envelopes(&db, last_seq(&db), 4);
    assert!(alerts(&db).is_empty(), "{:#?}", alerts(&db));
    let live_changes = collector_json("history", &db)["history"]
        .as_array()
        .map_or(0, |h| {
            h.iter()
                .filter(|r| r["attribute"].as_str() == Some("block.live"))
                .filter(|r| r["envelope_seq"].as_i64() > Some(seq - 4))
                .count()
        });
    assert!(
        live_changes >= 3,
        "the profile's volatile block changed while no alert was raised ({live_changes})"
    );
    let drift = collector_json("drift", &db);
    assert!(
        drift["drift"]
            .as_array()
            .expect("drift")
            .iter()
            .all(|d| d["state"] == "in_baseline"),
        "{drift:#}"
    );

    // The profile's configuration block is judged: a write to it raises one alert.
    write_register_blocking(mixer_addr, 1, 100, 1350).expect("FC 6 write");
    let alert = harness::wait_for(WAIT, || alerts(&db).into_iter().next()).expect("an alert");
    assert_eq!(alert["kind"], "unauthorised_change", "{alert:#}");
    assert_eq!(
        alert["detail"]["changes"][0]["attribute"], "block.setpoints",
        "{alert:#}"
    );
    agent.stop(Duration::from_secs(5)).expect("agent stops");
}

#[test]
fn a_broken_profile_stops_the_agent_at_start() {
    let dir = harness::temp_dir("profiles-broken").expect("temp dir");
    let dir = dir.path();
    let profiles = dir.join("profiles");
    std::fs::create_dir(&profiles).expect("profiles dir");
    let broken = profiles.join("broken.toml");
    std::fs::write(
        &broken,
        "name = \"broken\"\n[match]\nvendor = \"ACME\"\n[[blocks]]\nname = \"c\"\nkind = \"holding\"\nstart = 100\ncount = 0\n",
    )
    .expect("write profile");
    let keys = dir.join("keys");
    run_ok("outpost-agent", &["keygen", "--out", path(&keys)]);
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "agent_id = \"gw-broken\"\nzone = \"cell-b\"\nstate_dir = \"state\"\nkey_file = {:?}\ndevices = []\n\n[diode]\ntarget = \"127.0.0.1:9\"\n\n[profiles]\ndir = \"profiles\"\n",
            keys.join("agent.key").display().to_string()
        ),
    )
    .expect("config");
    for cmd in ["check-config", "run"] {
        let mut args = vec![cmd, "--config", path(&config)];
        if cmd == "run" {
            args.push("--once");
        }
        let out = run("outpost-agent", &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd} accepted a broken profile");
        assert!(stderr.contains(path(&broken)), "{cmd}: {stderr}");
        assert!(stderr.contains("block \"c\": count 0"), "{cmd}: {stderr}");
    }
    // Nothing was sealed: the agent stopped before its state directory was touched.
    assert!(!dir.join("state").join("chain-tip.toml").exists());
}
