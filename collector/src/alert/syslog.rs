//! RFC 5424 syslog messages for alerts, and their framing for UDP (RFC 5426: one message per
//! datagram) and TCP (RFC 6587: octet counting, `LEN SP MSG`).
//!
//! `<PRI>1 TIMESTAMP HOSTNAME outpost-collector PROCID MSGID [outpost@32473 …] MSG` with
//! facility 4 (security/authorization), MSGID the alert kind, structured data naming the alert,
//! asset, zone, agent and the envelope evidence, and MSG the OCSF event as one JSON line.
//! 32473 is the private enterprise number RFC 5612 reserves for documentation; a site with its
//! own number can map the SD-ID in its SIEM.

use crate::cmdb::alerts::AlertRow;
use crate::time::rfc3339;

/// Facility 4: security/authorization messages.
const FACILITY: u8 = 4;
/// Largest message sent in one UDP datagram; a larger OCSF body is replaced by a summary line
/// (the full alert stays in the CMDB and the OCSF file).
pub const MAX_UDP_MESSAGE: usize = 8192;

/// Syslog severity for an OCSF severity id: high → 2 (critical), medium → 4 (warning),
/// low → 5 (notice), anything else → 6 (informational).
pub fn severity(ocsf_severity_id: i64) -> u8 {
    match ocsf_severity_id {
        5.. => 1,
        4 => 2,
        3 => 4,
        2 => 5,
        _ => 6,
    }
}

/// Escapes an SD-PARAM value (`"`, `\` and `]`).
fn param(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A header field: printable US-ASCII without spaces, at most `max` characters, `-` if empty.
fn header_field(value: &str, max: usize) -> String {
    let clean: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if clean.is_empty() { "-".into() } else { clean }
}

/// This host's name for the HOSTNAME field (`-` when unknown).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| header_field(h.trim(), 255))
        .unwrap_or_else(|_| "-".into())
}

/// The RFC 5424 message for `alert` with `body` (the OCSF JSON) as MSG.
pub fn format(alert: &AlertRow, body: &str, host: &str) -> String {
    let pri = u16::from(FACILITY) * 8 + u16::from(severity(alert.severity_id));
    format!(
        "<{pri}>1 {ts} {host} outpost-collector {pid} {msgid} [outpost@32473 alert_id=\"{id}\" \
         category=\"{cat}\" asset=\"{asset}\" name=\"{name}\" zone=\"{zone}\" agent=\"{agent}\" \
         envelope_seq=\"{seq}\" envelope_hash=\"{hash}\"] {body}",
        ts = rfc3339(alert.raised_at.ms()),
        host = header_field(host, 255),
        pid = std::process::id(),
        msgid = header_field(&alert.kind, 32),
        id = alert.alert_id,
        cat = param(&alert.category),
        asset = param(&alert.asset),
        name = param(&alert.asset_name),
        zone = param(&alert.zone),
        agent = param(&alert.agent_id),
        seq = alert.envelope_seq,
        hash = param(&alert.envelope_hash),
    )
}

/// The message for one UDP datagram: the full one if it fits, else a summary.
pub fn format_udp(alert: &AlertRow, ocsf: &str, host: &str) -> String {
    let full = format(alert, ocsf, host);
    if full.len() <= MAX_UDP_MESSAGE {
        return full;
    }
    let summary = format!(
        "{} (OCSF body of {} bytes too large for one datagram; see alert {} in the CMDB)",
        super::ocsf::message(alert),
        ocsf.len(),
        alert.alert_id
    );
    format(alert, &summary, host)
}

/// RFC 6587 octet-counting frame for TCP.
pub fn frame_tcp(message: &str) -> Vec<u8> {
    let mut out = format!("{} ", message.len()).into_bytes();
    out.extend_from_slice(message.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    fn alert() -> AlertRow {
        AlertRow {
            alert_id: 3,
            raised_at: Timestamp(0),
            kind: "unauthorised_change".into(),
            category: "identity".into(),
            severity_id: 4,
            asset: "zone/z/modbus/tcp://10.0.0.1:502/unit/1".into(),
            asset_name: "plc \"one\"]".into(),
            zone: "z".into(),
            agent_id: "gw".into(),
            agent_time: Timestamp(0),
            envelope_seq: 9,
            envelope_hash: "00".repeat(32),
            detail: serde_json::json!({}),
            delivered_to: vec![],
        }
    }

    #[test]
    fn rfc5424_header_and_escaped_structured_data() {
        let m = format(&alert(), "{}", "collector host");
        // facility 4 * 8 + severity 2 (high)
        assert!(
            m.starts_with("<34>1 1970-01-01T00:00:00.000Z collectorhost outpost-collector "),
            "{m}"
        );
        assert!(
            m.contains(" unauthorised_change [outpost@32473 alert_id=\"3\""),
            "{m}"
        );
        assert!(m.contains("name=\"plc \\\"one\\\"\\]\""), "{m}");
        assert!(m.contains("envelope_seq=\"9\""), "{m}");
        assert!(m.ends_with("] {}"), "{m}");
    }

    #[test]
    fn oversized_udp_body_becomes_a_summary() {
        let big = "x".repeat(MAX_UDP_MESSAGE);
        let m = format_udp(&alert(), &big, "h");
        assert!(m.len() <= MAX_UDP_MESSAGE);
        assert!(m.contains("too large for one datagram"), "{m}");
    }

    #[test]
    fn tcp_frames_count_octets() {
        assert_eq!(frame_tcp("<34>1 x"), b"7 <34>1 x");
    }
}
