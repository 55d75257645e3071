//! The Outpost collector: the IT side of the conduit.
//!
//! Datagrams arrive over a one-way UDP diode ([`serve()`]) — or envelopes from an MQTT broker
//! ([`mqtt::serve_mqtt`]) — are reassembled into envelopes
//! (`outpost_proto::reassembly`), verified and judged ([`ingest`]), and applied to a SQLite CMDB
//! in one transaction per envelope ([`cmdb`]). Everything refused is counted, logged and kept in
//! the quarantine table. [`render`] turns the read side ([`cmdb::query`]) into text tables for
//! people and versioned JSON documents for scripts (see `docs/json.md`).
//!
//! - [`cmdb`]: the database: schema and migrations, trusted keys, applying summaries, queries.
//! - [`check`] and [`ingest`]: envelope bytes in, applied or quarantined out; no sockets.
//!   [`pipeline`] runs the read-only checks on a second thread.
//! - [`mod@serve`]: the UDP listener around the reassembler and a blocking ingest thread.
//! - [`mqtt`]: the MQTT subscriber (persistent session, manual acks) feeding the same ingest.
//! - [`render`] and [`table`]: text tables and JSON documents.
//! - [`liveness`]: conduit silent vs agent silent vs idle, from heartbeats; [`kernel`]: the
//!   kernel's UDP drop counter for our socket.
//! - [`alert`]: delivers the alert outbox (drift judged in [`cmdb::baseline`],
//!   [`cmdb::change_record`]) as OCSF JSON lines and RFC 5424 syslog; [`render_drift`] shows
//!   drift, change records and alerts.
//! - [`budget`] and [`lograte`]: how much a flood of refused input may write (quarantine rows,
//!   log lines); counters always count.

pub mod alert;
pub mod audit;
pub mod budget;
pub mod check;
pub mod cmdb;
pub mod evidence;
pub mod export;
pub mod ingest;
pub mod kernel;
pub mod key_cmd;
pub mod liveness;
pub mod lograte;
pub mod mqtt;
pub mod pipeline;
pub mod render;
pub mod render_drift;
pub mod render_probes;
pub mod serve;
pub mod table;
pub mod time;

pub use cmdb::{Cmdb, CmdbError};
pub use ingest::{Applied, Ingest, Reason, Rejected};
pub use serve::{ServeConfig, ServeError, ServeStats, serve};
