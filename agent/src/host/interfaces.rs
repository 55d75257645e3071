//! Network interfaces via sysinfo: name, MAC (absent when all zero), addresses in CIDR form.
//! Traffic counters are volatile and not reported.

use outpost_proto::model::{HostList, MAX_HOST_INTERFACES, MAX_INTERFACE_ADDRESSES, NetInterface};
use sysinfo::Networks;

use super::{Problems, bound, cut_text};

/// The gateway's interfaces, sorted, at most [`MAX_HOST_INTERFACES`] of at most
/// [`MAX_INTERFACE_ADDRESSES`] addresses each.
pub fn collect(problems: &mut Problems, truncated: &mut Vec<HostList>) -> Vec<NetInterface> {
    let networks = match Networks::new_with_refreshed_list() {
        Ok(n) => n,
        Err(e) => {
            problems.push(format!("interfaces: cannot list network interfaces ({e})"));
            return Vec::new();
        }
    };
    let mut cut_addresses = false;
    let mut list: Vec<NetInterface> = networks
        .iter()
        .map(|(name, data)| {
            let mac = data.mac_address();
            let mut addresses: Vec<String> =
                data.ip_networks().iter().map(|n| n.to_string()).collect();
            addresses.sort();
            addresses.dedup();
            if addresses.len() > MAX_INTERFACE_ADDRESSES {
                addresses.truncate(MAX_INTERFACE_ADDRESSES);
                cut_addresses = true;
            }
            NetInterface {
                name: cut_text(name.to_string_lossy().into_owned()),
                mac: (!mac.is_unspecified()).then(|| mac.to_string()),
                addresses,
            }
        })
        .collect();
    if cut_addresses {
        truncated.push(HostList::Interfaces);
    }
    bound(
        &mut list,
        MAX_HOST_INTERFACES,
        HostList::Interfaces,
        truncated,
    );
    list
}
