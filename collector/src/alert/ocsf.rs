//! Alerts as OCSF events (schema 1.3): class 5019 *Device Config State Change* for changes and
//! unreachable devices, class 5001 *Device Inventory Info* for a new device, class 2004
//! *Detection Finding* for security findings with no device state change behind them (a revoked
//! key in use; segmentation probes: a must-not-reach target answered, a conduit went down, and
//! their clearing — the `device` is the probing agent's gateway, the target is in
//! `dst_endpoint`). Outpost's own
//! facts (agent, envelope evidence, before/after) travel under `unmapped.outpost`.

use serde_json::{Value, json};

use crate::cmdb::alerts::AlertRow;
use crate::time::rfc3339;

pub const OCSF_VERSION: &str = "1.3.0";
pub const CLASS_CONFIG_STATE_CHANGE: i64 = 5019;
pub const CLASS_INVENTORY_INFO: i64 = 5001;
/// Activity 2: "Collect" (discovered by a collection process).
const ACTIVITY_COLLECT: i64 = 2;

/// Class 2004 *Detection Finding* (category 2 Findings): a security detection with no device
/// state change behind it (an envelope sealed with a revoked key).
pub const CLASS_DETECTION_FINDING: i64 = 2004;
/// Detection Finding activity 1: "Create" (a finding was created).
const ACTIVITY_CREATE: i64 = 1;

/// The OCSF class an alert is written as.
pub fn class_uid(alert: &AlertRow) -> i64 {
    match alert.kind.as_str() {
        "new_device" => CLASS_INVENTORY_INFO,
        "revoked_key_used"
        | "segmentation_violation"
        | "segmentation_restored"
        | "conduit_down"
        | "conduit_restored" => CLASS_DETECTION_FINDING,
        _ => CLASS_CONFIG_STATE_CHANGE,
    }
}

fn severity_name(id: i64) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        5 => "Critical",
        _ => "Unknown",
    }
}

/// One line for people: what happened to which device.
pub fn message(alert: &AlertRow) -> String {
    let what = match alert.kind.as_str() {
        "unauthorised_change" => {
            let n = alert.detail["changes"].as_array().map_or(0, Vec::len);
            format!(
                "unauthorised {} change ({n} attribute{}) on",
                alert.category,
                if n == 1 { "" } else { "s" }
            )
        }
        "new_device" => "new device".to_owned(),
        "unstable_value" => "value changing every poll (unauthorised, reported once) on".to_owned(),
        "device_unreachable" => match alert.detail["unreachable_polls"].as_i64() {
            Some(n) => format!("baselined device unreachable for {n} consecutive polls:"),
            None => "baselined device unreachable:".to_owned(),
        },
        "conflicting_observation" => {
            let agents: Vec<&str> = alert.detail["agents"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!(
                "agents {} report different values for",
                agents.join(" and ")
            )
        }
        "revoked_key_used" => format!(
            "envelope sealed with revoked key {} refused (peer {}; the key may be in someone \
             else's hands):",
            alert.detail["key_id"].as_str().unwrap_or("-"),
            alert.detail["peer"].as_str().unwrap_or("-")
        ),
        "agent_state_lost" => "agent declared lost state (new chain above the last accepted \
                               sequence):"
            .to_owned(),
        "device_returned" => "device answering again after being reported unreachable:".to_owned(),
        "segmentation_violation" => format!(
            "segmentation violation: must-not-reach target answered a TCP connect ({}):",
            alert.detail["outcome"].as_str().unwrap_or("-")
        ),
        "segmentation_restored" => "segmentation restored: must-not-reach target no longer \
                                    answers:"
            .to_owned(),
        "conduit_down" => format!(
            "conduit down: may-reach target did not connect ({}):",
            alert.detail["outcome"].as_str().unwrap_or("-")
        ),
        "conduit_restored" => "conduit restored: may-reach target connects again:".to_owned(),
        other => other.to_owned(),
    };
    format!(
        "{what} {} in zone {} (agent {}, envelope seq {})",
        alert.asset_name, alert.zone, alert.agent_id, alert.envelope_seq
    )
}

/// The address part of a field-device CI key (`zone/<z>/modbus/tcp://<host>:<port>/unit/<n>`).
fn device_ip(ci_key: &str) -> Option<String> {
    let rest = ci_key.split_once("tcp://")?.1;
    let host_port = rest.split('/').next()?;
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.0,
        None => host_port.rsplit_once(':')?.0,
    };
    host.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| ip.to_string())
}

/// The OCSF event for an alert.
pub fn event(alert: &AlertRow) -> Value {
    let class = class_uid(alert);
    let (class_name, category_uid, category_name, activity_id, activity_name) = match class {
        CLASS_INVENTORY_INFO => (
            "Device Inventory Info",
            5,
            "Discovery",
            ACTIVITY_COLLECT,
            "Collect",
        ),
        CLASS_DETECTION_FINDING => (
            "Detection Finding",
            2,
            "Findings",
            ACTIVITY_CREATE,
            "Create",
        ),
        _ => (
            "Device Config State Change",
            5,
            "Discovery",
            ACTIVITY_COLLECT,
            "Collect",
        ),
    };
    let d = &alert.detail;
    let (type_id, type_name) =
        if alert.asset.starts_with("gateway/") || alert.asset.starts_with("agent/") {
            (1, "Server")
        } else {
            (99, "Modbus field device")
        };
    let mut device = json!({
        "type_id": type_id,
        "type": type_name,
        "name": alert.asset_name,
        "uid": alert.asset,
        "zone": alert.zone,
    });
    if let Some(ip) = device_ip(&alert.asset) {
        device["ip"] = json!(ip);
    }
    if let Some(v) = d["vendor_name"].as_str() {
        device["vendor_name"] = json!(v);
    }
    if let Some(m) = d["model_name"].as_str().or(d["product_code"].as_str()) {
        device["model"] = json!(m);
    }
    let mut event = json!({
        "activity_id": activity_id,
        "activity_name": activity_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "class_uid": class,
        "class_name": class_name,
        "type_uid": class * 100 + activity_id,
        "type_name": format!("{class_name}: {activity_name}"),
        "severity_id": alert.severity_id,
        "severity": severity_name(alert.severity_id),
        "time": alert.raised_at.ms(),
        "message": message(alert),
        "metadata": {
            "version": OCSF_VERSION,
            "uid": format!("outpost-alert-{}", alert.alert_id),
            "product": {
                "name": "Outpost",
                "vendor_name": "Outpost",
                "version": env!("CARGO_PKG_VERSION"),
            },
        },
        "device": device,
        "observables": [
            { "name": "device.uid", "type_id": 0, "type": "Unknown", "value": alert.asset },
        ],
        "unmapped": {
            "outpost": {
                "alert_id": alert.alert_id,
                "kind": alert.kind,
                "category": alert.category,
                "agent": alert.agent_id,
                "zone": alert.zone,
                "observed_at": rfc3339(alert.raised_at.ms()),
                "agent_time": rfc3339(alert.agent_time.ms()),
                "evidence": {
                    "envelope_seq": alert.envelope_seq,
                    "envelope_hash": alert.envelope_hash,
                },
                "detail": d,
            }
        }
    });
    if class == CLASS_CONFIG_STATE_CHANGE || class == CLASS_DETECTION_FINDING {
        event["is_alert"] = json!(true);
    }
    let probe_alert = alert.kind.starts_with("segmentation_") || alert.kind.starts_with("conduit_");
    if probe_alert && let Some((host, port)) = d["target"].as_str().and_then(|t| t.rsplit_once(':'))
    {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        event["dst_endpoint"] = json!({ "ip": host, "port": port.parse::<u16>().ok() });
    }
    if class == CLASS_DETECTION_FINDING {
        event["finding_info"] = json!({
            "uid": format!("outpost-alert-{}", alert.alert_id),
            "title": message(alert),
            "types": [alert.kind],
        });
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    fn alert(kind: &str) -> AlertRow {
        AlertRow {
            alert_id: 7,
            raised_at: Timestamp(1_700_000_000_000),
            kind: kind.into(),
            category: "config".into(),
            severity_id: 3,
            asset: "zone/cell-1/modbus/tcp://127.0.1.1:502/unit/1".into(),
            asset_name: "mixer-plc".into(),
            zone: "cell-1".into(),
            agent_id: "gw-line1".into(),
            agent_time: Timestamp(1_699_999_999_000),
            envelope_seq: 12,
            envelope_hash: "ab".repeat(32),
            detail: json!({ "changes": [{"attribute": "block.sp"}] }),
            delivered_to: vec![],
        }
    }

    #[test]
    fn change_alert_has_the_required_ocsf_fields() {
        let e = event(&alert("unauthorised_change"));
        for field in [
            "activity_id",
            "category_uid",
            "class_uid",
            "device",
            "metadata",
            "severity_id",
            "time",
            "type_uid",
        ] {
            assert!(!e[field].is_null(), "{field} missing: {e:#}");
        }
        assert_eq!(e["class_uid"], 5019);
        assert_eq!(e["type_uid"], 501902);
        assert_eq!(e["is_alert"], true);
        assert_eq!(e["device"]["type_id"], 99);
        assert_eq!(e["device"]["ip"], "127.0.1.1");
        assert_eq!(e["unmapped"]["outpost"]["evidence"]["envelope_seq"], 12);
        assert!(e["message"].as_str().unwrap().contains("mixer-plc"));
    }

    #[test]
    fn revoked_key_used_is_a_detection_finding() {
        let mut a = alert("revoked_key_used");
        a.asset = "agent/gw-line1".into();
        a.detail = json!({ "key_id": "k1", "peer": "192.0.2.7:4000", "agent": "gw-line1" });
        let e = event(&a);
        for field in [
            "activity_id",
            "category_uid",
            "class_uid",
            "finding_info",
            "metadata",
            "severity_id",
            "time",
            "type_uid",
        ] {
            assert!(!e[field].is_null(), "{field} missing: {e:#}");
        }
        assert_eq!(e["class_uid"], 2004);
        assert_eq!(e["category_uid"], 2);
        assert_eq!(e["type_uid"], 200401);
        assert_eq!(e["finding_info"]["uid"], "outpost-alert-7");
        assert!(e["finding_info"]["title"].as_str().unwrap().contains("k1"));
        assert_eq!(e["device"]["type_id"], 1);
    }

    #[test]
    fn new_device_is_inventory_info() {
        let e = event(&alert("new_device"));
        assert_eq!(e["class_uid"], 5001);
        assert_eq!(e["type_uid"], 500102);
        assert!(e["is_alert"].is_null());
    }

    #[test]
    fn ipv6_device_address() {
        assert_eq!(
            device_ip("zone/z/modbus/tcp://[fd00::1]:502/unit/1").as_deref(),
            Some("fd00::1")
        );
        assert_eq!(device_ip("zone/z/modbus/rtu:///dev/ttyS0/unit/1"), None);
    }
}
