//! `state_dir/observed-state.cbor`: the last observed state, persisted.
//!
//! Written atomically (temporary file, fsync, rename, fsync the directory) and capped at
//! [`MAX_STATE_BYTES`]. A file that cannot be read back (damaged, too large, from an
//! incompatible version) is renamed aside to `observed-state.cbor.damaged-<ms>` with a log line
//! and counted; the agent then starts from an empty state, which records every asset silently
//! as a new baseline: a damaged file never causes a storm of false changes.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::state::ObservedState;

/// File name of the observed state in the state directory.
pub const STATE_FILE: &str = "observed-state.cbor";
/// Largest observed-state file written or read.
pub const MAX_STATE_BYTES: usize = 32 * 1024 * 1024;

/// Why the observed state could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "observed state is {bytes} bytes, over the {MAX_STATE_BYTES}-byte cap; it is not persisted (changes after a restart are compared with an empty state, i.e. recorded silently). Poll fewer or smaller blocks per agent"
    )]
    TooLarge { bytes: usize },
    #[error("cannot encode the observed state: {0}")]
    Encode(String),
}

/// What loading found.
#[derive(Debug)]
pub struct Loaded {
    pub state: ObservedState,
    /// The file existed and was read.
    pub found: bool,
    /// The file was damaged and set aside to this path.
    pub set_aside: Option<PathBuf>,
}

/// Loads the state in `dir`; never fails: a damaged file is set aside (see the module docs).
pub fn load(dir: &Path, now_ms: u64) -> Loaded {
    let path = dir.join(STATE_FILE);
    let bytes = match fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Loaded {
                state: ObservedState::default(),
                found: false,
                set_aside: None,
            };
        }
        Err(e) => Err(format!("cannot read it: {e}")),
        Ok(m) if m.len() > MAX_STATE_BYTES as u64 => Err(format!(
            "{} bytes, over the {MAX_STATE_BYTES}-byte cap",
            m.len()
        )),
        Ok(_) => fs::read(&path).map_err(|e| format!("cannot read it: {e}")),
    };
    let decoded = bytes.and_then(|b| {
        outpost_proto::cbor::decode_bounded::<ObservedState>(&b, MAX_STATE_BYTES)
            .map_err(|e| format!("cannot decode it: {e}"))
            .and_then(|s| {
                if s.version == ObservedState::VERSION {
                    Ok(s)
                } else {
                    Err(format!(
                        "format version {} (this agent writes {})",
                        s.version,
                        ObservedState::VERSION
                    ))
                }
            })
    });
    match decoded {
        Ok(state) => Loaded {
            state,
            found: true,
            set_aside: None,
        },
        Err(why) => {
            let aside = dir.join(format!("{STATE_FILE}.damaged-{now_ms}"));
            let moved = fs::rename(&path, &aside);
            match &moved {
                Ok(()) => tracing::error!(
                    file = %path.display(), aside = %aside.display(),
                    "observed state unusable ({why}); set aside as {} and starting from an \
                     empty state: every asset is recorded again as a baseline, no changes are \
                     reported for this cycle", aside.display()
                ),
                Err(e) => tracing::error!(
                    file = %path.display(),
                    "observed state unusable ({why}) and cannot be set aside ({e}); starting \
                     from an empty state, the file is overwritten at the end of the cycle"
                ),
            }
            Loaded {
                state: ObservedState::default(),
                found: false,
                set_aside: moved.ok().map(|()| aside),
            }
        }
    }
}

/// The digest of `state`'s encoding (to skip writing an unchanged state).
pub fn digest(state: &ObservedState) -> Result<outpost_proto::Digest, StoreError> {
    outpost_proto::cbor::encode(state)
        .map(|bytes| outpost_proto::Digest::of(&bytes))
        .map_err(|e| StoreError::Encode(e.to_string()))
}

/// Writes `state` to `dir` atomically.
pub fn save(dir: &Path, state: &ObservedState) -> Result<(), StoreError> {
    let bytes =
        outpost_proto::cbor::encode(state).map_err(|e| StoreError::Encode(e.to_string()))?;
    if bytes.len() > MAX_STATE_BYTES {
        return Err(StoreError::TooLarge { bytes: bytes.len() });
    }
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let path = dir.join(STATE_FILE);
    let write = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()
    })();
    if let Err(source) = write {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::Io {
            path: tmp,
            what: "cannot write observed state",
            source,
        });
    }
    fs::rename(&tmp, &path).map_err(|source| StoreError::Io {
        path: path.clone(),
        what: "cannot replace observed state",
        source,
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            what: "cannot sync state directory",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = load(dir.path(), 1);
        assert!(!loaded.found && loaded.set_aside.is_none());
        let state = ObservedState {
            known_programs: ["/usr/sbin/sshd".to_owned()].into(),
            ..ObservedState::default()
        };
        save(dir.path(), &state).unwrap();
        let loaded = load(dir.path(), 2);
        assert!(loaded.found);
        assert_eq!(loaded.state, state);
    }

    #[test]
    fn a_damaged_file_is_set_aside_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE_FILE), b"\xff\x00garbage").unwrap();
        let loaded = load(dir.path(), 42);
        assert!(!loaded.found);
        let aside = loaded.set_aside.expect("set aside");
        assert!(aside.ends_with(format!("{STATE_FILE}.damaged-42")));
        assert!(aside.exists() && !dir.path().join(STATE_FILE).exists());
        assert_eq!(loaded.state, ObservedState::default());
    }
}
