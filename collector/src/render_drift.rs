//! `drift`, `changes` and `alerts` as text tables or versioned JSON documents (`docs/json.md`).

use serde::Serialize;
use serde_json::Value;

use crate::cmdb::alerts::{AlertRow, SinkRow};
use crate::cmdb::baseline::DriftRow;
use crate::cmdb::change_record::{ChangeRow, ChangeTotals};
use crate::cmdb::observed_changes::ObservedChangeRow;
use crate::render::{Format, footer, json};
use crate::table::{Table, opt};

pub const SCHEMA_DRIFT: &str = "outpost.drift.v1";
pub const SCHEMA_CHANGES: &str = "outpost.changes.v1";
pub const SCHEMA_ALERTS: &str = "outpost.alerts.v1";
pub const SCHEMA_CHANGES_OBSERVED: &str = "outpost.changes_observed.v1";

/// One difference in a few words: `revision 1.0 → 1.1`, `block.sp: 101: 2 → 9`.
pub fn describe(diff: &Value) -> String {
    let attribute = diff["attribute"].as_str().unwrap_or("?");
    let text = |v: &Value| match v {
        Value::Null => "(none)".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match diff["registers"].as_array() {
        Some(regs) if !regs.is_empty() => {
            let mut parts: Vec<String> = regs
                .iter()
                .map(|r| {
                    format!(
                        "{}: {} → {}",
                        text(&r["address"]),
                        text(&r["before"]),
                        text(&r["after"])
                    )
                })
                .collect();
            let total = diff["registers_changed"].as_u64().unwrap_or(0) as usize;
            if total > parts.len() {
                parts.push(format!("… {} more", total - parts.len()));
            }
            format!("{attribute} [{}]", parts.join(", "))
        }
        _ => format!(
            "{attribute} {} → {}",
            text(&diff["before"]),
            text(&diff["after"])
        ),
    }
}

fn describe_all(diffs: &[Value]) -> String {
    diffs.iter().map(describe).collect::<Vec<_>>().join("; ")
}

/// The `drift` listing.
pub fn drift(rows: &[DriftRow], format: Format, now_ms: i64) -> String {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Body<'a> {
            drift: &'a [DriftRow],
        }
        return json(SCHEMA_DRIFT, now_ms, Body { drift: rows });
    }
    let mut t = Table::new(&["NAME", "ZONE", "STATE", "APPROVED", "BY", "DIFFERENCES"]);
    for r in rows {
        let state = match &r.pending_ticket {
            Some(ticket) if r.state == "authorised" => format!("authorised ({ticket}, confirm)"),
            _ => r.state.clone(),
        };
        t.row(vec![
            r.name.clone(),
            r.zone.clone(),
            state,
            opt(r.approved_at),
            opt(r.approved_by.as_deref()),
            describe_all(&r.differences),
        ]);
    }
    let drifting = rows.iter().filter(|r| r.state == "drift").count();
    format!(
        "{}{drifting} with unauthorised drift\n",
        footer(&t, "asset")
    )
}

/// The `changes` listing: change records, their evidence, and the totals.
pub fn changes(rows: &[ChangeRow], totals: &ChangeTotals, format: Format, now_ms: i64) -> String {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Body<'a> {
            changes: &'a [ChangeRow],
            totals: &'a ChangeTotals,
        }
        return json(
            SCHEMA_CHANGES,
            now_ms,
            Body {
                changes: rows,
                totals,
            },
        );
    }
    let mut t = Table::new(&[
        "TICKET", "ASSET", "WINDOW", "STATE", "EXPECT", "OBSERVED", "EVIDENCE",
    ]);
    for r in rows {
        let expect: Vec<String> = r.expect.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let evidence = r.evidence.last().map(|e| {
            let hash = e["envelope_hash"].as_str().unwrap_or("");
            let changes: Vec<Value> = e["changes"].as_array().cloned().unwrap_or_default();
            format!(
                "seq {} {}… {}",
                e["envelope_seq"],
                hash.get(..12).unwrap_or(hash),
                describe_all(&changes)
            )
        });
        t.row(vec![
            r.ticket.clone(),
            r.asset_name.clone().unwrap_or_else(|| r.asset.clone()),
            format!("{} … {}", r.window_from, r.window_to),
            r.state.clone(),
            expect.join(" "),
            opt(r.implemented_at),
            opt(evidence.as_deref()),
        ]);
    }
    let pct = totals
        .verified_percent
        .map_or_else(|| "-".to_owned(), |p| format!("{p:.0}%"));
    let ms = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v} ms"));
    format!(
        "{}changes observed: {} authorised, {} unauthorised, {} back to baseline; verified \
         against a change record: {pct}\nalerts: {} raised, {} delivered; detection \
         (agent observation → alert delivered): median {}, max {}\n",
        footer(&t, "change record"),
        totals.authorised,
        totals.unauthorised,
        totals.back_to_baseline,
        totals.alerts,
        totals.alerts_delivered,
        ms(totals.mttd_median_ms),
        ms(totals.mttd_max_ms),
    )
}

/// The `changes-observed` listing: agents' change events and what became of each.
pub fn observed_changes(rows: &[ObservedChangeRow], format: Format, now_ms: i64) -> String {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Body<'a> {
            changes: &'a [ObservedChangeRow],
        }
        return json(SCHEMA_CHANGES_OBSERVED, now_ms, Body { changes: rows });
    }
    let mut t = Table::new(&[
        "ID",
        "RECEIVED",
        "AGENT",
        "SEQ",
        "ASSET",
        "CATEGORY",
        "ATTRIBUTE",
        "CHANGE",
        "OUTCOME",
    ]);
    for r in rows {
        let change = match (&r.before, &r.after) {
            (_, Value::Object(a)) if a.contains_key("ranges") => {
                let ranges = a["ranges"].as_array().cloned().unwrap_or_default();
                let parts: Vec<String> = ranges
                    .iter()
                    .map(|x| format!("{}: {} → {}", x["address"], x["before"], x["after"]))
                    .collect();
                let more = if r.truncated { ", … (truncated)" } else { "" };
                format!("[{}{more}]", parts.join(", "))
            }
            (Value::Null, Value::Null) => String::new(),
            (b, a) => format!("{b} → {a}"),
        };
        t.row(vec![
            r.change_id.to_string(),
            r.received_at.to_string(),
            r.agent_id.clone(),
            r.envelope_seq.to_string(),
            r.asset_name
                .clone()
                .or_else(|| r.asset.clone())
                .unwrap_or_default(),
            r.category.clone(),
            opt(r.attribute.as_deref()),
            change,
            r.outcome.clone(),
        ]);
    }
    footer(&t, "change event")
}

/// The `alerts` listing with each sink's delivery state.
pub fn alerts(rows: &[AlertRow], sinks: &[SinkRow], format: Format, now_ms: i64) -> String {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Body<'a> {
            alerts: &'a [AlertRow],
            sinks: &'a [SinkRow],
        }
        return json(
            SCHEMA_ALERTS,
            now_ms,
            Body {
                alerts: rows,
                sinks,
            },
        );
    }
    let mut t = Table::new(&[
        "ID",
        "RAISED",
        "SEVERITY",
        "KIND",
        "ASSET",
        "ZONE",
        "AGENT",
        "SEQ",
        "WHAT",
        "DELIVERED",
    ]);
    for a in rows {
        let what = match a.detail["changes"].as_array() {
            Some(c) => describe_all(c),
            None => a.detail["reason"]
                .as_str()
                .or(a.detail["endpoint"].as_str())
                .unwrap_or("")
                .to_owned(),
        };
        t.row(vec![
            a.alert_id.to_string(),
            a.raised_at.to_string(),
            format!("{} ({})", a.severity_id, a.category),
            a.kind.clone(),
            a.asset_name.clone(),
            a.zone.clone(),
            a.agent_id.clone(),
            a.envelope_seq.to_string(),
            what,
            a.delivered_to.join(" "),
        ]);
    }
    let mut out = footer(&t, "alert");
    for s in sinks {
        out.push_str(&format!(
            "sink {}: {} delivered (through alert {}), {} failed attempts{}\n",
            s.sink,
            s.delivered,
            s.delivered_through,
            s.failures,
            s.last_error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        ));
    }
    out
}
