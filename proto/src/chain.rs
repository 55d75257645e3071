//! Sequence numbers and the per-agent hash chain.
//!
//! The sender keeps a [`ChainTip`] (last sequence number and hash) and persists it; the receiver
//! keeps the tip of what it accepted and judges each verified envelope against it with
//! [`judge`]. Each envelope stands alone cryptographically, so a gap or a chain break is a fact
//! to record, not a reason to stop listening to the agent; a replay is refused.

use serde::{Deserialize, Serialize};

use crate::envelope::{Digest, EnvelopeHeader};

/// The last envelope of an agent's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainTip {
    pub seq: u64,
    pub hash: Digest,
}

impl ChainTip {
    /// Before the first envelope: sequence 0, zero hash.
    pub const GENESIS: ChainTip = ChainTip {
        seq: 0,
        hash: Digest::ZERO,
    };

    /// Where an agent without a stored tip starts a new chain sealed at `time_ms` (its clock):
    /// the first envelope gets sequence number `time_ms` (at least 1) and a zero `prev_hash`.
    /// An agent seals far fewer than one envelope per millisecond, so with a clock that does
    /// not run backwards the new chain starts above every number the lost one used; the
    /// receiver refuses a restart that does not (see [`judge_restart`]).
    pub fn restart_at(time_ms: u64) -> ChainTip {
        ChainTip {
            seq: time_ms.max(1) - 1,
            hash: Digest::ZERO,
        }
    }
}

/// What the receiver makes of a verified envelope's place in its agent's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceVerdict {
    /// The first envelope the receiver has from this agent (it may start above 1 when the agent
    /// ran before it was enrolled).
    First,
    /// Exactly the next envelope, linked to the previous one.
    Next,
    /// Sequence numbers `from..=to` never arrived; this envelope is accepted after them.
    Gap { from: u64, to: u64 },
    /// The next sequence number, but `prev_hash` does not name the envelope the receiver
    /// holds: the agent's chain forked (state restored from a backup, or two agents sharing a
    /// key). Accepted and recorded.
    ChainBreak,
    /// At or below the last accepted sequence number: a replay or a late duplicate. Refused.
    Replay { last: u64 },
    /// A declared restart: above the last accepted sequence number `last`, with a zero
    /// `prev_hash` (signed: "this envelope follows nothing"). The agent started a new chain
    /// without its stored tip (state directory lost; see [`ChainTip::restart_at`]). Accepted
    /// and reported as state loss, not as an attack. At or below `last` it is a replay like any
    /// other: a restart may never reuse a sequence number.
    Restart { last: u64 },
}

impl SequenceVerdict {
    /// Whether the envelope is to be applied.
    pub fn accepts(&self) -> bool {
        !matches!(self, SequenceVerdict::Replay { .. })
    }
}

/// Judges `header` against the receiver's last accepted tip for the same agent.
pub fn judge(last: Option<&ChainTip>, header: &EnvelopeHeader) -> SequenceVerdict {
    let Some(last) = last else {
        return SequenceVerdict::First;
    };
    if header.seq <= last.seq {
        return SequenceVerdict::Replay { last: last.seq };
    }
    if header.prev_hash == Digest::ZERO {
        return SequenceVerdict::Restart { last: last.seq };
    }
    if header.seq > last.seq + 1 {
        return SequenceVerdict::Gap {
            from: last.seq + 1,
            to: header.seq - 1,
        };
    }
    if header.prev_hash != last.hash {
        return SequenceVerdict::ChainBreak;
    }
    SequenceVerdict::Next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AgentId, ZoneId};
    use crate::keys::KeyId;

    fn header(seq: u64, prev: Digest) -> EnvelopeHeader {
        EnvelopeHeader {
            version: 1,
            agent: AgentId::new("a").unwrap(),
            zone: ZoneId::new("z").unwrap(),
            key_id: KeyId([0; 16]),
            seq,
            time_ms: 0,
            prev_hash: prev,
            body: vec![],
        }
    }

    #[test]
    fn verdicts() {
        let tip = ChainTip {
            seq: 5,
            hash: Digest([7; 32]),
        };
        assert_eq!(
            judge(None, &header(9, Digest::ZERO)),
            SequenceVerdict::First
        );
        assert_eq!(
            judge(Some(&tip), &header(6, Digest([7; 32]))),
            SequenceVerdict::Next
        );
        assert_eq!(
            judge(Some(&tip), &header(6, Digest([8; 32]))),
            SequenceVerdict::ChainBreak
        );
        assert_eq!(
            judge(Some(&tip), &header(9, Digest([1; 32]))),
            SequenceVerdict::Gap { from: 6, to: 8 }
        );
        assert_eq!(
            judge(Some(&tip), &header(5, Digest([7; 32]))),
            SequenceVerdict::Replay { last: 5 }
        );
        assert!(!judge(Some(&tip), &header(1, Digest::ZERO)).accepts());
        assert_eq!(
            judge(Some(&tip), &header(1_000, Digest::ZERO)),
            SequenceVerdict::Restart { last: 5 }
        );
        assert_eq!(
            judge(Some(&tip), &header(6, Digest::ZERO)),
            SequenceVerdict::Restart { last: 5 }
        );
        // An undeclared rewind, or a declared one that would reuse numbers, is a replay.
        assert_eq!(
            judge(Some(&tip), &header(5, Digest::ZERO)),
            SequenceVerdict::Replay { last: 5 }
        );
        assert_eq!(ChainTip::restart_at(1_000).seq + 1, 1_000);
        assert_eq!(ChainTip::restart_at(0).seq + 1, 1);
    }
}
