//! Configuration-item keys: the stable identity of every CI in the CMDB.
//!
//! | CI                              | key                                                   |
//! |---------------------------------|-------------------------------------------------------|
//! | field device with a serial      | `zone/<zone>/serial/<vendor>/<product>/<serial>`      |
//! | field device with a MAC         | `zone/<zone>/mac/<mac>/unit/<unit_id>`                |
//! | any other field device          | `zone/<zone>/modbus/<endpoint>/unit/<unit_id>`        |
//! | zone                            | `zone/<zone>`                                         |
//! | agent                           | `agent/<agent_id>`                                    |
//! | gateway (host)                  | `gateway/<agent_id>`                                  |
//!
//! `<endpoint>` is the endpoint as the agent reports it (`tcp://10.20.0.11:502`,
//! `tcp://[fd00::1]:502`, `rtu:///dev/ttyS0`). A field device's key rests on the strongest
//! identity it gives, strongest first: vendor + product code + serial number, then its MAC
//! address (with the unit id: several units behind one gateway share a MAC), then where it is
//! reached. Which key an observation gets, and what happens when a CI gains a stronger one, is
//! decided in [`super::reconcile`]; the key forms live here. `/` and `%` inside a vendor,
//! product or serial are written `%2F` and `%25`, so a key always splits the same way.

use outpost_proto::ZoneId;
use outpost_proto::model::Endpoint;

/// The key of a field device (one unit id at one endpoint in one zone).
pub fn asset(zone: &ZoneId, endpoint: &Endpoint, unit_id: u8) -> String {
    format!("zone/{zone}/modbus/{endpoint}/unit/{unit_id}")
}

/// The key of a field device identified by vendor, product code and serial number.
pub fn asset_serial(zone: &ZoneId, vendor: &str, product: &str, serial: &str) -> String {
    format!(
        "zone/{zone}/serial/{}/{}/{}",
        escape(vendor),
        escape(product),
        escape(serial)
    )
}

/// The key of a field device identified by its MAC address (normalised `aa:bb:cc:dd:ee:ff`)
/// and unit id.
pub fn asset_mac(zone: &ZoneId, mac: &str, unit_id: u8) -> String {
    format!("zone/{zone}/mac/{mac}/unit/{unit_id}")
}

/// `%` → `%25`, `/` → `%2F`: a key segment that cannot be mistaken for two.
fn escape(segment: &str) -> String {
    segment.replace('%', "%25").replace('/', "%2F")
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
        assert_eq!(
            asset_serial(&zone_id, "ACME", "PLC-9", "SN 1/2%"),
            "zone/cell-1/serial/ACME/PLC-9/SN 1%2F2%25"
        );
        assert_eq!(
            asset_mac(&zone_id, "02:00:00:00:00:01", 3),
            "zone/cell-1/mac/02:00:00:00:00:01/unit/3"
        );
        let agent_id = AgentId::new("gw-1").unwrap();
        assert_eq!(agent(agent_id.as_str()), "agent/gw-1");
        assert_eq!(gateway("gw-1"), "gateway/gw-1");
        assert_eq!(zone("cell-1"), "zone/cell-1");
    }
}
