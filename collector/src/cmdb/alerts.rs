//! The alert outbox: alerts are written in the transaction that judged the change (so an alert
//! exists exactly when its change was applied), and delivered later by `crate::alert`. Each
//! sink has a cursor (`alert_sinks.delivered_through`): alerts after it are pending, delivered
//! in order, and every delivery is a row in `alert_deliveries`. A failed attempt increments the
//! sink's `failures` and keeps the alert pending; nothing is dropped.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

use super::record;
use super::{Cmdb, CmdbError};
use crate::time::{Timestamp, sql_int};

/// What kind of change an alert is about; decides its severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Identity or firmware (FC 43 objects, e.g. MajorMinorRevision).
    Identity,
    /// A device appeared in a baselined zone.
    NewDevice,
    /// A configuration register or coil block.
    Config,
    /// A baselined device stopped answering.
    Presence,
    /// A device reported unreachable answers again (informational: closes a presence alert).
    PresenceCleared,
    /// An envelope sealed with a revoked key: the key may be in someone else's hands.
    Security,
    /// An agent declared that it lost its state (a new chain above the last accepted one).
    Agent,
    /// The gateway's self-inventory: a listening socket opened, closed or re-owned, or a new
    /// program executable.
    Gateway,
    /// A must-not-reach target answered a segmentation probe: the zone is not segmented.
    Segmentation,
    /// A may-reach conduit (broker, diode) did not answer a segmentation probe.
    Conduit,
    /// A segmentation violation or a down conduit cleared (informational).
    SegmentationCleared,
}

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Category::Identity => "identity",
            Category::NewDevice => "new_device",
            Category::Config => "config",
            Category::Presence | Category::PresenceCleared => "presence",
            Category::Security => "security",
            Category::Agent => "agent",
            Category::Gateway => "gateway",
            Category::Segmentation | Category::Conduit | Category::SegmentationCleared => {
                "segmentation"
            }
        }
    }

    /// OCSF `severity_id`: 4 high (identity, new device), 3 medium (config), 2 low (presence),
    /// 1 informational (a device that was reported unreachable answers again); a revoked key
    /// in use is 4 high, an agent's declared state loss 3 medium; a segmentation violation 4
    /// high, a conduit down 3 medium, either clearing 1 informational.
    pub fn severity_id(self) -> i64 {
        match self {
            Category::Identity
            | Category::NewDevice
            | Category::Security
            | Category::Gateway
            | Category::Segmentation => 4,
            Category::Config | Category::Agent | Category::Conduit => 3,
            Category::Presence => 2,
            Category::PresenceCleared | Category::SegmentationCleared => 1,
        }
    }
}

/// An alert about to be written.
#[derive(Debug)]
pub(crate) struct NewAlert<'a> {
    pub raised_at_ms: i64,
    pub kind: &'a str,
    pub category: Category,
    pub asset: &'a str,
    pub asset_name: &'a str,
    pub zone: &'a str,
    pub agent: &'a str,
    pub agent_time_ms: i64,
    pub envelope_seq: i64,
    pub envelope_hash: &'a str,
    pub detail: &'a Value,
}

/// Writes an alert into the outbox; returns its id.
pub(crate) fn insert(conn: &Connection, a: &NewAlert<'_>) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "INSERT INTO alerts (raised_at_ms, kind, category, severity_id, asset, asset_name, zone,
             agent_id, agent_time_ms, envelope_seq, envelope_hash, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        a.raised_at_ms,
        a.kind,
        a.category.name(),
        a.category.severity_id(),
        a.asset,
        a.asset_name,
        a.zone,
        a.agent,
        a.agent_time_ms,
        a.envelope_seq,
        a.envelope_hash,
        a.detail.to_string(),
    ])?;
    Ok(conn.last_insert_rowid())
}

impl Cmdb {
    /// Records an event and raises its alert in one transaction (for alerts raised outside an
    /// envelope's apply transaction, e.g. a refused envelope sealed with a revoked key).
    pub(crate) fn event_and_alert(
        &mut self,
        kind: &str,
        scope: record::EventScope<'_>,
        detail: &Value,
        alert: &NewAlert<'_>,
    ) -> Result<i64, CmdbError> {
        let time_ms = u64::try_from(alert.raised_at_ms).unwrap_or(0);
        let path = self.path().to_owned();
        let sqlite = |source| CmdbError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn_mut().transaction().map_err(sqlite)?;
        record::event(&tx, time_ms, kind, scope, detail).map_err(sqlite)?;
        let id = insert(&tx, alert).map_err(sqlite)?;
        record::bump(&tx, "alerts_raised", 1, time_ms).map_err(sqlite)?;
        tx.commit().map_err(sqlite)?;
        Ok(id)
    }
}

/// One stored alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRow {
    pub alert_id: i64,
    pub raised_at: Timestamp,
    pub kind: String,
    pub category: String,
    pub severity_id: i64,
    pub asset: String,
    pub asset_name: String,
    pub zone: String,
    pub agent_id: String,
    /// When the agent sealed the envelope that showed the change (agent clock).
    pub agent_time: Timestamp,
    pub envelope_seq: i64,
    pub envelope_hash: String,
    pub detail: Value,
    /// Sinks it has been delivered to.
    pub delivered_to: Vec<String>,
}

/// Delivery state of one sink.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SinkRow {
    pub sink: String,
    pub delivered_through: i64,
    pub delivered: i64,
    pub failures: i64,
    pub last_error: Option<String>,
    pub last_attempt: Option<Timestamp>,
    pub last_delivered: Option<Timestamp>,
}

const ALERT_COLUMNS: &str = "alert_id, raised_at_ms, kind, category, severity_id, asset, \
     asset_name, zone, agent_id, agent_time_ms, envelope_seq, envelope_hash, detail";

fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRow> {
    let detail: String = r.get(12)?;
    Ok(AlertRow {
        alert_id: r.get(0)?,
        raised_at: r.get(1)?,
        kind: r.get(2)?,
        category: r.get(3)?,
        severity_id: r.get(4)?,
        asset: r.get(5)?,
        asset_name: r.get(6)?,
        zone: r.get(7)?,
        agent_id: r.get(8)?,
        agent_time: r.get(9)?,
        envelope_seq: r.get(10)?,
        envelope_hash: r.get(11)?,
        detail: serde_json::from_str(&detail).unwrap_or(Value::String(detail)),
        delivered_to: Vec::new(),
    })
}

impl Cmdb {
    /// The newest `limit` alerts (all when `None`), oldest first, with where each went.
    pub fn alerts(&self, limit: Option<u32>) -> Result<Vec<AlertRow>, CmdbError> {
        let run = || -> rusqlite::Result<Vec<AlertRow>> {
            let sql = format!(
                "SELECT * FROM (SELECT {ALERT_COLUMNS} FROM alerts ORDER BY alert_id DESC
                 LIMIT ?1) ORDER BY alert_id"
            );
            let limit = limit.map_or(-1, i64::from);
            let mut rows = self
                .connection()
                .prepare(&sql)?
                .query_map([limit], alert_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut sinks = self.connection().prepare_cached(
                "SELECT sink FROM alert_deliveries WHERE alert_id = ?1 ORDER BY sink",
            )?;
            for row in &mut rows {
                row.delivered_to = sinks
                    .query_map([row.alert_id], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()?;
            }
            Ok(rows)
        };
        run().map_err(|e| self.err(e))
    }

    /// Delivery state of every sink that has ever been configured.
    pub fn alert_sinks(&self) -> Result<Vec<SinkRow>, CmdbError> {
        let run = || -> rusqlite::Result<Vec<SinkRow>> {
            self.connection()
                .prepare(
                    "SELECT sink, delivered_through, delivered, failures, last_error,
                         last_attempt_ms, last_delivered_ms FROM alert_sinks ORDER BY sink",
                )?
                .query_map([], |r| {
                    Ok(SinkRow {
                        sink: r.get(0)?,
                        delivered_through: r.get(1)?,
                        delivered: r.get(2)?,
                        failures: r.get(3)?,
                        last_error: r.get(4)?,
                        last_attempt: r.get(5)?,
                        last_delivered: r.get(6)?,
                    })
                })?
                .collect()
        };
        run().map_err(|e| self.err(e))
    }

    /// Registers a sink (its cursor starts before the first alert: everything in the outbox
    /// is delivered to it).
    pub fn register_sink(&mut self, sink: &str) -> Result<(), CmdbError> {
        self.connection()
            .execute(
                "INSERT OR IGNORE INTO alert_sinks (sink) VALUES (?1)",
                [sink],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Alerts not yet delivered to `sink`, oldest first, at most `limit`.
    pub fn pending_alerts(&self, sink: &str, limit: u32) -> Result<Vec<AlertRow>, CmdbError> {
        let run = || -> rusqlite::Result<Vec<AlertRow>> {
            let through: i64 = self
                .connection()
                .prepare_cached("SELECT delivered_through FROM alert_sinks WHERE sink = ?1")?
                .query_row([sink], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            let sql = format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE alert_id > ?1 ORDER BY alert_id
                 LIMIT ?2"
            );
            self.connection()
                .prepare_cached(&sql)?
                .query_map(params![through, i64::from(limit)], alert_row)?
                .collect()
        };
        run().map_err(|e| self.err(e))
    }

    /// Records that `alert_id` reached `sink` after `attempts` tries, in one transaction.
    pub fn mark_delivered(
        &mut self,
        sink: &str,
        alert_id: i64,
        attempts: u32,
        now_ms: u64,
    ) -> Result<(), CmdbError> {
        let now = sql_int(now_ms);
        let done = self.in_transaction(|db| -> rusqlite::Result<()> {
            let c = db.connection();
            c.prepare_cached(
                "INSERT OR IGNORE INTO alert_deliveries (alert_id, sink, delivered_at_ms, attempts)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![alert_id, sink, now, attempts])?;
            c.prepare_cached(
                "UPDATE alert_sinks SET delivered_through = MAX(delivered_through, ?2),
                     delivered = delivered + 1, last_delivered_ms = ?3, last_attempt_ms = ?3
                 WHERE sink = ?1",
            )?
            .execute(params![sink, alert_id, now])?;
            record::bump(c, "alerts_delivered", 1, now_ms)
        })?;
        done.map_err(|e| self.err(e))
    }

    /// Records a failed delivery attempt to `sink`.
    pub fn record_delivery_failure(
        &mut self,
        sink: &str,
        error: &str,
        now_ms: u64,
    ) -> Result<(), CmdbError> {
        let now = sql_int(now_ms);
        let done = self.in_transaction(|db| -> rusqlite::Result<()> {
            let c = db.connection();
            c.prepare_cached(
                "UPDATE alert_sinks SET failures = failures + 1, last_error = ?2,
                     last_attempt_ms = ?3 WHERE sink = ?1",
            )?
            .execute(params![sink, error, now])?;
            record::bump(c, "alert_delivery_failures", 1, now_ms)
        })?;
        done.map_err(|e| self.err(e))
    }
}
