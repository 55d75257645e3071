//! Enrolled agent keys: which public key may speak for which agent in which zones.
//!
//! A key is trusted for exactly ONE agent id and one or more zones. Enrolling the same key for
//! the same agent again adds zones; enrolling it for a different agent is refused (two agents
//! sharing a key could forge each other's chains). Keys carry a status (`active`, `retired`
//! after a key handover, `revoked`); retired and revoked keys are refused at ingest and cannot
//! be re-enrolled. Rotation and revocation live in [`crate::cmdb::key_lifecycle`].

use outpost_proto::{AgentId, KeyId, PublicKey, ZoneId};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::cmdb::{Cmdb, CmdbError};
use crate::time::sql_int;

/// Whether a key may still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    /// Handed over to a successor key by a signed `KeyHandover`; kept so old envelopes verify.
    Retired,
    Revoked,
}

impl KeyStatus {
    /// The name stored in the CMDB.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Retired => "retired",
            KeyStatus::Revoked => "revoked",
        }
    }
}

/// An enrolled key and what it is trusted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub key_id: KeyId,
    pub public_key: PublicKey,
    pub agent: AgentId,
    /// Sorted.
    pub zones: Vec<ZoneId>,
    pub status: KeyStatus,
    pub enrolled_at_ms: u64,
}

/// What an enrolment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub key_id: KeyId,
    pub agent: AgentId,
    /// True when the key was not enrolled before.
    pub new_key: bool,
    /// Zones this call added.
    pub zones_added: Vec<ZoneId>,
    /// All zones the key is now trusted for, sorted.
    pub zones: Vec<ZoneId>,
}

impl Cmdb {
    /// Trusts `key` for `agent` in `zones` (adding zones when the key is already enrolled for
    /// the same agent).
    pub fn enroll(
        &mut self,
        key: &PublicKey,
        agent: &AgentId,
        zones: &[ZoneId],
        now_ms: u64,
    ) -> Result<Enrolled, CmdbError> {
        if zones.is_empty() {
            return Err(CmdbError::NoZones);
        }
        let key_id = key.key_id();
        let key_hex = key_id.to_string();
        let now = sql_int(now_ms);
        let path = self.path().to_owned();
        let sqlite = |source| CmdbError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn_mut()
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite)?;
        let existing: Option<(String, String)> = tx
            .query_row(
                "SELECT agent_id, CASE WHEN status = 'active' AND retired_at_ms IS NOT NULL
                     THEN 'retired' ELSE status END
                 FROM agent_keys WHERE key_id = ?1",
                [&key_hex],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sqlite)?;
        if let Some((enrolled_for, status)) = &existing {
            if enrolled_for != agent.as_str() {
                return Err(CmdbError::KeyBoundToOtherAgent {
                    key_id: key_hex,
                    enrolled_for: enrolled_for.clone(),
                    requested: agent.to_string(),
                });
            }
            if status == KeyStatus::Retired.as_str() {
                return Err(CmdbError::KeyRetired { key_id: key_hex });
            }
            if status != KeyStatus::Active.as_str() {
                return Err(CmdbError::KeyRevoked { key_id: key_hex });
            }
        }
        tx.execute(
            "INSERT OR IGNORE INTO agents (agent_id, enrolled_at_ms) VALUES (?1, ?2)",
            params![agent.as_str(), now],
        )
        .map_err(sqlite)?;
        if existing.is_none() {
            tx.execute(
                "INSERT INTO agent_keys (key_id, public_key, agent_id, enrolled_at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![key_hex, &key.0[..], agent.as_str(), now],
            )
            .map_err(sqlite)?;
        }
        let mut zones_added = Vec::new();
        for zone in zones {
            tx.execute(
                "INSERT OR IGNORE INTO zones (zone, created_at_ms) VALUES (?1, ?2)",
                params![zone.as_str(), now],
            )
            .map_err(sqlite)?;
            let added = tx
                .execute(
                    "INSERT OR IGNORE INTO key_zones (key_id, zone, added_at_ms)
                     VALUES (?1, ?2, ?3)",
                    params![key_hex, zone.as_str(), now],
                )
                .map_err(sqlite)?;
            if added > 0 {
                zones_added.push(zone.clone());
            }
        }
        tx.commit().map_err(sqlite)?;
        let zones = self
            .trusted_key(&key_id)?
            .map(|k| k.zones)
            .unwrap_or_default();
        tracing::info!(key = %key_id, %agent, zones = ?zones, "enrolled agent key");
        Ok(Enrolled {
            key_id,
            agent: agent.clone(),
            new_key: existing.is_none(),
            zones_added,
            zones,
        })
    }

    /// The enrolled key with this id, if any.
    pub fn trusted_key(&self, key_id: &KeyId) -> Result<Option<TrustedKey>, CmdbError> {
        let key_hex = key_id.to_string();
        let conn = self.connection();
        // public key, agent, status, enrolled at, retired at
        type KeyRow = (Vec<u8>, String, String, i64, Option<i64>);
        let row: Option<KeyRow> = conn
            .prepare_cached(
                "SELECT public_key, agent_id, status, enrolled_at_ms, retired_at_ms
                 FROM agent_keys WHERE key_id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([&key_hex], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .optional()
            })
            .map_err(|e| self.err(e))?;
        let Some((public, agent, status, enrolled_at, retired_at)) = row else {
            return Ok(None);
        };
        let corrupt = |what, detail: String| CmdbError::Corrupt {
            path: self.path().to_owned(),
            what,
            detail,
        };
        let public: [u8; 32] = public.try_into().map_err(|v: Vec<u8>| {
            corrupt(
                "public key",
                format!("key {key_hex} has {} bytes, expected 32", v.len()),
            )
        })?;
        let agent = AgentId::new(agent).map_err(|e| corrupt("agent id", e.to_string()))?;
        let status = match status.as_str() {
            "active" if retired_at.is_some() => KeyStatus::Retired,
            "active" => KeyStatus::Active,
            "revoked" => KeyStatus::Revoked,
            other => return Err(corrupt("key status", format!("{other:?}"))),
        };
        let mut zones = Vec::new();
        {
            let mut stmt = conn
                .prepare_cached("SELECT zone FROM key_zones WHERE key_id = ?1 ORDER BY zone")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([&key_hex], |r| r.get::<_, String>(0))
                .map_err(|e| self.err(e))?;
            for zone in rows {
                let zone = zone.map_err(|e| self.err(e))?;
                zones.push(ZoneId::new(zone).map_err(|e| corrupt("zone", e.to_string()))?);
            }
        }
        Ok(Some(TrustedKey {
            key_id: *key_id,
            public_key: PublicKey(public),
            agent,
            zones,
            status,
            enrolled_at_ms: u64::try_from(enrolled_at).unwrap_or(0),
        }))
    }
}
