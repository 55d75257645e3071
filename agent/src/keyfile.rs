//! The agent's private key on disk.
//!
//! [`generate`] writes `agent.key` (the PKCS#8 document, mode 0600, created atomically: written
//! to a temporary file, fsynced, then linked into place so an existing key is never clobbered
//! unless asked) and `agent.pub` (the one-line public key the collector enrolls).
//! [`load_private`] refuses a key that group or others could read or write: a leaked key lets
//! anyone forge this agent's inventory.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use outpost_proto::{AgentId, KeyError, KeyId, PublicKey, SigningKey};

/// File name of the private key written by [`generate`].
pub const PRIVATE_KEY_FILE: &str = "agent.key";
/// File name of the public key written by [`generate`].
pub const PUBLIC_KEY_FILE: &str = "agent.pub";
/// No PKCS#8 Ed25519 document is anywhere near this large.
const MAX_KEY_FILE: u64 = 16 * 1024;

/// Why a key could not be written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{}: a key already exists; refusing to overwrite it (use --force to replace it, and re-enroll the new agent.pub at the collector)", path.display())]
    Exists { path: PathBuf },
    #[error("{}: private key is accessible by group or others (mode {mode:04o}); run `chmod 600 {}`", path.display(), path.display())]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{}: {source}; generate one with `outpost-agent keygen --out DIR`", path.display())]
    Invalid { path: PathBuf, source: KeyError },
    #[error("key generation failed: {0}")]
    Generate(KeyError),
}

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    pub key_id: KeyId,
    pub public: PublicKey,
    pub private_path: PathBuf,
    pub public_path: PathBuf,
}

/// Generates a key in `dir` (created if missing), refusing to overwrite an existing key.
pub fn generate(dir: &Path, agent: Option<&AgentId>) -> Result<GeneratedKey, KeyFileError> {
    generate_with(dir, agent, false)
}

/// Like [`generate`]; with `replace` an existing key is replaced.
pub fn generate_with(
    dir: &Path,
    agent: Option<&AgentId>,
    replace: bool,
) -> Result<GeneratedKey, KeyFileError> {
    let io = |path: &Path, what| {
        let path = path.to_owned();
        move |source| KeyFileError::Io { path, what, source }
    };
    fs::create_dir_all(dir).map_err(io(dir, "cannot create directory"))?;
    let private_path = dir.join(PRIVATE_KEY_FILE);
    let public_path = dir.join(PUBLIC_KEY_FILE);
    if !replace && fs::symlink_metadata(&private_path).is_ok() {
        return Err(KeyFileError::Exists { path: private_path });
    }
    let (key, pkcs8) = SigningKey::generate().map_err(KeyFileError::Generate)?;
    let public = key.public_key();

    let tmp = write_temp(dir, PRIVATE_KEY_FILE, &pkcs8, 0o600)?;
    let placed = if replace {
        fs::rename(&tmp, &private_path)
    } else {
        // link() fails if the target exists: no window where another key is overwritten.
        fs::hard_link(&tmp, &private_path).and_then(|()| fs::remove_file(&tmp))
    };
    if let Err(e) = placed {
        let _ = fs::remove_file(&tmp);
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            return Err(KeyFileError::Exists { path: private_path });
        }
        return Err(io(&private_path, "cannot create key file")(e));
    }

    let line = public.to_line(agent);
    let tmp = write_temp(dir, PUBLIC_KEY_FILE, line.as_bytes(), 0o644)?;
    if let Err(e) = fs::rename(&tmp, &public_path) {
        let _ = fs::remove_file(&tmp);
        return Err(io(&public_path, "cannot write public key")(e));
    }
    sync_dir(dir)?;
    Ok(GeneratedKey {
        key_id: public.key_id(),
        public,
        private_path,
        public_path,
    })
}

pub(crate) fn write_temp(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<PathBuf, KeyFileError> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask can only remove bits; make the mode exact anyway.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(KeyFileError::Io {
            path: tmp,
            what: "cannot write temporary key file",
            source,
        });
    }
    Ok(tmp)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), KeyFileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| KeyFileError::Io {
            path: dir.to_owned(),
            what: "cannot sync directory",
            source,
        })
}

/// Loads the private key at `path`, refusing one that group or others can access.
pub fn load_private(path: &Path) -> Result<SigningKey, KeyFileError> {
    let io = |what| {
        move |source| KeyFileError::Io {
            path: path.to_owned(),
            what,
            source,
        }
    };
    let mut file = File::open(path).map_err(io("cannot open private key"))?;
    let meta = file.metadata().map_err(io("cannot stat private key"))?;
    if !meta.is_file() {
        return Err(KeyFileError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let mut doc = Vec::new();
    (&mut file)
        .take(MAX_KEY_FILE + 1)
        .read_to_end(&mut doc)
        .map_err(io("cannot read private key"))?;
    if doc.len() as u64 > MAX_KEY_FILE {
        return Err(KeyFileError::Invalid {
            path: path.to_owned(),
            source: KeyError::BadPrivateKey(format!("file is larger than {MAX_KEY_FILE} bytes")),
        });
    }
    SigningKey::from_pkcs8(&doc).map_err(|source| KeyFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn generates_0600_key_and_pub_line() {
        let dir = tempfile::tempdir().unwrap();
        let agent = AgentId::new("gw-1").unwrap();
        let g = generate(&dir.path().join("keys"), Some(&agent)).unwrap();
        assert_eq!(mode(&g.private_path), 0o600);
        let key = load_private(&g.private_path).unwrap();
        assert_eq!(key.key_id(), g.key_id);
        let text = fs::read_to_string(&g.public_path).unwrap();
        let (public, named) = PublicKey::parse_file(&text).unwrap();
        assert_eq!(public, key.public_key());
        assert_eq!(named, Some(agent));
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.path().join("keys")).unwrap().count(), 2);
    }

    #[test]
    fn refuses_to_overwrite_unless_told() {
        let dir = tempfile::tempdir().unwrap();
        let first = generate(dir.path(), None).unwrap();
        let err = generate(dir.path(), None).unwrap_err();
        assert!(matches!(err, KeyFileError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("--force"));
        assert_eq!(
            load_private(&first.private_path).unwrap().key_id(),
            first.key_id
        );
        let second = generate_with(dir.path(), None, true).unwrap();
        assert_ne!(second.key_id, first.key_id);
        assert_eq!(
            load_private(&second.private_path).unwrap().key_id(),
            second.key_id
        );
        assert_eq!(mode(&second.private_path), 0o600);
    }

    #[test]
    fn refuses_group_or_world_accessible_key() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(dir.path(), None).unwrap();
        for bad in [0o640, 0o604, 0o620, 0o644] {
            fs::set_permissions(&g.private_path, fs::Permissions::from_mode(bad)).unwrap();
            let err = load_private(&g.private_path).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, KeyFileError::TooOpen { .. }), "{msg}");
            assert!(msg.contains(&format!("mode {bad:04o}")), "{msg}");
            assert!(
                msg.contains(&format!("chmod 600 {}", g.private_path.display())),
                "{msg}"
            );
        }
        fs::set_permissions(&g.private_path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(load_private(&g.private_path).is_ok());
    }

    #[test]
    fn refuses_garbage_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        fs::write(&path, b"not a key").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let msg = load_private(&path).unwrap_err().to_string();
        assert!(
            msg.contains("not a valid Ed25519 PKCS#8") && msg.contains("keygen"),
            "{msg}"
        );
        let msg = load_private(&dir.path().join("missing.key"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("missing.key: cannot open private key"),
            "{msg}"
        );
        let msg = load_private(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("not a regular file"), "{msg}");
    }
}
