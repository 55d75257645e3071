//! Modbus RTU over a real pseudo-terminal pair (socat) with the simulator on the other end:
//! inventory of several units on one line, one request at a time with the frame gap kept, a
//! silent unit costing one timeout, noise giving a clear error, and an e2e `--once` cycle of
//! real processes reaching the collector's CMDB.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outpost_agent::config::BlockConfig;
use outpost_agent::modbus::bus::poll_bus;
use outpost_agent::modbus::serial::garbled_frames_total;
use outpost_agent::rtu_config::{Parity, RtuDeviceConfig, SerialBusConfig};
use outpost_proto::model::{AssetObservation, Endpoint, IdentMethod, PollStatus, RegisterKind};
use outpost_testbed::harness::{self, ChildGuard};
use outpost_testbed::pty::{NoisyRelay, PtyPair};
use outpost_testbed::scenario::{AgentSetup, agent_config};
use outpost_testbed::sim::{Behaviour, CONFIG_START, DeviceSpec, LineRequest, RtuLine, rtu_line};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(20);

fn block() -> BlockConfig {
    BlockConfig {
        name: "config".into(),
        kind: RegisterKind::Holding,
        start: CONFIG_START,
        count: 3,
        volatile: false,
    }
}

fn bus(path: &Path, units: &[(&str, u8)], frame_gap: Duration) -> SerialBusConfig {
    SerialBusConfig {
        path: path.display().to_string(),
        baud: 19_200,
        parity: Parity::Even,
        data_bits: 8,
        stop_bits: 1,
        timeout: TIMEOUT,
        frame_gap,
        devices: units
            .iter()
            .map(|(name, unit)| RtuDeviceConfig {
                name: (*name).into(),
                unit: *unit,
                blocks: vec![block()],
            })
            .collect(),
    }
}

fn line_bus(path: &Path) -> SerialBusConfig {
    bus(
        path,
        &[("feeder-meter", 1), ("conveyor-drive", 2), ("oven-tc", 3)],
        Duration::from_millis(2),
    )
}

fn find(obs: &[AssetObservation], unit: u8) -> &AssetObservation {
    obs.iter()
        .find(|o| o.unit_id == unit)
        .unwrap_or_else(|| panic!("unit {unit} missing: {obs:#?}"))
}

/// Asserts `obs` is `spec`'s exact identity and first three configuration registers.
fn assert_device(obs: &AssetObservation, spec: &DeviceSpec, bus_path: &Path) {
    assert_eq!(obs.status, PollStatus::Ok, "{obs:#?}");
    assert_eq!(obs.name, spec.name);
    assert_eq!(
        obs.endpoint,
        Endpoint::Rtu {
            device: bus_path.display().to_string()
        }
    );
    let id = &obs.identity;
    let want = &spec.identity;
    if spec.behaviour == Behaviour::NoDeviceId {
        assert_eq!(id.method, IdentMethod::ReportServerId, "{obs:#?}");
        let text = format!(
            "{} {} {}",
            want.vendor_name, want.product_code, want.revision
        );
        assert_eq!(id.other.get(&0x82), Some(&text), "{obs:#?}");
    } else {
        assert_eq!(id.method, IdentMethod::ReadDeviceIdentification, "{obs:#?}");
        assert_eq!(id.vendor_name.as_deref(), Some(want.vendor_name.as_str()));
        assert_eq!(id.product_code.as_deref(), Some(want.product_code.as_str()));
        assert_eq!(id.revision.as_deref(), Some(want.revision.as_str()));
        assert_eq!(id.model_name, want.model_name);
    }
    assert_eq!(obs.blocks.len(), 1, "{obs:#?}");
    assert_eq!(obs.blocks[0].values, spec.holding[0].1[..3].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventories_three_units_on_one_line_with_exact_identities() {
    let dir = harness::temp_dir("rtu-inventory").expect("temp dir");
    let pair = PtyPair::start(dir.path()).expect("socat pty pair");
    let specs = rtu_line();
    let line = RtuLine::start(&pair.b, &specs).expect("simulated line");

    let obs = poll_bus(&line_bus(&pair.a), Duration::ZERO).await;
    assert_eq!(obs.len(), 3, "{obs:#?}");
    for (spec, unit) in specs.iter().zip(1u8..) {
        assert_device(find(&obs, unit), spec, &pair.a);
    }
    // Only read function codes went over the line.
    for r in line.requests() {
        assert!(
            outpost_testbed::sim::READ_ONLY_FCS.contains(&r.function),
            "{r:?}"
        );
    }
    line.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_never_overlap_and_keep_the_frame_gap() {
    let dir = harness::temp_dir("rtu-gap").expect("temp dir");
    let pair = PtyPair::start(dir.path()).expect("socat pty pair");
    let mut specs = rtu_line();
    // A slow unit: an overlapping master would send its next request during the 80 ms.
    specs[1].behaviour = Behaviour::Slow(Duration::from_millis(80));
    let line = RtuLine::start(&pair.b, &specs).expect("simulated line");
    let gap = Duration::from_millis(25);
    let mut cfg = line_bus(&pair.a);
    cfg.frame_gap = gap;

    let obs = poll_bus(&cfg, Duration::ZERO).await;
    assert!(obs.iter().all(|o| o.status == PollStatus::Ok), "{obs:#?}");
    let requests: Vec<LineRequest> = line.requests();
    // Units 1 and 2: FC 43 + one block; unit 3: FC 43 refused, FC 17, one block.
    assert_eq!(requests.len(), 7, "{requests:#?}");
    let mut slow_seen = 0;
    for pair in requests.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        let answered = prev
            .answered
            .unwrap_or_else(|| panic!("unanswered: {prev:?}"));
        // The next request came only after the answer was out, plus the frame gap.
        let quiet = next.received.saturating_duration_since(answered);
        assert!(
            next.received > answered && quiet >= gap,
            "request {next:?} came {quiet:?} after the answer to {prev:?} (gap {gap:?})"
        );
        if prev.unit == 2 {
            slow_seen += 1;
            assert!(next.received.duration_since(prev.received) >= Duration::from_millis(80) + gap);
        }
    }
    assert!(slow_seen > 0, "the slow unit was polled");
    line.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_unit_costs_one_timeout_and_the_others_still_answer() {
    let dir = harness::temp_dir("rtu-silent").expect("temp dir");
    let pair = PtyPair::start(dir.path()).expect("socat pty pair");
    let specs = rtu_line();
    let line = RtuLine::start(&pair.b, &specs).expect("simulated line");
    // Unit 9 is configured but nobody on the line has that address.
    let cfg = bus(
        &pair.a,
        &[("feeder-meter", 1), ("ghost", 9), ("conveyor-drive", 2)],
        Duration::from_millis(2),
    );
    let started = Instant::now();
    let obs = poll_bus(&cfg, Duration::ZERO).await;
    let took = started.elapsed();

    assert_device(find(&obs, 1), &specs[0], &pair.a);
    assert_device(find(&obs, 2), &specs[1], &pair.a);
    let ghost = find(&obs, 9);
    let PollStatus::Unreachable(why) = &ghost.status else {
        panic!("the silent unit must be unreachable: {ghost:#?}");
    };
    assert!(why.contains("1 requests got no answer"), "{why}");
    assert!(why.contains(&pair.a.display().to_string()), "{why}");
    // Exactly one request went to the silent unit.
    let to_ghost = line.requests().iter().filter(|r| r.unit == 9).count();
    assert_eq!(to_ghost, 1);
    // One timeout, not three (loose bound: the two live units take well under a second here).
    assert!(took < TIMEOUT * 2 + Duration::from_secs(1), "{took:?}");
    line.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_on_the_line_is_a_clear_error_and_the_next_poll_is_clean() {
    let dir = harness::temp_dir("rtu-noise").expect("temp dir");
    // agent ↔ (pair 1) ↔ relay ↔ (pair 2) ↔ simulator
    let agent_pair = PtyPair::start(dir.path()).expect("socat pty pair 1");
    let sim_pair = PtyPair::start(dir.path()).expect("socat pty pair 2");
    let specs = rtu_line();
    let line = RtuLine::start(&sim_pair.b, &specs).expect("simulated line");
    let relay = NoisyRelay::start(&agent_pair.b, &sim_pair.a).expect("relay");
    let cfg = line_bus(&agent_pair.a);
    let bus_path = agent_pair.a.display().to_string();

    relay.corrupt_next(1);
    let garbled_before = garbled_frames_total();
    let noisy = poll_bus(&cfg, Duration::ZERO).await;
    assert_eq!(relay.corrupted(), 1);
    assert!(garbled_frames_total() > garbled_before, "counted");
    let first = find(&noisy, 1);
    let problems = first.problems.join("\n");
    assert!(
        problems.contains(&format!("CRC mismatch on {bus_path} unit 1")),
        "{first:#?}"
    );
    // Only that one answer suffered: the unit is still identified, the others are clean.
    assert_eq!(first.status, PollStatus::Partial, "{first:#?}");
    assert_eq!(first.identity.vendor_name.as_deref(), Some("Eastron"));
    assert_device(find(&noisy, 2), &specs[1], &agent_pair.a);
    assert_device(find(&noisy, 3), &specs[2], &agent_pair.a);

    let clean = poll_bus(&cfg, Duration::ZERO).await;
    for (spec, unit) in specs.iter().zip(1u8..) {
        assert_device(find(&clean, unit), spec, &agent_pair.a);
        assert!(find(&clean, unit).problems.is_empty(), "{clean:#?}");
    }
    drop(relay);
    line.stop().await;
}

fn bin(name: &str) -> PathBuf {
    harness::binary(name).unwrap_or_else(|e| panic!("{e}"))
}

fn run_ok(name: &str, args: &[&str]) -> String {
    let out = Command::new(bin(name))
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

fn p(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

#[test]
fn agent_once_over_rtu_reaches_the_cmdb() {
    let dir = harness::temp_dir("rtu-e2e").expect("temp dir");
    let dir = dir.path();
    let pair = PtyPair::start(dir).expect("socat pty pair");

    let sim_ready = dir.join("sim.json");
    let _sim = ChildGuard::spawn(
        "outpost-sim",
        Command::new(bin("outpost-sim"))
            .args(["--rtu", p(&pair.b), "--ready-file", p(&sim_ready)])
            .stdout(Stdio::null())
            .stdin(Stdio::null()),
    )
    .expect("simulator starts");
    harness::wait_ready_json(&sim_ready, WAIT).expect("simulator ready");

    let keys = dir.join("keys");
    run_ok(
        "outpost-agent",
        &["keygen", "--out", p(&keys), "--agent", "gw-rtu"],
    );
    let db = dir.join("cmdb.sqlite");
    run_ok(
        "outpost-collector",
        &[
            "enroll",
            "--db",
            p(&db),
            "--zone",
            "cell-rtu",
            "--key",
            p(&keys.join("agent.pub")),
        ],
    );
    let ready = dir.join("collector.ready");
    let _collector = ChildGuard::spawn(
        "outpost-collector",
        Command::new(bin("outpost-collector"))
            .args([
                "serve",
                "--db",
                p(&db),
                "--diode-listen",
                "127.0.0.1:0",
                "--ready-file",
                p(&ready),
            ])
            .stdin(Stdio::null()),
    )
    .expect("collector starts");
    let listen = harness::wait_ready_file(&ready, WAIT)
        .expect("collector ready")
        .trim()
        .parse()
        .expect("ready file holds an address");

    let state = dir.join("state");
    let key_file = keys.join("agent.key");
    let setup = AgentSetup::new("gw-rtu", "cell-rtu", &state, &key_file, listen);
    let mut config = agent_config(&setup, &[]);
    config.push_str(&format!(
        "\n[[serial_bus]]\npath = {:?}\nbaud = 19200\ntimeout = \"1s\"\n",
        p(&pair.a)
    ));
    for spec in rtu_line() {
        config.push_str(&format!(
            "\n[[serial_bus.device]]\nname = {:?}\nunit = {}\nblocks = [{{ name = \"config\", kind = \"holding\", start = {CONFIG_START}, count = 3 }}]\n",
            spec.name, spec.unit_ids[0]
        ));
    }
    let config_path = dir.join("agent.toml");
    std::fs::write(&config_path, config).expect("write config");
    run_ok(
        "outpost-agent",
        &["run", "--config", p(&config_path), "--once"],
    );

    let mut assets = Value::Null;
    let found = harness::wait_for(WAIT, || {
        let text = run_ok("outpost-collector", &["assets", "--db", p(&db), "--json"]);
        assets = serde_json::from_str(&text).ok()?;
        (assets["assets"].as_array().map_or(0, Vec::len) == 3).then_some(())
    });
    assert!(found.is_some(), "three RTU assets in the CMDB: {assets:#}");
    for spec in rtu_line() {
        let row = assets["assets"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["name"] == spec.name.as_str()))
            .unwrap_or_else(|| panic!("{} missing: {assets:#}", spec.name));
        assert_eq!(row["endpoint"], format!("rtu://{}", p(&pair.a)), "{row:#}");
        assert_eq!(row["unit_id"], spec.unit_ids[0]);
        assert_eq!(row["status"], "ok", "{row:#}");
        if spec.behaviour == Behaviour::NoDeviceId {
            assert_eq!(row["ident_method"], "report_server_id", "{row:#}");
        } else {
            assert_eq!(row["ident_method"], "read_device_identification");
            assert_eq!(row["vendor_name"], spec.identity.vendor_name.as_str());
            assert_eq!(row["product_code"], spec.identity.product_code.as_str());
            assert_eq!(row["revision"], spec.identity.revision.as_str());
        }
    }
    drop(pair);
}

#[tokio::test]
async fn a_missing_serial_port_makes_its_devices_unreachable_with_the_reason() {
    let dir = harness::temp_dir("rtu-missing").expect("temp dir");
    let path = dir.path().join("ttyNOPE");
    let obs = poll_bus(&line_bus(&path), Duration::ZERO).await;
    assert_eq!(obs.len(), 3);
    for o in &obs {
        let PollStatus::Unreachable(why) = &o.status else {
            panic!("{o:#?}");
        };
        assert!(
            why.contains(&format!("cannot open serial port {}", path.display())),
            "{why}"
        );
        assert!(why.contains("dialout"), "{why}");
    }
}
