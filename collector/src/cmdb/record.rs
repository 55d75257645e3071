//! Small write helpers shared by the apply and ingest paths: counters, events, quarantine rows.
//!
//! Each takes a connection (usually an open transaction) so that a counter is incremented in
//! the same transaction as the row it describes.

use rusqlite::{Connection, params};

use crate::time::sql_int;

/// Largest copy of a refused envelope kept in the quarantine table; the original length is kept
/// too.
pub const MAX_QUARANTINE_BYTES: usize = 64 * 1024;

/// Largest copy of a refused datagram kept (a genuine one is at most 1200 bytes).
pub const MAX_DATAGRAM_COPY: usize = 2 * 1024;

/// Event kinds written to the `events` table.
pub mod kind {
    pub const AGENT_FIRST_SEEN: &str = "agent_first_seen";
    pub const SEQUENCE_GAP: &str = "sequence_gap";
    pub const CHAIN_BREAK: &str = "chain_break";
    pub const ASSET_NEW: &str = "asset_new";
    pub const ASSET_CHANGED: &str = "asset_changed";
    pub const ASSET_UNREACHABLE: &str = "asset_unreachable";
    pub const ASSET_RECOVERED: &str = "asset_recovered";
    /// Identity and reconciliation (see `reconcile.rs`).
    pub const ADDRESS_CHANGED: &str = "address_changed";
    pub const CI_REKEYED: &str = "ci_rekeyed";
    pub const IDENTITY_DUPLICATE: &str = "identity_duplicate";
    pub const IDENTITY_SHARED: &str = "identity_shared";
    pub const DEVICE_REPLACED: &str = "device_replaced";
    pub const REASSEMBLY_DROPPED: &str = "reassembly_dropped";
    /// A signed data-lost notice from an agent (its spool dropped envelopes).
    pub const DATA_LOST: &str = "data_lost";
    /// The agent's MQTT status went `online` / `offline` (last will or clean shutdown).
    pub const AGENT_ONLINE: &str = "agent_online";
    pub const AGENT_OFFLINE: &str = "agent_offline";
    /// A QoS 1 redelivery of an envelope already stored (same hash): nothing applied.
    pub const DUPLICATE: &str = "duplicate";
    pub const CONDUIT_SILENT: &str = "conduit_silent";
    pub const CONDUIT_RESUMED: &str = "conduit_resumed";
    pub const AGENT_SILENT: &str = "agent_silent";
    pub const AGENT_RESUMED: &str = "agent_resumed";
    /// The agent declared a new chain (zero `prev_hash`, above the last accepted number).
    pub const AGENT_STATE_LOST: &str = "agent_state_lost";
    /// A signed key handover retired a key and enrolled its successor.
    pub const KEY_ROTATED: &str = "key_rotated";
    /// `outpost-collector key revoke`.
    pub const KEY_REVOKED: &str = "key_revoked";
    /// An envelope sealed with a revoked key arrived (an alert: the key may be stolen).
    pub const REVOKED_KEY_USED: &str = "revoked_key_used";
    /// An envelope's agent clock is ahead of the collector's by more than the allowed skew.
    pub const CLOCK_SKEW: &str = "clock_skew";
}

/// Adds `delta` to the counter `name` (creating it at `delta`).
pub fn bump(conn: &Connection, name: &str, delta: i64, now_ms: u64) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO counters (name, value, updated_at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET value = value + excluded.value,
                                          updated_at_ms = excluded.updated_at_ms",
    )?;
    stmt.execute(params![name, delta, sql_int(now_ms)])?;
    Ok(())
}

/// Where an event happened.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventScope<'a> {
    pub agent: Option<&'a str>,
    pub zone: Option<&'a str>,
    pub asset: Option<&'a str>,
}

/// Appends an event; `detail` is stored as a JSON object.
pub fn event(
    conn: &Connection,
    time_ms: u64,
    kind: &str,
    scope: EventScope<'_>,
    detail: &serde_json::Value,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO events (time_ms, kind, agent_id, zone, asset, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    stmt.execute(params![
        sql_int(time_ms),
        kind,
        scope.agent,
        scope.zone,
        scope.asset,
        detail.to_string()
    ])?;
    Ok(())
}

/// One refused datagram or envelope.
#[derive(Debug, Clone)]
pub struct QuarantineRow<'a> {
    pub received_at_ms: u64,
    pub peer: &'a str,
    /// `datagram` or `envelope`.
    pub stage: &'static str,
    pub reason: &'a str,
    pub detail: &'a str,
    pub agent_claimed: Option<&'a str>,
    pub key_claimed: Option<&'a str>,
    pub seq_claimed: Option<u64>,
    /// The copy to keep (possibly shortened or empty).
    pub raw: &'a [u8],
    /// The length of what was received.
    pub raw_len: usize,
}

/// Stores a quarantine row (the copy capped at [`MAX_QUARANTINE_BYTES`]).
pub fn quarantine(conn: &Connection, row: &QuarantineRow<'_>) -> rusqlite::Result<()> {
    let kept = &row.raw[..row.raw.len().min(MAX_QUARANTINE_BYTES)];
    let mut stmt = conn.prepare_cached(
        "INSERT INTO quarantine (received_at_ms, peer, stage, reason, detail, agent_claimed,
                                 key_claimed, seq_claimed, raw, raw_len)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    stmt.execute(params![
        sql_int(row.received_at_ms),
        row.peer,
        row.stage,
        row.reason,
        row.detail,
        row.agent_claimed,
        row.key_claimed,
        row.seq_claimed.map(sql_int),
        kept,
        sql_int(row.raw_len as u64),
    ])?;
    Ok(())
}

impl crate::cmdb::Cmdb {
    /// Stores a quarantine row and increments `counters` by one, in one transaction.
    pub fn quarantine_and_count(
        &mut self,
        row: &QuarantineRow<'_>,
        counters: &[&str],
    ) -> Result<(), crate::cmdb::CmdbError> {
        let path = self.path().to_owned();
        let sqlite = |source| crate::cmdb::CmdbError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn_mut().transaction().map_err(sqlite)?;
        quarantine(&tx, row).map_err(sqlite)?;
        for name in counters {
            bump(&tx, name, 1, row.received_at_ms).map_err(sqlite)?;
        }
        tx.commit().map_err(sqlite)
    }

    /// Appends an event and increments `counters` by one, in one transaction.
    pub fn event_and_count(
        &mut self,
        time_ms: u64,
        kind: &str,
        scope: EventScope<'_>,
        detail: &serde_json::Value,
        counters: &[&str],
    ) -> Result<(), crate::cmdb::CmdbError> {
        let path = self.path().to_owned();
        let sqlite = |source| crate::cmdb::CmdbError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn_mut().transaction().map_err(sqlite)?;
        event(&tx, time_ms, kind, scope, detail).map_err(sqlite)?;
        for name in counters {
            bump(&tx, name, 1, time_ms).map_err(sqlite)?;
        }
        tx.commit().map_err(sqlite)
    }
}
