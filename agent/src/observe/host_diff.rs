//! Gateway host changes: the differences between two [`HostFacts`].
//!
//! Compared: OS name and version, kernel version, hostname; interfaces (`name mac`: added,
//! vanished, MAC changed); listening sockets (opened, closed); program executables (only ones
//! never seen before on this gateway, see [`new_programs`]: processes come and go, a program
//! that never ran here before is the signal). A list the agent had to cut at
//! its cap (`truncated`) never reports vanished entries. Memory, boot time, disks and the
//! agent's own version are not compared here (the snapshot carries them).

use std::collections::{BTreeMap, BTreeSet};

use outpost_proto::changes::FieldChange;
use outpost_proto::model::{HostFacts, HostList, ListeningSocket};

/// The changes from `before` to `after`.
pub fn diff(before: &HostFacts, after: &HostFacts) -> Vec<FieldChange> {
    let mut out = Vec::new();
    let mut field = |field: &str, b: &Option<String>, a: &Option<String>| {
        if b != a {
            out.push(FieldChange {
                field: field.to_owned(),
                before: b.clone(),
                after: a.clone(),
            });
        }
    };
    field("os_name", &before.os_name, &after.os_name);
    field("os_version", &before.os_version, &after.os_version);
    field(
        "kernel_version",
        &before.kernel_version,
        &after.kernel_version,
    );
    field("hostname", &before.hostname, &after.hostname);

    // A list cut at its cap, or switched off in `[gateway]`, says nothing about what is missing
    // from it.
    let cut = |f: &HostFacts, l: HostList| f.truncated.contains(&l) || f.switched_off.contains(&l);
    let off = |f: &HostFacts, l: HostList| f.switched_off.contains(&l);
    let interfaces = |f: &HostFacts| -> BTreeMap<String, String> {
        f.interfaces
            .iter()
            .map(|i| {
                let mac = i.mac.clone().unwrap_or_else(|| "-".into());
                (i.name.clone(), format!("{} {mac}", i.name))
            })
            .collect()
    };
    let (ib, ia) = (interfaces(before), interfaces(after));
    for (name, b) in &ib {
        match ia.get(name) {
            Some(a) if a != b => out.push(change("interface", Some(b), Some(a))),
            None if !cut(after, HostList::Interfaces) => {
                out.push(change("interface", Some(b), None));
            }
            _ => {}
        }
    }
    for (name, a) in &ia {
        if !ib.contains_key(name) {
            out.push(change("interface", None, Some(a)));
        }
    }

    let sockets = |f: &HostFacts| -> BTreeSet<String> { f.listening.iter().map(socket).collect() };
    let (sb, sa) = (sockets(before), sockets(after));
    if !cut(after, HostList::Listening) {
        for s in sb.difference(&sa) {
            out.push(change("listening", Some(s), None));
        }
    }
    // A list switched back on is a new baseline, not a burst of "opened" ports.
    if !off(before, HostList::Listening) && !off(after, HostList::Listening) {
        for s in sa.difference(&sb) {
            out.push(change("listening", None, Some(s)));
        }
    }

    out
}

/// Most programs remembered as known on one gateway; past it, new ones are no longer reported
/// (logged once by the observer).
pub const MAX_KNOWN_PROGRAMS: usize = 4096;

/// The program executables (path, or name when the path is hidden) in `facts`.
pub fn programs(facts: &HostFacts) -> BTreeSet<String> {
    facts
        .executables
        .iter()
        .map(|e| e.exe.clone().unwrap_or_else(|| e.name.clone()))
        .collect()
}

/// Programs in `after` never seen before (not in `known`), as `executable` changes, and
/// `known` extended with them (up to [`MAX_KNOWN_PROGRAMS`]). A program that is merely not
/// running now is not a change: short-lived processes (cron jobs, shells) come and go.
pub fn new_programs(after: &HostFacts, known: &mut BTreeSet<String>) -> Vec<FieldChange> {
    let mut out = Vec::new();
    for p in programs(after) {
        if known.contains(&p) {
            continue;
        }
        if known.len() >= MAX_KNOWN_PROGRAMS {
            break;
        }
        out.push(change("executable", None, Some(&p)));
        known.insert(p);
    }
    out
}

fn change(field: &str, before: Option<&String>, after: Option<&String>) -> FieldChange {
    FieldChange {
        field: field.to_owned(),
        before: before.cloned(),
        after: after.cloned(),
    }
}

/// `tcp/502 0.0.0.0 /usr/sbin/x`.
fn socket(s: &ListeningSocket) -> String {
    match &s.exe {
        Some(exe) => format!("{}/{} {} {exe}", s.protocol.as_str(), s.port, s.address),
        None => format!("{}/{} {}", s.protocol.as_str(), s.port, s.address),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::model::{HostExecutable, NetInterface, SocketProtocol};

    fn facts() -> HostFacts {
        HostFacts {
            kernel_version: Some("6.1.0".into()),
            interfaces: vec![NetInterface {
                name: "eth0".into(),
                mac: Some("02:00:00:00:00:01".into()),
                addresses: vec![],
            }],
            listening: vec![ListeningSocket {
                protocol: SocketProtocol::Tcp,
                port: 22,
                address: "0.0.0.0".into(),
                exe: None,
            }],
            executables: vec![HostExecutable {
                name: "sshd".into(),
                exe: Some("/usr/sbin/sshd".into()),
            }],
            ..HostFacts::default()
        }
    }

    #[test]
    fn unchanged_facts_have_no_changes() {
        let mut later = facts();
        later.memory_bytes = 12345; // not compared
        later.boot_time = 99;
        assert!(diff(&facts(), &later).is_empty());
    }

    #[test]
    fn each_category_is_reported() {
        let mut later = facts();
        later.kernel_version = Some("6.1.1".into());
        later.interfaces[0].mac = Some("02:00:00:00:00:02".into());
        later.listening.push(ListeningSocket {
            protocol: SocketProtocol::Tcp,
            port: 4444,
            address: "0.0.0.0".into(),
            exe: Some("/tmp/nc".into()),
        });
        let d = diff(&facts(), &later);
        let fields: Vec<&str> = d.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["kernel_version", "interface", "listening"]);
        assert_eq!(d[2].after.as_deref(), Some("tcp/4444 0.0.0.0 /tmp/nc"));
        assert_eq!(d[2].before, None);
    }

    #[test]
    fn a_program_is_new_once_and_its_exit_is_no_change() {
        let mut known = programs(&facts());
        let mut later = facts();
        later.executables.push(HostExecutable {
            name: "nc".into(),
            exe: Some("/tmp/nc".into()),
        });
        let d = new_programs(&later, &mut known);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].after.as_deref(), Some("/tmp/nc"));
        assert!(new_programs(&facts(), &mut known).is_empty(), "it exited");
        assert!(new_programs(&later, &mut known).is_empty(), "it runs again");
    }

    #[test]
    fn a_closed_port_is_reported_unless_the_list_was_cut() {
        let mut later = facts();
        later.listening.clear();
        assert_eq!(diff(&facts(), &later).len(), 1);
        later.truncated.push(HostList::Listening);
        assert!(diff(&facts(), &later).is_empty());
    }

    #[test]
    fn a_list_switched_off_or_back_on_is_no_change() {
        let mut off = facts();
        off.listening.clear();
        off.switched_off.push(HostList::Listening);
        assert!(
            diff(&facts(), &off).is_empty(),
            "switched off: nothing closed"
        );
        assert!(
            diff(&off, &facts()).is_empty(),
            "switched on: nothing opened"
        );
    }
}
