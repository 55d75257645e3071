//! Baselines and judged changes (the drift tables, CIP-010 R1.2/R2.1), when the CMDB has them.
//!
//! These are the collector's own records, not signed by agents: the pack carries them under
//! the manifest signature, and `evidence verify` checks that every judged change in the period
//! names an envelope that is in the pack (the observation it was judged on).

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

/// `changes.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    pub schema: String,
    /// False when the CMDB has no drift tables (or they could not be read: see `note`).
    pub available: bool,
    pub note: Option<String>,
    pub baselines: Vec<BaselineEntry>,
    pub changes: Vec<ChangeEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineEntry {
    pub ci_key: String,
    pub approved_at_ms: i64,
    pub approved_by: String,
    pub reason: String,
    pub ticket: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEntry {
    pub change_id: i64,
    pub ci_key: String,
    /// `authorised`, `unauthorised`, `back_to_baseline`, `unstable`.
    pub verdict: String,
    pub agent_id: String,
    pub agent_time_ms: i64,
    pub envelope_seq: i64,
    pub envelope_hash: String,
    /// JSON array of `{attribute, before, after}` as the collector recorded it.
    pub changes: serde_json::Value,
    /// The change record (RFC) that authorised it, if any.
    pub ticket: Option<String>,
    pub record_state: Option<String>,
    pub record_description: Option<String>,
    pub confirmed_by: Option<String>,
}

/// `changes.json`'s schema name.
pub const SCHEMA: &str = "outpost.evidence.changes.v1";

fn has_table(conn: &Connection, name: &str) -> bool {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        params![name],
        |_| Ok(()),
    )
    .is_ok()
}

/// Reads the baselines of the zone's CIs and the changes judged in the period.
pub fn read(conn: &Connection, zone: &str, from_ms: i64, to_ms: i64) -> Changes {
    if !["baselines", "detected_changes", "change_records"]
        .iter()
        .all(|t| has_table(conn, t))
    {
        return Changes {
            schema: SCHEMA.to_owned(),
            available: false,
            note: Some(
                "this CMDB has no baseline or change-record tables (drift judgement not \
                 enabled in this collector version)"
                    .to_owned(),
            ),
            ..Changes::default()
        };
    }
    match read_tables(conn, zone, from_ms, to_ms) {
        Ok((baselines, changes)) => Changes {
            schema: SCHEMA.to_owned(),
            available: true,
            note: None,
            baselines,
            changes,
        },
        Err(e) => Changes {
            schema: SCHEMA.to_owned(),
            available: false,
            note: Some(format!("the change tables could not be read: {e}")),
            ..Changes::default()
        },
    }
}

type Tables = (Vec<BaselineEntry>, Vec<ChangeEntry>);

fn read_tables(
    conn: &Connection,
    zone: &str,
    from_ms: i64,
    to_ms: i64,
) -> rusqlite::Result<Tables> {
    let mut stmt = conn.prepare(
        "SELECT a.ci_key, b.approved_at_ms, b.approved_by, b.reason, b.ticket
         FROM baselines b JOIN assets a ON a.asset_id = b.asset_id
         WHERE a.zone = ?1 ORDER BY a.ci_key",
    )?;
    let baselines = stmt
        .query_map(params![zone], |r| {
            Ok(BaselineEntry {
                ci_key: r.get(0)?,
                approved_at_ms: r.get(1)?,
                approved_by: r.get(2)?,
                reason: r.get(3)?,
                ticket: r.get(4)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut stmt = conn.prepare(
        "SELECT d.change_id, d.asset, d.verdict, d.agent_id, d.agent_time_ms, d.envelope_seq,
             d.envelope_hash, d.changes, c.ticket, c.state, c.description, c.confirmed_by
         FROM detected_changes d LEFT JOIN change_records c ON c.record_id = d.record_id
         WHERE d.zone = ?1 AND d.agent_time_ms >= ?2 AND d.agent_time_ms < ?3
         ORDER BY d.change_id",
    )?;
    let changes = stmt
        .query_map(params![zone, from_ms, to_ms], |r| {
            let text: String = r.get(7)?;
            Ok(ChangeEntry {
                change_id: r.get(0)?,
                ci_key: r.get(1)?,
                verdict: r.get(2)?,
                agent_id: r.get(3)?,
                agent_time_ms: r.get(4)?,
                envelope_seq: r.get(5)?,
                envelope_hash: r.get(6)?,
                changes: serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
                ticket: r.get(8)?,
                record_state: r.get(9)?,
                record_description: r.get(10)?,
                confirmed_by: r.get(11)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((baselines, changes))
}
