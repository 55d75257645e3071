//! `outpost-agent gateway [--json]`: the gateway's self-inventory as a text table or as the
//! JSON document `outpost.gateway.v1` (the facts exactly as a summary would carry them).

use std::fmt::Write as _;

use outpost_proto::model::HostFacts;
use serde::Serialize;

/// The JSON schema name of [`json`].
pub const SCHEMA: &str = "outpost.gateway.v1";

#[derive(Serialize)]
struct Document<'a> {
    schema: &'static str,
    #[serde(flatten)]
    facts: &'a HostFacts,
}

/// The facts as pretty JSON, with the schema name.
pub fn json(facts: &HostFacts) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&Document {
        schema: SCHEMA,
        facts,
    })
}

fn or_dash(v: Option<&str>) -> &str {
    v.unwrap_or("-")
}

/// The facts as text tables.
pub fn table(f: &HostFacts) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "hostname     {}", or_dash(f.hostname.as_deref()));
    let _ = writeln!(
        out,
        "os           {} {}",
        or_dash(f.os_name.as_deref()),
        or_dash(f.os_version.as_deref())
    );
    let _ = writeln!(out, "kernel       {}", or_dash(f.kernel_version.as_deref()));
    let _ = writeln!(
        out,
        "cpu          {} x {} ({})",
        f.cpu_count,
        or_dash(f.cpu_model.as_deref()),
        f.cpu_arch
    );
    let _ = writeln!(out, "memory       {} MiB", f.memory_bytes / (1024 * 1024));
    let _ = writeln!(out, "boot time    {} (Unix seconds)", f.boot_time);
    let _ = writeln!(out, "agent        {}", f.agent_version);

    let _ = writeln!(out, "\ninterfaces ({})", f.interfaces.len());
    for i in &f.interfaces {
        let _ = writeln!(
            out,
            "  {:<16} {:<17} {}",
            i.name,
            or_dash(i.mac.as_deref()),
            i.addresses.join(" ")
        );
    }
    let _ = writeln!(out, "\ndisks ({})", f.disks.len());
    for d in &f.disks {
        let _ = writeln!(
            out,
            "  {:<24} {:<8} {} MiB",
            d.mount_point,
            d.file_system,
            d.total_bytes / (1024 * 1024)
        );
    }
    let listening = if f
        .switched_off
        .contains(&outpost_proto::model::HostList::Listening)
    {
        "switched off".to_owned()
    } else {
        f.listening.len().to_string()
    };
    let _ = writeln!(out, "\nlistening ({listening})");
    for s in &f.listening {
        let _ = writeln!(
            out,
            "  {:<4} {:<40} {:>5}  {}",
            s.protocol.as_str(),
            s.address,
            s.port,
            or_dash(s.exe.as_deref())
        );
    }
    let executables = if f
        .switched_off
        .contains(&outpost_proto::model::HostList::Executables)
    {
        "switched off".to_owned()
    } else {
        f.executables.len().to_string()
    };
    let _ = writeln!(out, "\nexecutables ({executables})");
    for e in &f.executables {
        let _ = writeln!(out, "  {:<16} {}", e.name, or_dash(e.exe.as_deref()));
    }
    if !f.truncated.is_empty() {
        let names: Vec<&str> = f.truncated.iter().map(|l| l.as_str()).collect();
        let _ = writeln!(out, "\ncut at their caps: {}", names.join(", "));
    }
    if !f.problems.is_empty() {
        let _ = writeln!(out, "\nproblems");
        for p in &f.problems {
            let _ = writeln!(out, "  {p}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::model::{HostExecutable, HostList, ListeningSocket, SocketProtocol};

    fn facts() -> HostFacts {
        HostFacts {
            hostname: Some("gw".into()),
            cpu_arch: "aarch64".into(),
            cpu_count: 4,
            listening: vec![ListeningSocket {
                protocol: SocketProtocol::Tcp,
                port: 502,
                address: "0.0.0.0".into(),
                exe: Some("/usr/sbin/plc-gw".into()),
            }],
            executables: vec![HostExecutable {
                name: "plc-gw".into(),
                exe: None,
            }],
            switched_off: vec![],
            ..HostFacts::default()
        }
    }

    #[test]
    fn table_lists_sockets_and_executables() {
        let text = table(&facts());
        assert!(text.contains("listening (1)"), "{text}");
        assert!(text.contains("/usr/sbin/plc-gw"), "{text}");
        assert!(text.contains("plc-gw           -"), "{text}");
        let mut off = facts();
        off.listening.clear();
        off.switched_off = vec![HostList::Listening];
        assert!(table(&off).contains("listening (switched off)"));
    }

    #[test]
    fn json_names_its_schema_and_round_trips() {
        let text = json(&facts()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["listening"][0]["port"], 502);
        let back: HostFacts = serde_json::from_value(v).unwrap();
        assert_eq!(back, facts());
    }
}
