//! The UDP listener: datagrams → [`Reassembler`] → a bounded queue → the ingest thread.
//!
//! The receive loop only moves bytes and reassembles; envelopes then pass through a checking
//! thread (parse, key, signature, body: [`crate::check`], with its own read connection) to one
//! blocking thread that owns the writing [`Cmdb`], through bounded channels. When the channel is full the
//! loop counts `ingest_backpressure` and waits (nothing is dropped here; the kernel's receive
//! buffer absorbs the burst, which is why the socket asks for a large `SO_RCVBUF`).
//!
//! Reassembly uses a monotonic clock (time since start); the CMDB uses the wall clock. Every
//! refused datagram and every message given up by the reassembler reaches the ingest thread to
//! be counted. On shutdown the loop reads what is already queued in the socket, reports
//! unfinished messages as dropped, lets the ingest thread drain the channel, and returns.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outpost_proto::frame::FrameError;
use outpost_proto::reassembly::{Dropped, Reassembler, ReassemblyLimits, ReassemblyStats};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::check::{Checked, Refusal};
use crate::cmdb::record::MAX_DATAGRAM_COPY;
use crate::cmdb::record::{EventScope, kind};
use crate::cmdb::{Cmdb, CmdbError};
use crate::ingest::{Applied, Ingest, Reason, Rejected};
use crate::liveness::{Change, Liveness};
use crate::pipeline::Checker;
use crate::time::now_ms;
use outpost_proto::model::Body;
use serde_json::json;

/// Receive buffer asked for by default (the kernel may grant less; see `net.core.rmem_max`).
pub const DEFAULT_RECV_BUFFER: usize = 4 * 1024 * 1024;
/// Envelopes and reports queued for the ingest thread at most.
pub const DEFAULT_QUEUE: usize = 1024;
/// How often unfinished messages are checked for expiry.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Most datagrams read from the socket after shutdown is requested.
pub const MAX_SHUTDOWN_DRAIN: usize = 100_000;

/// What `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// An existing CMDB (created by `enroll`).
    pub db: PathBuf,
    pub diode_listen: SocketAddr,
    /// Written with the bound address once listening.
    pub ready_file: Option<PathBuf>,
    pub recv_buffer_bytes: usize,
    pub queue_capacity: usize,
    pub reassembly: ReassemblyLimits,
    /// How far ahead of our clock an envelope's agent time may be (`--max-clock-skew`).
    pub max_clock_skew: std::time::Duration,
}

impl ServeConfig {
    /// Defaults for everything but the database and the listening address.
    pub fn new(db: impl Into<PathBuf>, diode_listen: SocketAddr) -> Self {
        Self {
            db: db.into(),
            diode_listen,
            ready_file: None,
            recv_buffer_bytes: DEFAULT_RECV_BUFFER,
            queue_capacity: DEFAULT_QUEUE,
            reassembly: ReassemblyLimits::default(),
            max_clock_skew: std::time::Duration::from_millis(
                crate::ingest::DEFAULT_MAX_CLOCK_SKEW_MS,
            ),
        }
    }
}

/// Totals for one run of `serve`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeStats {
    pub datagrams: u64,
    pub datagram_bytes: u64,
    pub datagrams_rejected: u64,
    pub messages_reassembled: u64,
    pub duplicate_fragments: u64,
    pub reassembly_dropped: u64,
    pub envelopes_applied: u64,
    pub envelopes_rejected: u64,
    pub backpressure_waits: u64,
    pub receive_errors: u64,
    pub storage_errors: u64,
    /// Messages rebuilt from FEC symbols, and of those the ones that needed repair symbols.
    pub fec_decoded: u64,
    pub fec_repaired: u64,
    /// FEC symbols after their message was rebuilt (unused repair).
    pub fec_surplus: u64,
    /// Datagrams for messages already given up.
    pub late_datagrams: u64,
    /// Datagrams the kernel dropped for our socket while we ran (`/proc/net/udp`), when known.
    pub kernel_drops: Option<u64>,
}

/// Why `serve` could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Cmdb(#[from] CmdbError),
    #[error(
        "cannot listen on {addr}: {source}; check that the address belongs to this host and \
         that no other collector uses the port"
    )]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot write ready file {}: {source}; check the directory exists and is writable", path.display())]
    ReadyFile { path: PathBuf, source: io::Error },
    #[error("cannot start the ingest thread: {0}")]
    Thread(io::Error),
    #[error("the ingest thread stopped unexpectedly; see the log lines above")]
    WorkerGone,
}

enum Job {
    Envelope {
        peer: SocketAddr,
        wire: Vec<u8>,
    },
    BadDatagram {
        peer: SocketAddr,
        error: FrameError,
        /// At most `MAX_DATAGRAM_COPY` bytes of it.
        copy: Vec<u8>,
        /// Its full length.
        len: usize,
    },
    /// An envelope after the read-only checks (see `check_loop`).
    Checked {
        peer: SocketAddr,
        wire: Vec<u8>,
        result: Box<Result<Checked, Refusal>>,
    },
    Dropped(Dropped<SocketAddr>),
    Tick {
        /// Milliseconds since the last datagram of any kind.
        idle_ms: u64,
        /// Counter increments since the last tick (FEC, late datagrams, kernel drops).
        counts: Vec<(&'static str, u64)>,
    },
}

#[derive(Default)]
struct WorkerStats {
    applied: u64,
    rejected: u64,
    storage_errors: u64,
}

impl WorkerStats {
    fn count(&mut self, result: &Result<Applied, Rejected>) {
        match result {
            Ok(_) => self.applied += 1,
            Err(rejected) => {
                self.rejected += 1;
                if rejected.reason == Reason::Storage {
                    self.storage_errors += 1;
                }
            }
        }
    }
}

/// A bound listener, not yet receiving.
pub struct Server {
    socket: UdpSocket,
    cmdb: Cmdb,
    cfg: ServeConfig,
}

impl Server {
    /// Opens the CMDB and binds the socket (must be called inside a tokio runtime).
    pub fn bind(cfg: ServeConfig) -> Result<Server, ServeError> {
        let cmdb = Cmdb::open_existing(&cfg.db)?;
        let socket = bind_udp(cfg.diode_listen, cfg.recv_buffer_bytes)?;
        Ok(Server { socket, cmdb, cfg })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Receives until `shutdown` completes, then drains and returns the totals.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<ServeStats, ServeError> {
        let Server { socket, cmdb, cfg } = self;
        let capacity = cfg.queue_capacity.max(1);
        let (tx, rx) = mpsc::channel::<Job>(capacity);
        let (checked_tx, checked_rx) = std::sync::mpsc::sync_channel::<Job>(capacity);
        // The read-only checks run on their own thread and connection; without one (it could
        // not be opened) the ingest thread does everything itself.
        let checker = match Checker::open(&cfg.db) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("{e}; checking envelopes on the ingest thread instead");
                None
            }
        };
        let check_thread = std::thread::Builder::new()
            .name("outpost-check".into())
            .spawn(move || check_loop(checker, rx, &checked_tx))
            .map_err(ServeError::Thread)?;
        let backpressure = Arc::new(AtomicU64::new(0));
        let skew = cfg.max_clock_skew;
        let worker_bp = Arc::clone(&backpressure);
        let worker = std::thread::Builder::new()
            .name("outpost-ingest".into())
            .spawn(move || {
                let mut ingest = Ingest::new(cmdb);
                ingest.set_max_clock_skew(skew);
                ingest_loop(ingest, &checked_rx, &worker_bp)
            })
            .map_err(ServeError::Thread)?;

        let local = socket.local_addr().ok();
        let kernel_base = local.and_then(crate::kernel::udp_drops);
        if local.is_some() && kernel_base.is_none() {
            tracing::info!("kernel UDP drop counters are not readable here (/proc/net/udp)");
        }
        let mut rx_loop = ReceiveLoop {
            tx,
            reassembler: Reassembler::new(cfg.reassembly),
            started: Instant::now(),
            last_datagram: Instant::now(),
            backpressure,
            stats: ServeStats::default(),
            local,
            kernel_last: kernel_base,
            reported: ReassemblyStats::default(),
        };
        let result = rx_loop.run(&socket, shutdown).await;
        let mut stats = rx_loop.stats;
        let reassembly = rx_loop.reassembler.stats();
        stats.messages_reassembled = reassembly.completed;
        stats.duplicate_fragments = reassembly.duplicate_fragments;
        stats.fec_decoded = reassembly.fec_decoded;
        stats.fec_repaired = reassembly.fec_repaired;
        stats.fec_surplus = reassembly.fec_surplus;
        stats.late_datagrams = reassembly.late;
        stats.kernel_drops = match (kernel_base, local.and_then(crate::kernel::udp_drops)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        drop(rx_loop.tx);
        let joined = tokio::task::spawn_blocking(move || {
            let checker = check_thread.join();
            (checker, worker.join())
        })
        .await;
        let worker_stats = match joined {
            Ok((Ok(()), Ok(w))) => w,
            _ => return Err(ServeError::WorkerGone),
        };
        result?;
        stats.envelopes_applied = worker_stats.applied;
        stats.envelopes_rejected = worker_stats.rejected;
        stats.storage_errors = worker_stats.storage_errors;
        tracing::info!(?stats, "collector stopped");
        Ok(stats)
    }
}

/// Listens on `cfg.diode_listen`, writes `cfg.ready_file` once listening, and ingests until
/// `shutdown` completes.
pub async fn serve(
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<ServeStats, ServeError> {
    let ready_file = cfg.ready_file.clone();
    let server = Server::bind(cfg)?;
    let local = server.local_addr().map_err(|source| ServeError::Bind {
        addr: server.cfg.diode_listen,
        source,
    })?;
    tracing::info!(listen = %local, db = %server.cfg.db.display(), "collector listening");
    if let Some(path) = ready_file {
        write_ready_file(&path, local)?;
    }
    server.run(shutdown).await
}

fn bind_udp(addr: SocketAddr, recv_buffer: usize) -> Result<UdpSocket, ServeError> {
    let fail = |source| ServeError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    if let Err(e) = socket.set_recv_buffer_size(recv_buffer) {
        tracing::warn!(wanted = recv_buffer, "could not set SO_RCVBUF: {e}");
    }
    match socket.recv_buffer_size() {
        // Linux reports twice what it grants (bookkeeping overhead included).
        Ok(effective) if effective < recv_buffer => tracing::warn!(
            wanted = recv_buffer,
            effective,
            "UDP receive buffer is smaller than asked; bursts may be dropped by the kernel. \
             Raise it with `sysctl -w net.core.rmem_max={}`",
            recv_buffer
        ),
        Ok(effective) => tracing::info!(effective, "UDP receive buffer"),
        Err(e) => tracing::warn!("could not read SO_RCVBUF: {e}"),
    }
    socket.bind(&addr.into()).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    UdpSocket::from_std(socket.into()).map_err(fail)
}

fn write_ready_file(path: &Path, local: SocketAddr) -> Result<(), ServeError> {
    let fail = |source| ServeError::ReadyFile {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{local}\n")).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

struct ReceiveLoop {
    tx: mpsc::Sender<Job>,
    reassembler: Reassembler<SocketAddr>,
    started: Instant,
    last_datagram: Instant,
    backpressure: Arc<AtomicU64>,
    stats: ServeStats,
    local: Option<SocketAddr>,
    kernel_last: Option<u64>,
    /// Reassembly totals already sent as counter increments.
    reported: ReassemblyStats,
}

impl ReceiveLoop {
    fn mono_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn run(
        &mut self,
        socket: &UdpSocket,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let mut buf = vec![0u8; 65_536];
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                received = socket.recv_from(&mut buf) => match received {
                    Ok((n, peer)) => self.datagram(&buf[..n], peer).await?,
                    Err(e) => self.receive_error(e).await,
                },
                _ = tick.tick() => {
                    self.report_dropped(self.mono_ms()).await?;
                    let job = self.tick_job();
                    self.submit(job).await?;
                }
            }
        }
        // Read what the kernel already holds, then give up unfinished messages (reported).
        for _ in 0..MAX_SHUTDOWN_DRAIN {
            match socket.try_recv_from(&mut buf) {
                Ok((n, peer)) => self.datagram(&buf[..n], peer).await?,
                Err(_) => break,
            }
        }
        self.report_dropped(u64::MAX).await?;
        let job = self.tick_job();
        self.submit(job).await?;
        tracing::info!("shutting down: finishing queued envelopes");
        Ok(())
    }

    /// Counter increments since the last tick, and how long the conduit has been quiet.
    fn tick_job(&mut self) -> Job {
        let now = self.reassembler.stats();
        let was = std::mem::replace(&mut self.reported, now);
        let mut counts = Vec::new();
        for (name, a, b) in [
            ("fec_decoded", now.fec_decoded, was.fec_decoded),
            ("fec_repaired", now.fec_repaired, was.fec_repaired),
            ("fec_symbols", now.fec_symbols, was.fec_symbols),
            ("fec_surplus_symbols", now.fec_surplus, was.fec_surplus),
            ("datagrams_late", now.late, was.late),
            (
                "duplicate_fragments",
                now.duplicate_fragments,
                was.duplicate_fragments,
            ),
        ] {
            if a > b {
                counts.push((name, a - b));
            }
        }
        if let (Some(local), Some(last)) = (self.local, self.kernel_last)
            && let Some(drops) = crate::kernel::udp_drops(local)
        {
            if drops > last {
                tracing::warn!(
                    dropped = drops - last,
                    "the kernel dropped UDP datagrams for {local}: the receive queue overflowed; \
                     raise net.core.rmem_max or lower the agents' link_bytes_per_sec"
                );
                counts.push(("kernel_udp_drops", drops - last));
            }
            self.kernel_last = Some(drops);
        }
        Job::Tick {
            idle_ms: u64::try_from(self.last_datagram.elapsed().as_millis()).unwrap_or(u64::MAX),
            counts,
        }
    }

    async fn datagram(&mut self, datagram: &[u8], peer: SocketAddr) -> Result<(), ServeError> {
        self.last_datagram = Instant::now();
        self.stats.datagrams += 1;
        self.stats.datagram_bytes += datagram.len() as u64;
        let now = self.mono_ms();
        match self.reassembler.push(peer, datagram, now) {
            Ok(Some(wire)) => self.submit(Job::Envelope { peer, wire }).await?,
            Ok(None) => {}
            Err(error) => {
                self.stats.datagrams_rejected += 1;
                let copy = datagram[..datagram.len().min(MAX_DATAGRAM_COPY)].to_vec();
                let len = datagram.len();
                self.submit(Job::BadDatagram {
                    peer,
                    error,
                    copy,
                    len,
                })
                .await?;
            }
        }
        // Evictions happen inside push; report them promptly.
        self.report_dropped(now).await
    }

    async fn report_dropped(&mut self, now: u64) -> Result<(), ServeError> {
        for dropped in self.reassembler.poll_dropped(now) {
            self.stats.reassembly_dropped += 1;
            self.submit(Job::Dropped(dropped)).await?;
        }
        Ok(())
    }

    async fn receive_error(&mut self, e: io::Error) {
        self.stats.receive_errors += 1;
        if self.stats.receive_errors.is_power_of_two() {
            tracing::warn!(
                total = self.stats.receive_errors,
                "error receiving a datagram: {e}"
            );
        }
        // Do not spin on a persistent error.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    async fn submit(&mut self, job: Job) -> Result<(), ServeError> {
        let job = match self.tx.try_send(job) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(ServeError::WorkerGone),
            Err(mpsc::error::TrySendError::Full(job)) => job,
        };
        self.stats.backpressure_waits += 1;
        self.backpressure.fetch_add(1, Ordering::Relaxed);
        self.tx.send(job).await.map_err(|_| ServeError::WorkerGone)
    }
}

/// Writes a liveness change as an event and a counter, and logs it.
fn record_liveness(ingest: &mut Ingest, change: Option<Change>, now: u64, stats: &mut WorkerStats) {
    let Some(change) = change else { return };
    let (what, agent, detail) = match &change {
        Change::ConduitSilent { silent_ms } => {
            tracing::warn!(
                silent_ms,
                "conduit silent: no datagram at all for {silent_ms} ms; check the diode, the \
                 link and the agents' network"
            );
            (
                kind::CONDUIT_SILENT,
                None,
                json!({ "silent_ms": silent_ms }),
            )
        }
        Change::ConduitResumed => {
            tracing::info!("conduit resumed: datagrams arrive again");
            (kind::CONDUIT_RESUMED, None, json!({}))
        }
        Change::AgentSilent { agent, silent_ms } => {
            tracing::warn!(
                %agent,
                silent_ms,
                "agent {agent} silent for {silent_ms} ms while the conduit carries traffic: \
                 the agent (or its gateway) is down, or all its datagrams are lost"
            );
            (
                kind::AGENT_SILENT,
                Some(agent.as_str()),
                json!({ "silent_ms": silent_ms }),
            )
        }
        Change::AgentResumed { agent } => {
            tracing::info!(%agent, "agent {agent} heard from again");
            (kind::AGENT_RESUMED, Some(agent.as_str()), json!({}))
        }
    };
    let scope = EventScope {
        agent,
        ..EventScope::default()
    };
    if let Err(e) = ingest
        .cmdb_mut()
        .event_and_count(now, what, scope, &detail, &[what])
    {
        stats.storage_errors += 1;
        tracing::error!("could not record {what}: {e}");
    }
}

/// Checks envelopes (signature, key, body) and passes everything on in order.
fn check_loop(
    checker: Option<Checker>,
    mut rx: mpsc::Receiver<Job>,
    tx: &std::sync::mpsc::SyncSender<Job>,
) {
    while let Some(job) = rx.blocking_recv() {
        let job = match (job, &checker) {
            (Job::Envelope { peer, wire }, Some(checker)) => {
                let result = Box::new(checker.check(&wire));
                Job::Checked { peer, wire, result }
            }
            (job, _) => job,
        };
        if tx.send(job).is_err() {
            return;
        }
    }
}

fn ingest_loop(
    mut ingest: Ingest,
    rx: &std::sync::mpsc::Receiver<Job>,
    backpressure: &AtomicU64,
) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut live = Liveness::default();
    let storage = |stats: &mut WorkerStats, what: &str, e: CmdbError| {
        stats.storage_errors += 1;
        tracing::error!("could not record {what}: {e}");
    };
    while let Ok(job) = rx.recv() {
        let now = now_ms();
        match job {
            Job::Envelope { peer, wire } => {
                let result = ingest.envelope(&wire, &peer.to_string(), now);
                if let Ok(applied) = &result {
                    let change = live.heard(applied.agent.as_str(), None, now);
                    record_liveness(&mut ingest, change, now, &mut stats);
                }
                stats.count(&result);
            }
            Job::Checked { peer, wire, result } => {
                let peer = peer.to_string();
                let result = match *result {
                    Ok(checked) => {
                        let interval = match &checked.body {
                            Body::Heartbeat(b) => Some(b.interval_ms),
                            _ => None,
                        };
                        let result = ingest.apply_checked(checked, &wire, &peer, now);
                        if let Ok(applied) = &result {
                            let change = live.heard(applied.agent.as_str(), interval, now);
                            record_liveness(&mut ingest, change, now, &mut stats);
                        }
                        result
                    }
                    Err(refusal) => ingest.finish_refused(refusal, &wire, &peer, now),
                };
                stats.count(&result);
            }
            Job::BadDatagram {
                peer,
                error,
                copy,
                len,
            } => {
                let peer = peer.to_string();
                if let Err(e) = ingest.datagram_rejected_len(&peer, &error, &copy, len, now) {
                    storage(&mut stats, "a refused datagram", e);
                }
            }
            Job::Dropped(dropped) => {
                let peer = dropped.source.to_string();
                if let Err(e) = ingest.reassembly_dropped(&peer, &dropped, now) {
                    storage(&mut stats, "a dropped message", e);
                }
            }
            Job::Tick { idle_ms, counts } => {
                for (name, n) in counts {
                    if let Err(e) = ingest.count(name, crate::time::sql_int(n), now) {
                        storage(&mut stats, name, e);
                    }
                }
                for change in live.tick(now, idle_ms) {
                    record_liveness(&mut ingest, Some(change), now, &mut stats);
                }
                ingest.flush_logs(now);
                if let Err(e) = ingest.flush_counts(now) {
                    storage(&mut stats, "suppressed refusals", e);
                }
            }
        }
        let waits = backpressure.swap(0, Ordering::Relaxed);
        if waits > 0
            && let Err(e) = ingest.count("ingest_backpressure", crate::time::sql_int(waits), now)
        {
            storage(&mut stats, "backpressure", e);
        }
    }
    let now = now_ms();
    ingest.flush_logs(now.saturating_add(crate::lograte::DEFAULT_INTERVAL_MS));
    if let Err(e) = ingest.flush_counts(now) {
        storage(&mut stats, "suppressed refusals", e);
    }
    let waits = backpressure.swap(0, Ordering::Relaxed);
    if waits > 0
        && let Err(e) = ingest.count("ingest_backpressure", crate::time::sql_int(waits), now)
    {
        storage(&mut stats, "backpressure", e);
    }
    stats
}
