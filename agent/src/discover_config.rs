//! The `[profiles]` and `[[discover]]` sections of the agent config.
//!
//! ```toml
//! [profiles]
//! enabled = true                  # default
//! dir = "/etc/outpost/profiles"   # optional: user profiles besides the built-in ones
//!
//! [[discover]]
//! ranges = ["10.20.0.0/24", "10.20.1.10-10.20.1.50", "10.20.2.7"]
//! port = 502                      # default
//! unit_ids = [1, 255]             # default [1]; never 0
//! every = 10                      # sweep every 10th cycle (the first cycle always sweeps)
//! max_connections = 16            # K: connections open at once during the sweep
//! connect_timeout = "500ms"       # what an address where nothing answers costs, once per sweep
//! force = false                   # allow more than a /20 (4096 addresses), never more than a /16
//! ```
//!
//! Parsed into the raw shapes here and validated by [`check_discover`] and [`check_profiles`],
//! which report each problem with its field path, like the rest of [`crate::config`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::discovery::targets::{self, MAX_ADDRESSES, MAX_ADDRESSES_FORCED, TargetError};
use crate::profile::{Library, ProfileError};

/// Default for `discover.every`: a sweep every tenth cycle.
pub const DEFAULT_DISCOVER_EVERY: u32 = 10;
/// Default for `discover.max_connections` (K).
pub const DEFAULT_DISCOVER_CONNECTIONS: usize = 16;
/// Default for `discover.connect_timeout` (as `outpost-agent scan`'s).
pub const DEFAULT_DISCOVER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Most connections one sweep may hold open at once.
pub const MAX_DISCOVER_CONNECTIONS: usize = crate::discovery::command::MAX_CONNECTIONS;

/// `[profiles]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfiles {
    #[serde(default = "default_true")]
    enabled: bool,
    dir: Option<PathBuf>,
}

/// `[[discover]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscover {
    ranges: Vec<String>,
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default = "default_units")]
    unit_ids: Vec<u8>,
    #[serde(default = "default_every")]
    every: u32,
    #[serde(default = "default_connections")]
    max_connections: usize,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(default)]
    force: bool,
}

fn default_true() -> bool {
    true
}
fn default_port() -> u16 {
    crate::config::DEFAULT_MODBUS_PORT
}
fn default_units() -> Vec<u8> {
    vec![1]
}
fn default_every() -> u32 {
    DEFAULT_DISCOVER_EVERY
}
fn default_connections() -> usize {
    DEFAULT_DISCOVER_CONNECTIONS
}
fn default_connect_timeout() -> Duration {
    DEFAULT_DISCOVER_CONNECT_TIMEOUT
}

/// Device profiles in `run`: whether they apply, and the user directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfilesConfig {
    /// Profiles supply blocks (and the firmware register) for devices whose config names none.
    pub enabled: bool,
    /// User profiles (`*.toml`) besides the built-in ones; resolved against the config's
    /// directory. A user profile with a built-in profile's name replaces it.
    pub dir: Option<PathBuf>,
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
        }
    }
}

impl ProfilesConfig {
    /// The profile library `run` uses: `None` when disabled; the built-in profiles plus `dir`
    /// otherwise. A broken profile file, or a `dir` that cannot be read, is an error naming it.
    pub fn load(&self) -> Result<Option<Library>, ProfileError> {
        if !self.enabled {
            return Ok(None);
        }
        match &self.dir {
            Some(dir) => Library::with_dir(dir).map(Some),
            None => Library::builtin().map(Some),
        }
    }
}

/// One validated `[[discover]]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverConfig {
    /// The ranges as written (for logs).
    pub ranges: Vec<String>,
    /// Every address the ranges hold, in order, without duplicates (size-checked).
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    pub unit_ids: Vec<u8>,
    /// Sweep on the first cycle and then every `every` cycles.
    pub every: u32,
    /// K: connections open at once during a sweep.
    pub max_connections: usize,
    /// Connect timeout during a sweep (the polls use `[modbus] connect_timeout`).
    pub connect_timeout: Duration,
}

impl DiscoverConfig {
    /// Whether cycle number `cycle` (0 for the first) sweeps this section's ranges.
    pub fn sweeps_at(&self, cycle: u64) -> bool {
        cycle.is_multiple_of(u64::from(self.every.max(1)))
    }

    /// The longest a sweep of this section can take when no address answers the connection:
    /// one connect timeout per address, `max_connections` at a time.
    pub fn worst_case_unreachable(&self) -> Duration {
        let k = self.max_connections.max(1);
        let rounds = self.addresses.len().div_ceil(k);
        self.connect_timeout
            .saturating_mul(u32::try_from(rounds).unwrap_or(u32::MAX))
    }
}

/// Validates `[profiles]`; relative `dir` is taken relative to `base` (the config's directory).
pub fn check_profiles(raw: Option<RawProfiles>, base: &Path) -> ProfilesConfig {
    match raw {
        None => ProfilesConfig::default(),
        Some(p) => ProfilesConfig {
            enabled: p.enabled,
            dir: p.dir.map(|d| base.join(d)),
        },
    }
}

/// Validates every `[[discover]]` section, reporting problems through `problem(field, message)`.
pub fn check_discover(
    raw: Vec<RawDiscover>,
    problem: &mut impl FnMut(String, String),
) -> Vec<DiscoverConfig> {
    let mut out = Vec::new();
    for (i, d) in raw.into_iter().enumerate() {
        let at = format!("discover[{i}]");
        let mut ok = true;
        let mut bad = |field: &str, message: String| {
            ok = false;
            problem(format!("{at}.{field}"), message);
        };
        if d.port == 0 {
            bad(
                "port",
                "0 is not a usable port; leave it out for 502".into(),
            );
        }
        if d.every == 0 {
            bad(
                "every",
                format!(
                    "0: give the number of cycles between sweeps (1 sweeps every cycle; default {DEFAULT_DISCOVER_EVERY})"
                ),
            );
        }
        if d.max_connections == 0 || d.max_connections > MAX_DISCOVER_CONNECTIONS {
            bad(
                "max_connections",
                format!(
                    "{}: give 1..={MAX_DISCOVER_CONNECTIONS} connections open at once",
                    d.max_connections
                ),
            );
        }
        if d.connect_timeout.is_zero() || d.connect_timeout > Duration::from_secs(10) {
            bad(
                "connect_timeout",
                format!(
                    "{} is outside 1ms..=10s",
                    humantime::format_duration(d.connect_timeout)
                ),
            );
        }
        if d.unit_ids.is_empty() {
            bad(
                "unit_ids",
                "is empty; leave it out for the default [1]".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (j, &u) in d.unit_ids.iter().enumerate() {
            if u == 0 {
                bad(
                    &format!("unit_ids[{j}]"),
                    "0 is the Modbus broadcast address (devices act on it without answering); discovery never sweeps it. Use 1..=255 (often 1 or 255)".into(),
                );
            } else if !seen.insert(u) {
                bad(&format!("unit_ids[{j}]"), format!("{u} is listed twice"));
            }
        }
        let addresses = match targets::expand(&d.ranges, d.force) {
            Ok(a) => a,
            Err(e) => {
                bad("ranges", range_message(&e, d.force));
                Vec::new()
            }
        };
        if ok {
            out.push(DiscoverConfig {
                ranges: d.ranges,
                addresses,
                port: d.port,
                unit_ids: d.unit_ids,
                every: d.every,
                max_connections: d.max_connections,
                connect_timeout: d.connect_timeout,
            });
        }
    }
    out
}

/// The config's words for a refused range (the scan command's say `--force`).
fn range_message(e: &TargetError, force: bool) -> String {
    match e {
        TargetError::TooLarge { range, count } if *count > MAX_ADDRESSES_FORCED => format!(
            "{range} holds {count} addresses, more than {MAX_ADDRESSES_FORCED} (a /16): discovery never sweeps that much, even with force = true. Narrow the range to the cell network (a /24 is typical)"
        ),
        TargetError::TooLarge { range, count } => format!(
            "{range} holds {count} addresses, more than {MAX_ADDRESSES} (a /20); sweeping that much of a plant network is usually a typo. Narrow the range, or set `force = true` in this [[discover]] to sweep up to {MAX_ADDRESSES_FORCED} (a /16)"
        ),
        TargetError::TooLargeForced { count } => format!(
            "the ranges hold {count} addresses; a sweep covers at most {MAX_ADDRESSES_FORCED} (a /16) even with force = true{}. Narrow the ranges",
            if force {
                ""
            } else {
                " (and more than a /20 needs force = true)"
            }
        ),
        TargetError::Empty => {
            "is empty; give CIDR ranges or addresses, e.g. [\"10.20.0.0/24\"]".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use std::path::PathBuf;

    const HEAD: &str = r#"
agent_id = "gw-line1"
zone = "cell-a"
state_dir = "state"
key_file = "agent.key"
"#;
    const DIODE: &str = "\n[diode]\ntarget = \"192.0.2.10:7000\"\n";

    fn parse(tail: &str) -> Result<Config, Vec<String>> {
        match Config::parse(&format!("{HEAD}{tail}{DIODE}"), "/etc/outpost/agent.toml") {
            Ok(c) => Ok(c),
            Err(ConfigError::Invalid { problems, .. }) => Err(problems
                .into_iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect()),
            Err(other) => Err(vec![other.to_string()]),
        }
    }

    #[test]
    fn discover_alone_is_a_complete_config_with_defaults() {
        let c = parse("[[discover]]\nranges = [\"10.20.0.0/24\", \"10.20.1.7\"]\n").unwrap();
        assert!(c.devices.is_empty());
        let d = &c.discover[0];
        assert_eq!(d.addresses.len(), 255);
        assert_eq!(d.port, 502);
        assert_eq!(d.unit_ids, vec![1]);
        assert_eq!(d.every, super::DEFAULT_DISCOVER_EVERY);
        assert_eq!(d.max_connections, super::DEFAULT_DISCOVER_CONNECTIONS);
        assert_eq!(d.connect_timeout, super::DEFAULT_DISCOVER_CONNECT_TIMEOUT);
        // 255 addresses, 16 at a time, 500 ms each when nothing answers: 16 rounds, 8 s.
        assert_eq!(
            d.worst_case_unreachable(),
            std::time::Duration::from_secs(8)
        );
        // The first cycle sweeps, then every tenth.
        let sweeps: Vec<u64> = (0..25).filter(|&c| d.sweeps_at(c)).collect();
        assert_eq!(sweeps, vec![0, 10, 20]);
        // Profiles are on by default, built-in only.
        assert!(c.profiles.enabled);
        assert_eq!(c.profiles.dir, None);
    }

    #[test]
    fn profiles_dir_is_relative_to_the_config() {
        let c = parse("devices = []\n[profiles]\ndir = \"profiles\"\n").unwrap();
        assert_eq!(c.profiles.dir, Some(PathBuf::from("/etc/outpost/profiles")));
        let c = parse("devices = []\n[profiles]\nenabled = false\n").unwrap();
        assert!(!c.profiles.enabled);
        assert!(c.profiles.load().unwrap().is_none());
        let e = parse("devices = []\n[profiles]\ndirectory = \"x\"\n").unwrap_err();
        assert!(e[0].contains("directory"), "{e:?}");
    }

    #[test]
    fn more_than_a_slash_20_needs_force_and_a_slash_16_is_the_ceiling() {
        let e = parse("[[discover]]\nranges = [\"10.20.0.0/19\"]\n").unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("discover[0].ranges: 10.20.0.0/19 holds 8190 addresses"));
        assert!(
            e[0].contains("set `force = true` in this [[discover]]"),
            "{e:?}"
        );
        let c = parse("[[discover]]\nranges = [\"10.20.0.0/19\"]\nforce = true\n").unwrap();
        assert_eq!(c.discover[0].addresses.len(), 8190);
        let c = parse("[[discover]]\nranges = [\"10.20.0.0/16\"]\nforce = true\n").unwrap();
        assert_eq!(c.discover[0].addresses.len(), 65534);
        for force in ["false", "true"] {
            let e = parse(&format!(
                "[[discover]]\nranges = [\"10.0.0.0/8\"]\nforce = {force}\n"
            ))
            .unwrap_err();
            assert!(e[0].starts_with("discover[0].ranges: "), "{e:?}");
            assert!(e[0].contains("even with force = true"), "{e:?}");
        }
        // The second section is named as such.
        let e = parse(
            "[[discover]]\nranges = [\"10.20.0.0/24\"]\n[[discover]]\nranges = [\"10.21.0.0/8\"]\n",
        )
        .unwrap_err();
        assert!(e[0].starts_with("discover[1].ranges: "), "{e:?}");
    }

    #[test]
    fn unit_id_0_and_other_bad_values_are_refused_with_their_field() {
        let e = parse(
            "[[discover]]\nranges = [\"10.20.0.0/24\"]\nunit_ids = [1, 0, 1]\nevery = 0\nmax_connections = 0\nport = 0\n",
        )
        .unwrap_err();
        let fields: Vec<&str> = e.iter().filter_map(|p| p.split(':').next()).collect();
        assert_eq!(
            fields,
            vec![
                "discover[0].port",
                "discover[0].every",
                "discover[0].max_connections",
                "discover[0].unit_ids[1]",
                "discover[0].unit_ids[2]",
            ],
            "{e:?}"
        );
        assert!(e[3].contains("broadcast"), "{e:?}");
        let e = parse("[[discover]]\nranges = [\"10.20.0/24\"]\n").unwrap_err();
        assert!(e[0].starts_with("discover[0].ranges: "), "{e:?}");
        let e = parse("[[discover]]\nranges = []\n").unwrap_err();
        assert!(e[0].contains("is empty"), "{e:?}");
        let e = parse("[[discover]]\nrange = [\"10.0.0.1\"]\n").unwrap_err();
        assert!(e[0].contains("range"), "{e:?}");
    }
}
