//! A lossy UDP relay for tests: what a bad conduit does to datagrams, over real sockets.
//!
//! [`Relay::start`] binds `127.0.0.1:0`, and forwards every datagram it receives to the target
//! from a second socket (so the receiver sees one "diode" address), after a seeded,
//! reproducible [`LossProfile`] has had its way: random loss, bursts of consecutive losses,
//! reordering (a datagram held back and sent after the next ones), duplication and truncation.
//! The profile can be changed while it runs ([`Relay::set_profile`]); [`Relay::drop_next`]
//! loses exactly the next N datagrams. Everything is bounded: one thread, a reorder queue of at
//! most [`MAX_HELD`] datagrams, at most `max_datagrams` forwarded, and [`Relay::stop`] joins the
//! thread it started.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Datagrams held back for reordering at most.
pub const MAX_HELD: usize = 8;

/// What the relay does to the stream. Probabilities are per datagram, in `0.0..=1.0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossProfile {
    /// Independent random loss.
    pub loss: f64,
    /// Length of a burst of consecutive losses (0: no bursts).
    pub burst_len: u32,
    /// Datagrams passed between two bursts: uniform in this range.
    pub burst_gap: (u32, u32),
    /// Held back and sent after 1..=3 later datagrams.
    pub reorder: f64,
    /// Sent twice.
    pub duplicate: f64,
    /// Cut short at a random length.
    pub truncate: f64,
    pub seed: u64,
}

impl LossProfile {
    /// Passes everything unchanged.
    pub fn clean(seed: u64) -> Self {
        Self {
            loss: 0.0,
            burst_len: 0,
            burst_gap: (0, 0),
            reorder: 0.0,
            duplicate: 0.0,
            truncate: 0.0,
            seed,
        }
    }

    /// Random loss at `rate`.
    pub fn random(rate: f64, seed: u64) -> Self {
        Self {
            loss: rate,
            ..Self::clean(seed)
        }
    }

    /// Bursts of `len` consecutive losses, `gap` datagrams apart.
    pub fn bursts(len: u32, gap: (u32, u32), seed: u64) -> Self {
        Self {
            burst_len: len,
            burst_gap: gap,
            ..Self::clean(seed)
        }
    }
}

/// What the relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub received: u64,
    pub forwarded: u64,
    pub dropped_random: u64,
    pub dropped_burst: u64,
    pub dropped_on_request: u64,
    pub reordered: u64,
    pub duplicated: u64,
    pub truncated: u64,
}

impl RelayStats {
    /// All datagrams lost on purpose.
    pub fn dropped(&self) -> u64 {
        self.dropped_random + self.dropped_burst + self.dropped_on_request
    }
}

/// A small, seeded PRNG (splitmix64): reproducible runs without a dependency.
#[derive(Debug, Clone, Copy)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0.0..1.0`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        if hi <= lo {
            return lo;
        }
        lo + (self.next_u64() % u64::from(hi - lo + 1)) as u32
    }
}

struct Shared {
    profile: LossProfile,
    /// Set when the profile changed: the thread reseeds.
    changed: bool,
    drop_next: u64,
    stats: RelayStats,
}

/// A running relay; stop it with [`Relay::stop`] (dropping it stops it too).
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on `127.0.0.1:0` and forwards to `target` (at most `max_datagrams`).
    pub fn start(
        target: SocketAddr,
        profile: LossProfile,
        max_datagrams: u64,
    ) -> io::Result<Relay> {
        let rx = UdpSocket::bind("127.0.0.1:0")?;
        rx.set_read_timeout(Some(Duration::from_millis(20)))?;
        // A large receive buffer: the relay itself must not be where loss happens.
        let tx = UdpSocket::bind("127.0.0.1:0")?;
        tx.connect(target)?;
        let addr = rx.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared {
            profile,
            changed: true,
            drop_next: 0,
            stats: RelayStats::default(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let shared = Arc::clone(&shared);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("lossy-relay".into())
                .spawn(move || relay_loop(&rx, &tx, &shared, &stop, max_datagrams))?
        };
        Ok(Relay {
            addr,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Where senders send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what the relay does from the next datagram on.
    pub fn set_profile(&self, profile: LossProfile) {
        if let Ok(mut s) = self.shared.lock() {
            s.profile = profile;
            s.changed = true;
        }
    }

    /// Loses exactly the next `n` datagrams (before the profile applies).
    pub fn drop_next(&self, n: u64) {
        if let Ok(mut s) = self.shared.lock() {
            s.drop_next = n;
        }
    }

    /// Datagrams still to be lost on request.
    pub fn drops_pending(&self) -> u64 {
        self.shared.lock().map(|s| s.drop_next).unwrap_or(0)
    }

    /// What it did so far.
    pub fn stats(&self) -> RelayStats {
        self.shared.lock().map(|s| s.stats).unwrap_or_default()
    }

    /// Stops the thread and returns the totals.
    pub fn stop(mut self) -> RelayStats {
        self.halt();
        self.stats()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.halt();
    }
}

fn relay_loop(
    rx: &UdpSocket,
    tx: &UdpSocket,
    shared: &Mutex<Shared>,
    stop: &AtomicBool,
    max_datagrams: u64,
) {
    let mut buf = vec![0u8; 65_536];
    let mut rng = Rng::new(0);
    let mut until_burst: u32 = 0;
    let mut burst_left: u32 = 0;
    // (datagram, forward after this many more datagrams)
    let mut held: Vec<(Vec<u8>, u32)> = Vec::with_capacity(MAX_HELD);
    let mut forwarded = 0u64;
    let send = |d: &[u8], forwarded: &mut u64| {
        if *forwarded < max_datagrams && tx.send(d).is_ok() {
            *forwarded += 1;
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let n = match rx.recv(&mut buf) {
            Ok(n) => n,
            Err(_) => {
                // Idle: release anything held back so nothing waits forever.
                for (d, _) in held.drain(..) {
                    send(&d, &mut forwarded);
                }
                continue;
            }
        };
        let Ok(mut s) = shared.lock() else { return };
        if s.changed {
            s.changed = false;
            rng = Rng::new(s.profile.seed);
            let (lo, hi) = s.profile.burst_gap;
            until_burst = rng.range(lo, hi);
            burst_left = 0;
        }
        let p = s.profile;
        s.stats.received += 1;
        // Held datagrams move one step closer to release.
        let mut release = Vec::new();
        held.retain_mut(|(d, after)| {
            if *after == 0 {
                release.push(std::mem::take(d));
                false
            } else {
                *after -= 1;
                true
            }
        });
        let lost = if s.drop_next > 0 {
            s.drop_next -= 1;
            s.stats.dropped_on_request += 1;
            true
        } else if p.burst_len > 0 && burst_left > 0 {
            burst_left -= 1;
            s.stats.dropped_burst += 1;
            true
        } else if p.burst_len > 0 && until_burst == 0 {
            burst_left = p.burst_len - 1;
            until_burst = rng.range(p.burst_gap.0, p.burst_gap.1);
            s.stats.dropped_burst += 1;
            true
        } else {
            if p.burst_len > 0 {
                until_burst -= 1;
            }
            if rng.unit() < p.loss {
                s.stats.dropped_random += 1;
                true
            } else {
                false
            }
        };
        if !lost {
            let mut d = buf[..n].to_vec();
            if rng.unit() < p.truncate && d.len() > 1 {
                let keep = rng.range(0, d.len() as u32 - 1) as usize;
                d.truncate(keep);
                s.stats.truncated += 1;
            }
            if rng.unit() < p.duplicate {
                s.stats.duplicated += 1;
                send(&d, &mut forwarded);
            }
            if held.len() < MAX_HELD && rng.unit() < p.reorder {
                s.stats.reordered += 1;
                held.push((d, rng.range(1, 3)));
            } else {
                send(&d, &mut forwarded);
            }
        }
        for d in release {
            send(&d, &mut forwarded);
        }
        s.stats.forwarded = forwarded;
    }
    for (d, _) in held.drain(..) {
        send(&d, &mut forwarded);
    }
    if let Ok(mut s) = shared.lock() {
        s.stats.forwarded = forwarded;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible_and_uniform_enough() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<u64> = (0..10).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..10).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut r = Rng::new(1);
        let hits = (0..100_000).filter(|_| r.unit() < 0.1).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
    }
}
