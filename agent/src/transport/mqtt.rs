//! The MQTT transport: publishes spooled envelopes to a broker (MQTT 5, QoS 1), in order.
//!
//! Topics: `outpost/v1/<zone>/<agent>/<kind>` (`kind` = `summary`, `heartbeat` or `data_lost`) for
//! envelopes, and `outpost/v1/<zone>/<agent>/status` for liveness: a retained `online` JSON
//! document published on every connect, and the same document with `offline` as the last will
//! (and published before a clean shutdown). The status is informational and unsigned; the
//! envelopes are what the collector trusts.
//! Segmentation probe reports are spooled (and, when the spool is full, dropped) like snapshots
//! and travel on the `summary` topic; the collector reads the kind from the signed body.
//!
//! Delivery: the [`Spool`] is the only record of what is owed. A background task connects
//! (with back-off: 1 s doubling to 30 s), publishes spooled envelopes in sequence order with up
//! to [`WINDOW`] unacknowledged at once, and deletes each spool file only when its PUBACK arrives
//! with a success code. On any connection loss the task starts a fresh session (clean start) and
//! publishes again from the oldest unacknowledged envelope, so an envelope may reach the broker
//! twice; the collector recognises the duplicate by its hash. A PUBACK with an error code
//! (`NotAuthorized` when the broker's ACL refuses the topic) keeps the envelope spooled, logs the
//! refusal and reconnects after the back-off: nothing is deleted that the broker did not take.
//!
//! One-way: the agent only initiates this TCP (or TLS) connection and subscribes to nothing. It
//! necessarily *reads* the broker's protocol replies on it (CONNACK, PUBACK, PINGRESP,
//! DISCONNECT) — they change only which spool files are deleted and when to reconnect; no
//! payload from the broker is ever read or acted upon.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_proto::{AgentId, ZoneId};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, LastWill, Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::config::MqttConfig;
use crate::transport::spool::{EntryKind, Spool};

/// Envelopes published and not yet acknowledged, at most.
pub const WINDOW: usize = 16;
/// Largest MQTT packet we send or accept (envelopes are at most 1 MiB).
const MAX_PACKET: u32 = 2 * 1024 * 1024;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why the MQTT transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("mqtt: cannot read {what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mqtt: password file {} is empty; write the broker password on its first line", .0.display())]
    EmptyPassword(PathBuf),
}

/// Counters shared with the background task.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Envelopes acknowledged by the broker.
    pub delivered: AtomicU64,
    /// PUBACKs with an error code (ACL refusal, …).
    pub refused: AtomicU64,
    /// Connection attempts that failed, and connections lost.
    pub failures: AtomicU64,
    pub connected: AtomicBool,
}

/// The running MQTT transport.
pub struct MqttLink {
    spool: Arc<Mutex<Spool>>,
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    stats: Arc<LinkStats>,
    broker: String,
}

impl std::fmt::Debug for MqttLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttLink")
            .field("broker", &self.broker)
            .finish()
    }
}

/// The topic for an envelope of `kind`, or for the status (`kind` = `status`).
pub fn topic(zone: &ZoneId, agent: &AgentId, kind: &str) -> String {
    format!("outpost/v1/{zone}/{agent}/{kind}")
}

fn status_payload(state: &str, agent: &AgentId, zone: &ZoneId) -> Vec<u8> {
    format!(
        "{{\"state\":\"{state}\",\"agent\":\"{agent}\",\"zone\":\"{zone}\",\"version\":\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, MqttError> {
    std::fs::read(path).map_err(|source| MqttError::File {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Builds the client options from the config (reads the TLS and password files).
pub fn options(cfg: &MqttConfig, agent: &AgentId, zone: &ZoneId) -> Result<MqttOptions, MqttError> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_keep_alive(cfg.keep_alive);
    o.set_clean_start(true);
    o.set_max_packet_size(Some(MAX_PACKET));
    o.set_request_channel_capacity(WINDOW * 2 + 4);
    o.set_connection_timeout(10);
    o.set_last_will(LastWill::new(
        topic(zone, agent, "status"),
        status_payload("offline", agent, zone),
        QoS::AtLeastOnce,
        true,
        None,
    ));
    if let Some(user) = &cfg.username {
        let password = match &cfg.password_file {
            Some(p) => {
                let text = read_file("password_file", p)?;
                let text = String::from_utf8_lossy(&text);
                let line = text.lines().next().unwrap_or("").to_owned();
                if line.is_empty() {
                    return Err(MqttError::EmptyPassword(p.clone()));
                }
                line
            }
            None => String::new(),
        };
        o.set_credentials(user.clone(), password);
    }
    if cfg.tls {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = match &cfg.ca_file {
            Some(p) => read_file("ca_file", p)?,
            None => Vec::new(),
        };
        let client_auth = match (&cfg.client_cert, &cfg.client_key) {
            (Some(c), Some(k)) => Some((read_file("client_cert", c)?, read_file("client_key", k)?)),
            _ => None,
        };
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(o)
}

impl MqttLink {
    /// Starts the background task publishing from `spool` (on the current tokio runtime).
    pub fn start(
        cfg: &MqttConfig,
        agent: &AgentId,
        zone: &ZoneId,
        spool: Arc<Mutex<Spool>>,
    ) -> Result<MqttLink, MqttError> {
        let opts = options(cfg, agent, zone)?;
        let wake = Arc::new(Notify::new());
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(LinkStats::default());
        let ctx = Ctx {
            opts,
            spool: Arc::clone(&spool),
            wake: Arc::clone(&wake),
            stop: stop_rx,
            stats: Arc::clone(&stats),
            agent: agent.clone(),
            zone: zone.clone(),
            cfg: cfg.clone(),
        };
        let task = tokio::spawn(run(ctx));
        Ok(MqttLink {
            spool,
            wake,
            stop,
            task: Some(task),
            stats,
            broker: cfg.url.clone(),
        })
    }

    /// Tells the task that the spool has something new.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The shared counters.
    pub fn stats(&self) -> &Arc<LinkStats> {
        &self.stats
    }

    /// Envelopes waiting in the spool.
    pub fn pending(&self) -> usize {
        self.spool.lock().map_or(0, |s| s.len())
    }

    /// Waits until the spool is empty or `timeout` passed; true when empty.
    pub async fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.pending() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Publishes the offline status, disconnects and stops the task (at most ~3 s).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }
}

impl Drop for MqttLink {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Ctx {
    opts: MqttOptions,
    spool: Arc<Mutex<Spool>>,
    wake: Arc<Notify>,
    stop: watch::Receiver<bool>,
    stats: Arc<LinkStats>,
    agent: AgentId,
    zone: ZoneId,
    cfg: MqttConfig,
}

enum Ended {
    Stop,
    Failed,
}

async fn run(mut ctx: Ctx) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if *ctx.stop.borrow() {
            return;
        }
        let (client, eventloop) = AsyncClient::new(ctx.opts.clone(), WINDOW * 2 + 4);
        let mut session = Session {
            client,
            eventloop,
            awaiting_pkid: std::collections::VecDeque::new(),
            by_pkid: std::collections::HashMap::new(),
            last_handed: 0,
            connected: false,
        };
        match session.drive(&mut ctx, &mut backoff).await {
            Ended::Stop => {
                session.goodbye(&ctx).await;
                return;
            }
            Ended::Failed => {
                ctx.stats.connected.store(false, Ordering::Relaxed);
                ctx.stats.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = ctx.stop.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

struct Session {
    client: AsyncClient,
    eventloop: EventLoop,
    /// Publishes handed to the client, waiting for their packet id: `Some(seq)` for an
    /// envelope, `None` for a status message.
    awaiting_pkid: std::collections::VecDeque<Option<u64>>,
    by_pkid: std::collections::HashMap<u16, Option<u64>>,
    /// Highest sequence number handed to the client in this session.
    last_handed: u64,
    connected: bool,
}

impl Session {
    async fn drive(&mut self, ctx: &mut Ctx, backoff: &mut Duration) -> Ended {
        loop {
            tokio::select! {
                event = self.eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        self.connected = true;
                        *backoff = BACKOFF_MIN;
                        ctx.stats.connected.store(true, Ordering::Relaxed);
                        let pending = ctx.spool.lock().map_or(0, |s| s.len());
                        tracing::info!(broker = %ctx.cfg.url, pending, "mqtt: connected");
                        let status = status_payload("online", &ctx.agent, &ctx.zone);
                        if self.client.try_publish(topic(&ctx.zone, &ctx.agent, "status"),
                            QoS::AtLeastOnce, true, status).is_ok() {
                            self.awaiting_pkid.push_back(None);
                        }
                        self.fill(ctx);
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Some(tag) = self.awaiting_pkid.pop_front() {
                            self.by_pkid.insert(pkid, tag);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        let tag = self.by_pkid.remove(&ack.pkid).flatten();
                        match ack.reason {
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                                if ack.reason == PubAckReason::NoMatchingSubscribers {
                                    tracing::warn!(seq = tag, "mqtt: broker took the message but no subscriber matched its topic; start the collector (it keeps a persistent session) before agents");
                                }
                                if let Some(seq) = tag {
                                    let removed = ctx.spool.lock().map(|mut s| s.remove(seq));
                                    match removed {
                                        Ok(Ok(())) => { ctx.stats.delivered.fetch_add(1, Ordering::Relaxed); }
                                        Ok(Err(e)) => tracing::error!("{e}"),
                                        Err(_) => tracing::error!("mqtt: spool lock poisoned"),
                                    }
                                }
                                self.fill(ctx);
                            }
                            reason => {
                                ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
                                let what = tag.map_or("the status message".to_owned(), |s| format!("envelope {s}"));
                                tracing::error!(
                                    broker = %ctx.cfg.url,
                                    "mqtt: broker refused {what} with {reason:?}; {} — it stays spooled and is retried after {}s",
                                    refusal_hint(reason, &ctx.zone, &ctx.agent, &ctx.cfg),
                                    backoff.as_secs()
                                );
                                return Ended::Failed;
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Disconnect(d))) => {
                        tracing::warn!(broker = %ctx.cfg.url, "mqtt: broker disconnected us: {:?}", d.reason_code);
                        return Ended::Failed;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let pending = ctx.spool.lock().map_or(0, |s| s.len());
                        tracing::warn!(
                            broker = %ctx.cfg.url,
                            pending,
                            "mqtt: {}; envelopes stay spooled, retrying in {}s",
                            explain(&e, &ctx.cfg),
                            backoff.as_secs()
                        );
                        return Ended::Failed;
                    }
                },
                () = ctx.wake.notified() => self.fill(ctx),
                _ = ctx.stop.changed() => return Ended::Stop,
            }
        }
    }

    /// Hands spooled envelopes to the client until the window is full.
    fn fill(&mut self, ctx: &Ctx) {
        if !self.connected {
            return;
        }
        loop {
            let in_flight = self.awaiting_pkid.iter().filter(|t| t.is_some()).count()
                + self.by_pkid.values().filter(|t| t.is_some()).count();
            if in_flight >= WINDOW {
                return;
            }
            let next = match ctx.spool.lock() {
                Ok(mut s) => s.next_after(self.last_handed),
                Err(_) => return,
            };
            let (seq, kind, wire) = match next {
                Ok(Some(n)) => n,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!("{e}");
                    return;
                }
            };
            let kind = match kind {
                EntryKind::Summary => "summary",
                EntryKind::DataLost => "data_lost",
                EntryKind::Heartbeat => "heartbeat",
            };
            let topic = topic(&ctx.zone, &ctx.agent, kind);
            if self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, wire)
                .is_err()
            {
                return;
            }
            self.awaiting_pkid.push_back(Some(seq));
            self.last_handed = seq;
        }
    }

    /// Publishes the offline status and disconnects, bounded in time.
    async fn goodbye(&mut self, ctx: &Ctx) {
        if !self.connected {
            return;
        }
        let status = status_payload("offline", &ctx.agent, &ctx.zone);
        let _ = self.client.try_publish(
            topic(&ctx.zone, &ctx.agent, "status"),
            QoS::AtMostOnce,
            true,
            status,
        );
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

fn refusal_hint(reason: PubAckReason, zone: &ZoneId, agent: &AgentId, cfg: &MqttConfig) -> String {
    match reason {
        PubAckReason::NotAuthorized => format!(
            "the broker's ACL does not let client {:?} (user {:?}) publish under outpost/v1/{zone}/{agent}/#; fix the ACL or the agent's zone/agent_id",
            cfg.client_id,
            cfg.username.as_deref().unwrap_or("-")
        ),
        PubAckReason::QuotaExceeded => "the broker's quota is exceeded".into(),
        PubAckReason::TopicNameInvalid => "the broker rejects the topic name".into(),
        _ => "see the broker's log".into(),
    }
}

/// A connection error in plant-floor words.
fn explain(e: &ConnectionError, cfg: &MqttConfig) -> String {
    match e {
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => format!(
            "broker {} refused the login: wrong username or password (username {:?}, password_file {})",
            cfg.url,
            cfg.username.as_deref().unwrap_or("-"),
            cfg.password_file
                .as_deref()
                .map_or("-".into(), |p| p.display().to_string())
        ),
        // mosquitto answers a wrong password with NotAuthorized under MQTT 5.
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => format!(
            "broker {} refused the login: not authorised — wrong username or password, or the user is not allowed to connect (username {:?}, password_file {})",
            cfg.url,
            cfg.username.as_deref().unwrap_or("-"),
            cfg.password_file
                .as_deref()
                .map_or("-".into(), |p| p.display().to_string())
        ),
        ConnectionError::ConnectionRefused(code) => {
            format!("broker {} refused the connection: {code:?}", cfg.url)
        }
        ConnectionError::Tls(t) => format!(
            "TLS with broker {} failed: {t}; check that ca_file {} signed the broker's certificate, that the certificate names host {:?}, and the client certificate if the broker requires one",
            cfg.url,
            cfg.ca_file
                .as_deref()
                .map_or("-".into(), |p| p.display().to_string()),
            cfg.host
        ),
        ConnectionError::Io(io) if cfg.tls && io.kind() == std::io::ErrorKind::InvalidData => {
            format!(
                "TLS with broker {} failed: {io}; check that ca_file {} signed the broker's certificate, that the certificate names host {:?}, and the client certificate if the broker requires one",
                cfg.url,
                cfg.ca_file
                    .as_deref()
                    .map_or("-".into(), |p| p.display().to_string()),
                cfg.host
            )
        }
        ConnectionError::Io(io) => format!(
            "broker {} unreachable: {io} (is it running, and does the firewall allow this connection?)",
            cfg.url
        ),
        // Under TLS 1.3 a broker that wants a client certificate says so only after the
        // handshake, as an alert on the first read: name the fix rather than the alert.
        other if other.to_string().contains("CertificateRequired") => format!(
            "broker {} requires a TLS client certificate: set client_cert and client_key in [mqtt] to a certificate its CA accepts ({other})",
            cfg.url
        ),
        other if other.to_string().contains("fatal alert") => format!(
            "broker {} ended TLS with an alert: {other}; check client_cert/client_key and ca_file",
            cfg.url
        ),
        other => format!("broker {}: {other}", cfg.url),
    }
}
