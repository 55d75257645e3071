//! Change events from agents (`Body::Changes`): every change recorded with an explicit
//! outcome, applied ones judged at once, all in the envelope's one transaction.
//!
//! Outcomes (the `outcome` column, `outpost.changes_observed.v1`):
//!
//! | outcome             | meaning |
//! |---------------------|---------|
//! | `applied`           | the CI's stored value was the change's `before`: it now holds `after`, and the change was judged (an alert, an authorised change, or nothing without a baseline) |
//! | `already_current`   | the CI already holds `after` (a snapshot got here first, or the event was re-sent after an agent crash): nothing to do |
//! | `stale_base`        | the CI holds neither `before` nor `after` (an earlier change or snapshot was lost): not applied; the next snapshot converges and is judged |
//! | `awaiting_snapshot` | not enough in the event to rebuild the value (a truncated block, a gateway interface: interfaces are judged as one list): recorded; the next snapshot applies and judges it |
//! | `unknown_asset`     | no snapshot ever showed this CI: recorded, not applied (a snapshot creates it, and raises `new_device` in a baselined zone) |
//! | `other_agent`       | the CI is reported by another agent: recorded, not applied |
//! | `inconsistent`      | the ranges do not rebuild the announced block hash: recorded, not applied |
//! | `recorded`          | gateway listening sockets and new programs (not judged by the gateway baseline), presence and stability notices (`appeared`, `disappeared`, `returned`, `unstable`): recorded; presence is judged from snapshots (`unreachable_polls`); `unstable` on a baselined CI raises one `unstable_value` alert (none if its last judged change already was unstable) and makes the snapshots that follow count as repeats |
//!
//! An applied change clears the asset's stored content hash, so the next snapshot compares
//! attributes (and finds them current: no second alert) instead of trusting an old hash.

use std::collections::HashMap;

use outpost_proto::changes::{
    BlockChange, Change, ChangeKind, ChangeSet, FieldChange, apply_ranges,
};
use outpost_proto::model::RegisterBlock;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};

use super::alerts::Category;
use super::apply::{ApplyOutcome, EnvelopeMeta, Writer};
use super::attributes;
use super::gateway_baseline;
use super::record::kind;
use super::{Cmdb, CmdbError, ci_key};
use crate::time::{Timestamp, sql_int};

/// One recorded change (`outpost-collector changes-observed`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObservedChangeRow {
    pub change_id: i64,
    pub received_at: Timestamp,
    pub observed_at: Timestamp,
    pub agent_id: String,
    pub zone: String,
    pub envelope_seq: i64,
    pub envelope_hash: String,
    pub asset: Option<String>,
    pub asset_name: Option<String>,
    pub category: String,
    pub attribute: Option<String>,
    pub before: Value,
    pub after: Value,
    pub truncated: bool,
    pub outcome: String,
    pub detail: Option<String>,
}

/// The stored asset a change names.
struct Target {
    id: i64,
    key: String,
    agent: String,
    name: String,
}

/// What to write for one change.
struct Row<'a> {
    key: Option<&'a str>,
    name: Option<&'a str>,
    category: &'static str,
    attribute: Option<String>,
    before: Value,
    after: Value,
    truncated: bool,
    outcome: &'static str,
    detail: Option<String>,
}

impl Cmdb {
    /// Applies a verified change set in one transaction (its own, or the caller's).
    pub fn apply_changes(
        &mut self,
        meta: &EnvelopeMeta<'_>,
        set: &ChangeSet,
    ) -> Result<ApplyOutcome, CmdbError> {
        if self.conn.is_autocommit() {
            return self
                .in_transaction(|db| db.apply_changes(meta, set))
                .and_then(|inner| inner);
        }
        let sqlite = |source| CmdbError::Sqlite {
            path: self.path.clone(),
            source,
        };
        // Applied changes rewrite stored attributes: the cached content hashes no longer
        // describe them; the next summary reads them again.
        self.known_assets.remove(meta.agent.as_str());
        let mut w = Writer::new(&self.conn, meta);
        w.envelope().map_err(sqlite)?;
        w.chain_events().map_err(sqlite)?;
        w.count("change_sets", 1);
        if set.truncated {
            w.count("change_sets_truncated", 1);
            tracing::warn!(agent = %meta.agent, seq = meta.seq,
                "change set {} from agent {} was cut at its bound; the next snapshot carries the rest",
                meta.seq, meta.agent);
        }
        for change in &set.changes {
            w.observed_change(set, change).map_err(sqlite)?;
        }
        w.flush_counters().map_err(sqlite)?;
        Ok(w.out)
    }

    /// Recorded changes, newest last (the newest `limit` when given).
    pub fn observed_changes(
        &self,
        limit: Option<u32>,
    ) -> Result<Vec<ObservedChangeRow>, CmdbError> {
        let run = || -> rusqlite::Result<Vec<ObservedChangeRow>> {
            let mut stmt = self.conn.prepare(
                "SELECT * FROM (SELECT change_id, received_at_ms, observed_at_ms, agent_id, zone,
                     envelope_seq, envelope_hash, asset, asset_name, category, attribute,
                     before_value, after_value, truncated, outcome, detail
                 FROM observed_changes ORDER BY change_id DESC LIMIT ?1) ORDER BY change_id",
            )?;
            let json_of = |v: Option<String>| {
                v.and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or(Value::Null)
            };
            stmt.query_map([limit.map_or(-1, i64::from)], |r| {
                Ok(ObservedChangeRow {
                    change_id: r.get(0)?,
                    received_at: r.get(1)?,
                    observed_at: r.get(2)?,
                    agent_id: r.get(3)?,
                    zone: r.get(4)?,
                    envelope_seq: r.get(5)?,
                    envelope_hash: r.get(6)?,
                    asset: r.get(7)?,
                    asset_name: r.get(8)?,
                    category: r.get(9)?,
                    attribute: r.get(10)?,
                    before: json_of(r.get(11)?),
                    after: json_of(r.get(12)?),
                    truncated: r.get(13)?,
                    outcome: r.get(14)?,
                    detail: r.get(15)?,
                })
            })?
            .collect()
        };
        run().map_err(|source| CmdbError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }
}

impl Writer<'_, '_> {
    fn observed_change(&mut self, set: &ChangeSet, change: &Change) -> rusqlite::Result<()> {
        let Some(asset) = &change.asset else {
            let key = ci_key::gateway(self.meta.agent.as_str());
            let ChangeKind::Host(f) = &change.what else {
                return Ok(()); // ChangeSet::check refuses other kinds without an asset
            };
            let (outcome, detail) = self.host_change(&key, f)?;
            return self.record_change(
                set,
                Row {
                    key: Some(&key),
                    name: None,
                    category: "host",
                    attribute: Some(f.field.clone()),
                    before: json!(f.before),
                    after: json!(f.after),
                    truncated: false,
                    outcome,
                    detail,
                },
            );
        };
        let key = ci_key::asset(self.meta.zone, &asset.endpoint, asset.unit_id);
        let category = change.what.name();
        let (attribute, before, after, truncated) = match &change.what {
            ChangeKind::Identity(f) => (
                Some(f.field.clone()),
                json!(f.before),
                json!(f.after),
                false,
            ),
            ChangeKind::Block(b) | ChangeKind::Settled(b) => (
                Some(format!("block.{}", b.block.name)),
                json!({ "hash": b.before_hash.to_string() }),
                json!({ "hash": b.after_hash.to_string(), "ranges": ranges_json(b) }),
                b.truncated,
            ),
            ChangeKind::Unstable(b) => (
                Some(format!("block.{}", b.name)),
                Value::Null,
                Value::Null,
                false,
            ),
            ChangeKind::Appeared(id) => (
                None,
                Value::Null,
                json!(
                    id.fields()
                        .iter()
                        .filter_map(|(n, v)| v.map(|v| (n.to_string(), v.to_owned())))
                        .collect::<HashMap<String, String>>()
                ),
                false,
            ),
            ChangeKind::Disappeared { polls, reason } => (
                None,
                Value::Null,
                json!({ "polls": polls, "reason": reason }),
                false,
            ),
            ChangeKind::Returned | ChangeKind::Host(_) => (None, Value::Null, Value::Null, false),
        };
        let mut row = Row {
            key: Some(&key),
            name: Some(&asset.name),
            category,
            attribute,
            before,
            after,
            truncated,
            outcome: "recorded",
            detail: None,
        };
        let Some(target) = self.target(&key)? else {
            row.outcome = "unknown_asset";
            row.detail = Some("no snapshot has shown this asset yet: not applied".into());
            self.count("changes_unknown_asset", 1);
            return self.record_change(set, row);
        };
        if target.agent != self.meta.agent.as_str() {
            row.outcome = "other_agent";
            row.detail = Some(format!(
                "the CI is reported by agent {}: not applied",
                target.agent
            ));
            return self.record_change(set, row);
        }
        let (outcome, detail) = match &change.what {
            ChangeKind::Identity(f) => {
                self.apply_identity(&target, &f.field, f.before.as_deref(), f.after.as_deref())?
            }
            ChangeKind::Block(b) | ChangeKind::Settled(b) => self.apply_block(&target, b)?,
            ChangeKind::Unstable(b) => {
                let baselined = self
                    .db
                    .prepare_cached("SELECT 1 FROM baselines WHERE asset_id = ?1")?
                    .exists([target.id])?;
                if baselined {
                    self.unstable(&target, &b.name)?;
                }
                ("recorded", None)
            }
            _ => ("recorded", None),
        };
        row.outcome = outcome;
        row.detail = detail;
        self.record_change(set, row)
    }

    /// The agent reports a block as unstable: one `unstable_value` alert unless the CI's last
    /// judged change already is unstable (the snapshot path may have said so first), and a
    /// judged `unstable` row, so the snapshots that follow count as repeats (see `judge.rs`).
    fn unstable(&mut self, target: &Target, block: &str) -> rusqlite::Result<()> {
        let attribute = format!("block.{block}");
        let last: Option<String> = self
            .db
            .prepare_cached(
                "SELECT verdict FROM detected_changes WHERE asset = ?1
                 ORDER BY change_id DESC LIMIT 1",
            )?
            .query_row([&target.key], |r| r.get(0))
            .optional()?;
        let described = [json!({ "attribute": attribute, "unstable": true })];
        let alert = if last.as_deref() == Some("unstable") {
            None
        } else {
            let detail = json!({
                "name": target.name,
                "changes": described,
                "unstable": true,
                "note": "the agent saw this block change in consecutive polls: reported once \
                         until it settles (mark it volatile if it holds process values)",
            });
            Some(self.alert(
                &target.key,
                &target.name,
                "unstable_value",
                Category::Config,
                &detail,
            )?)
        };
        self.detected(&target.key, "unstable", None, alert, &described)?;
        self.count("changes_unstable", 1);
        Ok(())
    }

    /// A gateway fact: OS, kernel and hostname are applied and judged like a snapshot's;
    /// interfaces are judged from the next snapshot (as one list); listening sockets and new
    /// programs are recorded (the gateway baseline does not judge them).
    fn host_change(
        &mut self,
        key: &str,
        f: &FieldChange,
    ) -> rusqlite::Result<(&'static str, Option<String>)> {
        let Some(before) = gateway_baseline::stored(self.db, key)? else {
            return Ok((
                "unknown_asset",
                Some("no snapshot has shown this gateway yet: not applied".into()),
            ));
        };
        let column = match f.field.as_str() {
            "hostname" => "hostname",
            "os_name" => "os_name",
            "os_version" => "os_version",
            "kernel_version" => "kernel_version",
            "interface" => {
                return Ok((
                    "awaiting_snapshot",
                    Some("interfaces are judged from the next snapshot".into()),
                ));
            }
            _ => return Ok(("recorded", None)),
        };
        let stored = before.get(column).cloned().flatten();
        if stored == f.after {
            return Ok(("already_current", None));
        }
        if stored != f.before {
            self.count("changes_stale_base", 1);
            return Ok((
                "stale_base",
                Some(format!(
                    "the CMDB holds {stored:?}, not the change's before value {:?}",
                    f.before
                )),
            ));
        }
        let mut after = before.clone();
        after.insert(column.to_owned(), f.after.clone());
        let name = after
            .get("hostname")
            .cloned()
            .flatten()
            .unwrap_or_else(|| format!("gateway of {}", self.meta.agent));
        self.judge_gateway_facts(key, &name, &before, after, &[])?;
        let sql = format!("UPDATE gateways SET {column} = ?2, last_seen_ms = ?3 WHERE ci_key = ?1");
        self.db
            .prepare_cached(&sql)?
            .execute(params![key, f.after, self.now])?;
        self.count("changes_applied", 1);
        Ok(("applied", None))
    }

    fn target(&mut self, key: &str) -> rusqlite::Result<Option<Target>> {
        self.db
            .prepare_cached("SELECT asset_id, agent_id, name FROM assets WHERE ci_key = ?1")?
            .query_row([key], |r| {
                Ok(Target {
                    id: r.get(0)?,
                    key: key.to_owned(),
                    agent: r.get(1)?,
                    name: r.get(2)?,
                })
            })
            .optional()
    }

    fn attributes_of(
        &mut self,
        asset_id: i64,
    ) -> rusqlite::Result<HashMap<String, Option<String>>> {
        let mut out = HashMap::new();
        let mut stmt = self
            .db
            .prepare_cached("SELECT attribute, value FROM asset_attributes WHERE asset_id = ?1")?;
        for row in stmt.query_map([asset_id], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
            let (name, value) = row?;
            out.insert(name, value);
        }
        Ok(out)
    }

    fn apply_identity(
        &mut self,
        target: &Target,
        attribute: &str,
        before: Option<&str>,
        after: Option<&str>,
    ) -> rusqlite::Result<(&'static str, Option<String>)> {
        let current = self.attributes_of(target.id)?;
        let stored = current.get(attribute).cloned().flatten();
        if stored.as_deref() == after {
            return Ok(("already_current", None));
        }
        if stored.as_deref() != before {
            self.count("changes_stale_base", 1);
            return Ok((
                "stale_base",
                Some(format!(
                    "the CMDB holds {stored:?}, not the change's before value {before:?}"
                )),
            ));
        }
        self.apply_attribute(target, attribute, before, after, current)?;
        Ok(("applied", None))
    }

    fn apply_block(
        &mut self,
        target: &Target,
        b: &BlockChange,
    ) -> rusqlite::Result<(&'static str, Option<String>)> {
        let attribute = format!("block.{}", b.block.name);
        let current = self.attributes_of(target.id)?;
        let stored = current.get(&attribute).cloned().flatten();
        let parsed: Option<Value> = stored.as_deref().and_then(|s| serde_json::from_str(s).ok());
        let stored_hash = parsed
            .as_ref()
            .and_then(|v| v["hash"].as_str().map(str::to_owned));
        if stored_hash.as_deref() == Some(b.after_hash.to_string().as_str()) {
            return Ok(("already_current", None));
        }
        if stored_hash.as_deref() != Some(b.before_hash.to_string().as_str()) {
            self.count("changes_stale_base", 1);
            return Ok((
                "stale_base",
                Some("the CMDB's block hash is not the change's before hash".into()),
            ));
        }
        if b.truncated {
            return Ok((
                "awaiting_snapshot",
                Some("more registers changed than the event carries: the next snapshot applies the block".into()),
            ));
        }
        let values: Vec<u16> = parsed
            .as_ref()
            .and_then(|v| v["values"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_u64().and_then(|n| u16::try_from(n).ok()))
            .collect();
        let rebuilt = apply_ranges(&values, b.len, &b.ranges)
            .map(|v| RegisterBlock::new(b.block.name.clone(), b.block.kind, b.block.start, v))
            .filter(|block| block.hash == b.after_hash);
        let Some(block) = rebuilt else {
            self.count("changes_inconsistent", 1);
            return Ok((
                "inconsistent",
                Some("the ranges do not rebuild the announced block hash".into()),
            ));
        };
        let value = attributes::block_value(&block);
        self.apply_attribute(target, &attribute, stored.as_deref(), Some(&value), current)?;
        Ok(("applied", None))
    }

    /// Writes one attribute (and its column), the `asset_changed` event, and judges it.
    fn apply_attribute(
        &mut self,
        target: &Target,
        attribute: &str,
        before: Option<&str>,
        after: Option<&str>,
        mut current: HashMap<String, Option<String>>,
    ) -> rusqlite::Result<()> {
        self.set_attribute(target.id, attribute, before, after)?;
        if let Some(column) = identity_column(attribute) {
            let sql = format!("UPDATE assets SET {column} = ?2 WHERE asset_id = ?1");
            self.db
                .prepare_cached(&sql)?
                .execute(params![target.id, after])?;
        }
        // The stored content hash no longer describes the stored attributes.
        self.db
            .prepare_cached(
                "UPDATE assets SET content_hash = X'', last_envelope_seq = ?2 WHERE asset_id = ?1",
            )?
            .execute(params![target.id, sql_int(self.meta.seq)])?;
        current.insert(attribute.to_owned(), after.map(str::to_owned));
        self.out.assets_changed += 1;
        self.count("changes_applied", 1);
        let drift = json!([{
            "attribute": attribute,
            "old": attributes::event_value(attribute, before),
            "new": attributes::event_value(attribute, after),
        }]);
        self.event(
            kind::ASSET_CHANGED,
            Some(&target.key),
            json!({ "changes": drift, "from": "change_event" }),
        )?;
        let changed = vec![(
            attribute.to_owned(),
            before.map(str::to_owned),
            after.map(str::to_owned),
        )];
        self.judge_change(&target.key, target.id, &target.name, &changed, &current)
    }

    fn record_change(&mut self, set: &ChangeSet, row: Row<'_>) -> rusqlite::Result<()> {
        self.count("changes_observed", 1);
        self.db
            .prepare_cached(
                "INSERT INTO observed_changes (received_at_ms, observed_at_ms, agent_id, zone,
                     envelope_seq, envelope_hash, base_summary_seq, asset, asset_name, category,
                     attribute, before_value, after_value, truncated, outcome, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )?
            .execute(params![
                self.now,
                sql_int(set.observed_ms),
                self.meta.agent.as_str(),
                self.meta.zone.as_str(),
                sql_int(self.meta.seq),
                self.hash_hex,
                sql_int(set.base_summary_seq),
                row.key,
                row.name,
                row.category,
                row.attribute,
                row.before.to_string(),
                row.after.to_string(),
                row.truncated,
                row.outcome,
                row.detail,
            ])?;
        Ok(())
    }
}

/// The `assets` column that mirrors an identity attribute.
fn identity_column(attribute: &str) -> Option<&'static str> {
    Some(match attribute {
        "vendor_name" => "vendor_name",
        "product_code" => "product_code",
        "revision" => "revision",
        "vendor_url" => "vendor_url",
        "product_name" => "product_name",
        "model_name" => "model_name",
        "user_application_name" => "user_application_name",
        _ => return None,
    })
}

fn ranges_json(b: &BlockChange) -> Value {
    Value::Array(
        b.ranges
            .iter()
            .map(|r| {
                json!({
                    "address": u32::from(b.block.start) + u32::from(r.offset),
                    "before": r.before,
                    "after": r.after,
                })
            })
            .collect(),
    )
}
