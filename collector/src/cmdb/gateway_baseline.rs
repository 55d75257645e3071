//! Drift of the gateway host an agent runs on: OS, kernel, hostname, CPU architecture and
//! network interfaces (names, MACs, addresses). Boot time, memory and CPU count are not judged
//! (reboots and hot-plug are not configuration changes).
//!
//! The gateway CI (`gateway/<agent>`) has one row in `gateways`, so its baseline is one JSON
//! object in `baseline_gateways`. `apply.rs` calls [`Writer::judge_gateway`] before it writes
//! changed facts; the judgement is the same as for field devices (`judge.rs`): a change record
//! for the gateway's CI key covering the time and expected values authorises it; otherwise an
//! `unauthorised_change` alert (identity for OS/kernel/hostname/architecture, config for
//! interfaces, `gateway` for the self-inventory: a listening socket opened, closed or re-owned,
//! a new program executable — see [`super::gateway_facts`] for what is and is not judged).

use std::collections::{BTreeMap, HashMap};

use outpost_proto::model::{HostFacts, HostList, NetInterface};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::alerts::Category;
use super::apply::Writer;
use super::baseline::{self, describe_change};
use super::gateway_facts;
use super::judge::Target;

/// The judged facts of a gateway.
pub(crate) type Facts = BTreeMap<String, Option<String>>;

fn interfaces_text(mut list: Vec<NetInterface>) -> String {
    for i in &mut list {
        i.addresses.sort();
    }
    list.sort();
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".into())
}

/// Judged facts from what an agent reported, over the self-inventory attributes stored so far
/// (`stored_attributes`: a list the agent switched off keeps its stored value).
pub(crate) fn facts(g: &HostFacts, stored_attributes: &BTreeMap<String, String>) -> Facts {
    let mut attributes = stored_attributes.clone();
    for (name, value) in gateway_facts::attributes(g, stored_attributes) {
        match value {
            Some(v) => attributes.insert(name.to_owned(), v),
            None => attributes.remove(name),
        };
    }
    let mut facts = BTreeMap::from([
        ("hostname".into(), g.hostname.clone()),
        ("os_name".into(), g.os_name.clone()),
        ("os_version".into(), g.os_version.clone()),
        ("kernel_version".into(), g.kernel_version.clone()),
        ("cpu_arch".into(), Some(g.cpu_arch.clone())),
        (
            "interfaces".into(),
            Some(interfaces_text(g.interfaces.clone())),
        ),
    ]);
    gateway_facts::add_stored_item_facts(&mut facts, &attributes);
    facts
}

/// Judged facts as stored in `gateways` (`None` if the gateway was never seen).
pub(crate) fn stored(conn: &Connection, ci_key: &str) -> rusqlite::Result<Option<Facts>> {
    let attributes = gateway_facts::stored(conn, ci_key)?;
    let columns = conn
        .prepare_cached(
            "SELECT hostname, os_name, os_version, kernel_version, cpu_arch, interfaces_json
         FROM gateways WHERE ci_key = ?1",
        )?
        .query_row([ci_key], |r| {
            let interfaces: String = r.get(5)?;
            let list: Vec<NetInterface> = serde_json::from_str(&interfaces).unwrap_or_default();
            Ok(BTreeMap::from([
                ("hostname".into(), r.get(0)?),
                ("os_name".into(), r.get(1)?),
                ("os_version".into(), r.get(2)?),
                ("kernel_version".into(), r.get(3)?),
                ("cpu_arch".into(), r.get(4)?),
                ("interfaces".into(), Some(interfaces_text(list))),
            ]))
        })
        .optional()?;
    Ok(columns.map(|mut facts| {
        gateway_facts::add_stored_item_facts(&mut facts, &attributes);
        facts
    }))
}

/// The approved facts of a gateway, if approved.
pub(crate) fn approved(conn: &Connection, ci_key: &str) -> rusqlite::Result<Option<Facts>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT facts FROM baseline_gateways WHERE ci_key = ?1")?
        .query_row([ci_key], |r| r.get(0))
        .optional()?;
    Ok(text.map(|t| serde_json::from_str(&t).unwrap_or_default()))
}

/// Approves a gateway's stored facts (or replaces the named ones with `facts`).
pub(crate) fn write(
    conn: &Connection,
    ci_key: &str,
    facts: &Facts,
    now_ms: i64,
    by: &str,
    reason: &str,
    ticket: Option<&str>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO baseline_gateways (ci_key, facts, approved_at_ms, approved_by, reason, ticket)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (ci_key) DO UPDATE SET facts = excluded.facts,
             approved_at_ms = excluded.approved_at_ms, approved_by = excluded.approved_by,
             reason = excluded.reason, ticket = excluded.ticket",
    )?
    .execute(params![
        ci_key,
        serde_json::to_string(facts).unwrap_or_else(|_| "{}".into()),
        now_ms,
        by,
        reason,
        ticket
    ])?;
    Ok(())
}

/// Moves the gateway's baseline where authorised evidence explains the difference.
pub(crate) fn advance(
    conn: &Connection,
    ci_key: &str,
    now_ms: i64,
    by: &str,
    reason: &str,
    ticket: &str,
) -> rusqlite::Result<(Vec<String>, Vec<String>)> {
    let (Some(mut base), Some(current)) = (approved(conn, ci_key)?, stored(conn, ci_key)?) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let (judged_base, current) = gateway_facts::comparable(&base, &current, &[]);
    let (moved, _) = baseline::explained(conn, ci_key, &judged_base, &current)?;
    for name in &moved {
        base.insert(name.clone(), current.get(name).cloned().flatten());
    }
    if !moved.is_empty() {
        write(conn, ci_key, &base, now_ms, by, reason, Some(ticket))?;
    }
    let unexplained = judged_base
        .iter()
        .filter(|(n, v)| !moved.contains(n) && current.get(*n).cloned().flatten() != **v)
        .map(|(n, _)| n.clone())
        .collect();
    Ok((moved, unexplained))
}

impl Writer<'_, '_> {
    /// Judges the gateway's new facts against what was stored (called before they are written).
    pub(super) fn judge_gateway(&mut self, ci_key: &str, g: &HostFacts) -> rusqlite::Result<()> {
        let Some(before) = stored(self.db, ci_key)? else {
            return Ok(());
        };
        let after = facts(g, &gateway_facts::stored(self.db, ci_key)?);
        let name = g
            .hostname
            .clone()
            .unwrap_or_else(|| format!("gateway of {}", self.meta.agent));
        self.judge_gateway_facts(ci_key, &name, &before, after, &g.truncated)
    }

    /// Judges a gateway's facts going from `before` to `after` (also used for a change event's
    /// single fact, see `observed_changes.rs`); `truncated` names the lists `after` holds only
    /// in part, so what is missing from them is not read as vanished.
    pub(super) fn judge_gateway_facts(
        &mut self,
        ci_key: &str,
        name: &str,
        before: &Facts,
        after: Facts,
        truncated: &[HostList],
    ) -> rusqlite::Result<()> {
        let (judged_before, judged_after) = gateway_facts::comparable(before, &after, truncated);
        let changed: Vec<(String, Option<String>, Option<String>)> = judged_after
            .iter()
            .filter(|(n, v)| judged_before.get(*n).cloned().flatten() != **v)
            .map(|(n, v)| {
                (
                    n.clone(),
                    judged_before.get(n).cloned().flatten(),
                    v.clone(),
                )
            })
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let Some(approved) = approved(self.db, ci_key)? else {
            self.count("changes_without_baseline", 1);
            return Ok(());
        };
        let described: Vec<Value> = changed
            .iter()
            .map(|(n, b, a)| describe_change(n, b.as_deref(), a.as_deref()))
            .collect();
        let current: HashMap<String, Option<String>> = after.clone().into_iter().collect();
        let category = if changed
            .iter()
            .any(|(n, _, _)| gateway_facts::is_inventory_fact(n))
        {
            Category::Gateway
        } else if changed.iter().all(|(n, _, _)| n == "interfaces") {
            Category::Config
        } else {
            Category::Identity
        };
        let (judged_approved, judged_now) = gateway_facts::comparable(&approved, &after, truncated);
        let drift = baseline::differences(&judged_approved, &judged_now);
        self.judged(
            ci_key,
            name,
            &described,
            &current,
            drift,
            category,
            Target::Gateway,
        )
    }
}

/// Gateways of `zones` (all when `None`): their CI keys.
pub(crate) fn keys(conn: &Connection, zone: Option<&str>) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT ci_key FROM gateways WHERE ?1 IS NULL OR zone = ?1 ORDER BY ci_key",
    )?;
    stmt.query_map([zone], |r| r.get(0))?.collect()
}

/// Whether `ci_key` names a known gateway.
pub(crate) fn exists(conn: &Connection, ci_key: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM gateways WHERE ci_key = ?1")?
        .exists([ci_key])
}

/// Drift rows for gateways: (ci key, name, zone, agent, approval, differences, explained).
pub(crate) fn drift_rows(conn: &Connection) -> rusqlite::Result<Vec<super::baseline::DriftRow>> {
    let mut stmt = conn.prepare(
        "SELECT g.ci_key, COALESCE(g.hostname, g.ci_key), g.zone, g.agent_id, b.approved_at_ms,
                b.approved_by, b.reason, b.ticket
         FROM gateways g LEFT JOIN baseline_gateways b ON b.ci_key = g.ci_key
         ORDER BY g.zone, g.ci_key",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(super::baseline::DriftRow {
                ci_key: r.get(0)?,
                name: r.get(1)?,
                zone: r.get(2)?,
                agent_id: r.get(3)?,
                state: String::new(),
                approved_at: r.get(4)?,
                approved_by: r.get(5)?,
                reason: r.get(6)?,
                baseline_ticket: r.get(7)?,
                pending_ticket: None,
                differences: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for mut row in rows {
        match (approved(conn, &row.ci_key)?, stored(conn, &row.ci_key)?) {
            (Some(base), Some(current)) => {
                let (base, current) = gateway_facts::comparable(&base, &current, &[]);
                baseline::fill_drift(conn, &mut row, &base, &current)?;
            }
            _ => row.state = "no_baseline".into(),
        }
        out.push(row);
    }
    Ok(out)
}

/// Whether a CI key names a gateway (as opposed to a field device).
pub(crate) fn is_gateway_key(key: &str) -> bool {
    key.starts_with("gateway/")
}
