//! Two agents reporting the same CI with different values.
//!
//! A field device's CI key is its zone, endpoint and unit, so two agents of one zone polling
//! the same device write one CI. When a summary from one agent reports judged values (identity,
//! non-volatile blocks) that differ from what *another* agent reported last, nobody can tell
//! which is right (a misconfigured second gateway, a spoofed device, an address reused on two
//! segments). The outcome is explicit:
//!
//! - the values are stored as observed (the history shows both agents' values, each with its
//!   envelope), but the difference is **not judged as drift**: no unauthorised-change alert, no
//!   change-record match, no baseline movement, no pending confirmation;
//! - a `conflicting_observation` event names both agents and the differing values, every time;
//! - for a baselined device, one `conflicting_observation` alert (category `config`, medium,
//!   OCSF 5019) is raised when the conflict opens; further alternations only count
//!   (`observation_conflicts.reports`, counter `observations_conflicting`);
//! - the conflict closes (`conflict_resolved` event) when an agent takes the CI over without a
//!   judged difference.

use serde_json::{Value, json};

use super::alerts::Category;
use super::apply::Writer;
use super::baseline::{describe_change, is_identity, is_judged};
use super::judge::Changed;

/// Event kinds written here.
pub mod kind {
    pub const CONFLICTING_OBSERVATION: &str = "conflicting_observation";
    pub const CONFLICT_RESOLVED: &str = "conflict_resolved";
}

impl Writer<'_, '_> {
    /// Called when a CI last reported by `previous_agent` is reported by this envelope's agent
    /// with `changes` (the judged attributes that differ). `true`: a conflict, not to be judged.
    pub(super) fn conflicting(
        &mut self,
        key: &str,
        asset_id: i64,
        name: &str,
        previous_agent: &str,
        changes: &[Changed],
    ) -> rusqlite::Result<bool> {
        let me = self.meta.agent.as_str().to_owned();
        if previous_agent == me {
            return Ok(false);
        }
        let relevant: Vec<&Changed> = changes
            .iter()
            .filter(|(n, _, after)| is_judged(n, after.as_deref()))
            .collect();
        if relevant.is_empty() {
            let closed = self
                .db
                .prepare_cached("DELETE FROM observation_conflicts WHERE asset_id = ?1")?
                .execute([asset_id])?;
            if closed > 0 {
                self.event(
                    kind::CONFLICT_RESOLVED,
                    Some(key),
                    json!({ "name": name, "agents": [previous_agent, me] }),
                )?;
            }
            return Ok(false);
        }
        let described: Vec<Value> = relevant
            .iter()
            .map(|(n, before, after)| {
                let mut d = describe_change(n, before.as_deref(), after.as_deref());
                d["before_agent"] = json!(previous_agent);
                d["after_agent"] = json!(me);
                d
            })
            .collect();
        let mut pair = [previous_agent.to_owned(), me.clone()];
        pair.sort();
        let open = self
            .db
            .prepare_cached(
                "UPDATE observation_conflicts SET reports = reports + 1, last_ms = ?2
                 WHERE asset_id = ?1",
            )?
            .execute(rusqlite::params![asset_id, self.now])?;
        let mut alert_id = None;
        if open == 0 {
            let baselined = self
                .db
                .prepare_cached("SELECT 1 FROM baselines WHERE asset_id = ?1")?
                .exists([asset_id])?;
            if baselined {
                let category = if relevant.iter().any(|(n, _, _)| is_identity(n)) {
                    Category::Identity
                } else {
                    Category::Config
                };
                let detail = json!({
                    "name": name,
                    "agents": pair,
                    "changes": described,
                    "note": "two agents report different values for this device; not judged \
                             as drift until one agent reports it without a difference",
                });
                alert_id =
                    Some(self.alert(key, name, "conflicting_observation", category, &detail)?);
            }
            self.db
                .prepare_cached(
                    "INSERT INTO observation_conflicts (asset_id, agent_a, agent_b, first_ms,
                         last_ms, reports, alert_id)
                     VALUES (?1, ?2, ?3, ?4, ?4, 1, ?5)",
                )?
                .execute(rusqlite::params![
                    asset_id, pair[0], pair[1], self.now, alert_id
                ])?;
        }
        self.count("observations_conflicting", 1);
        self.event(
            kind::CONFLICTING_OBSERVATION,
            Some(key),
            json!({ "name": name, "agents": pair, "changes": described, "alert_id": alert_id }),
        )?;
        Ok(true)
    }
}
