//! The diode transport: a UDP socket that only ever sends.
//!
//! [`DiodeSender`] binds an ephemeral port on the wildcard address of the target's family and
//! `connect`s it to the diode, so the kernel discards any datagram from anyone else. The socket
//! is private and the type only sends ([`DiodeSender::queue`], [`DiodeSender::flush`],
//! [`DiodeSender::send_message`]): there is no receive path in the agent, by construction.
//!
//! With FEC (the default) envelopes are collected in a window (`outpost_proto::fec::Window`)
//! and each window is sent as one RaptorQ block: [`DiodeSender::queue`] adds an envelope,
//! first sending the window when the envelope would not fit its byte bound or the window's
//! first envelope has waited longer than its delay; [`DiodeSender::flush`] sends whatever is
//! queued (the agent flushes at the end of every cycle and every heartbeat, so nothing waits
//! for a timer). With `repeat_after` set, each block's second round (fresh repair symbols)
//! follows its first after that pause, inside the same flush. With FEC off each envelope is
//! cut into plain fragments (`outpost_proto::frame::fragment`) and sent at once. Blocks and
//! plain messages take ids that start at a random 64-bit value (so a restarted agent does not
//! reuse recent ids) and go up by one.
//!
//! Pacing, because bursts are what diodes and receiving kernels drop: datagram *n* of the stream
//! is not sent before `start + n / max_datagrams_per_sec`, and a token bucket holds the byte
//! rate to `link_bytes_per_sec` (bucket depth: 20 ms of the rate, at least two datagrams, so
//! the burst a receiver must absorb is small and known).
//!
//! ICMP errors: on Linux a connected UDP socket reports an ICMP "port unreachable" for an
//! earlier datagram as `ECONNREFUSED` on a later `send`, and that later datagram is not sent.
//! The sender counts it (`SendReport::refused`), logs a warning (once per message), and sends
//! the same datagram once more; other errors on a datagram are counted as failed and the remaining datagrams are
//! still sent. Only when no datagram at all got out is `send_message` an error.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use outpost_proto::fec::{self, FecParams, Window};
use outpost_proto::frame::{self, FrameError};
use ring::rand::{SecureRandom as _, SystemRandom};
use tokio::time::Instant;

/// How long one `send` may block when the socket buffer is full.
const SEND_BLOCK_LIMIT: Duration = Duration::from_secs(1);

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum DiodeError {
    #[error("diode {target}: cannot open UDP socket: {source}")]
    Socket {
        target: SocketAddr,
        source: std::io::Error,
    },
    #[error("diode: cannot pick a random message id: the system random number generator failed")]
    Rng,
    #[error("diode {target}: cannot frame message: {0}", .source)]
    Frame {
        target: SocketAddr,
        source: FrameError,
    },
    #[error(
        "diode {target}: none of the {datagrams} datagrams could be sent ({refused} refused by ICMP); last error: {last}"
    )]
    NothingSent {
        target: SocketAddr,
        datagrams: usize,
        refused: usize,
        last: std::io::Error,
    },
}

/// What one flush (or [`DiodeSender::send_message`]) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    /// The id of the (last) block or plain message sent.
    pub message_id: u64,
    /// Envelopes it carried.
    pub envelopes: usize,
    pub datagrams: usize,
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// `ECONNREFUSED` reports (ICMP port unreachable for an earlier datagram).
    pub refused: usize,
    /// Datagrams that could not be sent at all.
    pub failed: usize,
    /// Bytes put on the wire (UDP payloads).
    pub bytes: usize,
    pub duration: Duration,
}

impl SendReport {
    fn absorb(&mut self, other: SendReport) {
        self.message_id = other.message_id;
        self.envelopes += other.envelopes;
        self.datagrams += other.datagrams;
        self.sent += other.sent;
        self.refused += other.refused;
        self.failed += other.failed;
        self.bytes += other.bytes;
        self.duration += other.duration;
    }
}

/// Default bound on a FEC window's bytes.
pub const DEFAULT_WINDOW_BYTES: usize = 256 * 1024;
/// Default bound on how long a window's first envelope waits.
pub const DEFAULT_WINDOW_DELAY: Duration = Duration::from_millis(50);

/// A byte-rate token bucket (time passed in).
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    rate: f64,
    depth: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    fn new(bytes_per_sec: u64) -> TokenBucket {
        let rate = bytes_per_sec.max(1) as f64;
        let depth = (rate / 50.0).max(2.0 * frame::MAX_DATAGRAM as f64);
        TokenBucket {
            rate,
            depth,
            tokens: depth,
            last: None,
        }
    }

    /// How long to wait before `bytes` may go; takes them.
    fn take(&mut self, bytes: usize, now: Instant) -> Duration {
        if let Some(last) = self.last {
            let add = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + add).min(self.depth);
        }
        self.last = Some(now);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// A send-only, paced UDP sender to the diode.
#[derive(Debug)]
pub struct DiodeSender {
    socket: UdpSocket,
    target: SocketAddr,
    next_id: u64,
    spacing: Duration,
    next_slot: Option<Instant>,
    bucket: Option<TokenBucket>,
    fec: Option<FecParams>,
    window: Window,
    window_bytes: usize,
    window_delay: Duration,
    window_started: Option<Instant>,
    repeat_after: Option<Duration>,
}

impl DiodeSender {
    /// Opens a socket connected to `target`, paced to `max_datagrams_per_sec` (at least 1).
    pub fn new(target: SocketAddr, max_datagrams_per_sec: u32) -> Result<DiodeSender, DiodeError> {
        let socket_err = |source| DiodeError::Socket { target, source };
        let local: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).map_err(socket_err)?;
        socket.connect(target).map_err(socket_err)?;
        socket
            .set_write_timeout(Some(SEND_BLOCK_LIMIT))
            .map_err(socket_err)?;
        let mut seed = [0u8; 8];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| DiodeError::Rng)?;
        Ok(DiodeSender {
            socket,
            target,
            next_id: u64::from_be_bytes(seed),
            spacing: Duration::from_secs(1) / max_datagrams_per_sec.max(1),
            next_slot: None,
            bucket: None,
            fec: None,
            window: Window::new(),
            window_bytes: DEFAULT_WINDOW_BYTES,
            window_delay: DEFAULT_WINDOW_DELAY,
            window_started: None,
            repeat_after: None,
        })
    }

    /// A sender set up from the agent's `[diode]` configuration.
    pub fn from_config(c: &crate::config::DiodeConfig) -> Result<DiodeSender, DiodeError> {
        let mut s = DiodeSender::new(c.target, c.max_datagrams_per_sec)?
            .with_link_rate(c.link_bytes_per_sec);
        if c.fec {
            s = s
                .with_fec(FecParams {
                    overhead_percent: c.fec_overhead_percent,
                    min_repair: c.fec_min_repair,
                    repeat: false,
                })
                .with_window(c.fec_window_bytes, c.fec_window_delay);
            if let Some(after) = c.fec_repeat_after {
                s = s.with_repeat(after);
            }
        }
        Ok(s)
    }

    /// Limits the byte rate (UDP payload bytes per second) with a token bucket.
    pub fn with_link_rate(mut self, bytes_per_sec: u64) -> DiodeSender {
        self.bucket = Some(TokenBucket::new(bytes_per_sec));
        self
    }

    /// Sends messages as RaptorQ symbols with this much repair (`params.repeat` is set by
    /// [`DiodeSender::with_repeat`]).
    pub fn with_fec(mut self, params: FecParams) -> DiodeSender {
        let repeat = self.repeat_after.is_some();
        self.fec = Some(FecParams { repeat, ..params });
        self
    }

    /// Bounds FEC windows to `bytes` of envelopes and `delay` of waiting.
    pub fn with_window(mut self, bytes: usize, delay: Duration) -> DiodeSender {
        self.window_bytes = bytes.clamp(1, fec::MAX_BLOCK_BYTES);
        self.window_delay = delay;
        self
    }

    /// Sends every FEC block a second time (`K + R` fresh repair symbols) `after` its first.
    pub fn with_repeat(mut self, after: Duration) -> DiodeSender {
        self.repeat_after = Some(after);
        if let Some(p) = &mut self.fec {
            p.repeat = true;
        }
        self
    }

    /// The diode address.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Envelopes waiting in the FEC window.
    pub fn queued(&self) -> usize {
        usize::from(self.window.envelopes())
    }

    /// Adds `message` to the FEC window, first sending the window when `message` would not
    /// fit it or it has waited longer than its delay. Without FEC, sends `message` at once.
    /// Returns what was sent, if anything.
    pub async fn queue(&mut self, message: &[u8]) -> Result<Option<SendReport>, DiodeError> {
        let frame_err = |target, source| DiodeError::Frame { target, source };
        if self.fec.is_none() {
            let id = self.take_id();
            let datagrams = frame::fragment(id, message).map_err(|e| frame_err(self.target, e))?;
            return self.send_all(id, 1, &datagrams, &[]).await.map(Some);
        }
        if message.is_empty() {
            return Err(frame_err(self.target, FrameError::EmptyMessage));
        }
        let waited = self
            .window_started
            .is_some_and(|t| t.elapsed() >= self.window_delay);
        let flushed = if !self.window.is_empty()
            && (waited || !self.window.has_room(message.len(), self.window_bytes))
        {
            self.flush().await
        } else {
            Ok(None)
        };
        // Queued even when sending the previous window failed: it goes with the next flush.
        self.window
            .push(message)
            .map_err(|e| frame_err(self.target, e))?;
        self.window_started.get_or_insert_with(Instant::now);
        flushed
    }

    /// Sends the FEC window as one block (both rounds with a repeat), if anything is queued.
    /// The window is emptied even when sending fails: its envelopes are then lost, and the
    /// collector reports them as a gap.
    pub async fn flush(&mut self) -> Result<Option<SendReport>, DiodeError> {
        let Some(params) = self.fec else {
            return Ok(None);
        };
        if self.window.is_empty() {
            return Ok(None);
        }
        let id = self.take_id();
        let envelopes = usize::from(self.window.envelopes());
        let encoded = fec::encode_window(id, &self.window, params);
        self.window.clear();
        self.window_started = None;
        let encoded = encoded.map_err(|source| DiodeError::Frame {
            target: self.target,
            source,
        })?;
        self.send_all(id, envelopes, &encoded.first, &encoded.repeat)
            .await
            .map(Some)
    }

    /// Sends `message` on its own: whatever is queued, then `message`, now.
    pub async fn send_message(&mut self, message: &[u8]) -> Result<SendReport, DiodeError> {
        let earlier = self.queue(message).await?;
        let last = self.flush().await?;
        match (earlier, last) {
            (Some(mut a), Some(b)) => {
                a.absorb(b);
                Ok(a)
            }
            (Some(a), None) | (None, Some(a)) => Ok(a),
            (None, None) => Err(DiodeError::Frame {
                target: self.target,
                source: FrameError::EmptyMessage,
            }),
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Sends `first`, then (after the repeat pause) `repeat`, paced.
    async fn send_all(
        &mut self,
        message_id: u64,
        envelopes: usize,
        first: &[Vec<u8>],
        repeat: &[Vec<u8>],
    ) -> Result<SendReport, DiodeError> {
        let started = Instant::now();
        let mut report = SendReport {
            message_id,
            envelopes,
            datagrams: first.len() + repeat.len(),
            sent: 0,
            refused: 0,
            failed: 0,
            bytes: 0,
            duration: Duration::ZERO,
        };
        let mut last_error = None;
        for (round, datagrams) in [first, repeat].into_iter().enumerate() {
            if round == 1
                && !datagrams.is_empty()
                && let Some(after) = self.repeat_after
            {
                tokio::time::sleep(after).await;
            }
            for d in datagrams {
                if let Some(e) = self.send_one(d, message_id, &mut report).await {
                    last_error = Some(e);
                }
            }
        }
        report.duration = started.elapsed();
        match last_error {
            Some(last) if report.sent == 0 => Err(DiodeError::NothingSent {
                target: self.target,
                datagrams: report.datagrams,
                refused: report.refused,
                last,
            }),
            _ => Ok(report),
        }
    }

    /// Sends one datagram, paced; counts it; returns the error if it could not be sent.
    async fn send_one(
        &mut self,
        d: &[u8],
        message_id: u64,
        report: &mut SendReport,
    ) -> Option<std::io::Error> {
        self.pace(d.len()).await;
        let mut outcome = self.socket.send(d);
        if matches!(&outcome, Err(e) if e.kind() == ErrorKind::ConnectionRefused) {
            report.refused += 1;
            if report.refused == 1 {
                tracing::warn!(
                    message_id,
                    "diode {}: ICMP port unreachable for an earlier datagram (nothing listening on the diode's port?); resending and carrying on",
                    self.target
                );
            }
            outcome = self.socket.send(d);
        }
        match outcome {
            Ok(n) => {
                report.sent += 1;
                report.bytes += n;
                None
            }
            Err(e) => {
                if e.kind() == ErrorKind::ConnectionRefused {
                    report.refused += 1;
                }
                report.failed += 1;
                tracing::warn!(message_id, "diode {}: datagram not sent: {e}", self.target);
                Some(e)
            }
        }
    }

    /// Waits for the next send slot and for the byte budget.
    async fn pace(&mut self, bytes: usize) {
        if let Some(bucket) = &mut self.bucket {
            let wait = bucket.take(bytes, Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let now = Instant::now();
        let slot = match self.next_slot {
            // Slots left unused while idle are not saved up for a later burst.
            Some(slot) if slot > now => slot,
            _ => now,
        };
        if slot > now {
            tokio::time::sleep_until(slot).await;
        }
        self.next_slot = Some(slot + self.spacing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::reassembly::{Reassembler, ReassemblyLimits};

    fn receiver() -> UdpSocket {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        rx
    }

    #[tokio::test]
    async fn sends_a_message_that_reassembles() {
        let rx = receiver();
        let mut tx = DiodeSender::new(rx.local_addr().unwrap(), 100_000).unwrap();
        let message: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let report = tx.send_message(&message).await.unwrap();
        assert_eq!(report.datagrams, frame::fragment_count(message.len()));
        assert_eq!(report.sent, report.datagrams);
        assert_eq!((report.refused, report.failed), (0, 0));
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let mut buf = [0u8; 2048];
        let mut done = None;
        for _ in 0..report.datagrams {
            let (n, from) = rx.recv_from(&mut buf).unwrap();
            assert!(n <= frame::MAX_DATAGRAM);
            if let Some(m) = r.push(from, &buf[..n], 0).unwrap().pop() {
                done = Some(m);
            }
        }
        assert_eq!(done.as_deref(), Some(&message[..]));

        // The next message has the next id.
        let again = tx.send_message(b"x").await.unwrap();
        assert_eq!(again.message_id, report.message_id.wrapping_add(1));
    }

    #[tokio::test]
    async fn paces_datagrams() {
        let rx = receiver();
        let mut tx = DiodeSender::new(rx.local_addr().unwrap(), 200).unwrap();
        let message = vec![1u8; frame::MAX_PAYLOAD * 20];
        let report = tx.send_message(&message).await.unwrap();
        assert_eq!(report.datagrams, 20);
        // 20 datagrams at 200/s: the 20th is due 95 ms after the first.
        assert!(report.duration >= Duration::from_millis(90), "{report:?}");
        assert!(report.duration < Duration::from_secs(2), "{report:?}");
    }

    #[tokio::test]
    async fn fec_message_rebuilds_without_its_source_symbols() {
        let rx = receiver();
        let mut tx = DiodeSender::new(rx.local_addr().unwrap(), 100_000)
            .unwrap()
            .with_fec(FecParams::default());
        let message: Vec<u8> = (0..10_000u32).map(|i| (i * 3) as u8).collect();
        let report = tx.send_message(&message).await.unwrap();
        // A window of 10,004 bytes: K symbols of the size the framing picks, then the repairs.
        let k = 10_004u16.div_ceil(fec::symbol_size_for(10_004));
        assert_eq!(
            report.datagrams,
            usize::from(k + FecParams::default().repair_for(k))
        );
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let mut buf = [0u8; 2048];
        let mut done = None;
        for i in 0..report.datagrams {
            let (n, from) = rx.recv_from(&mut buf).unwrap();
            if i < 24 {
                continue; // a burst of 24 lost
            }
            if let Some(m) = r.push(from, &buf[..n], 0).unwrap().pop() {
                done.get_or_insert(m);
            }
        }
        assert_eq!(done.as_deref(), Some(&message[..]));
    }

    #[tokio::test]
    async fn a_window_carries_queued_envelopes_as_one_block() {
        let rx = receiver();
        let mut tx = DiodeSender::new(rx.local_addr().unwrap(), 100_000)
            .unwrap()
            .with_fec(FecParams::default())
            .with_window(10_000, Duration::from_secs(60));
        let msgs: Vec<Vec<u8>> = (0..7u8).map(|i| vec![i; 3000]).collect();
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let mut buf = [0u8; 2048];
        let mut got = Vec::new();
        // Each window's datagrams are read as soon as it is sent (the socket buffer is small).
        let mut drain = |report: SendReport, got: &mut Vec<Vec<u8>>| {
            for _ in 0..report.datagrams {
                let (n, from) = rx.recv_from(&mut buf).unwrap();
                got.extend(r.push(from, &buf[..n], 0).unwrap());
            }
        };
        let mut windows = Vec::new();
        for m in &msgs {
            if let Some(report) = tx.queue(m).await.unwrap() {
                windows.push(report.envelopes);
                drain(report, &mut got);
            }
        }
        // 3 envelopes of 3004 bytes fit 10 kB; the 4th and 7th each start a new window.
        assert_eq!(windows, vec![3, 3]);
        assert_eq!(tx.queued(), 1);
        let last = tx.flush().await.unwrap().unwrap();
        assert_eq!(last.envelopes, 1);
        drain(last, &mut got);
        assert_eq!(tx.queued(), 0);
        assert!(tx.flush().await.unwrap().is_none());
        assert_eq!(got, msgs);
    }

    #[tokio::test]
    async fn the_repeat_round_follows_after_its_pause_and_alone_rebuilds() {
        let rx = receiver();
        let mut tx = DiodeSender::new(rx.local_addr().unwrap(), 100_000)
            .unwrap()
            .with_fec(FecParams::default())
            .with_repeat(Duration::from_millis(150));
        let message = vec![9u8; 2000];
        let report = tx.send_message(&message).await.unwrap();
        assert!(report.duration >= Duration::from_millis(150), "{report:?}");
        let mut buf = [0u8; 2048];
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let mut got = Vec::new();
        let half = report.datagrams / 2;
        for i in 0..report.datagrams {
            let (n, from) = rx.recv_from(&mut buf).unwrap();
            if i < half {
                continue; // the whole first round lost
            }
            got.extend(r.push(from, &buf[..n], 0).unwrap());
        }
        assert_eq!(got, vec![message]);
    }

    #[tokio::test]
    async fn paces_bytes_with_a_token_bucket() {
        let rx = receiver();
        let mut tx = DiodeSender::new(rx.local_addr().unwrap(), 1_000_000)
            .unwrap()
            .with_link_rate(100_000);
        // 60 kB at 100 kB/s with a 2.4 kB bucket: at least ~0.55 s.
        let message = vec![3u8; frame::MAX_PAYLOAD * 50];
        let report = tx.send_message(&message).await.unwrap();
        assert!(report.duration >= Duration::from_millis(500), "{report:?}");
        assert!(report.duration < Duration::from_secs(3), "{report:?}");
        // The receiver drains so its queue never overflows.
        let mut buf = [0u8; 2048];
        for _ in 0..report.datagrams {
            rx.recv_from(&mut buf).unwrap();
        }
    }

    #[tokio::test]
    async fn closed_port_is_counted_not_fatal() {
        // Bind then drop: the port is (almost certainly) closed for the rest of the test.
        let closed = receiver().local_addr().unwrap();
        let mut tx = DiodeSender::new(closed, 10_000).unwrap();
        let message = vec![2u8; frame::MAX_PAYLOAD * 5];
        let first = tx.send_message(&message).await.unwrap();
        assert_eq!(first.datagrams, 5);
        assert_eq!(first.sent, 5, "{first:?}");
        assert!(first.refused >= 1, "{first:?}");
    }

    #[test]
    fn refuses_empty_message() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut tx = DiodeSender::new("127.0.0.1:9".parse().unwrap(), 10).unwrap();
        let err = rt.block_on(tx.send_message(b"")).unwrap_err();
        assert!(err.to_string().contains("empty message"), "{err}");
    }
}
