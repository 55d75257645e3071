//! Mounted filesystems on block devices (`/dev/...`), via sysinfo: mount point, filesystem
//! type, size. Pseudo filesystems (proc, tmpfs, overlay, …) are not disks and are left out.
//! Free space is volatile and not reported.

use outpost_proto::model::{HostDisk, HostList, MAX_HOST_DISKS};
use sysinfo::{DiskRefreshKind, Disks};

use super::{Problems, bound, cut_text};

/// The gateway's disks, sorted by mount point, at most [`MAX_HOST_DISKS`].
pub fn collect(problems: &mut Problems, truncated: &mut Vec<HostList>) -> Vec<HostDisk> {
    let disks =
        match Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing().with_storage()) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("disks: cannot list mounted filesystems ({e})"));
                return Vec::new();
            }
        };
    let mut list: Vec<HostDisk> = disks
        .iter()
        .filter(|d| d.name().to_string_lossy().starts_with("/dev/"))
        .map(|d| HostDisk {
            mount_point: cut_text(d.mount_point().to_string_lossy().into_owned()),
            file_system: cut_text(d.file_system().to_string_lossy().into_owned()),
            total_bytes: d.total_space(),
        })
        .collect();
    bound(&mut list, MAX_HOST_DISKS, HostList::Disks, truncated);
    list
}
