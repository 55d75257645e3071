//! Configuration-item keys: the stable identity of every CI in the CMDB.
//!
//! | CI                | key                                              |
//! |-------------------|--------------------------------------------------|
//! | field device      | `zone/<zone>/modbus/<endpoint>/unit/<unit_id>`   |
//! | zone              | `zone/<zone>`                                    |
//! | agent             | `agent/<agent_id>`                               |
//! | gateway (host)    | `gateway/<agent_id>`                             |
//!
//! `<endpoint>` is the endpoint as the agent reports it (`tcp://10.20.0.11:502`,
//! `tcp://[fd00::1]:502`, `rtu:///dev/ttyS0`). A field device is therefore identified by where
//! it is reached, not by what it is: replacing a PLC at the same address keeps the CI (and
//! records the identity change in its history). A later change reconciles on vendor + serial or
//! MAC; it only needs to change [`asset`], the one place the rule lives.

use outpost_proto::ZoneId;
use outpost_proto::model::Endpoint;

/// The key of a field device (one unit id at one endpoint in one zone).
pub fn asset(zone: &ZoneId, endpoint: &Endpoint, unit_id: u8) -> String {
    format!("zone/{zone}/modbus/{endpoint}/unit/{unit_id}")
}

/// The key of a zone CI.
pub fn zone(zone: &str) -> String {
    format!("zone/{zone}")
}

/// The key of an agent CI.
pub fn agent(agent: &str) -> String {
    format!("agent/{agent}")
}

/// The key of the gateway host an agent runs on.
pub fn gateway(agent: &str) -> String {
    format!("gateway/{agent}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::AgentId;

    #[test]
    fn keys_follow_the_documented_rule() {
        let zone_id = ZoneId::new("cell-1").unwrap();
        let tcp = Endpoint::Tcp {
            host: "10.20.0.11".into(),
            port: 502,
        };
        assert_eq!(
            asset(&zone_id, &tcp, 3),
            "zone/cell-1/modbus/tcp://10.20.0.11:502/unit/3"
        );
        let rtu = Endpoint::Rtu {
            device: "/dev/ttyS0".into(),
        };
        assert_eq!(
            asset(&zone_id, &rtu, 1),
            "zone/cell-1/modbus/rtu:///dev/ttyS0/unit/1"
        );
        let agent_id = AgentId::new("gw-1").unwrap();
        assert_eq!(agent(agent_id.as_str()), "agent/gw-1");
        assert_eq!(gateway("gw-1"), "gateway/gw-1");
        assert_eq!(zone("cell-1"), "zone/cell-1");
    }
}
