//! The MQTT subscriber: envelopes from a broker → the same [`Ingest`] as the diode.
//!
//! The collector connects (MQTT 5) with a persistent session (clean start off, a one-week
//! session expiry) so that the broker queues envelopes while it is down, subscribes at QoS 1 to
//! `outpost/v1/#` (or `--mqtt-topic`, e.g. a shared subscription `$share/<group>/outpost/v1/#`
//! so several collectors split the load), and acknowledges each message only after its
//! transaction committed (manual acks): a crash before the commit means the broker delivers it
//! again. Redelivery is expected, so [`Ingest::recognise_redelivery`] is on: a byte-identical
//! copy of a stored envelope is counted as `envelopes_duplicate`, never applied twice.
//!
//! Topics: `outpost/v1/<zone>/<agent>/<kind>` carry envelopes; anything that is not a valid
//! envelope is quarantined with its reason (peer `mqtt:<topic>`) like on the diode. The topic
//! is only a routing hint: what counts is the verified envelope (a topic naming another agent
//! than the envelope is counted as `mqtt_topic_mismatch` and logged). `.../status` carries the
//! agent's unsigned liveness (`online` retained on connect, `offline` as its last will); a
//! change is recorded as an `agent_online` / `agent_offline` event.
//!
//! A storage failure leaves the message unacknowledged and reconnects, so the broker redelivers
//! it. Connection failures are retried with back-off (1 s doubling to 30 s).
//!
//! Two collectors on one shared subscription may write one CMDB (SQLite WAL, a busy timeout).
//! MQTT does not keep one agent's messages on one member of the group, so during a backlog an
//! envelope can overtake the one before it on the other collector; the late one is then refused
//! as `replay` and its sequence number recorded in a gap. Shared subscriptions suit many agents
//! publishing at their poll interval, not one agent's backlog.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, Publish};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde_json::json;

use crate::cmdb::record::{EventScope, kind};
use crate::cmdb::{Cmdb, CmdbError};
use crate::ingest::{Ingest, Reason};
use crate::time::now_ms;

/// Default subscription.
pub const DEFAULT_TOPIC: &str = "outpost/v1/#";
const MAX_PACKET: u32 = 2 * 1024 * 1024;
const RECEIVE_MAX: u16 = 32;
const REQUEST_CHANNEL: usize = 4 * RECEIVE_MAX as usize;
const SESSION_EXPIRY_SECS: u32 = 7 * 24 * 3600;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What `serve --mqtt` needs.
#[derive(Debug, Clone)]
pub struct MqttServeConfig {
    pub db: PathBuf,
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: String,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub topic: String,
    /// Must be unique per collector (the broker keeps one session per id).
    pub client_id: String,
    /// Written with the broker URL once subscribed.
    pub ready_file: Option<PathBuf>,
    /// How far ahead of our clock an envelope's agent time may be (`--max-clock-skew`).
    pub max_clock_skew: std::time::Duration,
}

impl MqttServeConfig {
    /// Defaults for everything but the database and the broker.
    pub fn new(db: impl Into<PathBuf>, url: impl Into<String>) -> Self {
        Self {
            db: db.into(),
            url: url.into(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            username: None,
            password_file: None,
            topic: DEFAULT_TOPIC.into(),
            client_id: "outpost-collector".into(),
            ready_file: None,
            max_clock_skew: std::time::Duration::from_millis(
                crate::ingest::DEFAULT_MAX_CLOCK_SKEW_MS,
            ),
        }
    }
}

/// Totals for one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MqttServeStats {
    pub messages: u64,
    pub envelopes_applied: u64,
    pub envelopes_rejected: u64,
    pub duplicates: u64,
    pub status_messages: u64,
    pub connection_failures: u64,
}

/// Why `serve --mqtt` could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttServeError {
    #[error(transparent)]
    Cmdb(#[from] CmdbError),
    #[error("--mqtt {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("cannot read {what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write ready file {}: {source}", path.display())]
    ReadyFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Splits `mqtt://host[:port]` (1883) / `mqtts://host[:port]` (8883).
pub fn parse_url(url: &str) -> Result<(bool, String, u16), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err("must start with mqtt:// or mqtts://".into());
    };
    let rest = rest.trim_end_matches('/');
    let default = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("'[' without ']'")?;
        (h, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', '?']) {
        return Err("write only scheme://host[:port]".into());
    }
    let port = match port {
        None => default,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("port {p:?} is not a number 1-65535"))?,
    };
    Ok((tls, host.to_owned(), port))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, MqttServeError> {
    std::fs::read(path).map_err(|source| MqttServeError::File {
        what,
        path: path.to_owned(),
        source,
    })
}

fn options(cfg: &MqttServeConfig) -> Result<MqttOptions, MqttServeError> {
    let (tls, host, port) = parse_url(&cfg.url).map_err(|why| MqttServeError::Url {
        url: cfg.url.clone(),
        why,
    })?;
    let mut o = MqttOptions::new(cfg.client_id.clone(), host, port);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(SESSION_EXPIRY_SECS));
    o.set_manual_acks(true);
    // The broker sends at most RECEIVE_MAX unacknowledged messages, so the acks always fit
    // the client's request channel (`try_ack` never finds it full).
    o.set_receive_maximum(Some(RECEIVE_MAX));
    o.set_request_channel_capacity(REQUEST_CHANNEL);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(Some(MAX_PACKET));
    o.set_connection_timeout(10);
    if let Some(user) = &cfg.username {
        let password = match &cfg.password_file {
            Some(p) => String::from_utf8_lossy(&read("--mqtt-password-file", p)?)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
            None => String::new(),
        };
        o.set_credentials(user.clone(), password);
    }
    if tls {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let Some(ca) = &cfg.ca_file else {
            return Err(MqttServeError::Url {
                url: cfg.url.clone(),
                why: "mqtts:// needs --mqtt-ca FILE (the CA that signed the broker's certificate)"
                    .into(),
            });
        };
        let client_auth = match (&cfg.client_cert, &cfg.client_key) {
            (Some(c), Some(k)) => Some((read("--mqtt-cert", c)?, read("--mqtt-key", k)?)),
            _ => None,
        };
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca: read("--mqtt-ca", ca)?,
            alpn: None,
            client_auth,
        }));
    }
    Ok(o)
}

/// Subscribes and ingests until `shutdown` completes.
pub async fn serve_mqtt(
    cfg: MqttServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<MqttServeStats, MqttServeError> {
    let opts = options(&cfg)?;
    let mut ingest = Ingest::new(Cmdb::open_existing(&cfg.db)?);
    ingest.recognise_redelivery(true);
    ingest.set_max_clock_skew(cfg.max_clock_skew);
    let mut stats = MqttServeStats::default();
    let mut liveness: HashMap<String, String> = HashMap::new();
    let mut ready_written = false;
    let mut backoff = BACKOFF_MIN;
    tokio::pin!(shutdown);
    tracing::info!(broker = %cfg.url, topic = %cfg.topic, client_id = %cfg.client_id,
        db = %cfg.db.display(), "collector subscribing");
    loop {
        let (client, mut eventloop) = AsyncClient::new(opts.clone(), REQUEST_CHANNEL);
        // Acks waiting for room in the client's request channel (drained by `poll`).
        let mut acks: std::collections::VecDeque<Publish> = std::collections::VecDeque::new();
        let failed = loop {
            while let Some(p) = acks.front() {
                if client.try_ack(p).is_err() {
                    break;
                }
                acks.pop_front();
            }
            let event = tokio::select! {
                () = &mut shutdown => {
                    let _ = client.try_disconnect();
                    let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
                    tracing::info!(?stats, "collector stopped");
                    return Ok(stats);
                }
                e = eventloop.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = BACKOFF_MIN;
                    tracing::info!(broker = %cfg.url, session_present = ack.session_present, "mqtt: connected");
                    if let Err(e) = client.try_subscribe(cfg.topic.clone(), QoS::AtLeastOnce) {
                        tracing::error!("mqtt: cannot subscribe: {e}");
                        break true;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    tracing::info!(topic = %cfg.topic, codes = ?ack.return_codes, "mqtt: subscribed");
                    if !ready_written && let Some(path) = &cfg.ready_file {
                        write_ready(path, &cfg.url)?;
                        ready_written = true;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    stats.messages += 1;
                    let ok = tokio::task::block_in_place(|| {
                        handle(&mut ingest, &p, &mut stats, &mut liveness)
                    });
                    if !ok {
                        break true;
                    }
                    acks.push_back(p);
                }
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    tracing::warn!(broker = %cfg.url, "mqtt: broker disconnected us: {:?}", d.reason_code);
                    break true;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(
                        "mqtt: {}; retrying in {}s",
                        explain(&e, &cfg),
                        backoff.as_secs()
                    );
                    break true;
                }
            }
        };
        if failed {
            stats.connection_failures += 1;
        }
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!(?stats, "collector stopped");
                return Ok(stats);
            }
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn write_ready(path: &Path, url: &str) -> Result<(), MqttServeError> {
    let fail = |source| MqttServeError::ReadyFile {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{url}\n")).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Ingests one message; false when it must not be acknowledged (storage failure).
fn handle(
    ingest: &mut Ingest,
    p: &Publish,
    stats: &mut MqttServeStats,
    liveness: &mut HashMap<String, String>,
) -> bool {
    let topic = String::from_utf8_lossy(&p.topic).into_owned();
    let now = now_ms();
    let parts: Vec<&str> = topic.split('/').collect();
    if let ["outpost", "v1", zone, agent, "status"] = parts[..] {
        stats.status_messages += 1;
        status(ingest, zone, agent, &p.payload, liveness, now);
        return true;
    }
    let peer = format!("mqtt:{topic}");
    match ingest.envelope(&p.payload, &peer, now) {
        Ok(applied) => {
            stats.envelopes_applied += 1;
            if let ["outpost", "v1", zone, agent, _] = parts[..]
                && (zone != applied.zone.as_str() || agent != applied.agent.as_str())
            {
                tracing::warn!(%topic, agent = %applied.agent, zone = %applied.zone,
                    "envelope arrived on another agent's topic (the broker ACL should prevent this)");
                let _ = ingest.count("mqtt_topic_mismatch", 1, now);
            }
            true
        }
        Err(r) if r.reason == Reason::Duplicate => {
            stats.duplicates += 1;
            true
        }
        Err(r) if r.reason == Reason::Storage => {
            stats.envelopes_rejected += 1;
            false
        }
        Err(_) => {
            stats.envelopes_rejected += 1;
            true
        }
    }
}

/// Records a liveness change (`online` / `offline`) as an event.
fn status(
    ingest: &mut Ingest,
    zone: &str,
    agent: &str,
    payload: &[u8],
    liveness: &mut HashMap<String, String>,
    now: u64,
) {
    let state = serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("state").and_then(|s| s.as_str()).map(str::to_owned));
    let Some(state) = state.filter(|s| s == "online" || s == "offline") else {
        tracing::warn!(%agent, %zone, len = payload.len(), "mqtt: status message is not {{\"state\":\"online\"|\"offline\"}}; ignored");
        let _ = ingest.count("mqtt_status_malformed", 1, now);
        return;
    };
    let key = format!("{zone}/{agent}");
    if liveness.get(&key) == Some(&state) {
        return;
    }
    liveness.insert(key, state.clone());
    let (event, counter) = if state == "online" {
        (kind::AGENT_ONLINE, "agents_online")
    } else {
        (kind::AGENT_OFFLINE, "agents_offline")
    };
    if state == "offline" {
        tracing::warn!(%agent, %zone, "agent is offline (its MQTT last will, or a clean shutdown)");
    } else {
        tracing::info!(%agent, %zone, "agent is online");
    }
    let detail = json!({ "state": state, "signed": false, "source": "mqtt status topic" });
    let scope = EventScope {
        agent: Some(agent),
        zone: Some(zone),
        asset: None,
    };
    if let Err(e) = ingest
        .cmdb_mut()
        .event_and_count(now, event, scope, &detail, &[counter])
    {
        tracing::error!("cannot record agent status: {e}");
    }
}

fn explain(e: &ConnectionError, cfg: &MqttServeConfig) -> String {
    match e {
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => format!(
            "broker {} refused the login: wrong username or password (--mqtt-user {:?})",
            cfg.url,
            cfg.username.as_deref().unwrap_or("-")
        ),
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => format!(
            "broker {} refused the login: not authorised — wrong username or password, or the user may not connect (check --mqtt-user/--mqtt-password-file)",
            cfg.url
        ),
        ConnectionError::ConnectionRefused(code) => {
            format!("broker {} refused the connection: {code:?}", cfg.url)
        }
        ConnectionError::Tls(t) => format!(
            "TLS with broker {} failed: {t}; check --mqtt-ca and the broker's certificate names",
            cfg.url
        ),
        ConnectionError::Io(io) => format!("broker {}: {io}", cfg.url),
        // TLS 1.3: a missing client certificate surfaces as an alert on the first read.
        other if other.to_string().contains("CertificateRequired") => format!(
            "broker {} requires a TLS client certificate: pass --mqtt-cert and --mqtt-key ({other})",
            cfg.url
        ),
        other => format!("broker {}: {other}", cfg.url),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884").unwrap(),
            (false, "127.0.0.1".into(), 1884)
        );
        assert_eq!(
            parse_url("mqtts://broker").unwrap(),
            (true, "broker".into(), 8883)
        );
        assert_eq!(
            parse_url("mqtt://[::1]").unwrap(),
            (false, "::1".into(), 1883)
        );
        assert!(parse_url("tcp://x").is_err());
        assert!(parse_url("mqtt://u@x").is_err());
        assert!(parse_url("mqtt://x:0").is_err());
    }
}
