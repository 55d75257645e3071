//! Ed25519 keys (ring), key ids, and the public-key file format.
//!
//! The private key is kept as its PKCS#8 document (ring cannot export a bare seed). The public
//! key travels as a one-line text file, in the spirit of OpenSSH's `.pub` files:
//!
//! ```text
//! outpost-ed25519 <base64 of the 32-byte public key> [agent-id]
//! ```
//!
//! Lines starting with `#` and blank lines are ignored. The key id is the first 16 bytes of the
//! SHA-256 of the public key, shown as 32 hex digits.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::hex;
use crate::ids::{AgentId, IdError};

/// The word that starts a public-key line.
pub const PUBLIC_KEY_TAG: &str = "outpost-ed25519";

/// Why a key could not be made, read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the system random number generator failed")]
    Rng,
    #[error("not a valid Ed25519 PKCS#8 private key: {0}")]
    BadPrivateKey(String),
    #[error("no public key line found; expected `{PUBLIC_KEY_TAG} <base64> [agent-id]`")]
    NoKeyLine,
    #[error("public key line starts with {0:?}, expected `{PUBLIC_KEY_TAG}`")]
    WrongTag(String),
    #[error("public key is not valid base64 of 32 bytes")]
    BadPublicKey,
    #[error("agent id in public key file: {0}")]
    BadAgent(#[from] IdError),
}

/// A key fingerprint: the first 16 bytes of SHA-256 over the public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(#[serde(with = "serde_bytes")] pub [u8; 16]);

impl KeyId {
    /// Parses the 32-hex-digit form.
    pub fn from_hex(text: &str) -> Option<Self> {
        hex::decode_array(text).map(Self)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The key's fingerprint.
    pub fn key_id(&self) -> KeyId {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest.as_ref()[..16]);
        KeyId(id)
    }

    /// True when `signature` is this key's signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }

    /// The public-key file line, with the agent id as its comment when given.
    pub fn to_line(&self, agent: Option<&AgentId>) -> String {
        match agent {
            Some(agent) => format!("{PUBLIC_KEY_TAG} {} {agent}\n", B64.encode(self.0)),
            None => format!("{PUBLIC_KEY_TAG} {}\n", B64.encode(self.0)),
        }
    }

    /// Parses a public-key file: the key and the agent id it names, if any.
    pub fn parse_file(text: &str) -> Result<(PublicKey, Option<AgentId>), KeyError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or(KeyError::NoKeyLine)?;
        let mut words = line.split_whitespace();
        let tag = words.next().ok_or(KeyError::NoKeyLine)?;
        if tag != PUBLIC_KEY_TAG {
            return Err(KeyError::WrongTag(tag.chars().take(40).collect()));
        }
        let b64 = words.next().ok_or(KeyError::BadPublicKey)?;
        let raw = B64.decode(b64).map_err(|_| KeyError::BadPublicKey)?;
        let key: [u8; 32] = raw.try_into().map_err(|_| KeyError::BadPublicKey)?;
        let agent = words.next().map(AgentId::new).transpose()?;
        Ok((PublicKey(key), agent))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

/// An Ed25519 signing key, held as its PKCS#8 document.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl SigningKey {
    /// Generates a new key and returns it with its PKCS#8 document (what to store on disk).
    pub fn generate() -> Result<(SigningKey, Vec<u8>), KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Rng)?;
        let key = Self::from_pkcs8(doc.as_ref())?;
        Ok((key, doc.as_ref().to_vec()))
    }

    /// Loads a key from its PKCS#8 document.
    pub fn from_pkcs8(doc: &[u8]) -> Result<SigningKey, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(doc)
            .map_err(|e| KeyError::BadPrivateKey(e.to_string()))?;
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        Ok(SigningKey {
            pair,
            public: PublicKey(public),
        })
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The key's fingerprint.
    pub fn key_id(&self) -> KeyId {
        self.public.key_id()
    }

    /// Signs `message`, returning the 64-byte signature.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let sig = self.pair.sign(message);
        let mut out = [0u8; 64];
        out.copy_from_slice(sig.as_ref());
        out
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.key_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_key_file_round_trip() {
        let (key, doc) = SigningKey::generate().unwrap();
        let again = SigningKey::from_pkcs8(&doc).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        let sig = key.sign(b"hello");
        assert!(key.public_key().verify(b"hello", &sig));
        assert!(!key.public_key().verify(b"hellp", &sig));

        let agent = AgentId::new("gw-1").unwrap();
        let line = key.public_key().to_line(Some(&agent));
        let text = format!("# comment\n\n{line}");
        let (public, named) = PublicKey::parse_file(&text).unwrap();
        assert_eq!(public, key.public_key());
        assert_eq!(named, Some(agent));
        assert_eq!(
            KeyId::from_hex(&key.key_id().to_string()),
            Some(key.key_id())
        );
    }

    #[test]
    fn bad_key_files_say_why() {
        assert_eq!(PublicKey::parse_file("# only\n"), Err(KeyError::NoKeyLine));
        assert!(matches!(
            PublicKey::parse_file("ssh-ed25519 AAAA"),
            Err(KeyError::WrongTag(_))
        ));
        assert_eq!(
            PublicKey::parse_file("outpost-ed25519 AAAA"),
            Err(KeyError::BadPublicKey)
        );
        assert!(matches!(
            SigningKey::from_pkcs8(b"not a key"),
            Err(KeyError::BadPrivateKey(_))
        ));
    }
}
