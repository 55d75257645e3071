//! Presence debounce: a device is reported missing only after N consecutive unreachable
//! observations, once, and its return is recorded.
//!
//! `assets.rs` calls in here inside the apply transaction: when a device stops answering
//! ([`Writer::presence_down`]), at every further unreachable observation — changed
//! ([`Writer::presence_again`]) or unchanged ([`Writer::presence_unchanged`], the fast path that
//! only touches timestamps) — and when it answers again ([`Writer::presence_up`]). The streak
//! lives in `presence_streaks` (one row per currently unreachable asset). When it reaches
//! `unreachable_polls` (set by `serve --unreachable-polls`, stored in `drift_settings`,
//! default [`DEFAULT_UNREACHABLE_POLLS`]) and the device has an approved baseline, one
//! `device_unreachable` alert (presence, low) is raised. When the device answers again, a
//! `device_returned` event is recorded; if the disappearance had been alerted, a
//! `device_returned` alert (presence, severity 1 informational) tells the SIEM it is back.
//! A device that flaps shorter than N polls raises no alert (its `asset_unreachable` /
//! `asset_recovered` events are still recorded).

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

use super::alerts::Category;
use super::apply::Writer;
use super::{Cmdb, CmdbError};
use crate::time::rfc3339;

/// Consecutive unreachable observations before a baselined device raises `device_unreachable`.
pub const DEFAULT_UNREACHABLE_POLLS: u32 = 3;

const SETTING_UNREACHABLE_POLLS: &str = "unreachable_polls";

/// Event kinds written here.
pub mod kind {
    pub const DEVICE_RETURNED: &str = "device_returned";
}

/// The configured number of unreachable polls (the default when never set).
fn unreachable_polls(conn: &Connection) -> rusqlite::Result<u32> {
    let value: Option<i64> = conn
        .prepare_cached("SELECT value FROM drift_settings WHERE name = ?1")?
        .query_row([SETTING_UNREACHABLE_POLLS], |r| r.get(0))
        .optional()?;
    Ok(value
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v >= 1)
        .unwrap_or(DEFAULT_UNREACHABLE_POLLS))
}

impl Cmdb {
    /// Records how many consecutive unreachable observations raise `device_unreachable`
    /// (`serve --unreachable-polls`); 0 is refused by the CLI and read as the default here.
    pub fn set_unreachable_polls(&mut self, polls: u32) -> Result<(), CmdbError> {
        self.connection()
            .execute(
                "INSERT INTO drift_settings (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![SETTING_UNREACHABLE_POLLS, i64::from(polls.max(1))],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The number of consecutive unreachable observations that raise `device_unreachable`.
    pub fn unreachable_polls(&self) -> Result<u32, CmdbError> {
        unreachable_polls(self.connection()).map_err(|e| self.err(e))
    }
}

impl Writer<'_, '_> {
    /// A device that answered is unreachable now: its streak starts at one poll.
    pub(super) fn presence_down(&mut self, asset_id: i64) -> rusqlite::Result<()> {
        self.db
            .prepare_cached(
                "INSERT INTO presence_streaks (asset_id, agent_id, polls, since_ms, alert_id)
                 VALUES (?1, ?2, 1, ?3, NULL)
                 ON CONFLICT (asset_id) DO UPDATE SET agent_id = excluded.agent_id, polls = 1,
                     since_ms = excluded.since_ms, alert_id = NULL",
            )?
            .execute(params![asset_id, self.meta.agent.as_str(), self.now])?;
        self.presence_judge(asset_id)
    }

    /// One more unreachable observation of a device already unreachable.
    pub(super) fn presence_again(&mut self, asset_id: i64) -> rusqlite::Result<()> {
        let updated = self
            .db
            .prepare_cached(
                "UPDATE presence_streaks SET polls = polls + 1, agent_id = ?2 WHERE asset_id = ?1",
            )?
            .execute(params![asset_id, self.meta.agent.as_str()])?;
        if updated == 0 {
            // Unreachable since its first observation: the streak starts now.
            return self.presence_down(asset_id);
        }
        self.presence_judge(asset_id)
    }

    /// The fast path: of the assets whose observation did not change, those in a streak
    /// (still unreachable) count one more poll. One indexed query when none is unreachable.
    pub(super) fn presence_unchanged(&mut self, unchanged: &[i64]) -> rusqlite::Result<()> {
        let streaks: Vec<i64> = self
            .db
            .prepare_cached("SELECT asset_id FROM presence_streaks WHERE agent_id = ?1")?
            .query_map([self.meta.agent.as_str()], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if streaks.is_empty() {
            return Ok(());
        }
        let unchanged: HashSet<i64> = unchanged.iter().copied().collect();
        for id in streaks.into_iter().filter(|id| unchanged.contains(id)) {
            self.presence_again(id)?;
        }
        Ok(())
    }

    /// Raises `device_unreachable` once the streak is long enough, for a baselined device.
    fn presence_judge(&mut self, asset_id: i64) -> rusqlite::Result<()> {
        let (polls, since, alerted): (i64, i64, Option<i64>) = self
            .db
            .prepare_cached(
                "SELECT polls, since_ms, alert_id FROM presence_streaks WHERE asset_id = ?1",
            )?
            .query_row([asset_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        let needed = unreachable_polls(self.db)?;
        if alerted.is_some() || polls < i64::from(needed) {
            return Ok(());
        }
        let baselined = self
            .db
            .prepare_cached("SELECT 1 FROM baselines WHERE asset_id = ?1")?
            .exists([asset_id])?;
        if !baselined {
            return Ok(());
        }
        let (key, name, why): (String, String, Option<String>) = self
            .db
            .prepare_cached("SELECT ci_key, name, last_problem FROM assets WHERE asset_id = ?1")?
            .query_row([asset_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        let detail = json!({
            "name": name,
            "reason": why,
            "unreachable_polls": polls,
            "unreachable_since": rfc3339(since),
            "threshold_polls": needed,
        });
        let alert_id = self.alert(
            &key,
            &name,
            "device_unreachable",
            Category::Presence,
            &detail,
        )?;
        self.db
            .prepare_cached("UPDATE presence_streaks SET alert_id = ?2 WHERE asset_id = ?1")?
            .execute(params![asset_id, alert_id])?;
        Ok(())
    }

    /// The device answers again: its streak ends with a `device_returned` event, and a
    /// `device_returned` alert (informational) when its disappearance had been alerted.
    pub(super) fn presence_up(
        &mut self,
        key: &str,
        asset_id: i64,
        name: &str,
    ) -> rusqlite::Result<()> {
        let streak: Option<(i64, i64, Option<i64>)> = self
            .db
            .prepare_cached(
                "SELECT polls, since_ms, alert_id FROM presence_streaks WHERE asset_id = ?1",
            )?
            .query_row([asset_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let Some((polls, since, alerted)) = streak else {
            return Ok(());
        };
        self.db
            .prepare_cached("DELETE FROM presence_streaks WHERE asset_id = ?1")?
            .execute([asset_id])?;
        let mut detail = json!({
            "name": name,
            "unreachable_polls": polls,
            "unreachable_since": rfc3339(since),
            "unreachable_alert_id": alerted,
        });
        if alerted.is_some() {
            let alert_id = self.alert(
                key,
                name,
                "device_returned",
                Category::PresenceCleared,
                &detail,
            )?;
            detail["alert_id"] = json!(alert_id);
            self.count("devices_returned_alerted", 1);
        } else {
            self.count("devices_returned_unalerted", 1);
        }
        self.event(kind::DEVICE_RETURNED, Some(key), detail)
    }
}
