//! Query results as aligned text tables (people) or versioned JSON documents (scripts).
//!
//! Every JSON document is an object `{"schema": "outpost.<name>.v1", "generated_at": RFC 3339,
//! "<name>": ...}`; the fields are documented in `docs/json.md`. Bump the schema version for any
//! change that could break a script (renaming, removing or retyping a field).

use serde::Serialize;

use crate::cmdb::query::{AgentRow, AssetRow, EventRow, HistoryRow, QuarantineRow, Stats};
use crate::table::{Table, opt};
use crate::time::Timestamp;

pub const SCHEMA_ASSETS: &str = "outpost.assets.v2";
pub const SCHEMA_AGENTS: &str = "outpost.agents.v1";
pub const SCHEMA_EVENTS: &str = "outpost.events.v1";
pub const SCHEMA_HISTORY: &str = "outpost.history.v1";
pub const SCHEMA_QUARANTINE: &str = "outpost.quarantine.v1";
pub const SCHEMA_STATS: &str = "outpost.stats.v1";

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(Serialize)]
struct Document<'a, T: Serialize> {
    schema: &'a str,
    generated_at: Timestamp,
    #[serde(flatten)]
    body: T,
}

pub(crate) fn json<T: Serialize>(schema: &str, now_ms: i64, body: T) -> String {
    let doc = Document {
        schema,
        generated_at: Timestamp(now_ms),
        body,
    };
    // Serialising plain data structures cannot fail; keep a valid document if it ever does.
    let mut text = serde_json::to_string_pretty(&doc)
        .unwrap_or_else(|e| format!("{{\"schema\": \"{schema}\", \"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

pub(crate) fn footer(table: &Table, noun: &str) -> String {
    let n = table.len();
    let plural = if n == 1 { "" } else { "s" };
    format!("{}{n} {noun}{plural}\n", table.render())
}

/// The `assets` listing.
pub fn assets(rows: &[AssetRow], format: Format, now_ms: i64) -> String {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Body<'a> {
            assets: &'a [AssetRow],
        }
        return json(SCHEMA_ASSETS, now_ms, Body { assets: rows });
    }
    let mut t = Table::new(&[
        "NAME",
        "ZONE",
        "ENDPOINT",
        "UNIT",
        "STATUS",
        "VENDOR",
        "PRODUCT",
        "REVISION",
        "BLOCKS",
        "LAST SEEN",
        "PROBLEM",
    ]);
    for a in rows {
        t.row(vec![
            a.name.clone(),
            a.zone.clone(),
            a.endpoint.clone(),
            a.unit_id.to_string(),
            match &a.stale_gap {
                Some(gap) => format!("{} (stale: seq {gap} lost)", a.status),
                None => a.status.clone(),
            },
            opt(a.vendor_name.as_deref()),
            opt(a.product_code.as_deref().or(a.product_name.as_deref())),
            opt(a.revision.as_deref()),
            a.blocks.len().to_string(),
            opt(a.last_seen),
            opt(a.last_problem.as_deref()),
        ]);
    }
    footer(&t, "asset")
}

/// The `agents` listing.
pub fn agents(rows: &[AgentRow], format: Format, now_ms: i64) -> String {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Body<'a> {
            agents: &'a [AgentRow],
        }
        return json(SCHEMA_AGENTS, now_ms, Body { agents: rows });
    }
    let mut t = Table::new(&[
        "AGENT",
        "ZONES",
        "KEYS",
        "LAST SEQ",
        "LAST SEEN",
        "PEER",
        "ENVELOPES",
        "ASSETS",
        "HOST",
    ]);
    for a in rows {
        let mut zones: Vec<&str> = a
            .keys
            .iter()
            .flat_map(|k| k.zones.iter().map(String::as_str))
            .collect();
        zones.sort_unstable();
        zones.dedup();
        let keys: Vec<String> = a
            .keys
            .iter()
            .map(|k| format!("{}({})", k.key_id.get(..8).unwrap_or(&k.key_id), k.status))
            .collect();
        let host = a
            .gateway
            .as_ref()
            .map(|g| g.hostname.clone().unwrap_or_else(|| g.ci_key.clone()));
        t.row(vec![
            a.agent_id.clone(),
            zones.join(","),
            keys.join(","),
            opt(a.last_seq),
            opt(a.last_seen),
            opt(a.last_peer.as_deref()),
            a.envelopes_accepted.to_string(),
            a.assets.to_string(),
            opt(host),
        ]);
    }
    footer(&t, "agent")
}

/// The `events` listing.
pub fn events(rows: &[EventRow], format: Format, now_ms: i64) -> String {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Body<'a> {
            events: &'a [EventRow],
        }
        return json(SCHEMA_EVENTS, now_ms, Body { events: rows });
    }
    let mut t = Table::new(&["ID", "TIME", "KIND", "AGENT", "ASSET", "DETAIL"]);
    for e in rows {
        t.row(vec![
            e.event_id.to_string(),
            e.time.to_string(),
            e.kind.clone(),
            opt(e.agent_id.as_deref()),
            opt(e.asset.as_deref()),
            e.detail.to_string(),
        ]);
    }
    footer(&t, "event")
}

/// The `history` listing.
pub fn history(rows: &[HistoryRow], format: Format, now_ms: i64) -> String {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Body<'a> {
            history: &'a [HistoryRow],
        }
        return json(SCHEMA_HISTORY, now_ms, Body { history: rows });
    }
    let mut t = Table::new(&["TIME", "ASSET", "ATTRIBUTE", "OLD", "NEW", "AGENT", "SEQ"]);
    for h in rows {
        t.row(vec![
            h.observed_at.to_string(),
            h.asset.clone(),
            h.attribute.clone(),
            opt(h.old_value.as_deref()),
            opt(h.new_value.as_deref()),
            h.agent_id.clone(),
            h.envelope_seq.to_string(),
        ]);
    }
    footer(&t, "change")
}

/// The `quarantine` listing.
pub fn quarantine(rows: &[QuarantineRow], format: Format, now_ms: i64) -> String {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Body<'a> {
            quarantine: &'a [QuarantineRow],
        }
        return json(SCHEMA_QUARANTINE, now_ms, Body { quarantine: rows });
    }
    let mut t = Table::new(&[
        "ID", "TIME", "PEER", "STAGE", "REASON", "AGENT", "KEY", "BYTES", "DETAIL",
    ]);
    for q in rows {
        t.row(vec![
            q.quarantine_id.to_string(),
            q.received_at.to_string(),
            q.peer.clone(),
            q.stage.clone(),
            q.reason.clone(),
            opt(q.agent_claimed.as_deref()),
            opt(q.key_claimed.as_deref().map(|k| k.get(..8).unwrap_or(k))),
            q.raw_len.to_string(),
            q.detail.clone(),
        ]);
    }
    footer(&t, "quarantined item")
}

/// The `stats` report.
pub fn stats(stats: &Stats, format: Format, now_ms: i64) -> String {
    if format == Format::Json {
        return json(SCHEMA_STATS, now_ms, stats);
    }
    let totals = serde_json::to_value(&stats.totals).unwrap_or_default();
    let mut t = Table::new(&["TOTAL", "VALUE"]);
    if let Some(map) = totals.as_object() {
        for (name, value) in map {
            t.row(vec![name.clone(), value.to_string()]);
        }
    }
    let mut c = Table::new(&["COUNTER", "VALUE"]);
    for (name, value) in &stats.counters {
        c.row(vec![name.clone(), value.to_string()]);
    }
    format!(
        "schema version {}\n\n{}\n{}",
        stats.schema_version,
        t.render(),
        if c.is_empty() {
            "no counters yet\n".to_owned()
        } else {
            c.render()
        }
    )
}

/// A versioned JSON document for other modules' outputs (same shape as every listing).
pub fn json_document<T: Serialize>(schema: &str, now_ms: i64, body: T) -> String {
    json(schema, now_ms, body)
}
