//! The read side: rows for the CLI's tables and JSON documents.
//!
//! Every row type serialises to exactly the JSON documented in `docs/json.md`; renaming a field
//! is a breaking change for the scripts ITSM teams write against it.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Connection, Row, params};
use serde::Serialize;

use super::{Cmdb, CmdbError};
use crate::time::Timestamp;

/// One field device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssetRow {
    pub ci_key: String,
    pub zone: String,
    pub agent_id: String,
    pub name: String,
    pub endpoint: String,
    pub unit_id: u8,
    pub status: String,
    pub last_problem: Option<String>,
    pub ident_method: String,
    pub vendor_name: Option<String>,
    pub product_code: Option<String>,
    pub revision: Option<String>,
    pub vendor_url: Option<String>,
    pub product_name: Option<String>,
    pub model_name: Option<String>,
    pub user_application_name: Option<String>,
    /// Further identification objects, `0xNN` → text.
    pub objects: BTreeMap<String, String>,
    pub blocks: Vec<BlockRow>,
    pub first_seen: Timestamp,
    pub last_seen: Option<Timestamp>,
    pub last_polled: Timestamp,
    pub last_envelope_seq: i64,
    /// Set when envelopes of this asset's agent were lost: what is shown may be out of date
    /// until the agent's next full snapshot applies.
    pub stale_since: Option<Timestamp>,
    /// The missing sequence numbers behind `stale_since`, `"from..=to"`.
    pub stale_gap: Option<String>,
    /// What the CI key rests on: `serial`, `mac` or `address` (see `cmdb::reconcile`).
    pub identity_basis: String,
    /// The serial number last reported (from the FC 43 object the device profile names).
    pub serial_number: Option<String>,
    /// The MAC address last reported (the gateway's ARP cache).
    pub mac_address: Option<String>,
    /// The CI of the device that took this one's place at its address, if any.
    pub replaced_by: Option<String>,
    /// Every agent that reports this CI, where, and when (by agent id).
    pub observed_by: Vec<ObservationRow>,
}

/// One agent's view of a CI (`asset_observations`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObservationRow {
    pub agent_id: String,
    pub endpoint: String,
    pub unit_id: u8,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
}

/// The last known content of one register block.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockRow {
    pub name: String,
    pub kind: Option<String>,
    pub start: Option<u64>,
    pub hash: Option<String>,
    pub values: Vec<u64>,
    pub updated_at: Timestamp,
}

/// One agent with its keys and gateway.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentRow {
    pub agent_id: String,
    pub enrolled_at: Timestamp,
    pub first_seen: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    pub last_seq: Option<i64>,
    pub last_hash: Option<String>,
    pub last_envelope_agent_time: Option<Timestamp>,
    pub last_peer: Option<String>,
    pub envelopes_accepted: i64,
    pub assets: i64,
    pub keys: Vec<KeyRow>,
    pub gateway: Option<GatewayRow>,
}

/// One enrolled key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyRow {
    pub key_id: String,
    pub status: String,
    pub zones: Vec<String>,
    pub enrolled_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// The gateway host an agent runs on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GatewayRow {
    pub ci_key: String,
    pub zone: String,
    pub hostname: Option<String>,
    pub os_name: Option<String>,
    pub os_version: Option<String>,
    pub kernel_version: Option<String>,
    pub cpu_arch: String,
    pub cpu_count: i64,
    pub memory_bytes: i64,
    pub boot_time: Timestamp,
    pub interfaces: serde_json::Value,
    pub agent_version: String,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    /// The self-inventory attributes (cpu_model, disks, listening, executables, truncated,
    /// switched_off, problems), lists as JSON (see `gateway_facts`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub inventory: BTreeMap<String, serde_json::Value>,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    pub event_id: i64,
    pub time: Timestamp,
    pub kind: String,
    pub agent_id: Option<String>,
    pub zone: Option<String>,
    pub asset: Option<String>,
    pub detail: serde_json::Value,
}

/// One attribute change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryRow {
    pub history_id: i64,
    pub asset: String,
    pub attribute: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
    pub observed_at: Timestamp,
    pub agent_id: String,
    pub envelope_seq: i64,
    pub envelope_hash: String,
}

/// One refused datagram or envelope (without its bytes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuarantineRow {
    pub quarantine_id: i64,
    pub received_at: Timestamp,
    pub peer: String,
    pub stage: String,
    pub reason: String,
    pub detail: String,
    pub agent_claimed: Option<String>,
    pub key_claimed: Option<String>,
    pub seq_claimed: Option<i64>,
    pub raw_len: i64,
    pub stored_len: i64,
}

/// Counters and table totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub schema_version: u32,
    pub counters: BTreeMap<String, i64>,
    pub totals: Totals,
}

/// Row counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub zones: i64,
    pub agents: i64,
    pub keys_active: i64,
    pub keys_revoked: i64,
    pub assets: i64,
    pub assets_ok: i64,
    pub assets_partial: i64,
    pub assets_unreachable: i64,
    pub gateways: i64,
    pub relations: i64,
    pub envelopes: i64,
    pub events: i64,
    pub history: i64,
    pub quarantine: i64,
}

/// SQLite's "no limit".
fn limit(n: Option<u32>) -> i64 {
    n.map_or(-1, i64::from)
}

impl Cmdb {
    /// All field devices, by CI key.
    pub fn assets(&self) -> Result<Vec<AssetRow>, CmdbError> {
        // Several statements (attributes, observations, assets): one read transaction, so a
        // summary committed in between cannot give a CI without its blocks or observers.
        let read = || -> rusqlite::Result<Vec<AssetRow>> {
            let tx = self.connection().unchecked_transaction()?;
            let rows = query_assets(&tx)?;
            tx.finish()?;
            Ok(rows)
        };
        read().map_err(|e| self.err(e))
    }

    /// All agents, by id.
    pub fn agents(&self) -> Result<Vec<AgentRow>, CmdbError> {
        query_agents(self.connection()).map_err(|e| self.err(e))
    }

    /// Events, oldest first; with `newest`, only that many of the most recent.
    pub fn events(&self, newest: Option<u32>) -> Result<Vec<EventRow>, CmdbError> {
        let conn = self.connection();
        let run = || -> rusqlite::Result<Vec<EventRow>> {
            let mut stmt = conn.prepare(
                "SELECT * FROM (SELECT event_id, time_ms, kind, agent_id, zone, asset, detail
                     FROM events ORDER BY event_id DESC LIMIT ?1) ORDER BY event_id",
            )?;
            let rows = stmt.query_map([limit(newest)], |r| {
                let detail: String = r.get(6)?;
                Ok(EventRow {
                    event_id: r.get(0)?,
                    time: r.get(1)?,
                    kind: r.get(2)?,
                    agent_id: r.get(3)?,
                    zone: r.get(4)?,
                    asset: r.get(5)?,
                    detail: serde_json::from_str(&detail)
                        .unwrap_or(serde_json::Value::String(detail)),
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    /// Attribute changes, oldest first, optionally of one asset (by CI key).
    pub fn history(
        &self,
        asset: Option<&str>,
        newest: Option<u32>,
    ) -> Result<Vec<HistoryRow>, CmdbError> {
        let conn = self.connection();
        let gateway = asset.is_some_and(super::gateway_baseline::is_gateway_key);
        let run = || -> rusqlite::Result<Vec<HistoryRow>> {
            // A gateway CI's history is its self-inventory attributes (`gateway_facts`).
            let mut stmt = conn.prepare(if gateway {
                "SELECT * FROM (SELECT history_id, ci_key, attribute, old_value, new_value,
                         observed_at_ms, agent_id, envelope_seq, envelope_hash
                     FROM gateway_attribute_history WHERE ci_key = ?1
                     ORDER BY history_id DESC LIMIT ?2) ORDER BY history_id"
            } else {
                "SELECT * FROM (SELECT h.history_id, a.ci_key, h.attribute, h.old_value,
                         h.new_value, h.observed_at_ms, h.agent_id, h.envelope_seq,
                         h.envelope_hash
                     FROM attribute_history h JOIN assets a ON a.asset_id = h.asset_id
                     WHERE ?1 IS NULL OR a.ci_key = ?1
                     ORDER BY h.history_id DESC LIMIT ?2) ORDER BY history_id"
            })?;
            let rows = stmt.query_map(params![asset, limit(newest)], |r| {
                Ok(HistoryRow {
                    history_id: r.get(0)?,
                    asset: r.get(1)?,
                    attribute: r.get(2)?,
                    old_value: r.get(3)?,
                    new_value: r.get(4)?,
                    observed_at: r.get(5)?,
                    agent_id: r.get(6)?,
                    envelope_seq: r.get(7)?,
                    envelope_hash: r.get(8)?,
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    /// Quarantined datagrams and envelopes, oldest first.
    pub fn quarantine(&self, newest: Option<u32>) -> Result<Vec<QuarantineRow>, CmdbError> {
        let conn = self.connection();
        let run = || -> rusqlite::Result<Vec<QuarantineRow>> {
            let mut stmt = conn.prepare(
                "SELECT * FROM (SELECT quarantine_id, received_at_ms, peer, stage, reason,
                         detail, agent_claimed, key_claimed, seq_claimed, raw_len, length(raw)
                     FROM quarantine ORDER BY quarantine_id DESC LIMIT ?1)
                 ORDER BY quarantine_id",
            )?;
            let rows = stmt.query_map([limit(newest)], |r| {
                Ok(QuarantineRow {
                    quarantine_id: r.get(0)?,
                    received_at: r.get(1)?,
                    peer: r.get(2)?,
                    stage: r.get(3)?,
                    reason: r.get(4)?,
                    detail: r.get(5)?,
                    agent_claimed: r.get(6)?,
                    key_claimed: r.get(7)?,
                    seq_claimed: r.get(8)?,
                    raw_len: r.get(9)?,
                    stored_len: r.get(10)?,
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    /// The value of one counter (0 if it was never incremented).
    pub fn counter(&self, name: &str) -> Result<i64, CmdbError> {
        self.connection()
            .query_row(
                "SELECT COALESCE((SELECT value FROM counters WHERE name = ?1), 0)",
                [name],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Counters and totals.
    pub fn stats(&self) -> Result<Stats, CmdbError> {
        let schema_version = self.schema_version()?;
        query_stats(self.connection(), schema_version).map_err(|e| self.err(e))
    }
}

fn query_assets(conn: &Connection) -> rusqlite::Result<Vec<AssetRow>> {
    // Blocks and extra identification objects, by asset id, in one pass.
    let mut extras: HashMap<i64, (BTreeMap<String, String>, Vec<BlockRow>)> = HashMap::new();
    {
        let mut stmt = conn.prepare(
            "SELECT asset_id, attribute, value, updated_at_ms FROM asset_attributes
             WHERE (attribute LIKE 'block.%' OR attribute LIKE 'object.%') AND value IS NOT NULL
             ORDER BY asset_id, attribute",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Timestamp>(3)?,
            ))
        })?;
        for row in rows {
            let (id, attribute, value, updated_at) = row?;
            let entry = extras.entry(id).or_default();
            if let Some(object) = attribute.strip_prefix("object.") {
                entry.0.insert(object.to_owned(), value);
            } else if let Some(name) = attribute.strip_prefix("block.") {
                entry.1.push(block_row(name, &value, updated_at));
            }
        }
    }
    // The times come from `asset_times`: an unchanged asset follows its agent's latest summary.
    let mut observed: HashMap<i64, Vec<ObservationRow>> = HashMap::new();
    {
        let mut stmt = conn.prepare(
            // The row of a CI's own agent follows the CI's times (see `observed_unchanged`).
            "SELECT o.asset_id, o.agent_id, o.endpoint, o.unit_id, o.first_seen_ms,
                 CASE WHEN a.agent_id = o.agent_id
                      THEN MAX(o.last_seen_ms, COALESCE(t.last_polled_ms, o.last_seen_ms))
                      ELSE o.last_seen_ms END
             FROM asset_observations o
             JOIN assets a ON a.asset_id = o.asset_id
             JOIN asset_times t ON t.asset_id = o.asset_id
             ORDER BY o.asset_id, o.agent_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                ObservationRow {
                    agent_id: r.get(1)?,
                    endpoint: r.get(2)?,
                    unit_id: r.get(3)?,
                    first_seen: r.get(4)?,
                    last_seen: r.get(5)?,
                },
            ))
        })?;
        for row in rows {
            let (id, obs) = row?;
            observed.entry(id).or_default().push(obs);
        }
    }
    let mut stmt = conn.prepare(
        "SELECT asset_id, ci_key, zone, agent_id, name, endpoint, unit_id, status, last_problem,
             ident_method, vendor_name, product_code, revision, vendor_url, product_name,
             model_name, user_application_name, first_seen_ms, t.last_seen_ms, t.last_polled_ms,
             t.last_envelope_seq,
             (SELECT stale_since_ms FROM agents g WHERE g.agent_id = assets.agent_id),
             (SELECT stale_from_seq || '..=' || stale_to_seq FROM agents g
                 WHERE g.agent_id = assets.agent_id AND stale_since_ms IS NOT NULL),
             identity_basis, serial, mac, replaced_by
         FROM assets JOIN asset_times t USING (asset_id) ORDER BY ci_key",
    )?;
    let rows = stmt.query_map([], |r| {
        let id: i64 = r.get(0)?;
        let (objects, blocks) = extras.remove(&id).unwrap_or_default();
        Ok(AssetRow {
            ci_key: r.get(1)?,
            zone: r.get(2)?,
            agent_id: r.get(3)?,
            name: r.get(4)?,
            endpoint: r.get(5)?,
            unit_id: r.get(6)?,
            status: r.get(7)?,
            last_problem: r.get(8)?,
            ident_method: r.get(9)?,
            vendor_name: r.get(10)?,
            product_code: r.get(11)?,
            revision: r.get(12)?,
            vendor_url: r.get(13)?,
            product_name: r.get(14)?,
            model_name: r.get(15)?,
            user_application_name: r.get(16)?,
            objects,
            blocks,
            first_seen: r.get(17)?,
            last_seen: r.get(18)?,
            last_polled: r.get(19)?,
            last_envelope_seq: r.get(20)?,
            stale_since: r.get(21)?,
            stale_gap: r.get(22)?,
            identity_basis: r.get(23)?,
            serial_number: r.get(24)?,
            mac_address: r.get(25)?,
            replaced_by: r.get(26)?,
            observed_by: observed.remove(&id).unwrap_or_default(),
        })
    })?;
    rows.collect()
}

fn block_row(name: &str, value: &str, updated_at: Timestamp) -> BlockRow {
    let parsed: serde_json::Value = serde_json::from_str(value).unwrap_or_default();
    let text = |k: &str| parsed.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    BlockRow {
        name: name.to_owned(),
        kind: text("kind"),
        start: parsed.get("start").and_then(serde_json::Value::as_u64),
        hash: text("hash"),
        values: parsed
            .get("values")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default(),
        updated_at,
    }
}

fn query_agents(conn: &Connection) -> rusqlite::Result<Vec<AgentRow>> {
    let mut zones: HashMap<String, Vec<String>> = HashMap::new();
    {
        let mut stmt = conn.prepare("SELECT key_id, zone FROM key_zones ORDER BY key_id, zone")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
            let (key, zone) = row?;
            zones.entry(key).or_default().push(zone);
        }
    }
    let mut keys: HashMap<String, Vec<KeyRow>> = HashMap::new();
    {
        let mut stmt = conn.prepare(
            "SELECT agent_id, key_id, status, enrolled_at_ms, revoked_at_ms FROM agent_keys
             ORDER BY agent_id, enrolled_at_ms, key_id",
        )?;
        let rows = stmt.query_map([], |r| {
            let key_id: String = r.get(1)?;
            Ok((
                r.get::<_, String>(0)?,
                KeyRow {
                    zones: zones.remove(&key_id).unwrap_or_default(),
                    key_id,
                    status: r.get(2)?,
                    enrolled_at: r.get(3)?,
                    revoked_at: r.get(4)?,
                },
            ))
        })?;
        for row in rows {
            let (agent, key) = row?;
            keys.entry(agent).or_default().push(key);
        }
    }
    let mut gateways: HashMap<String, GatewayRow> = HashMap::new();
    {
        let mut stmt = conn.prepare(
            "SELECT agent_id, ci_key, zone, hostname, os_name, os_version, kernel_version,
                 cpu_arch, cpu_count, memory_bytes, boot_time_ms, interfaces_json, agent_version,
                 first_seen_ms, last_seen_ms
             FROM gateways",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, gateway_row(r)?)))?;
        for row in rows {
            let (agent, mut gateway) = row?;
            for (name, text) in super::gateway_facts::stored(conn, &gateway.ci_key)? {
                let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
                gateway.inventory.insert(name, value);
            }
            gateways.insert(agent, gateway);
        }
    }
    let mut stmt = conn.prepare(
        "SELECT g.agent_id, g.enrolled_at_ms, g.first_seen_ms, g.last_seen_ms, g.last_seq,
             g.last_hash, g.last_envelope_agent_ms, g.last_peer, g.envelopes_accepted,
             (SELECT count(*) FROM assets a WHERE a.agent_id = g.agent_id)
         FROM agents g ORDER BY g.agent_id",
    )?;
    let rows = stmt.query_map([], |r| {
        let agent_id: String = r.get(0)?;
        Ok(AgentRow {
            keys: keys.remove(&agent_id).unwrap_or_default(),
            gateway: gateways.remove(&agent_id),
            agent_id,
            enrolled_at: r.get(1)?,
            first_seen: r.get(2)?,
            last_seen: r.get(3)?,
            last_seq: r.get(4)?,
            last_hash: r.get(5)?,
            last_envelope_agent_time: r.get(6)?,
            last_peer: r.get(7)?,
            envelopes_accepted: r.get(8)?,
            assets: r.get(9)?,
        })
    })?;
    rows.collect()
}

fn gateway_row(r: &Row<'_>) -> rusqlite::Result<GatewayRow> {
    let interfaces: String = r.get(11)?;
    Ok(GatewayRow {
        ci_key: r.get(1)?,
        zone: r.get(2)?,
        hostname: r.get(3)?,
        os_name: r.get(4)?,
        os_version: r.get(5)?,
        kernel_version: r.get(6)?,
        cpu_arch: r.get(7)?,
        cpu_count: r.get(8)?,
        memory_bytes: r.get(9)?,
        boot_time: r.get(10)?,
        interfaces: serde_json::from_str(&interfaces).unwrap_or_default(),
        agent_version: r.get(12)?,
        first_seen: r.get(13)?,
        last_seen: r.get(14)?,
        inventory: BTreeMap::new(),
    })
}

fn query_stats(conn: &Connection, schema_version: u32) -> rusqlite::Result<Stats> {
    let mut counters = BTreeMap::new();
    {
        let mut stmt = conn.prepare("SELECT name, value FROM counters ORDER BY name")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
            let (name, value) = row?;
            counters.insert(name, value);
        }
    }
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
    let totals = Totals {
        zones: count("SELECT count(*) FROM zones")?,
        agents: count("SELECT count(*) FROM agents")?,
        keys_active: count(
            "SELECT count(*) FROM agent_keys WHERE status = 'active' AND retired_at_ms IS NULL",
        )?,
        keys_revoked: count("SELECT count(*) FROM agent_keys WHERE status = 'revoked'")?,
        assets: count("SELECT count(*) FROM assets")?,
        assets_ok: count("SELECT count(*) FROM assets WHERE status = 'ok'")?,
        assets_partial: count("SELECT count(*) FROM assets WHERE status = 'partial'")?,
        assets_unreachable: count("SELECT count(*) FROM assets WHERE status = 'unreachable'")?,
        gateways: count("SELECT count(*) FROM gateways")?,
        relations: count("SELECT count(*) FROM relations")?,
        envelopes: count("SELECT count(*) FROM envelopes")?,
        events: count("SELECT count(*) FROM events")?,
        history: count("SELECT count(*) FROM attribute_history")?,
        quarantine: count("SELECT count(*) FROM quarantine")?,
    };
    Ok(Stats {
        schema_version,
        counters,
        totals,
    })
}
