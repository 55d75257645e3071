//! The agent's persisted chain tip, and the lock that keeps one agent per state directory.
//!
//! `state_dir/chain-tip.toml` holds the last sealed envelope's sequence number and hash in a
//! small text form an operator can read (and, to recover, write):
//!
//! ```text
//! # outpost-agent chain tip: the last envelope sealed. Do not edit while the agent runs.
//! seq = 42
//! hash = "<64 hex digits>"
//! ```
//!
//! It is replaced atomically: write a temporary file, fsync it, rename it over the old one,
//! fsync the directory. A missing file means a fresh agent (genesis). A file that exists but
//! cannot be read back is an error, never a silent restart at sequence 1: the collector would
//! refuse every envelope as a replay.
//!
//! `state_dir/agent.lock` is held with `flock(LOCK_EX | LOCK_NB)` for the life of a
//! [`StateDir`], so a second agent pointed at the same directory stops at once.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use outpost_proto::{ChainTip, Digest};
use serde::Deserialize;

/// File name of the chain tip.
pub const TIP_FILE: &str = "chain-tip.toml";
/// File name of the lock.
pub const LOCK_FILE: &str = "agent.lock";
const MAX_TIP_FILE: u64 = 4096;

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{}: another outpost-agent is using this state directory (the lock is held{holder}); stop it, or give this agent its own state_dir", path.display())]
    Locked { path: PathBuf, holder: String },
    #[error("{}: chain state is corrupt ({detail}). The agent will not guess its sequence number: reusing one would look like a replay to the collector. Restore the file from a backup, or replace it with `seq = N` and `hash = \"{zero}\"` where N is at least the last sequence the collector accepted from this agent (`outpost-collector agents`); the collector records the jump as a gap.", path.display(), zero = Digest::ZERO)]
    Corrupt { path: PathBuf, detail: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TipFile {
    seq: u64,
    hash: String,
}

/// An open, locked state directory.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    tip_path: PathBuf,
    _lock: File,
}

impl StateDir {
    /// Creates `dir` if needed (mode 0700) and takes its lock.
    pub fn open(dir: &Path) -> Result<StateDir, StateError> {
        let io = |path: &Path, what| {
            let path = path.to_owned();
            move |source| StateError::Io { path, what, source }
        };
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir, "cannot create state directory"))?;
        }
        let lock_path = dir.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path, "cannot open lock file"))?;
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                let holder = fs::read_to_string(&lock_path)
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok())
                    .map(|pid| format!(" by pid {pid}"))
                    .unwrap_or_default();
                return Err(StateError::Locked {
                    path: lock_path,
                    holder,
                });
            }
            return Err(io(&lock_path, "cannot lock")(err));
        }
        // Record who holds the lock, for the error a second agent prints.
        let _ = lock
            .set_len(0)
            .and_then(|()| writeln!(lock, "{}", std::process::id()));
        Ok(StateDir {
            dir: dir.to_owned(),
            tip_path: dir.join(TIP_FILE),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The chain tip file's path.
    pub fn tip_path(&self) -> &Path {
        &self.tip_path
    }

    /// Loads the persisted tip; a missing file is [`ChainTip::GENESIS`].
    pub fn load_tip(&self) -> Result<ChainTip, StateError> {
        let path = &self.tip_path;
        let corrupt = |detail: String| StateError::Corrupt {
            path: path.clone(),
            detail,
        };
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ChainTip::GENESIS),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.clone(),
                    what: "cannot read chain state",
                    source,
                });
            }
        };
        if meta.len() > MAX_TIP_FILE {
            return Err(corrupt(format!(
                "{} bytes, far larger than a tip",
                meta.len()
            )));
        }
        let bytes = fs::read(path).map_err(|source| StateError::Io {
            path: path.clone(),
            what: "cannot read chain state",
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| corrupt("not UTF-8 text".into()))?;
        if text.trim().is_empty() {
            return Err(corrupt("the file is empty".into()));
        }
        let file: TipFile =
            toml::from_str(&text).map_err(|e| corrupt(e.message().trim_end().to_owned()))?;
        let hash = Digest::from_hex(&file.hash)
            .ok_or_else(|| corrupt("hash is not 64 hex digits".into()))?;
        Ok(ChainTip {
            seq: file.seq,
            hash,
        })
    }

    /// Persists `tip`: temp file, fsync, rename, fsync directory.
    pub fn store_tip(&self, tip: &ChainTip) -> Result<(), StateError> {
        let tmp = self.dir.join(format!(".{TIP_FILE}.tmp"));
        let text = format!(
            "# outpost-agent chain tip: the last envelope sealed. Do not edit while the agent runs.\nseq = {}\nhash = \"{}\"\n",
            tip.seq, tip.hash
        );
        let write = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })();
        if let Err(source) = write {
            let _ = fs::remove_file(&tmp);
            return Err(StateError::Io {
                path: tmp,
                what: "cannot write chain state",
                source,
            });
        }
        fs::rename(&tmp, &self.tip_path).map_err(|source| StateError::Io {
            path: self.tip_path.clone(),
            what: "cannot replace chain state",
            source,
        })?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StateError::Io {
                path: self.dir.clone(),
                what: "cannot sync state directory",
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_genesis_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        assert_eq!(state.load_tip().unwrap(), ChainTip::GENESIS);
        let tip = ChainTip {
            seq: 42,
            hash: Digest([0xab; 32]),
        };
        state.store_tip(&tip).unwrap();
        assert_eq!(state.load_tip().unwrap(), tip);
        let next = ChainTip {
            seq: 43,
            hash: Digest([1; 32]),
        };
        state.store_tip(&next).unwrap();
        assert_eq!(state.load_tip().unwrap(), next);
        // Only the lock and the tip remain; no temporary file.
        let mut names: Vec<String> = fs::read_dir(state.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec![LOCK_FILE, TIP_FILE]);
    }

    #[test]
    fn a_stale_temp_file_from_a_crash_does_not_matter() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let tip = ChainTip {
            seq: 7,
            hash: Digest([7; 32]),
        };
        state.store_tip(&tip).unwrap();
        // A crash between write and rename leaves a half-written temp file: the tip is intact.
        fs::write(dir.path().join(format!(".{TIP_FILE}.tmp")), b"seq = 8\nha").unwrap();
        assert_eq!(state.load_tip().unwrap(), tip);
        let tip = ChainTip { seq: 8, ..tip };
        state.store_tip(&tip).unwrap();
        assert_eq!(state.load_tip().unwrap(), tip);
    }

    #[test]
    fn corrupt_file_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        for bad in [
            &b""[..],
            b"seq = 4\n",
            b"seq = 4\nhash = \"abc\"\n",
            b"seq = -1\nhash = \"00\"\n",
            b"\xff\xfe",
            b"seq = 4\nhash = \"0000000000000000000000000000000000000000000000000000000000000000\"\nextra = 1\n",
        ] {
            fs::write(state.tip_path(), bad).unwrap();
            let err = state.load_tip().unwrap_err();
            assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("chain state is corrupt"), "{msg}");
            assert!(msg.contains("replay"), "{msg}");
            assert!(msg.contains(TIP_FILE), "{msg}");
        }
        // The hand-written recovery file the message describes is accepted.
        let zero = Digest::ZERO.to_string();
        fs::write(state.tip_path(), format!("seq = 100\nhash = \"{zero}\"\n")).unwrap();
        assert_eq!(state.load_tip().unwrap().seq, 100);
    }

    #[test]
    fn second_agent_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDir::open(dir.path()).unwrap();
        let err = StateDir::open(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StateError::Locked { .. }), "{msg}");
        assert!(
            msg.contains(&format!("by pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        assert!(StateDir::open(dir.path()).is_ok());
    }
}
