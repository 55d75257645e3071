//! Approved baselines: what an operator said a CI should look like, and how far the observed
//! state is from it (drift).
//!
//! The first observation of a device is only its *observed* state. `baseline approve` copies
//! the judged attributes of one asset, a zone or everything into `baseline_attributes`,
//! recording who, when and why; a zone's approval also marks the zone baselined, so a device
//! appearing there later is a new device. Drift = a baselined attribute whose current value
//! differs. Judged attributes are identity and register blocks ([`super::attributes::is_drift`])
//! except blocks the agent marked volatile.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};

use super::record::{self, EventScope};
use super::{Cmdb, CmdbError, attributes};
use crate::time::{Timestamp, sql_int};

/// Event kind of an approval.
pub const BASELINE_APPROVED: &str = "baseline_approved";

/// Most register differences listed per block in an alert or drift row.
pub const MAX_REGISTER_DIFFS: usize = 32;

/// What to approve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One asset: its CI key or its (unique) name.
    Asset(String),
    /// Every asset of a zone, and the zone itself (new devices there are alerts).
    Zone(String),
    /// Every asset and zone.
    All,
}

/// What an approval did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approved {
    pub assets: usize,
    pub gateways: usize,
    pub zones: Vec<String>,
}

/// Why an operator command on baselines or change records was refused.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error(transparent)]
    Cmdb(#[from] CmdbError),
    #[error(
        "no asset {0:?} in the CMDB; pass a CI key or a name as shown by `outpost-collector assets --json`"
    )]
    UnknownAsset(String),
    #[error("{name:?} names {count} assets; pass the CI key instead (one of: {keys})")]
    AmbiguousAsset {
        name: String,
        count: usize,
        keys: String,
    },
    #[error(
        "no zone {0:?} with assets in the CMDB; check the name with `outpost-collector assets`"
    )]
    UnknownZone(String),
    #[error("nothing to approve: the CMDB has no assets yet; wait for the first summary")]
    NothingToApprove,
    #[error("{0}")]
    Invalid(String),
}

/// Whether an attribute is judged: identity and non-volatile blocks.
pub fn is_judged(attribute: &str, value: Option<&str>) -> bool {
    attributes::is_drift(attribute) && !is_volatile(attribute, value)
}

/// A block attribute whose value says `"volatile":true`.
pub fn is_volatile(attribute: &str, value: Option<&str>) -> bool {
    attribute.starts_with("block.") && value.is_some_and(|v| v.contains("\"volatile\":true"))
}

/// Whether a change of this attribute is an identity/firmware change (above configuration).
pub fn is_identity(attribute: &str) -> bool {
    !attribute.starts_with("block.")
}

/// Before/after of one attribute as shown in alerts and reports: identity values as text;
/// blocks by hash plus the registers that differ (at most [`MAX_REGISTER_DIFFS`]).
pub fn describe_change(attribute: &str, before: Option<&str>, after: Option<&str>) -> Value {
    if !attribute.starts_with("block.") {
        return json!({ "attribute": attribute, "before": before, "after": after });
    }
    let parse = |v: Option<&str>| v.and_then(|v| serde_json::from_str::<Value>(v).ok());
    let (b, a) = (parse(before), parse(after));
    let words = |v: &Option<Value>| -> (Option<u64>, Vec<u64>) {
        let start = v.as_ref().and_then(|v| v["start"].as_u64());
        let values = v
            .as_ref()
            .and_then(|v| v["values"].as_array())
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        (start, values)
    };
    let (bs, bv) = words(&b);
    let (as_, av) = words(&a);
    let mut registers = Vec::new();
    let mut differing = 0usize;
    if bs == as_ {
        let start = as_.unwrap_or(0);
        for i in 0..bv.len().max(av.len()) {
            let (x, y) = (bv.get(i), av.get(i));
            if x != y {
                differing += 1;
                if registers.len() < MAX_REGISTER_DIFFS {
                    registers.push(json!({
                        "address": start + i as u64,
                        "before": x,
                        "after": y,
                    }));
                }
            }
        }
    }
    let hash = |v: &Option<Value>| v.as_ref().map(|v| v["hash"].clone());
    json!({
        "attribute": attribute,
        "before": hash(&b),
        "after": hash(&a),
        "registers": registers,
        "registers_changed": differing,
    })
}

/// The judged attributes of an asset as stored now.
pub(crate) fn current_judged(
    conn: &Connection,
    asset_id: i64,
) -> rusqlite::Result<BTreeMap<String, Option<String>>> {
    let mut stmt =
        conn.prepare_cached("SELECT attribute, value FROM asset_attributes WHERE asset_id = ?1")?;
    let rows = stmt.query_map([asset_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (name, value) = row?;
        if is_judged(&name, value.as_deref()) {
            out.insert(name, value);
        }
    }
    Ok(out)
}

/// An asset's approved attributes, `None` when it has no baseline.
pub(crate) fn approved(
    conn: &Connection,
    asset_id: i64,
) -> rusqlite::Result<Option<BTreeMap<String, Option<String>>>> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM baselines WHERE asset_id = ?1")?
        .query_row([asset_id], |_| Ok(()))
        .optional()?;
    if exists.is_none() {
        return Ok(None);
    }
    let mut stmt = conn
        .prepare_cached("SELECT attribute, value FROM baseline_attributes WHERE asset_id = ?1")?;
    let rows = stmt.query_map([asset_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (name, value): (String, Option<String>) = row?;
        out.insert(name, value);
    }
    Ok(Some(out))
}

/// Baselined attributes whose current value differs, described for people and SIEMs.
pub(crate) fn differences(
    baseline: &BTreeMap<String, Option<String>>,
    current: &BTreeMap<String, Option<String>>,
) -> Vec<Value> {
    baseline
        .iter()
        .filter_map(|(name, approved)| {
            let now = current.get(name).cloned().flatten();
            (now != *approved).then(|| describe_change(name, approved.as_deref(), now.as_deref()))
        })
        .collect()
}

/// Replaces an asset's baseline with its current judged attributes.
pub(crate) fn write_baseline(
    conn: &Connection,
    asset_id: i64,
    now_ms: i64,
    by: &str,
    reason: &str,
    ticket: Option<&str>,
) -> rusqlite::Result<()> {
    let current = current_judged(conn, asset_id)?;
    conn.prepare_cached(
        "INSERT INTO baselines (asset_id, approved_at_ms, approved_by, reason, ticket)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (asset_id) DO UPDATE SET approved_at_ms = excluded.approved_at_ms,
             approved_by = excluded.approved_by, reason = excluded.reason,
             ticket = excluded.ticket",
    )?
    .execute(params![asset_id, now_ms, by, reason, ticket])?;
    conn.prepare_cached("DELETE FROM baseline_attributes WHERE asset_id = ?1")?
        .execute([asset_id])?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO baseline_attributes (asset_id, attribute, value) VALUES (?1, ?2, ?3)",
    )?;
    for (name, value) in &current {
        insert.execute(params![asset_id, name, value])?;
    }
    Ok(())
}

/// Which baselined attributes that differ now are fully explained by authorised, not yet
/// confirmed changes: following the evidence in order from the approved value, each step's
/// `before` is where the previous left off, and the last `after` is the current value. An
/// unauthorised change in between breaks the chain, so it is never explained away.
pub(crate) fn explained(
    conn: &Connection,
    asset: &str,
    baseline: &BTreeMap<String, Option<String>>,
    current: &BTreeMap<String, Option<String>>,
) -> rusqlite::Result<(Vec<String>, Vec<String>)> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.changes, r.ticket FROM detected_changes d
         JOIN change_records r ON r.record_id = d.record_id
         WHERE d.asset = ?1 AND d.verdict = 'authorised' AND r.state = 'implemented'
         ORDER BY d.change_id",
    )?;
    let rows = stmt
        .query_map([asset], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut reached: BTreeMap<&str, Value> = baseline
        .iter()
        .map(|(n, v)| (n.as_str(), attributes::event_value(n, v.as_deref())))
        .collect();
    let mut tickets = Vec::new();
    for (changes, ticket) in &rows {
        let Ok(Value::Array(changes)) = serde_json::from_str::<Value>(changes) else {
            continue;
        };
        for c in changes {
            let Some(name) = c["attribute"].as_str() else {
                continue;
            };
            if let Some(at) = reached.get_mut(name)
                && *at == c["before"]
            {
                *at = c["after"].clone();
                if !tickets.contains(ticket) {
                    tickets.push(ticket.clone());
                }
            }
        }
    }
    let mut out = Vec::new();
    for (name, approved) in baseline {
        let now = current.get(name).cloned().flatten();
        if now != *approved
            && reached.get(name.as_str()) == Some(&attributes::event_value(name, now.as_deref()))
        {
            out.push(name.clone());
        }
    }
    Ok((out, tickets))
}

/// Moves the baselined attributes that authorised changes explain ([`explained`]) to their
/// current values; returns (moved, still differing and unexplained).
pub(crate) fn advance(
    conn: &Connection,
    asset_id: i64,
    asset: &str,
    now_ms: i64,
    by: &str,
    reason: &str,
    ticket: &str,
) -> rusqlite::Result<(Vec<String>, Vec<String>)> {
    let Some(baseline) = approved(conn, asset_id)? else {
        return Ok((Vec::new(), Vec::new()));
    };
    let current = current_judged(conn, asset_id)?;
    let (moved, _) = explained(conn, asset, &baseline, &current)?;
    let mut update = conn.prepare_cached(
        "UPDATE baseline_attributes SET value = ?3 WHERE asset_id = ?1 AND attribute = ?2",
    )?;
    for name in &moved {
        update.execute(params![
            asset_id,
            name,
            current.get(name).cloned().flatten()
        ])?;
    }
    if !moved.is_empty() {
        conn.prepare_cached(
            "UPDATE baselines SET approved_at_ms = ?2, approved_by = ?3, reason = ?4,
                 ticket = ?5 WHERE asset_id = ?1",
        )?
        .execute(params![asset_id, now_ms, by, reason, ticket])?;
    }
    let unexplained = baseline
        .iter()
        .filter(|(n, v)| !moved.contains(n) && current.get(*n).cloned().flatten() != **v)
        .map(|(n, _)| n.clone())
        .collect();
    Ok((moved, unexplained))
}

/// Finds an asset by CI key, or by name when that is unique: (asset id, CI key).
pub(crate) fn resolve_asset(conn: &Connection, given: &str) -> Result<(i64, String), ResolveError> {
    let by_key: Option<i64> = conn
        .prepare_cached("SELECT asset_id FROM assets WHERE ci_key = ?1")?
        .query_row([given], |r| r.get(0))
        .optional()?;
    if let Some(id) = by_key {
        return Ok((id, given.to_owned()));
    }
    let mut stmt = conn.prepare_cached("SELECT asset_id, ci_key FROM assets WHERE name = ?1")?;
    let found = stmt
        .query_map([given], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    match found.as_slice() {
        [] => Err(ResolveError::Unknown),
        [one] => Ok(one.clone()),
        many => Err(ResolveError::Ambiguous(
            many.iter().map(|(_, k)| k.clone()).collect(),
        )),
    }
}

/// Why [`resolve_asset`] found no single asset.
#[derive(Debug)]
pub(crate) enum ResolveError {
    Sqlite(rusqlite::Error),
    Unknown,
    Ambiguous(Vec<String>),
}

impl From<rusqlite::Error> for ResolveError {
    fn from(e: rusqlite::Error) -> Self {
        ResolveError::Sqlite(e)
    }
}

impl Cmdb {
    pub(crate) fn resolve(&self, given: &str) -> Result<(i64, String), DriftError> {
        resolve_asset(self.connection(), given).map_err(|e| match e {
            ResolveError::Sqlite(e) => DriftError::Cmdb(self.err(e)),
            ResolveError::Unknown => DriftError::UnknownAsset(given.to_owned()),
            ResolveError::Ambiguous(keys) => DriftError::AmbiguousAsset {
                name: given.to_owned(),
                count: keys.len(),
                keys: keys.join(", "),
            },
        })
    }

    /// Approves the current observed state of `scope` as its baseline, in one transaction.
    pub fn approve_baseline(
        &mut self,
        scope: &Scope,
        by: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<Approved, DriftError> {
        if by.trim().is_empty() || reason.trim().is_empty() {
            return Err(DriftError::Invalid(
                "an approval records who and why: pass --by NAME and --reason TEXT (e.g. a \
                 ticket number)"
                    .into(),
            ));
        }
        let gateway_err = |e| DriftError::Cmdb(self.err(e));
        let gateways: Vec<String> = match scope {
            Scope::Asset(given) if super::gateway_baseline::is_gateway_key(given) => {
                if !super::gateway_baseline::exists(self.connection(), given)
                    .map_err(gateway_err)?
                {
                    return Err(DriftError::UnknownAsset(given.clone()));
                }
                vec![given.clone()]
            }
            Scope::Asset(_) => vec![],
            Scope::Zone(zone) => {
                super::gateway_baseline::keys(self.connection(), Some(zone)).map_err(gateway_err)?
            }
            Scope::All => {
                super::gateway_baseline::keys(self.connection(), None).map_err(gateway_err)?
            }
        };
        let (assets, zones): (Vec<(i64, String, String)>, Vec<String>) = match scope {
            Scope::Asset(given) if super::gateway_baseline::is_gateway_key(given) => {
                (vec![], vec![])
            }
            Scope::Asset(given) => {
                let (id, key) = self.resolve(given)?;
                let zone: String = self
                    .connection()
                    .query_row("SELECT zone FROM assets WHERE asset_id = ?1", [id], |r| {
                        r.get(0)
                    })
                    .map_err(|e| self.err(e))?;
                (vec![(id, key, zone)], vec![])
            }
            Scope::Zone(zone) => {
                let assets = self.assets_where("WHERE zone = ?1", Some(zone))?;
                if assets.is_empty() && gateways.is_empty() {
                    return Err(DriftError::UnknownZone(zone.clone()));
                }
                (assets, vec![zone.clone()])
            }
            Scope::All => {
                let assets = self.assets_where("", None)?;
                if assets.is_empty() && gateways.is_empty() {
                    return Err(DriftError::NothingToApprove);
                }
                let mut zones: Vec<String> = assets.iter().map(|a| a.2.clone()).collect();
                zones.sort();
                zones.dedup();
                (assets, zones)
            }
        };
        let now = sql_int(now_ms);
        let done = self.in_transaction(|db| -> rusqlite::Result<()> {
            let conn = db.connection();
            for (id, key, zone) in &assets {
                write_baseline(conn, *id, now, by, reason, None)?;
                let scope = EventScope {
                    zone: Some(zone),
                    asset: Some(key),
                    agent: None,
                };
                let detail = json!({ "by": by, "reason": reason });
                record::event(conn, now_ms, BASELINE_APPROVED, scope, &detail)?;
            }
            for key in &gateways {
                if let Some(facts) = super::gateway_baseline::stored(conn, key)? {
                    super::gateway_baseline::write(conn, key, &facts, now, by, reason, None)?;
                    let scope = EventScope {
                        asset: Some(key),
                        ..EventScope::default()
                    };
                    let detail = json!({ "by": by, "reason": reason });
                    record::event(conn, now_ms, BASELINE_APPROVED, scope, &detail)?;
                }
            }
            for zone in &zones {
                conn.prepare_cached(
                    "INSERT INTO baseline_zones (zone, approved_at_ms, approved_by, reason)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (zone) DO UPDATE SET approved_at_ms = excluded.approved_at_ms,
                         approved_by = excluded.approved_by, reason = excluded.reason",
                )?
                .execute(params![zone, now, by, reason])?;
            }
            record::bump(conn, "baseline_approvals", 1, now_ms)?;
            Ok(())
        })?;
        done.map_err(|e| self.err(e))?;
        Ok(Approved {
            assets: assets.len(),
            gateways: gateways.len(),
            zones,
        })
    }

    fn assets_where(
        &self,
        filter: &str,
        arg: Option<&str>,
    ) -> Result<Vec<(i64, String, String)>, CmdbError> {
        let sql = format!("SELECT asset_id, ci_key, zone FROM assets {filter} ORDER BY ci_key");
        let run = || -> rusqlite::Result<Vec<(i64, String, String)>> {
            let mut stmt = self.connection().prepare(&sql)?;
            let map = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?));
            match arg {
                Some(a) => stmt.query_map([a], map)?.collect(),
                None => stmt.query_map([], map)?.collect(),
            }
        };
        run().map_err(|e| self.err(e))
    }

    /// Current drift of every asset (see [`DriftRow`]).
    pub fn drift(&self) -> Result<Vec<DriftRow>, CmdbError> {
        query_drift(self.connection()).map_err(|e| self.err(e))
    }
}

/// One asset's standing against its baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftRow {
    pub ci_key: String,
    pub name: String,
    pub zone: String,
    pub agent_id: String,
    /// `no_baseline`, `in_baseline`, `drift` (a difference no authorised change explains) or
    /// `authorised` (every difference comes from implemented change records awaiting
    /// `change confirm`).
    pub state: String,
    pub approved_at: Option<Timestamp>,
    pub approved_by: Option<String>,
    pub reason: Option<String>,
    /// The change record whose confirmation last moved the baseline.
    pub baseline_ticket: Option<String>,
    /// The implemented, unconfirmed change record explaining (part of) the differences.
    pub pending_ticket: Option<String>,
    /// Each with `authorised`: whether an implemented change record explains it.
    pub differences: Vec<Value>,
}

fn query_drift(conn: &Connection) -> rusqlite::Result<Vec<DriftRow>> {
    let mut stmt = conn.prepare(
        "SELECT a.asset_id, a.ci_key, a.name, a.zone, a.agent_id, b.approved_at_ms,
                b.approved_by, b.reason, b.ticket
         FROM assets a LEFT JOIN baselines b ON b.asset_id = a.asset_id
         ORDER BY a.zone, a.name, a.ci_key",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                DriftRow {
                    ci_key: r.get(1)?,
                    name: r.get(2)?,
                    zone: r.get(3)?,
                    agent_id: r.get(4)?,
                    state: String::new(),
                    approved_at: r.get(5)?,
                    approved_by: r.get(6)?,
                    reason: r.get(7)?,
                    baseline_ticket: r.get(8)?,
                    pending_ticket: None,
                    differences: Vec::new(),
                },
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, mut row) in rows {
        match approved(conn, id)? {
            None => row.state = "no_baseline".into(),
            Some(baseline) => {
                let current = current_judged(conn, id)?;
                fill_drift(conn, &mut row, &baseline, &current)?;
            }
        }
        out.push(row);
    }
    out.extend(super::gateway_baseline::drift_rows(conn)?);
    Ok(out)
}

/// Fills a row's differences (each marked `authorised` or not), pending ticket and state.
pub(crate) fn fill_drift(
    conn: &Connection,
    row: &mut DriftRow,
    baseline: &BTreeMap<String, Option<String>>,
    current: &BTreeMap<String, Option<String>>,
) -> rusqlite::Result<()> {
    row.differences = differences(baseline, current);
    let (ok, tickets) = explained(conn, &row.ci_key, baseline, current)?;
    row.pending_ticket = tickets.last().cloned();
    for d in &mut row.differences {
        let authorised = d["attribute"]
            .as_str()
            .is_some_and(|a| ok.iter().any(|o| o == a));
        d["authorised"] = Value::Bool(authorised);
    }
    row.state = if row.differences.is_empty() {
        "in_baseline"
    } else if row.differences.len() == ok.len() {
        "authorised"
    } else {
        "drift"
    }
    .into();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_changes_name_the_registers() {
        let before = r#"{"hash":"aa","kind":"holding","start":100,"values":[1,2,3]}"#;
        let after = r#"{"hash":"bb","kind":"holding","start":100,"values":[1,9,3]}"#;
        let d = describe_change("block.sp", Some(before), Some(after));
        assert_eq!(d["before"], "aa");
        assert_eq!(d["after"], "bb");
        assert_eq!(d["registers_changed"], 1);
        assert_eq!(
            d["registers"],
            json!([{"address": 101, "before": 2, "after": 9}])
        );
        let id = describe_change("revision", Some("1.0"), Some("1.1"));
        assert_eq!(
            id,
            json!({"attribute": "revision", "before": "1.0", "after": "1.1"})
        );
    }

    #[test]
    fn register_lists_are_bounded() {
        let values = |v: u64| {
            let list: Vec<String> = (0..100).map(|_| v.to_string()).collect();
            format!(
                r#"{{"hash":"h","kind":"holding","start":0,"values":[{}]}}"#,
                list.join(",")
            )
        };
        let d = describe_change("block.b", Some(&values(1)), Some(&values(2)));
        assert_eq!(d["registers_changed"], 100);
        assert_eq!(
            d["registers"].as_array().map(Vec::len),
            Some(MAX_REGISTER_DIFFS)
        );
    }

    #[test]
    fn volatile_blocks_and_bookkeeping_are_not_judged() {
        assert!(is_judged("revision", Some("1")));
        assert!(is_judged("block.sp", Some(r#"{"hash":"h","values":[]}"#)));
        assert!(!is_judged(
            "block.pv",
            Some(r#"{"hash":"h","values":[],"volatile":true}"#)
        ));
        assert!(!is_judged("status", Some("ok")));
        assert!(!is_judged("name", Some("plc")));
    }
}
