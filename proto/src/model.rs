//! What an agent reports.
//!
//! A [`Body`] is the payload of one signed envelope: a full inventory [`Summary`] (every cycle,
//! so the receiver's state converges after any loss), a [`Heartbeat`] between cycles, or a
//! [`DataLost`] notice naming envelopes the agent dropped; change events and evidence will be
//! further variants. Field names are short but readable: they are part of the wire format, so
//! renaming one is a protocol change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::Digest;
use crate::ids::{AgentId, ZoneId};
use crate::keys::KeyId;

/// The payload of one envelope.
///
/// `Summary` is much larger than the other variants; boxing it would cost an allocation per
/// decoded envelope for no gain, since a `Body` is decoded once and consumed, never stored in bulk.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// A full inventory snapshot of an agent's zone.
    Summary(Summary),
    /// The agent dropped envelopes `from_seq..=to_seq` before they could be delivered (its
    /// outbound spool was full); `reason` says why. The notice is itself signed and chained,
    /// so loss is never silent.
    DataLost(DataLost),
    /// "Still here": sent between cycles so the receiver learns the chain tip (and so a lost
    /// last message) within one interval, and can tell an idle agent from a silent conduit.
    Heartbeat(Heartbeat),
    /// The agent replaces its signing key: sealed under the old key, carrying the new public
    /// key and the new key's signature over the handover (proof of possession). See
    /// [`crate::handover`].
    KeyHandover(KeyHandover),
    /// One round of segmentation probes: TCP connects to targets the zone must not reach and to
    /// the conduits it may reach (see [`ProbeReport`]).
    Probes(ProbeReport),
    /// What changed since the agent's last observation (see [`crate::changes`]): sent between
    /// full snapshots, bounded, judged by the receiver at once.
    Changes(crate::changes::ChangeSet),
}

/// A signed announcement of a new signing key (see [`crate::handover`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyHandover {
    pub agent: AgentId,
    pub zone: ZoneId,
    /// The key this envelope is sealed with (the one being retired).
    pub old_key_id: KeyId,
    /// The new Ed25519 public key.
    #[serde(with = "serde_bytes")]
    pub new_public_key: [u8; 32],
    /// Its fingerprint (must match `new_public_key`).
    pub new_key_id: KeyId,
    /// The new key's signature over [`crate::handover::message`]`(agent, old, new, seq)`.
    #[serde(with = "serde_bytes")]
    pub new_key_signature: Vec<u8>,
}

/// A signed report that envelopes were dropped at the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataLost {
    pub agent: AgentId,
    pub zone: ZoneId,
    /// First dropped sequence number.
    pub from_seq: u64,
    /// Last dropped sequence number (inclusive).
    pub to_seq: u64,
    /// How many envelopes in the range were dropped (the range may contain kept notices).
    pub dropped: u64,
    /// Why, for people (`spool_full`: the outbound spool reached its byte limit).
    pub reason: String,
}

impl Body {
    /// A short name for logs and the CMDB (`summary`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Summary(_) => "summary",
            Body::DataLost(_) => "data_lost",
            Body::Heartbeat(_) => "heartbeat",
            Body::KeyHandover(_) => "key_handover",
            Body::Probes(_) => "probes",
            Body::Changes(_) => "changes",
        }
    }
}

/// A heartbeat. It is an envelope in the agent's chain like any other (its own sequence number,
/// `prev_hash` naming the last envelope), so the receiver's ordinary chain judgement turns a
/// lost last message into a gap the moment the next heartbeat arrives. The body repeats the tip
/// it follows (`last_seq`, `last_hash`, checked against the header by the receiver) and says
/// when to expect the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub agent: AgentId,
    pub zone: ZoneId,
    /// The sequence number of the envelope before this one.
    pub last_seq: u64,
    /// Its hash.
    pub last_hash: Digest,
    /// The agent's heartbeat interval in milliseconds.
    pub interval_ms: u64,
    /// The last full snapshot's sequence number (0: none yet since start).
    pub last_summary_seq: u64,
}

/// A full inventory snapshot: every configured field device and the gateway itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub agent: AgentId,
    pub zone: ZoneId,
    /// When the poll cycle started, milliseconds since the Unix epoch (agent clock).
    pub started_ms: u64,
    /// When the poll cycle finished.
    pub finished_ms: u64,
    /// The gateway the agent runs on; `None` if host facts could not be collected.
    pub gateway: Option<HostFacts>,
    /// One entry per (device, unit id) the agent is configured to poll, reachable or not.
    pub assets: Vec<AssetObservation>,
}

/// How a field device is reached.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// Modbus TCP: host (IP address or name as configured) and port.
    Tcp { host: String, port: u16 },
    /// Modbus RTU: serial device path on the gateway.
    Rtu { device: String },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Endpoint::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Endpoint::Rtu { device } => write!(f, "rtu://{device}"),
        }
    }
}

/// One field device (one unit id at one endpoint) as seen in one poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetObservation {
    /// The name the agent's config gives the device.
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "ep")]
    pub endpoint: Endpoint,
    #[serde(rename = "u")]
    pub unit_id: u8,
    /// Whether the device answered; when it did not, `identity` and `blocks` are empty.
    #[serde(rename = "st")]
    pub status: PollStatus,
    #[serde(rename = "id")]
    pub identity: DeviceIdentity,
    #[serde(rename = "b")]
    pub blocks: Vec<RegisterBlock>,
    /// Problems short of unreachability (a block that raised an exception, …), one line each.
    #[serde(rename = "p")]
    pub problems: Vec<String>,
    /// The device profile whose blocks (and firmware register) the agent read for this unit,
    /// when the agent's config named no blocks for it. Absent in envelopes of older agents.
    #[serde(rename = "pf", default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The device's serial number, read from the FC 43 object its device profile names
    /// (`[serial]` in the profile); `None` when no profile names one or the device did not give
    /// it. Absent on the wire when `None` (added after version 1: old envelopes decode).
    #[serde(rename = "sn", default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The device's MAC address as the gateway's ARP cache knows it (`aa:bb:cc:dd:ee:ff`);
    /// `None` for serial-line devices and hosts not in the cache. Absent on the wire when `None`.
    #[serde(rename = "mac", default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// The outcome of polling one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollStatus {
    /// Every request answered.
    Ok,
    /// The device answered some requests; see `problems`.
    Partial,
    /// No usable answer; the text says why (connect refused, timeout, …).
    Unreachable(String),
}

/// How a device's identity was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentMethod {
    /// Nothing identified the device.
    #[default]
    None,
    /// FC 43 / MEI 14 Read Device Identification.
    ReadDeviceIdentification,
    /// FC 17 Report Server ID.
    ReportServerId,
}

/// A device's identity, from Modbus Read Device Identification (FC 43 / MEI 14) objects 0x00–0x06
/// and any further objects it gave.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceIdentity {
    #[serde(rename = "m")]
    pub method: IdentMethod,
    /// Object 0x00.
    #[serde(rename = "vn", default, skip_serializing_if = "Option::is_none")]
    pub vendor_name: Option<String>,
    /// Object 0x01.
    #[serde(rename = "pc", default, skip_serializing_if = "Option::is_none")]
    pub product_code: Option<String>,
    /// Object 0x02 (MajorMinorRevision: usually the firmware version).
    #[serde(rename = "rv", default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Object 0x03.
    #[serde(rename = "vu", default, skip_serializing_if = "Option::is_none")]
    pub vendor_url: Option<String>,
    /// Object 0x04.
    #[serde(rename = "pn", default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    /// Object 0x05.
    #[serde(rename = "mn", default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// Object 0x06.
    #[serde(rename = "ua", default, skip_serializing_if = "Option::is_none")]
    pub user_application_name: Option<String>,
    /// Any other object id the device returned (0x07–0xFF), as text (lossy UTF-8).
    #[serde(rename = "o", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other: BTreeMap<u8, String>,
}

impl DeviceIdentity {
    /// The named fields as (attribute name, value) pairs, in object-id order.
    pub fn fields(&self) -> [(&'static str, Option<&str>); 7] {
        [
            ("vendor_name", self.vendor_name.as_deref()),
            ("product_code", self.product_code.as_deref()),
            ("revision", self.revision.as_deref()),
            ("vendor_url", self.vendor_url.as_deref()),
            ("product_name", self.product_name.as_deref()),
            ("model_name", self.model_name.as_deref()),
            (
                "user_application_name",
                self.user_application_name.as_deref(),
            ),
        ]
    }
}

/// The Modbus data table a block is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterKind {
    /// FC 1.
    Coil,
    /// FC 2.
    DiscreteInput,
    /// FC 3.
    Holding,
    /// FC 4.
    Input,
}

impl RegisterKind {
    /// The name used in configs and the CMDB.
    pub fn as_str(self) -> &'static str {
        match self {
            RegisterKind::Coil => "coil",
            RegisterKind::DiscreteInput => "discrete_input",
            RegisterKind::Holding => "holding",
            RegisterKind::Input => "input",
        }
    }
}

/// The raw values of one configured block of registers or bits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterBlock {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "k")]
    pub kind: RegisterKind,
    #[serde(rename = "s")]
    pub start: u16,
    /// Register values; for coils and discrete inputs, 0 or 1 per bit. On the wire: one byte
    /// string of big-endian 16-bit words (compact, and one CBOR item to decode instead of many).
    #[serde(rename = "v", with = "be_words")]
    pub values: Vec<u16>,
    /// [`RegisterBlock::content_hash`] of the above, so a receiver can compare blocks cheaply.
    #[serde(rename = "h")]
    pub hash: Digest,
    /// A block of process values that change in normal operation (configured `volatile`): the
    /// receiver stores it but never judges its changes as drift. Absent on the wire when false.
    #[serde(rename = "vo", default, skip_serializing_if = "std::ops::Not::not")]
    pub volatile: bool,
}

impl RegisterBlock {
    /// Builds a block and computes its content hash.
    pub fn new(name: impl Into<String>, kind: RegisterKind, start: u16, values: Vec<u16>) -> Self {
        let hash = Self::content_hash(kind, start, &values);
        Self {
            name: name.into(),
            kind,
            start,
            values,
            hash,
            volatile: false,
        }
    }

    /// The same block, marked volatile (or not).
    pub fn with_volatile(mut self, volatile: bool) -> Self {
        self.volatile = volatile;
        self
    }

    /// SHA-256 over the kind, start address and big-endian values.
    ///
    /// The values are fed in chunks of up to 128 registers (one update each) rather than one
    /// two-byte update per register: the same bytes, so the same hash, at a fraction of the
    /// cost (a receiver hashes every block of every summary).
    pub fn content_hash(kind: RegisterKind, start: u16, values: &[u16]) -> Digest {
        const CHUNK: usize = 128;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(kind.as_str().as_bytes());
        ctx.update(&start.to_be_bytes());
        let mut buf = [0u8; CHUNK * 2];
        for chunk in values.chunks(CHUNK) {
            for (out, v) in buf.chunks_exact_mut(2).zip(chunk) {
                out.copy_from_slice(&v.to_be_bytes());
            }
            ctx.update(&buf[..chunk.len() * 2]);
        }
        Digest::from_ring(ctx.finish())
    }

    /// True when `hash` matches the values (a receiver checks this before trusting `hash`).
    pub fn hash_is_consistent(&self) -> bool {
        Self::content_hash(self.kind, self.start, &self.values) == self.hash
    }
}

/// Facts about the gateway the agent runs on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: Option<String>,
    pub os_name: Option<String>,
    pub os_version: Option<String>,
    pub kernel_version: Option<String>,
    pub cpu_arch: String,
    pub cpu_count: u32,
    pub memory_bytes: u64,
    /// Seconds since the Unix epoch.
    pub boot_time: u64,
    pub interfaces: Vec<NetInterface>,
    /// The agent's own version.
    pub agent_version: String,
    /// The CPU model as the kernel names it (`/proc/cpuinfo` "model name"), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    /// Mounted block-device filesystems, sorted by mount point, at most [`MAX_HOST_DISKS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<HostDisk>,
    /// Sockets open for inbound traffic: TCP in LISTEN state and unconnected UDP sockets,
    /// sorted and deduplicated, at most [`MAX_LISTENING`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listening: Vec<ListeningSocket>,
    /// The distinct executables of running user-space processes (no PIDs, no command lines:
    /// they churn and can hold secrets), sorted, at most [`MAX_EXECUTABLES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executables: Vec<HostExecutable>,
    /// The lists above (or `interfaces`) that hit their cap and were cut: a receiver must not
    /// read a missing entry in a truncated list as "vanished".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub truncated: Vec<HostList>,
    /// Facts that could not be collected, one stable line each (no counts or times, so an
    /// unchanged gateway yields identical facts), at most [`MAX_HOST_PROBLEMS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// The lists the agent's config switched off (`[gateway] listening/processes = false`): a
    /// receiver keeps what it knew of them and must not read their emptiness as "vanished".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub switched_off: Vec<HostList>,
}

/// Most network interfaces reported in [`HostFacts::interfaces`].
pub const MAX_HOST_INTERFACES: usize = 64;
/// Most addresses reported per interface.
pub const MAX_INTERFACE_ADDRESSES: usize = 16;
/// Most entries in [`HostFacts::disks`].
pub const MAX_HOST_DISKS: usize = 64;
/// Most entries in [`HostFacts::listening`].
pub const MAX_LISTENING: usize = 256;
/// Most entries in [`HostFacts::executables`].
pub const MAX_EXECUTABLES: usize = 256;
/// Most entries in [`HostFacts::problems`].
pub const MAX_HOST_PROBLEMS: usize = 8;
/// Longest text (path, name, model…) in host facts, in characters; longer text is cut.
pub const MAX_HOST_TEXT: usize = 512;

/// A list in [`HostFacts`] that can be cut at its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostList {
    Interfaces,
    Disks,
    Listening,
    Executables,
}

impl HostList {
    /// The field name (`listening`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            HostList::Interfaces => "interfaces",
            HostList::Disks => "disks",
            HostList::Listening => "listening",
            HostList::Executables => "executables",
        }
    }
}

/// One mounted filesystem of the gateway.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostDisk {
    pub mount_point: String,
    /// Filesystem type (`ext4`, `vfat`, …).
    pub file_system: String,
    pub total_bytes: u64,
}

/// The transport protocol of a [`ListeningSocket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketProtocol {
    Tcp,
    Udp,
}

impl SocketProtocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketProtocol::Tcp => "tcp",
            SocketProtocol::Udp => "udp",
        }
    }
}

/// A socket on the gateway that accepts inbound traffic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ListeningSocket {
    pub protocol: SocketProtocol,
    pub port: u16,
    /// The local address it is bound to (`0.0.0.0`, `::`, `127.0.0.1`, …).
    pub address: String,
    /// The owning process's executable path, when the agent may see it (`/proc/<pid>/fd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
}

/// One distinct executable among the gateway's running processes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostExecutable {
    /// The process name (`/proc/<pid>/comm`).
    pub name: String,
    /// The executable path (`/proc/<pid>/exe`), when the agent may read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
}

/// One network interface of the gateway.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetInterface {
    pub name: String,
    pub mac: Option<String>,
    /// Addresses in CIDR form (`192.0.2.10/24`).
    pub addresses: Vec<String>,
}

/// Most results in one [`ProbeReport`] (the agent refuses a config that expands to more).
pub const MAX_PROBE_TARGETS: usize = 256;
/// Longest text in a [`ProbeResult`] (`target`, `rule`, `detail`), in bytes.
pub const MAX_PROBE_TEXT: usize = 200;

/// One round of segmentation probes. The agent tries a TCP connect to every target of its
/// `[segmentation]` config and closes a connected socket at once without sending or reading a
/// byte. The receiver judges: a `must_not_reach` target that answered (connected *or* refused:
/// a reset proves the packet got there) is a segmentation violation; a `may_reach` conduit that
/// did not connect is down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub agent: AgentId,
    pub zone: ZoneId,
    /// When the round started and finished, milliseconds since the Unix epoch (agent clock).
    pub started_ms: u64,
    pub finished_ms: u64,
    /// One per target, in config order, at most [`MAX_PROBE_TARGETS`].
    pub results: Vec<ProbeResult>,
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// The address probed (`192.0.2.7:443`, `[fd00::7]:443`).
    #[serde(rename = "t")]
    pub target: String,
    /// The config entry it was expanded from (`192.0.2.0/29:443`).
    #[serde(rename = "r")]
    pub rule: String,
    #[serde(rename = "e")]
    pub expect: ProbeExpect,
    #[serde(rename = "o")]
    pub outcome: ProbeOutcome,
    /// How long the attempt took, in milliseconds.
    #[serde(rename = "ms")]
    pub elapsed_ms: u32,
    /// The error text for [`ProbeOutcome::Error`] (one line).
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What the zone's design says about a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeExpect {
    /// Must be unreachable from the zone (IT subnets, the internet, management ports).
    MustNotReach,
    /// A conduit the zone relies on (the diode target, the broker).
    MayReach,
}

impl ProbeExpect {
    /// `must_not_reach` or `may_reach`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeExpect::MustNotReach => "must_not_reach",
            ProbeExpect::MayReach => "may_reach",
        }
    }
}

/// What a TCP connect attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeOutcome {
    /// The handshake completed (closed at once, nothing sent).
    Connected,
    /// The target answered with a reset (nothing listens there, but the packet arrived).
    Refused,
    /// No answer within the connect timeout (dropped on the way): blocked.
    TimedOut,
    /// Any other failure (no route, host unreachable, …); see `detail`.
    Error,
}

impl ProbeOutcome {
    /// `connected`, `refused`, `timed_out` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeOutcome::Connected => "connected",
            ProbeOutcome::Refused => "refused",
            ProbeOutcome::TimedOut => "timed_out",
            ProbeOutcome::Error => "error",
        }
    }

    /// True when something at the target's address answered (handshake or reset).
    pub fn answered(self) -> bool {
        matches!(self, ProbeOutcome::Connected | ProbeOutcome::Refused)
    }
}

impl ProbeResult {
    /// The judgement: `true` when the result contradicts the zone's design (a must-not-reach
    /// target answered, or a may-reach conduit did not connect).
    pub fn is_problem(&self) -> bool {
        match self.expect {
            ProbeExpect::MustNotReach => self.outcome.answered(),
            ProbeExpect::MayReach => self.outcome != ProbeOutcome::Connected,
        }
    }
}

impl ProbeReport {
    /// Checks the bounds a receiver relies on: at most [`MAX_PROBE_TARGETS`] results, texts of
    /// at most [`MAX_PROBE_TEXT`] bytes without control characters, no target listed twice
    /// under the same expectation, and a start before the finish. Says what is wrong.
    pub fn check_bounds(&self) -> Result<(), String> {
        if self.results.len() > MAX_PROBE_TARGETS {
            return Err(format!(
                "{} probe results, more than {MAX_PROBE_TARGETS}",
                self.results.len()
            ));
        }
        if self.finished_ms < self.started_ms {
            return Err(format!(
                "round finished ({}) before it started ({})",
                self.finished_ms, self.started_ms
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, r) in self.results.iter().enumerate() {
            for (field, text) in [
                ("target", Some(r.target.as_str())),
                ("rule", Some(r.rule.as_str())),
                ("detail", r.detail.as_deref()),
            ] {
                let Some(text) = text else { continue };
                if text.len() > MAX_PROBE_TEXT || text.chars().any(char::is_control) {
                    return Err(format!(
                        "results[{i}].{field} is longer than {MAX_PROBE_TEXT} bytes or holds \
                         control characters"
                    ));
                }
            }
            if r.target.is_empty() {
                return Err(format!("results[{i}].target is empty"));
            }
            if !seen.insert((r.expect, r.target.as_str())) {
                return Err(format!(
                    "results[{i}]: target {} is listed twice as {}",
                    r.target,
                    r.expect.as_str()
                ));
            }
        }
        Ok(())
    }
}

/// `Vec<u16>` as a CBOR byte string of big-endian words.
pub(crate) mod be_words {
    use serde::de::{Error as _, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(values: &[u16], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        s.serialize_bytes(&bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
        struct Words;
        impl Visitor<'_> for Words {
            type Value = Vec<u16>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string of big-endian 16-bit words")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Vec<u16>, E> {
                if !bytes.len().is_multiple_of(2) {
                    return Err(E::custom(format!(
                        "register values are {} bytes, not a whole number of 16-bit words",
                        bytes.len()
                    )));
                }
                Ok(bytes
                    .chunks_exact(2)
                    .map(|w| u16::from_be_bytes([w[0], w[1]]))
                    .collect())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u16>, E> {
                self.visit_bytes(&bytes)
            }
        }
        d.deserialize_bytes(Words).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_values_travel_as_packed_words() {
        let block = RegisterBlock::new("b", RegisterKind::Holding, 10, vec![0x0102, 0xfffe]);
        let bytes = crate::cbor::encode(&block).unwrap();
        let needle = [0x44, 0x01, 0x02, 0xff, 0xfe]; // bstr(4) 01 02 ff fe
        assert!(
            bytes.windows(needle.len()).any(|w| w == needle),
            "{bytes:02x?}"
        );
        assert_eq!(crate::cbor::decode::<RegisterBlock>(&bytes).unwrap(), block);
    }

    #[test]
    fn block_hash_is_sha256_of_kind_start_and_big_endian_values_at_every_length() {
        // The wire format: fixtures and agents already deployed hash exactly these bytes.
        for len in [0usize, 1, 2, 127, 128, 129, 255, 256, 257, 1000] {
            let values: Vec<u16> = (0..len).map(|i| (i as u16).wrapping_mul(0x9e37)).collect();
            let mut bytes = b"input".to_vec();
            bytes.extend_from_slice(&300u16.to_be_bytes());
            for v in &values {
                bytes.extend_from_slice(&v.to_be_bytes());
            }
            assert_eq!(
                RegisterBlock::content_hash(RegisterKind::Input, 300, &values),
                Digest::of(&bytes),
                "{len} values"
            );
        }
    }

    #[test]
    fn host_facts_without_the_inventory_lists_still_decode() {
        #[derive(Serialize)]
        struct OldHostFacts {
            hostname: Option<String>,
            os_name: Option<String>,
            os_version: Option<String>,
            kernel_version: Option<String>,
            cpu_arch: String,
            cpu_count: u32,
            memory_bytes: u64,
            boot_time: u64,
            interfaces: Vec<NetInterface>,
            agent_version: String,
        }
        let old = OldHostFacts {
            hostname: Some("gw".into()),
            os_name: None,
            os_version: None,
            kernel_version: Some("6.1".into()),
            cpu_arch: "aarch64".into(),
            cpu_count: 4,
            memory_bytes: 1 << 30,
            boot_time: 1_700_000_000,
            interfaces: vec![],
            agent_version: "0.1.0".into(),
        };
        let facts: HostFacts = crate::cbor::decode(&crate::cbor::encode(&old).unwrap()).unwrap();
        assert_eq!(facts.kernel_version.as_deref(), Some("6.1"));
        assert!(facts.listening.is_empty() && facts.executables.is_empty());
        assert!(facts.truncated.is_empty() && facts.cpu_model.is_none());
        // and empty lists stay off the wire, so old and new encodings of such facts agree
        assert_eq!(
            crate::cbor::encode(&facts).unwrap(),
            crate::cbor::encode(&old).unwrap()
        );
    }

    #[test]
    fn observations_without_serial_or_mac_encode_and_decode_as_before() {
        #[derive(Serialize)]
        struct OldObservation {
            n: String,
            ep: Endpoint,
            u: u8,
            st: PollStatus,
            id: DeviceIdentity,
            b: Vec<RegisterBlock>,
            p: Vec<String>,
        }
        let old = OldObservation {
            n: "plc".into(),
            ep: Endpoint::Rtu {
                device: "/dev/ttyS0".into(),
            },
            u: 3,
            st: PollStatus::Ok,
            id: DeviceIdentity::default(),
            b: vec![],
            p: vec![],
        };
        let old_bytes = crate::cbor::encode(&old).unwrap();
        let mut obs: AssetObservation = crate::cbor::decode(&old_bytes).unwrap();
        assert_eq!((obs.serial.as_deref(), obs.mac.as_deref()), (None, None));
        assert_eq!(crate::cbor::encode(&obs).unwrap(), old_bytes);
        obs.serial = Some("SN 1".into());
        obs.mac = Some("02:00:00:00:00:01".into());
        let new: AssetObservation =
            crate::cbor::decode(&crate::cbor::encode(&obs).unwrap()).unwrap();
        assert_eq!(new, obs);
    }

    #[test]
    fn odd_length_register_bytes_are_refused() {
        let block = RegisterBlock::new("b", RegisterKind::Holding, 10, vec![7]);
        let mut bytes = crate::cbor::encode(&block).unwrap();
        let at = bytes
            .windows(3)
            .position(|w| w == [0x42, 0x00, 0x07])
            .unwrap();
        bytes[at] = 0x41; // bstr(1) 00, then a stray 07 follows
        bytes.remove(at + 2);
        let err = crate::cbor::decode::<RegisterBlock>(&bytes).unwrap_err();
        assert!(err.to_string().contains("16-bit words"), "{err}");
    }
}
