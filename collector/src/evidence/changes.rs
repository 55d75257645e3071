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
                "this CMDB has no baseline or change-record tables (it was made by a \
                 collector before schema version 4; any current collector command migrates it)"
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The drift tables' columns this module reads (schema migration 4); `tests/e2e_evidence.rs`
    /// covers the real schema through real processes.
    const DRIFT_TABLES: &str = r#"
        CREATE TABLE assets (asset_id INTEGER PRIMARY KEY, ci_key TEXT NOT NULL, zone TEXT NOT NULL);
        CREATE TABLE baselines (asset_id INTEGER PRIMARY KEY, approved_at_ms INTEGER NOT NULL,
            approved_by TEXT NOT NULL, reason TEXT NOT NULL, ticket TEXT);
        CREATE TABLE change_records (record_id INTEGER PRIMARY KEY, ticket TEXT NOT NULL,
            asset TEXT NOT NULL, window_from_ms INTEGER NOT NULL, window_to_ms INTEGER NOT NULL,
            expect TEXT NOT NULL, auto_confirm INTEGER NOT NULL, state TEXT NOT NULL,
            description TEXT, source TEXT NOT NULL, created_at_ms INTEGER NOT NULL,
            implemented_at_ms INTEGER, confirmed_at_ms INTEGER, confirmed_by TEXT);
        CREATE TABLE detected_changes (change_id INTEGER PRIMARY KEY, asset TEXT NOT NULL,
            verdict TEXT NOT NULL, record_id INTEGER, alert_id INTEGER,
            observed_at_ms INTEGER NOT NULL, agent_time_ms INTEGER NOT NULL,
            agent_id TEXT NOT NULL, zone TEXT NOT NULL, envelope_seq INTEGER NOT NULL,
            envelope_hash TEXT NOT NULL, changes TEXT NOT NULL);
        INSERT INTO assets VALUES (1, 'zone/z/modbus/tcp://10.0.0.1:502/unit/1', 'z');
        INSERT INTO assets VALUES (2, 'zone/other/modbus/tcp://10.0.0.2:502/unit/1', 'other');
        INSERT INTO baselines VALUES (1, 100, 'alice', 'commissioning', NULL);
        INSERT INTO baselines VALUES (2, 100, 'bob', 'other zone', NULL);
        INSERT INTO change_records VALUES (7, 'CHG0031337', 'zone/z/modbus/tcp://10.0.0.1:502/unit/1',
            1000, 5000, '{}', 1, 'confirmed', 'firmware update', 'cli', 900, 2100, 2200, 'carol');
        INSERT INTO detected_changes VALUES (1, 'zone/z/modbus/tcp://10.0.0.1:502/unit/1',
            'authorised', 7, NULL, 2000, 2000, 'gw', 'z', 42, 'aa', '[{"attribute":"revision","before":"1.0","after":"1.1"}]');
        INSERT INTO detected_changes VALUES (2, 'zone/z/modbus/tcp://10.0.0.1:502/unit/1',
            'unauthorised', NULL, 3, 3000, 3000, 'gw', 'z', 43, 'bb', '[]');
        INSERT INTO detected_changes VALUES (3, 'zone/z/modbus/tcp://10.0.0.1:502/unit/1',
            'unauthorised', NULL, 4, 9000, 9000, 'gw', 'z', 44, 'cc', '[]');
    "#;

    #[test]
    fn reads_baselines_and_changes_of_the_zone_and_period_with_their_authorisation() {
        let conn = Connection::open_in_memory().unwrap();
        let none = read(&conn, "z", 0, 10);
        assert!(!none.available);
        assert!(none.note.unwrap().contains("no baseline"));

        conn.execute_batch(DRIFT_TABLES).unwrap();
        let c = read(&conn, "z", 0, 5000);
        assert!(c.available, "{:?}", c.note);
        assert_eq!(c.baselines.len(), 1);
        assert_eq!(c.baselines[0].approved_by, "alice");
        assert_eq!(c.changes.len(), 2, "the third is after the period");
        assert_eq!(c.changes[0].ticket.as_deref(), Some("CHG0031337"));
        assert_eq!(c.changes[0].confirmed_by.as_deref(), Some("carol"));
        assert_eq!(c.changes[0].changes[0]["after"], "1.1");
        assert_eq!(c.changes[1].ticket, None);

        let html = {
            let mut o = String::new();
            super::super::html::render_changes_for_test(&mut o, &c);
            o
        };
        assert!(html.contains("CHG0031337 (confirmed, confirmed by carol): firmware update"));
        assert!(html.contains("none: investigate"));
    }
}
