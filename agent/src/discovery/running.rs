//! Discovery inside `run`: the `[[discover]]` sections of the config, swept on the first cycle
//! and then every `every` cycles, and the devices they found, polled like explicit ones until
//! the next sweep of their section.
//!
//! A sweep is [`super::scan::scan`] (FC 43 / FC 17 only, at most `max_connections` addresses at
//! once, the `[modbus]` timeouts and request gap per device, back-off on "server busy"). Each
//! address where a unit answered becomes a device named `discovered-<ip>:<port>` with the unit
//! ids that answered and no blocks: the matching device profile supplies them at poll time.
//!
//! An explicit `[[devices]]` entry wins over a discovered one at the same address (host written
//! as that IP literal), port and unit id: the discovered unit is left out. When two sections
//! find the same unit, the first section keeps it.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::time::Instant;

use super::scan::{Budget, Outcome, ScanPlan, scan};
use crate::config::{DeviceAddress, DeviceConfig, DiscoverConfig};
use crate::modbus::read_only::Timing;

/// The discovered devices of every `[[discover]]` section.
#[derive(Debug, Default)]
pub struct Discovery {
    sections: Vec<DiscoverConfig>,
    /// Per section: what its last sweep found.
    found: Vec<Vec<Arc<DeviceConfig>>>,
    /// Cycles started so far.
    cycle: u64,
}

/// What the sweeps of one cycle did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Sections swept this cycle.
    pub sections: usize,
    pub addresses: usize,
    /// Addresses where at least one unit answered.
    pub devices: usize,
    /// Unit ids that answered.
    pub units: usize,
    /// Modbus requests sent by the sweeps.
    pub requests: u64,
}

impl Discovery {
    pub fn new(sections: Vec<DiscoverConfig>) -> Self {
        let found = vec![Vec::new(); sections.len()];
        Self {
            sections,
            found,
            cycle: 0,
        }
    }

    /// Whether any range is configured.
    pub fn is_configured(&self) -> bool {
        !self.sections.is_empty()
    }

    /// Starts a cycle: sweeps the sections due at it (one after the other, so at most one
    /// section's `max_connections` are open at once) and replaces what they had found.
    pub async fn start_cycle(&mut self, timing: Timing) -> SweepReport {
        let cycle = self.cycle;
        self.cycle += 1;
        let mut report = SweepReport::default();
        for (section, found) in self.sections.iter().zip(self.found.iter_mut()) {
            if !section.sweeps_at(cycle) {
                continue;
            }
            let started = Instant::now();
            let plan = ScanPlan {
                addresses: section.addresses.clone(),
                port: section.port,
                units: section.unit_ids.clone(),
                budget: Budget {
                    max_connections: section.max_connections,
                    timing: Timing {
                        connect_timeout: section.connect_timeout,
                        ..timing
                    },
                },
            };
            let results = scan(&plan, |_| {}).await;
            let silent = results
                .iter()
                .filter(|r| r.outcome == Outcome::Silent)
                .count();
            let requests: u64 = results.iter().map(|r| r.requests).sum();
            *found = results
                .iter()
                .filter(|r| !r.units.is_empty())
                .map(|r| {
                    Arc::new(DeviceConfig {
                        name: format!("discovered-{}", r.address),
                        address: DeviceAddress {
                            host: r.address.ip().to_string(),
                            port: r.address.port(),
                        },
                        unit_ids: r.units.iter().map(|u| u.unit_id).collect(),
                        blocks: Vec::new(),
                    })
                })
                .collect();
            let units: usize = found.iter().map(|d| d.unit_ids.len()).sum();
            tracing::info!(
                ranges = ?section.ranges,
                addresses = plan.addresses.len(),
                devices = found.len(),
                units,
                silent,
                requests,
                "discovery sweep of {:?} (port {}): {} devices, {} unit ids answered in {} ms",
                section.ranges,
                section.port,
                found.len(),
                units,
                started.elapsed().as_millis()
            );
            report.sections += 1;
            report.addresses += plan.addresses.len();
            report.devices += found.len();
            report.units += units;
            report.requests += requests;
        }
        report
    }

    /// The discovered devices to poll besides `explicit`: units an explicit device (or an
    /// earlier section) already covers are left out, and devices left with none are dropped.
    pub fn devices(&self, explicit: &[Arc<DeviceConfig>]) -> Vec<Arc<DeviceConfig>> {
        let mut taken: HashSet<(String, u16, u8)> = explicit
            .iter()
            .flat_map(|d| {
                let host = canonical_host(&d.address.host);
                d.unit_ids
                    .iter()
                    .map(move |&u| (host.clone(), d.address.port, u))
            })
            .collect();
        let mut out = Vec::new();
        for device in self.found.iter().flatten() {
            let host = canonical_host(&device.address.host);
            let units: Vec<u8> = device
                .unit_ids
                .iter()
                .copied()
                .filter(|&u| taken.insert((host.clone(), device.address.port, u)))
                .collect();
            if units.len() == device.unit_ids.len() {
                out.push(Arc::clone(device));
            } else if !units.is_empty() {
                out.push(Arc::new(DeviceConfig {
                    unit_ids: units,
                    ..DeviceConfig::clone(device)
                }));
            }
        }
        out
    }
}

/// An IP literal in its canonical text (so `10.0.0.07`-style spellings cannot dodge the
/// explicit-wins rule); a host name as written, lower-cased.
fn canonical_host(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, host: &str, units: &[u8]) -> Arc<DeviceConfig> {
        Arc::new(DeviceConfig {
            name: name.into(),
            address: DeviceAddress {
                host: host.into(),
                port: 502,
            },
            unit_ids: units.to_vec(),
            blocks: Vec::new(),
        })
    }

    #[test]
    fn explicit_units_win_and_sections_do_not_double_count() {
        let mut d = Discovery::new(Vec::new());
        d.found = vec![
            vec![
                dev("discovered-a", "10.0.0.1", &[1, 2]),
                dev("discovered-b", "10.0.0.2", &[1]),
            ],
            vec![
                dev("discovered-b2", "10.0.0.2", &[1, 3]),
                dev("discovered-c", "10.0.0.3", &[1]),
            ],
        ];
        let explicit = vec![dev("plc", "10.0.0.1", &[1]), dev("rtu", "10.0.0.3", &[1])];
        let got: Vec<(String, Vec<u8>)> = d
            .devices(&explicit)
            .iter()
            .map(|d| (d.name.clone(), d.unit_ids.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("discovered-a".to_owned(), vec![2]),
                ("discovered-b".to_owned(), vec![1]),
                ("discovered-b2".to_owned(), vec![3]),
            ]
        );
    }
}
