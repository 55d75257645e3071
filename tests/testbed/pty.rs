//! Pseudo-terminal pairs for Modbus RTU tests, and a relay that puts noise on the line.
//!
//! [`PtyPair::start`] runs `socat -d -d pty,raw,echo=0 pty,raw,echo=0` (stopped by its PID when
//! the pair is dropped) and waits, bounded, for the two `PTY is /dev/pts/N` lines on its
//! stderr: whatever is written to one end comes out of the other, like two ends of an RS-485
//! line. [`NoisyRelay`] joins two pairs (agent ↔ relay ↔ simulator) and, when asked, corrupts
//! the next answers the simulator sends, the way a noisy line does.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinHandle;
use tokio_serial::SerialPortBuilderExt as _;

use crate::harness::{ChildGuard, wait_for};

/// How long socat gets to create its two pseudo-terminals.
pub const PTY_START_TIMEOUT: Duration = Duration::from_secs(5);

/// Two linked pseudo-terminals made by socat; socat is stopped (by PID) on drop.
#[derive(Debug)]
pub struct PtyPair {
    /// One end (give it to the agent).
    pub a: PathBuf,
    /// The other end (give it to the simulator).
    pub b: PathBuf,
    socat: ChildGuard,
}

impl PtyPair {
    /// Starts socat; its log goes to `dir/socat-<n>.log`.
    pub fn start(dir: &Path) -> io::Result<PtyPair> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let log = dir.join(format!(
            "socat-{}.log",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&log)?;
        let mut socat = ChildGuard::spawn(
            "socat",
            Command::new("socat")
                .args(["-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(file),
        )?;
        let names = wait_for(PTY_START_TIMEOUT, || {
            let text = std::fs::read_to_string(&log).ok()?;
            let ptys: Vec<PathBuf> = text
                .lines()
                .filter_map(|l| {
                    l.split_once("PTY is ")
                        .map(|(_, p)| PathBuf::from(p.trim()))
                })
                .collect();
            (ptys.len() == 2 && text.contains("starting data transfer loop")).then_some(ptys)
        });
        match names {
            Some(mut ptys) => {
                let b = ptys.pop().unwrap_or_default();
                let a = ptys.pop().unwrap_or_default();
                Ok(PtyPair { a, b, socat })
            }
            None => {
                let _ = socat.stop(Duration::from_secs(1));
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "socat did not report two PTYs within {PTY_START_TIMEOUT:?}; its log: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ),
                ))
            }
        }
    }

    /// socat's PID.
    pub fn pid(&self) -> u32 {
        self.socat.pid()
    }
}

/// Opens a pseudo-terminal end as a raw async serial port.
pub fn open_port(path: &Path) -> io::Result<tokio_serial::SerialStream> {
    tokio_serial::new(path.to_string_lossy(), 19_200)
        .open_native_async()
        .map_err(|e| io::Error::other(format!("cannot open {}: {e}", path.display())))
}

/// Copies bytes between two ports; answers (simulator → agent) can be corrupted on demand.
pub struct NoisyRelay {
    corrupt: Arc<AtomicU32>,
    corrupted: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl NoisyRelay {
    /// Relays between `agent_side` (the relay's end of the agent's pair) and `sim_side`.
    /// Must run inside a tokio runtime.
    pub fn start(agent_side: &Path, sim_side: &Path) -> io::Result<NoisyRelay> {
        let (mut agent_rx, mut agent_tx) = tokio::io::split(open_port(agent_side)?);
        let (mut sim_rx, mut sim_tx) = tokio::io::split(open_port(sim_side)?);
        let corrupt = Arc::new(AtomicU32::new(0));
        let corrupted = Arc::new(AtomicU64::new(0));
        let requests = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok(n) = agent_rx.read(&mut buf).await {
                if n == 0 || sim_tx.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let (c, done) = (Arc::clone(&corrupt), Arc::clone(&corrupted));
        let answers = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok(n) = sim_rx.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                // One flipped bit in the last byte of the chunk (the CRC's high byte when the
                // frame arrives in one piece): the frame keeps its length, its CRC fails. A
                // one-byte chunk (the address alone) is left alone.
                if n >= 2
                    && c.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1))
                        .is_ok()
                {
                    buf[n - 1] ^= 0x40;
                    done.fetch_add(1, Ordering::SeqCst);
                }
                if agent_tx.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        Ok(NoisyRelay {
            corrupt,
            corrupted,
            tasks: vec![requests, answers],
        })
    }

    /// Corrupts the next `n` chunks the simulator sends.
    pub fn corrupt_next(&self, n: u32) {
        self.corrupt.store(n, Ordering::SeqCst);
    }

    /// Chunks corrupted so far.
    pub fn corrupted(&self) -> u64 {
        self.corrupted.load(Ordering::SeqCst)
    }
}

impl Drop for NoisyRelay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
