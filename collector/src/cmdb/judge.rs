//! Judging a detected change, inside the transaction that applies the summary.
//!
//! `assets.rs` calls in here once per changed, new or newly unreachable asset. For an asset
//! with an approved baseline ([`super::baseline`]), a change of judged attributes is:
//!
//! - **authorised** when an open (or implemented) change record for the CI covers the time it
//!   was observed and every expected value matches: the record is marked implemented with the
//!   evidence, and its baseline moves forward at once if the record says `auto_confirm`;
//! - **back to baseline** when no record covers it but the CI now matches its baseline again;
//! - **unauthorised** otherwise: an alert goes to the outbox (see [`super::alerts`]); when the
//!   same attribute changed without authorisation in the agent's previous summary too, one
//!   `unstable_value` alert is raised instead and further consecutive changes only recorded
//!   (noise control for values that change every poll but are not marked volatile).
//!
//! A device appearing in a baselined zone is a `new_device` alert; a baselined device that stays
//! unreachable is a `device_unreachable` alert (see [`super::presence`]). Assets and zones without a baseline raise no
//! alerts (their changes are still in the history and the event log).

use std::collections::{BTreeMap, HashMap};

use outpost_proto::model::AssetObservation;
use rusqlite::{OptionalExtension, params};
use serde_json::{Value, json};

use super::alerts::{self, Category, NewAlert};
use super::apply::Writer;
use super::baseline::{self, describe_change, is_identity, is_judged};
use super::change_record::{self, Candidate};
use super::gateway_baseline;
use crate::time::sql_int;

/// Event kinds written by the judge.
pub mod kind {
    pub const CHANGE_AUTHORISED: &str = "change_authorised";
    pub const CHANGE_UNAUTHORISED: &str = "change_unauthorised";
    pub const BACK_TO_BASELINE: &str = "back_to_baseline";
    pub const NEW_DEVICE: &str = "new_device";
}

/// What a judged CI is, for moving its baseline.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    /// A field device (its asset id).
    Asset(i64),
    /// The gateway host of the envelope's agent.
    Gateway,
}

/// Whether a change repeats one from the previous poll.
enum Flapping {
    No,
    /// The second change in consecutive polls: one `unstable_value` alert.
    Started,
    /// Third and later: recorded, no alert.
    Again,
}

/// One attribute that changed in this envelope: name, before, after.
pub(super) type Changed = (String, Option<String>, Option<String>);

impl Writer<'_, '_> {
    /// Judges the changes of one known asset (`current`: all its attributes after them).
    pub(super) fn judge_change(
        &mut self,
        key: &str,
        asset_id: i64,
        name: &str,
        changes: &[Changed],
        current: &HashMap<String, Option<String>>,
    ) -> rusqlite::Result<()> {
        let relevant: Vec<&Changed> = changes
            .iter()
            .filter(|(n, _, after)| is_judged(n, after.as_deref()))
            .collect();
        if relevant.is_empty() {
            // Nothing judged changed (e.g. only a volatile block): one more sighting of a
            // pending value.
            return self.confirm_step(asset_id);
        }
        let baselined = self
            .db
            .prepare_cached("SELECT 1 FROM baselines WHERE asset_id = ?1")?
            .exists([asset_id])?;
        if !baselined {
            self.count("changes_without_baseline", 1);
            return Ok(());
        }
        if self.debounce(key, asset_id, name, &relevant, current)? {
            return Ok(());
        }
        self.judge_now(key, asset_id, name, changes, current)
    }

    /// Judges changes seen often enough (see [`super::debounce`]).
    pub(super) fn judge_now(
        &mut self,
        key: &str,
        asset_id: i64,
        name: &str,
        changes: &[Changed],
        current: &HashMap<String, Option<String>>,
    ) -> rusqlite::Result<()> {
        let relevant: Vec<&Changed> = changes
            .iter()
            .filter(|(n, _, after)| is_judged(n, after.as_deref()))
            .collect();
        let Some(approved) = baseline::approved(self.db, asset_id)? else {
            self.count("changes_without_baseline", 1);
            return Ok(());
        };
        let judged: BTreeMap<String, Option<String>> = current
            .iter()
            .filter(|(n, v)| is_judged(n, v.as_deref()))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        let described: Vec<Value> = relevant
            .iter()
            .map(|(n, before, after)| describe_change(n, before.as_deref(), after.as_deref()))
            .collect();
        let drift = baseline::differences(&approved, &judged);
        let category = if relevant.iter().any(|(n, _, _)| is_identity(n)) {
            Category::Identity
        } else {
            Category::Config
        };
        self.judged(
            key,
            name,
            &described,
            current,
            drift,
            category,
            Target::Asset(asset_id),
        )
    }

    /// The verdict on a change of a baselined CI (field device or gateway): authorised by a
    /// covering change record, back to baseline, or an unauthorised-change alert.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn judged(
        &mut self,
        key: &str,
        name: &str,
        described: &[Value],
        current: &HashMap<String, Option<String>>,
        drift: Vec<Value>,
        category: Category,
        target: Target,
    ) -> rusqlite::Result<()> {
        let mut near_misses = Vec::new();
        for candidate in change_record::covering(self.db, key, self.now)? {
            let mismatches = change_record::mismatches(&candidate.expect, current);
            if mismatches.is_empty() {
                return self.authorised(key, target, &candidate, described);
            }
            near_misses.push(json!({ "ticket": candidate.ticket, "mismatches": mismatches }));
        }
        let attributes: Vec<&str> = described
            .iter()
            .filter_map(|c| c["attribute"].as_str())
            .collect();
        let flapping = self.flapping(key, &attributes)?;
        if drift.is_empty() && !matches!(flapping, Flapping::Again) {
            self.detected(key, "back_to_baseline", None, None, described)?;
            self.count("changes_back_to_baseline", 1);
            return self.event(
                kind::BACK_TO_BASELINE,
                Some(key),
                json!({ "changes": described }),
            );
        }
        match flapping {
            Flapping::No => {}
            Flapping::Again => {
                // Already reported as unstable: recorded and counted, no new alert.
                self.detected(key, "unstable", None, None, described)?;
                self.count("changes_unstable", 1);
                return Ok(());
            }
            Flapping::Started => {
                let detail = json!({
                    "name": name,
                    "changes": described,
                    "drift": drift,
                    "unstable": true,
                    "note": "changed in consecutive polls: reported once; further changes in \
                             consecutive polls raise no alert until it settles (mark the block \
                             volatile if it holds process values)",
                });
                let alert_id = self.alert(key, name, "unstable_value", category, &detail)?;
                self.detected(key, "unstable", None, Some(alert_id), described)?;
                self.count("changes_unstable", 1);
                return Ok(());
            }
        }
        let detail = json!({
            "name": name,
            "changes": described,
            "drift": drift,
            "near_misses": near_misses,
        });
        let alert_id = self.alert(key, name, "unauthorised_change", category, &detail)?;
        self.detected(key, "unauthorised", None, Some(alert_id), described)?;
        self.count("changes_unauthorised", 1);
        self.event(
            kind::CHANGE_UNAUTHORISED,
            Some(key),
            json!({ "alert_id": alert_id, "category": category.name(), "changes": described,
                    "near_misses": near_misses }),
        )
    }

    /// Whether this CI's previous judged change came from the agent's previous poll cycle (its
    /// previous summary, or a change event sealed after the summary before that) and touched
    /// one of the same attributes without authorisation (a value changing every poll).
    fn flapping(&mut self, key: &str, attributes: &[&str]) -> rusqlite::Result<Flapping> {
        let last: Option<(String, i64, String, String)> = self
            .db
            .prepare_cached(
                "SELECT verdict, envelope_seq, agent_id, changes FROM detected_changes
                 WHERE asset = ?1 ORDER BY change_id DESC LIMIT 1",
            )?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        let Some((verdict, seq, agent, changes)) = last else {
            return Ok(Flapping::No);
        };
        if agent != self.meta.agent.as_str()
            || !matches!(
                verdict.as_str(),
                "unauthorised" | "unstable" | "back_to_baseline"
            )
        {
            return Ok(Flapping::No);
        }
        let previous_summary: Option<i64> = self
            .db
            .prepare_cached(
                "SELECT MAX(seq) FROM envelopes WHERE agent_id = ?1 AND seq < ?2
                     AND kind = 'summary'",
            )?
            .query_row(
                params![self.meta.agent.as_str(), sql_int(self.meta.seq)],
                |r| r.get(0),
            )?;
        let same = serde_json::from_str::<Value>(&changes)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|prev| {
                prev.iter()
                    .filter_map(|c| c["attribute"].as_str())
                    .any(|a| attributes.contains(&a))
            });
        // Change events (`Body::Changes`) go out before their cycle's summary: a change judged
        // from one sealed after the summary before the previous one is from the previous (or
        // this) cycle too. Without change events this is exactly "from the previous summary".
        let summary_before: Option<i64> = match previous_summary {
            Some(prev) => self
                .db
                .prepare_cached(
                    "SELECT MAX(seq) FROM envelopes WHERE agent_id = ?1 AND seq < ?2
                         AND kind = 'summary'",
                )?
                .query_row(params![self.meta.agent.as_str(), prev], |r| r.get(0))?,
            None => None,
        };
        let recent = match previous_summary {
            Some(prev) if seq == prev => true,
            Some(_) => {
                seq > summary_before.unwrap_or(0)
                    && seq < sql_int(self.meta.seq)
                    && self
                        .db
                        .prepare_cached(
                            "SELECT 1 FROM envelopes WHERE agent_id = ?1 AND seq = ?2
                                 AND kind = 'changes'",
                        )?
                        .exists(params![self.meta.agent.as_str(), seq])?
            }
            None => false,
        };
        if !recent || !same {
            return Ok(Flapping::No);
        }
        Ok(if verdict == "unstable" {
            Flapping::Again
        } else {
            Flapping::Started
        })
    }

    fn authorised(
        &mut self,
        key: &str,
        target: Target,
        record: &Candidate,
        described: &[Value],
    ) -> rusqlite::Result<()> {
        self.detected(key, "authorised", Some(record.record_id), None, described)?;
        let state = if record.auto_confirm {
            "confirmed"
        } else {
            "implemented"
        };
        self.db
            .prepare_cached(
                "UPDATE change_records SET state = 'implemented',
                     implemented_at_ms = COALESCE(implemented_at_ms, ?2),
                     confirmed_at_ms = NULL, confirmed_by = NULL
                 WHERE record_id = ?1",
            )?
            .execute(params![record.record_id, self.now])?;
        if record.auto_confirm {
            // Only what authorised evidence explains moves (never an earlier unauthorised change).
            let reason = format!("change record {} implemented (auto_confirm)", record.ticket);
            match target {
                Target::Asset(asset_id) => baseline::advance(
                    self.db,
                    asset_id,
                    key,
                    self.now,
                    "auto",
                    &reason,
                    &record.ticket,
                )?,
                Target::Gateway => gateway_baseline::advance(
                    self.db,
                    key,
                    self.now,
                    "auto",
                    &reason,
                    &record.ticket,
                )?,
            };
            self.db
                .prepare_cached(
                    "UPDATE change_records SET state = 'confirmed', confirmed_at_ms = ?2,
                         confirmed_by = 'auto' WHERE record_id = ?1",
                )?
                .execute(params![record.record_id, self.now])?;
        }
        self.count("changes_authorised", 1);
        self.event(
            kind::CHANGE_AUTHORISED,
            Some(key),
            json!({ "ticket": record.ticket, "state": state, "changes": described }),
        )
    }

    /// A device seen for the first time; an alert if its zone has an approved baseline.
    pub(super) fn judge_new(&mut self, key: &str, obs: &AssetObservation) -> rusqlite::Result<()> {
        let baselined = self
            .db
            .prepare_cached("SELECT 1 FROM baseline_zones WHERE zone = ?1")?
            .exists([self.meta.zone.as_str()])?;
        if !baselined {
            return Ok(());
        }
        let id = &obs.identity;
        let detail = json!({
            "name": obs.name,
            "endpoint": obs.endpoint.to_string(),
            "unit_id": obs.unit_id,
            "vendor_name": id.vendor_name,
            "product_code": id.product_code,
            "revision": id.revision,
            "model_name": id.model_name,
        });
        let alert_id = self.alert(key, &obs.name, "new_device", Category::NewDevice, &detail)?;
        self.count("new_devices", 1);
        self.event(
            kind::NEW_DEVICE,
            Some(key),
            json!({ "alert_id": alert_id, "name": obs.name }),
        )
    }

    pub(super) fn alert(
        &mut self,
        key: &str,
        name: &str,
        kind: &str,
        category: Category,
        detail: &Value,
    ) -> rusqlite::Result<i64> {
        let id = alerts::insert(
            self.db,
            &NewAlert {
                raised_at_ms: self.now,
                kind,
                category,
                asset: key,
                asset_name: name,
                zone: self.meta.zone.as_str(),
                agent: self.meta.agent.as_str(),
                agent_time_ms: sql_int(self.meta.agent_time_ms),
                envelope_seq: sql_int(self.meta.seq),
                envelope_hash: &self.hash_hex,
                detail,
            },
        )?;
        self.count("alerts_raised", 1);
        Ok(id)
    }

    pub(super) fn detected(
        &mut self,
        key: &str,
        verdict: &str,
        record: Option<i64>,
        alert: Option<i64>,
        changes: &[Value],
    ) -> rusqlite::Result<()> {
        self.db
            .prepare_cached(
                "INSERT INTO detected_changes (asset, verdict, record_id, alert_id,
                     observed_at_ms, agent_time_ms, agent_id, zone, envelope_seq, envelope_hash,
                     changes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                key,
                verdict,
                record,
                alert,
                self.now,
                sql_int(self.meta.agent_time_ms),
                self.meta.agent.as_str(),
                self.meta.zone.as_str(),
                sql_int(self.meta.seq),
                self.hash_hex,
                Value::Array(changes.to_vec()).to_string(),
            ])?;
        Ok(())
    }
}
