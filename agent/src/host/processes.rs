//! One walk over `/proc/<pid>`: the distinct executables of running user-space processes
//! (`comm` and the `exe` link; kernel threads have no executable and are skipped) and, for the
//! socket inodes [`super::sockets`] asks about, which executable holds them (`/proc/<pid>/fd`
//! links `socket:[<inode>]`). No PIDs and no command lines are kept.
//!
//! Bounded: at most [`MAX_PIDS`] process directories and [`MAX_FDS_PER_PROCESS`] descriptors
//! per process are looked at; descriptors only while some asked-for inode is still unowned.
//! Another user's process (an unprivileged agent) is listed by name only and named once in
//! `problems`; a process that exits during the walk is simply not listed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::ErrorKind;
use std::path::Path;

use outpost_proto::model::HostExecutable;

use super::{Problems, cut_text};

/// Most process directories looked at in one walk.
pub const MAX_PIDS: usize = 32_768;
/// Most file descriptors looked at per process.
pub const MAX_FDS_PER_PROCESS: usize = 65_536;

/// The state of one walk.
#[derive(Debug, Default)]
pub struct Walk {
    wanted: HashSet<u64>,
    owners: HashMap<u64, String>,
    executables: BTreeSet<HostExecutable>,
    exe_hidden: bool,
    fd_hidden: bool,
    cut: bool,
}

/// `socket:[12345]` → 12345.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

impl Walk {
    /// Asks the walk to find the owners of these socket inodes.
    pub fn want_inodes(&mut self, inodes: impl IntoIterator<Item = u64>) {
        self.wanted.extend(inodes);
    }

    /// Socket inode → owning executable, for the inodes asked about and found.
    pub fn owners(&self) -> &HashMap<u64, String> {
        &self.owners
    }

    /// The distinct executables seen, sorted.
    pub fn into_executables(self) -> Vec<HostExecutable> {
        self.executables.into_iter().collect()
    }

    fn unowned(&self) -> bool {
        self.owners.len() < self.wanted.len()
    }

    /// Walks `<proc_root>/<pid>` for every process: executables when `processes`, socket owners
    /// while any asked-for inode is unowned.
    pub fn run(&mut self, proc_root: &Path, processes: bool, problems: &mut Problems) {
        if !processes && self.wanted.is_empty() {
            return;
        }
        let dir = match std::fs::read_dir(proc_root) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("processes: cannot list /proc ({})", e.kind()));
                return;
            }
        };
        let mut seen = 0usize;
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            seen += 1;
            if seen > MAX_PIDS {
                self.cut = true;
                break;
            }
            self.process(&entry.path(), processes);
        }
        if self.exe_hidden {
            problems.push(
                "processes: some executables are not readable by the agent (permission denied: another user's \
                 process; listed by name only; the agent needs CAP_SYS_PTRACE to see them)",
            );
        }
        if self.fd_hidden && self.unowned() {
            problems.push(
                "listening: some processes' descriptors are not readable by the agent (their \
                 sockets show no owner)",
            );
        }
        if self.cut {
            problems.push(format!(
                "processes: more than {MAX_PIDS} processes; the rest were not looked at"
            ));
        }
    }

    fn process(&mut self, dir: &Path, processes: bool) {
        let exe = match std::fs::read_link(dir.join("exe")) {
            Ok(p) => Some(cut_text(p.to_string_lossy().into_owned())),
            // a kernel thread (no executable) or a process that just exited
            Err(e) if e.kind() == ErrorKind::NotFound => return,
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                self.exe_hidden = true;
                None
            }
            Err(_) => return,
        };
        if processes {
            // `comm` is readable for every user's processes; a failure means it just exited
            let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
                return;
            };
            let name = cut_text(comm.trim_end_matches('\n').to_owned());
            self.executables.insert(HostExecutable {
                name,
                exe: exe.clone(),
            });
        }
        if let Some(exe) = exe
            && self.unowned()
        {
            self.sockets_of(dir, &exe);
        }
    }

    fn sockets_of(&mut self, dir: &Path, exe: &str) {
        let fds = match std::fs::read_dir(dir.join("fd")) {
            Ok(d) => d,
            Err(e) => {
                self.fd_hidden |= e.kind() == ErrorKind::PermissionDenied;
                return;
            }
        };
        for fd in fds.flatten().take(MAX_FDS_PER_PROCESS) {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = link.to_str().and_then(socket_inode) else {
                continue;
            };
            if self.wanted.contains(&inode) {
                self.owners.entry(inode).or_insert_with(|| exe.to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode("socket:[24117]"), Some(24117));
        assert_eq!(socket_inode("pipe:[24117]"), None);
        assert_eq!(socket_inode("socket:[]"), None);
        assert_eq!(socket_inode("socket:[12x]"), None);
        assert_eq!(socket_inode("socket:[99999999999999999999999]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn a_fixture_proc_tree() {
        // <root>/10: a process with exe, comm and a socket fd; <root>/2: a kernel thread (no
        // exe link); <root>/self and <root>/net: not processes.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let p = root.join("10");
        std::fs::create_dir_all(p.join("fd")).unwrap();
        std::os::unix::fs::symlink("/usr/sbin/plc-gw", p.join("exe")).unwrap();
        std::fs::write(p.join("comm"), "plc-gw\n").unwrap();
        std::os::unix::fs::symlink("socket:[4242]", p.join("fd/3")).unwrap();
        std::os::unix::fs::symlink("/dev/null", p.join("fd/0")).unwrap();
        let k = root.join("2");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("comm"), "kthreadd\n").unwrap();
        std::fs::create_dir_all(root.join("net")).unwrap();
        std::fs::create_dir_all(root.join("self")).unwrap();

        let mut walk = Walk::default();
        walk.want_inodes([4242, 5353]);
        let mut problems = Problems::default();
        walk.run(root, true, &mut problems);
        assert_eq!(
            walk.owners().get(&4242).map(String::as_str),
            Some("/usr/sbin/plc-gw")
        );
        assert_eq!(walk.owners().get(&5353), None);
        assert_eq!(
            walk.into_executables(),
            vec![HostExecutable {
                name: "plc-gw".into(),
                exe: Some("/usr/sbin/plc-gw".into()),
            }]
        );
        assert!(problems.into_sorted().is_empty());
    }

    #[test]
    fn nothing_asked_nothing_walked() {
        let mut walk = Walk::default();
        let mut problems = Problems::default();
        walk.run(Path::new("/nonexistent-proc"), false, &mut problems);
        assert!(problems.into_sorted().is_empty());
        let mut walk = Walk::default();
        let mut problems = Problems::default();
        walk.run(Path::new("/nonexistent-proc"), true, &mut problems);
        assert_eq!(
            problems.into_sorted(),
            vec!["processes: cannot list /proc (entity not found)".to_owned()]
        );
    }
}
