//! The `[segmentation]` config section: what the zone must not reach and what it may.
//!
//! ```toml
//! [segmentation]
//! must_not_reach = ["10.1.0.0/29:445", "192.0.2.50:22"]   # ip:port, cidr:port, [v6]:port
//! may_reach = ["192.0.2.10:1883"]                         # the broker, the diode's TCP side
//! interval = "1h"            # at least 1 min
//! connect_timeout = "2s"     # 100 ms ..= 30 s
//! max_probes_per_sec = 10    # 1 ..= 50
//! max_targets = 256          # after CIDR expansion; at most 256
//! ```

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use outpost_proto::model::{MAX_PROBE_TARGETS, ProbeExpect};
use serde::Deserialize;

use crate::config::{DEFAULT_MODBUS_PORT, DeviceConfig};

/// Most targets after CIDR expansion (the ceiling of `max_targets`).
pub const MAX_TARGETS: usize = MAX_PROBE_TARGETS;
/// Most probes started per second (the ceiling of `max_probes_per_sec`).
pub const MAX_PROBES_PER_SEC: u32 = 50;
/// Shortest probe interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);

/// The validated `[segmentation]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentationConfig {
    /// Every address to probe, must-not-reach first, in config order, without duplicates.
    pub targets: Vec<ProbeTarget>,
    pub interval: Duration,
    pub connect_timeout: Duration,
    pub max_probes_per_sec: u32,
}

/// One address to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub addr: SocketAddr,
    /// The config entry it came from.
    pub rule: String,
    pub expect: ProbeExpect,
}

/// The section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSegmentation {
    #[serde(default)]
    must_not_reach: Vec<String>,
    #[serde(default)]
    may_reach: Vec<String>,
    #[serde(default = "default_interval", with = "humantime_serde")]
    interval: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(default = "default_rate")]
    max_probes_per_sec: u32,
    #[serde(default = "default_max_targets")]
    max_targets: usize,
}

fn default_interval() -> Duration {
    Duration::from_secs(3600)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_rate() -> u32 {
    10
}

fn default_max_targets() -> usize {
    MAX_TARGETS
}

/// Splits `ip:port`, `cidr:port`, `[v6]:port` or `[v6/len]:port` into a network and a port.
pub fn parse_entry(text: &str) -> Result<(IpNet, u16), String> {
    let text = text.trim();
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?} has '[' without ']'"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("{text:?}: a port is required, e.g. \"[fd00::1]:443\""))?;
        (host, port)
    } else {
        if text.matches(':').count() != 1 {
            return Err(format!(
                "{text:?} is not ip:port or cidr:port (write IPv6 as \"[fd00::1]:443\")"
            ));
        }
        text.split_once(':').unwrap_or((text, ""))
    };
    let port = match port.parse::<u16>() {
        Ok(0) | Err(_) => {
            return Err(format!("{text:?}: port {port:?} is not a number 1-65535"));
        }
        Ok(p) => p,
    };
    let net = if let Ok(net) = host.parse::<IpNet>() {
        net.trunc()
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        IpNet::from(ip)
    } else {
        return Err(format!(
            "{text:?}: {host:?} is not an IP address or CIDR range (host names are not probed: \
             the answer must not depend on DNS)"
        ));
    };
    Ok((net, port))
}

/// Validates the raw section; every problem goes to `problem(field, message)`.
pub(crate) fn validate(
    raw: RawSegmentation,
    devices: &[DeviceConfig],
    problem: &mut impl FnMut(String, String),
) -> Option<SegmentationConfig> {
    let mut ok = true;
    let mut fail = |field: String, message: String| {
        ok = false;
        problem(field, message);
    };
    if raw.interval < MIN_INTERVAL {
        fail(
            "segmentation.interval".into(),
            format!(
                "{} is shorter than the 1m minimum (probes are evidence, not a scan)",
                humantime::format_duration(raw.interval)
            ),
        );
    }
    if raw.connect_timeout < Duration::from_millis(100)
        || raw.connect_timeout > Duration::from_secs(30)
    {
        fail(
            "segmentation.connect_timeout".into(),
            format!(
                "{} is outside 100ms..=30s",
                humantime::format_duration(raw.connect_timeout)
            ),
        );
    }
    if raw.max_probes_per_sec == 0 || raw.max_probes_per_sec > MAX_PROBES_PER_SEC {
        fail(
            "segmentation.max_probes_per_sec".into(),
            format!(
                "{} is outside 1..={MAX_PROBES_PER_SEC}",
                raw.max_probes_per_sec
            ),
        );
    }
    let limit = if raw.max_targets == 0 || raw.max_targets > MAX_TARGETS {
        fail(
            "segmentation.max_targets".into(),
            format!("{} is outside 1..={MAX_TARGETS}", raw.max_targets),
        );
        MAX_TARGETS
    } else {
        raw.max_targets
    };
    if raw.must_not_reach.is_empty() && raw.may_reach.is_empty() {
        fail(
            "segmentation.must_not_reach".into(),
            "no targets: list must_not_reach and/or may_reach entries, or remove [segmentation]"
                .into(),
        );
    }
    // Field devices' Modbus endpoints, by IP literal (named hosts are caught by the port rule).
    let modbus: HashSet<SocketAddr> = devices
        .iter()
        .filter_map(|d| {
            let ip = d.address.host.parse::<IpAddr>().ok()?;
            Some(SocketAddr::new(ip, d.address.port))
        })
        .collect();
    let mut targets = Vec::new();
    let mut seen = HashSet::new();
    let mut total = 0usize;
    for (list, entries, expect) in [
        (
            "must_not_reach",
            &raw.must_not_reach,
            ProbeExpect::MustNotReach,
        ),
        ("may_reach", &raw.may_reach, ProbeExpect::MayReach),
    ] {
        for (i, entry) in entries.iter().enumerate() {
            let field = format!("segmentation.{list}[{i}]");
            let (net, port) = match parse_entry(entry) {
                Ok(p) => p,
                Err(why) => {
                    fail(field, why);
                    continue;
                }
            };
            if port == DEFAULT_MODBUS_PORT {
                fail(
                    field,
                    format!(
                        "{entry:?}: port {DEFAULT_MODBUS_PORT} is Modbus; segmentation probes never \
                         touch field devices' Modbus port (the poller already shows what answers)"
                    ),
                );
                continue;
            }
            // Count before collecting: a /8 typed by mistake must not allocate 16 million entries.
            let hosts: Vec<IpAddr> = net.hosts().take(limit.saturating_add(1)).collect();
            total = total.saturating_add(hosts.len());
            if total > limit {
                fail(
                    "segmentation.max_targets".into(),
                    format!(
                        "the targets expand to more than {limit} addresses (reached at {field} \
                         {entry:?}); narrow the ranges{}",
                        if limit < MAX_TARGETS {
                            format!(" or raise max_targets (at most {MAX_TARGETS})")
                        } else {
                            String::new()
                        }
                    ),
                );
                return None;
            }
            for ip in hosts {
                let addr = SocketAddr::new(ip, port);
                if modbus.contains(&addr) {
                    fail(
                        field.clone(),
                        format!(
                            "{entry:?} includes {addr}, a configured field device's Modbus \
                             endpoint; segmentation probes never touch field devices"
                        ),
                    );
                    continue;
                }
                if !seen.insert((expect, addr)) {
                    continue;
                }
                targets.push(ProbeTarget {
                    addr,
                    rule: entry.trim().to_owned(),
                    expect,
                });
            }
        }
    }
    let both: Vec<String> = targets
        .iter()
        .filter(|t| {
            t.expect == ProbeExpect::MustNotReach && seen.contains(&(ProbeExpect::MayReach, t.addr))
        })
        .map(|t| t.addr.to_string())
        .collect();
    if !both.is_empty() {
        fail(
            "segmentation.may_reach".into(),
            format!(
                "{} listed both as must_not_reach and may_reach; decide which",
                both.join(", ")
            ),
        );
    }
    ok.then_some(SegmentationConfig {
        targets,
        interval: raw.interval,
        connect_timeout: raw.connect_timeout,
        max_probes_per_sec: raw.max_probes_per_sec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(must: &[&str], may: &[&str]) -> RawSegmentation {
        RawSegmentation {
            must_not_reach: must.iter().map(|s| s.to_string()).collect(),
            may_reach: may.iter().map(|s| s.to_string()).collect(),
            interval: default_interval(),
            connect_timeout: default_connect_timeout(),
            max_probes_per_sec: default_rate(),
            max_targets: default_max_targets(),
        }
    }

    fn run(r: RawSegmentation) -> (Option<SegmentationConfig>, Vec<(String, String)>) {
        let mut problems = Vec::new();
        let cfg = validate(r, &[], &mut |f, m| problems.push((f, m)));
        (cfg, problems)
    }

    #[test]
    fn entries_parse_and_cidrs_expand_without_network_and_broadcast() {
        let (cfg, problems) = run(raw(
            &["192.0.2.0/30:443", "[fd00::7]:22"],
            &["10.0.0.1:1883"],
        ));
        assert!(problems.is_empty(), "{problems:?}");
        let cfg = cfg.unwrap();
        let addrs: Vec<String> = cfg.targets.iter().map(|t| t.addr.to_string()).collect();
        assert_eq!(
            addrs,
            [
                "192.0.2.1:443",
                "192.0.2.2:443",
                "[fd00::7]:22",
                "10.0.0.1:1883"
            ]
        );
        assert_eq!(cfg.targets[0].rule, "192.0.2.0/30:443");
        assert_eq!(cfg.targets[3].expect, ProbeExpect::MayReach);
    }

    #[test]
    fn more_than_max_targets_is_refused_naming_the_field() {
        let (cfg, problems) = run(raw(&["10.0.0.0/8:445"], &[]));
        assert!(cfg.is_none());
        assert_eq!(problems[0].0, "segmentation.max_targets", "{problems:?}");
        assert!(problems[0].1.contains("more than 256"), "{problems:?}");
        let mut r = raw(&["10.0.0.0/24:445"], &[]);
        r.max_targets = 10;
        let (_, problems) = run(r);
        assert!(problems[0].1.contains("raise max_targets"), "{problems:?}");
    }

    #[test]
    fn modbus_port_and_bad_limits_are_refused() {
        let mut r = raw(&["10.0.0.1:502", "host.example:22", "10.0.0.2"], &[]);
        r.interval = Duration::from_secs(10);
        r.max_probes_per_sec = 51;
        r.max_targets = 257;
        let (cfg, problems) = run(r);
        assert!(cfg.is_none());
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        for want in [
            "segmentation.interval",
            "segmentation.max_probes_per_sec",
            "segmentation.max_targets",
            "segmentation.must_not_reach[0]",
            "segmentation.must_not_reach[1]",
            "segmentation.must_not_reach[2]",
        ] {
            assert!(fields.contains(&want), "{want} missing in {problems:?}");
        }
    }

    #[test]
    fn a_target_in_both_lists_is_refused() {
        let (cfg, problems) = run(raw(&["10.0.0.0/30:22"], &["10.0.0.2:22"]));
        assert!(cfg.is_none());
        assert!(problems[0].1.contains("10.0.0.2:22"), "{problems:?}");
    }
}
