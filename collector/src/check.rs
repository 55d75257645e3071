//! The read-only half of ingest: everything about an envelope that needs no write.
//!
//! [`check`] parses the wire form, finds the enrolled key, checks that it speaks for the
//! claimed agent and zone, verifies the signature, decodes the body and checks it against the
//! header. It only reads the CMDB (the key), so it can run on another thread with its own
//! connection while the previous envelope is being applied ([`crate::pipeline`]). What it
//! returns, a [`Checked`] envelope, is then judged against the chain and applied by
//! [`crate::ingest::Ingest`], which looks the key up again inside its transaction so that a
//! revocation in between is honoured.

use std::fmt;

use outpost_proto::changes::ChangeSet;
use outpost_proto::envelope::{self, EnvelopeError, Verified};
use outpost_proto::handover;
use outpost_proto::model::{Body, DataLost, Heartbeat, KeyHandover, ProbeReport, Summary};
use outpost_proto::{AgentId, KeyId, ZoneId};

use crate::cmdb::apply::Prepared;
use crate::cmdb::trust::{KeyStatus, TrustedKey};
use crate::cmdb::{Cmdb, CmdbError};

/// Why an envelope was refused: the stable names used for counters and the quarantine table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Oversize,
    Malformed,
    MalformedHeader,
    UnsupportedVersion,
    UnknownKey,
    KeyRevoked,
    /// Sealed with a key the agent has since handed over to a successor (`KeyHandover`).
    KeyRetired,
    AgentMismatch,
    ZoneNotAuthorised,
    BadSignature,
    BadSequence,
    /// The agent's clock says the envelope was sealed further in the future than the
    /// collector's clock plus the allowed skew (`serve --max-clock-skew`).
    FutureTimestamp,
    /// A `KeyHandover` whose new key, key ids or proof of possession do not check out, or
    /// whose new key cannot be enrolled for this agent.
    BadHandover,
    Replay,
    /// A byte-identical copy of an envelope already stored (QoS 1 redelivery): not an attack,
    /// not quarantined; counted as `envelopes_duplicate`. Only where redelivery is expected
    /// ([`crate::ingest::Ingest::recognise_redelivery`]: MQTT, and the diode since FEC repeat
    /// rounds); elsewhere it is `replay`.
    Duplicate,
    MalformedBody,
    BodyMismatch,
    BadBlockHash,
    Storage,
}

impl Reason {
    /// True for the refusals that depend on what is enrolled (and can change when an operator
    /// enrolls, adds a zone, revokes or a handover retires a key).
    pub fn depends_on_enrolment(self) -> bool {
        matches!(
            self,
            Reason::UnknownKey
                | Reason::KeyRevoked
                | Reason::KeyRetired
                | Reason::AgentMismatch
                | Reason::ZoneNotAuthorised
        )
    }

    /// The stable short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Oversize => "oversize",
            Reason::Malformed => "malformed",
            Reason::MalformedHeader => "malformed_header",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::UnknownKey => "unknown_key",
            Reason::KeyRevoked => "key_revoked",
            Reason::KeyRetired => "key_retired",
            Reason::AgentMismatch => "agent_mismatch",
            Reason::ZoneNotAuthorised => "zone_not_authorised",
            Reason::BadSignature => "bad_signature",
            Reason::BadSequence => "bad_sequence",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::BadHandover => "bad_handover",
            Reason::Replay => "replay",
            Reason::Duplicate => "duplicate",
            Reason::MalformedBody => "malformed_body",
            Reason::BodyMismatch => "body_mismatch",
            Reason::BadBlockHash => "bad_block_hash",
            Reason::Storage => "storage",
        }
    }

    /// The counter incremented for this reason.
    pub fn counter(self) -> &'static str {
        match self {
            Reason::Oversize => "envelopes_rejected.oversize",
            Reason::Malformed => "envelopes_rejected.malformed",
            Reason::MalformedHeader => "envelopes_rejected.malformed_header",
            Reason::UnsupportedVersion => "envelopes_rejected.unsupported_version",
            Reason::UnknownKey => "envelopes_rejected.unknown_key",
            Reason::KeyRevoked => "envelopes_rejected.key_revoked",
            Reason::KeyRetired => "envelopes_rejected.key_retired",
            Reason::AgentMismatch => "envelopes_rejected.agent_mismatch",
            Reason::ZoneNotAuthorised => "envelopes_rejected.zone_not_authorised",
            Reason::BadSignature => "envelopes_rejected.bad_signature",
            Reason::BadSequence => "envelopes_rejected.bad_sequence",
            Reason::FutureTimestamp => "envelopes_rejected.future_timestamp",
            Reason::BadHandover => "envelopes_rejected.bad_handover",
            Reason::Replay => "envelopes_rejected.replay",
            Reason::Duplicate => "envelopes_duplicate",
            Reason::MalformedBody => "envelopes_rejected.malformed_body",
            Reason::BodyMismatch => "envelopes_rejected.body_mismatch",
            Reason::BadBlockHash => "envelopes_rejected.bad_block_hash",
            Reason::Storage => "envelopes_rejected.storage",
        }
    }

    fn from_envelope_error(e: &EnvelopeError) -> Reason {
        match e {
            EnvelopeError::Oversize { .. } => Reason::Oversize,
            EnvelopeError::Malformed(_) | EnvelopeError::Encode(_) => Reason::Malformed,
            EnvelopeError::MalformedHeader(_) => Reason::MalformedHeader,
            EnvelopeError::UnsupportedVersion(_) => Reason::UnsupportedVersion,
            EnvelopeError::SignatureLength(_)
            | EnvelopeError::KeyMismatch { .. }
            | EnvelopeError::BadSignature(_) => Reason::BadSignature,
            EnvelopeError::MalformedBody(_) => Reason::MalformedBody,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the (unverified) header claimed, for the quarantine row and the log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimed {
    pub agent: Option<String>,
    pub key: Option<String>,
    pub seq: Option<u64>,
}

/// Why [`check`] refused an envelope, not yet recorded anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    /// What was wrong and what to do, for people.
    pub detail: String,
    pub claimed: Claimed,
}

/// An envelope whose signature, key, agent, zone and body checked out.
#[derive(Debug)]
pub struct Checked {
    pub(crate) verified: Verified,
    pub(crate) body: Body,
    /// A summary's CI keys and hashes, when worked out already ([`Checked::prepare`]).
    pub(crate) prepared: Option<Prepared>,
}

impl Checked {
    /// The verified header.
    pub fn header(&self) -> &envelope::EnvelopeHeader {
        &self.verified.header
    }

    /// The summary it carries (`None` for a heartbeat).
    pub fn summary(&self) -> Option<&Summary> {
        match &self.body {
            Body::Summary(summary) => Some(summary),
            Body::Heartbeat(_)
            | Body::DataLost(_)
            | Body::KeyHandover(_)
            | Body::Probes(_)
            | Body::Changes(_) => None,
        }
    }

    /// Works out a summary's CI keys and hashes now (see [`Prepared`]), so that applying it
    /// has less to do; the checking thread of [`crate::pipeline`] calls this.
    pub fn prepare(&mut self) {
        if let Body::Summary(summary) = &self.body {
            self.prepared = Some(Prepared::of(&self.verified.header.zone, summary));
        }
    }

    pub(crate) fn claimed(&self) -> Claimed {
        let h = &self.verified.header;
        Claimed {
            agent: Some(h.agent.to_string()),
            key: Some(h.key_id.to_string()),
            seq: Some(h.seq),
        }
    }
}

/// Checks everything that needs no write; reads the enrolled key from `db`.
pub fn check(db: &Cmdb, wire: &[u8]) -> Result<Checked, Refusal> {
    check_with(wire, &mut |key_id| db.trusted_key(key_id))
}

/// [`check`] with the enrolled key found by `keys` (the checking thread of
/// [`crate::pipeline`] keeps the keys it has seen).
pub(crate) fn check_with(
    wire: &[u8],
    keys: &mut dyn FnMut(&KeyId) -> Result<Option<TrustedKey>, CmdbError>,
) -> Result<Checked, Refusal> {
    let mut claimed = Claimed::default();
    check_inner(keys, wire, &mut claimed).map_err(|(reason, detail)| Refusal {
        reason,
        detail,
        claimed,
    })
}

fn check_inner(
    keys: &mut dyn FnMut(&KeyId) -> Result<Option<TrustedKey>, CmdbError>,
    wire: &[u8],
    claimed: &mut Claimed,
) -> Result<Checked, (Reason, String)> {
    let unverified =
        envelope::parse(wire).map_err(|e| (Reason::from_envelope_error(&e), e.to_string()))?;
    let h = unverified.header();
    claimed.agent = Some(h.agent.to_string());
    claimed.key = Some(h.key_id.to_string());
    claimed.seq = Some(h.seq);
    let key = keys(&h.key_id).map_err(|e| (Reason::Storage, e.to_string()))?;
    let key = authorise(key.as_ref(), &h.agent, &h.zone, &h.key_id.to_string())?;
    let verified = unverified
        .verify(&key.public_key)
        .map_err(|e| (Reason::from_envelope_error(&e), e.to_string()))?;
    let h = &verified.header;
    if h.seq == 0 || i64::try_from(h.seq).is_err() {
        return Err((
            Reason::BadSequence,
            format!(
                "sequence number {} is out of range (1..={})",
                h.seq,
                i64::MAX
            ),
        ));
    }
    let body = verified
        .body()
        .map_err(|e| (Reason::from_envelope_error(&e), e.to_string()))?;
    match &body {
        Body::Summary(summary) => check_summary(summary, &h.agent, &h.zone)?,
        Body::DataLost(n) => check_data_lost(n, &h.agent, &h.zone, h.seq)?,
        Body::Heartbeat(beat) => check_heartbeat(beat, h)?,
        Body::KeyHandover(handover) => check_handover(handover, h)?,
        Body::Probes(report) => check_probes(report, h)?,
        Body::Changes(set) => check_changes(set, &h.agent, &h.zone)?,
    }
    Ok(Checked {
        verified,
        body,
        prepared: None,
    })
}

/// The key must exist, be active, and be enrolled for this agent and zone.
pub(crate) fn authorise<'k>(
    key: Option<&'k TrustedKey>,
    agent: &AgentId,
    zone: &ZoneId,
    key_id: &str,
) -> Result<&'k TrustedKey, (Reason, String)> {
    let Some(key) = key else {
        return Err((
            Reason::UnknownKey,
            format!(
                "key {key_id} is not enrolled; if agent {agent} is legitimate, enroll its .pub \
                 file with `outpost-collector enroll --key FILE --zone {zone}`"
            ),
        ));
    };
    if key.status == KeyStatus::Revoked {
        return Err((
            Reason::KeyRevoked,
            format!("key {key_id} (agent {}) has been revoked", key.agent),
        ));
    }
    if key.status == KeyStatus::Retired {
        return Err((
            Reason::KeyRetired,
            format!(
                "key {key_id} (agent {}) was retired by a key handover; envelopes sealed with it \
                 after the handover are refused (`outpost-collector key list` shows its successor)",
                key.agent
            ),
        ));
    }
    if &key.agent != agent {
        return Err((
            Reason::AgentMismatch,
            format!(
                "envelope claims agent {agent} but key {key_id} is enrolled for agent {}",
                key.agent
            ),
        ));
    }
    if !key.zones.contains(zone) {
        let zones: Vec<&str> = key.zones.iter().map(ZoneId::as_str).collect();
        return Err((
            Reason::ZoneNotAuthorised,
            format!(
                "agent {agent} reports zone {zone} but its key {key_id} is trusted for zone(s) \
                 {}; if that is intended, run `outpost-collector enroll --zone {zone} --agent \
                 {agent} --key FILE`",
                zones.join(", ")
            ),
        ));
    }
    Ok(key)
}

/// A data-lost notice must describe the header's agent and zone and name an earlier range.
fn check_data_lost(
    n: &DataLost,
    agent: &AgentId,
    zone: &ZoneId,
    seq: u64,
) -> Result<(), (Reason, String)> {
    if &n.agent != agent || &n.zone != zone {
        return Err((
            Reason::BodyMismatch,
            format!(
                "envelope header says agent {agent} zone {zone} but its data-lost notice says \
                 agent {} zone {}",
                n.agent, n.zone
            ),
        ));
    }
    if n.from_seq == 0 || n.from_seq > n.to_seq || n.to_seq >= seq {
        return Err((
            Reason::BodyMismatch,
            format!(
                "data-lost notice {seq} names range {}..={}, which is not a range of earlier \
                 envelopes",
                n.from_seq, n.to_seq
            ),
        ));
    }
    Ok(())
}

/// A change set must name the header's agent and zone and keep its bounds
/// ([`outpost_proto::changes::ChangeSet::check`]).
fn check_changes(set: &ChangeSet, agent: &AgentId, zone: &ZoneId) -> Result<(), (Reason, String)> {
    if &set.agent != agent || &set.zone != zone {
        return Err((
            Reason::BodyMismatch,
            format!(
                "envelope header says agent {agent} zone {zone} but its change set says agent {} \
                 zone {}",
                set.agent, set.zone
            ),
        ));
    }
    set.check().map_err(|e| {
        (
            Reason::MalformedBody,
            format!("change set from agent {agent} breaks its bounds: {e}"),
        )
    })
}

/// A key handover must name the header's agent and zone and the key it is sealed with, and the
/// new key must prove possession (see [`outpost_proto::handover`]).
fn check_handover(k: &KeyHandover, h: &envelope::EnvelopeHeader) -> Result<(), (Reason, String)> {
    if k.agent != h.agent || k.zone != h.zone {
        return Err((
            Reason::BodyMismatch,
            format!(
                "envelope header says agent {} zone {} but its key handover says agent {} zone {}",
                h.agent, h.zone, k.agent, k.zone
            ),
        ));
    }
    handover::verify(k, &h.agent, &h.key_id, h.seq)
        .map(|_| ())
        .map_err(|e| (Reason::BadHandover, format!("agent {}: {e}", h.agent)))
}

/// A probe report must name its own agent and zone and stay within the protocol's bounds.
fn check_probes(r: &ProbeReport, h: &envelope::EnvelopeHeader) -> Result<(), (Reason, String)> {
    if r.agent != h.agent || r.zone != h.zone {
        return Err((
            Reason::BodyMismatch,
            format!(
                "envelope header says agent {} zone {} but its probe report says agent {} zone {}",
                h.agent, h.zone, r.agent, r.zone
            ),
        ));
    }
    r.check_bounds().map_err(|why| {
        (
            Reason::BodyMismatch,
            format!("agent {}: probe report refused: {why}", h.agent),
        )
    })
}

/// The body must describe the header's agent and zone, and every block hash must be honest.
/// A heartbeat must name its own agent and zone, and the tip its header follows.
fn check_heartbeat(b: &Heartbeat, h: &envelope::EnvelopeHeader) -> Result<(), (Reason, String)> {
    if b.agent != h.agent || b.zone != h.zone {
        return Err((
            Reason::BodyMismatch,
            format!(
                "envelope header says agent {} zone {} but its heartbeat says agent {} zone {}",
                h.agent, h.zone, b.agent, b.zone
            ),
        ));
    }
    if b.last_seq.checked_add(1) != Some(h.seq) || b.last_hash != h.prev_hash {
        return Err((
            Reason::BodyMismatch,
            format!(
                "heartbeat seq {} claims to follow seq {} hash {}, but its header follows hash {}",
                h.seq, b.last_seq, b.last_hash, h.prev_hash
            ),
        ));
    }
    Ok(())
}

fn check_summary(s: &Summary, agent: &AgentId, zone: &ZoneId) -> Result<(), (Reason, String)> {
    if &s.agent != agent || &s.zone != zone {
        return Err((
            Reason::BodyMismatch,
            format!(
                "envelope header says agent {agent} zone {zone} but its summary says agent {} \
                 zone {}",
                s.agent, s.zone
            ),
        ));
    }
    for asset in &s.assets {
        for block in &asset.blocks {
            if !block.hash_is_consistent() {
                return Err((
                    Reason::BadBlockHash,
                    format!(
                        "asset {:?} ({} unit {}) block {:?}: hash {} does not match its values",
                        asset.name, asset.endpoint, asset.unit_id, block.name, block.hash
                    ),
                ));
            }
        }
    }
    Ok(())
}
