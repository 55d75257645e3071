//! The gateway's self-inventory on real SQLite files: listening sockets and program
//! executables stored as gateway CI attributes with history, and judged against the approved
//! baseline and change records (a port opened, closed or re-owned, a new program: one `gateway`
//! alert; volatile facts, vanished processes, ephemeral UDP ports, switched-off and truncated
//! lists: none).

mod common;

use common::{Fixture, T0, count, gateway, plc};
use outpost_collector::Ingest;
use outpost_collector::cmdb::baseline::Scope;
use outpost_collector::cmdb::change_record::ChangeInput;
use outpost_proto::model::{HostExecutable, HostFacts, HostList, ListeningSocket, SocketProtocol};
use serde_json::{Value, json};

const GW: &str = "gateway/gw-1";

fn tcp(port: u16, exe: &str) -> ListeningSocket {
    ListeningSocket {
        protocol: SocketProtocol::Tcp,
        port,
        address: "0.0.0.0".into(),
        exe: Some(exe.into()),
    }
}

fn udp(port: u16, exe: &str) -> ListeningSocket {
    ListeningSocket {
        protocol: SocketProtocol::Udp,
        ..tcp(port, exe)
    }
}

fn exe(path: &str) -> HostExecutable {
    HostExecutable {
        name: path.rsplit('/').next().unwrap_or(path).into(),
        exe: Some(path.into()),
    }
}

/// A gateway running sshd and a Modbus gateway program, with a resolver's client UDP socket.
fn inventoried() -> HostFacts {
    HostFacts {
        listening: vec![
            tcp(22, "/usr/sbin/sshd"),
            tcp(502, "/usr/bin/plc-gw"),
            udp(45_000, "/usr/lib/systemd/systemd-resolved"),
        ],
        executables: vec![
            exe("/usr/bin/outpost-agent"),
            exe("/usr/bin/plc-gw"),
            exe("/usr/lib/systemd/systemd-resolved"),
            exe("/usr/sbin/cron"),
            exe("/usr/sbin/sshd"),
        ],
        ..gateway()
    }
}

fn apply_gw(f: &mut Fixture, ingest: &mut Ingest, g: HostFacts, at: u64) {
    let mut summary = f.summary(vec![plc(1, vec![1])]);
    summary.gateway = Some(g);
    let wire = f.seal(&summary);
    ingest.envelope(&wire, "127.0.0.1:9", at).expect("applied");
}

fn approve(ingest: &mut Ingest) {
    ingest
        .cmdb_mut()
        .approve_baseline(&Scope::All, "alice", "commissioning", T0)
        .expect("approved");
}

/// (kind, category, severity, changes) of every alert so far.
fn alerts(ingest: &Ingest) -> Vec<(String, String, i64, Value)> {
    ingest
        .cmdb()
        .alerts(None)
        .unwrap()
        .into_iter()
        .map(|a| {
            (
                a.kind,
                a.category,
                a.severity_id,
                a.detail["changes"].clone(),
            )
        })
        .collect()
}

fn gateway_alert(changes: Value) -> (String, String, i64, Value) {
    ("unauthorised_change".into(), "gateway".into(), 4, changes)
}

fn inventory(ingest: &Ingest, name: &str) -> Value {
    let agents = ingest.cmdb().agents().unwrap();
    agents[0]
        .gateway
        .as_ref()
        .expect("gateway CI")
        .inventory
        .get(name)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn ports_and_programs_are_stored_with_history_and_judged() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply_gw(&mut f, &mut ingest, inventoried(), T0 + 1_000);
    assert_eq!(inventory(&ingest, "listening")[1]["port"], 502);
    assert_eq!(
        inventory(&ingest, "executables").as_array().unwrap().len(),
        5
    );
    approve(&mut ingest);

    // Volatile: reboot, memory, a client UDP port on an ephemeral port, a process that stopped.
    let mut noise = inventoried();
    noise.boot_time += 60;
    noise.memory_bytes *= 2;
    noise.listening[2].port = 45_123;
    noise.executables.retain(|e| e.name != "cron");
    apply_gw(&mut f, &mut ingest, noise.clone(), T0 + 2_000);
    assert_eq!(alerts(&ingest), []);

    // A program that was never there opens a port: one alert naming both.
    let mut evil = noise.clone();
    evil.listening.push(tcp(4444, "/tmp/.x/evil"));
    evil.executables.push(exe("/tmp/.x/evil"));
    apply_gw(&mut f, &mut ingest, evil.clone(), T0 + 3_000);
    assert_eq!(
        alerts(&ingest),
        [gateway_alert(json!([
            {"attribute": "executable /tmp/.x/evil", "before": null, "after": "evil"},
            {"attribute": "listening tcp 0.0.0.0:4444", "before": null, "after": "/tmp/.x/evil"},
        ]))]
    );

    // Port 502 taken over by another (already running) program.
    let mut takeover = evil.clone();
    takeover.listening[1].exe = Some("/usr/sbin/sshd".into());
    apply_gw(&mut f, &mut ingest, takeover.clone(), T0 + 4_000);
    // Port 22 closed.
    let mut closed = takeover.clone();
    closed.listening.remove(0);
    apply_gw(&mut f, &mut ingest, closed, T0 + 5_000);
    let got = alerts(&ingest);
    assert_eq!(got.len(), 3, "{got:#?}");
    // each is its own fact, so changes in consecutive polls are separate alerts (not "unstable")
    assert_eq!(
        got[1],
        gateway_alert(json!([{"attribute": "listening tcp 0.0.0.0:502",
            "before": "/usr/bin/plc-gw", "after": "/usr/sbin/sshd"}]))
    );
    assert_eq!(
        got[2],
        gateway_alert(json!([{"attribute": "listening tcp 0.0.0.0:22",
            "before": "/usr/sbin/sshd", "after": null}]))
    );

    // History: every change of the listening list, with its envelope.
    let history = ingest.cmdb().history(Some(GW), None).unwrap();
    let listening: Vec<_> = history
        .iter()
        .filter(|h| h.attribute == "listening")
        .collect();
    assert_eq!(listening.len(), 5, "{history:#?}");
    assert!(listening[0].old_value.is_none());
    assert!(listening.iter().all(|h| h.envelope_seq > 0));

    // Drift names what differs from the approved baseline, new executables only.
    let row = ingest
        .cmdb()
        .drift()
        .unwrap()
        .into_iter()
        .find(|d| d.ci_key == GW)
        .unwrap();
    let names: Vec<&str> = row
        .differences
        .iter()
        .filter_map(|d| d["attribute"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "executable /tmp/.x/evil",
            "listening tcp 0.0.0.0:22",
            "listening tcp 0.0.0.0:4444",
            "listening tcp 0.0.0.0:502"
        ]
    );
}

#[test]
fn switched_off_lists_keep_what_was_known_and_raise_nothing() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply_gw(&mut f, &mut ingest, inventoried(), T0 + 1_000);
    approve(&mut ingest);

    let mut off = inventoried();
    off.listening.clear();
    off.executables.clear();
    off.switched_off = vec![HostList::Listening, HostList::Executables];
    apply_gw(&mut f, &mut ingest, off.clone(), T0 + 2_000);
    apply_gw(&mut f, &mut ingest, off, T0 + 3_000);
    assert_eq!(alerts(&ingest), []);
    assert_eq!(
        inventory(&ingest, "listening").as_array().unwrap().len(),
        3,
        "the last known list stays"
    );
    assert_eq!(
        inventory(&ingest, "switched_off"),
        json!(["listening", "executables"])
    );
    let row = ingest
        .cmdb()
        .drift()
        .unwrap()
        .into_iter()
        .find(|d| d.ci_key == GW)
        .unwrap();
    assert_eq!(row.state, "in_baseline", "{row:#?}");

    // Switched on again with a port opened meanwhile: judged against the last known list.
    let mut on = inventoried();
    on.listening.push(tcp(8080, "/usr/bin/plc-gw"));
    apply_gw(&mut f, &mut ingest, on, T0 + 4_000);
    assert_eq!(
        alerts(&ingest),
        [gateway_alert(
            json!([{"attribute": "listening tcp 0.0.0.0:8080",
            "before": null, "after": "/usr/bin/plc-gw"}])
        )]
    );
    assert_eq!(inventory(&ingest, "switched_off"), Value::Null);
}

#[test]
fn a_truncated_list_closes_nothing_and_old_agents_are_not_judged() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply_gw(&mut f, &mut ingest, inventoried(), T0 + 1_000);
    approve(&mut ingest);
    let mut cut = inventoried();
    cut.listening.truncate(1);
    cut.truncated = vec![HostList::Listening];
    apply_gw(&mut f, &mut ingest, cut, T0 + 2_000);
    assert_eq!(alerts(&ingest), []);

    // An agent without the self-inventory (no lists at all) after one with it: nothing judged,
    // the lists stay as they were.
    apply_gw(&mut f, &mut ingest, gateway(), T0 + 3_000);
    assert_eq!(alerts(&ingest), []);
    assert_eq!(inventory(&ingest, "listening").as_array().unwrap().len(), 1);

    // And a gateway first seen without lists has no list in its baseline: ports reported later
    // are stored, not judged, until a baseline covering them is approved.
    let mut g = Fixture::new();
    let mut ingest = g.ingest();
    apply_gw(&mut g, &mut ingest, gateway(), T0 + 1_000);
    approve(&mut ingest);
    apply_gw(&mut g, &mut ingest, inventoried(), T0 + 2_000);
    assert_eq!(alerts(&ingest), []);
    assert_eq!(
        count(
            ingest.cmdb(),
            "gateway_attributes",
            "attribute = 'listening'"
        ),
        1
    );
}

#[test]
fn a_port_opened_under_a_change_record_is_authorised() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply_gw(&mut f, &mut ingest, inventoried(), T0 + 1_000);
    approve(&mut ingest);
    let record = ChangeInput {
        ticket: "CHG-WEB".into(),
        asset: GW.into(),
        from: outpost_collector::time::rfc3339(T0 as i64),
        to: outpost_collector::time::rfc3339((T0 + 600_000) as i64),
        expect: vec!["listening tcp 0.0.0.0:8080=/usr/sbin/nginx".into()],
        ..ChangeInput::default()
    };
    ingest
        .cmdb_mut()
        .add_changes(&[("cli".into(), record)], "cli", T0)
        .unwrap();
    let mut web = inventoried();
    web.listening.push(tcp(8080, "/usr/sbin/nginx"));
    web.executables.push(exe("/usr/sbin/nginx"));
    apply_gw(&mut f, &mut ingest, web, T0 + 2_000);
    assert_eq!(alerts(&ingest), []);
    assert_eq!(ingest.cmdb().changes().unwrap()[0].state, "implemented");
    let confirmed = ingest
        .cmdb_mut()
        .confirm_change("CHG-WEB", "bob", T0 + 3_000)
        .unwrap();
    assert_eq!(
        confirmed[0].moved,
        ["executable /usr/sbin/nginx", "listening tcp 0.0.0.0:8080"]
    );
    assert!(confirmed[0].unexplained.is_empty());
    let row = ingest
        .cmdb()
        .drift()
        .unwrap()
        .into_iter()
        .find(|d| d.ci_key == GW)
        .unwrap();
    assert_eq!(row.state, "in_baseline", "{row:#?}");
}

#[test]
fn the_evidence_pack_lists_programs_and_listening_ports_per_gateway() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply_gw(&mut f, &mut ingest, inventoried(), T0 + 1_000);
    drop(ingest);
    let (key, _) = outpost_proto::SigningKey::generate().unwrap();
    let out = f.dir.path().join("pack");
    let day = 24 * 60 * 60 * 1000;
    outpost_collector::evidence::build(&outpost_collector::evidence::BuildRequest {
        db: &f.db,
        zone: "cell-1",
        from_ms: (T0 - day) as i64,
        to_ms: (T0 + day) as i64,
        out: &out,
        key: &key,
        now_ms: (T0 + day) as i64,
    })
    .unwrap();
    let verified = outpost_collector::evidence::verify(&out, Some(&key.public_key())).unwrap();
    assert!(verified.clean());
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let gw = report["inventory"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["class"] == "gateway")
        .expect("the gateway CI")
        .clone();
    let software = gw["cip010"]["software"].as_str().unwrap();
    assert!(
        software.starts_with("outpost-agent 0.1.0; running programs: /usr/bin/outpost-agent, "),
        "{software}"
    );
    assert!(software.contains("/usr/sbin/sshd"), "{software}");
    assert_eq!(
        gw["cip010"]["ports"],
        "tcp 0.0.0.0:22 (/usr/sbin/sshd), tcp 0.0.0.0:502 (/usr/bin/plc-gw), \
         udp 0.0.0.0:45000 (/usr/lib/systemd/systemd-resolved)"
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("tcp 0.0.0.0:502 (/usr/bin/plc-gw)"),
        "not in report.html"
    );
}

#[test]
fn a_program_that_comes_and_goes_is_reported_the_first_time_only() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    apply_gw(&mut f, &mut ingest, inventoried(), T0 + 1_000);
    approve(&mut ingest);
    let mut job = inventoried();
    job.executables.push(exe("/usr/sbin/logrotate"));
    let first = json!([{"attribute": "executable /usr/sbin/logrotate",
        "before": null, "after": "logrotate"}]);
    for (i, g) in [
        job.clone(),
        inventoried(),
        inventoried(),
        job.clone(),
        inventoried(),
        job,
    ]
    .into_iter()
    .enumerate()
    {
        apply_gw(&mut f, &mut ingest, g, T0 + 2_000 + i as u64 * 1_000);
    }
    assert_eq!(alerts(&ingest), [gateway_alert(first)]);
    // still a difference from the approved baseline until it is approved
    let row = ingest
        .cmdb()
        .drift()
        .unwrap()
        .into_iter()
        .find(|d| d.ci_key == GW)
        .unwrap();
    assert_eq!(row.differences.len(), 1, "{row:#?}");
    approve(&mut ingest);
    let row = ingest
        .cmdb()
        .drift()
        .unwrap()
        .into_iter()
        .find(|d| d.ci_key == GW)
        .unwrap();
    assert_eq!(row.state, "in_baseline", "{row:#?}");
}
