//! The agent's TOML configuration: parsed strictly, then validated.
//!
//! Parsing refuses unknown keys everywhere (`deny_unknown_fields`), so a typo'd key is an error
//! that shows the key and its line rather than a silently ignored setting. After parsing,
//! [`Config::parse`] checks everything serde cannot (unit id 0, duplicate names, register counts,
//! addresses, durations) and reports *every* problem at once, each naming the file and the field
//! path: `agent.toml: devices[2].blocks[0].count: 300 is more than 125 registers per read; …`.
//!
//! Decisions worth knowing:
//! - `poll_interval` defaults to 60 s, `diode.max_datagrams_per_sec` to 2000,
//!   `diode.link_bytes_per_sec` to 1 MB/s, `diode.fec` to on (25 % repair, at least 24 repair
//!   symbols per window; windows of up to 256 KiB or 50 ms, no repeat round),
//!   `diode.heartbeat_interval` to 10 s, `[modbus]` to the values in [`ModbusConfig::default`].
//! - A config with no `[[devices]]` at all is refused (it is almost always a mistake); a
//!   gateway-only agent (host facts only) says so explicitly with `devices = []` (a top-level
//!   key, so it goes before the first `[table]`). A config with `[[serial_bus]]` (Modbus RTU,
//!   [`crate::rtu_config`]) needs no `[[devices]]`.
//! - Device addresses are `host[:port]` (port 502 by default); hosts may be IP literals or names,
//!   names are resolved at poll time so a DNS outage does not stop the agent from starting.
//!   IPv6 literals are written `[fd00::1]:502` (or bare, `fd00::1`, for port 502).
//! - The diode target must be an IP literal with a port: the conduit must not depend on DNS.
//! - At least one transport: `[diode]`, `[mqtt]` or both (each then carries every envelope).
//! - `[mqtt] url` is `mqtt://host[:port]` (1883) or `mqtts://host[:port]` (8883, needs
//!   `ca_file`); `client_cert`/`client_key` go together; the password lives in `password_file`.
//! - Relative `state_dir` and `key_file` are taken relative to the config file's directory.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_proto::model::{Endpoint, RegisterKind};
use outpost_proto::{AgentId, ZoneId};
use serde::Deserialize;

pub use crate::discover_config::{DiscoverConfig, ProfilesConfig};
use crate::discover_config::{RawDiscover, RawProfiles, check_discover, check_profiles};

/// Largest register count one FC 3 / FC 4 request may ask for.
pub const MAX_REGISTERS_PER_READ: u16 = 125;
/// Largest bit count one FC 1 / FC 2 request may ask for.
pub const MAX_BITS_PER_READ: u16 = 2000;
/// The Modbus TCP port used when an address names none.
pub const DEFAULT_MODBUS_PORT: u16 = 502;
/// Longest device or block name.
pub const MAX_NAME_LEN: usize = 64;
/// Shortest poll interval accepted.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax or shape errors; `message` is toml's own report (line, column, key).
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    /// The file parsed but some values are not usable.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// One invalid value: the field path (`devices[2].blocks[0].count`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| format!("{}: {}: {}", path.display(), p.field, p.message))
        .collect();
    lines.join("\n")
}

/// A validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file the config was read from (as given).
    pub path: PathBuf,
    pub agent_id: AgentId,
    pub zone: ZoneId,
    /// Where the chain tip and the lock file live (resolved against the config's directory).
    pub state_dir: PathBuf,
    /// The PKCS#8 private key (resolved against the config's directory).
    pub key_file: PathBuf,
    pub poll_interval: Duration,
    /// The UDP diode transport, when `[diode]` is configured.
    pub diode: Option<DiodeConfig>,
    /// The MQTT transport, when `[mqtt]` is configured (see [`crate::transport::mqtt`]).
    pub mqtt: Option<MqttConfig>,
    pub modbus: ModbusConfig,
    pub devices: Vec<DeviceConfig>,
    /// `[profiles]`: device profiles for devices whose config names no blocks.
    pub profiles: ProfilesConfig,
    /// `[[discover]]`: ranges swept for devices polled like explicit ones.
    pub discover: Vec<DiscoverConfig>,
    /// Which gateway self-inventory lists are collected (`[gateway]`).
    pub gateway: GatewayConfig,
    /// Segmentation probes, when `[segmentation]` is configured (see [`crate::segmentation`]).
    pub segmentation: Option<crate::segmentation::SegmentationConfig>,
    /// Modbus RTU buses (`[[serial_bus]]`, see [`crate::rtu_config`]).
    pub serial_buses: Vec<crate::rtu_config::SerialBusConfig>,
    /// Change events between snapshots (`[changes]`, see [`crate::observe`]).
    pub changes: ChangesConfig,
}

/// `[gateway]`: the optional lists of the gateway's self-inventory (both on by default). A list
/// switched off is named in the facts (`switched_off`), so the collector keeps what it knew
/// instead of reading "everything vanished".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Listening TCP/UDP sockets and their owning executables.
    pub listening: bool,
    /// Distinct running executables (name and path).
    pub processes: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listening: true,
            processes: true,
        }
    }
}

impl GatewayConfig {
    /// What the host collection should gather.
    pub fn collect(self) -> crate::host::Collect {
        crate::host::Collect {
            listening: self.listening,
            processes: self.processes,
        }
    }
}

/// `[changes]`: change events and how often full snapshots still go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChangesConfig {
    /// Keep the last observed state and send change sets (off: snapshots only, as before).
    pub events: bool,
    /// Include gateway host changes (OS, kernel, interfaces, listening ports, new programs).
    pub gateway: bool,
    /// A full snapshot goes out every this many cycles (1: every cycle, as before).
    pub snapshot_every: u32,
    /// A changed configuration block must be seen this many consecutive polls.
    pub confirm_polls: u32,
    /// A device unreachable this many consecutive polls has disappeared.
    pub unreachable_polls: u32,
}

impl Default for ChangesConfig {
    fn default() -> Self {
        Self {
            events: false,
            gateway: true,
            snapshot_every: 1,
            confirm_polls: 1,
            unreachable_polls: 3,
        }
    }
}

/// Where and how fast envelopes leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiodeConfig {
    pub target: SocketAddr,
    pub max_datagrams_per_sec: u32,
    /// Token-bucket rate in bytes per second (UDP payload): the link's bandwidth.
    pub link_bytes_per_sec: u64,
    /// RaptorQ forward error correction on (default) or plain fragments.
    pub fec: bool,
    pub fec_overhead_percent: u16,
    pub fec_min_repair: u16,
    /// A FEC window (one RaptorQ block) holds at most this many bytes of envelopes.
    pub fec_window_bytes: usize,
    /// A window is sent once its first envelope has waited this long (the agent also sends
    /// it at the end of every cycle and heartbeat).
    pub fec_window_delay: Duration,
    /// Send every window a second time (fresh repair symbols) this long after the first.
    pub fec_repeat_after: Option<Duration>,
    /// A signed heartbeat carrying the chain tip goes out this often between cycles.
    pub heartbeat_interval: Duration,
}

/// The MQTT transport: broker, credentials, and the outbound spool's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// The broker, as written (`mqtt://host:port` or `mqtts://host:port`).
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// PEM CA certificate(s) the broker's certificate must chain to (required for `mqtts://`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for brokers that require them.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub username: Option<String>,
    /// A file holding the password (first line; the password never sits in the config).
    pub password_file: Option<PathBuf>,
    /// Bound on the spool's payload bytes (default 64 MiB).
    pub spool_max_bytes: u64,
    /// MQTT client id (default `outpost-<agent_id>`).
    pub client_id: String,
    pub keep_alive: Duration,
}

/// Default bound of the MQTT spool.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Timing shared by all Modbus devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModbusConfig {
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Per device: at least this long between the starts of two requests.
    #[serde(with = "humantime_serde")]
    pub min_request_gap: Duration,
    pub max_parallel_devices: usize,
}

impl Default for ModbusConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(1),
            min_request_gap: Duration::from_millis(50),
            max_parallel_devices: 16,
        }
    }
}

/// One Modbus TCP device (one address, one or more unit ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    pub name: String,
    pub address: DeviceAddress,
    pub unit_ids: Vec<u8>,
    pub blocks: Vec<BlockConfig>,
}

/// A device's `host:port`; the host is resolved at poll time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAddress {
    pub host: String,
    pub port: u16,
}

impl DeviceAddress {
    /// Parses `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 literal.
    pub fn parse(text: &str) -> Result<DeviceAddress, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("is empty; write host:port, e.g. \"10.20.0.11:502\"".into());
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{text:?} has '[' without ']'"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("{text:?}: expected ':port' after ']'"))?,
                ),
            };
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{host:?} inside [...] is not an IPv6 address"));
            }
            (host, port)
        } else if text.matches(':').count() > 1 {
            // A bare IPv6 literal: no port can be given this way.
            if text.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!(
                    "{text:?} is not host:port; write IPv6 addresses as [addr]:port"
                ));
            }
            (text, None)
        } else {
            match text.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (text, None),
            }
        };
        let port = match port {
            None => DEFAULT_MODBUS_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(0) => return Err(format!("{text:?}: port 0 is not a usable port")),
                Ok(p) => p,
                Err(_) => return Err(format!("{text:?}: port {p:?} is not a number 1-65535")),
            },
        };
        if host.parse::<IpAddr>().is_err() {
            check_hostname(host).map_err(|why| format!("{text:?}: {why}"))?;
        }
        Ok(DeviceAddress {
            host: host.to_owned(),
            port,
        })
    }

    /// The endpoint as the summary reports it.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::Tcp {
            host: self.host.clone(),
            port: self.port,
        }
    }
}

impl fmt::Display for DeviceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn check_hostname(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host is empty".into());
    }
    if host.len() > 253 {
        return Err("host name is longer than 253 characters".into());
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{host:?} is not a valid host name or IP address"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "{host:?}: host name labels cannot start or end with '-'"
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "{host:?} contains {bad:?}; not a host name or IP address"
            ));
        }
    }
    Ok(())
}

/// One block of registers or bits read every cycle.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    pub name: String,
    pub kind: RegisterKind,
    pub start: u16,
    pub count: u16,
    /// Process values that change in normal operation: reported, never judged as drift.
    #[serde(default)]
    pub volatile: bool,
}

// ---- The file as written ------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agent_id: AgentId,
    zone: ZoneId,
    state_dir: PathBuf,
    key_file: PathBuf,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    poll_interval: Duration,
    diode: Option<RawDiode>,
    mqtt: Option<RawMqtt>,
    #[serde(default)]
    modbus: ModbusConfig,
    devices: Option<Vec<RawDevice>>,
    profiles: Option<RawProfiles>,
    #[serde(default)]
    discover: Vec<RawDiscover>,
    #[serde(default)]
    gateway: GatewayConfig,
    segmentation: Option<crate::segmentation::targets::RawSegmentation>,
    #[serde(default)]
    serial_bus: Vec<crate::rtu_config::RawSerialBus>,
    #[serde(default)]
    changes: ChangesConfig,
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(60)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiode {
    target: String,
    #[serde(default = "default_rate")]
    max_datagrams_per_sec: u32,
    #[serde(default = "default_link_rate")]
    link_bytes_per_sec: u64,
    #[serde(default = "default_true")]
    fec: bool,
    #[serde(default = "default_overhead")]
    fec_overhead_percent: u16,
    #[serde(default = "default_min_repair")]
    fec_min_repair: u16,
    #[serde(default = "default_window_bytes")]
    fec_window_bytes: usize,
    #[serde(default = "default_window_delay", with = "humantime_serde")]
    fec_window_delay: Duration,
    #[serde(default, with = "humantime_serde")]
    fec_repeat_after: Option<Duration>,
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    heartbeat_interval: Duration,
}

/// 1 MB/s (8 Mbit/s): conservative for the 10/100 Mbit/s hardware diodes found in plants.
fn default_link_rate() -> u64 {
    1_000_000
}

fn default_true() -> bool {
    true
}

fn default_overhead() -> u16 {
    outpost_proto::fec::FecParams::default().overhead_percent
}

fn default_min_repair() -> u16 {
    outpost_proto::fec::FecParams::default().min_repair
}

/// 256 KiB: about 226 source symbols, where 25 % repair fails less than once in 10⁶ blocks at
/// 10 % random loss; 0.26 s of a 1 MB/s link.
fn default_window_bytes() -> usize {
    256 * 1024
}

fn default_window_delay() -> Duration {
    Duration::from_millis(50)
}

/// Most `fec_repeat_after`: the collector gives up a block after 5 s without symbols.
const MAX_REPEAT_AFTER: Duration = Duration::from_secs(2);

fn default_heartbeat() -> Duration {
    Duration::from_secs(10)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    url: String,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    spool_max_bytes: Option<u64>,
    client_id: Option<String>,
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    keep_alive: Duration,
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

/// Splits `mqtt://host:port` / `mqtts://host:port` (port defaults 1883 / 8883).
fn parse_mqtt_url(url: &str) -> Result<(bool, String, u16), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(format!(
            "{url:?} must start with mqtt:// or mqtts:// (e.g. \"mqtts://broker.dmz:8883\")"
        ));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(format!(
            "{url:?}: write only scheme://host:port; credentials go in username/password_file"
        ));
    }
    let addr = DeviceAddress::parse(rest)?;
    let explicit_port = if rest.starts_with('[') {
        rest.contains("]:")
    } else {
        rest.matches(':').count() == 1
    };
    let port = match (explicit_port, tls) {
        (true, _) => addr.port,
        (false, true) => 8883,
        (false, false) => 1883,
    };
    Ok((tls, addr.host, port))
}

fn default_rate() -> u32 {
    2000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: String,
    address: String,
    #[serde(default = "default_unit_ids")]
    unit_ids: Vec<u8>,
    #[serde(default)]
    blocks: Vec<BlockConfig>,
}

fn default_unit_ids() -> Vec<u8> {
    vec![1]
}

// ---- Loading and validation -----------------------------------------------------------------

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config `text`; `origin` names the file in errors and anchors
    /// relative paths.
    pub fn parse(text: &str, origin: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let origin = origin.as_ref();
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let mut problems = Vec::new();
        let mut problem =
            |field: String, message: String| problems.push(Problem { field, message });

        if raw.poll_interval < MIN_POLL_INTERVAL {
            problem(
                "poll_interval".into(),
                format!(
                    "{} is shorter than the 1s minimum",
                    humantime::format_duration(raw.poll_interval)
                ),
            );
        }

        for (field, value, max) in [
            ("changes.snapshot_every", raw.changes.snapshot_every, 10_000),
            ("changes.confirm_polls", raw.changes.confirm_polls, 1_000),
            (
                "changes.unreachable_polls",
                raw.changes.unreachable_polls,
                1_000,
            ),
        ] {
            if value == 0 || value > max {
                problem(
                    field.into(),
                    format!("{value} is out of range: give a whole number from 1 to {max}"),
                );
            }
        }

        let diode = match &raw.diode {
            None => None,
            Some(d) => {
                if d.max_datagrams_per_sec == 0 {
                    problem(
                        "diode.max_datagrams_per_sec".into(),
                        "must be at least 1".into(),
                    );
                }
                match d.target.trim().parse::<SocketAddr>() {
                    Ok(t) if t.port() == 0 => {
                        problem("diode.target".into(), "port 0 is not a usable port".into());
                        None
                    }
                    Ok(target) => Some(DiodeConfig {
                        target,
                        max_datagrams_per_sec: d.max_datagrams_per_sec,
                        link_bytes_per_sec: d.link_bytes_per_sec,
                        fec: d.fec,
                        fec_overhead_percent: d.fec_overhead_percent,
                        fec_min_repair: d.fec_min_repair,
                        fec_window_bytes: d.fec_window_bytes,
                        fec_window_delay: d.fec_window_delay,
                        fec_repeat_after: d.fec_repeat_after,
                        heartbeat_interval: d.heartbeat_interval,
                    }),
                    Err(_) => {
                        problem(
                            "diode.target".into(),
                            format!(
                                "{:?} is not an IP address with a port (e.g. \"192.0.2.10:7000\" or \"[fd00::10]:7000\"); host names are not accepted for the diode",
                                d.target
                            ),
                        );
                        None
                    }
                }
            }
        };
        let base = origin.parent().unwrap_or(Path::new(""));
        let mqtt = match raw.mqtt {
            None => None,
            Some(m) => {
                let url = m.url.trim().to_owned();
                let parsed = match parse_mqtt_url(&url) {
                    Ok(p) => Some(p),
                    Err(why) => {
                        problem("mqtt.url".into(), why);
                        None
                    }
                };
                if let Some((true, _, _)) = parsed
                    && m.ca_file.is_none()
                {
                    problem(
                        "mqtt.ca_file".into(),
                        "mqtts:// needs ca_file: the PEM CA certificate the broker's certificate chains to".into(),
                    );
                }
                if let Some((false, _, _)) = parsed
                    && (m.ca_file.is_some() || m.client_cert.is_some())
                {
                    problem(
                        "mqtt.url".into(),
                        format!(
                            "{url:?} is plain mqtt:// but TLS files are configured; use mqtts://"
                        ),
                    );
                }
                if m.client_cert.is_some() != m.client_key.is_some() {
                    problem(
                        "mqtt.client_cert".into(),
                        "client_cert and client_key go together; set both or neither".into(),
                    );
                }
                if m.password_file.is_some() && m.username.is_none() {
                    problem(
                        "mqtt.password_file".into(),
                        "a password needs a username; add `username = \"...\"`".into(),
                    );
                }
                if m.spool_max_bytes == Some(0) {
                    problem("mqtt.spool_max_bytes".into(), "must be at least 1".into());
                }
                let client_id = m
                    .client_id
                    .clone()
                    .unwrap_or_else(|| format!("outpost-{}", raw.agent_id));
                if client_id.is_empty() || client_id.len() > 128 {
                    problem(
                        "mqtt.client_id".into(),
                        "must be 1 to 128 characters".into(),
                    );
                }
                if m.keep_alive < Duration::from_secs(5) {
                    problem("mqtt.keep_alive".into(), "must be at least 5s".into());
                }
                parsed.map(|(tls, host, port)| MqttConfig {
                    url,
                    tls,
                    host,
                    port,
                    ca_file: m.ca_file.map(|p| base.join(p)),
                    client_cert: m.client_cert.map(|p| base.join(p)),
                    client_key: m.client_key.map(|p| base.join(p)),
                    username: m.username,
                    password_file: m.password_file.map(|p| base.join(p)),
                    spool_max_bytes: m.spool_max_bytes.unwrap_or(DEFAULT_SPOOL_MAX_BYTES),
                    client_id,
                    keep_alive: m.keep_alive,
                })
            }
        };
        if let Some(d) = &raw.diode {
            if d.link_bytes_per_sec < 2 * 1200 {
                problem(
                    "diode.link_bytes_per_sec".into(),
                    format!(
                        "{} is below 2400 bytes/s (two datagrams); set the diode link's bandwidth",
                        d.link_bytes_per_sec
                    ),
                );
            }
            if d.fec_overhead_percent > 400 {
                problem(
                    "diode.fec_overhead_percent".into(),
                    format!("{} is above 400", d.fec_overhead_percent),
                );
            }
            if d.fec_min_repair > 1024 {
                problem(
                    "diode.fec_min_repair".into(),
                    format!("{} is above 1024", d.fec_min_repair),
                );
            }
            let max_window = outpost_proto::fec::MAX_BLOCK_BYTES;
            if d.fec_window_bytes < 1024 || d.fec_window_bytes > max_window {
                problem(
                    "diode.fec_window_bytes".into(),
                    format!(
                        "{} is outside 1024..={max_window} (one RaptorQ block)",
                        d.fec_window_bytes
                    ),
                );
            }
            if d.fec_window_delay > Duration::from_secs(10) {
                problem(
                    "diode.fec_window_delay".into(),
                    "is above 10s (it delays every envelope by up to that much)".into(),
                );
            }
            if let Some(after) = d.fec_repeat_after {
                if after.is_zero() || after > MAX_REPEAT_AFTER {
                    problem(
                        "diode.fec_repeat_after".into(),
                        format!(
                            "{} is outside 1ms..=2s (the collector gives up an unfinished \
                             block after 5s)",
                            humantime::format_duration(after)
                        ),
                    );
                }
                if !d.fec {
                    problem(
                        "diode.fec_repeat_after".into(),
                        "needs fec = true (the repeat round is made of FEC repair symbols)".into(),
                    );
                }
            }
            if d.heartbeat_interval < Duration::from_secs(1) {
                problem(
                    "diode.heartbeat_interval".into(),
                    "must be at least 1s".into(),
                );
            }
        }
        let m = &raw.modbus;
        for (field, value) in [
            ("modbus.connect_timeout", m.connect_timeout),
            ("modbus.request_timeout", m.request_timeout),
        ] {
            if value.is_zero() {
                problem(field.into(), "must be longer than 0s".into());
            }
        }
        if m.max_parallel_devices == 0 {
            problem(
                "modbus.max_parallel_devices".into(),
                "must be at least 1".into(),
            );
        }

        let has_discover = !raw.discover.is_empty();
        let discover = check_discover(raw.discover, &mut problem);
        let mut devices = Vec::new();
        let mut names = HashSet::new();
        match raw.devices {
            // Discovery alone is a complete source of devices.
            None if has_discover => {}
            None if !raw.serial_bus.is_empty() => {}
            None => problem(
                "devices".into(),
                "no [[devices]] configured; add one (or a [[discover]] range), or, for a gateway-only agent that reports host facts alone, write `devices = []` near the top of the file (before the first [table])".into(),
            ),
            Some(raw_devices) => {
                for (i, d) in raw_devices.into_iter().enumerate() {
                    let at = format!("devices[{i}]");
                    if let Err(why) = check_name(&d.name) {
                        problem(format!("{at}.name"), why);
                    } else if !names.insert(d.name.clone()) {
                        problem(
                            format!("{at}.name"),
                            format!("{:?} is used by an earlier device; device names must be unique", d.name),
                        );
                    }
                    let address = match DeviceAddress::parse(&d.address) {
                        Ok(a) => Some(a),
                        Err(why) => {
                            problem(format!("{at}.address"), why);
                            None
                        }
                    };
                    check_unit_ids(&at, &d.unit_ids, &mut problem);
                    check_blocks(&at, &d.blocks, &mut problem);
                    if let Some(address) = address {
                        devices.push(DeviceConfig {
                            name: d.name,
                            address,
                            unit_ids: d.unit_ids,
                            blocks: d.blocks,
                        });
                    }
                }
            }
        }

        let segmentation = raw
            .segmentation
            .and_then(|s| crate::segmentation::targets::validate(s, &devices, &mut problem));
        let serial_buses = crate::rtu_config::validate(raw.serial_bus, &mut names, &mut problem);

        if raw.diode.is_none() && mqtt.is_none() && problems.is_empty() {
            problems.push(Problem {
                field: "diode".into(),
                message:
                    "no transport configured: add a [diode] section, an [mqtt] section, or both"
                        .into(),
            });
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: origin.to_owned(),
                problems,
            });
        }
        Ok(Config {
            path: origin.to_owned(),
            agent_id: raw.agent_id,
            zone: raw.zone,
            state_dir: base.join(raw.state_dir),
            key_file: base.join(raw.key_file),
            poll_interval: raw.poll_interval,
            diode,
            mqtt,
            modbus: raw.modbus,
            devices,
            profiles: check_profiles(raw.profiles, base),
            discover,
            gateway: raw.gateway,
            segmentation,
            serial_buses,
            changes: raw.changes,
        })
    }

    /// How many (device, unit id) pairs a cycle polls.
    pub fn asset_count(&self) -> usize {
        self.devices.iter().map(|d| d.unit_ids.len()).sum::<usize>()
            + self
                .serial_buses
                .iter()
                .map(|b| b.devices.len())
                .sum::<usize>()
    }
}

pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("is empty".into());
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(format!("is longer than {MAX_NAME_LEN} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{name:?} contains a control character"));
    }
    if name.trim() != name {
        return Err(format!("{name:?} has leading or trailing spaces"));
    }
    Ok(())
}

fn check_unit_ids(at: &str, ids: &[u8], problem: &mut impl FnMut(String, String)) {
    if ids.is_empty() {
        problem(
            format!("{at}.unit_ids"),
            "is empty; leave it out for the default [1]".into(),
        );
    }
    let mut seen = HashSet::new();
    for (j, &id) in ids.iter().enumerate() {
        if id == 0 {
            problem(
                format!("{at}.unit_ids[{j}]"),
                "0 is the Modbus broadcast address and is never polled; use the device's unit id (often 1 or 255)".into(),
            );
        } else if !seen.insert(id) {
            problem(
                format!("{at}.unit_ids[{j}]"),
                format!("{id} is listed twice"),
            );
        }
    }
}

pub(crate) fn check_blocks(
    at: &str,
    blocks: &[BlockConfig],
    problem: &mut impl FnMut(String, String),
) {
    let mut names = HashSet::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = format!("{at}.blocks[{j}]");
        if let Err(why) = check_name(&b.name) {
            problem(format!("{at}.name"), why);
        } else if !names.insert(b.name.as_str()) {
            problem(
                format!("{at}.name"),
                format!(
                    "{:?} is used by an earlier block of this device; block names must be unique per device",
                    b.name
                ),
            );
        }
        let (max, unit) = match b.kind {
            RegisterKind::Holding | RegisterKind::Input => (MAX_REGISTERS_PER_READ, "registers"),
            RegisterKind::Coil | RegisterKind::DiscreteInput => (MAX_BITS_PER_READ, "bits"),
        };
        if b.count == 0 {
            problem(
                format!("{at}.count"),
                "0: a block must read at least one value".into(),
            );
        } else if b.count > max {
            problem(
                format!("{at}.count"),
                format!(
                    "{} is more than {max} {unit} per read; split the block",
                    b.count
                ),
            );
        }
        let end = u32::from(b.start) + u32::from(b.count);
        if end > 65536 {
            problem(
                format!("{at}.count"),
                format!(
                    "start {} + count {} runs past the last address 65535",
                    b.start, b.count
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
agent_id = "gw-line1"
zone = "cell-1"
state_dir = "state"
key_file = "/etc/outpost/agent.key"
poll_interval = "30s"

[diode]
target = "192.0.2.10:7000"

[modbus]
request_timeout = "500ms"

[[devices]]
name = "mixer-plc"
address = "10.20.0.11"
[[devices.blocks]]
name = "setpoints"
kind = "holding"
start = 100
count = 8

[[devices]]
name = "drive"
address = "drive-7.plant.local:1502"
unit_ids = [3, 4]
"#;

    fn invalid(text: &str) -> Vec<String> {
        match Config::parse(text, "/etc/outpost/agent.toml") {
            Err(ConfigError::Invalid { problems, .. }) => problems
                .into_iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn with_device(device: &str) -> String {
        let head = GOOD.split("[[devices]]").next().unwrap_or_default();
        format!("{head}{device}")
    }

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(GOOD, "/etc/outpost/agent.toml").unwrap();
        assert_eq!(c.agent_id.as_str(), "gw-line1");
        assert_eq!(c.state_dir, PathBuf::from("/etc/outpost/state"));
        assert_eq!(c.key_file, PathBuf::from("/etc/outpost/agent.key"));
        assert_eq!(c.poll_interval, Duration::from_secs(30));
        assert_eq!(c.diode.unwrap().max_datagrams_per_sec, 2000);
        assert_eq!(c.modbus.request_timeout, Duration::from_millis(500));
        assert_eq!(c.modbus.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.devices.len(), 2);
        assert_eq!(c.devices[0].unit_ids, vec![1]);
        assert_eq!(
            c.devices[0].address,
            DeviceAddress {
                host: "10.20.0.11".into(),
                port: 502
            }
        );
        assert_eq!(c.devices[1].address.port, 1502);
        assert_eq!(c.devices[0].blocks[0].kind, RegisterKind::Holding);
        assert_eq!(c.asset_count(), 3);
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let c = Config::parse(GOOD, "agent.toml").unwrap();
        assert_eq!(c.state_dir, PathBuf::from("state"));
        let c = Config::parse(GOOD, "conf/agent.toml").unwrap();
        assert_eq!(c.state_dir, PathBuf::from("conf/state"));
    }

    #[test]
    fn typo_key_names_the_key_and_line() {
        let text = GOOD.replace("poll_interval", "pol_interval");
        let err = Config::parse(&text, "agent.toml").unwrap_err().to_string();
        assert!(err.starts_with("agent.toml: "), "{err}");
        assert!(err.contains("pol_interval"), "{err}");
        assert!(err.contains("line 6"), "{err}");
        let text = GOOD.replace("count = 8", "count = 8\ncolor = 1");
        let err = Config::parse(&text, "agent.toml").unwrap_err().to_string();
        assert!(err.contains("unknown field `color`"), "{err}");
    }

    #[test]
    fn bad_ids_and_kinds_are_syntax_errors_with_lines() {
        let err = Config::parse(&GOOD.replace("gw-line1", "gw line1"), "a.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("contains ' '") && err.contains("line 2"),
            "{err}"
        );
        let err = Config::parse(&GOOD.replace("\"holding\"", "\"holdings\""), "a.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("holdings"), "{err}");
        let err = Config::parse(&GOOD.replace("[3, 4]", "[3, 300]"), "a.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("300"), "{err}");
    }

    #[test]
    fn error_names_file_and_field_path() {
        let text = GOOD.replace("count = 8", "count = 300");
        let err = Config::parse(&text, "agent.toml").unwrap_err().to_string();
        assert_eq!(
            err,
            "agent.toml: devices[0].blocks[0].count: 300 is more than 125 registers per read; split the block"
        );
    }

    #[test]
    fn unit_id_zero_and_duplicates_refused() {
        let p = invalid(&GOOD.replace("[3, 4]", "[0, 4, 4]"));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("devices[1].unit_ids[0]: 0 is the Modbus broadcast"));
        assert_eq!(p[1], "devices[1].unit_ids[2]: 4 is listed twice");
        let p = invalid(&GOOD.replace("[3, 4]", "[]"));
        assert!(p[0].starts_with("devices[1].unit_ids: is empty"), "{p:?}");
    }

    #[test]
    fn duplicate_device_and_block_names_refused() {
        let p = invalid(&GOOD.replace("\"drive\"", "\"mixer-plc\""));
        assert_eq!(
            p,
            vec![
                "devices[1].name: \"mixer-plc\" is used by an earlier device; device names must be unique"
            ]
        );
        let text = with_device(
            r#"[[devices]]
name = "p"
address = "10.0.0.1"
[[devices.blocks]]
name = "a"
kind = "coil"
start = 0
count = 2000
[[devices.blocks]]
name = "a"
kind = "input"
start = 0
count = 1
"#,
        );
        let p = invalid(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("devices[0].blocks[1].name: \"a\" is used by an earlier block"));
    }

    #[test]
    fn counts_checked_per_kind_and_range() {
        let block = |kind: &str, start: u32, count: u32| {
            with_device(&format!(
                "[[devices]]\nname = \"p\"\naddress = \"10.0.0.1\"\n[[devices.blocks]]\nname = \"b\"\nkind = \"{kind}\"\nstart = {start}\ncount = {count}\n"
            ))
        };
        assert!(invalid(&block("holding", 0, 0))[0].contains("count: 0: a block must read"));
        assert!(invalid(&block("coil", 0, 2001))[0].contains("2001 is more than 2000 bits"));
        assert!(invalid(&block("input", 0, 126))[0].contains("126 is more than 125 registers"));
        assert!(Config::parse(&block("discrete_input", 0, 2000), "a.toml").is_ok());
        assert!(Config::parse(&block("holding", 65411, 125), "a.toml").is_ok());
        let p = invalid(&block("holding", 65500, 100));
        assert_eq!(
            p,
            vec![
                "devices[0].blocks[0].count: start 65500 + count 100 runs past the last address 65535"
            ]
        );
    }

    #[test]
    fn addresses() {
        let ok = |t: &str| DeviceAddress::parse(t).unwrap();
        assert_eq!(ok("10.0.0.1:1502").port, 1502);
        assert_eq!(ok("plc-1.local").port, 502);
        assert_eq!(ok("[fd00::1]:5020").host, "fd00::1");
        assert_eq!(ok("[fd00::1]").port, 502);
        assert_eq!(ok("fd00::1").port, 502);
        assert_eq!(ok("[fd00::1]:5020").to_string(), "[fd00::1]:5020");
        for bad in [
            "",
            "10.0.0.1:0",
            "10.0.0.1:99999",
            "plc_1:502",
            "a..b",
            "[10.0.0.1]:502",
            "x:y",
            "-a",
        ] {
            assert!(DeviceAddress::parse(bad).is_err(), "{bad:?} accepted");
        }
        let p = invalid(&GOOD.replace("10.20.0.11", "10.20.0.11:http"));
        assert!(
            p[0].starts_with("devices[0].address: \"10.20.0.11:http\": port \"http\""),
            "{p:?}"
        );
    }

    #[test]
    fn mqtt_section_and_transport_choice() {
        let mqtt = "[mqtt]\nurl = \"mqtts://broker.dmz\"\nca_file = \"ca.pem\"\nusername = \"gw-line1\"\npassword_file = \"pw\"\n\n[modbus]";
        let both = GOOD.replace("[modbus]", mqtt);
        let c = Config::parse(&both, "/etc/outpost/agent.toml").unwrap();
        let m = c.mqtt.unwrap();
        assert!(c.diode.is_some());
        assert_eq!((m.tls, m.host.as_str(), m.port), (true, "broker.dmz", 8883));
        assert_eq!(m.ca_file, Some(PathBuf::from("/etc/outpost/ca.pem")));
        assert_eq!(m.client_id, "outpost-gw-line1");
        assert_eq!(m.spool_max_bytes, DEFAULT_SPOOL_MAX_BYTES);

        let only_mqtt = both.replace("[diode]\ntarget = \"192.0.2.10:7000\"\n", "");
        let c = Config::parse(&only_mqtt, "a.toml").unwrap();
        assert!(c.diode.is_none() && c.mqtt.is_some());

        let none = GOOD.replace("[diode]\ntarget = \"192.0.2.10:7000\"\n", "");
        assert!(invalid(&none)[0].starts_with("diode: no transport configured"));

        let p = invalid(&both.replace("mqtts://broker.dmz", "http://broker"));
        assert!(
            p[0].starts_with("mqtt.url: \"http://broker\" must start with mqtt://"),
            "{p:?}"
        );
        let p = invalid(&both.replace("ca_file = \"ca.pem\"\n", ""));
        assert!(
            p[0].starts_with("mqtt.ca_file: mqtts:// needs ca_file"),
            "{p:?}"
        );
        let p = invalid(&both.replace("username = \"gw-line1\"\n", ""));
        assert!(
            p[0].starts_with("mqtt.password_file: a password needs a username"),
            "{p:?}"
        );
        let c = Config::parse(
            &only_mqtt.replace("mqtts://broker.dmz", "mqtts://[fd00::1]:18883"),
            "a.toml",
        )
        .unwrap();
        let m = c.mqtt.unwrap();
        assert_eq!((m.host.as_str(), m.port), ("fd00::1", 18883));
    }

    #[test]
    fn fec_window_and_repeat_settings() {
        let c = Config::parse(GOOD, "/etc/outpost/agent.toml").unwrap();
        let d = c.diode.unwrap();
        assert_eq!(d.fec_window_bytes, 256 * 1024);
        assert_eq!(d.fec_window_delay, Duration::from_millis(50));
        assert_eq!(d.fec_repeat_after, None);
        let set = GOOD.replace(
            "target = \"192.0.2.10:7000\"\n",
            "target = \"192.0.2.10:7000\"\nfec_window_bytes = 65536\n\
             fec_window_delay = \"20ms\"\nfec_repeat_after = \"300ms\"\n",
        );
        let d = Config::parse(&set, "/etc/outpost/agent.toml")
            .unwrap()
            .diode
            .unwrap();
        assert_eq!(d.fec_window_bytes, 65536);
        assert_eq!(d.fec_window_delay, Duration::from_millis(20));
        assert_eq!(d.fec_repeat_after, Some(Duration::from_millis(300)));
        let bad = GOOD.replace(
            "target = \"192.0.2.10:7000\"\n",
            "target = \"192.0.2.10:7000\"\nfec_window_bytes = 5000000\n\
             fec_repeat_after = \"10s\"\nfec = false\n",
        );
        let p = invalid(&bad);
        assert!(
            p.iter()
                .any(|x| x.starts_with("diode.fec_window_bytes: 5000000 is outside")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|x| x.starts_with("diode.fec_repeat_after: 10s is outside")),
            "{p:?}"
        );
        assert!(p.iter().any(|x| x.contains("needs fec = true")), "{p:?}");
    }

    #[test]
    fn diode_target_must_be_ip_and_port() {
        let p = invalid(&GOOD.replace("192.0.2.10:7000", "diode.local:7000"));
        assert!(
            p[0].starts_with("diode.target: \"diode.local:7000\" is not an IP address with a port")
        );
        assert!(
            invalid(&GOOD.replace("192.0.2.10:7000", "192.0.2.10"))[0].starts_with("diode.target")
        );
        assert!(invalid(&GOOD.replace("192.0.2.10:7000", "192.0.2.10:0"))[0].contains("port 0"));
        let c = Config::parse(&GOOD.replace("192.0.2.10:7000", "[::1]:7000"), "a.toml").unwrap();
        assert_eq!(c.diode.unwrap().target.port(), 7000);
    }

    #[test]
    fn changes_section_defaults_and_bounds() {
        let c = Config::parse(GOOD, "a.toml").unwrap();
        assert_eq!(c.changes, ChangesConfig::default());
        assert_eq!(
            c.changes.snapshot_every, 1,
            "default keeps a snapshot every cycle"
        );
        let text = GOOD.replace(
            "[modbus]",
            "[changes]\nevents = true\ngateway = false\nsnapshot_every = 10\nconfirm_polls = 2\nunreachable_polls = 5\n\n[modbus]",
        );
        let c = Config::parse(&text, "a.toml").unwrap();
        assert_eq!(
            (
                c.changes.snapshot_every,
                c.changes.confirm_polls,
                c.changes.unreachable_polls
            ),
            (10, 2, 5)
        );
        assert!(c.changes.events && !c.changes.gateway);
        assert!(!ChangesConfig::default().events, "off unless asked for");
        let p = invalid(&GOOD.replace("[modbus]", "[changes]\nconfirm_polls = 0\n\n[modbus]"));
        assert_eq!(
            p,
            vec!["changes.confirm_polls: 0 is out of range: give a whole number from 1 to 1000"]
        );
        let err = Config::parse(
            &GOOD.replace("[modbus]", "[changes]\nconfirm_pols = 2\n\n[modbus]"),
            "a.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("confirm_pols"), "{err}");
    }

    #[test]
    fn durations_and_limits() {
        let p = invalid(&GOOD.replace("\"30s\"", "\"500ms\""));
        assert_eq!(
            p,
            vec!["poll_interval: 500ms is shorter than the 1s minimum"]
        );
        let p = invalid(&GOOD.replace("\"500ms\"", "\"0s\""));
        assert_eq!(p, vec!["modbus.request_timeout: must be longer than 0s"]);
        let text = GOOD.replace(
            "[modbus]",
            "[modbus]\nmax_parallel_devices = 0\nconnect_timeout = \"0s\"",
        );
        assert_eq!(invalid(&text).len(), 2);
        let err = Config::parse(&GOOD.replace("\"30s\"", "\"30 parsecs\""), "a.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 6"), "{err}");
    }

    #[test]
    fn zero_devices_must_be_explicit() {
        let head = GOOD.split("[[devices]]").next().unwrap_or_default();
        let p = invalid(head);
        assert!(
            p[0].starts_with("devices: no [[devices]] configured"),
            "{p:?}"
        );
        let c = Config::parse(&format!("devices = []\n{head}"), "a.toml").unwrap();
        assert!(c.devices.is_empty());
    }

    #[test]
    fn all_problems_reported_at_once() {
        let text = GOOD
            .replace("count = 8", "count = 0")
            .replace("[3, 4]", "[0]")
            .replace("\"30s\"", "\"0s\"");
        let err = Config::parse(&text, "agent.toml").unwrap_err().to_string();
        assert_eq!(err.lines().count(), 3, "{err}");
        assert!(err.lines().all(|l| l.starts_with("agent.toml: ")), "{err}");
    }

    #[test]
    fn gateway_lists_default_on_and_can_be_switched_off() {
        let c = Config::parse(GOOD, "a.toml").unwrap();
        assert_eq!(c.gateway, GatewayConfig::default());
        assert!(c.gateway.listening && c.gateway.processes);
        let head = GOOD.split("[[devices]]").next().unwrap_or_default();
        let text = format!("devices = []\n{head}\n[gateway]\nlistening = false\n");
        let c = Config::parse(&text, "a.toml").unwrap();
        assert!(!c.gateway.listening && c.gateway.processes);
        let typo = format!("devices = []\n{head}\n[gateway]\nprocess = false\n");
        let err = Config::parse(&typo, "a.toml").unwrap_err().to_string();
        assert!(err.contains("unknown field `process`"), "{err}");
    }

    #[test]
    fn missing_file_is_named() {
        let err = Config::load("/nonexistent/outpost/agent.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/nonexistent/outpost/agent.toml: cannot read config"),
            "{err}"
        );
    }
}
