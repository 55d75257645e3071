//! Exports for ITSM tools from a real run: `outpost-sim` → `outpost-agent` → real UDP →
//! `outpost-collector serve` → a real SQLite file → `outpost-collector export` (ServiceNow IRE,
//! CSV, CycloneDX), each checked: the CycloneDX BOM against the official 1.6 JSON schema
//! (vendored in tests/data/cyclonedx, validated offline), the IRE payload's documented shape.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

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

fn schema_validator() -> jsonschema::Validator {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cyclonedx");
    let load = |name: &str| -> Value {
        serde_json::from_slice(&std::fs::read(dir.join(name)).expect("schema file"))
            .expect("schema JSON")
    };
    let registry = jsonschema::Registry::new()
        .add(
            "http://cyclonedx.org/schema/spdx.SNAPSHOT.schema.json",
            load("spdx.schema.json"),
        )
        .expect("spdx")
        .add(
            "http://cyclonedx.org/schema/jsf-0.82.SNAPSHOT.schema.json",
            load("jsf-0.82.schema.json"),
        )
        .expect("jsf")
        .prepare()
        .expect("registry");
    jsonschema::options()
        .with_registry(&registry)
        .should_validate_formats(true)
        .build(&load("bom-1.6.schema.json"))
        .expect("CycloneDX 1.6 schema compiles")
}

fn schema_errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn exports_from_a_real_run_match_their_schemas() {
    let tmp = harness::temp_dir("e2e-export").expect("temp dir");
    let dir = tmp.path();
    let sim_ready = dir.join("sim.json");
    let mut sim = ChildGuard::spawn(
        "outpost-sim",
        Command::new(bin("outpost-sim"))
            .args(["--bind", "127.0.9.1", "--ready-file", path(&sim_ready)])
            .stdout(Stdio::null())
            .stdin(Stdio::null()),
    )
    .expect("simulator starts");
    let plant = harness::wait_ready_json(&sim_ready, WAIT).expect("simulator ready");
    let devices = devices_from_sim_json(&plant).expect("simulator JSON");
    let keys = dir.join("keys");
    run_ok(
        "outpost-agent",
        &["keygen", "--out", path(&keys), "--agent", "gw-x"],
    );
    let db = dir.join("cmdb.sqlite");
    run_ok(
        "outpost-collector",
        &[
            "enroll",
            "--db",
            path(&db),
            "--zone",
            "cell-x",
            "--key",
            path(&keys.join("agent.pub")),
        ],
    );
    let (mut collector, listen) = start_collector(dir, &db);
    let state = dir.join("state");
    let key_file = keys.join("agent.key");
    let setup = AgentSetup::new("gw-x", "cell-x", &state, &key_file, listen);
    let config = dir.join("agent.toml");
    std::fs::write(&config, agent_config(&setup, &devices)).expect("write config");
    run_ok(
        "outpost-agent",
        &["run", "--config", path(&config), "--once"],
    );
    let units: usize = default_plant().iter().map(|d| d.unit_ids.len()).sum();
    wait_db("the summary", || {
        collector_json("assets", &db)["assets"]
            .as_array()
            .map_or(0, Vec::len)
            == units
    });
    collector
        .stop(Duration::from_secs(5))
        .expect("collector stops");
    sim.stop(Duration::from_secs(5)).expect("simulator stops");
    let assets = collector_json("assets", &db);

    let export = |format: &str, name: &str| -> PathBuf {
        let out = dir.join(name);
        run_ok(
            "outpost-collector",
            &[
                "export",
                "--db",
                path(&db),
                "--format",
                format,
                "--out",
                path(&out),
            ],
        );
        out
    };

    // CycloneDX: valid against the official schema; a device per unit plus the gateway;
    // firmware nested with the exact revision.
    let bom: Value =
        serde_json::from_slice(&std::fs::read(export("cyclonedx", "bom.json")).expect("bom"))
            .expect("BOM JSON");
    let validator = schema_validator();
    let errors = schema_errors(&validator, &bom);
    assert!(errors.is_empty(), "CycloneDX schema errors: {errors:#?}");
    // The validator is not a rubber stamp: a BOM with a bad component type fails.
    let mut broken = bom.clone();
    broken["components"][0]["type"] = Value::from("plc");
    assert!(!schema_errors(&validator, &broken).is_empty());
    let components = bom["components"].as_array().expect("components");
    assert_eq!(components.len(), units + 1);
    for a in assets["assets"].as_array().expect("assets") {
        let c = components
            .iter()
            .find(|c| c["bom-ref"] == a["ci_key"])
            .unwrap_or_else(|| panic!("{} missing from the BOM", a["ci_key"]));
        assert_eq!(c["type"], "device");
        if let Some(rev) = a["revision"].as_str() {
            assert_eq!(c["components"][0]["type"], "firmware");
            assert_eq!(c["components"][0]["version"], rev);
            assert_eq!(c["manufacturer"]["name"], a["vendor_name"]);
        }
    }

    // ServiceNow IRE: the documented shape, one item per CI, devices related to the gateway,
    // firmware as cmdb_firmware_install.
    let ire: Value =
        serde_json::from_slice(&std::fs::read(export("servicenow-ire", "ire.json")).expect("ire"))
            .expect("IRE JSON");
    outpost_collector::export::servicenow::check_shape(&ire).expect("IRE shape");
    let items = ire["items"].as_array().expect("items");
    assert_eq!(items.len(), units + 1);
    assert!(
        items[0]["className"] == "cmdb_ci_linux_server"
            || items[0]["className"] == "cmdb_ci_computer"
    );
    let ot: Vec<&Value> = items
        .iter()
        .filter(|i| {
            i["className"]
                .as_str()
                .is_some_and(|c| c.starts_with("cmdb_ci_ot_"))
        })
        .collect();
    assert_eq!(ot.len(), units);
    for i in &ot {
        assert_eq!(i["sys_object_source_info"]["source_name"], "Outpost");
        let key = i["sys_object_source_info"]["source_native_key"]
            .as_str()
            .expect("key");
        // The coupler gives a serial number its profile names: keyed by it (README "CI identity").
        assert!(
            key.starts_with("zone/cell-x/modbus/tcp://127.0.9.")
                || (key == "zone/cell-x/serial/Phoenix Contact/2703981/SN 1234567"
                    && i["values"]["serial_number"] == "SN 1234567"),
            "{key}"
        );
        let ts = i["sys_object_source_info"]["source_recency_timestamp"]
            .as_str()
            .expect("ts");
        assert_eq!(ts.len(), 19, "yyyy-MM-dd HH:mm:ss: {ts}");
        if let Some(fw) = i["values"]["firmware_version"].as_str() {
            assert_eq!(i["related"][0]["className"], "cmdb_firmware_install");
            assert_eq!(i["related"][0]["values"]["version"], fw);
        }
    }
    assert_eq!(ire["relations"].as_array().expect("relations").len(), units);
    assert!(
        ire["relations"]
            .as_array()
            .expect("relations")
            .iter()
            .all(|r| r["parent"] == 0)
    );

    // CSV: a header and one row per CI, parsed back by a CSV reader.
    let csv_text = std::fs::read_to_string(export("csv", "cis.csv")).expect("csv");
    let lines: Vec<&str> = csv_text.lines().collect();
    assert!(
        lines[0].starts_with("ci_key,class,zone,agent_id,name,endpoint"),
        "{}",
        lines[0]
    );
    assert_eq!(lines.len(), units + 2, "{csv_text}");
    assert!(csv_text.contains("firmware_revision"));

    // --zone limits the export; an unknown zone exports nothing.
    let none = dir.join("none.csv");
    run_ok(
        "outpost-collector",
        &[
            "export",
            "--db",
            path(&db),
            "--format",
            "csv",
            "--zone",
            "nowhere",
            "--out",
            path(&none),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(&none).expect("csv").lines().count(),
        1
    );
}
