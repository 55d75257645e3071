//! Identity evidence for the collector's reconciliation: a device's serial number (from the FC 43
//! object its device profile names) and its MAC address (from the gateway's ARP cache,
//! `/proc/net/arp`). Both are optional on the wire; the collector keys a CI on vendor, product
//! and serial when there is one, else on MAC and unit id, else on the address (see the
//! collector's `cmdb/reconcile.rs`).
//!
//! Nothing here sends a packet: the ARP cache is only read, so a device the gateway has not
//! talked to recently, a hostname endpoint and an RTU device simply have no MAC. An unreadable
//! or malformed cache costs one log line per cycle and no MACs, never the cycle.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use outpost_proto::model::{AssetObservation, Endpoint};

use crate::profile::Library;

/// The kernel's ARP table.
pub const PROC_NET_ARP: &str = "/proc/net/arp";
/// Largest ARP table text read (bytes); entries beyond it are ignored.
pub const MAX_ARP_BYTES: u64 = 1024 * 1024;
/// Most ARP entries kept.
pub const MAX_ARP_ENTRIES: usize = 16_384;
/// Longest serial number reported (bytes); a longer object is not a serial number.
pub const MAX_SERIAL_BYTES: usize = 128;

/// ATF_COM: the entry is complete (the MAC is known).
const ATF_COM: u32 = 0x2;
/// ARPHRD_ETHER.
const HW_ETHER: u32 = 0x1;

/// IPv4 address → MAC (`aa:bb:cc:dd:ee:ff`), complete Ethernet entries only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArpCache {
    entries: HashMap<Ipv4Addr, String>,
}

impl ArpCache {
    /// Parses `/proc/net/arp` text (a header line, then `IP HW-type Flags HW-address Mask
    /// Device`). Incomplete entries, non-Ethernet hardware and malformed lines are skipped;
    /// returns the cache and how many lines were skipped as malformed.
    pub fn parse(text: &str) -> (ArpCache, usize) {
        let mut entries = HashMap::new();
        let mut malformed = 0;
        for line in text.lines().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(line) {
                Some(Some((ip, mac))) => {
                    if entries.len() < MAX_ARP_ENTRIES {
                        entries.insert(ip, mac);
                    }
                }
                Some(None) => {}
                None => malformed += 1,
            }
        }
        (ArpCache { entries }, malformed)
    }

    /// Reads the cache at `path` (bounded); an unreadable file is logged and gives no MACs.
    pub fn read(path: &Path) -> ArpCache {
        use std::io::Read;
        let mut text = String::new();
        let read =
            std::fs::File::open(path).and_then(|f| f.take(MAX_ARP_BYTES).read_to_string(&mut text));
        if let Err(e) = read {
            tracing::warn!(file = %path.display(), "cannot read the ARP cache: {e}; \
                devices are reported without MAC addresses this cycle");
            return ArpCache::default();
        }
        let (cache, malformed) = ArpCache::parse(&text);
        if malformed > 0 {
            tracing::warn!(file = %path.display(), malformed,
                "ARP cache lines skipped as malformed");
        }
        cache
    }

    /// The MAC of a TCP endpoint whose host is a literal IPv4 address in the cache.
    pub fn mac_for(&self, endpoint: &Endpoint) -> Option<&str> {
        match endpoint {
            Endpoint::Tcp { host, .. } => {
                let ip: Ipv4Addr = host.parse().ok()?;
                self.entries.get(&ip).map(String::as_str)
            }
            Endpoint::Rtu { .. } => None,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `None`: malformed; `Some(None)`: well-formed but not usable (incomplete, not Ethernet).
fn parse_line(line: &str) -> Option<Option<(Ipv4Addr, String)>> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [ip, hw, flags, mac, ..] = fields.as_slice() else {
        return None;
    };
    let ip: Ipv4Addr = ip.parse().ok()?;
    let hex = |t: &str| u32::from_str_radix(t.trim_start_matches("0x"), 16).ok();
    let (hw, flags) = (hex(hw)?, hex(flags)?);
    if hw != HW_ETHER {
        return Some(None);
    }
    let octets: Vec<u8> = mac
        .split(':')
        .map(|o| {
            (o.len() == 2)
                .then(|| u8::from_str_radix(o, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    if octets.len() != 6 {
        return None;
    }
    if flags & ATF_COM == 0 || octets.iter().all(|&o| o == 0) {
        return Some(None);
    }
    Some(Some((ip, mac.to_ascii_lowercase())))
}

/// The serial number in `object` of an observation's identity: trimmed, non-empty, bounded.
pub fn serial_from(obs: &AssetObservation, object: u8) -> Option<String> {
    let text = obs.identity.other.get(&object)?.trim();
    (!text.is_empty() && text.len() <= MAX_SERIAL_BYTES).then(|| text.to_owned())
}

/// Adds the serial number (where a matching profile names its object) and the MAC address
/// (where the ARP cache knows the device's IP) to each observation.
pub fn annotate(observations: &mut [AssetObservation], profiles: Option<&Library>, arp: &ArpCache) {
    for obs in observations {
        if let Some(object) = profiles
            .and_then(|lib| lib.find(&obs.identity))
            .and_then(|p| p.serial)
            .map(|s| s.object)
        {
            obs.serial = serial_from(obs, object);
        }
        obs.mac = arp.mac_for(&obs.endpoint).map(str::to_owned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::model::{DeviceIdentity, IdentMethod, PollStatus};

    const ARP: &str = "\
IP address       HW type     Flags       HW address            Mask     Device
10.20.0.11       0x1         0x2         02:00:5E:10:00:07     *        eth1
10.20.0.12       0x1         0x0         00:00:00:00:00:00     *        eth1
10.20.0.13       0x20        0x2         80:00:00:48:fe:80:00:00:00:00:00:00:00:00:00:00:00:00:00:02     *  ib0
10.20.0.14       0x1         0x6         02:00:5e:10:00:08     *        eth1
not-an-ip        0x1         0x2         02:00:5e:10:00:09     *        eth1
10.20.0.15       0x1         0x2         02:00:5e:10:00        *        eth1
10.20.0.16
";

    fn obs(host: &str) -> AssetObservation {
        AssetObservation {
            name: "coupler".into(),
            endpoint: Endpoint::Tcp {
                host: host.into(),
                port: 502,
            },
            unit_id: 1,
            status: PollStatus::Ok,
            identity: DeviceIdentity {
                method: IdentMethod::ReadDeviceIdentification,
                vendor_name: Some("Phoenix Contact".into()),
                product_code: Some("2703981".into()),
                other: [(0x80, "  SN 1234567 ".to_string())].into(),
                ..DeviceIdentity::default()
            },
            blocks: vec![],
            problems: vec![],
            serial: None,
            mac: None,
            profile: None,
        }
    }

    #[test]
    fn arp_cache_keeps_complete_ethernet_entries_and_counts_malformed_lines() {
        let (cache, malformed) = ArpCache::parse(ARP);
        assert_eq!(malformed, 3, "not-an-ip, short MAC, truncated line");
        assert_eq!(cache.len(), 2);
        let mac = |h: &str| cache.mac_for(&obs(h).endpoint).map(str::to_owned);
        assert_eq!(mac("10.20.0.11").as_deref(), Some("02:00:5e:10:00:07"));
        assert_eq!(mac("10.20.0.14").as_deref(), Some("02:00:5e:10:00:08"));
        assert_eq!(mac("10.20.0.12"), None, "incomplete");
        assert_eq!(mac("10.20.0.13"), None, "not Ethernet");
        assert_eq!(mac("plc.example"), None, "hostnames are not looked up");
        let rtu = Endpoint::Rtu {
            device: "/dev/ttyS0".into(),
        };
        assert_eq!(cache.mac_for(&rtu), None);
        assert_eq!(ArpCache::parse(""), (ArpCache::default(), 0));
    }

    #[test]
    fn a_missing_arp_file_gives_no_macs() {
        assert!(ArpCache::read(Path::new("/nonexistent/outpost/arp")).is_empty());
    }

    #[test]
    fn the_profile_names_the_serial_object_and_the_cache_the_mac() {
        let lib = Library::builtin().unwrap();
        let (arp, _) = ArpCache::parse(ARP);
        let mut list = vec![obs("10.20.0.11"), obs("10.20.0.99")];
        list[1].identity.vendor_name = Some("Nobody GmbH".into());
        annotate(&mut list, Some(&lib), &arp);
        assert_eq!(list[0].serial.as_deref(), Some("SN 1234567"));
        assert_eq!(list[0].mac.as_deref(), Some("02:00:5e:10:00:07"));
        assert_eq!(list[1].serial, None, "no profile names a serial object");
        assert_eq!(list[1].mac, None);
        // Without profiles, no serial; an empty or oversized object is no serial either.
        let mut plain = vec![obs("10.20.0.11")];
        annotate(&mut plain, None, &arp);
        assert_eq!(plain[0].serial, None);
        let mut o = obs("10.20.0.11");
        o.identity.other.insert(0x80, "   ".into());
        assert_eq!(serial_from(&o, 0x80), None);
        o.identity.other.insert(0x80, "x".repeat(200));
        assert_eq!(serial_from(&o, 0x80), None);
        assert_eq!(serial_from(&o, 0x81), None);
    }
}
