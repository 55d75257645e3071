//! The manifest: what a pack holds, each file's SHA-256, and the collector's signature over it.
//!
//! `manifest.sig` is one line: `outpost-evidence-signature-v1 <key id> <hex signature>`; the
//! signature is Ed25519 over [`SIGNING_CONTEXT`] followed by SHA-256 of the exact bytes of
//! `manifest.json` (nothing is re-encoded to verify).

use serde::{Deserialize, Serialize};

use outpost_proto::{Digest, KeyId, PublicKey, SigningKey};

/// The manifest's schema name.
pub const SCHEMA: &str = "outpost.evidence.manifest.v1";

/// Domain separation for the manifest signature.
pub const SIGNING_CONTEXT: &[u8] = b"outpost/evidence-manifest/v1\0";

/// The word that starts `manifest.sig`.
pub const SIGNATURE_TAG: &str = "outpost-evidence-signature-v1";

/// One file of the pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative, `/`-separated.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: String,
    pub generator: String,
    pub created_at: String,
    pub created_at_ms: i64,
    pub zone: String,
    pub from: String,
    pub from_ms: i64,
    pub to: String,
    pub to_ms: i64,
    /// The key `manifest.sig` is made with (also in `collector.pub`).
    pub collector_key_id: String,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// The end of what the pack can speak for: the period's end, or when it was made if
    /// earlier.
    pub fn end_ms(&self) -> i64 {
        self.to_ms.min(self.created_at_ms)
    }
}

/// A file entry for `bytes` at `path`.
pub fn entry(path: &str, bytes: &[u8]) -> FileEntry {
    FileEntry {
        path: path.to_owned(),
        sha256: Digest::of(bytes).to_string(),
        bytes: bytes.len() as u64,
    }
}

fn signing_input(manifest_bytes: &[u8]) -> Vec<u8> {
    let mut input = SIGNING_CONTEXT.to_vec();
    input.extend_from_slice(&Digest::of(manifest_bytes).0);
    input
}

/// The `manifest.sig` line for `manifest_bytes`.
pub fn sign(key: &SigningKey, manifest_bytes: &[u8]) -> String {
    let sig = key.sign(&signing_input(manifest_bytes));
    format!(
        "{SIGNATURE_TAG} {} {}\n",
        key.key_id(),
        outpost_proto::hex::encode(&sig)
    )
}

/// Checks `manifest.sig` text against `manifest_bytes` and `key`; `Err` says why not.
pub fn check_signature(
    sig_text: &str,
    manifest_bytes: &[u8],
    key: &PublicKey,
) -> Result<(), String> {
    let mut words = sig_text.split_whitespace();
    if words.next() != Some(SIGNATURE_TAG) {
        return Err(format!("manifest.sig does not start with {SIGNATURE_TAG}"));
    }
    let named = words
        .next()
        .and_then(KeyId::from_hex)
        .ok_or("manifest.sig has no key id (32 hex digits) after the tag")?;
    if named != key.key_id() {
        return Err(format!(
            "manifest.sig names key {named}, but the key checked is {}",
            key.key_id()
        ));
    }
    let sig = words
        .next()
        .and_then(outpost_proto::hex::decode_array::<64>)
        .ok_or("manifest.sig has no 64-byte hex signature")?;
    if !key.verify(&signing_input(manifest_bytes), &sig) {
        return Err(format!(
            "the signature in manifest.sig does not verify under key {named} over this \
             manifest.json (the manifest was edited or swapped)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_covers_the_exact_bytes() {
        let (key, _) = SigningKey::generate().unwrap();
        let line = sign(&key, b"{\"a\":1}");
        assert!(check_signature(&line, b"{\"a\":1}", &key.public_key()).is_ok());
        let err = check_signature(&line, b"{\"a\":2}", &key.public_key()).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
        let (other, _) = SigningKey::generate().unwrap();
        let err = check_signature(&line, b"{\"a\":1}", &other.public_key()).unwrap_err();
        assert!(err.contains("names key"), "{err}");
    }
}
