//! `probes`: the latest segmentation probe state (and with `--all` the history) as a text table
//! or the versioned JSON document `outpost.probes.v1` (`docs/json.md`).

use serde::Serialize;

use crate::cmdb::probes::{ProbeResultRow, ProbeStateRow};
use crate::render::{Format, footer, json};
use crate::table::{Table, opt};

pub const SCHEMA_PROBES: &str = "outpost.probes.v1";

fn verdict(expect: &str, problem: bool) -> &'static str {
    match (expect, problem) {
        ("must_not_reach", true) => "VIOLATION",
        ("must_not_reach", false) => "blocked",
        (_, true) => "CONDUIT DOWN",
        (_, false) => "ok",
    }
}

/// The listing: state per agent and target, then (when given) the history.
pub fn probes(
    state: &[ProbeStateRow],
    history: Option<&[ProbeResultRow]>,
    format: Format,
    now_ms: i64,
) -> String {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Body<'a> {
            violations: usize,
            conduits_down: usize,
            state: &'a [ProbeStateRow],
            #[serde(skip_serializing_if = "Option::is_none")]
            history: Option<&'a [ProbeResultRow]>,
        }
        let count = |expect: &str| {
            state
                .iter()
                .filter(|s| s.problem && s.expect == expect)
                .count()
        };
        return json(
            SCHEMA_PROBES,
            now_ms,
            Body {
                violations: count("must_not_reach"),
                conduits_down: count("may_reach"),
                state,
                history,
            },
        );
    }
    let mut t = Table::new(&[
        "VERDICT", "AGENT", "ZONE", "TARGET", "EXPECT", "OUTCOME", "SINCE", "LAST", "SEQ", "ALERT",
        "RULE",
    ]);
    for s in state {
        t.row(vec![
            verdict(&s.expect, s.problem).to_owned(),
            s.agent_id.clone(),
            s.zone.clone(),
            s.target.clone(),
            s.expect.clone(),
            s.outcome.clone(),
            s.since.to_string(),
            s.last_seen.to_string(),
            s.last_seq.to_string(),
            opt(s.alert_id),
            s.rule.clone(),
        ]);
    }
    let mut out = footer(&t, "probe target");
    if let Some(history) = history {
        let mut h = Table::new(&[
            "RECEIVED", "AGENT", "SEQ", "TARGET", "EXPECT", "OUTCOME", "MS", "VERDICT", "DETAIL",
        ]);
        for r in history {
            h.row(vec![
                r.received_at.to_string(),
                r.agent_id.clone(),
                r.envelope_seq.to_string(),
                r.target.clone(),
                r.expect.clone(),
                r.outcome.clone(),
                r.elapsed_ms.to_string(),
                verdict(&r.expect, r.problem).to_owned(),
                opt(r.detail.as_deref()),
            ]);
        }
        out.push('\n');
        out.push_str(&footer(&h, "probe result"));
    }
    out
}
