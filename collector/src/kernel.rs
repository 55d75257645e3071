//! The kernel's own count of UDP datagrams it dropped for our socket.
//!
//! Real loss on a diode is mostly the receiving host's socket queue overflowing when the sender
//! bursts; the kernel counts those drops per socket in the last column of `/proc/net/udp` and
//! `/proc/net/udp6` (`drops`). [`udp_drops`] sums it over the sockets bound to our port. Where
//! the file does not exist (not Linux) it returns `None` and the collector says so once.

use std::io::Read as _;
use std::net::SocketAddr;

/// Most bytes read from one `/proc` table (a few thousand sockets).
const MAX_TABLE: u64 = 4 * 1024 * 1024;

/// Drops the kernel counted for UDP sockets bound to `local`'s port, or `None` when the tables
/// cannot be read.
pub fn udp_drops(local: SocketAddr) -> Option<u64> {
    let mut found = None;
    for path in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(file) = std::fs::File::open(path) else {
            continue;
        };
        let mut text = String::new();
        if file.take(MAX_TABLE).read_to_string(&mut text).is_err() {
            continue;
        }
        let sum = drops_for_port(&text, local.port());
        found = Some(found.unwrap_or(0) + sum);
    }
    found
}

/// Sums the `drops` column of the rows whose local port is `port`.
pub fn drops_for_port(table: &str, port: u16) -> u64 {
    let want = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = cols.get(1)?;
            let (_, p) = local.rsplit_once(':')?;
            if p != want {
                return None;
            }
            cols.last()?.parse::<u64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_drops_column() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  123: 0100007F:1F40 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 123 2 0000000000000000 17\n\
  124: 0100007F:1F41 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 124 2 0000000000000000 5\n";
        assert_eq!(drops_for_port(table, 8000), 17);
        assert_eq!(drops_for_port(table, 9), 0);
        assert_eq!(drops_for_port("garbage\nmore garbage", 8000), 0);
    }

    #[test]
    fn reads_this_hosts_table() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        if std::path::Path::new("/proc/net/udp").exists() {
            assert_eq!(udp_drops(s.local_addr().unwrap()), Some(0));
        }
    }
}
