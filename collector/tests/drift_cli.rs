//! The drift commands as a user runs them (real binary, real SQLite): approve, change add,
//! import from CSV and JSON, confirm, drift/changes/alerts in text and JSON, and the errors a
//! bad change file or a bad flag gets.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Fixture, T0, plc};
use outpost_collector::time::rfc3339;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_outpost-collector");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run outpost-collector")
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
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(what: &str, db: &str) -> Value {
    let text = ok(&[what, "--db", db, "--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what} --json: {e}\n{text}"))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn baseline_change_records_and_listings_through_the_binary() {
    let mut f = Fixture::new();
    let db = f.db.to_str().unwrap().to_owned();
    let mut ingest = f.ingest();
    let wire = f.seal(&f.summary(vec![plc(1, vec![10, 20]), plc(2, vec![5])]));
    ingest.envelope(&wire, "127.0.0.1:9", T0 + 1_000).unwrap();

    let out = ok(&[
        "baseline", "approve", "--db", &db, "--zone", "cell-1", "--by", "alice", "--reason",
        "CHG-1",
    ]);
    assert!(out.contains("2 asset(s)"), "{out}");
    let err = fails(&[
        "baseline", "approve", "--db", &db, "--by", "a", "--reason", "r",
    ]);
    assert!(err.contains("--asset"), "{err}");
    let err = fails(&[
        "baseline", "approve", "--db", &db, "--asset", "nope", "--by", "a", "--reason", "r",
    ]);
    assert!(err.contains("no asset \"nope\""), "{err}");

    let (from, to) = (rfc3339(T0 as i64), rfc3339((T0 + 3_600_000) as i64));
    ok(&[
        "change",
        "add",
        "--db",
        &db,
        "--ticket",
        "CHG1",
        "--asset",
        "plc-1",
        "--from",
        &from,
        "--to",
        &to,
        "--expect",
        "block.setpoints[101]=25",
    ]);
    let err = fails(&[
        "change", "add", "--db", &db, "--ticket", "CHG2", "--asset", "plc-1", "--from", &to,
        "--to", &from,
    ]);
    assert!(err.contains("the window ends"), "{err}");

    let dir = f.dir.path();
    let csv = write(
        dir,
        "changes.csv",
        &format!("ticket,asset,from,to,expect\nCHG3,plc-2,{from},{to},block.setpoints[100]=6\n"),
    );
    let out = ok(&["change", "import", "--db", &db, &csv]);
    assert!(out.contains("imported 1 change record"), "{out}");
    let bad_csv = write(
        dir,
        "bad.csv",
        &format!(
            "ticket,asset,from,to\nCHG4,plc-2,{from},{to}\nCHG5,plc-9,{from},{to}\nCHG6,plc-2,{to},{from}\n"
        ),
    );
    let err = fails(&["change", "import", "--db", &db, &bad_csv]);
    assert!(
        err.contains("line 3: ticket CHG5: no asset \"plc-9\""),
        "{err}"
    );
    assert!(
        err.contains("line 4: ticket CHG6: the window ends"),
        "{err}"
    );
    let ragged = write(dir, "ragged.csv", "ticket,asset,from,to\nCHG7,plc-1\n");
    let err = fails(&["change", "import", "--db", &db, &ragged]);
    assert!(err.contains("line 2"), "{err}");
    let bad_json = write(dir, "bad.json", "[{\"ticket\": 3}]");
    let err = fails(&["change", "import", "--db", &db, &bad_json]);
    assert!(err.contains("record 1"), "{err}");
    let json_file = write(
        dir,
        "changes.json",
        &format!(
            "{{\"changes\": [{{\"ticket\": \"CHG8\", \"asset\": \"plc-1\", \"from\": \"{from}\", \
             \"to\": \"{to}\", \"auto_confirm\": true}}]}}"
        ),
    );
    ok(&["change", "import", "--db", &db, &json_file]);
    let changes = json("changes", &db);
    assert_eq!(changes["schema"], "outpost.changes.v1");
    let tickets: Vec<&str> = changes["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["ticket"].as_str())
        .collect();
    assert_eq!(tickets, ["CHG1", "CHG3", "CHG8"]);

    // plc-2 changes to what CHG3 expects (authorised); plc-1 to a value CHG1 does not expect,
    // but CHG8 (no expectations) covers it.
    let wire = f.seal(&f.summary(vec![plc(1, vec![10, 99]), plc(2, vec![6])]));
    ingest.envelope(&wire, "127.0.0.1:9", T0 + 2_000).unwrap();
    let changes = json("changes", &db);
    let state = |t: &str| {
        changes["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["ticket"] == t)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state("CHG3"), "implemented");
    assert_eq!(state("CHG8"), "confirmed");
    assert_eq!(state("CHG1"), "open");
    let out = ok(&[
        "change", "confirm", "--db", &db, "--ticket", "CHG3", "--by", "bob",
    ]);
    assert!(out.contains("baseline moved for block.setpoints"), "{out}");
    let err = fails(&[
        "change", "confirm", "--db", &db, "--ticket", "CHG1", "--by", "bob",
    ]);
    assert!(err.contains("only an implemented record"), "{err}");

    let drift = json("drift", &db);
    assert_eq!(drift["schema"], "outpost.drift.v1");
    assert!(
        drift["drift"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "in_baseline"),
        "{drift:#}"
    );
    let alerts = json("alerts", &db);
    assert_eq!(alerts["schema"], "outpost.alerts.v1");
    assert_eq!(alerts["alerts"].as_array().map(Vec::len), Some(0));
    let text = ok(&["changes", "--db", &db]);
    assert!(text.contains("2 authorised, 0 unauthorised"), "{text}");
    assert!(text.contains("100%"), "{text}");
    let text = ok(&["drift", "--db", &db]);
    assert!(text.contains("0 with unauthorised drift"), "{text}");

    let err = fails(&[
        "serve",
        "--db",
        &db,
        "--diode-listen",
        "127.0.0.1:0",
        "--alert-syslog",
        "siem:514",
    ]);
    assert!(err.contains("udp://HOST:PORT"), "{err}");
}
