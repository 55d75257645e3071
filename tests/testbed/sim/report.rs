//! The JSON description of a running plant (what `outpost-sim --json` prints and writes to its
//! ready file), so a demo or test can write agent configs from it.

use serde_json::{Value, json};

use super::plant::SimDevice;
use super::plants::CONFIG_START;
use super::spec::Behaviour;

/// Schema name of [`devices_json`]'s document.
pub const SCHEMA: &str = "outpost-sim/devices/v1";

fn behaviour(b: Behaviour) -> String {
    match b {
        Behaviour::Normal => "normal".into(),
        Behaviour::Silent => "silent".into(),
        Behaviour::NoDeviceId => "no_device_id".into(),
        Behaviour::Slow(d) => format!("slow:{}ms", d.as_millis()),
        Behaviour::Busy(n) => format!("busy:{n}"),
        Behaviour::BadFc43(f) => format!("bad_fc43:{f:?}"),
    }
}

fn block_name(kind: &str, start: u16) -> &'static str {
    match kind {
        "holding" if start >= CONFIG_START => "config",
        "holding" => "holding",
        "input" => "process",
        "coil" => "coils",
        _ => "discrete",
    }
}

/// `{"schema": .., "devices": [{name, address, host, port, unit_ids, vendor_name,
/// product_code, revision, behaviour, blocks: [{name, kind, start, count}]}]}`.
/// Block kinds use the agent config's words: holding, input, coil, discrete_input.
pub fn devices_json(devices: &[SimDevice]) -> Value {
    let devices: Vec<Value> = devices
        .iter()
        .map(|d| {
            let s = &d.spec;
            let mut blocks = Vec::new();
            let mut add = |kind: &str, start: u16, count: usize| {
                blocks.push(json!({
                    "name": block_name(kind, start),
                    "kind": if kind == "discrete" { "discrete_input" } else { kind },
                    "start": start,
                    "count": count,
                }));
            };
            s.holding
                .iter()
                .for_each(|(a, v)| add("holding", *a, v.len()));
            s.input.iter().for_each(|(a, v)| add("input", *a, v.len()));
            s.coils.iter().for_each(|(a, v)| add("coil", *a, v.len()));
            s.discrete
                .iter()
                .for_each(|(a, v)| add("discrete", *a, v.len()));
            json!({
                "name": d.name,
                "address": d.addr.to_string(),
                "host": d.addr.ip().to_string(),
                "port": d.addr.port(),
                "unit_ids": d.unit_ids,
                "vendor_name": s.identity.vendor_name,
                "product_code": s.identity.product_code,
                "revision": s.identity.revision,
                "model_name": s.identity.model_name,
                "behaviour": behaviour(s.behaviour),
                "blocks": blocks,
            })
        })
        .collect();
    json!({ "schema": SCHEMA, "devices": devices })
}
