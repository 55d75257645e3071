//! The Outpost edge agent.
//!
//! A pipeline in Vector's shape: *sources* (Modbus TCP devices through the read-only client,
//! the gateway host) → *summary* (one inventory snapshot per cycle) → *seal* (sign, sequence,
//! chain; `outpost_proto::envelope`) → *transports* (the send-only UDP diode sender, and/or MQTT
//! through an on-disk spool).
//!
//! - [`config`]: the strict TOML config and its validation; [`rtu_config`]: its `[[serial_bus]]`.
//! - [`discover_config`]: the `[profiles]` and `[[discover]]` sections of the config.
//! - [`keyfile`]: generating and loading the agent's Ed25519 key (mode 0600).
//! - [`modbus`]: the read-only client, FC 43 identification, polling one device.
//! - [`discovery`]: sweeping address ranges (`outpost-agent scan`) under a politeness budget.
//! - [`profile`]: device profiles (built-in and user TOML files) matched by identity.
//! - [`host`]: gateway facts.
//! - [`segmentation`]: TCP connect probes of what the zone must not / may reach.
//! - [`observe`]: the last observed state and the change events it yields.
//! - [`identity`]: serial numbers (profile-named FC 43 object) and MACs (ARP cache) for CI
//!   reconciliation at the collector.
//! - [`state`]: the persisted chain tip and the state directory lock.
//! - [`transport`]: the diode sender, the MQTT publisher and its spool.
//! - [`cycle`]: [`Agent`], one cycle and the loop of cycles.
//!
//! Invariants: the agent never listens and never reads from its sending socket; it cannot
//! write to a field device; it persists the new chain tip before an envelope leaves.

pub mod config;
pub mod cycle;
pub mod discover_config;
pub mod discovery;
pub mod host;
pub mod identity;
pub mod keyfile;
pub mod modbus;
pub mod observe;
pub mod profile;
pub mod rotate;
pub mod rtu_config;
pub mod segmentation;
pub mod state;
pub mod transport;

pub use config::{Config, ConfigError};
pub use cycle::{Agent, CycleReport};

/// Why the agent could not start or finish a cycle.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] keyfile::KeyFileError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Diode(#[from] transport::diode::DiodeError),
    #[error(transparent)]
    Spool(#[from] transport::spool::SpoolError),
    #[error(transparent)]
    Mqtt(#[from] transport::mqtt::MqttError),
    #[error("mqtt spool lock poisoned (an internal error); restart the agent")]
    SpoolPoisoned,
    #[error(
        "a device profile was refused; fix or remove it (or set [profiles] enabled = false) and restart"
    )]
    Profile(#[from] profile::ProfileError),
    #[error("cannot seal the summary: {0}")]
    Seal(#[from] outpost_proto::EnvelopeError),
}
