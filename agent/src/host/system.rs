//! The facts sysinfo knows: hostname, OS name and version, kernel, CPU architecture, count and
//! brand, memory total, boot time. Only memory totals and the CPU list (without usage) are
//! refreshed.

use outpost_proto::model::HostFacts;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, System};

use super::{HostError, cut_text};

/// The sysinfo facts; the lists are left empty for the other sources.
pub fn collect() -> Result<HostFacts, HostError> {
    let mut sys = System::new()?;
    sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
    sys.refresh_cpu_list(CpuRefreshKind::nothing());
    let cpu_count = u32::try_from(sys.cpus().len()).unwrap_or(u32::MAX);
    let memory_bytes = sys.total_memory();
    let cpu_model = sys
        .cpus()
        .first()
        .map(|c| c.brand().trim().to_owned())
        .filter(|b| !b.is_empty())
        .map(cut_text);
    drop(sys);
    let text = |r: Result<String, sysinfo::Error>| r.ok().filter(|s| !s.is_empty()).map(cut_text);
    Ok(HostFacts {
        hostname: text(System::host_name()),
        os_name: text(System::name()),
        os_version: text(System::os_version()),
        kernel_version: text(System::kernel_version()),
        cpu_arch: System::cpu_arch(),
        cpu_count,
        memory_bytes,
        boot_time: System::boot_time().unwrap_or(0),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        cpu_model,
        ..HostFacts::default()
    })
}
