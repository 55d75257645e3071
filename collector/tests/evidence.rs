//! Evidence packs from a real SQLite CMDB filled through the real ingest path (real
//! signatures): periods that cut the chain, a 40-day silence, a lost envelope, a key handover.

mod common;

use common::{Fixture, T0, plc};
use outpost_collector::evidence::{self, BuildRequest};
use outpost_proto::envelope;
use outpost_proto::model::{Body, Heartbeat, ProbeExpect, ProbeOutcome, ProbeReport, ProbeResult};
use outpost_proto::{ChainTip, SigningKey, handover};
use serde_json::Value;

const DAY: u64 = 24 * 60 * 60 * 1000;

struct Chain {
    f: Fixture,
    /// After a handover: the successor key.
    new_key: Option<SigningKey>,
    tip: ChainTip,
}

impl Chain {
    fn key(&self) -> &SigningKey {
        self.new_key.as_ref().unwrap_or(&self.f.key)
    }

    fn push(&mut self, ingest: &mut outpost_collector::Ingest, time: u64, body: Body) {
        let sealed = envelope::seal(
            self.key(),
            &self.f.agent,
            &self.f.zone,
            &self.tip,
            time,
            &body,
        )
        .unwrap();
        self.tip = sealed.tip;
        ingest.envelope(&sealed.wire, "p", time + 5).unwrap();
    }

    fn summary(&self) -> Body {
        Body::Summary(self.f.summary(vec![plc(1, vec![1, 2])]))
    }

    fn beat(&self) -> Body {
        Body::Heartbeat(Heartbeat {
            agent: self.f.agent.clone(),
            zone: self.f.zone.clone(),
            last_seq: self.tip.seq,
            last_hash: self.tip.hash,
            interval_ms: 1000,
            last_summary_seq: 0,
        })
    }
}

fn pack(f: &Fixture, key: &SigningKey, name: &str, from: u64, to: u64) -> std::path::PathBuf {
    let out = f.dir.path().join(name);
    evidence::build(&BuildRequest {
        db: &f.db,
        zone: "cell-1",
        from_ms: from as i64,
        to_ms: to as i64,
        out: &out,
        key,
        now_ms: to as i64,
    })
    .unwrap();
    out
}

fn json(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn packs_cut_the_chain_show_silences_gaps_and_handovers_and_verify() {
    let f = Fixture::new();
    let mut ingest = f.ingest();
    let mut c = Chain {
        f,
        new_key: None,
        tip: ChainTip::GENESIS,
    };
    c.push(&mut ingest, T0, c.summary());
    c.push(&mut ingest, T0 + 20 * DAY, c.summary());
    c.push(&mut ingest, T0 + 60 * DAY, c.summary()); // 40 days after the last check
    // A key handover, then an envelope lost on the way (its sequence number skipped).
    let (new, _) = SigningKey::generate().unwrap();
    let announce = handover::announce(&c.f.agent, &c.f.zone, c.key(), &new, c.tip.seq + 1);
    c.push(&mut ingest, T0 + 60 * DAY + 1, Body::KeyHandover(announce));
    c.new_key = Some(new);
    c.tip.seq += 1;
    c.push(&mut ingest, T0 + 61 * DAY, c.beat());
    drop(ingest);

    let (ek, _) = SigningKey::generate().unwrap();
    let end = T0 + 62 * DAY;

    // The whole history.
    let all = pack(&c.f, &ek, "all", T0 - DAY, end);
    let r = evidence::verify(&all, Some(&ek.public_key())).unwrap();
    assert!(r.clean(), "{}", evidence::verify::render(&r));
    let report = json(&all.join("report.json"));
    assert_eq!(report["envelopes"], 5);
    // No probe rounds: no segmentation section (packs from before probes stay identical).
    assert!(report.get("segmentation").is_none(), "{report:#}");
    let device = report["inventory"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["class"] == "field_device")
        .unwrap()
        .clone();
    assert_eq!(device["checks"], 3);
    assert_eq!(device["max_gap_ms"], 40 * DAY);
    assert_eq!(device["within_limit"], false);
    // The gateway never sent host facts here: never checked, also outside the limit.
    assert!(
        report["monitoring"]["outside_limit"]
            .as_array()
            .unwrap()
            .contains(&device["ci_key"]),
        "{report:#}"
    );
    let gaps = report["discontinuities"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{report:#}");
    assert_eq!(gaps[0]["kind"], "gap");
    assert_eq!(report["key_handovers"].as_array().unwrap().len(), 1);
    let keys = json(&all.join("keys.json"));
    let statuses: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["retired", "active"]);
    let html = std::fs::read_to_string(all.join("report.html")).unwrap();
    assert!(
        html.contains("class=\"bad\">NO</td>"),
        "the 40-day silence is shown"
    );

    // A period starting after the first envelope: the first one in the pack names its
    // predecessor outside, and its recorded verdict still re-judges.
    let later = pack(&c.f, &ek, "later", T0 + 10 * DAY, end);
    let index = json(&later.join("envelopes/index.json"));
    let first = &index["envelopes"][0];
    assert_eq!(first["verdict"], "next");
    assert!(first["predecessor"]["seq"].is_i64(), "{index:#}");
    let r = evidence::verify(&later, Some(&ek.public_key())).unwrap();
    assert!(r.clean(), "{}", evidence::verify::render(&r));
    assert_eq!(r.envelopes_checked, 4);
    // A predecessor edited in the index no longer fits the chain (besides the hash).
    let mut edited = index.clone();
    edited["envelopes"][0]["predecessor"]["seq"] = Value::from(0);
    std::fs::write(
        later.join("envelopes/index.json"),
        serde_json::to_vec_pretty(&edited).unwrap(),
    )
    .unwrap();
    let r = evidence::verify(&later, Some(&ek.public_key())).unwrap();
    let kinds: Vec<&str> = r.findings.iter().map(|f| f.kind).collect();
    assert!(kinds.contains(&"hash_mismatch"), "{kinds:?}");
    assert!(kinds.contains(&"verdict_mismatch"), "{kinds:?}");

    // A period with nothing in it is still a pack: every CI it cannot show is absent, and it
    // verifies.
    let empty = pack(&c.f, &ek, "empty", T0 + 100 * DAY, T0 + 101 * DAY);
    let r = evidence::verify(&empty, Some(&ek.public_key())).unwrap();
    assert!(r.clean(), "{}", evidence::verify::render(&r));
    assert_eq!(json(&empty.join("report.json"))["envelopes"], 0);

    // A pack is not written over another, nor for an inverted period.
    let again = evidence::build(&BuildRequest {
        db: &c.f.db,
        zone: "cell-1",
        from_ms: T0 as i64,
        to_ms: end as i64,
        out: &all,
        key: &ek,
        now_ms: end as i64,
    });
    assert!(again.unwrap_err().to_string().contains("not empty"));
    let inverted = evidence::build(&BuildRequest {
        db: &c.f.db,
        zone: "cell-1",
        from_ms: end as i64,
        to_ms: T0 as i64,
        out: &c.f.dir.path().join("inv"),
        key: &ek,
        now_ms: end as i64,
    });
    assert!(inverted.unwrap_err().to_string().contains("is not after"));
}

#[test]
fn packs_show_the_periods_segmentation_probes_and_verify() {
    let f = Fixture::new();
    let mut ingest = f.ingest();
    let mut c = Chain {
        f,
        new_key: None,
        tip: ChainTip::GENESIS,
    };
    let round = |c: &Chain, time: u64, it: ProbeOutcome, broker: ProbeOutcome| {
        let result = |target: &str, expect, outcome| ProbeResult {
            target: target.into(),
            rule: target.into(),
            expect,
            outcome,
            elapsed_ms: 5,
            detail: None,
        };
        Body::Probes(ProbeReport {
            agent: c.f.agent.clone(),
            zone: c.f.zone.clone(),
            started_ms: time,
            finished_ms: time + 10,
            results: vec![
                result("192.0.2.50:445", ProbeExpect::MustNotReach, it),
                result("192.0.2.10:1883", ProbeExpect::MayReach, broker),
            ],
        })
    };
    let hour = 60 * 60 * 1000;
    c.push(&mut ingest, T0, c.summary());
    let b = round(&c, T0 + 1, ProbeOutcome::TimedOut, ProbeOutcome::Connected);
    c.push(&mut ingest, T0 + 1, b);
    let b = round(
        &c,
        T0 + hour,
        ProbeOutcome::Refused,
        ProbeOutcome::Connected,
    );
    c.push(&mut ingest, T0 + hour, b);
    let b = round(
        &c,
        T0 + 3 * hour,
        ProbeOutcome::TimedOut,
        ProbeOutcome::Connected,
    );
    c.push(&mut ingest, T0 + 3 * hour, b);
    drop(ingest);

    let (ek, _) = SigningKey::generate().unwrap();
    let out = pack(&c.f, &ek, "probes", T0 - DAY, T0 + DAY);
    let r = evidence::verify(&out, Some(&ek.public_key())).unwrap();
    assert!(r.clean(), "{}", evidence::verify::render(&r));
    let report = json(&out.join("report.json"));
    let seg = &report["segmentation"];
    assert_eq!(seg["violated_targets"], 1, "{seg:#}");
    assert_eq!(seg["conduit_failures"], 0, "{seg:#}");
    assert_eq!(seg["agents"][0]["rounds"], 3);
    assert_eq!(seg["agents"][0]["max_interval_ms"], 2 * hour);
    let it = seg["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "192.0.2.50:445")
        .unwrap();
    assert_eq!(it["problems"], 1);
    assert_eq!(it["outcomes"]["timed_out"], 2);
    assert_eq!(it["last_outcome"], "timed_out");
    assert!(it["first_problem"].is_string());
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("id=\"segmentation-verdict\" data-violated=\"1\""),
        "{html}"
    );

    // A period holding only the clean rounds says so.
    let clean = pack(&c.f, &ek, "clean", T0 + 2 * hour, T0 + DAY);
    let r = evidence::verify(&clean, Some(&ek.public_key())).unwrap();
    assert!(r.clean(), "{}", evidence::verify::render(&r));
    let html = std::fs::read_to_string(clean.join("report.html")).unwrap();
    assert!(html.contains("No must-not-reach target answered"), "{html}");

    // The section is recomputed on verify: a pack whose envelope is removed no longer matches.
    let index = json(&out.join("envelopes/index.json"));
    let last = index["envelopes"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let file = out.join(last["file"].as_str().unwrap());
    std::fs::remove_file(&file).unwrap();
    let r = evidence::verify(&out, Some(&ek.public_key())).unwrap();
    assert!(
        !r.clean(),
        "a pack missing a probe envelope must not verify"
    );
}
