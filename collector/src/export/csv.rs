//! CSV: one row per CI, RFC 4180 (the `csv` crate). A cell that a spreadsheet would run as a
//! formula (starting with `=`, `+`, `-`, `@`, tab or CR) is prefixed with `'`: device names and
//! identification strings come from the plant and are not trusted.

use super::Inventory;

/// The header row.
pub const COLUMNS: &[&str] = &[
    "ci_key",
    "class",
    "zone",
    "agent_id",
    "name",
    "endpoint",
    "ip_address",
    "unit_id",
    "status",
    "vendor_name",
    "product_code",
    "firmware_revision",
    "product_name",
    "model_name",
    "user_application_name",
    "os_name",
    "os_version",
    "first_seen",
    "last_seen",
    "stale_since",
    "serial_number",
    "mac_address",
    "identity_basis",
    "replaced_by",
];

fn safe(cell: &str) -> String {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}"),
        _ => cell.to_owned(),
    }
}

/// Renders the inventory.
pub fn render(inv: &Inventory) -> Result<Vec<u8>, ::csv::Error> {
    let mut w = ::csv::Writer::from_writer(Vec::new());
    w.write_record(COLUMNS)?;
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    for a in &inv.assets {
        let row = [
            a.ci_key.clone(),
            super::ot_class(a).to_owned(),
            a.zone.clone(),
            a.agent_id.clone(),
            a.name.clone(),
            a.endpoint.clone(),
            super::endpoint_host(&a.endpoint)
                .unwrap_or_default()
                .to_owned(),
            a.unit_id.to_string(),
            a.status.clone(),
            o(&a.vendor_name),
            o(&a.product_code),
            o(&a.revision),
            o(&a.product_name),
            o(&a.model_name),
            o(&a.user_application_name),
            String::new(),
            String::new(),
            a.first_seen.to_string(),
            a.last_seen.map(|t| t.to_string()).unwrap_or_default(),
            a.stale_since.map(|t| t.to_string()).unwrap_or_default(),
            o(&a.serial_number),
            o(&a.mac_address),
            a.identity_basis.clone(),
            o(&a.replaced_by),
        ];
        w.write_record(row.iter().map(|c| safe(c)))?;
    }
    for g in &inv.gateways {
        let r = &g.row;
        let row = [
            r.ci_key.clone(),
            super::servicenow::gateway_class(r).to_owned(),
            r.zone.clone(),
            g.agent_id.clone(),
            r.hostname.clone().unwrap_or_else(|| g.agent_id.clone()),
            String::new(),
            super::servicenow::gateway_ip(r).unwrap_or_default(),
            String::new(),
            "ok".to_owned(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            o(&r.os_name),
            o(&r.os_version),
            r.first_seen.to_string(),
            r.last_seen.to_string(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ];
        w.write_record(row.iter().map(|c| safe(c)))?;
    }
    w.flush()?;
    w.into_inner()
        .map_err(|e| ::csv::Error::from(e.into_error()))
}
