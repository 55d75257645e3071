//! Key rotation without a return path.
//!
//! The agent cannot ask the collector to trust a new key; it can only announce one. A
//! [`KeyHandover`] body is sealed under the *old* key (so the receiver knows the announcement
//! comes from the enrolled agent) and carries a signature by the *new* key over
//! [`message`]`(agent, old key id, new key id, seq)` (proof of possession: nobody can hand the
//! agent's identity over to a key they do not hold, and the signature cannot be replayed into
//! another agent's or another envelope's handover). The receiver checks both, enrolls the new
//! key for the same agent and zones, and retires the old one.

use crate::ids::AgentId;
use crate::ids::ZoneId;
use crate::keys::{KeyId, PublicKey, SigningKey};
use crate::model::KeyHandover;

/// Domain separation for the new key's signature.
pub const HANDOVER_CONTEXT: &[u8] = b"outpost/key-handover/v1\0";

/// What the new key signs: context, agent id (length-prefixed), old and new key ids, and the
/// sequence number of the envelope carrying the handover (big-endian).
pub fn message(agent: &AgentId, old: &KeyId, new: &KeyId, seq: u64) -> Vec<u8> {
    let agent = agent.as_str().as_bytes();
    let mut m = Vec::with_capacity(HANDOVER_CONTEXT.len() + 1 + agent.len() + 32 + 8);
    m.extend_from_slice(HANDOVER_CONTEXT);
    m.push(agent.len() as u8);
    m.extend_from_slice(agent);
    m.extend_from_slice(&old.0);
    m.extend_from_slice(&new.0);
    m.extend_from_slice(&seq.to_be_bytes());
    m
}

/// Builds the handover body for the envelope `seq` that `old` will seal.
pub fn announce(
    agent: &AgentId,
    zone: &ZoneId,
    old: &SigningKey,
    new: &SigningKey,
    seq: u64,
) -> KeyHandover {
    let signature = new.sign(&message(agent, &old.key_id(), &new.key_id(), seq));
    KeyHandover {
        agent: agent.clone(),
        zone: zone.clone(),
        old_key_id: old.key_id(),
        new_public_key: new.public_key().0,
        new_key_id: new.key_id(),
        new_key_signature: signature.to_vec(),
    }
}

/// Why a handover body does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoverError {
    #[error("handover names old key {named}, but the envelope is sealed with key {sealed}")]
    OldKeyMismatch { named: KeyId, sealed: KeyId },
    #[error("handover names new key {named}, but its public key has id {actual}")]
    NewKeyIdMismatch { named: KeyId, actual: KeyId },
    #[error("handover to key {0}: the new key is the old key")]
    SameKey(KeyId),
    #[error(
        "handover to key {0}: the new key's signature over the handover does not verify (no proof of possession)"
    )]
    BadSignature(KeyId),
}

/// Checks a handover carried by envelope `seq` of `agent`, sealed with `sealed_with`.
/// Returns the new public key.
pub fn verify(
    h: &KeyHandover,
    agent: &AgentId,
    sealed_with: &KeyId,
    seq: u64,
) -> Result<PublicKey, HandoverError> {
    if &h.old_key_id != sealed_with {
        return Err(HandoverError::OldKeyMismatch {
            named: h.old_key_id,
            sealed: *sealed_with,
        });
    }
    let new = PublicKey(h.new_public_key);
    if new.key_id() != h.new_key_id {
        return Err(HandoverError::NewKeyIdMismatch {
            named: h.new_key_id,
            actual: new.key_id(),
        });
    }
    if &h.new_key_id == sealed_with {
        return Err(HandoverError::SameKey(h.new_key_id));
    }
    let m = message(agent, &h.old_key_id, &h.new_key_id, seq);
    if !new.verify(&m, &h.new_key_signature) {
        return Err(HandoverError::BadSignature(h.new_key_id));
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announce_verifies_and_binds_agent_and_seq() {
        let (old, _) = SigningKey::generate().unwrap();
        let (new, _) = SigningKey::generate().unwrap();
        let agent = AgentId::new("gw-1").unwrap();
        let zone = ZoneId::new("cell-1").unwrap();
        let h = announce(&agent, &zone, &old, &new, 7);
        assert_eq!(
            verify(&h, &agent, &old.key_id(), 7).unwrap(),
            new.public_key()
        );
        assert_eq!(
            verify(&h, &agent, &old.key_id(), 8),
            Err(HandoverError::BadSignature(new.key_id()))
        );
        let other = AgentId::new("gw-2").unwrap();
        assert!(verify(&h, &other, &old.key_id(), 7).is_err());
        assert!(matches!(
            verify(&h, &agent, &new.key_id(), 7),
            Err(HandoverError::OldKeyMismatch { .. })
        ));
        // Someone without the new key cannot substitute a key of their own.
        let (mallory, _) = SigningKey::generate().unwrap();
        let mut forged = h.clone();
        forged.new_public_key = mallory.public_key().0;
        forged.new_key_id = mallory.key_id();
        assert_eq!(
            verify(&forged, &agent, &old.key_id(), 7),
            Err(HandoverError::BadSignature(mallory.key_id()))
        );
    }
}
