//! What sockets a running process holds, read from the kernel: `/proc/<pid>/fd` names each
//! socket by inode, and `/proc/<pid>/net/{tcp,tcp6,udp,udp6}` (the tables of the process's own
//! network namespace) give each inode's protocol, addresses, state and queues.
//!
//! The one-way tests use it to show that the agent holds no listening socket and never reads
//! from its diode socket.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// Transport protocol of a socket table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One row of `/proc/net/{tcp,tcp6,udp,udp6}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketRow {
    pub proto: Proto,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Kernel state: 0x01 established (a connected UDP socket too), 0x07 close (an unconnected
    /// UDP socket), 0x0A listen.
    pub state: u8,
    pub tx_queue: u64,
    /// Receive queue in bytes of buffer memory: what arrived and nobody has read yet.
    pub rx_queue: u64,
    pub inode: u64,
    /// UDP only: datagrams dropped by the kernel for this socket.
    pub drops: Option<u64>,
}

/// TCP state LISTEN as the kernel prints it.
pub const TCP_LISTEN: u8 = 0x0A;
/// TCP ESTABLISHED; also what a connected UDP socket shows.
pub const ESTABLISHED: u8 = 0x01;

impl SocketRow {
    pub fn is_listening(&self) -> bool {
        self.proto == Proto::Tcp && self.state == TCP_LISTEN
    }

    /// A UDP socket with a fixed peer (`connect`ed): the kernel delivers nothing from anyone else.
    pub fn is_connected(&self) -> bool {
        self.remote.port() != 0 && !self.remote.ip().is_unspecified()
    }
}

/// One row of `/proc/net/unix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixRow {
    pub inode: u64,
    /// `__SO_ACCEPTCON`: the socket listens for connections.
    pub listening: bool,
    /// The bound path (`@…` for the abstract namespace); `None` for an unnamed socket such as
    /// one end of a `socketpair` (tokio's signal handling holds one).
    pub path: Option<String>,
}

/// What `/proc/<pid>/fd` and the process's socket tables say about its sockets.
#[derive(Debug, Clone, Default)]
pub struct ProcessSockets {
    /// Sockets found in the TCP/UDP tables.
    pub inet: Vec<SocketRow>,
    /// Unix-domain sockets (never reachable from a network).
    pub unix: Vec<UnixRow>,
    /// Socket inodes held by the process that are in none of those tables (netlink, packet, …).
    pub other_inodes: Vec<u64>,
}

impl ProcessSockets {
    /// Unix sockets that could take input from another process: listening or bound to a name.
    pub fn named_or_listening_unix(&self) -> Vec<&UnixRow> {
        self.unix
            .iter()
            .filter(|u| u.listening || u.path.is_some())
            .collect()
    }
}

fn proc_err(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Inodes of every socket the process holds open.
pub fn socket_inodes(pid: u32) -> io::Result<Vec<u64>> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let mut inodes = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| proc_err(&dir, e))? {
        let entry = entry.map_err(|e| proc_err(&dir, e))?;
        // An fd closed between readdir and readlink is simply gone.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse().ok())
        {
            inodes.push(inode);
        }
    }
    inodes.sort_unstable();
    inodes.dedup();
    Ok(inodes)
}

/// Every row of the TCP and UDP tables (v4 and v6) of `pid`'s network namespace.
pub fn socket_tables(pid: u32) -> io::Result<Vec<SocketRow>> {
    let mut rows = Vec::new();
    for (file, proto) in [
        ("tcp", Proto::Tcp),
        ("tcp6", Proto::Tcp),
        ("udp", Proto::Udp),
        ("udp6", Proto::Udp),
    ] {
        let path = PathBuf::from(format!("/proc/{pid}/net/{file}"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // A kernel without IPv6 has no tcp6/udp6.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(proc_err(&path, e)),
        };
        for line in text.lines().skip(1) {
            let row = parse_row(proto, line).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: cannot parse line {line:?}", path.display()),
                )
            })?;
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Every row of `/proc/<pid>/net/unix`.
pub fn unix_table(pid: u32) -> io::Result<Vec<UnixRow>> {
    let path = PathBuf::from(format!("/proc/{pid}/net/unix"));
    let text = std::fs::read_to_string(&path).map_err(|e| proc_err(&path, e))?;
    text.lines()
        .skip(1)
        .map(|line| {
            parse_unix_row(line).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: cannot parse line {line:?}", path.display()),
                )
            })
        })
        .collect()
}

/// `Num RefCount Protocol Flags Type St Inode [Path]`.
fn parse_unix_row(line: &str) -> Option<UnixRow> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 7 {
        return None;
    }
    const SO_ACCEPTCON: u32 = 0x0001_0000;
    let flags = u32::from_str_radix(f[3], 16).ok()?;
    Some(UnixRow {
        inode: f[6].parse().ok()?,
        listening: flags & SO_ACCEPTCON != 0,
        path: f.get(7).map(|p| (*p).to_owned()),
    })
}

/// The sockets `pid` holds, split into TCP/UDP rows, unix sockets and others.
pub fn process_sockets(pid: u32) -> io::Result<ProcessSockets> {
    let inodes = socket_inodes(pid)?;
    let tables = socket_tables(pid)?;
    let unix = unix_table(pid)?;
    let mut out = ProcessSockets::default();
    for inode in inodes {
        if let Some(row) = tables.iter().find(|r| r.inode == inode) {
            out.inet.push(row.clone());
        } else if let Some(row) = unix.iter().find(|r| r.inode == inode) {
            out.unix.push(row.clone());
        } else {
            out.other_inodes.push(inode);
        }
    }
    Ok(out)
}

/// One table line: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode … [drops]`.
pub fn parse_row(proto: Proto, line: &str) -> Option<SocketRow> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 {
        return None;
    }
    let local = parse_addr(f[1])?;
    let remote = parse_addr(f[2])?;
    let state = u8::from_str_radix(f[3], 16).ok()?;
    let (tx, rx) = f[4].split_once(':')?;
    let tx_queue = u64::from_str_radix(tx, 16).ok()?;
    let rx_queue = u64::from_str_radix(rx, 16).ok()?;
    let inode = f[9].parse().ok()?;
    let drops = match proto {
        Proto::Udp => Some(f.last()?.parse().ok()?),
        Proto::Tcp => None,
    };
    Some(SocketRow {
        proto,
        local,
        remote,
        state,
        tx_queue,
        rx_queue,
        inode,
        drops,
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:port` (IPv6). The kernel prints each 32-bit word
/// of the network-order address as a native-endian integer.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, UdpSocket};

    #[test]
    fn finds_our_own_listening_and_connected_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.connect(peer.local_addr().unwrap()).unwrap();
        peer.connect(udp.local_addr().unwrap()).unwrap();
        peer.send(b"queued, never read").unwrap();

        let pid = std::process::id();
        let mine = process_sockets(pid).unwrap();
        let l = mine
            .inet
            .iter()
            .find(|r| r.local == listener.local_addr().unwrap())
            .expect("listener found");
        assert!(l.is_listening());
        let u = mine
            .inet
            .iter()
            .find(|r| r.local == udp.local_addr().unwrap())
            .expect("udp found");
        assert!(!u.is_listening());
        assert!(u.is_connected());
        assert_eq!(u.state, ESTABLISHED);
        assert_eq!(u.remote, peer.local_addr().unwrap());
        // The datagram waits in the receive queue because nobody read it.
        assert!(u.rx_queue > 0, "{u:?}");

        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let unix_listener = std::os::unix::net::UnixListener::bind(
            tempfile::tempdir().unwrap().path().join("sock"),
        )
        .unwrap();
        let mine = process_sockets(pid).unwrap();
        let inode = |fd: &dyn std::os::fd::AsRawFd| {
            let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
            let link = link.to_string_lossy().into_owned();
            link.trim_start_matches("socket:[")
                .trim_end_matches(']')
                .parse::<u64>()
                .unwrap()
        };
        let pair = mine.unix.iter().find(|u| u.inode == inode(&a)).unwrap();
        assert!(!pair.listening && pair.path.is_none(), "{pair:?}");
        let named = mine.named_or_listening_unix();
        assert!(
            named
                .iter()
                .any(|u| u.inode == inode(&unix_listener) && u.listening),
            "{mine:#?}"
        );
    }

    #[test]
    fn parses_v6_rows() {
        let line = "  0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0";
        let r = parse_row(Proto::Tcp, line).unwrap();
        assert_eq!(r.local, "[::1]:8080".parse().unwrap());
        assert!(r.is_listening());
        assert_eq!(r.inode, 4242);
        assert!(parse_row(Proto::Udp, "garbage").is_none());
    }
}
