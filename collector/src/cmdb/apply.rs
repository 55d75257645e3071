//! Applying one verified summary to the CMDB, in ONE transaction.
//!
//! The envelope row, the agent's new chain tip, the chain events (first seen, gap, break), the
//! gateway CI, every field-device CI with its attributes, attribute history, relations and
//! events, and the counters describing all of it are written together or not at all.
//!
//! Speed: the agent's assets and their content hashes are cached between envelopes (the cache is
//! trusted only if it was written for the chain tip this envelope follows; otherwise it is read
//! again with one query); an asset whose observation hashes the same as last time is not
//! written: it follows the agent's latest summary (`asset_times`). Only a changed asset has its attributes read and compared (see
//! `assets.rs` and [`super::attributes`]).
//!
//! Times written here are the collector's receive time ([`EnvelopeMeta::received_at_ms`]); the
//! agent's clock is kept in the envelope row.

use std::collections::{BTreeMap, HashMap};

use outpost_proto::model::{DataLost, HostFacts, Summary};
use outpost_proto::{AgentId, ChainTip, Digest, KeyId, SequenceVerdict, ZoneId};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

use super::alerts::Category;
use super::record::{self, EventScope, kind};
use super::{Cmdb, CmdbError, attributes, ci_key, reconcile};
use crate::time::sql_int;

/// Everything about an accepted envelope that the CMDB records besides its body.
#[derive(Debug, Clone)]
pub struct EnvelopeMeta<'a> {
    pub agent: &'a AgentId,
    pub zone: &'a ZoneId,
    pub key_id: KeyId,
    pub seq: u64,
    pub hash: Digest,
    pub prev_hash: Digest,
    /// The agent's clock when it sealed the envelope.
    pub agent_time_ms: u64,
    /// The body kind (`summary`).
    pub kind: &'static str,
    pub verdict: SequenceVerdict,
    /// The agent's chain tip before this envelope (`None` before its first).
    pub previous: Option<ChainTip>,
    pub peer: &'a str,
    pub received_at_ms: u64,
    /// The wire bytes, stored verbatim.
    pub raw: &'a [u8],
}

/// What applying one summary did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub assets: usize,
    pub assets_new: usize,
    pub assets_changed: usize,
    pub assets_unchanged: usize,
    pub attribute_changes: usize,
    pub events: usize,
}

/// The stored name of a sequence verdict.
pub fn verdict_name(v: &SequenceVerdict) -> &'static str {
    match v {
        SequenceVerdict::First => "first",
        SequenceVerdict::Next => "next",
        SequenceVerdict::Gap { .. } => "gap",
        SequenceVerdict::ChainBreak => "chain_break",
        SequenceVerdict::Replay { .. } => "replay",
        SequenceVerdict::Restart { .. } => "restart",
    }
}

/// What can be worked out about a summary without the database: each observation's candidate
/// identity (strongest CI key it supports, see [`super::reconcile`]) and content hash (in the
/// summary's order) and the gateway facts' hash. It is a fair share of the
/// work of applying a summary, so [`crate::pipeline::Checker`] computes it on the checking
/// thread and the writer only looks the results up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    zone: ZoneId,
    pub(super) assets: Vec<(reconcile::Candidate, [u8; 32])>,
    pub(super) gateway: Option<[u8; 32]>,
}

impl Prepared {
    /// Works out the keys and hashes of `summary`'s CIs as reported in `zone`.
    pub fn of(zone: &ZoneId, summary: &Summary) -> Prepared {
        Prepared {
            zone: zone.clone(),
            assets: reconcile::candidates(zone, &summary.assets)
                .into_iter()
                .zip(&summary.assets)
                .map(|(candidate, obs)| (candidate, attributes::content_hash(obs)))
                .collect(),
            gateway: summary.gateway.as_ref().map(|g| gateway_hash(g, zone)),
        }
    }

    /// True when this was prepared from `summary` as reported in `zone` (same shape).
    fn fits(&self, zone: &ZoneId, summary: &Summary) -> bool {
        &self.zone == zone
            && self.assets.len() == summary.assets.len()
            && self.gateway.is_some() == summary.gateway.is_some()
    }
}

/// The hash of a gateway's facts as reported in `zone`: equal hashes mean only `last_seen`
/// needs writing.
fn gateway_hash(g: &HostFacts, zone: &ZoneId) -> [u8; 32] {
    let facts = serde_json::to_vec(&(g, zone)).unwrap_or_default();
    Digest::of(&facts).0
}

impl Cmdb {
    /// Applies a verified, judged summary in one transaction: its own, or the caller's when
    /// called inside [`Cmdb::in_transaction`].
    pub fn apply_summary(
        &mut self,
        meta: &EnvelopeMeta<'_>,
        summary: &Summary,
    ) -> Result<ApplyOutcome, CmdbError> {
        self.apply_summary_prepared(meta, summary, None)
    }

    /// [`Cmdb::apply_summary`] with the keys and hashes already worked out (see [`Prepared`]);
    /// `None`, or a `prepared` that does not fit `summary`, computes them here.
    pub fn apply_summary_prepared(
        &mut self,
        meta: &EnvelopeMeta<'_>,
        summary: &Summary,
        prepared: Option<&Prepared>,
    ) -> Result<ApplyOutcome, CmdbError> {
        if self.conn.is_autocommit() {
            return self
                .in_transaction(|db| db.apply_summary_prepared(meta, summary, prepared))
                .and_then(|inner| inner);
        }
        let computed;
        let prepared = match prepared.filter(|p| p.fits(meta.zone, summary)) {
            Some(p) => p,
            None => {
                computed = Prepared::of(meta.zone, summary);
                &computed
            }
        };
        let sqlite = |source| CmdbError::Sqlite {
            path: self.path.clone(),
            source,
        };
        // The cached asset list is valid only if it describes the tip this envelope follows
        // (nobody else applied an envelope of this agent since).
        let cached = self
            .known_assets
            .remove(meta.agent.as_str())
            .filter(|k| Some(k.seq) == meta.previous.map(|t| t.seq));
        let (last_gateway, cached_assets) = match cached {
            Some(k) => (k.gateway, Some(k.assets)),
            None => (None, None),
        };
        let mut w = Writer::new(&self.conn, meta);
        w.envelope().map_err(sqlite)?;
        w.chain_events().map_err(sqlite)?;
        let gateway = match (&summary.gateway, prepared.gateway) {
            (Some(g), Some(hash)) => Some(w.gateway(g, hash, last_gateway).map_err(sqlite)?),
            _ => None,
        };
        let assets = w
            .assets(&summary.assets, &prepared.assets, cached_assets)
            .map_err(sqlite)?;
        w.latest_summary().map_err(sqlite)?;
        w.fresh().map_err(sqlite)?;
        w.flush_counters().map_err(sqlite)?;
        let (out, moved) = (w.out, w.moved_between_agents);
        // Becomes the cache only when the transaction commits (see `in_transaction`).
        self.pending_known = Some(PendingKnown {
            agent: meta.agent.to_string(),
            known: KnownAssets {
                seq: meta.seq,
                gateway,
                assets,
            },
            invalidate_others: moved,
        });
        Ok(out)
    }
}

impl Cmdb {
    /// Records a verified heartbeat: the envelope, the agent's new tip and last-seen time, and
    /// the chain events its verdict implies (a gap here is a lost tail). No CI changes.
    pub fn apply_heartbeat(&mut self, meta: &EnvelopeMeta<'_>) -> Result<ApplyOutcome, CmdbError> {
        if self.conn.is_autocommit() {
            return self
                .in_transaction(|db| db.apply_heartbeat(meta))
                .and_then(|inner| inner);
        }
        let sqlite = |source| CmdbError::Sqlite {
            path: self.path.clone(),
            source,
        };
        // The asset cache stays valid across a heartbeat that directly follows its tip.
        let cached = self
            .known_assets
            .remove(meta.agent.as_str())
            .filter(|k| Some(k.seq) == meta.previous.map(|t| t.seq));
        let mut w = Writer::new(&self.conn, meta);
        w.envelope().map_err(sqlite)?;
        w.chain_events().map_err(sqlite)?;
        w.count("heartbeats", 1);
        w.flush_counters().map_err(sqlite)?;
        let out = w.out;
        if let Some(mut known) = cached {
            known.seq = meta.seq;
            self.pending_known = Some(PendingKnown {
                agent: meta.agent.to_string(),
                known,
                invalidate_others: false,
            });
        }
        Ok(out)
    }
}

impl Cmdb {
    /// Applies a verified, judged data-lost notice: stores the envelope, advances the chain,
    /// records the chain events and a `data_lost` event, in the caller's transaction (or its own).
    pub fn apply_data_lost(
        &mut self,
        meta: &EnvelopeMeta<'_>,
        notice: &DataLost,
    ) -> Result<ApplyOutcome, CmdbError> {
        if self.conn.is_autocommit() {
            return self
                .in_transaction(|db| db.apply_data_lost(meta, notice))
                .and_then(|inner| inner);
        }
        let sqlite = |source| CmdbError::Sqlite {
            path: self.path.clone(),
            source,
        };
        // The agent's cached asset list stays valid (assets are unchanged) but is keyed by the
        // tip it follows; drop it and let the next summary reload it.
        self.known_assets.remove(meta.agent.as_str());
        let mut w = Writer::new(&self.conn, meta);
        w.envelope().map_err(sqlite)?;
        w.chain_events().map_err(sqlite)?;
        w.count("data_lost_notices", 1);
        w.count("envelopes_lost_at_agent", sql_int(notice.dropped));
        let detail = json!({
            "from_seq": notice.from_seq,
            "to_seq": notice.to_seq,
            "dropped": notice.dropped,
            "reason": notice.reason,
            "notice_seq": meta.seq,
        });
        w.event(kind::DATA_LOST, None, detail).map_err(sqlite)?;
        w.flush_counters().map_err(sqlite)?;
        Ok(w.out)
    }
}

/// A cache update waiting for its transaction to commit.
#[derive(Debug)]
pub(crate) struct PendingKnown {
    agent: String,
    known: KnownAssets,
    /// An asset changed hands: other agents' cached lists name it.
    invalidate_others: bool,
}

impl PendingKnown {
    /// Applies this update to the cache after a commit.
    pub(crate) fn commit(self, cache: &mut HashMap<String, KnownAssets>) {
        if self.invalidate_others {
            cache.clear();
        }
        cache.insert(self.agent, self.known);
    }
}

/// An agent's assets as of its last applied envelope: CI key → (asset id, content hash).
#[derive(Debug, Default)]
pub(crate) struct KnownAssets {
    seq: u64,
    /// Hash of the gateway facts last written.
    gateway: Option<[u8; 32]>,
    assets: HashMap<String, (i64, [u8; 32])>,
}

/// Writes one envelope's rows inside the open transaction; the per-asset part is in
/// [`super::assets`].
pub(super) struct Writer<'t, 'm> {
    pub(super) db: &'t Connection,
    pub(super) meta: &'m EnvelopeMeta<'m>,
    pub(super) hash_hex: String,
    pub(super) zone_ci: String,
    pub(super) agent_ci: String,
    pub(super) now: i64,
    pub(super) out: ApplyOutcome,
    counters: BTreeMap<&'static str, i64>,
    pub(super) moved_between_agents: bool,
    /// CIs whose identity reconciliation changed (re-keyed, replaced, moved): cached entries
    /// naming them are dropped (see `assets.rs`).
    pub(super) reidentified: Vec<i64>,
}

impl<'t, 'm> Writer<'t, 'm> {
    /// A writer for one envelope, inside the caller's open transaction.
    pub(super) fn new(db: &'t Connection, meta: &'m EnvelopeMeta<'m>) -> Self {
        Writer {
            db,
            meta,
            hash_hex: meta.hash.to_string(),
            zone_ci: ci_key::zone(meta.zone.as_str()),
            agent_ci: ci_key::agent(meta.agent.as_str()),
            now: sql_int(meta.received_at_ms),
            out: ApplyOutcome::default(),
            counters: BTreeMap::new(),
            moved_between_agents: false,
            reidentified: Vec::new(),
        }
    }
}

impl Writer<'_, '_> {
    pub(super) fn count(&mut self, name: &'static str, delta: i64) {
        *self.counters.entry(name).or_insert(0) += delta;
    }

    pub(super) fn event(
        &mut self,
        kind: &'static str,
        asset: Option<&str>,
        detail: serde_json::Value,
    ) -> rusqlite::Result<()> {
        let scope = EventScope {
            agent: Some(self.meta.agent.as_str()),
            zone: Some(self.meta.zone.as_str()),
            asset,
        };
        record::event(self.db, self.meta.received_at_ms, kind, scope, &detail)?;
        self.out.events += 1;
        Ok(())
    }

    pub(super) fn envelope(&mut self) -> rusqlite::Result<()> {
        let m = self.meta;
        self.db
            .prepare_cached(
                "INSERT INTO envelopes (agent_id, seq, hash, prev_hash, key_id, zone,
                     agent_time_ms, kind, verdict, received_at_ms, peer, raw)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                m.agent.as_str(),
                sql_int(m.seq),
                self.hash_hex,
                m.prev_hash.to_string(),
                m.key_id.to_string(),
                m.zone.as_str(),
                sql_int(m.agent_time_ms),
                m.kind,
                verdict_name(&m.verdict),
                self.now,
                m.peer,
                m.raw,
            ])?;
        self.db
            .prepare_cached(
                "UPDATE agents SET first_seen_ms = COALESCE(first_seen_ms, ?2),
                     last_seen_ms = ?2, last_seq = ?3, last_hash = ?4,
                     last_envelope_agent_ms = ?5, last_peer = ?6,
                     envelopes_accepted = envelopes_accepted + 1
                 WHERE agent_id = ?1",
            )?
            .execute(params![
                m.agent.as_str(),
                self.now,
                sql_int(m.seq),
                self.hash_hex,
                sql_int(m.agent_time_ms),
                m.peer,
            ])?;
        self.count("envelopes_accepted", 1);
        Ok(())
    }

    /// A full snapshot applied: the agent's CIs are current again.
    fn fresh(&mut self) -> rusqlite::Result<()> {
        let healed = self
            .db
            .prepare_cached(
                "UPDATE agents SET stale_since_ms = NULL, stale_from_seq = NULL,
                     stale_to_seq = NULL
                 WHERE agent_id = ?1 AND stale_since_ms IS NOT NULL",
            )?
            .execute(params![self.meta.agent.as_str()])?;
        if healed > 0 {
            self.count("stale_healed", 1);
        }
        Ok(())
    }

    pub(super) fn chain_events(&mut self) -> rusqlite::Result<()> {
        let m = self.meta;
        match m.verdict {
            SequenceVerdict::First => {
                self.count("agents_first_seen", 1);
                let detail = json!({
                    "first_seq": m.seq,
                    "key_id": m.key_id.to_string(),
                    "peer": m.peer,
                });
                self.event(kind::AGENT_FIRST_SEEN, None, detail)?;
            }
            SequenceVerdict::Gap { from, to } => {
                let missing = to.saturating_sub(from).saturating_add(1);
                self.count("sequence_gaps", 1);
                self.count("envelopes_missing", sql_int(missing));
                let detail = json!({
                    "from_seq": from,
                    "to_seq": to,
                    "missing": missing,
                    "received_seq": m.seq,
                });
                self.event(kind::SEQUENCE_GAP, None, detail)?;
                // Stale until a full snapshot applies (a summary clears it in the same
                // transaction, right after this).
                self.db
                    .prepare_cached(
                        "UPDATE agents SET stale_since_ms = COALESCE(stale_since_ms, ?2),
                             stale_from_seq = COALESCE(stale_from_seq, ?3), stale_to_seq = ?4
                         WHERE agent_id = ?1",
                    )?
                    .execute(params![
                        m.agent.as_str(),
                        self.now,
                        sql_int(from),
                        sql_int(to)
                    ])?;
            }
            SequenceVerdict::ChainBreak => {
                self.count("chain_breaks", 1);
                let expected = m.previous.map(|t| t.hash.to_string());
                let detail = json!({
                    "seq": m.seq,
                    "prev_hash": m.prev_hash.to_string(),
                    "expected_prev_hash": expected,
                });
                self.event(kind::CHAIN_BREAK, None, detail)?;
            }
            SequenceVerdict::Restart { last } => {
                self.count("agent_state_lost", 1);
                let detail = json!({
                    "new_seq": m.seq,
                    "previous_seq": last,
                    "key_id": m.key_id.to_string(),
                    "peer": m.peer,
                    "note": "agent reported state loss: it started a new chain (zero prev_hash) \
                             above the last accepted sequence number",
                });
                // Also an alert for the SIEM sinks, on the agent's gateway CI.
                let gateway = ci_key::gateway(self.meta.agent.as_str());
                let agent = self.meta.agent.as_str().to_owned();
                self.alert(
                    &gateway,
                    &agent,
                    kind::AGENT_STATE_LOST,
                    Category::Agent,
                    &detail,
                )?;
                self.event(kind::AGENT_STATE_LOST, None, detail)?;
            }
            SequenceVerdict::Next | SequenceVerdict::Replay { .. } => {}
        }
        Ok(())
    }

    /// Writes the gateway CI (its facts hash to `hash`); when they hash as last time, only
    /// `last_seen` is touched. Returns the facts' hash.
    fn gateway(
        &mut self,
        g: &HostFacts,
        hash: [u8; 32],
        last: Option<[u8; 32]>,
    ) -> rusqlite::Result<[u8; 32]> {
        let gateway_ci = ci_key::gateway(self.meta.agent.as_str());
        if last == Some(hash) {
            self.db
                .prepare_cached("UPDATE gateways SET last_seen_ms = ?2 WHERE ci_key = ?1")?
                .execute(params![gateway_ci, self.now])?;
            return Ok(hash);
        }
        let interfaces = serde_json::to_string(&g.interfaces).unwrap_or_else(|_| "[]".into());
        self.judge_gateway(&gateway_ci, g)?;
        self.db
            .prepare_cached(
                "INSERT INTO gateways (ci_key, agent_id, zone, hostname, os_name, os_version,
                     kernel_version, cpu_arch, cpu_count, memory_bytes, boot_time_ms,
                     interfaces_json, agent_version, first_seen_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14)
                 ON CONFLICT (ci_key) DO UPDATE SET zone = excluded.zone,
                     hostname = excluded.hostname, os_name = excluded.os_name,
                     os_version = excluded.os_version, kernel_version = excluded.kernel_version,
                     cpu_arch = excluded.cpu_arch, cpu_count = excluded.cpu_count,
                     memory_bytes = excluded.memory_bytes, boot_time_ms = excluded.boot_time_ms,
                     interfaces_json = excluded.interfaces_json,
                     agent_version = excluded.agent_version, last_seen_ms = excluded.last_seen_ms",
            )?
            .execute(params![
                gateway_ci,
                self.meta.agent.as_str(),
                self.meta.zone.as_str(),
                g.hostname,
                g.os_name,
                g.os_version,
                g.kernel_version,
                g.cpu_arch,
                i64::from(g.cpu_count),
                sql_int(g.memory_bytes),
                sql_int(g.boot_time.saturating_mul(1000)),
                interfaces,
                g.agent_version,
                self.now,
            ])?;
        self.gateway_attributes(&gateway_ci, g)?;
        let agent_ci = self.agent_ci.clone();
        self.relation(&gateway_ci, "hosts", &agent_ci)?;
        Ok(hash)
    }

    pub(super) fn relation(&mut self, from: &str, rel: &str, to: &str) -> rusqlite::Result<()> {
        self.db
            .prepare_cached(
                "INSERT OR IGNORE INTO relations (from_ci, type, to_ci, since_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![from, rel, to, self.now])?;
        Ok(())
    }

    pub(super) fn flush_counters(&mut self) -> rusqlite::Result<()> {
        for (name, delta) in std::mem::take(&mut self.counters) {
            record::bump(self.db, name, delta, self.meta.received_at_ms)?;
        }
        Ok(())
    }
}

impl Cmdb {
    /// True when envelope `seq` of `agent` is stored with exactly this hash.
    pub fn envelope_stored(
        &self,
        agent: &AgentId,
        seq: u64,
        hash: &Digest,
    ) -> Result<bool, CmdbError> {
        self.conn
            .prepare_cached(
                "SELECT 1 FROM envelopes WHERE agent_id = ?1 AND seq = ?2 AND hash = ?3",
            )
            .and_then(|mut st| {
                st.query_row(
                    params![agent.as_str(), sql_int(seq), hash.to_string()],
                    |_| Ok(()),
                )
                .optional()
            })
            .map(|r| r.is_some())
            .map_err(|source| CmdbError::Sqlite {
                path: self.path.clone(),
                source,
            })
    }

    /// The agent's last accepted envelope (`None` before its first or if it is not enrolled).
    pub fn chain_tip(&self, agent: &AgentId) -> Result<Option<ChainTip>, CmdbError> {
        let row: Option<(Option<i64>, Option<String>)> = self
            .connection()
            .prepare_cached("SELECT last_seq, last_hash FROM agents WHERE agent_id = ?1")
            .and_then(|mut s| {
                s.query_row([agent.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        let Some((Some(seq), Some(hash))) = row else {
            return Ok(None);
        };
        let corrupt = |detail: String| CmdbError::Corrupt {
            path: self.path().to_owned(),
            what: "agent chain tip",
            detail,
        };
        let hash = Digest::from_hex(&hash).ok_or_else(|| {
            corrupt(format!(
                "agent {agent}: last_hash {hash:?} is not 64 hex digits"
            ))
        })?;
        let seq = u64::try_from(seq)
            .map_err(|_| corrupt(format!("agent {agent}: last_seq {seq} is negative")))?;
        Ok(Some(ChainTip { seq, hash }))
    }
}
