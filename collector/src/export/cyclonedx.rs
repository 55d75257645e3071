//! CycloneDX 1.6 JSON: an HBOM of the OT zone(s). Each field device and each gateway is a
//! `device` component (bom-ref = its CI key) with its vendor as `manufacturer`; a device's
//! firmware revision is a nested `firmware` component, a gateway's OS an `operating-system`
//! and its agent an `application`. Outpost facts without a CycloneDX field travel as
//! `outpost:*` properties. Validated against the official JSON schema in the tests.

use serde_json::{Value, json};

use super::Inventory;
use crate::time::rfc3339;

fn prop(name: &str, value: &str) -> Value {
    json!({"name": format!("outpost:{name}"), "value": value})
}

/// A version-4-shaped UUID from the export's content and time (unique per export, no RNG
/// needed).
fn serial(seed: &[u8]) -> String {
    let d = outpost_proto::Digest::of(seed).0;
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = outpost_proto::hex::encode(&b);
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Builds the BOM.
pub fn bom(inv: &Inventory, now_ms: i64) -> Value {
    let mut components = Vec::new();
    for a in &inv.assets {
        let mut c = json!({
            "type": "device",
            "bom-ref": a.ci_key,
            "name": a.name,
            "description": format!("Modbus device {} unit {} in zone {}", a.endpoint, a.unit_id, a.zone),
        });
        if let Some(v) = &a.vendor_name {
            let mut m = json!({"name": v});
            if let Some(url) = &a.vendor_url {
                m["url"] = json!([url]);
            }
            c["manufacturer"] = m;
        }
        if let Some(model) = a.model_name.as_ref().or(a.product_name.as_ref()) {
            c["group"] = json!(a.vendor_name.clone().unwrap_or_default());
            c["description"] = json!(format!(
                "{model}: Modbus device {} unit {} in zone {}",
                a.endpoint, a.unit_id, a.zone
            ));
        }
        let mut props = vec![
            prop("ci_key", &a.ci_key),
            prop("zone", &a.zone),
            prop("agent_id", &a.agent_id),
            prop("endpoint", &a.endpoint),
            prop("unit_id", &a.unit_id.to_string()),
            prop("status", &a.status),
            prop("first_seen", &a.first_seen.to_string()),
        ];
        if let Some(pc) = &a.product_code {
            props.push(prop("product_code", pc));
        }
        props.push(prop("identity_basis", &a.identity_basis));
        for (name, value) in [
            ("serial_number", &a.serial_number),
            ("mac_address", &a.mac_address),
            ("replaced_by", &a.replaced_by),
        ] {
            if let Some(v) = value {
                props.push(prop(name, v));
            }
        }
        if let Some(app) = &a.user_application_name {
            props.push(prop("user_application_name", app));
        }
        if let Some(t) = a.last_seen {
            props.push(prop("last_seen", &t.to_string()));
        }
        c["properties"] = Value::Array(props);
        if let Some(rev) = &a.revision {
            c["components"] = json!([{
                "type": "firmware",
                "bom-ref": format!("{}#firmware", a.ci_key),
                "name": a.product_code.clone().unwrap_or_else(|| "firmware".to_owned()),
                "version": rev,
            }]);
        }
        components.push(c);
    }
    for g in &inv.gateways {
        let r = &g.row;
        let mut nested = vec![json!({
            "type": "application",
            "bom-ref": format!("{}#outpost-agent", r.ci_key),
            "name": "outpost-agent",
            "version": r.agent_version,
        })];
        if let Some(os) = &r.os_name {
            let mut c = json!({
                "type": "operating-system",
                "bom-ref": format!("{}#os", r.ci_key),
                "name": os,
            });
            if let Some(v) = &r.os_version {
                c["version"] = json!(v);
            }
            nested.push(c);
        }
        let mut props = vec![
            prop("ci_key", &r.ci_key),
            prop("zone", &r.zone),
            prop("agent_id", &g.agent_id),
            prop("cpu_arch", &r.cpu_arch),
            prop("cpu_count", &r.cpu_count.to_string()),
            prop("memory_bytes", &r.memory_bytes.to_string()),
            prop("last_seen", &r.last_seen.to_string()),
        ];
        if let Some(k) = &r.kernel_version {
            props.push(prop("kernel_version", k));
        }
        components.push(json!({
            "type": "device",
            "bom-ref": r.ci_key,
            "name": r.hostname.clone().unwrap_or_else(|| g.agent_id.clone()),
            "description": format!("Outpost OT gateway in zone {}", r.zone),
            "properties": props,
            "components": nested,
        }));
    }
    let seed = format!("{now_ms}/{}", Value::Array(components.clone()));
    json!({
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": serial(seed.as_bytes()),
        "version": 1,
        "metadata": {
            "timestamp": rfc3339(now_ms),
            "tools": {"components": [{
                "type": "application",
                "name": "outpost-collector",
                "version": env!("CARGO_PKG_VERSION"),
            }]},
        },
        "components": components,
    })
}
