//! Segmentation probe reports: history, latest state, and the alerts they raise.
//!
//! A probe report is applied like any envelope (stored, chain judged, one transaction). Every
//! result is a row in `probe_results`; `probe_state` keeps the latest judgement per (agent,
//! target, expectation). The state machine raises one alert per transition:
//!
//! | expectation      | becomes a problem                          | clears                          |
//! |------------------|--------------------------------------------|---------------------------------|
//! | `must_not_reach` | `segmentation_violation` (high): it answered (connected or refused) | `segmentation_restored` (informational) |
//! | `may_reach`      | `conduit_down` (medium): it did not connect | `conduit_restored` (informational) |
//!
//! A target that stays in the same state raises nothing more. A target no longer in the
//! agent's config (absent from a round) leaves `probe_state` with a `probe_target_removed`
//! event; an open alert about it is not "restored" (nothing proved it), the event says so.

use outpost_proto::model::{ProbeExpect, ProbeReport, ProbeResult};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use serde_json::json;

use super::alerts::Category;
use super::apply::{ApplyOutcome, EnvelopeMeta, Writer};
use super::{Cmdb, CmdbError};
use crate::time::{Timestamp, sql_int};

/// Alert and event kinds written here.
pub mod kind {
    pub const SEGMENTATION_VIOLATION: &str = "segmentation_violation";
    pub const SEGMENTATION_RESTORED: &str = "segmentation_restored";
    pub const CONDUIT_DOWN: &str = "conduit_down";
    pub const CONDUIT_RESTORED: &str = "conduit_restored";
    pub const PROBE_TARGET_REMOVED: &str = "probe_target_removed";
}

impl Cmdb {
    /// Applies a verified, judged probe report: stores the envelope, advances the chain, records
    /// every result, updates the latest state and raises the alerts of its transitions, in the
    /// caller's transaction (or its own).
    pub fn apply_probes(
        &mut self,
        meta: &EnvelopeMeta<'_>,
        report: &ProbeReport,
    ) -> Result<ApplyOutcome, CmdbError> {
        if self.conn.is_autocommit() {
            return self
                .in_transaction(|db| db.apply_probes(meta, report))
                .and_then(|inner| inner);
        }
        let sqlite = |source| CmdbError::Sqlite {
            path: self.path.clone(),
            source,
        };
        // Assets are unchanged, but the cache is keyed by the tip it follows.
        self.known_assets.remove(meta.agent.as_str());
        let mut w = Writer::new(&self.conn, meta);
        w.envelope().map_err(sqlite)?;
        w.chain_events().map_err(sqlite)?;
        w.probes(report).map_err(sqlite)?;
        w.flush_counters().map_err(sqlite)?;
        Ok(w.out)
    }
}

impl Writer<'_, '_> {
    fn probes(&mut self, report: &ProbeReport) -> rusqlite::Result<()> {
        self.count("probe_rounds", 1);
        let mut seen = Vec::with_capacity(report.results.len());
        for r in &report.results {
            self.probe_result(report, r)?;
            seen.push((r.target.as_str(), r.expect.as_str()));
        }
        // Targets no longer probed by this agent.
        let known: Vec<(String, String, Option<i64>, bool)> = self
            .db
            .prepare_cached(
                "SELECT target, expect, alert_id, problem FROM probe_state WHERE agent_id = ?1",
            )?
            .query_map([self.meta.agent.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? != 0))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (target, expect, alert_id, problem) in known {
            if seen.contains(&(target.as_str(), expect.as_str())) {
                continue;
            }
            self.db
                .prepare_cached(
                    "DELETE FROM probe_state WHERE agent_id = ?1 AND target = ?2 AND expect = ?3",
                )?
                .execute(params![self.meta.agent.as_str(), target, expect])?;
            let detail = json!({
                "target": target,
                "expect": expect,
                "open_alert_id": alert_id,
                "was_problem": problem,
                "note": "no longer in the agent's [segmentation] config; an open alert stays \
                         unresolved (nothing proved the problem cleared)",
            });
            self.event(kind::PROBE_TARGET_REMOVED, None, detail)?;
        }
        Ok(())
    }

    fn probe_result(&mut self, report: &ProbeReport, r: &ProbeResult) -> rusqlite::Result<()> {
        let problem = r.is_problem();
        let agent = self.meta.agent.as_str();
        self.db
            .prepare_cached(
                "INSERT INTO probe_results (agent_id, zone, envelope_seq, round_started_agent_ms,
                     received_at_ms, target, rule, expect, outcome, elapsed_ms, detail, problem)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                agent,
                self.meta.zone.as_str(),
                sql_int(self.meta.seq),
                sql_int(report.started_ms),
                self.now,
                r.target,
                r.rule,
                r.expect.as_str(),
                r.outcome.as_str(),
                i64::from(r.elapsed_ms),
                r.detail,
                problem,
            ])?;
        if problem {
            self.count("probe_problems", 1);
        }
        let before: Option<(bool, i64, Option<i64>)> = self
            .db
            .prepare_cached(
                "SELECT problem, since_ms, alert_id FROM probe_state
                 WHERE agent_id = ?1 AND target = ?2 AND expect = ?3",
            )?
            .query_row(params![agent, r.target, r.expect.as_str()], |row| {
                Ok((row.get::<_, i64>(0)? != 0, row.get(1)?, row.get(2)?))
            })
            .optional()?;
        let was_problem = before.is_some_and(|b| b.0);
        let (since, mut alert_id) = match before {
            Some((p, since, alert)) if p == problem => (since, alert),
            _ => (self.now, None),
        };
        if problem && !was_problem {
            let (kind, category) = match r.expect {
                ProbeExpect::MustNotReach => (kind::SEGMENTATION_VIOLATION, Category::Segmentation),
                ProbeExpect::MayReach => (kind::CONDUIT_DOWN, Category::Conduit),
            };
            let detail = self.probe_detail(r, None);
            let agent_ci = self.agent_ci.clone();
            let id = self.alert(&agent_ci, &r.target, kind, category, &detail)?;
            alert_id = Some(id);
            let mut detail = detail;
            detail["alert_id"] = json!(id);
            self.event(kind, None, detail)?;
        } else if !problem && was_problem {
            let kind = match r.expect {
                ProbeExpect::MustNotReach => kind::SEGMENTATION_RESTORED,
                ProbeExpect::MayReach => kind::CONDUIT_RESTORED,
            };
            let opened = before.and_then(|b| b.2);
            let detail = self.probe_detail(r, opened);
            let agent_ci = self.agent_ci.clone();
            let id = self.alert(
                &agent_ci,
                &r.target,
                kind,
                Category::SegmentationCleared,
                &detail,
            )?;
            let mut detail = detail;
            detail["alert_id"] = json!(id);
            self.event(kind, None, detail)?;
        }
        self.db
            .prepare_cached(
                "INSERT INTO probe_state (agent_id, target, expect, zone, rule, outcome, problem,
                     since_ms, last_seen_ms, last_seq, alert_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (agent_id, target, expect) DO UPDATE SET zone = excluded.zone,
                     rule = excluded.rule, outcome = excluded.outcome,
                     problem = excluded.problem, since_ms = excluded.since_ms,
                     last_seen_ms = excluded.last_seen_ms, last_seq = excluded.last_seq,
                     alert_id = excluded.alert_id",
            )?
            .execute(params![
                agent,
                r.target,
                r.expect.as_str(),
                self.meta.zone.as_str(),
                r.rule,
                r.outcome.as_str(),
                problem,
                since,
                self.now,
                sql_int(self.meta.seq),
                if problem { alert_id } else { None },
            ])?;
        Ok(())
    }

    fn probe_detail(&self, r: &ProbeResult, opened_by: Option<i64>) -> serde_json::Value {
        let mut detail = json!({
            "target": r.target,
            "rule": r.rule,
            "expect": r.expect.as_str(),
            "outcome": r.outcome.as_str(),
            "elapsed_ms": r.elapsed_ms,
            "agent": self.meta.agent.as_str(),
            "zone": self.meta.zone.as_str(),
        });
        if let Some(d) = &r.detail {
            detail["error"] = json!(d);
        }
        if let Some(id) = opened_by {
            detail["cleared_alert_id"] = json!(id);
        }
        detail
    }
}

/// One row of `probe_state` (the latest judgement of one target by one agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeStateRow {
    pub agent_id: String,
    pub zone: String,
    pub target: String,
    pub rule: String,
    pub expect: String,
    pub outcome: String,
    /// True when the result contradicts the zone's design (violation or conduit down).
    pub problem: bool,
    /// When the current judgement began (collector clock).
    pub since: Timestamp,
    pub last_seen: Timestamp,
    pub last_seq: i64,
    /// The open `segmentation_violation` / `conduit_down` alert.
    pub alert_id: Option<i64>,
}

/// One row of `probe_results` (history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeResultRow {
    pub agent_id: String,
    pub zone: String,
    pub envelope_seq: i64,
    pub received_at: Timestamp,
    pub target: String,
    pub rule: String,
    pub expect: String,
    pub outcome: String,
    pub elapsed_ms: i64,
    pub detail: Option<String>,
    pub problem: bool,
}

/// Most history rows `probes --all` returns (newest first).
pub const MAX_HISTORY_ROWS: usize = 10_000;

impl Cmdb {
    /// The latest probe state, problems first, then by agent and target.
    pub fn probe_state(&self) -> Result<Vec<ProbeStateRow>, CmdbError> {
        let conn = self.connection();
        let run = || -> rusqlite::Result<Vec<ProbeStateRow>> {
            conn.prepare(
                "SELECT agent_id, zone, target, rule, expect, outcome, problem, since_ms,
                        last_seen_ms, last_seq, alert_id
                 FROM probe_state ORDER BY problem DESC, agent_id, expect DESC, target",
            )?
            .query_map([], |r| {
                Ok(ProbeStateRow {
                    agent_id: r.get(0)?,
                    zone: r.get(1)?,
                    target: r.get(2)?,
                    rule: r.get(3)?,
                    expect: r.get(4)?,
                    outcome: r.get(5)?,
                    problem: r.get::<_, i64>(6)? != 0,
                    since: Timestamp(r.get(7)?),
                    last_seen: Timestamp(r.get(8)?),
                    last_seq: r.get(9)?,
                    alert_id: r.get(10)?,
                })
            })?
            .collect()
        };
        run().map_err(|e| self.err(e))
    }

    /// Probe results, newest first, at most `limit`.
    pub fn probe_history(&self, limit: usize) -> Result<Vec<ProbeResultRow>, CmdbError> {
        let conn = self.connection();
        let run = || -> rusqlite::Result<Vec<ProbeResultRow>> {
            conn.prepare(
                "SELECT agent_id, zone, envelope_seq, received_at_ms, target, rule, expect,
                        outcome, elapsed_ms, detail, problem
                 FROM probe_results ORDER BY result_id DESC LIMIT ?1",
            )?
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok(ProbeResultRow {
                    agent_id: r.get(0)?,
                    zone: r.get(1)?,
                    envelope_seq: r.get(2)?,
                    received_at: Timestamp(r.get(3)?),
                    target: r.get(4)?,
                    rule: r.get(5)?,
                    expect: r.get(6)?,
                    outcome: r.get(7)?,
                    elapsed_ms: r.get(8)?,
                    detail: r.get(9)?,
                    problem: r.get::<_, i64>(10)? != 0,
                })
            })?
            .collect()
        };
        run().map_err(|e| self.err(e))
    }
}
