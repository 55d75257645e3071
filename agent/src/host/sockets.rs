//! Listening sockets from `/proc/net/{tcp,tcp6,udp,udp6}`: TCP sockets in LISTEN state and
//! UDP sockets bound but not connected (a connected UDP socket, like the agent's own diode
//! sender, is not inbound). Each is matched to the executable that holds it through the socket
//! inode (see [`super::processes`]).
//!
//! The tables are the kernel's text: one socket per line, addresses as hex of the raw
//! network-order bytes read as native 32-bit words, state as two hex digits. Malformed lines
//! are skipped and named as a problem; a missing IPv6 table (IPv6 disabled) is not a problem.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use outpost_proto::model::{ListeningSocket, SocketProtocol};

use super::Problems;

/// TCP state `LISTEN` in `/proc/net/tcp`.
const TCP_LISTEN: u8 = 0x0A;
/// TCP state `CLOSE`, which the UDP tables show for a socket that is not connected.
const UDP_UNCONNECTED: u8 = 0x07;

/// A listening socket and the inode that ties it to a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub socket: ListeningSocket,
    pub inode: u64,
}

/// Why a table line was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed line {line}: {why}")]
pub struct Malformed {
    pub line: usize,
    pub why: &'static str,
}

/// The listening sockets in one table's text (`v6` for tcp6/udp6), and the lines that did not
/// parse.
pub fn parse_table(text: &str, protocol: SocketProtocol, v6: bool) -> (Vec<Found>, Vec<Malformed>) {
    let mut found = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line, protocol, v6) {
            Ok(Some(f)) => found.push(f),
            Ok(None) => {}
            Err(why) => bad.push(Malformed { line: i + 1, why }),
        }
    }
    (found, bad)
}

fn parse_line(
    line: &str,
    protocol: SocketProtocol,
    v6: bool,
) -> Result<Option<Found>, &'static str> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
    if fields.len() < 10 {
        return Err("fewer than 10 fields");
    }
    let (address, port) = parse_endpoint(fields[1], v6)?;
    let (_, remote_port) = parse_endpoint(fields[2], v6)?;
    let state = u8::from_str_radix(fields[3], 16).map_err(|_| "state is not hex")?;
    let inode: u64 = fields[9].parse().map_err(|_| "inode is not a number")?;
    let listening = match protocol {
        SocketProtocol::Tcp => state == TCP_LISTEN,
        SocketProtocol::Udp => state == UDP_UNCONNECTED && remote_port == 0,
    };
    if !listening {
        return Ok(None);
    }
    Ok(Some(Found {
        socket: ListeningSocket {
            protocol,
            port,
            address,
            exe: None,
        },
        inode,
    }))
}

/// `0100007F:01F6` → (`127.0.0.1`, 502).
fn parse_endpoint(text: &str, v6: bool) -> Result<(String, u16), &'static str> {
    let (addr, port) = text.split_once(':').ok_or("address without ':'")?;
    let port = u16::from_str_radix(port, 16).map_err(|_| "port is not hex")?;
    let words = |hex: &str| -> Result<Vec<[u8; 4]>, &'static str> {
        if !hex.is_ascii() {
            return Err("address is not hex");
        }
        (0..hex.len() / 8)
            .map(|w| {
                u32::from_str_radix(&hex[w * 8..w * 8 + 8], 16)
                    .map(u32::to_ne_bytes)
                    .map_err(|_| "address is not hex")
            })
            .collect()
    };
    let address = match (v6, addr.len()) {
        (false, 8) => Ipv4Addr::from(words(addr)?[0]).to_string(),
        (true, 32) => {
            let mut bytes = [0u8; 16];
            for (i, w) in words(addr)?.iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(w);
            }
            Ipv6Addr::from(bytes).to_string()
        }
        _ => return Err("address has the wrong length"),
    };
    Ok((address, port))
}

/// Reads the four tables under `<proc_root>/net`; unreadable tables and malformed lines are
/// problem lines.
pub fn read_tables(proc_root: &Path, problems: &mut Problems) -> Vec<Found> {
    let tables = [
        ("tcp", SocketProtocol::Tcp, false),
        ("tcp6", SocketProtocol::Tcp, true),
        ("udp", SocketProtocol::Udp, false),
        ("udp6", SocketProtocol::Udp, true),
    ];
    let mut all = Vec::new();
    for (name, protocol, v6) in tables {
        let path = proc_root.join("net").join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if v6 && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                problems.push(format!(
                    "listening: cannot read /proc/net/{name} ({})",
                    e.kind()
                ));
                continue;
            }
        };
        let (found, bad) = parse_table(&text, protocol, v6);
        if let Some(first) = bad.first() {
            problems.push(format!(
                "listening: /proc/net/{name} has lines the agent does not understand \
                 (skipped; first: {first})"
            ));
        }
        all.extend(found);
    }
    all
}

/// Fills in each socket's owning executable from `owners` (socket inode → executable path).
pub fn attach_owners(found: &mut [Found], owners: &HashMap<u64, String>, problems: &mut Problems) {
    let mut hidden = false;
    for f in found.iter_mut() {
        f.socket.exe = owners.get(&f.inode).cloned();
        hidden |= f.socket.exe.is_none();
    }
    if hidden {
        problems.push(
            "listening: the owner of some sockets is not visible to the agent (another user's \
             process or the kernel; the agent needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to \
             see other users' processes)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:01F6 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 24117 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   2: 0100007F:9C40 0100007F:01F6 01 00000000:00000000 00:00000000 00000000  1000        0 5555 1 0000000000000000 20 4 30 10 -1
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 778 1 0000000000000000 100 0 0 10 0
";

    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 900 2 0000000000000000 0
  101: 0100007F:D431 0100007F:2710 01 00000000:00000000 00:00000000 00000000  1000        0 901 2 0000000000000000 0
";

    fn sockets(found: &[Found]) -> Vec<(String, u16, u64)> {
        found
            .iter()
            .map(|f| (f.socket.address.clone(), f.socket.port, f.inode))
            .collect()
    }

    #[test]
    fn tcp_listeners_only() {
        let (found, bad) = parse_table(TCP, SocketProtocol::Tcp, false);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(
            sockets(&found),
            vec![
                ("127.0.0.1".to_owned(), 502, 24117),
                ("0.0.0.0".to_owned(), 22, 1234)
            ]
        );
    }

    #[test]
    fn tcp6_addresses() {
        let (found, bad) = parse_table(TCP6, SocketProtocol::Tcp, true);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(
            sockets(&found),
            vec![("::".to_owned(), 22, 777), ("::1".to_owned(), 8080, 778)]
        );
    }

    #[test]
    fn udp_unconnected_only() {
        let (found, bad) = parse_table(UDP, SocketProtocol::Udp, false);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(sockets(&found), vec![("0.0.0.0".to_owned(), 68, 900)]);
        assert_eq!(found[0].socket.protocol, SocketProtocol::Udp);
    }

    #[test]
    fn malformed_lines_are_reported_and_skipped() {
        let text = "header\n\
            0: 0100007F:01F6 00000000:0000 0A 0 0 0 0 0 24117\n\
            1: 0100007F 00000000:0000 0A 0 0 0 0 0 1\n\
            2: 0100007F:ZZZZ 00000000:0000 0A 0 0 0 0 0 2\n\
            3: 0100007F:01F6 00000000:0000 0A 0 0 0 0 0 notanumber\n\
            4: too few\n\
            5: 01007F:01F6 00000000:0000 0A 0 0 0 0 0 3\n\
            6: 0100007F:01F6 00000000:0000 QQ 0 0 0 0 0 4\n\
            7: é100007F:01F6 00000000:0000 0A 0 0 0 0 0 5\n\
            \n";
        let (found, bad) = parse_table(text, SocketProtocol::Tcp, false);
        assert_eq!(sockets(&found), vec![("127.0.0.1".to_owned(), 502, 24117)]);
        let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(bad[0].why, "address without ':'");
        // an IPv4-length address in the v6 table is refused, not misread
        let (found, bad) = parse_table(TCP, SocketProtocol::Tcp, true);
        assert!(found.is_empty());
        assert_eq!(bad.len(), 3);
    }

    #[test]
    fn unreadable_tables_are_problems_and_missing_ipv6_is_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        std::fs::write(dir.path().join("net/tcp"), TCP).unwrap();
        let mut problems = Problems::default();
        let found = read_tables(dir.path(), &mut problems);
        assert_eq!(found.len(), 2);
        assert_eq!(
            problems.into_sorted(),
            vec!["listening: cannot read /proc/net/udp (entity not found)".to_owned()]
        );
    }

    #[test]
    fn owners_are_attached_by_inode() {
        let (mut found, _) = parse_table(TCP, SocketProtocol::Tcp, false);
        let owners = HashMap::from([(24117, "/usr/bin/plc-gw".to_owned())]);
        let mut problems = Problems::default();
        attach_owners(&mut found, &owners, &mut problems);
        assert_eq!(found[0].socket.exe.as_deref(), Some("/usr/bin/plc-gw"));
        assert_eq!(found[1].socket.exe, None);
        assert_eq!(problems.into_sorted().len(), 1);
    }
}
