//! Signed envelopes.
//!
//! On the wire an envelope is a CBOR array `[signed, signature]`:
//! - `signed` is a byte string holding the CBOR encoding of an [`EnvelopeHeader`] (version,
//!   agent, zone, key id, sequence number, time, previous envelope's hash, and the encoded body);
//! - `signature` is the 64-byte Ed25519 signature over [`SIGNING_CONTEXT`] followed by the
//!   envelope hash.
//!
//! The envelope hash is SHA-256 over the exact `signed` bytes: it is what the signature covers
//! and what the next envelope names as `prev_hash`, so the receiver hashes the body once and
//! nothing is ever re-encoded to verify. Sequence numbers start at 1; the first envelope's
//! `prev_hash` is all zeros.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cbor::{self, CborError};
use crate::chain::ChainTip;
use crate::ids::{AgentId, ZoneId};
use crate::keys::{KeyId, PublicKey, SigningKey};
use crate::model::Body;

/// The envelope format version this crate writes and reads.
pub const ENVELOPE_VERSION: u16 = 1;

/// Largest envelope (whole wire form) accepted: 1 MiB.
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;

/// Domain separation: what is signed is this prefix followed by the 32-byte envelope hash.
pub const SIGNING_CONTEXT: &[u8] = b"outpost/envelope/v1\0";

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Digest(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl Digest {
    /// The all-zero digest: the `prev_hash` of an agent's first envelope.
    pub const ZERO: Digest = Digest([0; 32]);

    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Self::from_ring(ring::digest::digest(&ring::digest::SHA256, bytes))
    }

    pub(crate) fn from_ring(d: ring::digest::Digest) -> Digest {
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Digest(out)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Digest> {
        crate::hex::decode_array(text).map(Digest)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex::encode(&self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Everything the signature covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeHeader {
    pub version: u16,
    pub agent: AgentId,
    pub zone: ZoneId,
    pub key_id: KeyId,
    /// Strictly increasing per agent, starting at 1.
    pub seq: u64,
    /// When the envelope was sealed, milliseconds since the Unix epoch (agent clock).
    pub time_ms: u64,
    /// Hash of the agent's previous envelope ([`Digest::ZERO`] for the first).
    pub prev_hash: Digest,
    /// The CBOR-encoded [`Body`].
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct WireEnvelope(
    #[serde(with = "serde_bytes")] Vec<u8>,
    #[serde(with = "serde_bytes")] Vec<u8>,
);

/// Why an envelope was refused. Each variant is a distinct counter at the receiver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is {len} bytes, more than the {max} allowed")]
    Oversize { len: usize, max: usize },
    #[error("malformed envelope: {0}")]
    Malformed(CborError),
    #[error("malformed envelope header: {0}")]
    MalformedHeader(CborError),
    #[error("envelope version {0} is not supported (this build reads version {ENVELOPE_VERSION})")]
    UnsupportedVersion(u16),
    #[error("signature is {0} bytes, expected 64")]
    SignatureLength(usize),
    #[error("envelope names key {named} but was checked against key {given}")]
    KeyMismatch { named: KeyId, given: KeyId },
    #[error("signature does not verify under key {0}")]
    BadSignature(KeyId),
    #[error("malformed body: {0}")]
    MalformedBody(CborError),
    #[error("could not encode envelope: {0}")]
    Encode(CborError),
}

impl EnvelopeError {
    /// A stable, short name for counters and the quarantine table.
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::Oversize { .. } => "oversize",
            EnvelopeError::Malformed(_) => "malformed",
            EnvelopeError::MalformedHeader(_) => "malformed_header",
            EnvelopeError::UnsupportedVersion(_) => "unsupported_version",
            EnvelopeError::SignatureLength(_) => "bad_signature",
            EnvelopeError::KeyMismatch { .. } => "key_mismatch",
            EnvelopeError::BadSignature(_) => "bad_signature",
            EnvelopeError::MalformedBody(_) => "malformed_body",
            EnvelopeError::Encode(_) => "encode",
        }
    }
}

/// The result of sealing: the wire bytes and the chain tip they establish.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub wire: Vec<u8>,
    pub tip: ChainTip,
}

/// Seals `body` as the envelope after `tip`: encodes, signs, and returns the new tip.
///
/// The caller persists the returned tip *before* sending the wire bytes, so that a crash can
/// lose an envelope (a gap the receiver records) but never reuse a sequence number.
pub fn seal(
    key: &SigningKey,
    agent: &AgentId,
    zone: &ZoneId,
    tip: &ChainTip,
    time_ms: u64,
    body: &Body,
) -> Result<Sealed, EnvelopeError> {
    let header = EnvelopeHeader {
        version: ENVELOPE_VERSION,
        agent: agent.clone(),
        zone: zone.clone(),
        key_id: key.key_id(),
        seq: tip.seq + 1,
        time_ms,
        prev_hash: tip.hash,
        body: cbor::encode(body).map_err(EnvelopeError::Encode)?,
    };
    let signed = cbor::encode(&header).map_err(EnvelopeError::Encode)?;
    let hash = Digest::of(&signed);
    let signature = key.sign(&signing_input(&hash));
    let wire =
        cbor::encode(&WireEnvelope(signed, signature.to_vec())).map_err(EnvelopeError::Encode)?;
    if wire.len() > MAX_ENVELOPE_BYTES {
        return Err(EnvelopeError::Oversize {
            len: wire.len(),
            max: MAX_ENVELOPE_BYTES,
        });
    }
    Ok(Sealed {
        wire,
        tip: ChainTip {
            seq: header.seq,
            hash,
        },
    })
}

fn signing_input(hash: &Digest) -> Vec<u8> {
    let mut input = Vec::with_capacity(SIGNING_CONTEXT.len() + hash.0.len());
    input.extend_from_slice(SIGNING_CONTEXT);
    input.extend_from_slice(&hash.0);
    input
}

/// An envelope whose structure has been checked but whose signature has not.
///
/// Only [`Unverified::header`] may be looked at before verifying, and only to find the key to
/// verify with; nothing in it is to be believed yet.
#[derive(Debug, Clone)]
pub struct Unverified {
    header: EnvelopeHeader,
    signed: Vec<u8>,
    signature: Vec<u8>,
}

/// Parses wire bytes into an [`Unverified`] envelope.
pub fn parse(wire: &[u8]) -> Result<Unverified, EnvelopeError> {
    if wire.len() > MAX_ENVELOPE_BYTES {
        return Err(EnvelopeError::Oversize {
            len: wire.len(),
            max: MAX_ENVELOPE_BYTES,
        });
    }
    let outer: WireEnvelope = cbor::decode(wire).map_err(EnvelopeError::Malformed)?;
    // The outer array is not signed, so accept it in exactly one form (the canonical encoding
    // this crate writes): otherwise one signed envelope would have many wire forms (ciborium does
    // not check a tuple's array length, and lengths may be written non-minimally).
    if cbor::encode(&outer).map_err(EnvelopeError::Encode)? != wire {
        return Err(EnvelopeError::Malformed(CborError::Malformed(
            "outer [signed, signature] array is not in canonical form".into(),
        )));
    }
    let WireEnvelope(signed, signature) = outer;
    let header: EnvelopeHeader = cbor::decode(&signed).map_err(EnvelopeError::MalformedHeader)?;
    if header.version != ENVELOPE_VERSION {
        return Err(EnvelopeError::UnsupportedVersion(header.version));
    }
    if signature.len() != 64 {
        return Err(EnvelopeError::SignatureLength(signature.len()));
    }
    Ok(Unverified {
        header,
        signed,
        signature,
    })
}

impl Unverified {
    /// The claimed header: use it only to choose the key.
    pub fn header(&self) -> &EnvelopeHeader {
        &self.header
    }

    /// Checks the signature with `key`.
    pub fn verify(self, key: &PublicKey) -> Result<Verified, EnvelopeError> {
        let given = key.key_id();
        if self.header.key_id != given {
            return Err(EnvelopeError::KeyMismatch {
                named: self.header.key_id,
                given,
            });
        }
        let hash = Digest::of(&self.signed);
        if !key.verify(&signing_input(&hash), &self.signature) {
            return Err(EnvelopeError::BadSignature(given));
        }
        Ok(Verified {
            header: self.header,
            hash,
        })
    }
}

/// An envelope whose signature verified.
#[derive(Debug, Clone)]
pub struct Verified {
    pub header: EnvelopeHeader,
    /// SHA-256 over the signed bytes: the next envelope's `prev_hash`.
    pub hash: Digest,
}

impl Verified {
    /// Decodes the body.
    pub fn body(&self) -> Result<Body, EnvelopeError> {
        cbor::decode(&self.header.body).map_err(EnvelopeError::MalformedBody)
    }

    /// The chain tip this envelope establishes.
    pub fn tip(&self) -> ChainTip {
        ChainTip {
            seq: self.header.seq,
            hash: self.hash,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Summary;

    fn body() -> Body {
        Body::Summary(Summary {
            agent: AgentId::new("gw-1").unwrap(),
            zone: ZoneId::new("cell-1").unwrap(),
            started_ms: 1,
            finished_ms: 2,
            gateway: None,
            assets: vec![],
        })
    }

    #[test]
    fn seal_parse_verify() {
        let (key, _) = SigningKey::generate().unwrap();
        let agent = AgentId::new("gw-1").unwrap();
        let zone = ZoneId::new("cell-1").unwrap();
        let first = seal(&key, &agent, &zone, &ChainTip::GENESIS, 1000, &body()).unwrap();
        assert_eq!(first.tip.seq, 1);
        let second = seal(&key, &agent, &zone, &first.tip, 2000, &body()).unwrap();
        let v = parse(&second.wire)
            .unwrap()
            .verify(&key.public_key())
            .unwrap();
        assert_eq!(v.header.seq, 2);
        assert_eq!(v.header.prev_hash, first.tip.hash);
        assert_eq!(v.tip(), second.tip);
        assert_eq!(v.body().unwrap(), body());
    }

    #[test]
    fn wrong_key_is_a_mismatch_and_forged_key_id_fails_signature() {
        let (key, _) = SigningKey::generate().unwrap();
        let (other, _) = SigningKey::generate().unwrap();
        let agent = AgentId::new("gw-1").unwrap();
        let zone = ZoneId::new("cell-1").unwrap();
        let sealed = seal(&other, &agent, &zone, &ChainTip::GENESIS, 1, &body()).unwrap();
        let err = parse(&sealed.wire)
            .unwrap()
            .verify(&key.public_key())
            .unwrap_err();
        assert!(matches!(err, EnvelopeError::KeyMismatch { .. }));
    }

    #[test]
    fn rejects_oversize_and_garbage() {
        assert!(matches!(
            parse(&vec![0u8; MAX_ENVELOPE_BYTES + 1]),
            Err(EnvelopeError::Oversize { .. })
        ));
        assert!(matches!(
            parse(b"\xff\x00garbage"),
            Err(EnvelopeError::Malformed(_))
        ));
    }
}
