//! Discovery: sweeping address ranges for Modbus TCP devices and identifying what answers.
//!
//! Used by `outpost-agent scan` (a one-shot sweep an engineer runs on site). Everything goes
//! through [`crate::modbus::read_only::ReadOnlyClient`], so only FC 43 (and FC 17 as fallback)
//! leave the agent during a scan; no register is read and nothing can be written.
//!
//! # Politeness budget
//!
//! | limit | default | flag |
//! |---|---|---|
//! | K: TCP connections open at once (one per device) | 16 | `--max-connections` (1..=256) |
//! | R: requests per second per device (gap 1/R between request starts) | 10 | `--rate` |
//! | outstanding requests per device | 1 (by construction: `&mut self` per request) | — |
//! | connect timeout (an unreachable address costs exactly this, once) | 500 ms | `--connect-timeout` |
//! | request timeout | 1 s | `--timeout` |
//! | "server busy" (exception 06) | wait 0.5 s, 1 s, 2 s, then give up on that request | — |
//! | slow answer (> half the request timeout) | gap doubled, up to 2 s | — |
//! | silent device (accepts, never answers) | given up after 2 timeouts | — |
//! | timeouts per address | at most 4, then remaining unit ids skipped | — |
//! | unit id 0 (broadcast) | never sent | — |
//! | range size | ≤ 4096 addresses (/20) unless `--force`; ≤ 65536 even forced | `--force` |
//!
//! - [`targets`]: CIDR expansion with the size limits, unit id lists.
//! - [`scan`]: the sweep under the budget.
//! - [`report`]: table, JSON, starter config.
//! - [`command`]: the `scan` subcommand (arguments, progress, output).
//! - [`running`]: `[[discover]]` in `run`: sweeps every `every` cycles, found devices polled
//!   with their profile's blocks, explicit devices winning.
//!
//! In `run`, a `[[discover]]` section keeps the same budget with the config's words: K is
//! `max_connections` (default 16), the connect timeout is the section's `connect_timeout`
//! (default 500 ms), the request timeout and the gap between requests (1 / R) are `[modbus]
//! request_timeout` and `min_request_gap`, and the size limit is lifted with `force = true`.
//! Sections are swept one after the other.

pub mod command;
pub mod report;
pub mod running;
pub mod scan;
pub mod targets;

pub use scan::{AddressResult, Budget, Outcome, ScanPlan, UnitFound, scan};
pub use targets::{MAX_ADDRESSES, MAX_ADDRESSES_FORCED, TargetError, expand, parse_units};
