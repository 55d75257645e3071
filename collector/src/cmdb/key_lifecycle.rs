//! Key lifecycle after enrolment: rotation by a signed handover, revocation by an operator,
//! and the key list.
//!
//! - **Rotation** ([`Cmdb::apply_key_handover`]): an envelope sealed with the agent's current
//!   key carries a `KeyHandover` (checked in [`crate::check`]: the new key proved possession).
//!   In the same transaction as the envelope row, the new key is enrolled for the same agent and
//!   the same zones, and the old key is *retired* (`retired_at_ms`, `superseded_by`,
//!   `handover_seq`). The old row is never deleted, so every envelope it sealed still verifies
//!   (`outpost-collector audit verify`). From then on envelopes sealed with the old key are
//!   refused (`key_retired`): there is no grace window, because the agent switches keys right
//!   after sealing the handover and anything it sealed earlier has a lower sequence number.
//! - **Revocation** ([`Cmdb::revoke_key`]): status `revoked` with time and reason, and a
//!   `key_revoked` event. Later envelopes under the key are quarantined (`key_revoked`) and each
//!   raises a `revoked_key_used` event naming agent, key and peer (see [`crate::ingest`]).

use outpost_proto::model::KeyHandover;
use outpost_proto::{KeyId, PublicKey};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use serde_json::json;

use super::apply::{ApplyOutcome, EnvelopeMeta, Writer};
use super::record::{self, EventScope, kind};
use super::{Cmdb, CmdbError};
use crate::time::{Timestamp, sql_int};

/// One enrolled key as `key list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRow {
    pub key_id: String,
    pub agent_id: String,
    /// `active`, `retired` or `revoked`.
    pub status: String,
    pub zones: Vec<String>,
    pub enrolled_at: Timestamp,
    /// When a key handover retired it (nullable).
    pub retired_at: Option<Timestamp>,
    /// The successor key (nullable).
    pub superseded_by: Option<String>,
    /// Sequence number of the envelope that announced the successor (nullable).
    pub handover_seq: Option<i64>,
    pub revoked_at: Option<Timestamp>,
    pub revoked_reason: Option<String>,
}

/// What `key revoke` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub key_id: String,
    pub agent_id: String,
    /// False when the key was already revoked (nothing changed).
    pub changed: bool,
}

/// Why a handover could not be applied (the envelope is then refused as `bad_handover`).
pub type HandoverRefusal = String;

impl Cmdb {
    /// Applies a verified, judged key handover inside the caller's transaction: stores the
    /// envelope and its chain events, enrolls the new key for the agent and the old key's
    /// zones, retires the old key and records a `key_rotated` event. `Ok(Err(why))` when the
    /// new key cannot take over (enrolled for another agent, revoked or retired); the caller
    /// then rolls back and refuses the envelope.
    pub fn apply_key_handover(
        &mut self,
        meta: &EnvelopeMeta<'_>,
        handover: &KeyHandover,
    ) -> Result<Result<ApplyOutcome, HandoverRefusal>, CmdbError> {
        let new = PublicKey(handover.new_public_key);
        let new_hex = new.key_id().to_string();
        let old_hex = meta.key_id.to_string();
        let sqlite = |source| CmdbError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let existing: Option<(String, String, Option<i64>)> = self
            .conn
            .prepare_cached(
                "SELECT agent_id, status, retired_at_ms FROM agent_keys WHERE key_id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([&new_hex], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(sqlite)?;
        if let Some((agent, status, retired)) = &existing {
            if agent != meta.agent.as_str() {
                return Ok(Err(format!(
                    "agent {} hands over to key {new_hex}, which is enrolled for agent {agent}",
                    meta.agent
                )));
            }
            if status != "active" || retired.is_some() {
                return Ok(Err(format!(
                    "agent {} hands over to key {new_hex}, which is {} and cannot be used again",
                    meta.agent,
                    if status == "revoked" {
                        "revoked"
                    } else {
                        "retired"
                    }
                )));
            }
        }
        self.known_assets.remove(meta.agent.as_str());
        let mut w = Writer::new(&self.conn, meta);
        w.envelope().map_err(sqlite)?;
        w.chain_events().map_err(sqlite)?;
        let now = sql_int(meta.received_at_ms);
        if existing.is_none() {
            w.db.prepare_cached(
                "INSERT INTO agent_keys (key_id, public_key, agent_id, enrolled_at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![new_hex, &new.0[..], meta.agent.as_str(), now]))
            .map_err(sqlite)?;
        }
        w.db.prepare_cached(
            "INSERT OR IGNORE INTO key_zones (key_id, zone, added_at_ms)
             SELECT ?1, zone, ?3 FROM key_zones WHERE key_id = ?2",
        )
        .and_then(|mut s| s.execute(params![new_hex, old_hex, now]))
        .map_err(sqlite)?;
        w.db.prepare_cached(
            "UPDATE agent_keys SET retired_at_ms = ?2, superseded_by = ?3, handover_seq = ?4
             WHERE key_id = ?1",
        )
        .and_then(|mut s| s.execute(params![old_hex, now, new_hex, sql_int(meta.seq)]))
        .map_err(sqlite)?;
        w.count("keys_rotated", 1);
        let detail = json!({
            "old_key_id": old_hex,
            "new_key_id": new_hex,
            "handover_seq": meta.seq,
            "peer": meta.peer,
        });
        w.event(kind::KEY_ROTATED, None, detail).map_err(sqlite)?;
        w.flush_counters().map_err(sqlite)?;
        tracing::info!(agent = %meta.agent, old = %old_hex, new = %new_hex, seq = meta.seq,
            peer = meta.peer, "key handover: agent {} now signs with key {new_hex}", meta.agent);
        Ok(Ok(w.out))
    }

    /// Revokes a key: later envelopes sealed with it are quarantined (`key_revoked`) and
    /// alerted. Records a `key_revoked` event. Revoking a revoked key changes nothing.
    pub fn revoke_key(
        &mut self,
        key_id: &KeyId,
        reason: &str,
        now_ms: u64,
    ) -> Result<Revoked, CmdbError> {
        let key_hex = key_id.to_string();
        let path = self.path.clone();
        let sqlite = |source| CmdbError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sqlite)?;
        let row: Option<(String, String)> = tx
            .query_row(
                "SELECT agent_id, status FROM agent_keys WHERE key_id = ?1",
                [&key_hex],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sqlite)?;
        let Some((agent, status)) = row else {
            return Err(CmdbError::KeyNotEnrolled { key_id: key_hex });
        };
        if status == "revoked" {
            return Ok(Revoked {
                key_id: key_hex,
                agent_id: agent,
                changed: false,
            });
        }
        tx.execute(
            "UPDATE agent_keys SET status = 'revoked', revoked_at_ms = ?2, revoked_reason = ?3
             WHERE key_id = ?1",
            params![key_hex, sql_int(now_ms), reason],
        )
        .map_err(sqlite)?;
        record::event(
            &tx,
            now_ms,
            kind::KEY_REVOKED,
            EventScope {
                agent: Some(&agent),
                ..EventScope::default()
            },
            &json!({ "key_id": key_hex, "reason": reason }),
        )
        .map_err(sqlite)?;
        record::bump(&tx, "keys_revoked", 1, now_ms).map_err(sqlite)?;
        tx.commit().map_err(sqlite)?;
        tracing::warn!(key = %key_hex, %agent, reason, "revoked agent key");
        Ok(Revoked {
            key_id: key_hex,
            agent_id: agent,
            changed: true,
        })
    }

    /// Every enrolled key, oldest first, with its zones and lifecycle.
    pub fn key_list(&self) -> Result<Vec<KeyRow>, CmdbError> {
        let conn = &self.conn;
        let mut stmt = conn
            .prepare(
                "SELECT key_id, agent_id,
                     CASE WHEN status = 'active' AND retired_at_ms IS NOT NULL THEN 'retired'
                          ELSE status END,
                     enrolled_at_ms, retired_at_ms, superseded_by, handover_seq,
                     revoked_at_ms, revoked_reason,
                     (SELECT group_concat(zone, ' ') FROM
                         (SELECT zone FROM key_zones z WHERE z.key_id = k.key_id ORDER BY zone))
                 FROM agent_keys k ORDER BY enrolled_at_ms, key_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let zones: Option<String> = r.get(9)?;
                Ok(KeyRow {
                    key_id: r.get(0)?,
                    agent_id: r.get(1)?,
                    status: r.get(2)?,
                    enrolled_at: Timestamp(r.get(3)?),
                    retired_at: r.get::<_, Option<i64>>(4)?.map(Timestamp),
                    superseded_by: r.get(5)?,
                    handover_seq: r.get(6)?,
                    revoked_at: r.get::<_, Option<i64>>(7)?.map(Timestamp),
                    revoked_reason: r.get(8)?,
                    zones: zones
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect(),
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

impl Cmdb {
    /// True when envelope `seq` of `agent` is stored, whatever its hash.
    pub fn envelope_seq_stored(
        &self,
        agent: &outpost_proto::AgentId,
        seq: u64,
    ) -> Result<bool, CmdbError> {
        self.conn
            .prepare_cached("SELECT 1 FROM envelopes WHERE agent_id = ?1 AND seq = ?2")
            .and_then(|mut st| {
                st.query_row(params![agent.as_str(), sql_int(seq)], |_| Ok(()))
                    .optional()
            })
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
    }
}
