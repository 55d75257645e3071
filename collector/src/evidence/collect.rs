//! Reading one zone and period out of the CMDB, read-only: the envelope rows (verbatim bytes)
//! and the key history of every agent involved.

use std::collections::BTreeSet;
use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, params};
use serde::{Deserialize, Serialize};

use super::EvidenceError;

/// Where a row's chain continues from when its predecessor is not in the pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Predecessor {
    pub seq: i64,
    pub hash: String,
}

/// One row of `envelopes/index.json`: the CMDB's columns for one envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRow {
    /// The envelope file, relative to the pack.
    pub file: String,
    pub envelope_id: i64,
    pub agent_id: String,
    pub seq: i64,
    pub hash: String,
    pub prev_hash: String,
    pub key_id: String,
    pub zone: String,
    pub agent_time_ms: i64,
    pub kind: String,
    /// The collector's chain verdict when it accepted the envelope.
    pub verdict: String,
    pub received_at_ms: i64,
    pub peer: String,
    /// The agent's previous stored envelope, when it is not in the pack (outside the period
    /// or zone); absent when the previous row of the same agent in the pack is it, or when
    /// there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predecessor: Option<Predecessor>,
}

/// One key of `keys.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    pub key_id: String,
    /// 64 hex digits.
    pub public_key: String,
    pub agent_id: String,
    pub zones: Vec<String>,
    /// `active`, `retired` or `revoked`.
    pub status: String,
    pub enrolled_at_ms: i64,
    pub retired_at_ms: Option<i64>,
    pub superseded_by: Option<String>,
    pub handover_seq: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub revoked_reason: Option<String>,
}

/// What the CMDB holds for a zone and period.
pub struct Collected {
    pub rows: Vec<(IndexRow, Vec<u8>)>,
    pub keys: Vec<KeyEntry>,
}

/// Opens `path` read-only.
pub fn open(path: &Path) -> Result<Connection, EvidenceError> {
    if !path.exists() {
        return Err(EvidenceError::invalid(format!(
            "CMDB {} does not exist; pass the file `serve --db` writes",
            path.display()
        )));
    }
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| EvidenceError::Open {
        path: path.to_owned(),
        source,
    })
}

/// The envelope file name for an agent's sequence number (zero-padded so names sort).
pub fn envelope_file(agent: &str, seq: i64) -> String {
    format!("envelopes/{agent}/{seq:020}.cbor")
}

/// Reads envelopes of `zone` sealed (agent clock) in `[from_ms, to_ms)` and the keys.
pub fn collect(
    conn: &Connection,
    path: &Path,
    zone: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Collected, EvidenceError> {
    let sqlite = |source| EvidenceError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let mut stmt = conn
        .prepare(
            "SELECT envelope_id, agent_id, seq, hash, prev_hash, key_id, zone, agent_time_ms,
                 kind, verdict, received_at_ms, peer, raw
             FROM envelopes WHERE zone = ?1 AND agent_time_ms >= ?2 AND agent_time_ms < ?3
             ORDER BY agent_id, envelope_id",
        )
        .map_err(sqlite)?;
    let rows = stmt
        .query_map(params![zone, from_ms, to_ms], |r| {
            let agent_id: String = r.get(1)?;
            let seq: i64 = r.get(2)?;
            Ok((
                IndexRow {
                    file: envelope_file(&agent_id, seq),
                    envelope_id: r.get(0)?,
                    agent_id,
                    seq,
                    hash: r.get(3)?,
                    prev_hash: r.get(4)?,
                    key_id: r.get(5)?,
                    zone: r.get(6)?,
                    agent_time_ms: r.get(7)?,
                    kind: r.get(8)?,
                    verdict: r.get(9)?,
                    received_at_ms: r.get(10)?,
                    peer: r.get(11)?,
                    predecessor: None,
                },
                match r.get_ref(12)? {
                    ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
                    _ => Vec::new(),
                },
            ))
        })
        .map_err(sqlite)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sqlite)?;
    let mut with_pred = Vec::with_capacity(rows.len());
    let mut pred_stmt = conn
        .prepare(
            "SELECT seq, hash FROM envelopes WHERE agent_id = ?1 AND seq < ?2
             ORDER BY seq DESC LIMIT 1",
        )
        .map_err(sqlite)?;
    let mut last: Option<(String, i64)> = None;
    for (mut row, raw) in rows {
        let pred: Option<(i64, String)> = pred_stmt
            .query_map(params![row.agent_id, row.seq], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(sqlite)?
            .next()
            .transpose()
            .map_err(sqlite)?;
        let in_pack = last
            .as_ref()
            .is_some_and(|(a, s)| a == &row.agent_id && pred.as_ref().is_some_and(|p| p.0 == *s));
        if !in_pack {
            row.predecessor = pred.map(|(seq, hash)| Predecessor { seq, hash });
        }
        last = Some((row.agent_id.clone(), row.seq));
        with_pred.push((row, raw));
    }
    let agents: BTreeSet<String> = with_pred.iter().map(|(r, _)| r.agent_id.clone()).collect();
    let keys = keys(conn, zone, &agents).map_err(sqlite)?;
    Ok(Collected {
        rows: with_pred,
        keys,
    })
}

fn keys(
    conn: &Connection,
    zone: &str,
    agents: &BTreeSet<String>,
) -> rusqlite::Result<Vec<KeyEntry>> {
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let lifecycle = if version >= 3 {
        "retired_at_ms, superseded_by, handover_seq, revoked_reason"
    } else {
        "NULL, NULL, NULL, NULL"
    };
    let sql = format!(
        "SELECT key_id, public_key, agent_id, status, enrolled_at_ms, revoked_at_ms, {lifecycle}
         FROM agent_keys k
         WHERE EXISTS (SELECT 1 FROM key_zones z WHERE z.key_id = k.key_id AND z.zone = ?1)
            OR agent_id IN (SELECT value FROM json_each(?2))
         ORDER BY enrolled_at_ms, key_id"
    );
    let agents_json = serde_json::to_string(agents).unwrap_or_else(|_| "[]".to_owned());
    let mut stmt = conn.prepare(&sql)?;
    let mut keys = stmt
        .query_map(params![zone, agents_json], |r| {
            let public: Vec<u8> = r.get(1)?;
            let status: String = r.get(3)?;
            let retired_at_ms: Option<i64> = r.get(6)?;
            let status = if status == "active" && retired_at_ms.is_some() {
                "retired".to_owned()
            } else {
                status
            };
            Ok(KeyEntry {
                key_id: r.get(0)?,
                public_key: outpost_proto::hex::encode(&public),
                agent_id: r.get(2)?,
                zones: Vec::new(),
                status,
                enrolled_at_ms: r.get(4)?,
                revoked_at_ms: r.get(5)?,
                retired_at_ms,
                superseded_by: r.get(7)?,
                handover_seq: r.get(8)?,
                revoked_reason: r.get(9)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut zstmt = conn.prepare("SELECT zone FROM key_zones WHERE key_id = ?1 ORDER BY zone")?;
    for k in &mut keys {
        k.zones = zstmt
            .query_map(params![k.key_id], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
    }
    Ok(keys)
}
