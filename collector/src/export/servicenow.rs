//! A ServiceNow Identification and Reconciliation (IRE) payload, as
//! `POST /api/now/identifyreconcile?sysparm_data_source=Outpost` takes it:
//!
//! ```json
//! {"items": [{"className": "cmdb_ci_ot_plc", "values": {...}, "lookup": [],
//!             "related": [{"className": "cmdb_firmware_install", "values": {...}}],
//!             "sys_object_source_info": {"source_name": "Outpost",
//!               "source_native_key": "<CI key>", "source_recency_timestamp": "2026-12-02 15:58:37"}}],
//!  "relations": [{"parent": 0, "child": 1, "type": "Connects to::Connected by"}]}
//! ```
//!
//! Gateways are `cmdb_ci_linux_server` (or `cmdb_ci_computer` when not Linux) with their
//! network adapters as `lookup` entries; each field device is related to the gateway that
//! polls it. The mapping is documented in `docs/exports.md`.

use serde_json::{Value, json};

use super::{Inventory, SOURCE_NAME};
use crate::cmdb::query::GatewayRow;
use crate::time::Timestamp;

/// The relation between a gateway (parent) and a device it polls (child).
pub const RELATION: &str = "Connects to::Connected by";

/// ServiceNow's date-time form (UTC): `yyyy-MM-dd HH:mm:ss`.
pub fn glide_time(t: Timestamp) -> String {
    let text = t.to_string();
    text.get(..19).unwrap_or(&text).replace('T', " ")
}

/// The class of a gateway host.
pub fn gateway_class(g: &GatewayRow) -> &'static str {
    let linux = [&g.os_name, &g.kernel_version]
        .iter()
        .filter_map(|v| v.as_deref())
        .any(|s| s.to_ascii_lowercase().contains("linux"))
        || g.kernel_version.is_some();
    if linux {
        "cmdb_ci_linux_server"
    } else {
        "cmdb_ci_computer"
    }
}

fn addresses(g: &GatewayRow) -> Vec<(String, Option<String>, String)> {
    let mut out = Vec::new();
    for i in g.interfaces.as_array().into_iter().flatten() {
        let name = i["name"].as_str().unwrap_or_default().to_owned();
        let mac = i["mac"].as_str().map(str::to_owned);
        for a in i["addresses"].as_array().into_iter().flatten() {
            if let Some(cidr) = a.as_str() {
                let ip = cidr.split('/').next().unwrap_or(cidr).to_owned();
                out.push((name.clone(), mac.clone(), ip));
            }
        }
    }
    out
}

/// The gateway's first non-loopback IPv4 address (else any non-loopback one).
pub fn gateway_ip(g: &GatewayRow) -> Option<String> {
    let all = addresses(g);
    let usable = |ip: &String| ip != "127.0.0.1" && ip != "::1";
    all.iter()
        .map(|a| &a.2)
        .find(|ip| usable(ip) && !ip.contains(':'))
        .or_else(|| all.iter().map(|a| &a.2).find(|ip| usable(ip)))
        .cloned()
}

fn source(key: &str, recency: Timestamp) -> Value {
    json!({
        "source_name": SOURCE_NAME,
        "source_native_key": key,
        "source_recency_timestamp": glide_time(recency),
    })
}

fn put(values: &mut serde_json::Map<String, Value>, field: &str, v: &Option<String>) {
    if let Some(v) = v {
        values.insert(field.to_owned(), Value::String(v.clone()));
    }
}

/// Builds the payload.
pub fn payload(inv: &Inventory) -> Value {
    let mut items = Vec::new();
    let mut relations = Vec::new();
    let mut gateway_index = std::collections::HashMap::new();
    for g in &inv.gateways {
        let r = &g.row;
        let mut values = serde_json::Map::new();
        values.insert(
            "name".into(),
            Value::String(r.hostname.clone().unwrap_or_else(|| g.agent_id.clone())),
        );
        put(&mut values, "host_name", &r.hostname);
        put(&mut values, "os", &r.os_name);
        put(&mut values, "os_version", &r.os_version);
        put(&mut values, "kernel_release", &r.kernel_version);
        put(&mut values, "ip_address", &gateway_ip(r));
        values.insert("cpu_count".into(), Value::String(r.cpu_count.to_string()));
        values.insert(
            "ram".into(),
            Value::String((r.memory_bytes / (1024 * 1024)).to_string()),
        );
        values.insert(
            "short_description".into(),
            Value::String(format!(
                "Outpost OT gateway (agent {} {}) in zone {}",
                g.agent_id, r.agent_version, r.zone
            )),
        );
        let lookup: Vec<Value> = addresses(r)
            .into_iter()
            .filter(|(_, _, ip)| ip != "127.0.0.1" && ip != "::1")
            .map(|(name, mac, ip)| {
                let mut v = json!({"name": name, "ip_address": ip});
                if let Some(mac) = mac {
                    v["mac_address"] = Value::String(mac);
                }
                json!({"className": "cmdb_ci_network_adapter", "values": v})
            })
            .collect();
        gateway_index.insert(g.agent_id.clone(), items.len());
        items.push(json!({
            "className": gateway_class(r),
            "values": values,
            "lookup": lookup,
            "related": [],
            "sys_object_source_info": source(&r.ci_key, r.last_seen),
        }));
    }
    for a in &inv.assets {
        let mut values = serde_json::Map::new();
        values.insert("name".into(), Value::String(a.name.clone()));
        put(&mut values, "manufacturer", &a.vendor_name);
        put(&mut values, "model_number", &a.product_code);
        put(
            &mut values,
            "model_id",
            &a.model_name.clone().or(a.product_name.clone()),
        );
        put(&mut values, "firmware_version", &a.revision);
        // IRE identifies hardware by serial number first, then MAC address (when known).
        put(&mut values, "serial_number", &a.serial_number);
        put(&mut values, "mac_address", &a.mac_address);
        put(
            &mut values,
            "ip_address",
            &super::endpoint_host(&a.endpoint).map(str::to_owned),
        );
        values.insert(
            "short_description".into(),
            Value::String(format!(
                "{} unit {} in zone {}{}",
                a.endpoint,
                a.unit_id,
                a.zone,
                a.user_application_name
                    .as_deref()
                    .map_or_else(String::new, |p| format!("; application {p}"))
            )),
        );
        values.insert(
            "operational_status".into(),
            // 6 Retired: another device took its place; 2 Non-Operational; 1 Operational.
            Value::String(
                if a.replaced_by.is_some() {
                    "6"
                } else if a.status == "unreachable" {
                    "2"
                } else {
                    "1"
                }
                .into(),
            ),
        );
        let related: Vec<Value> = a
            .revision
            .iter()
            .map(|rev| {
                json!({
                    "className": "cmdb_firmware_install",
                    "values": {
                        "name": format!("{} {} firmware",
                            a.vendor_name.as_deref().unwrap_or("device"),
                            a.product_code.as_deref().unwrap_or("")).trim().replace("  ", " "),
                        "version": rev,
                    }
                })
            })
            .collect();
        let recency = a.last_seen.unwrap_or(a.last_polled);
        let index = items.len();
        items.push(json!({
            "className": super::ot_class(a),
            "values": values,
            "lookup": [],
            "related": related,
            "sys_object_source_info": source(&a.ci_key, recency),
        }));
        if let Some(parent) = gateway_index.get(&a.agent_id) {
            relations.push(json!({"parent": parent, "child": index, "type": RELATION}));
        }
    }
    json!({"items": items, "relations": relations})
}

/// Checks a payload's shape as IRE documents it (used by the tests and before a POST):
/// `items` non-empty array of objects with a `cmdb_ci*` `className` and a `values` object
/// with `name`; `sys_object_source_info` with the three fields; `relations` pointing at item
/// indexes with a `type` of the form `A::B`.
pub fn check_shape(p: &Value) -> Result<(), String> {
    let items = p["items"].as_array().ok_or("items is not an array")?;
    for (i, it) in items.iter().enumerate() {
        let class = it["className"]
            .as_str()
            .ok_or(format!("items[{i}].className missing"))?;
        if !class.starts_with("cmdb_ci") {
            return Err(format!(
                "items[{i}].className {class:?} is not a CMDB CI class"
            ));
        }
        if !it["values"]["name"].is_string() {
            return Err(format!("items[{i}].values.name missing"));
        }
        for f in [
            "source_name",
            "source_native_key",
            "source_recency_timestamp",
        ] {
            if !it["sys_object_source_info"][f].is_string() {
                return Err(format!("items[{i}].sys_object_source_info.{f} missing"));
            }
        }
        for list in ["lookup", "related"] {
            for (j, e) in it[list]
                .as_array()
                .ok_or(format!("items[{i}].{list} not an array"))?
                .iter()
                .enumerate()
            {
                if !e["className"].is_string() || !e["values"].is_object() {
                    return Err(format!("items[{i}].{list}[{j}] needs className and values"));
                }
            }
        }
    }
    for (i, r) in p["relations"]
        .as_array()
        .ok_or("relations is not an array")?
        .iter()
        .enumerate()
    {
        for end in ["parent", "child"] {
            let n = r[end]
                .as_u64()
                .ok_or(format!("relations[{i}].{end} is not an index"))?;
            if n as usize >= items.len() {
                return Err(format!("relations[{i}].{end} = {n} is past the items"));
            }
        }
        let t = r["type"].as_str().unwrap_or_default();
        if !t.contains("::") {
            return Err(format!(
                "relations[{i}].type {t:?} is not `parent::child` form"
            ));
        }
    }
    Ok(())
}
