//! Outpost's shared, IO-free core.
//!
//! Everything that both sides of a conduit must agree on lives here, and nothing in this crate
//! opens a socket, reads a file or looks at a clock: bytes and times go in, bytes and verdicts
//! come out (the "sans-IO" shape of quinn-proto). That keeps every codec and parser easy to
//! property-test and fuzz.
//!
//! - [`ids`]: validated agent and zone identifiers.
//! - [`model`]: what an agent reports (assets, identity, register blocks, gateway host facts).
//! - [`changes`]: signed change events (what changed since the last observation, bounded).
//! - [`cbor`]: the bounded CBOR codec (ciborium) every message body goes through.
//! - [`keys`]: Ed25519 keys, key ids and the public-key file format.
//! - [`envelope`]: signed envelopes with sequence numbers and a per-agent hash chain.
//! - [`chain`]: the receiver's judgement of sequence and chain continuity.
//! - [`handover`]: key rotation announced under the old key with proof of the new.
//! - [`frame`], [`fec`] and [`reassembly`]: splitting envelopes into diode datagrams (plain or
//!   RaptorQ-coded) and back.

pub mod cbor;
pub mod chain;
pub mod changes;
pub mod envelope;
pub mod fec;
pub mod frame;
pub mod handover;
pub mod hex;
pub mod ids;
pub mod keys;
pub mod model;
pub mod reassembly;

pub use chain::{ChainTip, SequenceVerdict};
pub use envelope::{Digest, EnvelopeError, EnvelopeHeader, Unverified, Verified};
pub use ids::{AgentId, IdError, ZoneId};
pub use keys::{KeyError, KeyId, PublicKey, SigningKey};
pub use model::Body;
