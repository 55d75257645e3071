//! Discovery and full identification against the plant simulator over real TCP on loopback:
//! FC 43 faults, busy and silent devices through the agent's read-only client, and the
//! `outpost-agent scan` binary sweeping a loopback range.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outpost_agent::discovery::scan::{Budget, Outcome, scan_address};
use outpost_agent::modbus::identify::{MAX_PAGES, identify};
use outpost_agent::modbus::read_only::{ReadOnlyClient, Timing};
use outpost_proto::model::IdentMethod;
use outpost_testbed::harness::{self, ChildGuard};
use outpost_testbed::sim::{
    Behaviour, DeviceSpec, Fc43Fault, Plant, READ_ONLY_FCS, generated_plant, varied_plant,
};

fn timing() -> Timing {
    Timing {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(400),
        min_request_gap: Duration::from_millis(5),
    }
}

fn device(behaviour: Behaviour) -> DeviceSpec {
    let mut d = generated_plant(1).remove(0);
    d.behaviour = behaviour;
    d
}

/// Starts one device, identifies unit 1, returns what came back and the FCs the device saw.
async fn identify_one(
    spec: DeviceSpec,
) -> (
    outpost_agent::modbus::identify::Identified,
    BTreeMap<u8, u64>,
    DeviceSpec,
) {
    let plant = Plant::start_local(vec![spec.clone()]).await.unwrap();
    let addr = plant.devices()[0].addr;
    let mut client = ReadOnlyClient::connect(addr, 1, timing()).await.unwrap();
    let ident = tokio::time::timeout(Duration::from_secs(20), identify(&mut client))
        .await
        .expect("identification is bounded in time");
    client.disconnect().await;
    let fcs = plant.function_codes_seen(0);
    plant.stop().await;
    (ident, fcs, spec)
}

#[tokio::test]
async fn extended_stream_gives_private_objects_in_one_request() {
    // generated_plant(1)'s device 0 has a private object 0x80 (a serial number).
    let (ident, fcs, spec) = identify_one(device(Behaviour::Normal)).await;
    assert_eq!(ident.how, "fc43 extended stream");
    assert_eq!(ident.identity.method, IdentMethod::ReadDeviceIdentification);
    assert_eq!(ident.conformity, Some(0x83));
    assert_eq!(
        ident.identity.vendor_name.as_deref(),
        Some(spec.identity.vendor_name.as_str())
    );
    assert_eq!(ident.identity.other[&0x80], spec.identity.extra[0].1);
    assert!(ident.problems.is_empty(), "{:?}", ident.problems);
    assert_eq!(fcs, BTreeMap::from([(0x2B, 1)]));
}

#[tokio::test]
async fn malformed_answers_fall_back_to_report_server_id() {
    for fault in [Fc43Fault::WrongCount, Fc43Fault::Truncated] {
        let (ident, fcs, _) = identify_one(device(Behaviour::BadFc43(fault))).await;
        assert_eq!(ident.how, "fc17 report server id", "{fault:?}");
        assert_eq!(ident.identity.method, IdentMethod::ReportServerId);
        assert!(
            ident.problems.iter().any(|p| p.contains("malformed")),
            "{fault:?}: {:?}",
            ident.problems
        );
        // Three streams, the first individual request (malformed too: stop), then FC 17.
        assert_eq!(fcs.get(&0x2B), Some(&4), "{fault:?}");
        assert_eq!(fcs.get(&0x11), Some(&1), "{fault:?}");
    }
}

#[tokio::test]
async fn invalid_utf8_is_replaced_not_refused() {
    let (ident, _, spec) = identify_one(device(Behaviour::BadFc43(Fc43Fault::InvalidUtf8))).await;
    assert_eq!(ident.how, "fc43 extended stream");
    assert_eq!(
        ident.identity.vendor_name,
        Some(format!("\u{FFFD}\u{FFFD}{}", spec.identity.vendor_name))
    );
}

#[tokio::test]
async fn endless_more_follows_stops_after_the_page_bound() {
    let (ident, fcs, _) =
        identify_one(device(Behaviour::BadFc43(Fc43Fault::EndlessMoreFollows))).await;
    assert_eq!(fcs.get(&0x2B), Some(&(MAX_PAGES as u64)));
    assert!(
        ident
            .problems
            .iter()
            .any(|p| p.contains("extended stream") && p.contains("still more objects")),
        "{:?}",
        ident.problems
    );
    assert_eq!(ident.how, "fc43 extended stream");
}

#[tokio::test]
async fn individual_access_when_streams_are_refused() {
    let (ident, fcs, spec) =
        identify_one(device(Behaviour::BadFc43(Fc43Fault::IndividualOnly))).await;
    assert_eq!(ident.how, "fc43 individual");
    assert_eq!(
        ident.identity.revision.as_deref(),
        Some(spec.identity.revision.as_str())
    );
    assert_eq!(
        ident.identity.model_name.as_deref(),
        spec.identity.model_name.as_deref()
    );
    // Three refused streams, then objects 0x00..=0x06 one by one.
    assert_eq!(fcs.get(&0x2B), Some(&10));
    assert!(ident.problems.is_empty(), "{:?}", ident.problems);
}

#[tokio::test]
async fn fewer_objects_are_completed_individually() {
    let (ident, fcs, spec) =
        identify_one(device(Behaviour::BadFc43(Fc43Fault::FewerObjects))).await;
    assert_eq!(ident.how, "fc43 extended stream + individual");
    assert_eq!(
        ident.identity.revision.as_deref(),
        Some(spec.identity.revision.as_str())
    );
    // generated device 0 has no model-less gap except 0x02 (and 0x06 is present for i = 0).
    assert_eq!(fcs.get(&0x2B), Some(&2));
}

#[tokio::test]
async fn busy_device_is_waited_for() {
    let (ident, fcs, _) = identify_one(device(Behaviour::Busy(2))).await;
    assert_eq!(ident.how, "fc43 extended stream");
    // Two busy answers and the one that worked: all FC 43, same request retried.
    assert_eq!(fcs, BTreeMap::from([(0x2B, 3)]));
}

#[tokio::test]
async fn busy_back_off_is_counted_and_timed() {
    let plant = Plant::start_local(vec![device(Behaviour::Busy(2))])
        .await
        .unwrap();
    let addr = plant.devices()[0].addr;
    let started = Instant::now();
    let r = scan_address(
        addr,
        &[1],
        Budget {
            max_connections: 1,
            timing: timing(),
        },
    )
    .await;
    let took = started.elapsed();
    plant.stop().await;
    assert_eq!(r.outcome, Outcome::Answered);
    assert_eq!(r.busy_backoffs, 2);
    // 0.5 s, then 1 s.
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn silent_device_costs_a_bounded_time() {
    let plant = Plant::start_local(vec![device(Behaviour::Silent)])
        .await
        .unwrap();
    let addr = plant.devices()[0].addr;
    let t = timing();
    let started = Instant::now();
    let r = scan_address(
        addr,
        &[1, 2, 3, 255],
        Budget {
            max_connections: 1,
            timing: t,
        },
    )
    .await;
    let took = started.elapsed();
    plant.stop().await;
    assert_eq!(r.outcome, Outcome::Silent);
    // FC 43 extended, then FC 17; the other unit ids are not asked.
    assert_eq!(r.requests, 2);
    assert!(took >= t.request_timeout * 2, "{took:?}");
    assert!(
        took < t.request_timeout * 2 + Duration::from_secs(1),
        "{took:?}"
    );
}

#[tokio::test]
async fn gateway_units_are_all_found_and_absent_ones_skipped() {
    let mut spec = device(Behaviour::Normal);
    spec.unit_ids = vec![1, 2, 3];
    let plant = Plant::start_local(vec![spec]).await.unwrap();
    let addr = plant.devices()[0].addr;
    let r = scan_address(
        addr,
        &[1, 2, 3, 4, 255],
        Budget {
            max_connections: 1,
            timing: timing(),
        },
    )
    .await;
    plant.stop().await;
    let units: Vec<u8> = r.units.iter().map(|u| u.unit_id).collect();
    assert_eq!(units, vec![1, 2, 3]);
    // One FC 43 each for 1..3; units 4 and 255 get exception 0x0B once each.
    assert_eq!(r.requests, 5);
}

/// Runs `outpost-agent` with `args`, stdout to a file; returns (success, stdout, stderr).
async fn agent(args: Vec<String>, dir: &std::path::Path) -> (bool, String, String) {
    let bin = harness::binary("outpost-agent").expect("build outpost-agent first");
    let out = dir.join("stdout");
    let err = dir.join("stderr");
    let (out2, err2) = (out.clone(), err.clone());
    let status = tokio::task::spawn_blocking(move || {
        let mut child = ChildGuard::spawn(
            "outpost-agent scan",
            Command::new(bin)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&out2).unwrap())
                .stderr(std::fs::File::create(&err2).unwrap()),
        )
        .unwrap();
        child.wait_timeout(Duration::from_secs(60)).unwrap()
    })
    .await
    .unwrap();
    (
        status.success(),
        std::fs::read_to_string(out).unwrap_or_default(),
        std::fs::read_to_string(err).unwrap_or_default(),
    )
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_sweeps_a_loopback_range_read_only_within_the_budget() {
    // 40 devices on 127.0.91.1..=40 of a /26 (62 hosts): 22 addresses refuse.
    let silent = [5usize];
    let specs = varied_plant(40, &silent);
    let plant = Plant::start_on_addresses(specs.clone(), Ipv4Addr::new(127, 0, 91, 1), 0)
        .await
        .unwrap();
    let port = plant.devices()[0].addr.port();
    let dir = harness::temp_dir("scan").unwrap();
    let config = dir.path().join("starter.toml");
    let rate = 40.0;
    let (ok, stdout, stderr) = agent(
        vec![
            "scan".into(),
            "127.0.91.0/26".into(),
            "--port".into(),
            port.to_string(),
            "--units".into(),
            "1,2,3".into(),
            "--rate".into(),
            rate.to_string(),
            "--timeout".into(),
            "500ms".into(),
            "--max-connections".into(),
            "8".into(),
            "--json".into(),
            "--write-config".into(),
            config.display().to_string(),
        ],
        dir.path(),
    )
    .await;
    assert!(ok, "scan failed: {stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["schema"], "outpost.scan.v1");
    let totals = &doc["totals"];
    assert_eq!(totals["addresses"], 62);
    assert_eq!(totals["answered"], 39);
    assert_eq!(totals["silent"], 1);
    assert_eq!(totals["refused"], 22);
    let want_units: usize = specs
        .iter()
        .enumerate()
        .filter(|(i, _)| !silent.contains(i))
        .map(|(_, d)| d.unit_ids.len())
        .sum();
    assert_eq!(totals["unit_ids"], want_units);

    let devices = doc["devices"].as_array().unwrap();
    let gap_ms = 1000.0 / rate;
    for d in devices {
        // Requests per device never beat the rate: (n - 1) gaps fit in the elapsed time.
        let n = d["requests"].as_u64().unwrap();
        let elapsed = d["elapsed_ms"].as_f64().unwrap();
        assert!(
            (n.saturating_sub(1)) as f64 * gap_ms <= elapsed + 1.0,
            "{d}: {n} requests in {elapsed} ms"
        );
        // Bounded work per unit: at most 3 streams x 16 pages + 7 + 1 per unit id.
        assert!(n <= 3 * (3 * 16 + 8), "{d}");
    }
    let by_addr = |i: usize| {
        let a = format!("127.0.91.{}:{port}", i + 1);
        devices
            .iter()
            .find(|d| d["address"] == a.as_str())
            .unwrap_or_else(|| panic!("{a} missing"))
            .clone()
    };
    // Device 7 is a gateway with three units; device 9 has no FC 43; device 11 was busy.
    assert_eq!(by_addr(7)["units"].as_array().unwrap().len(), 3);
    assert_eq!(by_addr(9)["units"][0]["method"], "fc17 report server id");
    assert_eq!(by_addr(11)["busy_backoffs"], 2);
    assert_eq!(by_addr(5)["outcome"], "silent");
    assert_eq!(
        by_addr(0)["units"][0]["identity"]["other"]["0x80"],
        "SN 1000000"
    );
    // Device 17 garbles FC 43 (wrong object count): identified by FC 17, problem noted.
    assert_eq!(by_addr(17)["units"][0]["method"], "fc17 report server id");
    assert!(
        !by_addr(17)["units"][0]["problems"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{}",
        by_addr(17)
    );
    assert_eq!(
        by_addr(16)["units"][0]["identity"]["vendor_name"],
        specs[16].identity.vendor_name.as_str()
    );

    // Only identification function codes reached any device: 43 and 17.
    for i in 0..specs.len() {
        for fc in plant.function_codes_seen(i).keys() {
            assert!(READ_ONLY_FCS.contains(fc), "device {i} saw FC {fc}");
            assert!([0x11, 0x2B].contains(fc), "device {i} saw FC {fc}");
        }
    }

    // The starter config parses and lists every answering address with its unit ids.
    let text = std::fs::read_to_string(&config).unwrap();
    let c = outpost_agent::Config::parse(&text, &config).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(c.devices.len(), 39);
    let gw = c
        .devices
        .iter()
        .find(|d| d.address.host == "127.0.91.8")
        .unwrap();
    assert_eq!(gw.unit_ids, vec![1, 2, 3]);
    // Device 0 imitates a Modicon M241: its profile's configuration block was written for it.
    assert_eq!(by_addr(0)["units"][0]["profile"], "schneider-modicon-m2xx");
    let m241 = c
        .devices
        .iter()
        .find(|d| d.address.host == "127.0.91.1")
        .unwrap();
    let blocks: Vec<(&str, bool)> = m241
        .blocks
        .iter()
        .map(|b| (b.name.as_str(), b.volatile))
        .collect();
    assert_eq!(blocks, vec![("config", false), ("process", true)]);
    // Never overwritten.
    let (ok, _, stderr) = agent(
        s(&[
            "scan",
            "127.0.91.1",
            "--port",
            &port.to_string(),
            "--write-config",
            &config.display().to_string(),
        ]),
        dir.path(),
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("exists"), "{stderr}");
    plant.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_prints_a_table() {
    let plant = Plant::start_on_addresses(generated_plant(3), Ipv4Addr::new(127, 0, 92, 1), 0)
        .await
        .unwrap();
    let port = plant.devices()[0].addr.port();
    let dir = harness::temp_dir("scan-table").unwrap();
    let (ok, stdout, stderr) = agent(
        s(&["scan", "127.0.92.0/29", "--port", &port.to_string()]),
        dir.path(),
    )
    .await;
    plant.stop().await;
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("ADDRESS"), "{stdout}");
    assert!(stdout.contains("Schneider Electric"), "{stdout}");
    assert!(stdout.contains("fc43 extended stream"), "{stdout}");
    assert!(stdout.contains("6 addresses in"), "{stdout}");
    assert!(stdout.contains("3 answered"), "{stdout}");
    // Not a terminal: no progress bar escape codes anywhere.
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
}

#[tokio::test]
async fn bad_targets_are_refused_with_a_clear_message() {
    let dir = harness::temp_dir("scan-bad").unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["scan", "10.0.0.0/8"], "--force"),
        (&["scan", "10.0.0.0/24", "--units", "0,1"], "broadcast"),
        (&["scan", "10.0.0/24"], "CIDR"),
        (
            &["scan", "10.0.0.0/24", "--max-connections", "0"],
            "--max-connections",
        ),
    ];
    for (args, want) in cases {
        let started = Instant::now();
        let (ok, _, stderr) = agent(s(args), dir.path()).await;
        assert!(!ok, "{args:?}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        // Refused before any connection attempt.
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[tokio::test]
async fn slow_answers_widen_the_gap() {
    // Answers after 300 ms with a 400 ms timeout: over half the timeout, so the gap doubles
    // (from 5 ms to at least the 100 ms floor) after each slow answer.
    let mut spec = device(Behaviour::Slow(Duration::from_millis(300)));
    spec.unit_ids = vec![1, 2];
    let plant = Plant::start_local(vec![spec]).await.unwrap();
    let addr = plant.devices()[0].addr;
    let r = scan_address(
        addr,
        &[1, 2],
        Budget {
            max_connections: 1,
            timing: timing(),
        },
    )
    .await;
    plant.stop().await;
    assert_eq!(r.outcome, Outcome::Answered);
    assert_eq!(r.units.len(), 2);
    assert!(r.final_gap_ms >= 200, "{r:?}");
}
