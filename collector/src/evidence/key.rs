//! The collector evidence key: Ed25519 (ring, through `outpost_proto::keys`), stored as its
//! PKCS#8 document with mode 0600, public half in the agents' `.pub` line format.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use outpost_proto::{AgentId, PublicKey, SigningKey};

use super::EvidenceError;

/// The comment on the public key line.
pub const KEY_LABEL: &str = "collector-evidence";

/// Where `evidence keygen --out DIR` writes.
pub fn key_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("evidence.key"), dir.join("evidence.pub"))
}

/// Generates a key into `dir` (`evidence.key` 0600, `evidence.pub`); never overwrites.
pub fn generate(dir: &Path) -> Result<(PathBuf, PathBuf, PublicKey), EvidenceError> {
    std::fs::create_dir_all(dir).map_err(EvidenceError::io(dir))?;
    let (private, public) = key_paths(dir);
    let (key, doc) = SigningKey::generate()
        .map_err(|e| EvidenceError::invalid(format!("cannot generate a key: {e}")))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                EvidenceError::invalid(format!(
                    "{} already exists; an evidence key is never overwritten (move it away first)",
                    private.display()
                ))
            } else {
                EvidenceError::Io {
                    path: private.clone(),
                    source: e,
                }
            }
        })?;
    f.write_all(&doc)
        .and_then(|()| f.sync_all())
        .map_err(EvidenceError::io(&private))?;
    let label = AgentId::new(KEY_LABEL).map_err(|e| EvidenceError::invalid(e.to_string()))?;
    std::fs::write(&public, key.public_key().to_line(Some(&label)))
        .map_err(EvidenceError::io(&public))?;
    Ok((private, public, key.public_key()))
}

/// Loads the private key; refuses a file that group or others may read.
pub fn load(path: &Path) -> Result<SigningKey, EvidenceError> {
    let meta = std::fs::metadata(path).map_err(EvidenceError::io(path))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(EvidenceError::invalid(format!(
            "{} may be read by group or others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        )));
    }
    let doc = std::fs::read(path).map_err(EvidenceError::io(path))?;
    SigningKey::from_pkcs8(&doc).map_err(|e| {
        EvidenceError::invalid(format!(
            "{}: {e}; pass the evidence.key written by `outpost-collector evidence keygen`",
            path.display()
        ))
    })
}

/// Reads a public key file (`evidence.pub`).
pub fn load_public(path: &Path) -> Result<PublicKey, EvidenceError> {
    let text = std::fs::read_to_string(path).map_err(EvidenceError::io(path))?;
    PublicKey::parse_file(&text)
        .map(|(k, _)| k)
        .map_err(|e| EvidenceError::invalid(format!("{}: {e}", path.display())))
}
