//! Discovery in `run`, end to end: the plant simulator serves the default plant on consecutive
//! loopback addresses (one port, real TCP), an `outpost-agent run --once` process whose config
//! holds a `[[discover]]` range (and one explicit device inside it) sends its summary over real
//! UDP to an `outpost-collector serve` process writing a real SQLite file, read back through
//! `outpost-collector assets --json`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use outpost_testbed::harness::{self, ChildGuard};
use outpost_testbed::scenario::{AgentSetup, PlantDevice, agent_config};
use outpost_testbed::sim::{Behaviour, CONFIG_START, PROCESS_START, Plant, READ_ONLY_FCS};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
/// Where the built-in Janitza profile reads the firmware version (holding 200, one word).
const JANITZA_FIRMWARE_REGISTER: u16 = 200;

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

fn start_collector(dir: &Path, db: &Path) -> (ChildGuard, SocketAddr) {
    harness::start_diode_collector(dir, db, &[], WAIT)
}

fn values(block: &Value) -> Vec<u64> {
    block["values"]
        .as_array()
        .expect("values")
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}

fn block<'a>(row: &'a Value, name: &str) -> Option<&'a Value> {
    row["blocks"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == name))
}

fn block_names(row: &Value) -> Vec<String> {
    let mut names: Vec<String> = row["blocks"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(|b| b["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_discover_range_reaches_the_cmdb_with_identities_and_profile_blocks() {
    let dir = harness::temp_dir("e2e-discover").expect("temp dir");
    let dir = dir.path();

    // The default plant (one of each built-in profile's kind), on 127.0.94.1..=5, one port.
    // The Janitza meter (no FC 43) also serves its firmware version where its profile reads it.
    let mut specs = outpost_testbed::sim::default_plant();
    let meter = specs
        .iter_mut()
        .find(|s| s.behaviour == Behaviour::NoDeviceId)
        .expect("the default plant has an FC 17-only meter");
    meter.holding.push((JANITZA_FIRMWARE_REGISTER, vec![231]));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let plant = runtime
        .block_on(Plant::start_on_addresses(
            specs.clone(),
            Ipv4Addr::new(127, 0, 94, 1),
            0,
        ))
        .expect("plant starts");
    let sim = plant.devices();
    let port = sim[0].addr.port();

    let keys = dir.join("keys");
    run_ok(
        "outpost-agent",
        &["keygen", "--out", path(&keys), "--agent", "gw-disc"],
    );
    let db = dir.join("cmdb.sqlite");
    run_ok(
        "outpost-collector",
        &[
            "enroll",
            "--db",
            path(&db),
            "--zone",
            "cell-disc",
            "--key",
            path(&keys.join("agent.pub")),
        ],
    );
    let (mut collector, listen) = start_collector(dir, &db);

    // One explicit device inside the range (the mixer, unit 1, two setpoints), then the range.
    let state = dir.join("state");
    let key_file = keys.join("agent.key");
    let mut setup = AgentSetup::new("gw-disc", "cell-disc", &state, &key_file, listen);
    setup.request_timeout = Duration::from_millis(1500);
    let mixer = PlantDevice {
        name: "mixer-explicit".into(),
        addr: sim[0].addr,
        unit_ids: vec![1],
        holding: vec![(CONFIG_START, 2)],
        process: vec![],
    };
    let mut text = agent_config(&setup, &[mixer]);
    text.push_str(&format!(
        "\n[[discover]]\nranges = [\"127.0.94.0/28\"]\nport = {port}\nunit_ids = [1, 2, 3]\nmax_connections = 4\n"
    ));
    let config = dir.join("agent.toml");
    std::fs::write(&config, &text).expect("write config");
    let check = run_ok(
        "outpost-agent",
        &["check-config", "--config", path(&config)],
    );
    assert!(
        check.contains("discover 127.0.94.0/28 (14 addresses)"),
        "{check}"
    );
    run_ok(
        "outpost-agent",
        &["run", "--config", path(&config), "--once"],
    );

    // The mixer once (explicit), the press gateway's two units, the drive, the coupler, the meter.
    let expected: usize = specs.iter().map(|s| s.unit_ids.len()).sum();
    let assets = harness::wait_for(WAIT, || {
        let a = collector_json("assets", &db);
        (a["assets"].as_array().map_or(0, Vec::len) >= expected).then_some(a)
    })
    .unwrap_or_else(|| panic!("{expected} assets never reached the CMDB"));
    let rows = assets["assets"].as_array().expect("assets");
    assert_eq!(rows.len(), expected, "{assets:#}");

    // Which profile each simulated device's kind gets, and its blocks (configuration first).
    let profile_blocks = |vendor: &str| -> (&str, Vec<&str>, u16) {
        match vendor {
            "Siemens" => ("siemens-s7-1200", vec!["config", "process"], 6),
            "ABB" => ("abb-acs-drive", vec!["config", "process"], 6),
            "Phoenix Contact" => ("phoenix-bus-coupler", vec!["config", "inputs"], 3),
            "Janitza electronics" => ("janitza-umg", vec!["config", "process"], 4),
            other => panic!("no profile expected for {other}"),
        }
    };
    for (i, spec) in specs.iter().enumerate() {
        let addr = sim[i].addr;
        for &unit in &spec.unit_ids {
            let row = rows
                .iter()
                .find(|r| r["endpoint"] == format!("tcp://{addr}") && r["unit_id"] == unit)
                .unwrap_or_else(|| {
                    panic!("{} unit {unit} at {addr} missing: {assets:#}", spec.name)
                });
            assert_eq!(row["status"], "ok", "{row:#}");
            let id = &spec.identity;
            let (start, config_values) = &spec.holding[0];
            assert_eq!(*start, CONFIG_START);
            if i == 0 {
                // The explicit device wins: its name, its one block, no profile blocks.
                assert_eq!(row["name"], "mixer-explicit");
                assert_eq!(block_names(row), vec!["config-100".to_owned()], "{row:#}");
                let b = block(row, "config-100").expect("explicit block");
                assert_eq!(
                    values(b),
                    config_values[..2]
                        .iter()
                        .map(|v| u64::from(*v))
                        .collect::<Vec<_>>()
                );
                assert_eq!(row["vendor_name"], id.vendor_name.as_str());
                continue;
            }
            assert_eq!(row["name"], format!("discovered-{addr}"));
            let (_profile, names, config_count) = profile_blocks(&id.vendor_name);
            let mut want_names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            want_names.sort();
            assert_eq!(block_names(row), want_names, "{}: {row:#}", spec.name);
            // The configuration block holds the device's exact registers.
            let b = block(row, "config").expect("config block");
            assert_eq!(b["start"], CONFIG_START);
            let want: Vec<u64> = config_values[..usize::from(config_count)]
                .iter()
                .map(|v| u64::from(*v))
                .collect();
            assert_eq!(values(b), want, "{}", spec.name);
            let process = block(row, names[1]).expect("volatile block");
            assert!(!values(process).is_empty());
            if names[1] == "process" {
                assert_eq!(process["start"], PROCESS_START);
            }
            if spec.behaviour == Behaviour::NoDeviceId {
                assert_eq!(row["ident_method"], "report_server_id", "{row:#}");
                // FC 17 gives no revision: the profile's firmware register did.
                assert_eq!(row["revision"], "231", "{row:#}");
                continue;
            }
            assert_eq!(row["ident_method"], "read_device_identification");
            assert_eq!(row["vendor_name"], id.vendor_name.as_str());
            assert_eq!(row["product_code"], id.product_code.as_str());
            assert_eq!(row["revision"], id.revision.as_str());
            assert_eq!(row["model_name"].as_str(), id.model_name.as_deref());
            assert_eq!(row["product_name"].as_str(), id.product_name.as_deref());
        }
    }

    // Only read function codes reached the plant.
    for i in 0..specs.len() {
        for fc in plant.function_codes_seen(i).keys() {
            assert!(READ_ONLY_FCS.contains(fc), "device {i} saw FC {fc}");
        }
    }

    collector
        .stop(Duration::from_secs(5))
        .expect("collector stops");
    runtime.block_on(plant.stop());
}

/// The sweep schedule against real sockets: the first cycle sweeps, found devices are polled
/// until their section's next sweep, which drops what no longer answers; unit 0 never leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn found_devices_last_until_the_next_sweep() {
    use outpost_agent::config::Config;
    use outpost_agent::discovery::running::Discovery;
    use outpost_agent::modbus::read_only::Timing;

    let specs: Vec<_> = outpost_testbed::sim::default_plant()
        .into_iter()
        .take(2)
        .collect();
    let plant = Plant::start_on_addresses(specs, Ipv4Addr::new(127, 0, 96, 1), 0)
        .await
        .expect("plant starts");
    let port = plant.devices()[0].addr.port();
    let config = Config::parse(
        &format!(
            "agent_id = \"gw\"\nzone = \"z\"\nstate_dir = \"s\"\nkey_file = \"k\"\n\n[diode]\ntarget = \"127.0.0.1:9\"\n\n[[discover]]\nranges = [\"127.0.96.0/29\"]\nport = {port}\nunit_ids = [1, 2, 3]\nevery = 3\nmax_connections = 2\n"
        ),
        "/tmp/agent.toml",
    )
    .expect("config");
    let timing = Timing {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(1000),
        min_request_gap: Duration::from_millis(5),
    };
    let mut discovery = Discovery::new(config.discover.clone());
    let units = |d: &Discovery| -> Vec<(String, Vec<u8>)> {
        d.devices(&[])
            .iter()
            .map(|d| (d.address.to_string(), d.unit_ids.clone()))
            .collect()
    };
    let first = discovery.start_cycle(timing).await;
    assert_eq!(first.sections, 1);
    assert_eq!(first.addresses, 6);
    assert_eq!(first.devices, 2);
    // The mixer (unit 1) and the press gateway (units 1 and 2; unit 3 is absent).
    let found = vec![
        (format!("127.0.96.1:{port}"), vec![1]),
        (format!("127.0.96.2:{port}"), vec![1, 2]),
    ];
    assert_eq!(units(&discovery), found);
    let fcs_after_sweep: Vec<_> = (0..2).map(|i| plant.function_codes_seen(i)).collect();
    for fcs in &fcs_after_sweep {
        assert!(fcs.keys().all(|fc| [0x11, 0x2B].contains(fc)), "{fcs:?}");
    }

    plant.stop().await;
    // Cycles 1 and 2 do not sweep: the devices stay (their polls will say unreachable).
    for _ in 0..2 {
        assert_eq!(
            discovery.start_cycle(timing).await,
            Default::default(),
            "no sweep between"
        );
        assert_eq!(units(&discovery), found);
    }
    // Cycle 3 sweeps again and finds nothing.
    let again = discovery.start_cycle(timing).await;
    assert_eq!((again.sections, again.devices), (1, 0));
    assert!(units(&discovery).is_empty());
}
