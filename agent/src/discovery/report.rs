//! What a scan prints: a text table, a JSON document (`outpost.scan.v1`, see docs/json.md) and
//! a starter agent config for what answered.

use std::fmt::Write as _;
use std::time::Duration;

use outpost_proto::model::DeviceIdentity;
use serde_json::{Map, Value, json};

use super::scan::{AddressResult, Outcome, ScanPlan, UnitFound};

/// The JSON document's schema name.
pub const SCHEMA: &str = "outpost.scan.v1";

/// Counts over a scan's results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub addresses: usize,
    pub answered: usize,
    pub units: usize,
    pub no_unit_answered: usize,
    pub silent: usize,
    pub refused: usize,
    pub connect_timeout: usize,
    pub connect_error: usize,
    pub requests: u64,
    pub busy_backoffs: u64,
}

impl Totals {
    pub fn of(results: &[AddressResult]) -> Totals {
        let mut t = Totals {
            addresses: results.len(),
            ..Totals::default()
        };
        for r in results {
            t.requests += r.requests;
            t.busy_backoffs += r.busy_backoffs;
            t.units += r.units.len();
            match r.outcome {
                Outcome::Answered => t.answered += 1,
                Outcome::NoUnitAnswered => t.no_unit_answered += 1,
                Outcome::Silent => t.silent += 1,
                Outcome::Refused => t.refused += 1,
                Outcome::ConnectTimeout => t.connect_timeout += 1,
                Outcome::ConnectError(_) => t.connect_error += 1,
            }
        }
        t
    }
}

fn cell(value: Option<&str>, width: usize) -> String {
    let v = value.unwrap_or("-");
    let mut out: String = v.chars().take(width).collect();
    if v.chars().count() > width && width > 1 {
        out.pop();
        out.push('~');
    }
    out
}

fn product(id: &DeviceIdentity) -> Option<String> {
    id.product_code
        .clone()
        .or_else(|| id.model_name.clone())
        .or_else(|| id.other.get(&0x82).cloned())
}

/// The text table: one row per unit that answered, then the other addresses that connected,
/// then one line of totals.
pub fn table(results: &[AddressResult], elapsed: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<21} {:>4}  {:<20} {:<20} {:<12} {:<24} {:<22} METHOD",
        "ADDRESS", "UNIT", "VENDOR", "PRODUCT", "REVISION", "NAME", "PROFILE"
    );
    for r in results {
        for u in &r.units {
            let id = &u.identity;
            let name = id
                .product_name
                .as_deref()
                .or(id.user_application_name.as_deref());
            let _ = writeln!(
                out,
                "{:<21} {:>4}  {:<20} {:<20} {:<12} {:<24} {:<22} {}",
                r.address.to_string(),
                u.unit_id,
                cell(id.vendor_name.as_deref(), 20),
                cell(product(id).as_deref(), 20),
                cell(id.revision.as_deref(), 12),
                cell(name, 24),
                cell(u.profile.as_deref(), 22),
                u.method
            );
            for p in &u.problems {
                let _ = writeln!(out, "{:<21} {:>4}  ! {p}", "", "");
            }
        }
        match r.outcome {
            Outcome::Silent => {
                let _ = writeln!(
                    out,
                    "{:<21} {:>4}  (accepts connections, never answered: {} requests timed out)",
                    r.address.to_string(),
                    "-",
                    r.requests
                );
            }
            Outcome::NoUnitAnswered => {
                let _ = writeln!(
                    out,
                    "{:<21} {:>4}  (connected; none of the unit ids answered)",
                    r.address.to_string(),
                    "-"
                );
            }
            _ => {}
        }
    }
    let t = Totals::of(results);
    let per_device = if t.answered > 0 {
        t.requests as f64 / t.answered as f64
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "\n{} addresses in {:.2} s: {} answered ({} unit ids), {} silent, {} connected without an answering unit, {} refused, {} connect timeouts, {} other connect errors; {} requests ({per_device:.1} per answering device), {} busy back-offs",
        t.addresses,
        elapsed.as_secs_f64(),
        t.answered,
        t.units,
        t.silent,
        t.no_unit_answered,
        t.refused,
        t.connect_timeout,
        t.connect_error,
        t.requests,
        t.busy_backoffs
    );
    out
}

fn identity_json(id: &DeviceIdentity) -> Value {
    let mut m = Map::new();
    for (name, value) in id.fields() {
        if let Some(v) = value {
            m.insert(name.to_owned(), Value::String(v.to_owned()));
        }
    }
    if !id.other.is_empty() {
        let other: Map<String, Value> = id
            .other
            .iter()
            .map(|(k, v)| (format!("0x{k:02x}"), Value::String(v.clone())))
            .collect();
        m.insert("other".into(), Value::Object(other));
    }
    Value::Object(m)
}

fn unit_json(u: &UnitFound) -> Value {
    json!({
        "unit_id": u.unit_id,
        "method": u.method,
        "conformity_level": u.conformity_level,
        "identity": identity_json(&u.identity),
        "profile": u.profile,
        "problems": u.problems,
    })
}

/// The JSON document: the plan, totals, and every address that accepted a connection.
pub fn to_json(plan: &ScanPlan, results: &[AddressResult], elapsed: Duration) -> Value {
    let t = Totals::of(results);
    let devices: Vec<Value> = results
        .iter()
        .filter(|r| {
            matches!(
                r.outcome,
                Outcome::Answered | Outcome::Silent | Outcome::NoUnitAnswered
            )
        })
        .map(|r| {
            json!({
                "address": r.address.to_string(),
                "outcome": r.outcome.as_str(),
                "units": r.units.iter().map(unit_json).collect::<Vec<_>>(),
                "requests": r.requests,
                "busy_backoffs": r.busy_backoffs,
                "final_gap_ms": r.final_gap_ms,
                "elapsed_ms": r.elapsed_ms,
            })
        })
        .collect();
    let errors: Vec<Value> = results
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::ConnectError(e) => Some(json!({"address": r.address.to_string(), "error": e})),
            _ => None,
        })
        .collect();
    let timing = &plan.budget.timing;
    json!({
        "schema": SCHEMA,
        "port": plan.port,
        "unit_ids": plan.units,
        "budget": {
            "max_connections": plan.budget.max_connections,
            "requests_per_second_per_device": plan.budget.rate_per_device(),
            "connect_timeout_ms": u64::try_from(timing.connect_timeout.as_millis()).unwrap_or(u64::MAX),
            "request_timeout_ms": u64::try_from(timing.request_timeout.as_millis()).unwrap_or(u64::MAX),
        },
        "elapsed_ms": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        "totals": {
            "addresses": t.addresses,
            "answered": t.answered,
            "unit_ids": t.units,
            "silent": t.silent,
            "no_unit_answered": t.no_unit_answered,
            "refused": t.refused,
            "connect_timeout": t.connect_timeout,
            "connect_error": t.connect_error,
            "requests": t.requests,
            "busy_backoffs": t.busy_backoffs,
        },
        "devices": devices,
        "connect_errors": errors,
    })
}

fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= 24 {
            break;
        }
    }
    out.trim_end_matches('-').to_owned()
}

/// A TOML string literal (basic string, escaped).
fn toml_str(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A starter agent config: placeholders for identity, key and transport, and one `[[devices]]`
/// per address that answered with the unit ids that answered, and the configuration blocks of
/// the device profile that matched (volatile ones marked `volatile = true`). It parses as written
/// (`outpost-agent check-config`), but the placeholders must be replaced before `run`.
pub fn starter_config(
    ranges: &[String],
    results: &[AddressResult],
    profiles: Option<&crate::profile::Library>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Starter config written by `outpost-agent scan {}`.",
        ranges.join(" ")
    );
    out.push_str(
        "# Replace agent_id, zone, key_file, state_dir and the [diode] target (or use [mqtt]),\n\
         # add the register blocks to baseline to each device, then check it with\n\
         # `outpost-agent check-config --config FILE`.\n\n\
         agent_id = \"change-me\"\n\
         zone = \"change-me\"\n\
         state_dir = \"/var/lib/outpost-agent\"\n\
         key_file = \"/etc/outpost/agent.key\"\n\
         poll_interval = \"60s\"\n\n\
         [diode]\n\
         target = \"192.0.2.10:7000\"  # placeholder (TEST-NET-1): the diode's sending side\n",
    );
    let mut names = std::collections::HashSet::new();
    let mut any = false;
    for r in results.iter().filter(|r| !r.units.is_empty()) {
        any = true;
        let first = &r.units[0].identity;
        let base = slug(
            &[first.vendor_name.as_deref(), product(first).as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" "),
        );
        let base = if base.is_empty() {
            "modbus".to_owned()
        } else {
            base
        };
        let ip = slug(&r.address.ip().to_string());
        let mut name = format!("{base}-{ip}");
        let mut n = 2;
        while !names.insert(name.clone()) {
            name = format!("{base}-{ip}-{n}");
            n += 1;
        }
        out.push_str("\n[[devices]]\n");
        for u in &r.units {
            let id = &u.identity;
            let _ = writeln!(
                out,
                "# unit {}: {} {} {} ({})",
                u.unit_id,
                id.vendor_name.as_deref().unwrap_or("?"),
                product(id).as_deref().unwrap_or("?"),
                id.revision.as_deref().unwrap_or("?"),
                u.method
            );
        }
        let units: Vec<String> = r.units.iter().map(|u| u.unit_id.to_string()).collect();
        let _ = writeln!(out, "name = {}", toml_str(&name));
        let _ = writeln!(out, "address = {}", toml_str(&r.address.to_string()));
        let _ = writeln!(out, "unit_ids = [{}]", units.join(", "));
        let profile = r
            .units
            .iter()
            .find_map(|u| u.profile.as_deref())
            .and_then(|n| profiles.and_then(|l| l.get(n)));
        if let Some(p) = profile {
            let _ = writeln!(out, "# blocks from profile {} ({})", p.name, p.origin);
            for b in &p.blocks {
                let _ = writeln!(
                    out,
                    "[[devices.blocks]]\nname = {}\nkind = \"{}\"\nstart = {}\ncount = {}{}",
                    toml_str(&b.name),
                    b.kind.as_str(),
                    b.start,
                    b.count,
                    if b.volatile { "\nvolatile = true" } else { "" }
                );
            }
        }
    }
    if !any {
        out.push_str("\n# Nothing answered: no devices. A gateway-only agent keeps this line.\ndevices = []\n");
    }
    out
}
