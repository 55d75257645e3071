//! What one observation of a field device says, as CMDB attributes.
//!
//! Attribute names and values (all text):
//!
//! | attribute                  | value                                                      |
//! |----------------------------|------------------------------------------------------------|
//! | `name`                     | the agent's configured device name                         |
//! | `status`                   | `ok`, `partial` or `unreachable`                           |
//! | `ident_method`             | `read_device_identification` or `report_server_id`         |
//! | `vendor_name` … `user_application_name` | FC 43 objects 0x00–0x06                       |
//! | `object.0xNN`              | further FC 43 objects (0x07–0xFF)                          |
//! | `block.<name>`             | JSON `{"hash","kind","start","values"}` of a register block, with `"volatile":true` for a volatile block |
//!
//! Absence is not evidence: an unreachable device reports only `name` and `status` (its last
//! known identity and blocks stay), identity attributes are reported only when the identity
//! was actually read (`ident_method` is not `none`), and a block missing from a partial poll
//! keeps its last value.

use outpost_proto::Digest;
use outpost_proto::model::{AssetObservation, Endpoint, IdentMethod, PollStatus, RegisterBlock};

/// The stored name of a poll status.
pub fn status_name(status: &PollStatus) -> &'static str {
    match status {
        PollStatus::Ok => "ok",
        PollStatus::Partial => "partial",
        PollStatus::Unreachable(_) => "unreachable",
    }
}

/// The stored name of an identification method.
pub fn ident_method_name(method: IdentMethod) -> &'static str {
    match method {
        IdentMethod::None => "none",
        IdentMethod::ReadDeviceIdentification => "read_device_identification",
        IdentMethod::ReportServerId => "report_server_id",
    }
}

/// Whether the device answered at all.
pub fn answered(status: &PollStatus) -> bool {
    !matches!(status, PollStatus::Unreachable(_))
}

/// The `last_problem` text: why it is unreachable, or its problems joined with `; `.
pub fn problem_text(obs: &AssetObservation) -> Option<String> {
    match &obs.status {
        PollStatus::Unreachable(why) => Some(why.clone()),
        _ if obs.problems.is_empty() => None,
        _ => Some(obs.problems.join("; ")),
    }
}

/// SHA-256 over everything in an observation, in a fixed length-prefixed layout. Equal hashes
/// mean an observation can be applied by only touching the asset's timestamps.
pub fn content_hash(obs: &AssetObservation) -> [u8; 32] {
    let mut buf = Vec::with_capacity(1024);
    let mut put = |bytes: &[u8]| {
        buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        buf.extend_from_slice(bytes);
    };
    put(obs.name.as_bytes());
    match &obs.endpoint {
        Endpoint::Tcp { host, port } => {
            put(b"tcp");
            put(host.as_bytes());
            put(&port.to_be_bytes());
        }
        Endpoint::Rtu { device } => {
            put(b"rtu");
            put(device.as_bytes());
        }
    }
    put(&[obs.unit_id]);
    put(status_name(&obs.status).as_bytes());
    if let PollStatus::Unreachable(why) = &obs.status {
        put(why.as_bytes());
    }
    put(ident_method_name(obs.identity.method).as_bytes());
    for (_, value) in obs.identity.fields() {
        match value {
            Some(v) => {
                put(b"1");
                put(v.as_bytes());
            }
            None => put(b"0"),
        }
    }
    put(&(obs.identity.other.len() as u32).to_be_bytes());
    for (id, value) in &obs.identity.other {
        put(&[*id]);
        put(value.as_bytes());
    }
    put(&(obs.blocks.len() as u32).to_be_bytes());
    for block in &obs.blocks {
        put(block.name.as_bytes());
        // The block hash covers kind, start and values (checked at ingest).
        put(&block.hash.0);
        if block.volatile {
            put(b"volatile");
        }
    }
    put(&(obs.problems.len() as u32).to_be_bytes());
    for p in &obs.problems {
        put(p.as_bytes());
    }
    // Identity evidence (serial, MAC) only when present, so hashes of observations without
    // it are what they were before it existed.
    if let Some(serial) = &obs.serial {
        put(b"serial");
        put(serial.as_bytes());
    }
    if let Some(mac) = &obs.mac {
        put(b"mac");
        put(mac.as_bytes());
    }
    Digest::of(&buf).0
}

/// The attributes this observation gives evidence for, in a stable order.
pub fn observed(obs: &AssetObservation) -> Vec<(String, Option<String>)> {
    let mut out = vec![
        ("name".to_owned(), Some(obs.name.clone())),
        (
            "status".to_owned(),
            Some(status_name(&obs.status).to_owned()),
        ),
    ];
    if !answered(&obs.status) {
        return out;
    }
    if obs.identity.method != IdentMethod::None {
        out.push((
            "ident_method".to_owned(),
            Some(ident_method_name(obs.identity.method).to_owned()),
        ));
        for (name, value) in obs.identity.fields() {
            out.push((name.to_owned(), value.map(str::to_owned)));
        }
        for (id, value) in &obs.identity.other {
            out.push((format!("object.0x{id:02x}"), Some(value.clone())));
        }
    }
    for block in &obs.blocks {
        out.push((format!("block.{}", block.name), Some(block_value(block))));
    }
    out
}

/// A block's attribute value: `{"hash":"<64 hex>","kind":"…","start":N,"values":[…]}`, written
/// directly (it is on the hot path of changed assets) in exactly the form `serde_json` gives.
pub fn block_value(block: &RegisterBlock) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(110 + block.values.len() * 6);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{{\"hash\":\"{}\",\"kind\":\"{}\",\"start\":{},\"values\":[",
        block.hash,
        block.kind.as_str(),
        block.start
    );
    for (i, v) in block.values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{v}");
    }
    out.push(']');
    if block.volatile {
        // Never judged as drift (see `judge.rs`).
        out.push_str(",\"volatile\":true");
    }
    out.push('}');
    out
}

/// Whether a change of this attribute is drift worth an `asset_changed` event (identity,
/// firmware or register content) rather than bookkeeping (`name`, `status`).
pub fn is_drift(attribute: &str) -> bool {
    !matches!(attribute, "name" | "status")
}

/// How a value appears in an event's detail: blocks by their hash, everything else as is.
pub fn event_value(attribute: &str, value: Option<&str>) -> serde_json::Value {
    let Some(value) = value else {
        return serde_json::Value::Null;
    };
    if attribute.starts_with("block.") {
        // Fast path for the form `block_value` writes; parse anything else.
        if let Some(hash) = value
            .strip_prefix("{\"hash\":\"")
            .and_then(|rest| rest.get(..64))
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return serde_json::Value::String(hash.to_owned());
        }
        if let Ok(parsed) = serde_json::from_str::<serde_json::Value>(value)
            && let Some(hash) = parsed.get("hash")
        {
            return hash.clone();
        }
    }
    serde_json::Value::String(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::model::{DeviceIdentity, RegisterKind};

    fn obs(status: PollStatus) -> AssetObservation {
        AssetObservation {
            name: "plc".into(),
            endpoint: Endpoint::Tcp {
                host: "10.0.0.1".into(),
                port: 502,
            },
            unit_id: 1,
            status,
            identity: DeviceIdentity {
                method: IdentMethod::ReadDeviceIdentification,
                vendor_name: Some("ACME".into()),
                revision: Some("1.0".into()),
                ..DeviceIdentity::default()
            },
            blocks: vec![RegisterBlock::new(
                "sp",
                RegisterKind::Holding,
                100,
                vec![1, 2],
            )],
            problems: vec![],
            profile: None,
            serial: None,
            mac: None,
        }
    }

    #[test]
    fn unreachable_reports_only_name_and_status() {
        let mut o = obs(PollStatus::Unreachable("timeout".into()));
        o.identity = DeviceIdentity::default();
        o.blocks.clear();
        let names: Vec<_> = observed(&o).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["name", "status"]);
        assert_eq!(problem_text(&o).as_deref(), Some("timeout"));
    }

    #[test]
    fn answered_reports_identity_and_blocks() {
        let attrs = observed(&obs(PollStatus::Ok));
        let get = |n: &str| attrs.iter().find(|(a, _)| a == n).map(|(_, v)| v.clone());
        assert_eq!(get("vendor_name"), Some(Some("ACME".into())));
        assert_eq!(get("product_code"), Some(None));
        let block = get("block.sp").flatten().unwrap();
        assert!(block.contains("\"values\":[1,2]"), "{block}");
        assert_eq!(
            event_value("block.sp", Some(&block)),
            serde_json::json!(obs(PollStatus::Ok).blocks[0].hash.to_string())
        );
    }

    #[test]
    fn block_value_is_what_serde_json_writes() {
        let block = RegisterBlock::new("sp", RegisterKind::Coil, 7, vec![0, 1, 65535]);
        let reference = serde_json::json!({
            "hash": block.hash.to_string(),
            "kind": "coil",
            "start": 7,
            "values": [0, 1, 65535],
        })
        .to_string();
        assert_eq!(block_value(&block), reference);
        let empty = RegisterBlock::new("e", RegisterKind::Input, 0, vec![]);
        assert!(block_value(&empty).ends_with("\"values\":[]}"));
        assert_eq!(
            event_value("block.sp", Some(&reference)),
            serde_json::json!(block.hash.to_string())
        );
        // Not our form: still understood.
        let other = format!("{{\"kind\":\"coil\",\"hash\":\"{}\"}}", block.hash);
        assert_eq!(
            event_value("block.sp", Some(&other)),
            serde_json::json!(block.hash.to_string())
        );
    }

    #[test]
    fn content_hash_sees_every_change() {
        let base = content_hash(&obs(PollStatus::Ok));
        assert_eq!(base, content_hash(&obs(PollStatus::Ok)));
        let mut o = obs(PollStatus::Ok);
        o.blocks[0] = RegisterBlock::new("sp", RegisterKind::Holding, 100, vec![1, 3]);
        assert_ne!(base, content_hash(&o));
        let mut o = obs(PollStatus::Ok);
        o.identity.revision = Some("1.1".into());
        assert_ne!(base, content_hash(&o));
        assert_ne!(base, content_hash(&obs(PollStatus::Partial)));
    }
}
