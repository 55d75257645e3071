//! Segmentation probes: does the zone reach what it must not, and the conduits it needs?
//!
//! - [`targets`]: the `[segmentation]` config: `ip:port` / `cidr:port` entries, expanded and
//!   bounded ([`targets::MAX_TARGETS`]), never a field device's Modbus port.
//! - [`probe`]: one round: a TCP connect per target, paced to `max_probes_per_sec`, each bounded
//!   by `connect_timeout`; a connected socket is closed at once, nothing is sent or read.
//!
//! Only TCP connects are used. ICMP needs a raw socket (CAP_NET_RAW), which the sandboxed agent
//! must not hold; a UDP probe gets no reliable answer (silence means "filtered" and "nobody
//! listens" alike). A refused connect (a TCP reset) from a must-not-reach target still proves
//! that packets get there, so it counts as reachable; a timeout counts as blocked.

pub mod probe;
pub mod targets;

pub use targets::{ProbeTarget, SegmentationConfig};
