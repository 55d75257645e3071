//! The field-device part of applying a summary: for each observation, touch, insert or update
//! its CI, attributes, history, relations and events (see [`super::attributes`] for what an
//! observation says). Runs inside the transaction [`super::apply`] opened.
//!
//! An asset listed unchanged is not written at all: it *follows* its agent's latest summary
//! (`follows_agent`, see `MIGRATION_INGEST_FOLLOWS` in [`super::schema`]), and readers take
//! its times from the `asset_times` view. Writes happen only when something changes: a changed
//! or new asset is written with this summary's times (and follows from then on), an asset the
//! summary does not list has the times it had frozen into its columns.

use std::collections::{HashMap, HashSet};

use outpost_proto::model::{AssetObservation, PollStatus};
use rusqlite::{OptionalExtension, params};
use serde_json::json;

use super::apply::Writer;
use super::attributes::{self, answered, status_name};
use super::reconcile::{Basis, Candidate};
use super::record::kind;
use crate::time::sql_int;

/// An asset's stored state, read only when its observation changed.
struct Stored {
    id: i64,
    agent: String,
    status: String,
    attributes: HashMap<String, Option<String>>,
}

impl Writer<'_, '_> {
    /// `prepared` holds each observation's candidate identity and content hash, in order (see
    /// [`super::apply::Prepared`]). The cache maps a candidate key to the CI it resolved to
    /// (see [`super::reconcile`]), so an unchanged observation is still one lookup.
    pub(super) fn assets(
        &mut self,
        observations: &[AssetObservation],
        prepared: &[(Candidate, [u8; 32])],
        cached: Option<HashMap<String, (i64, [u8; 32])>>,
    ) -> rusqlite::Result<HashMap<String, (i64, [u8; 32])>> {
        let mut known = match cached {
            Some(known) => known,
            None => self.load_known()?,
        };
        let mut seen: HashSet<&str> = HashSet::with_capacity(observations.len());
        let mut seen_ids: HashSet<i64> = HashSet::with_capacity(observations.len());
        let mut unchanged = Vec::with_capacity(observations.len());
        // CIs written under a candidate key in this summary: other cache entries naming them
        // describe content that is no longer stored, and are dropped after the loop.
        let mut rewritten: HashMap<i64, &str> = HashMap::new();
        for (obs, (cand, hash)) in strongest_first(observations, prepared) {
            let key = &cand.key;
            if !seen.insert(key) {
                // The agent listed one device twice; the first entry wins.
                tracing::warn!(agent = %self.meta.agent, seq = self.meta.seq, asset = %key,
                    "summary lists this device more than once; keeping the first entry");
                self.count("summary_duplicate_assets", 1);
                continue;
            }
            match known.get(key) {
                Some((id, stored)) if stored == hash && seen_ids.insert(*id) => {
                    self.out.assets += 1;
                    unchanged.push(*id);
                    self.out.assets_unchanged += 1;
                }
                _ => {
                    let (existing, ci) = self.resolve(obs, cand)?;
                    if let Some(id) = existing.filter(|id| !seen_ids.insert(*id)) {
                        tracing::warn!(agent = %self.meta.agent, seq = self.meta.seq,
                            asset = %ci, asset_id = id, endpoint = %obs.endpoint,
                            "a second observation in this summary resolves to the same CI; \
                             keeping the first");
                        self.count("summary_duplicate_assets", 1);
                        continue;
                    }
                    self.out.assets += 1;
                    let stored = match existing {
                        Some(_) => self.load(&ci)?,
                        None => None,
                    };
                    let id = match stored {
                        Some(stored) => self.update(&ci, stored, obs, hash)?,
                        None => {
                            let id = self.insert(&ci, obs, hash)?;
                            self.identified(id, &ci, cand)?;
                            seen_ids.insert(id);
                            id
                        }
                    };
                    self.observed(id, &ci, obs)?;
                    known.insert(key.clone(), (id, *hash));
                    rewritten.insert(id, key);
                }
            }
        }
        if !rewritten.is_empty() || !self.reidentified.is_empty() {
            let stale: HashSet<i64> = self.reidentified.drain(..).collect();
            known.retain(|k, (id, _)| match rewritten.get(id) {
                Some(fresh) => *fresh == k,
                None => !stale.contains(id),
            });
        }
        // Assets this summary does not list (under any key) stop following the agent.
        let missing: Vec<i64> = known
            .iter()
            .filter(|(key, (id, _))| !seen.contains(key.as_str()) && !seen_ids.contains(id))
            .map(|(_, (id, _))| *id)
            .collect();
        self.unfollow(&missing)?;
        let elsewhere = self.follow(&unchanged)?;
        self.observed_unchanged(&elsewhere)?;
        self.presence_unchanged(&unchanged)?;
        self.confirm_unchanged(&unchanged)?;
        Ok(known)
    }

    /// One query for every asset this agent reported before.
    fn load_known(&mut self) -> rusqlite::Result<HashMap<String, (i64, [u8; 32])>> {
        let mut known = HashMap::new();
        let mut stmt = self.db.prepare_cached(
            "SELECT ci_key, asset_id, content_hash FROM assets WHERE agent_id = ?1",
        )?;
        let rows = stmt.query_map([self.meta.agent.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        for row in rows {
            let (key, id, hash) = row?;
            // A malformed stored hash simply never matches: the asset is re-read and rewritten.
            let hash = <[u8; 32]>::try_from(hash.as_slice()).unwrap_or_default();
            known.insert(key, (id, hash));
        }
        Ok(known)
    }

    /// Assets whose observation did not change follow the agent's latest summary from now on.
    /// Writes only those that did not follow it already (first summary after the migration, a
    /// device listed again after a summary without it), in one statement; in steady state it
    /// only reads. Their stored status is current, so "answered" is read from it.
    fn follow(&mut self, ids: &[i64]) -> rusqlite::Result<Vec<i64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // A CI another agent reports (a device seen by two agents) cannot follow this one:
        // its times are written instead, and it is returned so that this agent's observation
        // row is refreshed too. One statement either way.
        let mut stmt = self.db.prepare_cached(
            "UPDATE assets SET follows_agent = (agent_id = ?4), last_polled_ms = ?1,
                 last_seen_ms = CASE WHEN status <> 'unreachable' THEN ?1 ELSE last_seen_ms END,
                 last_envelope_seq = ?2
             WHERE asset_id IN (SELECT value FROM json_each(?3))
                 AND (follows_agent = 0 OR agent_id <> ?4)
             RETURNING asset_id, agent_id <> ?4",
        )?;
        let rows = stmt.query_map(
            params![
                self.now,
                sql_int(self.meta.seq),
                id_list(ids),
                self.meta.agent.as_str()
            ],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?)),
        )?;
        let mut elsewhere = Vec::new();
        for row in rows {
            let (id, other_agent) = row?;
            if other_agent {
                elsewhere.push(id);
            }
        }
        Ok(elsewhere)
    }

    /// Assets of this agent that its summary does not list stop following it: the times they
    /// had (as of the agent's previous summary) are written into their columns. Must run
    /// before the agent's latest summary is moved on ([`Writer::latest_summary`]).
    fn unfollow(&mut self, ids: &[i64]) -> rusqlite::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.db
            .prepare_cached(
                "UPDATE assets SET follows_agent = 0,
                     (last_seen_ms, last_polled_ms, last_envelope_seq) =
                     (SELECT t.last_seen_ms, t.last_polled_ms, t.last_envelope_seq
                      FROM asset_times t WHERE t.asset_id = assets.asset_id)
                 WHERE asset_id IN (SELECT value FROM json_each(?1)) AND follows_agent = 1",
            )?
            .execute([id_list(ids)])?;
        Ok(())
    }

    /// Records this summary as the agent's latest: every asset that follows it now has its
    /// times. Runs after every asset of the summary was written.
    pub(super) fn latest_summary(&mut self) -> rusqlite::Result<()> {
        self.db
            .prepare_cached(
                "UPDATE agents SET last_summary_ms = ?2, last_summary_seq = ?3
                 WHERE agent_id = ?1",
            )?
            .execute(params![
                self.meta.agent.as_str(),
                self.now,
                sql_int(self.meta.seq)
            ])?;
        Ok(())
    }

    fn load(&mut self, key: &str) -> rusqlite::Result<Option<Stored>> {
        let row: Option<(i64, String, String)> = self
            .db
            .prepare_cached("SELECT asset_id, agent_id, status FROM assets WHERE ci_key = ?1")?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let Some((id, agent, status)) = row else {
            return Ok(None);
        };
        let mut attributes = HashMap::new();
        let mut stmt = self
            .db
            .prepare_cached("SELECT attribute, value FROM asset_attributes WHERE asset_id = ?1")?;
        for row in stmt.query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
            let (name, value) = row?;
            attributes.insert(name, value);
        }
        Ok(Some(Stored {
            id,
            agent,
            status,
            attributes,
        }))
    }

    fn insert(&mut self, key: &str, obs: &AssetObservation, hash: &[u8]) -> rusqlite::Result<i64> {
        let attrs: HashMap<String, Option<String>> = attributes::observed(obs)
            .into_iter()
            .filter(|(_, v)| v.is_some())
            .collect();
        let col = |name: &str| attrs.get(name).cloned().flatten();
        let seen = answered(&obs.status).then_some(self.now);
        self.db
            .prepare_cached(
                "INSERT INTO assets (ci_key, zone, agent_id, name, endpoint, unit_id,
                     vendor_name, product_code, revision, vendor_url, product_name, model_name,
                     user_application_name, ident_method, status, last_problem, content_hash,
                     first_seen_ms, last_seen_ms, last_polled_ms, last_envelope_seq,
                     follows_agent)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                     ?17, ?18, ?19, ?18, ?20, 1)",
            )?
            .execute(params![
                key,
                self.meta.zone.as_str(),
                self.meta.agent.as_str(),
                obs.name,
                obs.endpoint.to_string(),
                obs.unit_id,
                col("vendor_name"),
                col("product_code"),
                col("revision"),
                col("vendor_url"),
                col("product_name"),
                col("model_name"),
                col("user_application_name"),
                col("ident_method").unwrap_or_else(|| "none".into()),
                status_name(&obs.status),
                attributes::problem_text(obs),
                hash,
                self.now,
                seen,
                sql_int(self.meta.seq),
            ])?;
        let id = self.db.last_insert_rowid();
        let mut names: Vec<&String> = attrs.keys().collect();
        names.sort();
        for name in names {
            let value = attrs.get(name).cloned().flatten();
            self.set_attribute(id, name, None, value.as_deref())?;
        }
        let zone_ci = self.zone_ci.clone();
        let agent_ci = self.agent_ci.clone();
        self.relation(key, "located_in", &zone_ci)?;
        self.relation(key, "reported_by", &agent_ci)?;
        self.out.assets_new += 1;
        self.count("assets_new", 1);
        let detail = json!({
            "name": obs.name,
            "endpoint": obs.endpoint.to_string(),
            "unit_id": obs.unit_id,
            "status": status_name(&obs.status),
            "vendor_name": col("vendor_name"),
            "product_code": col("product_code"),
            "revision": col("revision"),
        });
        self.event(kind::ASSET_NEW, Some(key), detail)?;
        self.judge_new(key, obs)?;
        Ok(id)
    }

    fn update(
        &mut self,
        key: &str,
        stored: Stored,
        obs: &AssetObservation,
        hash: &[u8],
    ) -> rusqlite::Result<i64> {
        let mut current = stored.attributes;
        let mut drift = Vec::new();
        let mut judged = Vec::new();
        for (name, value) in attributes::observed(obs) {
            let old = current.get(&name).cloned().flatten();
            if old == value || (value.is_none() && !current.contains_key(&name)) {
                continue;
            }
            self.set_attribute(stored.id, &name, old.as_deref(), value.as_deref())?;
            // Drift is a known value that changed; learning a value for the first time
            // (after an unreachable first poll, a newly configured block) is not.
            if attributes::is_drift(&name) && current.contains_key(&name) {
                drift.push(json!({
                    "attribute": name,
                    "old": attributes::event_value(&name, old.as_deref()),
                    "new": attributes::event_value(&name, value.as_deref()),
                }));
                judged.push((name.clone(), old.clone(), value.clone()));
            }
            current.insert(name, value);
        }
        if stored.agent != self.meta.agent.as_str() {
            self.freeze_observation(stored.id, &stored.agent)?;
        }
        let col = |name: &str| current.get(name).cloned().flatten();
        let seen = answered(&obs.status).then_some(self.now);
        self.db
            .prepare_cached(
                // agent_id is indexed: it is only set (below) when it changes. A device that
                // stopped answering keeps the last-seen time it had, which for an asset that
                // followed its agent is the agent's previous summary's (`asset_times`).
                "UPDATE assets SET name = ?2, vendor_name = ?3,
                     product_code = ?4, revision = ?5, vendor_url = ?6, product_name = ?7,
                     model_name = ?8, user_application_name = ?9, ident_method = ?10,
                     status = ?11, last_problem = ?12, content_hash = ?13,
                     last_seen_ms = COALESCE(?14, (SELECT t.last_seen_ms FROM asset_times t
                         WHERE t.asset_id = assets.asset_id)),
                     last_polled_ms = ?15, last_envelope_seq = ?16, follows_agent = 1
                 WHERE asset_id = ?1",
            )?
            .execute(params![
                stored.id,
                obs.name,
                col("vendor_name"),
                col("product_code"),
                col("revision"),
                col("vendor_url"),
                col("product_name"),
                col("model_name"),
                col("user_application_name"),
                col("ident_method").unwrap_or_else(|| "none".into()),
                status_name(&obs.status),
                attributes::problem_text(obs),
                hash,
                seen,
                self.now,
                sql_int(self.meta.seq),
            ])?;
        let conflict = self.conflicting(key, stored.id, &obs.name, &stored.agent, &judged)?;
        if stored.agent != self.meta.agent.as_str() {
            self.moved_between_agents = true;
            self.db
                .prepare_cached("UPDATE assets SET agent_id = ?2 WHERE asset_id = ?1")?
                .execute(params![stored.id, self.meta.agent.as_str()])?;
            self.db
                .prepare_cached(
                    "DELETE FROM relations WHERE from_ci = ?1 AND type = 'reported_by'",
                )?
                .execute([key])?;
            let agent_ci = self.agent_ci.clone();
            self.relation(key, "reported_by", &agent_ci)?;
        }
        let was_up = stored.status != "unreachable";
        match (&obs.status, was_up) {
            (PollStatus::Unreachable(why), true) => {
                self.count("assets_unreachable", 1);
                let detail = json!({ "reason": why, "previous_status": stored.status });
                self.event(kind::ASSET_UNREACHABLE, Some(key), detail)?;
                self.presence_down(stored.id)?;
            }
            (PollStatus::Unreachable(_), false) => self.presence_again(stored.id)?,
            (status, false) if answered(status) => {
                self.count("assets_recovered", 1);
                let detail =
                    json!({ "status": status_name(status), "previous_status": "unreachable" });
                self.event(kind::ASSET_RECOVERED, Some(key), detail)?;
                self.presence_up(key, stored.id, &obs.name)?;
            }
            _ => {}
        }
        if drift.is_empty() {
            if answered(&obs.status) {
                self.confirm_step(stored.id)?;
            }
            self.out.assets_unchanged += 1;
        } else {
            self.out.assets_changed += 1;
            self.count("assets_changed", 1);
            self.event(kind::ASSET_CHANGED, Some(key), json!({ "changes": drift }))?;
            if !conflict {
                self.judge_change(key, stored.id, &obs.name, &judged, &current)?;
            }
        }
        Ok(stored.id)
    }

    pub(super) fn set_attribute(
        &mut self,
        asset_id: i64,
        name: &str,
        old: Option<&str>,
        new: Option<&str>,
    ) -> rusqlite::Result<()> {
        self.db
            .prepare_cached(
                "INSERT INTO asset_attributes (asset_id, attribute, value, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (asset_id, attribute) DO UPDATE SET value = excluded.value,
                     updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![asset_id, name, new, self.now])?;
        self.db
            .prepare_cached(
                "INSERT INTO attribute_history (asset_id, attribute, old_value, new_value,
                     observed_at_ms, agent_id, envelope_seq, envelope_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                asset_id,
                name,
                old,
                new,
                self.now,
                self.meta.agent.as_str(),
                sql_int(self.meta.seq),
                self.hash_hex,
            ])?;
        self.out.attribute_changes += 1;
        self.count("attribute_changes", 1);
        Ok(())
    }
}

/// Asset ids as one JSON array, for `json_each` (one statement for many rows).
fn id_list(ids: &[i64]) -> String {
    use std::fmt::Write as _;
    let mut list = String::with_capacity(2 + ids.len() * 8);
    list.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            list.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(list, "{id}");
    }
    list.push(']');
    list
}

/// The observations with their candidates, strongest identity first (stable within a
/// strength), so a device that moved is placed before its old, silent address is looked at.
fn strongest_first<'a>(
    observations: &'a [AssetObservation],
    prepared: &'a [(Candidate, [u8; 32])],
) -> Vec<(&'a AssetObservation, &'a (Candidate, [u8; 32]))> {
    let mut pairs: Vec<_> = observations.iter().zip(prepared).collect();
    if pairs.iter().any(|(_, (c, _))| c.basis != Basis::Address) {
        pairs.sort_by_key(|(_, (c, _))| std::cmp::Reverse(c.basis));
    }
    pairs
}
