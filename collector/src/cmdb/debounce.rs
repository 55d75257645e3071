//! Confirmation-count debounce for judged values: with `confirm_polls` M ≥ 2 (set by
//! `serve --confirm-polls`, stored in `drift_settings`, default [`DEFAULT_CONFIRM_POLLS`] = 1,
//! which judges every change at once), a change of a baselined field device is judged only once
//! its new value has been seen in M consecutive answered observations.
//!
//! - The first unconfirmed change opens a `pending_changes` row holding each attribute's value
//!   before it; nothing is judged and no alert is raised (`changes_pending`).
//! - Every later observation that answers without changing a judged value counts one more
//!   sighting (unreachable observations do not count). At M the row closes and the difference
//!   between the stored "before" values and the current ones is judged as usual (authorised,
//!   back to baseline, unauthorised) with the confirming envelope as evidence; a value that went
//!   back to where it was is only recorded (`change_not_confirmed` event).
//! - A further change before confirmation restarts the count (a flap). The second flap — the
//!   value changed three times without ever being seen M times — raises one `unstable_value`
//!   alert for the attributes involved; further flaps are recorded as `unstable` only, and the
//!   value that finally settles is recorded as `unstable` without a second alert.
//!
//! The gateway host's facts are not debounced (they change rarely and never flap).

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use super::alerts::Category;
use super::apply::Writer;
use super::baseline::{describe_change, is_identity};
use super::judge::Changed;
use super::{Cmdb, CmdbError};
use crate::time::{rfc3339, sql_int};

/// Consecutive observations a changed value needs before it is judged (1: at once).
pub const DEFAULT_CONFIRM_POLLS: u32 = 1;

const SETTING_CONFIRM_POLLS: &str = "confirm_polls";

/// Flaps (changes before confirmation) that make a value `unstable`.
const UNSTABLE_FLAPS: i64 = 2;

/// Event kinds written here.
pub mod kind {
    pub const CHANGE_NOT_CONFIRMED: &str = "change_not_confirmed";
}

fn confirm_polls(conn: &Connection) -> rusqlite::Result<u32> {
    let value: Option<i64> = conn
        .prepare_cached("SELECT value FROM drift_settings WHERE name = ?1")?
        .query_row([SETTING_CONFIRM_POLLS], |r| r.get(0))
        .optional()?;
    Ok(value
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v >= 1)
        .unwrap_or(DEFAULT_CONFIRM_POLLS))
}

impl Cmdb {
    /// Records how many consecutive observations a changed value needs before it is judged
    /// (`serve --confirm-polls`); 0 is read as 1.
    pub fn set_confirm_polls(&mut self, polls: u32) -> Result<(), CmdbError> {
        self.connection()
            .execute(
                "INSERT INTO drift_settings (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![SETTING_CONFIRM_POLLS, i64::from(polls.max(1))],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The number of consecutive observations a changed value needs before it is judged.
    pub fn confirm_polls(&self) -> Result<u32, CmdbError> {
        confirm_polls(self.connection()).map_err(|e| self.err(e))
    }
}

type Before = BTreeMap<String, Option<String>>;

impl Writer<'_, '_> {
    /// Holds a change of a baselined asset until it is confirmed; `false` when it is to be
    /// judged now (M = 1 and nothing pending).
    pub(super) fn debounce(
        &mut self,
        key: &str,
        asset_id: i64,
        name: &str,
        relevant: &[&Changed],
        current: &HashMap<String, Option<String>>,
    ) -> rusqlite::Result<bool> {
        let pending: Option<(i64, String, Option<i64>)> = self
            .db
            .prepare_cached(
                "SELECT flaps, before, unstable_alert_id FROM pending_changes WHERE asset_id = ?1",
            )?
            .query_row([asset_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let Some((flaps, before, unstable)) = pending else {
            if confirm_polls(self.db)? <= 1 {
                return Ok(false);
            }
            let before: Before = relevant
                .iter()
                .map(|(n, b, _)| (n.clone(), b.clone()))
                .collect();
            self.db
                .prepare_cached(
                    "INSERT INTO pending_changes (asset_id, agent_id, seen, flaps, first_seen_ms,
                         first_seq, before, unstable_alert_id)
                     VALUES (?1, ?2, 1, 0, ?3, ?4, ?5, NULL)",
                )?
                .execute(params![
                    asset_id,
                    self.meta.agent.as_str(),
                    self.now,
                    sql_int(self.meta.seq),
                    json!(before).to_string(),
                ])?;
            self.count("changes_pending", 1);
            return Ok(true);
        };
        // Changed again before it was confirmed: a flap.
        let mut before: Before = serde_json::from_str(&before).unwrap_or_default();
        for (n, b, _) in relevant {
            before.entry(n.clone()).or_insert_with(|| b.clone());
        }
        let flaps = flaps + 1;
        let described = described(&before, current);
        let mut unstable = unstable;
        if flaps >= UNSTABLE_FLAPS {
            if unstable.is_none() {
                let category = if before.keys().any(|n| is_identity(n)) {
                    Category::Identity
                } else {
                    Category::Config
                };
                let detail = json!({
                    "name": name,
                    "changes": described,
                    "unstable": true,
                    "flaps": flaps,
                    "note": "changed again before it was seen in the configured number of \
                             consecutive polls: reported once; further changes raise no alert \
                             until it settles (mark the block volatile if it holds process values)",
                });
                let id = self.alert(key, name, "unstable_value", category, &detail)?;
                self.detected(key, "unstable", None, Some(id), &described)?;
                unstable = Some(id);
            } else {
                self.detected(key, "unstable", None, None, &described)?;
            }
            self.count("changes_unstable", 1);
        }
        self.db
            .prepare_cached(
                "UPDATE pending_changes SET seen = 1, flaps = ?2, before = ?3,
                     unstable_alert_id = ?4, agent_id = ?5 WHERE asset_id = ?1",
            )?
            .execute(params![
                asset_id,
                flaps,
                json!(before).to_string(),
                unstable,
                self.meta.agent.as_str()
            ])?;
        self.count("changes_pending", 1);
        Ok(true)
    }

    /// The fast path: assets whose observation did not change and that answer (not in a
    /// presence streak) count one more sighting of their pending value.
    pub(super) fn confirm_unchanged(&mut self, unchanged: &[i64]) -> rusqlite::Result<()> {
        let pending: Vec<i64> = self
            .db
            .prepare_cached(
                "SELECT asset_id FROM pending_changes WHERE agent_id = ?1
                     AND asset_id NOT IN (SELECT asset_id FROM presence_streaks)",
            )?
            .query_map([self.meta.agent.as_str()], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if pending.is_empty() {
            return Ok(());
        }
        let unchanged: HashSet<i64> = unchanged.iter().copied().collect();
        for id in pending.into_iter().filter(|id| unchanged.contains(id)) {
            self.confirm_step(id)?;
        }
        Ok(())
    }

    /// One more answered observation without a judged change; judges the pending change when
    /// it has been seen often enough.
    pub(super) fn confirm_step(&mut self, asset_id: i64) -> rusqlite::Result<()> {
        let updated = self
            .db
            .prepare_cached("UPDATE pending_changes SET seen = seen + 1 WHERE asset_id = ?1")?
            .execute([asset_id])?;
        if updated == 0 {
            return Ok(());
        }
        let (seen, first_ms, first_seq, before, unstable): (i64, i64, i64, String, Option<i64>) =
            self.db
                .prepare_cached(
                    "SELECT seen, first_seen_ms, first_seq, before, unstable_alert_id
                     FROM pending_changes WHERE asset_id = ?1",
                )?
                .query_row([asset_id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?;
        if seen < i64::from(confirm_polls(self.db)?) {
            return Ok(());
        }
        self.db
            .prepare_cached("DELETE FROM pending_changes WHERE asset_id = ?1")?
            .execute([asset_id])?;
        let before: Before = serde_json::from_str(&before).unwrap_or_default();
        let (key, name): (String, String) = self
            .db
            .prepare_cached("SELECT ci_key, name FROM assets WHERE asset_id = ?1")?
            .query_row([asset_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let mut current = HashMap::new();
        {
            let mut stmt = self.db.prepare_cached(
                "SELECT attribute, value FROM asset_attributes WHERE asset_id = ?1",
            )?;
            for row in stmt.query_map([asset_id], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
                let (n, v): (String, Option<String>) = row?;
                current.insert(n, v);
            }
        }
        let changes: Vec<Changed> = before
            .iter()
            .filter_map(|(n, b)| {
                let now = current.get(n).cloned().flatten();
                (now != *b).then(|| (n.clone(), b.clone(), now))
            })
            .collect();
        if changes.is_empty() {
            self.count("changes_not_confirmed", 1);
            return self.event(
                kind::CHANGE_NOT_CONFIRMED,
                Some(&key),
                json!({ "attributes": before.keys().collect::<Vec<_>>(),
                        "first_seen": rfc3339(first_ms), "first_seq": first_seq }),
            );
        }
        if unstable.is_some() {
            // Settled after being reported unstable: recorded, no second alert.
            let described = described(&before, &current);
            self.detected(&key, "unstable", None, None, &described)?;
            self.count("changes_unstable", 1);
            return Ok(());
        }
        self.count("changes_confirmed", 1);
        self.judge_now(&key, asset_id, &name, &changes, &current)
    }
}

/// Before (as held) and after (current) of every held attribute.
fn described(before: &Before, current: &HashMap<String, Option<String>>) -> Vec<Value> {
    before
        .iter()
        .map(|(n, b)| {
            let now = current.get(n).cloned().flatten();
            describe_change(n, b.as_deref(), now.as_deref())
        })
        .collect()
}
