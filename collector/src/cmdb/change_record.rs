//! Change records (RFCs): which CI may change, in which window, to which values.
//!
//! Records come from `change add` or from a JSON or CSV file exported from an ITSM tool
//! (`change import`). Every record is checked before any is stored (the ticket, a known asset,
//! a window that ends after it starts, well-formed expectations) and an import is one
//! transaction: all records or none, with every problem named by line.
//!
//! Expectations (`--expect field=value`): `field` is an identity attribute (`revision`,
//! `vendor_name`, …) compared as text, or one register `block.<name>[<address>]` compared as a
//! number. The judge (`judge.rs`) uses [`covering`] and [`mismatches`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::baseline::{self, DriftError};
use super::{Cmdb, record};
use crate::time::{Timestamp, rfc3339, sql_int};

/// Longest ticket id accepted.
pub const MAX_TICKET_LEN: usize = 64;

/// A change record as given by an operator or a file, before checking.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeInput {
    pub ticket: String,
    /// CI key or unique asset name.
    pub asset: String,
    /// Window start, RFC 3339.
    pub from: String,
    /// Window end, RFC 3339.
    pub to: String,
    /// `field=value` pairs (in CSV: separated by `;`).
    #[serde(default, deserialize_with = "expect_list")]
    pub expect: Vec<String>,
    #[serde(default)]
    pub auto_confirm: bool,
    #[serde(default)]
    pub description: Option<String>,
}

/// `expect` as a JSON array or object, or a `;`-separated string (CSV).
fn expect_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<String>),
        Map(BTreeMap<String, String>),
        Text(String),
    }
    Ok(match Form::deserialize(d)? {
        Form::List(l) => l,
        Form::Map(m) => m.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        Form::Text(t) => t
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// A checked record, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Checked {
    ticket: String,
    asset: String,
    from_ms: i64,
    to_ms: i64,
    expect: BTreeMap<String, String>,
    auto_confirm: bool,
    description: Option<String>,
}

/// A record that covers a change being judged.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub record_id: i64,
    pub ticket: String,
    pub expect: BTreeMap<String, String>,
    pub auto_confirm: bool,
}

/// Records for CI `asset` whose window contains `now_ms`, earliest window first.
pub(crate) fn covering(
    conn: &Connection,
    asset: &str,
    now_ms: i64,
) -> rusqlite::Result<Vec<Candidate>> {
    let mut stmt = conn.prepare_cached(
        "SELECT record_id, ticket, expect, auto_confirm FROM change_records
         WHERE asset = ?1 AND window_from_ms <= ?2 AND ?2 <= window_to_ms
         ORDER BY window_from_ms, record_id",
    )?;
    stmt.query_map(params![asset, now_ms], |r| {
        let expect: String = r.get(2)?;
        Ok(Candidate {
            record_id: r.get(0)?,
            ticket: r.get(1)?,
            // Written by this module from a checked map; unreadable JSON expects nothing
            // it could match, so it is kept as an impossible expectation.
            expect: serde_json::from_str(&expect)
                .unwrap_or_else(|_| BTreeMap::from([("<corrupt>".into(), expect)])),
            auto_confirm: r.get(3)?,
        })
    })?
    .collect()
}

/// Expectations the current attributes do not meet, described.
pub(crate) fn mismatches(
    expect: &BTreeMap<String, String>,
    current: &HashMap<String, Option<String>>,
) -> Vec<Value> {
    expect
        .iter()
        .filter_map(|(field, want)| {
            let got = observed_value(field, current);
            (got.as_deref() != Some(want.as_str()))
                .then(|| json!({ "field": field, "expected": want, "observed": got }))
        })
        .collect()
}

/// The current value an expectation field refers to.
fn observed_value(field: &str, current: &HashMap<String, Option<String>>) -> Option<String> {
    match parse_register_field(field) {
        Some((block, address)) => {
            let value = current.get(&format!("block.{block}"))?.as_deref()?;
            let parsed: Value = serde_json::from_str(value).ok()?;
            let start = parsed["start"].as_u64()?;
            let offset = usize::try_from(u64::from(address).checked_sub(start)?).ok()?;
            parsed["values"]
                .get(offset)?
                .as_u64()
                .map(|v| v.to_string())
        }
        None => current.get(field).cloned().flatten(),
    }
}

/// `block.<name>[<address>]` → (name, address).
fn parse_register_field(field: &str) -> Option<(&str, u16)> {
    let rest = field.strip_prefix("block.")?;
    let (name, addr) = rest.strip_suffix(']')?.split_once('[')?;
    Some((name, addr.trim().parse().ok()?))
}

fn parse_time(what: &str, text: &str) -> Result<i64, String> {
    humantime::parse_rfc3339_weak(text.trim())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .ok_or_else(|| {
            format!("{what} {text:?} is not an RFC 3339 time (e.g. 2026-12-01T14:00:00Z)")
        })
}

fn check(conn: &Connection, input: &ChangeInput) -> Result<Checked, String> {
    let ticket = input.ticket.trim();
    if ticket.is_empty()
        || ticket.len() > MAX_TICKET_LEN
        || ticket.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "ticket {ticket:?} must be 1..={MAX_TICKET_LEN} characters without spaces (e.g. CHG0031337)"
        ));
    }
    let from_ms = parse_time("from", &input.from)?;
    let to_ms = parse_time("to", &input.to)?;
    if to_ms <= from_ms {
        return Err(format!(
            "ticket {ticket}: the window ends ({}) before it starts ({}); swap from and to",
            input.to.trim(),
            input.from.trim()
        ));
    }
    let given = input.asset.trim();
    let gateway = super::gateway_baseline::is_gateway_key(given)
        && super::gateway_baseline::exists(conn, given).map_err(|e| format!("CMDB: {e}"))?;
    let resolved = if gateway {
        Ok((0, given.to_owned()))
    } else {
        baseline::resolve_asset(conn, given)
    };
    let (_, asset) = resolved.map_err(|e| match e {
        baseline::ResolveError::Sqlite(e) => format!("CMDB: {e}"),
        baseline::ResolveError::Unknown => format!(
            "ticket {ticket}: no asset {:?} in the CMDB; use a CI key or name from \
             `outpost-collector assets --json`",
            input.asset
        ),
        baseline::ResolveError::Ambiguous(keys) => format!(
            "ticket {ticket}: {:?} names {} assets; use the CI key ({})",
            input.asset,
            keys.len(),
            keys.join(", ")
        ),
    })?;
    let mut expect = BTreeMap::new();
    for e in &input.expect {
        let Some((field, value)) = e.split_once('=') else {
            return Err(format!(
                "ticket {ticket}: expectation {e:?} is not field=value (e.g. revision=2.1 or \
                 block.setpoints[100]=1500)"
            ));
        };
        let (field, value) = (field.trim(), value.trim());
        let ok_field = if field.starts_with("block.") {
            parse_register_field(field).is_some() && value.parse::<u16>().is_ok()
        } else {
            !field.is_empty() && super::attributes::is_drift(field)
        };
        if !ok_field {
            return Err(format!(
                "ticket {ticket}: expectation {e:?}: use an identity attribute (revision, \
                 vendor_name, product_code, …) or one register as block.<name>[<address>]=<0..65535>"
            ));
        }
        expect.insert(field.to_owned(), value.to_owned());
    }
    Ok(Checked {
        ticket: ticket.to_owned(),
        asset,
        from_ms,
        to_ms,
        expect,
        auto_confirm: input.auto_confirm,
        description: input.description.clone().filter(|d| !d.trim().is_empty()),
    })
}

/// Reads change records from a `.json` file (an array, or `{"changes": [...]}`) or a `.csv` file
/// with a header `ticket,asset,from,to[,expect][,auto_confirm][,description]`.
pub fn read_file(path: &Path) -> Result<Vec<(String, ChangeInput)>, DriftError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        DriftError::Invalid(format!(
            "cannot read change file {}: {e}; check the path",
            path.display()
        ))
    })?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        || text.trim_start().starts_with(['[', '{']);
    if is_json {
        parse_json(&text).map_err(|e| DriftError::Invalid(format!("{}: {e}", path.display())))
    } else {
        parse_csv(&text).map_err(|e| DriftError::Invalid(format!("{}: {e}", path.display())))
    }
}

/// Each record with where it came from (`record N` / `line N`).
pub fn parse_json(text: &str) -> Result<Vec<(String, ChangeInput)>, String> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Doc {
        List(Vec<Value>),
        Wrapped { changes: Vec<Value> },
    }
    let doc: Doc = serde_json::from_str(text).map_err(|e| {
        format!("not a JSON array of change records (or {{\"changes\": [...]}}): {e}")
    })?;
    let items = match doc {
        Doc::List(l) | Doc::Wrapped { changes: l } => l,
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let at = format!("record {}", i + 1);
            serde_json::from_value(v)
                .map(|c| (at.clone(), c))
                .map_err(|e| format!("{at}: {e}"))
        })
        .collect()
}

/// CSV with a header row; see [`read_file`].
pub fn parse_csv(text: &str) -> Result<Vec<(String, ChangeInput)>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| format!("unreadable CSV header: {e}"))?
        .clone();
    for need in ["ticket", "asset", "from", "to"] {
        if !headers.iter().any(|h| h == need) {
            return Err(format!(
                "CSV header {:?} lacks the column {need:?}; expected \
                 ticket,asset,from,to[,expect][,auto_confirm][,description]",
                headers.iter().collect::<Vec<_>>().join(",")
            ));
        }
    }
    let mut out = Vec::new();
    for row in reader.deserialize::<ChangeInput>() {
        let row = row.map_err(|e| {
            let line = e.position().map_or(0, csv::Position::line);
            format!("line {line}: {e}")
        })?;
        out.push((format!("line {}", out.len() + 2), row));
    }
    if out.is_empty() {
        return Err("no change records after the header".into());
    }
    Ok(out)
}

/// One stored change record with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeRow {
    pub ticket: String,
    pub asset: String,
    pub asset_name: Option<String>,
    pub window_from: Timestamp,
    pub window_to: Timestamp,
    pub expect: BTreeMap<String, String>,
    pub auto_confirm: bool,
    /// `open`, `implemented` (observed, awaiting confirm) or `confirmed` (baseline moved).
    pub state: String,
    pub description: Option<String>,
    pub source: String,
    pub created_at: Timestamp,
    pub implemented_at: Option<Timestamp>,
    pub confirmed_at: Option<Timestamp>,
    pub confirmed_by: Option<String>,
    /// The observed changes that implemented it.
    pub evidence: Vec<Value>,
}

/// What confirming did to one CI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Confirmed {
    pub asset: String,
    /// Attributes whose baseline moved to the observed value.
    pub moved: Vec<String>,
    /// Attributes that still differ from the baseline, not explained by authorised changes.
    pub unexplained: Vec<String>,
}

/// Figures over every judged change and alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeTotals {
    pub authorised: i64,
    pub unauthorised: i64,
    pub back_to_baseline: i64,
    /// authorised / (authorised + unauthorised), percent; `None` before the first.
    pub verified_percent: Option<f64>,
    pub alerts: i64,
    pub alerts_delivered: i64,
    /// Agent observation (envelope sealed) → first delivery of the alert, over delivered alerts.
    pub mttd_median_ms: Option<i64>,
    pub mttd_max_ms: Option<i64>,
}

impl Cmdb {
    /// Checks and stores change records in one transaction (all or none); returns how many.
    pub fn add_changes(
        &mut self,
        inputs: &[(String, ChangeInput)],
        source: &str,
        now_ms: u64,
    ) -> Result<usize, DriftError> {
        let mut checked = Vec::with_capacity(inputs.len());
        let mut problems = Vec::new();
        for (at, input) in inputs {
            match check(self.connection(), input) {
                Ok(c) => checked.push(c),
                Err(e) => problems.push(format!("{at}: {e}")),
            }
        }
        if !problems.is_empty() {
            return Err(DriftError::Invalid(format!(
                "no change records stored; fix these and try again:\n  {}",
                problems.join("\n  ")
            )));
        }
        let now = sql_int(now_ms);
        let done = self.in_transaction(|db| -> Result<(), String> {
            let c = db.connection();
            for r in &checked {
                let exists = c
                    .prepare_cached("SELECT 1 FROM change_records WHERE ticket = ?1 AND asset = ?2")
                    .and_then(|mut s| s.exists(params![r.ticket, r.asset]))
                    .map_err(|e| e.to_string())?;
                if exists {
                    return Err(format!(
                        "ticket {} for {} is already recorded; nothing stored",
                        r.ticket, r.asset
                    ));
                }
                c.prepare_cached(
                    "INSERT INTO change_records (ticket, asset, window_from_ms, window_to_ms,
                         expect, auto_confirm, state, description, source, created_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open', ?7, ?8, ?9)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        r.ticket,
                        r.asset,
                        r.from_ms,
                        r.to_ms,
                        serde_json::to_string(&r.expect).unwrap_or_else(|_| "{}".into()),
                        r.auto_confirm,
                        r.description,
                        source,
                        now,
                    ])
                })
                .map_err(|e| e.to_string())?;
            }
            record::bump(c, "change_records_added", checked.len() as i64, now_ms)
                .map_err(|e| e.to_string())
        })?;
        done.map_err(DriftError::Invalid)?;
        Ok(checked.len())
    }

    /// Marks the implemented record `ticket` confirmed and moves the baseline of its CIs where
    /// its authorised evidence explains the difference (see `baseline::advance`); a difference
    /// it does not explain (an unauthorised change) stays drift and is reported.
    pub fn confirm_change(
        &mut self,
        ticket: &str,
        by: &str,
        now_ms: u64,
    ) -> Result<Vec<Confirmed>, DriftError> {
        let rows: Vec<(i64, String, String)> = self
            .connection()
            .prepare("SELECT record_id, asset, state FROM change_records WHERE ticket = ?1")
            .and_then(|mut s| {
                s.query_map([ticket], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .map_err(|e| self.err(e))?;
        if rows.is_empty() {
            return Err(DriftError::Invalid(format!(
                "no change record {ticket:?}; list them with `outpost-collector changes`"
            )));
        }
        let implemented: Vec<&(i64, String, String)> =
            rows.iter().filter(|r| r.2 == "implemented").collect();
        if implemented.is_empty() {
            let states: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
            return Err(DriftError::Invalid(format!(
                "change record {ticket} is {}: only an implemented record (a change observed \
                 in its window) can be confirmed",
                states.join(", ")
            )));
        }
        let now = sql_int(now_ms);
        let mut outcome = Vec::new();
        let done = self.in_transaction(|db| -> rusqlite::Result<()> {
            let c = db.connection();
            for (id, asset, _) in &implemented {
                let asset_id: Option<i64> = c
                    .query_row(
                        "SELECT asset_id FROM assets WHERE ci_key = ?1",
                        [asset],
                        |r| r.get(0),
                    )
                    .optional()?;
                if super::gateway_baseline::is_gateway_key(asset) {
                    let reason = format!("change record {ticket} confirmed");
                    let (moved, unexplained) =
                        super::gateway_baseline::advance(c, asset, now, by, &reason, ticket)?;
                    outcome.push(Confirmed {
                        asset: asset.clone(),
                        moved,
                        unexplained,
                    });
                } else if let Some(asset_id) = asset_id {
                    let reason = format!("change record {ticket} confirmed");
                    let (moved, unexplained) =
                        baseline::advance(c, asset_id, asset, now, by, &reason, ticket)?;
                    outcome.push(Confirmed {
                        asset: asset.clone(),
                        moved,
                        unexplained,
                    });
                }
                c.execute(
                    "UPDATE change_records SET state = 'confirmed', confirmed_at_ms = ?2,
                         confirmed_by = ?3 WHERE record_id = ?1",
                    params![id, now, by],
                )?;
            }
            record::bump(c, "change_records_confirmed", 1, now_ms)
        })?;
        done.map_err(|e| self.err(e))?;
        Ok(outcome)
    }

    /// Every change record, oldest window first, with its evidence.
    pub fn changes(&self) -> Result<Vec<ChangeRow>, DriftError> {
        let run = || -> rusqlite::Result<Vec<ChangeRow>> {
            let c = self.connection();
            let mut stmt = c.prepare(
                "SELECT r.record_id, r.ticket, r.asset, a.name, r.window_from_ms, r.window_to_ms,
                     r.expect, r.auto_confirm, r.state, r.description, r.source,
                     r.created_at_ms, r.implemented_at_ms, r.confirmed_at_ms, r.confirmed_by
                 FROM change_records r LEFT JOIN assets a ON a.ci_key = r.asset
                 ORDER BY r.window_from_ms, r.record_id",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    let expect: String = r.get(6)?;
                    Ok((
                        r.get::<_, i64>(0)?,
                        ChangeRow {
                            ticket: r.get(1)?,
                            asset: r.get(2)?,
                            asset_name: r.get(3)?,
                            window_from: r.get(4)?,
                            window_to: r.get(5)?,
                            expect: serde_json::from_str(&expect).unwrap_or_default(),
                            auto_confirm: r.get(7)?,
                            state: r.get(8)?,
                            description: r.get(9)?,
                            source: r.get(10)?,
                            created_at: r.get(11)?,
                            implemented_at: r.get(12)?,
                            confirmed_at: r.get(13)?,
                            confirmed_by: r.get(14)?,
                            evidence: Vec::new(),
                        },
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut ev = c.prepare_cached(
                "SELECT observed_at_ms, agent_time_ms, agent_id, envelope_seq, envelope_hash,
                     changes FROM detected_changes WHERE record_id = ?1 ORDER BY change_id",
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for (id, mut row) in rows {
                row.evidence = ev
                    .query_map([id], |r| {
                        let changes: String = r.get(5)?;
                        Ok(json!({
                            "observed_at": rfc3339(r.get(0)?),
                            "agent_time": rfc3339(r.get(1)?),
                            "agent_id": r.get::<_, String>(2)?,
                            "envelope_seq": r.get::<_, i64>(3)?,
                            "envelope_hash": r.get::<_, String>(4)?,
                            "changes": serde_json::from_str::<Value>(&changes)
                                .unwrap_or(Value::String(changes)),
                        }))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                out.push(row);
            }
            Ok(out)
        };
        run().map_err(|e| DriftError::Cmdb(self.err(e)))
    }

    /// Totals over judged changes and alerts, with detection latency.
    pub fn change_totals(&self) -> Result<ChangeTotals, DriftError> {
        let run = || -> rusqlite::Result<ChangeTotals> {
            let c = self.connection();
            let count = |verdict: &str| -> rusqlite::Result<i64> {
                c.query_row(
                    "SELECT COUNT(*) FROM detected_changes WHERE verdict = ?1",
                    [verdict],
                    |r| r.get(0),
                )
            };
            let (authorised, unauthorised) = (count("authorised")?, count("unauthorised")?);
            let alerts: i64 = c.query_row("SELECT COUNT(*) FROM alerts", [], |r| r.get(0))?;
            let mut lat: Vec<i64> = c
                .prepare(
                    // Detection of observed changes only (not revoked keys, state loss or
                    // a device's return).
                    "SELECT MIN(d.delivered_at_ms) - a.agent_time_ms FROM alerts a
                     JOIN alert_deliveries d ON d.alert_id = a.alert_id
                     WHERE a.kind IN ('unauthorised_change', 'unstable_value', 'new_device',
                                      'device_unreachable', 'conflicting_observation')
                     GROUP BY a.alert_id",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            lat.sort_unstable();
            let judged = authorised + unauthorised;
            Ok(ChangeTotals {
                authorised,
                unauthorised,
                back_to_baseline: count("back_to_baseline")?,
                verified_percent: (judged > 0)
                    .then(|| (authorised as f64) * 100.0 / (judged as f64)),
                alerts,
                alerts_delivered: lat.len() as i64,
                mttd_median_ms: lat.get(lat.len() / 2).copied(),
                mttd_max_ms: lat.last().copied(),
            })
        };
        run().map_err(|e| DriftError::Cmdb(self.err(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_expectations_parses() {
        let text = "ticket,asset,from,to,expect,auto_confirm\n\
                    CHG1,mixer-plc,2026-12-01T10:00:00Z,2026-12-01T12:00:00Z,revision=2.1;block.sp[100]=5,true\n";
        let rows = parse_csv(text).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, "line 2");
        assert_eq!(rows[0].1.expect, ["revision=2.1", "block.sp[100]=5"]);
        assert!(rows[0].1.auto_confirm);
    }

    #[test]
    fn malformed_csv_is_refused_with_its_line() {
        let missing = parse_csv("ticket,asset,from\nCHG1,a,2026-12-01T10:00:00Z\n").unwrap_err();
        assert!(missing.contains("lacks the column \"to\""), "{missing}");
        let ragged = parse_csv(
            "ticket,asset,from,to\nCHG1,a,2026-12-01T10:00:00Z,2026-12-01T11:00:00Z\nCHG2,b\n",
        )
        .unwrap_err();
        assert!(ragged.starts_with("line 3"), "{ragged}");
        let bool_bad = parse_csv(
            "ticket,asset,from,to,auto_confirm\nCHG1,a,2026-12-01T10:00:00Z,2026-12-01T11:00:00Z,maybe\n",
        )
        .unwrap_err();
        assert!(bool_bad.contains("line 2"), "{bool_bad}");
        assert!(parse_csv("ticket,asset,from,to\n").is_err());
    }

    #[test]
    fn json_accepts_list_object_and_map_expectations() {
        let text = r#"{"changes":[{"ticket":"CHG2","asset":"a","from":"2026-12-01T10:00:00Z",
            "to":"2026-12-01T11:00:00Z","expect":{"revision":"2.1"}}]}"#;
        let rows = parse_json(text).unwrap();
        assert_eq!(rows[0].1.expect, ["revision=2.1"]);
        let err =
            parse_json(r#"[{"ticket":"C","asset":"a","from":"x","to":"y","oops":1}]"#).unwrap_err();
        assert!(err.starts_with("record 1"), "{err}");
    }

    #[test]
    fn register_expectations_read_the_right_word() {
        let current = HashMap::from([(
            "block.sp".to_owned(),
            Some(r#"{"hash":"h","kind":"holding","start":100,"values":[7,8]}"#.to_owned()),
        )]);
        let ok = BTreeMap::from([("block.sp[101]".to_owned(), "8".to_owned())]);
        assert!(mismatches(&ok, &current).is_empty());
        let bad = BTreeMap::from([("block.sp[100]".to_owned(), "8".to_owned())]);
        assert_eq!(mismatches(&bad, &current)[0]["observed"], "7");
        let outside = BTreeMap::from([("block.sp[99]".to_owned(), "7".to_owned())]);
        assert_eq!(mismatches(&outside, &current)[0]["observed"], Value::Null);
    }
}
