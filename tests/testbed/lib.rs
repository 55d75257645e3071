//! Outpost's test bed: everything needed to exercise the agent and the collector against
//! something that behaves like a plant, without a plant.
//!
//! - [`sim`]: a Modbus TCP plant simulator (tokio-modbus server) with realistic device
//!   identities, volatile process values, misbehaving devices and per-function-code counters.
//! - [`ews`]: a test engineering workstation that writes registers (FC 6), to cause drift.
//! - [`harness`]: small helpers for end-to-end tests (built binaries, child processes killed
//!   on drop, bounded waiting, free loopback ports, temp dirs, ready files).
//! - [`mosquitto`]: a real mosquitto broker with a test-time PKI, password file and ACL.
//! - [`relay`]: a lossy UDP relay (seeded loss, bursts, reordering, duplication, truncation).
//! - [`netns`]: plant, agent and IT network namespaces with the agent sealed by nftables.
//! - [`pty`]: socat pseudo-terminal pairs (a serial line for Modbus RTU) and a relay that
//!   corrupts answers on demand (a noisy line).
//! - [`procnet`]: a process's sockets as the kernel sees them (`/proc/<pid>/fd`, `/proc/net`).
//! - [`scenario`]: agent configurations for a running simulated plant.
//! - [`workload`]: synthetic summaries for benchmarks.

pub mod ews;
pub mod harness;
pub mod mosquitto;
pub mod netns;
pub mod procnet;
pub mod pty;
pub mod relay;
pub mod scenario;
pub mod sim;
pub mod workload;
