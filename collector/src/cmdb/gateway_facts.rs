//! The gateway's self-inventory beyond the `gateways` columns: CPU model, disks, listening
//! sockets, program executables, and which lists were cut, switched off or had problems —
//! stored as gateway CI attributes (`gateway_attributes`) with history
//! (`gateway_attribute_history`), like a field device's attributes.
//!
//! For judgement ([`super::gateway_baseline`]) the two lists become one fact per item:
//! `listening tcp 0.0.0.0:502` → the owning executable, `executable /usr/sbin/sshd` → its
//! process name. A list the agent switched off (`switched_off`) is not overwritten: the CI keeps
//! the last list it reported, so "off" never reads as "everything vanished". What is judged:
//!
//! - a listening socket opened, closed, or owned by another executable (UDP sockets on
//!   ephemeral ports, [`EPHEMERAL_UDP`], are client sockets and never judged);
//! - a program executable never seen on this gateway before (`executables_seen`, the
//!   cumulative set, at most [`MAX_SEEN`]): a process that stopped is not a change, and a job
//!   that runs now and then (cron, logrotate) is reported the first time only — until the
//!   baseline is approved again, it stays in the drift.
//!
//! Memory, uptime, disks and problems are stored but never judged. A list cut at its cap
//! (`truncated`) is judged for additions only. A list is judged only once a baseline covering it
//! was approved (the `inventory` fact names the lists a set of facts covers), so upgrading a
//! collector does not turn every port of an already-approved gateway into an alert.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use outpost_proto::model::{HostExecutable, HostFacts, HostList, ListeningSocket, SocketProtocol};
use rusqlite::{Connection, OptionalExtension, params};

use super::apply::Writer;
use crate::time::sql_int;

/// UDP ports the Linux kernel hands out to unbound client sockets by default
/// (`net.ipv4.ip_local_port_range`): such sockets are stored but not judged.
pub const EPHEMERAL_UDP: RangeInclusive<u16> = 32768..=60999;

/// Most entries of the cumulative `executables_seen` set.
pub const MAX_SEEN: usize = 1024;

/// The attribute names stored for a gateway, in `gateway_attributes`.
pub const ATTRIBUTES: [&str; 8] = [
    "cpu_model",
    "disks",
    "listening",
    "executables",
    "executables_seen",
    "truncated",
    "switched_off",
    "problems",
];

/// Prefix of a per-socket judged fact.
pub const LISTENING: &str = "listening ";
/// Prefix of a per-executable judged fact.
pub const EXECUTABLE: &str = "executable ";
/// The judged fact naming which lists a set of facts covers (`executables listening`).
pub const INVENTORY: &str = "inventory";

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn list_or_none<T: serde::Serialize>(list: &[T]) -> Option<String> {
    (!list.is_empty()).then(|| json(&list))
}

/// Whether the agent collected its self-inventory lists at all. An agent older than the
/// self-inventory sends neither list; a current one always lists at least its own executable
/// unless `processes` is switched off. So an empty executables list that was not switched off
/// means "not collected" (both lists keep their stored values), not "nothing runs".
pub fn collected(g: &HostFacts) -> bool {
    !g.executables.is_empty() || g.switched_off.contains(&HostList::Executables)
}

/// The attributes this report sets over the `stored` ones; a list switched off (or not
/// collected) is left out, so the stored one stays.
pub fn attributes(
    g: &HostFacts,
    stored: &BTreeMap<String, String>,
) -> Vec<(&'static str, Option<String>)> {
    let mut out = vec![
        ("cpu_model", g.cpu_model.clone()),
        ("disks", list_or_none(&g.disks)),
    ];
    let collected = collected(g);
    if collected && !g.switched_off.contains(&HostList::Listening) {
        out.push(("listening", Some(json(&g.listening))));
    }
    if collected && !g.switched_off.contains(&HostList::Executables) {
        out.push(("executables", Some(json(&g.executables))));
        let mut seen: BTreeSet<HostExecutable> = stored
            .get("executables_seen")
            .and_then(|t| serde_json::from_str::<Vec<HostExecutable>>(t).ok())
            .unwrap_or_default()
            .into_iter()
            .collect();
        for e in &g.executables {
            if seen.len() >= MAX_SEEN {
                break;
            }
            seen.insert(e.clone());
        }
        out.push(("executables_seen", Some(json(&seen))));
    }
    out.push(("truncated", list_or_none(&g.truncated)));
    out.push(("switched_off", list_or_none(&g.switched_off)));
    out.push(("problems", list_or_none(&g.problems)));
    out
}

/// The stored attributes of a gateway (name → value).
pub fn stored(conn: &Connection, ci_key: &str) -> rusqlite::Result<BTreeMap<String, String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT attribute, value FROM gateway_attributes WHERE ci_key = ?1 AND value IS NOT NULL",
    )?;
    stmt.query_map([ci_key], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// `listening tcp 0.0.0.0:502`, `listening udp [::]:161`.
pub fn socket_fact(s: &ListeningSocket) -> String {
    let address = if s.address.contains(':') {
        format!("[{}]", s.address)
    } else {
        s.address.clone()
    };
    format!("{LISTENING}{} {address}:{}", s.protocol.as_str(), s.port)
}

/// `executable /usr/sbin/sshd`, or `executable (name) sshd` when the path was not visible.
pub fn executable_fact(e: &HostExecutable) -> String {
    match &e.exe {
        Some(path) => format!("{EXECUTABLE}{path}"),
        None => format!("{EXECUTABLE}(name) {}", e.name),
    }
}

fn judged_socket(s: &ListeningSocket) -> bool {
    !(s.protocol == SocketProtocol::Udp && EPHEMERAL_UDP.contains(&s.port))
}

/// Adds the per-item judged facts of these lists (`None` = not covered) and the
/// [`INVENTORY`] fact to `facts`.
pub fn add_item_facts(
    facts: &mut BTreeMap<String, Option<String>>,
    listening: Option<&[ListeningSocket]>,
    executables: Option<&[HostExecutable]>,
) {
    let mut covers = Vec::new();
    if let Some(list) = executables {
        covers.push(HostList::Executables.as_str());
        for e in list {
            facts.insert(executable_fact(e), Some(e.name.clone()));
        }
    }
    if let Some(list) = listening {
        covers.push(HostList::Listening.as_str());
        for s in list.iter().filter(|s| judged_socket(s)) {
            let owner = s.exe.clone().unwrap_or_else(|| "unknown owner".into());
            facts.insert(socket_fact(s), Some(owner));
        }
    }
    facts.insert(INVENTORY.into(), Some(covers.join(" ")));
}

/// The per-item facts stored for a gateway (from `gateway_attributes`).
pub fn add_stored_item_facts(
    facts: &mut BTreeMap<String, Option<String>>,
    attributes: &BTreeMap<String, String>,
) {
    let listening: Option<Vec<ListeningSocket>> = attributes
        .get("listening")
        .map(|t| serde_json::from_str(t).unwrap_or_default());
    let executables: Option<Vec<HostExecutable>> = attributes
        .get("executables_seen")
        .or_else(|| attributes.get("executables"))
        .map(|t| serde_json::from_str(t).unwrap_or_default());
    add_item_facts(facts, listening.as_deref(), executables.as_deref());
}

fn covers(facts: &BTreeMap<String, Option<String>>, list: HostList) -> bool {
    facts
        .get(INVENTORY)
        .cloned()
        .flatten()
        .is_some_and(|c| c.split(' ').any(|l| l == list.as_str()))
}

/// `base` and `current` reduced to what is judged between them, so that
/// `baseline::differences` of the two is the judged difference: per-item facts only for lists
/// both cover; sockets on both sides (opened, closed, owner changed; a truncated current list
/// is not read as closing anything); executables only when new.
pub fn comparable(
    base: &BTreeMap<String, Option<String>>,
    current: &BTreeMap<String, Option<String>>,
    current_truncated: &[HostList],
) -> (
    BTreeMap<String, Option<String>>,
    BTreeMap<String, Option<String>>,
) {
    let item = |k: &str| k.starts_with(LISTENING) || k.starts_with(EXECUTABLE) || k == INVENTORY;
    let mut b: BTreeMap<String, Option<String>> = base
        .iter()
        .filter(|(k, _)| !item(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut c: BTreeMap<String, Option<String>> = current
        .iter()
        .filter(|(k, _)| !item(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if covers(base, HostList::Listening) && covers(current, HostList::Listening) {
        let keys: BTreeSet<&String> = base
            .keys()
            .chain(current.keys())
            .filter(|k| k.starts_with(LISTENING))
            .collect();
        let cut = current_truncated.contains(&HostList::Listening);
        for k in keys {
            let before = base.get(k).cloned().flatten();
            let mut now = current.get(k).cloned().flatten();
            if cut && now.is_none() {
                now = before.clone();
            }
            b.insert(k.clone(), before);
            c.insert(k.clone(), now);
        }
    }
    if covers(base, HostList::Executables) && covers(current, HostList::Executables) {
        for (k, v) in current.iter().filter(|(k, _)| k.starts_with(EXECUTABLE)) {
            if !base.contains_key(k) {
                b.insert(k.clone(), None);
                c.insert(k.clone(), v.clone());
            }
        }
    }
    (b, c)
}

/// Whether a judged fact is one of the self-inventory's (an alert in category `gateway`).
pub fn is_inventory_fact(name: &str) -> bool {
    name.starts_with(LISTENING) || name.starts_with(EXECUTABLE)
}

impl Writer<'_, '_> {
    /// Writes the changed self-inventory attributes of the gateway with their history.
    pub(super) fn gateway_attributes(
        &mut self,
        ci_key: &str,
        g: &HostFacts,
    ) -> rusqlite::Result<()> {
        let stored = stored(self.db, ci_key)?;
        for (name, value) in attributes(g, &stored) {
            let old: Option<Option<String>> = self
                .db
                .prepare_cached(
                    "SELECT value FROM gateway_attributes WHERE ci_key = ?1 AND attribute = ?2",
                )?
                .query_row([ci_key, name], |r| r.get(0))
                .optional()?;
            if old.as_ref() == Some(&value) || (old.is_none() && value.is_none()) {
                continue;
            }
            self.db
                .prepare_cached(
                    "INSERT INTO gateway_attributes (ci_key, attribute, value, updated_at_ms)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (ci_key, attribute) DO UPDATE SET value = excluded.value,
                         updated_at_ms = excluded.updated_at_ms",
                )?
                .execute(params![ci_key, name, value, self.now])?;
            self.db
                .prepare_cached(
                    "INSERT INTO gateway_attribute_history (ci_key, attribute, old_value,
                         new_value, observed_at_ms, agent_id, envelope_seq, envelope_hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    ci_key,
                    name,
                    old.flatten(),
                    value,
                    self.now,
                    self.meta.agent.as_str(),
                    sql_int(self.meta.seq),
                    self.hash_hex,
                ])?;
            self.count("gateway_attribute_changes", 1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(protocol: SocketProtocol, address: &str, port: u16, exe: &str) -> ListeningSocket {
        ListeningSocket {
            protocol,
            port,
            address: address.into(),
            exe: Some(exe.into()),
        }
    }

    fn facts(
        listening: Option<&[ListeningSocket]>,
        executables: Option<&[HostExecutable]>,
    ) -> BTreeMap<String, Option<String>> {
        let mut f = BTreeMap::from([("hostname".to_owned(), Some("gw".to_owned()))]);
        add_item_facts(&mut f, listening, executables);
        f
    }

    fn exe(path: &str) -> HostExecutable {
        HostExecutable {
            name: path.rsplit('/').next().unwrap_or(path).into(),
            exe: Some(path.into()),
        }
    }

    #[test]
    fn fact_names() {
        let s = sock(SocketProtocol::Tcp, "::", 22, "/usr/sbin/sshd");
        assert_eq!(socket_fact(&s), "listening tcp [::]:22");
        let hidden = HostExecutable {
            name: "cron".into(),
            exe: None,
        };
        assert_eq!(executable_fact(&hidden), "executable (name) cron");
    }

    #[test]
    fn sockets_opened_closed_and_re_owned_are_differences() {
        let ssh = sock(SocketProtocol::Tcp, "0.0.0.0", 22, "/usr/sbin/sshd");
        let web = sock(SocketProtocol::Tcp, "0.0.0.0", 80, "/usr/sbin/nginx");
        let base = facts(Some(&[ssh.clone(), web.clone()]), Some(&[]));
        let mut web_other = web.clone();
        web_other.exe = Some("/tmp/evil".into());
        let new = sock(SocketProtocol::Tcp, "0.0.0.0", 4444, "/tmp/evil");
        let now = facts(Some(&[web_other, new]), Some(&[]));
        let (b, c) = comparable(&base, &now, &[]);
        let diff = super::super::baseline::differences(&b, &c);
        let names: Vec<&str> = diff
            .iter()
            .filter_map(|d| d["attribute"].as_str())
            .collect();
        assert_eq!(
            names,
            vec![
                "listening tcp 0.0.0.0:22",
                "listening tcp 0.0.0.0:4444",
                "listening tcp 0.0.0.0:80"
            ]
        );
        // a truncated list closes nothing
        let cut = facts(Some(std::slice::from_ref(&web)), Some(&[]));
        let (b, c) = comparable(&base, &cut, &[HostList::Listening]);
        assert!(super::super::baseline::differences(&b, &c).is_empty());
    }

    #[test]
    fn only_new_executables_and_no_ephemeral_udp() {
        let base = facts(Some(&[]), Some(&[exe("/usr/bin/a"), exe("/usr/bin/b")]));
        let client = sock(SocketProtocol::Udp, "0.0.0.0", 41000, "/usr/bin/a");
        let now = facts(
            Some(&[client]),
            Some(&[exe("/usr/bin/a"), exe("/usr/bin/c")]),
        );
        let (b, c) = comparable(&base, &now, &[]);
        let diff = super::super::baseline::differences(&b, &c);
        assert_eq!(diff.len(), 1, "{diff:?}");
        assert_eq!(diff[0]["attribute"], "executable /usr/bin/c");
        assert_eq!(diff[0]["before"], serde_json::Value::Null);
    }

    #[test]
    fn lists_not_covered_on_both_sides_are_not_judged() {
        let ssh = sock(SocketProtocol::Tcp, "0.0.0.0", 22, "/usr/sbin/sshd");
        let base = facts(None, None);
        let now = facts(Some(&[ssh]), Some(&[exe("/usr/bin/a")]));
        let (b, c) = comparable(&base, &now, &[]);
        assert!(super::super::baseline::differences(&b, &c).is_empty());
        let (b, c) = comparable(&now, &base, &[]);
        assert!(super::super::baseline::differences(&b, &c).is_empty());
    }
}
