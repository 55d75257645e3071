//! Facts about the gateway the agent runs on: its self-inventory.
//!
//! One file per source: [`system`] (sysinfo: OS, kernel, hostname, CPU count, memory, boot
//! time), [`cpu`] (the CPU model, from `/proc/cpuinfo` where sysinfo has none), [`disks`]
//! (mounted block-device filesystems), [`interfaces`] (names, MACs, addresses), [`sockets`]
//! (listening TCP and unconnected UDP sockets from `/proc/net/{tcp,tcp6,udp,udp6}`, each with
//! the executable that owns it, found through `/proc/<pid>/fd` socket inodes) and
//! [`processes`] (the distinct executables of running user-space processes: name and path,
//! never PIDs or command lines — they churn every cycle and command lines can hold secrets).
//!
//! Every list is bounded by the caps in `outpost_proto::model` (64 interfaces of 16 addresses,
//! 64 disks, 256 listening sockets, 256 executables, 8 problem lines, 512 characters per text);
//! a list cut at its cap is named in `truncated`, so the collector does not read a missing entry
//! as "vanished". Anything unreadable (a `/proc` file, another user's process) becomes one stable
//! line in `problems`, never a failed cycle. `[gateway] listening/processes = false` switch the
//! two `/proc` walks off; the facts then name them in `switched_off`.
//!
//! Nothing is kept between calls: the values are dropped after each collection, which keeps the
//! agent's resident memory small.

pub mod cpu;
pub mod disks;
pub mod interfaces;
pub mod processes;
pub mod report;
pub mod sockets;
pub mod system;

use std::path::Path;

use outpost_proto::model::{
    HostFacts, HostList, MAX_EXECUTABLES, MAX_HOST_PROBLEMS, MAX_HOST_TEXT, MAX_LISTENING,
};

/// Why host facts could not be collected at all (sysinfo could not start).
#[derive(Debug, thiserror::Error)]
#[error("cannot collect gateway facts: {0}")]
pub struct HostError(#[from] sysinfo::Error);

/// Which optional lists to collect (`[gateway]` in the agent config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Collect {
    /// Listening sockets and their owners (`/proc/net/*`, `/proc/<pid>/fd`).
    pub listening: bool,
    /// Distinct running executables (`/proc/<pid>/{comm,exe}`).
    pub processes: bool,
}

impl Default for Collect {
    fn default() -> Self {
        Collect {
            listening: true,
            processes: true,
        }
    }
}

/// Problem lines gathered while collecting: deduplicated, bounded.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    pub(crate) fn push(&mut self, line: impl Into<String>) {
        let line = cut_text(line.into());
        if !self.0.contains(&line) && self.0.len() < MAX_HOST_PROBLEMS {
            self.0.push(line);
        }
    }

    fn into_sorted(mut self) -> Vec<String> {
        self.0.sort();
        self.0
    }
}

/// Text cut to [`MAX_HOST_TEXT`] characters.
pub(crate) fn cut_text(mut text: String) -> String {
    if let Some((at, _)) = text.char_indices().nth(MAX_HOST_TEXT) {
        text.truncate(at);
    }
    text
}

/// Sorts and deduplicates `list`, then cuts it to `max` entries; names it in `truncated` if cut.
pub(crate) fn bound<T: Ord>(
    list: &mut Vec<T>,
    max: usize,
    which: HostList,
    truncated: &mut Vec<HostList>,
) {
    list.sort();
    list.dedup();
    if list.len() > max {
        list.truncate(max);
        truncated.push(which);
    }
}

/// Collects the gateway's facts now, from this machine's `/proc`.
pub fn collect(what: Collect) -> Result<HostFacts, HostError> {
    collect_from(Path::new("/proc"), what)
}

/// Collects the gateway's facts, reading `/proc` files under `proc_root`.
pub fn collect_from(proc_root: &Path, what: Collect) -> Result<HostFacts, HostError> {
    let mut problems = Problems::default();
    let mut truncated = Vec::new();
    let mut facts = system::collect()?;
    facts.cpu_model = facts
        .cpu_model
        .take()
        .or_else(|| cpu::from_proc(proc_root, &mut problems));
    facts.disks = disks::collect(&mut problems, &mut truncated);
    facts.interfaces = interfaces::collect(&mut problems, &mut truncated);

    let mut walk = processes::Walk::default();
    if what.listening {
        let mut found = sockets::read_tables(proc_root, &mut problems);
        walk.want_inodes(found.iter().map(|s| s.inode));
        walk.run(proc_root, what.processes, &mut problems);
        sockets::attach_owners(&mut found, walk.owners(), &mut problems);
        let mut listening: Vec<_> = found.into_iter().map(|s| s.socket).collect();
        bound(
            &mut listening,
            MAX_LISTENING,
            HostList::Listening,
            &mut truncated,
        );
        facts.listening = listening;
    } else {
        walk.run(proc_root, what.processes, &mut problems);
        facts.switched_off.push(HostList::Listening);
    }
    if what.processes {
        let mut executables = walk.into_executables();
        bound(
            &mut executables,
            MAX_EXECUTABLES,
            HostList::Executables,
            &mut truncated,
        );
        facts.executables = executables;
    } else {
        facts.switched_off.push(HostList::Executables);
    }
    truncated.sort();
    truncated.dedup();
    facts.truncated = truncated;
    facts.problems = problems.into_sorted();
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_this_machine() {
        let facts = collect(Collect::default()).unwrap();
        assert!(facts.cpu_count >= 1);
        assert!(facts.memory_bytes > 0);
        assert!(facts.boot_time > 1_000_000_000);
        assert!(!facts.cpu_arch.is_empty());
        assert_eq!(facts.agent_version, env!("CARGO_PKG_VERSION"));
        let lo = facts.interfaces.iter().find(|i| i.name == "lo");
        if let Some(lo) = lo {
            assert!(lo.addresses.iter().any(|a| a == "127.0.0.1/8"), "{lo:?}");
        }
        let mut sorted = facts.interfaces.clone();
        sorted.sort();
        assert_eq!(sorted, facts.interfaces);
        // this test's own process is running, so its executable is listed (unless cut)
        let me = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(
            facts.truncated.contains(&HostList::Executables)
                || facts
                    .executables
                    .iter()
                    .any(|e| e.exe.as_deref() == Some(me.to_str().unwrap())),
            "{:?}",
            facts.executables
        );
        assert!(facts.switched_off.is_empty());
    }

    #[test]
    fn a_listener_of_this_process_is_listed_with_its_executable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let facts = collect(Collect::default()).unwrap();
        let me = std::fs::read_link("/proc/self/exe").unwrap();
        let found = facts
            .listening
            .iter()
            .find(|s| s.port == port && s.address == "127.0.0.1")
            .unwrap_or_else(|| panic!("port {port} not in {:?}", facts.listening));
        assert_eq!(found.exe.as_deref(), me.to_str());
    }

    #[test]
    fn switched_off_lists_are_named_and_empty() {
        let what = Collect {
            listening: false,
            processes: false,
        };
        let facts = collect(what).unwrap();
        assert!(facts.listening.is_empty() && facts.executables.is_empty());
        assert_eq!(
            facts.switched_off,
            vec![HostList::Listening, HostList::Executables]
        );
    }

    #[test]
    fn bound_cuts_and_says_so() {
        let mut truncated = Vec::new();
        let mut list = vec![3, 1, 2, 2];
        bound(&mut list, 5, HostList::Disks, &mut truncated);
        assert_eq!(list, vec![1, 2, 3]);
        assert!(truncated.is_empty());
        bound(&mut list, 2, HostList::Disks, &mut truncated);
        assert_eq!(list, vec![1, 2]);
        assert_eq!(truncated, vec![HostList::Disks]);
    }

    #[test]
    fn problems_are_bounded_and_deduplicated() {
        let mut p = Problems::default();
        for i in 0..20 {
            p.push(format!("problem {}", i % 10));
            p.push("same");
        }
        let lines = p.into_sorted();
        assert_eq!(lines.len(), MAX_HOST_PROBLEMS);
        assert_eq!(lines.iter().filter(|l| *l == "same").count(), 1);
        assert_eq!(cut_text("é".repeat(600)).chars().count(), MAX_HOST_TEXT);
    }
}
