//! Key rotation without a return path.
//!
//! `outpost-agent rotate-key --config FILE` *stages* a new key next to the current one:
//! `<key_file>.next` (0600) and `<key_file>.next.pub`. The agent (running, or the next
//! `run`) picks it up at the start of its next cycle: it seals a `KeyHandover` under the current
//! key, carrying the new public key and the new key's signature over the handover (see
//! `outpost_proto::handover`), persists the chain tip and sends it like any envelope; then it
//! moves `<key_file>.next` over `<key_file>` (rename, fsync) and signs everything after with
//! the new key. The chain continues: the next envelope names the handover's hash.
//!
//! The collector enrolls the new key from the signed handover for the same agent and zones and
//! retires the old key. If the handover envelope is lost on the way (the agent cannot know),
//! the collector refuses the new key's envelopes as `unknown_key`: enroll `<key_file>.next.pub`
//! by hand (`outpost-collector enroll`). A crash between sending and renaming leaves the key
//! staged: the next cycle announces it again (the collector refuses the second announcement
//! as `key_retired` if the first arrived), then installs it.

use std::fs;
use std::path::{Path, PathBuf};

use outpost_proto::{AgentId, KeyId, SigningKey};

use crate::keyfile::{self, KeyFileError};

/// The staged private key's path for `key_file`.
pub fn staged_private(key_file: &Path) -> PathBuf {
    with_suffix(key_file, ".next")
}

/// The staged public key's path for `key_file`.
pub fn staged_public(key_file: &Path) -> PathBuf {
    with_suffix(key_file, ".next.pub")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// What [`stage`] wrote.
#[derive(Debug, Clone)]
pub struct Staged {
    pub old_key_id: KeyId,
    pub new_key_id: KeyId,
    pub private_path: PathBuf,
    pub public_path: PathBuf,
}

/// Generates a new key and stages it next to `key_file` (whose current key must load: a
/// handover is signed by it). Refuses to replace a staged key unless `replace`.
pub fn stage(key_file: &Path, agent: &AgentId, replace: bool) -> Result<Staged, KeyFileError> {
    let old = keyfile::load_private(key_file)?;
    let private_path = staged_private(key_file);
    let public_path = staged_public(key_file);
    if !replace && fs::symlink_metadata(&private_path).is_ok() {
        return Err(KeyFileError::Exists { path: private_path });
    }
    let dir = key_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let (key, pkcs8) = SigningKey::generate().map_err(KeyFileError::Generate)?;
    let io = |path: &Path, what| {
        let path = path.to_owned();
        move |source| KeyFileError::Io { path, what, source }
    };
    let tmp = keyfile::write_temp(dir, "next.key", &pkcs8, 0o600)?;
    fs::rename(&tmp, &private_path)
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .map_err(io(&private_path, "cannot stage the new key"))?;
    let line = key.public_key().to_line(Some(agent));
    let tmp = keyfile::write_temp(dir, "next.pub", line.as_bytes(), 0o644)?;
    fs::rename(&tmp, &public_path)
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .map_err(io(&public_path, "cannot write the new public key"))?;
    keyfile::sync_dir(dir)?;
    Ok(Staged {
        old_key_id: old.key_id(),
        new_key_id: key.key_id(),
        private_path,
        public_path,
    })
}

/// The staged key, if one is waiting (loaded with the same permission checks as the key).
pub fn load_staged(key_file: &Path) -> Result<Option<SigningKey>, KeyFileError> {
    let path = staged_private(key_file);
    match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KeyFileError::Io {
            path,
            what: "cannot look for a staged key",
            source,
        }),
        Ok(_) => keyfile::load_private(&path).map(Some),
    }
}

/// Moves the staged key over `key_file` (atomic rename, directory fsynced).
pub fn install(key_file: &Path) -> Result<(), KeyFileError> {
    let staged = staged_private(key_file);
    fs::rename(&staged, key_file).map_err(|source| KeyFileError::Io {
        path: key_file.to_owned(),
        what: "cannot install the staged key (the handover was sent: fix this and restart, \
               the agent announces the key again)",
        source,
    })?;
    let dir = key_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    keyfile::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn stage_writes_a_private_key_and_refuses_to_overwrite_it_then_install_replaces_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let agent = AgentId::new("gw-r").unwrap();
        let current = keyfile::generate(dir.path(), Some(&agent)).unwrap();
        let key_file = current.private_path.clone();
        assert!(load_staged(&key_file).unwrap().is_none());

        let staged = stage(&key_file, &agent, false).unwrap();
        assert_eq!(staged.old_key_id, current.key_id);
        assert_ne!(staged.new_key_id, current.key_id);
        let mode = fs::metadata(&staged.private_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let public = fs::read_to_string(&staged.public_path).unwrap();
        assert!(public.ends_with("gw-r\n"), "{public}");
        assert!(matches!(
            stage(&key_file, &agent, false),
            Err(KeyFileError::Exists { .. })
        ));

        // A staged key with loose permissions is refused like the key itself.
        fs::set_permissions(&staged.private_path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_staged(&key_file).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        fs::set_permissions(&staged.private_path, fs::Permissions::from_mode(0o600)).unwrap();

        let loaded = load_staged(&key_file).unwrap().unwrap();
        assert_eq!(loaded.key_id(), staged.new_key_id);
        install(&key_file).unwrap();
        assert_eq!(
            keyfile::load_private(&key_file).unwrap().key_id(),
            staged.new_key_id
        );
        assert!(load_staged(&key_file).unwrap().is_none());
    }
}
