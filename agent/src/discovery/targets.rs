//! What a scan sweeps: addresses from CIDR ranges, address ranges (`10.20.0.10-10.20.0.50`,
//! both ends included) or single addresses, and a list of unit ids.
//!
//! - A range larger than [`MAX_ADDRESSES`] addresses (a /20 in IPv4) is refused unless forced: a
//!   /8 typed by mistake would otherwise mean sixteen million connection attempts on a plant
//!   network. Even forced, at most [`MAX_ADDRESSES_FORCED`] (a /16) are swept in one scan.
//! - For IPv4 prefixes shorter than /31 the network and broadcast addresses are skipped.
//! - Unit id 0 is the Modbus broadcast address: devices act on it without answering, so it is
//!   refused, always.

use std::net::IpAddr;

use ipnet::IpNet;

/// Most addresses swept without `--force` (4096: a /20).
pub const MAX_ADDRESSES: u64 = 4096;
/// Most addresses swept even with `--force` (65536: a /16).
pub const MAX_ADDRESSES_FORCED: u64 = 65536;

/// Why the targets of a scan were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "{0:?} is neither an IP address, a CIDR range (e.g. 10.20.0.0/24) nor an address range (e.g. 10.20.0.10-10.20.0.50, low to high, one address family)"
    )]
    BadRange(String),
    #[error(
        "{range} holds {count} addresses, more than {MAX_ADDRESSES} (a /20); scanning that much of a plant network is usually a typo. Narrow the range, or pass --force to sweep up to {MAX_ADDRESSES_FORCED}"
    )]
    TooLarge { range: String, count: u64 },
    #[error(
        "the ranges hold {count} addresses; one scan sweeps at most {MAX_ADDRESSES_FORCED} even with --force. Split the scan"
    )]
    TooLargeForced { count: u64 },
    #[error("no addresses to scan; give at least one CIDR range or address")]
    Empty,
    #[error("{0:?} is not a unit id list; give numbers 1..=255 separated by commas (e.g. 1,2,255)")]
    BadUnits(String),
    #[error(
        "unit id 0 is the Modbus broadcast address (devices act on it without answering); it is never scanned. Use 1..=255"
    )]
    BroadcastUnit,
}

/// One item of a target list.
#[derive(Debug, Clone, Copy)]
enum Span {
    Net(IpNet),
    /// First and last address, same family, first <= last.
    Range(IpAddr, IpAddr),
}

impl Span {
    fn count(&self) -> u64 {
        match self {
            Span::Net(net) => count(net),
            Span::Range(a, b) => {
                let n = ip_value(*b) - ip_value(*a);
                u64::try_from(n).map_or(u64::MAX, |n| n.saturating_add(1))
            }
        }
    }

    fn addresses(&self) -> Box<dyn Iterator<Item = IpAddr> + '_> {
        match self {
            Span::Net(IpNet::V4(v4)) if v4.prefix_len() < 31 => {
                Box::new(v4.hosts().map(IpAddr::V4))
            }
            Span::Net(net) => Box::new(net.hosts()),
            Span::Range(IpAddr::V4(a), IpAddr::V4(b)) => {
                Box::new((u32::from(*a)..=u32::from(*b)).map(|v| IpAddr::from(v.to_be_bytes())))
            }
            Span::Range(a, b) => {
                Box::new((ip_value(*a)..=ip_value(*b)).map(|v| IpAddr::from(v.to_be_bytes())))
            }
        }
    }
}

fn ip_value(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Addresses in one range or address, network and broadcast skipped for IPv4 below /31.
fn count(net: &IpNet) -> u64 {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    let all = if host_bits >= 64 {
        u64::MAX
    } else {
        1u64 << host_bits
    };
    match net {
        IpNet::V4(_) if host_bits >= 2 => all - 2,
        _ => all,
    }
}

fn parse_one(text: &str) -> Result<Span, TargetError> {
    let text = text.trim();
    let bad = || TargetError::BadRange(text.to_owned());
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(Span::Net(net.trunc()));
    }
    if let Some((a, b)) = text.split_once('-') {
        let (a, b) = (
            a.trim().parse::<IpAddr>().map_err(|_| bad())?,
            b.trim().parse::<IpAddr>().map_err(|_| bad())?,
        );
        if a.is_ipv4() != b.is_ipv4() || ip_value(a) > ip_value(b) {
            return Err(bad());
        }
        return Ok(Span::Range(a, b));
    }
    text.parse::<IpAddr>()
        .map(|ip| Span::Net(IpNet::from(ip)))
        .map_err(|_| bad())
}

/// Expands `ranges` (CIDR ranges or single addresses) into the addresses to sweep, in order,
/// without duplicates. Sizes are checked before anything is expanded.
pub fn expand(ranges: &[String], force: bool) -> Result<Vec<IpAddr>, TargetError> {
    let nets = ranges
        .iter()
        .map(|r| parse_one(r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut total = 0u64;
    for (net, text) in nets.iter().zip(ranges) {
        let n = net.count();
        if n > MAX_ADDRESSES && !force {
            return Err(TargetError::TooLarge {
                range: text.trim().to_owned(),
                count: n,
            });
        }
        total = total.saturating_add(n);
    }
    if total > MAX_ADDRESSES_FORCED || (total > MAX_ADDRESSES && !force) {
        return Err(if force {
            TargetError::TooLargeForced { count: total }
        } else {
            TargetError::TooLarge {
                range: ranges.join(" "),
                count: total,
            }
        });
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for net in &nets {
        for ip in net.addresses() {
            if seen.insert(ip) {
                out.push(ip);
            }
        }
    }
    if out.is_empty() {
        return Err(TargetError::Empty);
    }
    Ok(out)
}

/// Parses `1,2,255` (ranges `1-4` allowed) into unit ids, refusing 0 and duplicates kept once.
pub fn parse_units(text: &str) -> Result<Vec<u8>, TargetError> {
    let bad = || TargetError::BadUnits(text.to_owned());
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: u8 = lo.parse().map_err(|_| bad())?;
        let hi: u8 = hi.parse().map_err(|_| bad())?;
        if lo == 0 {
            return Err(TargetError::BroadcastUnit);
        }
        if hi < lo {
            return Err(bad());
        }
        for u in lo..=hi {
            if !out.contains(&u) {
                out.push(u);
            }
        }
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn ranges_expand_without_network_and_broadcast() {
        let a = expand(&v(&["10.0.0.0/30"]), false).unwrap();
        assert_eq!(
            a,
            vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        assert_eq!(expand(&v(&["10.0.0.0/24"]), false).unwrap().len(), 254);
        assert_eq!(expand(&v(&["10.0.0.7"]), false).unwrap().len(), 1);
        // Host bits set: the range is the enclosing network.
        assert_eq!(expand(&v(&["10.0.0.77/24"]), false).unwrap().len(), 254);
        // Duplicates are swept once.
        assert_eq!(
            expand(&v(&["10.0.0.0/30", "10.0.0.1"]), false)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn large_ranges_need_force_and_have_a_ceiling() {
        assert!(expand(&v(&["10.0.0.0/20"]), false).is_ok());
        let err = expand(&v(&["10.0.0.0/8"]), false).unwrap_err();
        assert!(matches!(err, TargetError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("--force"));
        assert!(expand(&v(&["10.0.0.0/19"]), false).is_err());
        assert_eq!(expand(&v(&["10.0.0.0/19"]), true).unwrap().len(), 8190);
        assert!(matches!(
            expand(&v(&["10.0.0.0/8"]), true),
            Err(TargetError::TooLargeForced { .. })
        ));
        // Several ranges add up.
        assert!(expand(&v(&["10.0.0.0/20", "10.1.0.0/24"]), false).is_err());
    }

    #[test]
    fn address_ranges_include_both_ends_and_share_the_limits() {
        let a = expand(&v(&["10.0.0.254-10.0.1.1"]), false).unwrap();
        let want: Vec<IpAddr> = ["10.0.0.254", "10.0.0.255", "10.0.1.0", "10.0.1.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(a, want);
        assert_eq!(
            expand(&v(&["10.0.0.9 - 10.0.0.9"]), false).unwrap().len(),
            1
        );
        assert_eq!(expand(&v(&["fd00::1-fd00::3"]), false).unwrap().len(), 3);
        assert!(matches!(
            expand(&v(&["10.0.0.0-10.0.16.0"]), false),
            Err(TargetError::TooLarge { count: 4097, .. })
        ));
        assert!(matches!(
            expand(&v(&["0.0.0.0-255.255.255.255"]), true),
            Err(TargetError::TooLargeForced { .. })
        ));
        assert!(matches!(
            expand(&v(&["::-ffff::"]), true),
            Err(TargetError::TooLargeForced { .. })
        ));
        for bad in [
            "10.0.0.9-10.0.0.1",
            "10.0.0.1-fd00::1",
            "10.0.0.1-",
            "10.0.0.1-x",
        ] {
            assert!(
                matches!(expand(&v(&[bad]), false), Err(TargetError::BadRange(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(
            expand(&v(&["10.0.0/24"]), false),
            Err(TargetError::BadRange(_))
        ));
        assert!(matches!(expand(&v(&[]), false), Err(TargetError::Empty)));
    }

    #[test]
    fn units_parse_and_broadcast_is_refused() {
        assert_eq!(parse_units("1,2,255").unwrap(), vec![1, 2, 255]);
        assert_eq!(parse_units("1-3, 2").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_units("0"), Err(TargetError::BroadcastUnit));
        assert_eq!(parse_units("0-4"), Err(TargetError::BroadcastUnit));
        assert!(parse_units("256").is_err());
        assert!(parse_units("a").is_err());
        assert!(parse_units("").is_err());
    }
}
