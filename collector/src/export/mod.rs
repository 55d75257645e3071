//! Exports of the CMDB for ITSM tools (`outpost-collector export`); the field mapping is in
//! `docs/exports.md`.
//!
//! - [`servicenow`]: a ServiceNow Identification and Reconciliation (IRE) payload
//!   (`items`/`relations`, OT classes, firmware, `sys_object_source_info`).
//! - [`servicenow_post`]: that payload POSTed in batches to an instance (auth, retries).
//! - [`csv`]: one row per CI (field devices and gateways), spreadsheet-safe.
//! - [`cyclonedx`]: a CycloneDX 1.6 JSON BOM of hardware (`device` components with their
//!   `firmware`).
//!
//! All three read the same [`Inventory`]: the CMDB's field devices and gateways, optionally of
//! one zone.

pub mod csv;
pub mod cyclonedx;
pub mod servicenow;
pub mod servicenow_post;

use crate::cmdb::query::{AgentRow, AssetRow, GatewayRow};
use crate::cmdb::{Cmdb, CmdbError};

/// The name Outpost gives itself as a data source.
pub const SOURCE_NAME: &str = "Outpost";

/// A gateway with the agent that runs on it.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub agent_id: String,
    pub row: GatewayRow,
}

/// What an export covers.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub assets: Vec<AssetRow>,
    pub gateways: Vec<Gateway>,
}

impl Inventory {
    /// Reads every CI, or those of `zone`.
    pub fn read(cmdb: &Cmdb, zone: Option<&str>) -> Result<Inventory, CmdbError> {
        let keep = |z: &str| zone.is_none_or(|want| want == z);
        let assets = cmdb
            .assets()?
            .into_iter()
            .filter(|a| keep(&a.zone))
            .collect();
        let gateways = cmdb
            .agents()?
            .into_iter()
            .filter_map(|a: AgentRow| {
                a.gateway.map(|row| Gateway {
                    agent_id: a.agent_id,
                    row,
                })
            })
            .filter(|g| keep(&g.row.zone))
            .collect();
        Ok(Inventory { assets, gateways })
    }
}

/// The host part of an endpoint like `tcp://10.0.0.1:502` or `tcp://[fd00::1]:502`; `None`
/// for serial endpoints.
pub fn endpoint_host(endpoint: &str) -> Option<&str> {
    let rest = endpoint.strip_prefix("tcp://")?;
    if let Some(v6) = rest.strip_prefix('[') {
        return v6.split(']').next();
    }
    rest.rsplit_once(':').map(|(h, _)| h)
}

/// The port of a TCP endpoint.
pub fn endpoint_port(endpoint: &str) -> Option<u16> {
    endpoint
        .strip_prefix("tcp://")?
        .rsplit_once(':')?
        .1
        .parse()
        .ok()
}

/// The ServiceNow OT class for a field device, from what it says it is: `cmdb_ci_ot_plc` when
/// its product or model name says PLC/CPU/controller, `cmdb_ci_ot_hmi` for HMI/panel,
/// otherwise `cmdb_ci_ot_field_device`.
pub fn ot_class(a: &AssetRow) -> &'static str {
    let text = [&a.product_name, &a.model_name, &a.product_code]
        .iter()
        .filter_map(|v| v.as_deref())
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase();
    let has = |w: &str| {
        text.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|t| t == w)
    };
    if has("plc") || has("cpu") || text.contains("controller") {
        "cmdb_ci_ot_plc"
    } else if has("hmi") || text.contains("panel") {
        "cmdb_ci_ot_hmi"
    } else {
        "cmdb_ci_ot_field_device"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(endpoint_host("tcp://10.0.0.1:502"), Some("10.0.0.1"));
        assert_eq!(endpoint_host("tcp://[fd00::1]:502"), Some("fd00::1"));
        assert_eq!(endpoint_host("rtu:///dev/ttyS0"), None);
        assert_eq!(endpoint_port("tcp://[fd00::1]:502"), Some(502));
    }
}
