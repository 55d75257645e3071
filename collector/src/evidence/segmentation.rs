//! The pack's segmentation section (IEC 62443-3-3 SR 5.1/5.2): what the agents' signed probe
//! rounds in the period show, per agent and target, computed from the envelopes alone.
//!
//! Absent from `report.json` and `report.html` when the period holds no probe round, so packs
//! made before probes existed still verify byte for byte.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use outpost_proto::model::{ProbeExpect, ProbeOutcome, ProbeReport};
use serde::Serialize;

use super::html::esc;
use crate::time::rfc3339;

/// Everything the period's probe rounds show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Segmentation {
    /// Per agent: how many rounds, when, and the longest pause between two.
    pub agents: Vec<ProbeAgent>,
    /// Per (agent, expectation, target), sorted.
    pub targets: Vec<ProbeTarget>,
    /// Must-not-reach targets that answered at least once in the period.
    pub violated_targets: u64,
    /// May-reach targets that failed at least once in the period.
    pub conduit_failures: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeAgent {
    pub agent_id: String,
    pub rounds: u64,
    pub first_round: String,
    pub last_round: String,
    /// Longest time between the starts of two consecutive rounds (agent clock).
    pub max_interval_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeTarget {
    pub agent_id: String,
    pub expect: &'static str,
    pub target: String,
    pub rule: String,
    pub probes: u64,
    /// Results that contradict the zone's design (answered / did not connect).
    pub problems: u64,
    /// Count per outcome (`connected`, `refused`, `timed_out`, `error`).
    pub outcomes: BTreeMap<&'static str, u64>,
    pub first_problem: Option<String>,
    pub last_problem: Option<String>,
    pub last_outcome: &'static str,
    pub last_probe: String,
}

impl Segmentation {
    /// True when the period held no probe round.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }
}

/// Accumulates probe rounds in pack order.
#[derive(Default)]
pub(super) struct Acc {
    rounds: BTreeMap<String, Vec<i64>>,
    targets: BTreeMap<(String, ProbeExpect, String), Target>,
}

struct Target {
    rule: String,
    probes: u64,
    problems: u64,
    outcomes: BTreeMap<&'static str, u64>,
    first_problem: Option<i64>,
    last_problem: Option<i64>,
    last_outcome: ProbeOutcome,
    last_probe: i64,
}

impl Acc {
    /// One round, sealed by `agent` at `time` (ms, agent clock).
    pub(super) fn round(&mut self, agent: &str, time: i64, r: &ProbeReport) {
        let started = i64::try_from(r.started_ms).unwrap_or(time);
        self.rounds
            .entry(agent.to_owned())
            .or_default()
            .push(started);
        for p in &r.results {
            let t = self
                .targets
                .entry((agent.to_owned(), p.expect, p.target.clone()))
                .or_insert_with(|| Target {
                    rule: p.rule.clone(),
                    probes: 0,
                    problems: 0,
                    outcomes: BTreeMap::new(),
                    first_problem: None,
                    last_problem: None,
                    last_outcome: p.outcome,
                    last_probe: started,
                });
            t.probes += 1;
            *t.outcomes.entry(p.outcome.as_str()).or_insert(0) += 1;
            if p.is_problem() {
                t.problems += 1;
                t.first_problem.get_or_insert(started);
                t.last_problem = Some(started);
            }
            t.rule.clone_from(&p.rule);
            t.last_outcome = p.outcome;
            t.last_probe = started;
        }
    }

    pub(super) fn finish(self) -> Segmentation {
        let agents = self
            .rounds
            .into_iter()
            .map(|(agent_id, mut times)| {
                times.sort_unstable();
                ProbeAgent {
                    agent_id,
                    rounds: times.len() as u64,
                    first_round: rfc3339(times.first().copied().unwrap_or(0)),
                    last_round: rfc3339(times.last().copied().unwrap_or(0)),
                    max_interval_ms: times.windows(2).map(|w| w[1] - w[0]).max(),
                }
            })
            .collect();
        let mut violated_targets = 0;
        let mut conduit_failures = 0;
        let targets = self
            .targets
            .into_iter()
            .map(|((agent_id, expect, target), t)| {
                if t.problems > 0 {
                    match expect {
                        ProbeExpect::MustNotReach => violated_targets += 1,
                        ProbeExpect::MayReach => conduit_failures += 1,
                    }
                }
                ProbeTarget {
                    agent_id,
                    expect: expect.as_str(),
                    target,
                    rule: t.rule,
                    probes: t.probes,
                    problems: t.problems,
                    outcomes: t.outcomes,
                    first_problem: t.first_problem.map(rfc3339),
                    last_problem: t.last_problem.map(rfc3339),
                    last_outcome: t.last_outcome.as_str(),
                    last_probe: rfc3339(t.last_probe),
                }
            })
            .collect();
        Segmentation {
            agents,
            targets,
            violated_targets,
            conduit_failures,
        }
    }
}

/// The report's segmentation section (nothing when the period held no probe round).
pub(super) fn render(o: &mut String, s: &Segmentation) {
    if s.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "<h2>Segmentation probes</h2>\n<p>Each agent tried a TCP connect to every target of its \
         <code>[segmentation]</code> config and closed it at once. A must-not-reach target that \
         connected <i>or refused</i> (a reset proves packets get there) contradicts the zone's \
         segmentation; a may-reach conduit that did not connect was down.</p>\n\
         <p id=\"segmentation-verdict\" data-violated=\"{v}\" data-conduit-failures=\"{c}\" \
         class=\"{class}\">{text}</p>",
        v = s.violated_targets,
        c = s.conduit_failures,
        class = if s.violated_targets == 0 { "ok" } else { "bad" },
        text = if s.violated_targets == 0 {
            "No must-not-reach target answered in the period.".to_owned()
        } else {
            format!(
                "{} must-not-reach target(s) answered in the period: the zone was not segmented \
                 as designed.",
                s.violated_targets
            )
        },
    );
    o.push_str(
        "<table id=\"probe-agents\"><tr><th>agent</th><th>rounds</th><th>first</th>\
         <th>last</th><th>longest interval</th></tr>\n",
    );
    for a in &s.agents {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&a.agent_id),
            a.rounds,
            esc(&a.first_round),
            esc(&a.last_round),
            a.max_interval_ms.map_or_else(
                || "-".to_owned(),
                |ms| format!("{:.1} min", ms as f64 / 60_000.0)
            )
        );
    }
    o.push_str(
        "</table>\n<table id=\"probe-targets\"><tr><th>agent</th><th>expect</th><th>target</th>\
         <th>rule</th><th>probes</th><th>problems</th><th>outcomes</th><th>first problem</th>\
         <th>last problem</th><th>last outcome</th></tr>\n",
    );
    for t in &s.targets {
        let outcomes: Vec<String> = t.outcomes.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td>\
             <td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&t.agent_id),
            t.expect,
            esc(&t.target),
            esc(&t.rule),
            t.probes,
            if t.problems == 0 { "ok" } else { "bad" },
            t.problems,
            outcomes.join(", "),
            esc(t.first_problem.as_deref().unwrap_or("-")),
            esc(t.last_problem.as_deref().unwrap_or("-")),
            t.last_outcome
        );
    }
    o.push_str("</table>\n");
}
