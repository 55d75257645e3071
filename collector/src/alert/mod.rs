//! Alert delivery: from the CMDB's alert outbox ([`crate::cmdb::alerts`]) to the security
//! team's tools.
//!
//! Sinks (configured on `serve`): an OCSF JSON-lines file ([`ocsf`]), RFC 5424 syslog over UDP
//! or TCP ([`syslog`]), and a webhook (the OCSF event POSTed as JSON; a 2xx answer delivers). The [`Dispatcher`] is a thread with its own CMDB connection: every
//! [`SCAN_INTERVAL`] it delivers each sink's pending alerts in order, marking each delivered in
//! the CMDB. A failure counts (`alert_delivery_failures`, the sink's `failures` and
//! `last_error`), is logged, and leaves the alert pending; the sink is retried with exponential
//! back-off up to [`MAX_BACKOFF`]. Over UDP, "delivered" means sent: a listener that is down
//! shows up only as ICMP port-unreachable on a later send (counted, then retried).

pub mod ocsf;
pub mod syslog;

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cmdb::alerts::AlertRow;
use crate::cmdb::{Cmdb, CmdbError};
use crate::time::now_ms;

/// How often the outbox is read.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest wait before retrying a failing sink.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Connect and write timeout for syslog over TCP.
pub const TCP_TIMEOUT: Duration = Duration::from_secs(2);
/// Whole-request timeout for a webhook POST.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping dispatcher keeps delivering what is pending.
pub const DRAIN_ON_STOP: Duration = Duration::from_secs(2);
/// Alerts read per sink per scan.
const BATCH: u32 = 256;

/// Where alerts go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    /// OCSF events, one JSON object per line, appended.
    OcsfFile(PathBuf),
    /// RFC 5424 over UDP to `host:port`.
    SyslogUdp(String),
    /// RFC 5424 over TCP (octet counting) to `host:port`.
    SyslogTcp(String),
    /// The OCSF event POSTed as JSON to an `http://` or `https://` URL; any 2xx is delivered.
    Webhook(String),
}

impl SinkSpec {
    /// Parses `udp://host:port` or `tcp://host:port` (a `--alert-syslog` value).
    pub fn syslog(url: &str) -> Result<SinkSpec, String> {
        let bad = || {
            format!(
                "--alert-syslog {url:?}: use udp://HOST:PORT or tcp://HOST:PORT (e.g. \
                 udp://siem.example:514)"
            )
        };
        let (scheme, target) = url.split_once("://").ok_or_else(bad)?;
        let has_port = target
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !has_port {
            return Err(bad());
        }
        match scheme {
            "udp" => Ok(SinkSpec::SyslogUdp(target.to_owned())),
            "tcp" => Ok(SinkSpec::SyslogTcp(target.to_owned())),
            _ => Err(bad()),
        }
    }

    /// Parses an `http://` or `https://` URL (a `--alert-webhook` value).
    pub fn webhook(url: &str) -> Result<SinkSpec, String> {
        let parsed: Result<ureq::http::Uri, _> = url.parse();
        match parsed {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.host().is_some_and(|h| !h.is_empty()) =>
            {
                Ok(SinkSpec::Webhook(url.to_owned()))
            }
            _ => Err(format!(
                "--alert-webhook {url:?}: use an http:// or https:// URL (e.g. \
                 https://siem.example/outpost)"
            )),
        }
    }

    /// The sink's name in the CMDB (`alert_sinks.sink`).
    pub fn name(&self) -> String {
        match self {
            SinkSpec::OcsfFile(p) => format!("ocsf-file:{}", p.display()),
            SinkSpec::SyslogUdp(t) => format!("syslog+udp://{t}"),
            SinkSpec::SyslogTcp(t) => format!("syslog+tcp://{t}"),
            SinkSpec::Webhook(u) => format!("webhook:{u}"),
        }
    }
}

/// What the dispatcher needs.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    pub db: PathBuf,
    pub sinks: Vec<SinkSpec>,
}

/// One sink's connection and retry state.
struct Sink {
    spec: SinkSpec,
    name: String,
    file: Option<File>,
    udp: Option<UdpSocket>,
    tcp: Option<TcpStream>,
    http: Option<ureq::Agent>,
    failures_in_row: u32,
    next_try: Instant,
}

impl Sink {
    fn new(spec: SinkSpec) -> Sink {
        Sink {
            name: spec.name(),
            spec,
            file: None,
            udp: None,
            tcp: None,
            http: None,
            failures_in_row: 0,
            next_try: Instant::now(),
        }
    }

    fn send(&mut self, alert: &AlertRow, host: &str) -> Result<(), String> {
        let ocsf = ocsf::event(alert).to_string();
        match &self.spec {
            SinkSpec::OcsfFile(path) => {
                if self.file.is_none() {
                    let f = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                    self.file = Some(f);
                }
                let f = self.file.as_mut().ok_or("file not open")?;
                let line = format!("{ocsf}\n");
                let written = f.write_all(line.as_bytes()).and_then(|()| f.sync_data());
                if let Err(e) = written {
                    self.file = None;
                    return Err(format!("cannot write {}: {e}", path.display()));
                }
            }
            SinkSpec::SyslogUdp(target) => {
                if self.udp.is_none() {
                    let addr = resolve(target)?;
                    let bind = if addr.is_ipv4() {
                        "0.0.0.0:0"
                    } else {
                        "[::]:0"
                    };
                    let s = UdpSocket::bind(bind).map_err(|e| format!("UDP socket: {e}"))?;
                    s.connect(addr)
                        .map_err(|e| format!("cannot address {target}: {e}"))?;
                    self.udp = Some(s);
                }
                let s = self.udp.as_ref().ok_or("socket not open")?;
                let msg = syslog::format_udp(alert, &ocsf, host);
                if let Err(e) = s.send(msg.as_bytes()) {
                    self.udp = None;
                    return Err(format!("cannot send to {target}: {e}"));
                }
            }
            SinkSpec::SyslogTcp(target) => {
                if self.tcp.is_none() {
                    let addr = resolve(target)?;
                    let s = TcpStream::connect_timeout(&addr, TCP_TIMEOUT)
                        .map_err(|e| format!("cannot connect to {target}: {e}"))?;
                    s.set_write_timeout(Some(TCP_TIMEOUT))
                        .map_err(|e| format!("{target}: {e}"))?;
                    self.tcp = Some(s);
                }
                let s = self.tcp.as_mut().ok_or("not connected")?;
                let frame = syslog::frame_tcp(&syslog::format(alert, &ocsf, host));
                if let Err(e) = s.write_all(&frame).and_then(|()| s.flush()) {
                    self.tcp = None;
                    return Err(format!("cannot send to {target}: {e}"));
                }
            }
            SinkSpec::Webhook(url) => {
                let agent = self.http.get_or_insert_with(|| {
                    ureq::Agent::config_builder()
                        .timeout_global(Some(HTTP_TIMEOUT))
                        .build()
                        .into()
                });
                agent
                    .post(url.as_str())
                    .header("Content-Type", "application/json")
                    .send(ocsf.as_str())
                    .map_err(|e| format!("POST {url}: {e}"))?;
            }
        }
        Ok(())
    }

    fn failed(&mut self) {
        self.failures_in_row = self.failures_in_row.saturating_add(1);
        let backoff = Duration::from_millis(250)
            .saturating_mul(1u32 << self.failures_in_row.min(8))
            .min(MAX_BACKOFF);
        self.next_try = Instant::now() + backoff;
    }
}

fn resolve(target: &str) -> Result<std::net::SocketAddr, String> {
    target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target} resolves to no address"))
}

/// The running delivery thread.
pub struct Dispatcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Dispatcher {
    /// Registers the sinks in the CMDB and starts delivering.
    pub fn start(cfg: AlertConfig) -> Result<Dispatcher, CmdbError> {
        let mut cmdb = Cmdb::open_existing(&cfg.db)?;
        for spec in &cfg.sinks {
            cmdb.register_sink(&spec.name())?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let sinks: Vec<Sink> = cfg.sinks.into_iter().map(Sink::new).collect();
        let thread = std::thread::Builder::new()
            .name("alert-dispatch".into())
            .spawn(move || run(cmdb, sinks, &flag))
            .map_err(|e| CmdbError::Thread(e.to_string()))?;
        Ok(Dispatcher {
            stop,
            thread: Some(thread),
        })
    }

    /// Delivers what is pending (for at most [`DRAIN_ON_STOP`]) and stops.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the alert delivery thread panicked");
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn run(mut cmdb: Cmdb, mut sinks: Vec<Sink>, stop: &AtomicBool) {
    let host = syslog::hostname();
    let mut stopping_since: Option<Instant> = None;
    loop {
        if stopping_since.is_none() && stop.load(Ordering::Relaxed) {
            stopping_since = Some(Instant::now());
        }
        let mut pending_left = false;
        for sink in &mut sinks {
            if Instant::now() < sink.next_try {
                pending_left = true;
                continue;
            }
            pending_left |= deliver(&mut cmdb, sink, &host);
        }
        match stopping_since {
            Some(t) if !pending_left || t.elapsed() >= DRAIN_ON_STOP => break,
            _ => std::thread::sleep(SCAN_INTERVAL),
        }
    }
}

/// Delivers one batch to one sink; true if alerts are still pending for it.
fn deliver(cmdb: &mut Cmdb, sink: &mut Sink, host: &str) -> bool {
    let pending = match cmdb.pending_alerts(&sink.name, BATCH) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(sink = %sink.name, "cannot read the alert outbox: {e}");
            return true;
        }
    };
    for alert in &pending {
        match sink.send(alert, host) {
            Ok(()) => {
                let attempts = sink.failures_in_row.saturating_add(1);
                sink.failures_in_row = 0;
                if let Err(e) = cmdb.mark_delivered(&sink.name, alert.alert_id, attempts, now_ms())
                {
                    // Delivered but not recorded: it will be delivered again (at least once).
                    tracing::warn!(sink = %sink.name, alert = alert.alert_id,
                        "alert delivered but not recorded as such: {e}");
                    sink.failed();
                    return true;
                }
                tracing::info!(sink = %sink.name, alert = alert.alert_id, kind = %alert.kind,
                    asset = %alert.asset, "alert delivered");
            }
            Err(why) => {
                sink.failed();
                tracing::warn!(sink = %sink.name, alert = alert.alert_id,
                    failures = sink.failures_in_row,
                    "alert delivery failed (kept, will retry): {why}");
                if let Err(e) = cmdb.record_delivery_failure(&sink.name, &why, now_ms()) {
                    tracing::warn!(sink = %sink.name, "cannot record the delivery failure: {e}");
                }
                return true;
            }
        }
    }
    pending.len() as u32 == BATCH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_urls() {
        assert_eq!(
            SinkSpec::syslog("udp://127.0.0.1:514"),
            Ok(SinkSpec::SyslogUdp("127.0.0.1:514".into()))
        );
        assert_eq!(
            SinkSpec::syslog("tcp://siem.example:6514").map(|s| s.name()),
            Ok("syslog+tcp://siem.example:6514".into())
        );
        for bad in [
            "127.0.0.1:514",
            "http://x:1",
            "udp://x",
            "udp://:514",
            "udp://x:0",
        ] {
            let err = SinkSpec::syslog(bad).unwrap_err();
            assert!(err.contains("udp://HOST:PORT"), "{bad}: {err}");
        }
    }
}
