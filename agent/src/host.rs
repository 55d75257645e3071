//! Facts about the gateway the agent runs on, via sysinfo.
//!
//! Only what the summary needs is refreshed (memory totals, the CPU list without usage, the
//! interface list), into values that are dropped after each call: nothing about processes or
//! disks is ever loaded, which keeps the agent's resident memory small.

use outpost_proto::model::{HostFacts, NetInterface};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, Networks, System};

/// Why host facts could not be collected.
#[derive(Debug, thiserror::Error)]
#[error("cannot collect gateway facts: {0}")]
pub struct HostError(#[from] sysinfo::Error);

/// Collects the gateway's facts now.
pub fn collect() -> Result<HostFacts, HostError> {
    let mut sys = System::new()?;
    sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
    sys.refresh_cpu_list(CpuRefreshKind::nothing());
    let cpu_count = u32::try_from(sys.cpus().len()).unwrap_or(u32::MAX);
    let memory_bytes = sys.total_memory();
    drop(sys);

    let networks = Networks::new_with_refreshed_list()?;
    let mut interfaces: Vec<NetInterface> = networks
        .iter()
        .map(|(name, data)| {
            let mac = data.mac_address();
            let mut addresses: Vec<String> =
                data.ip_networks().iter().map(|n| n.to_string()).collect();
            addresses.sort();
            addresses.dedup();
            NetInterface {
                name: name.to_string_lossy().into_owned(),
                mac: (!mac.is_unspecified()).then(|| mac.to_string()),
                addresses,
            }
        })
        .collect();
    interfaces.sort();

    Ok(HostFacts {
        hostname: System::host_name().ok().filter(|s| !s.is_empty()),
        os_name: System::name().ok().filter(|s| !s.is_empty()),
        os_version: System::os_version().ok().filter(|s| !s.is_empty()),
        kernel_version: System::kernel_version().ok().filter(|s| !s.is_empty()),
        cpu_arch: System::cpu_arch(),
        cpu_count,
        memory_bytes,
        boot_time: System::boot_time().unwrap_or(0),
        interfaces,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        ..HostFacts::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_this_machine() {
        let facts = collect().unwrap();
        assert!(facts.cpu_count >= 1);
        assert!(facts.memory_bytes > 0);
        assert!(facts.boot_time > 1_000_000_000);
        assert!(!facts.cpu_arch.is_empty());
        assert_eq!(facts.agent_version, env!("CARGO_PKG_VERSION"));
        let lo = facts.interfaces.iter().find(|i| i.name == "lo");
        if let Some(lo) = lo {
            assert!(lo.addresses.iter().any(|a| a == "127.0.0.1/8"), "{lo:?}");
        }
        let mut sorted = facts.interfaces.clone();
        sorted.sort();
        assert_eq!(sorted, facts.interfaces);
    }
}
