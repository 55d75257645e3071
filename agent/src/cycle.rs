//! One poll cycle, and the loop of cycles.
//!
//! A cycle: poll every device concurrently (at most `max_parallel_devices` at once; each device
//! is bounded by its own timeouts and, as a safety net, by the poll interval), collect gateway
//! facts, build the [`Summary`], seal it as the envelope after the persisted chain tip, persist
//! the new tip (fsync + rename), and only then send it. A crash between persisting and sending
//! loses one envelope — the collector records a gap — but never reuses a sequence number.
//!
//! With `[mqtt]` configured the sealed envelope is also written (fsynced) to the spool before
//! the MQTT task may publish it; when the spool's full-spool policy drops snapshots, the cycle
//! seals a [`DataLost`] notice naming them, which goes out on every transport like any other
//! envelope. Damaged spool files found at start are reported the same way.
//!
//! Before the summary, the cycle compares the poll with the last observed state
//! ([`crate::observe`]) and, when anything changed, seals a [`ChangeSet`] first; the observed
//! state is persisted after that envelope is sealed (a crash in between sends the change again,
//! which the collector records as already current). The summary itself goes out every
//! `changes.snapshot_every` cycles (the first cycle always).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_proto::changes::{Change, ChangeSet, MAX_CHANGES};
use outpost_proto::envelope;
use std::sync::Mutex;

use outpost_proto::model::{
    AssetObservation, Body, DataLost, Heartbeat, PollStatus, ProbeReport, Summary,
};
use outpost_proto::{ChainTip, SigningKey};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::AgentError;
use crate::config::{Config, DeviceConfig};
use crate::discovery::running::Discovery;
use crate::host;
use crate::keyfile;
use crate::modbus::poll::{poll_device_with, unreachable};
use crate::modbus::read_only::Timing;
use crate::observe::{Observer, Settings};
use crate::profile::Library;
use crate::state::StateDir;
use crate::transport::diode::{DiodeError, DiodeSender, SendReport};
use crate::transport::mqtt::MqttLink;
use crate::transport::spool::{EntryKind, Spool};

/// What one cycle did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CycleReport {
    /// The last envelope sealed by the cycle.
    pub seq: u64,
    /// Whether a full snapshot went out (every `changes.snapshot_every` cycles).
    pub snapshot: bool,
    /// Changes sent in a change set (0: none, no change set).
    pub changes: usize,
    /// Assets reported: one per (device, unit id).
    pub devices: usize,
    pub ok: usize,
    pub partial: usize,
    pub unreachable: usize,
    pub envelope_bytes: usize,
    pub datagrams: usize,
}

/// A running agent: its config, key, locked state directory, chain tip and diode sender.
pub struct Agent {
    config: Config,
    devices: Vec<Arc<DeviceConfig>>,
    key: SigningKey,
    state: StateDir,
    tip: ChainTip,
    sender: Option<DiodeSender>,
    mqtt: Option<MqttOut>,
    /// Sequence numbers lost and not yet reported, with why.
    unreported_loss: Vec<(Vec<u64>, &'static str)>,
    last_summary_seq: u64,
    /// Device profiles (`[profiles]`), `None` when disabled.
    profiles: Option<Arc<Library>>,
    /// `[[discover]]` ranges and what their last sweeps found.
    discovery: Discovery,
    /// The last observed state and the comparison that yields change events (`changes.events`).
    observer: Option<Observer>,
    /// Cycles run since the agent started (snapshots go out every `changes.snapshot_every`).
    cycles: u64,
}

/// The MQTT transport and its spool.
struct MqttOut {
    spool: Arc<Mutex<Spool>>,
    link: MqttLink,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("agent", &self.config.agent_id)
            .field("key", &self.key.key_id())
            .field("tip", &self.tip)
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Agent {
    /// Loads the key (refusing loose permissions), locks the state directory, loads the chain
    /// tip, opens the diode socket and starts the MQTT transport (which needs a tokio runtime:
    /// call this inside one when `[mqtt]` is configured).
    pub fn new(config: Config) -> Result<Agent, AgentError> {
        // A broken profile stops the start, like a bad config.
        let profiles = config.profiles.load()?.map(Arc::new);
        let key = keyfile::load_private(&config.key_file)?;
        let state = StateDir::open(&config.state_dir)?;
        let tip = match state.load_tip()? {
            tip if tip == ChainTip::GENESIS => {
                // No chain tip: first run, or the state directory was lost. Never restart at
                // 1 (that would reuse numbers the collector may hold): declare a new chain
                // (zero prev_hash) starting at the clock, which the collector reports as a
                // restart, not a replay.
                let restart = ChainTip::restart_at(now_ms());
                tracing::info!(
                    state = %state.tip_path().display(),
                    first_seq = restart.seq + 1,
                    "no chain tip in the state directory: starting a new chain at sequence {} \
                     (first run, or the agent's state was lost; the collector records a declared \
                     restart)",
                    restart.seq + 1
                );
                restart
            }
            tip => tip,
        };
        let sender = match &config.diode {
            Some(d) => Some(DiodeSender::from_config(d)?),
            None => None,
        };
        let mut unreported_loss = Vec::new();
        let mqtt = match &config.mqtt {
            Some(m) => {
                let (spool, recovery) =
                    Spool::open(config.state_dir.join("spool"), m.spool_max_bytes)?;
                if !recovery.damaged.is_empty() {
                    unreported_loss.push((recovery.damaged.clone(), "spool_damaged"));
                }
                let spool = Arc::new(Mutex::new(spool));
                let link = MqttLink::start(m, &config.agent_id, &config.zone, Arc::clone(&spool))?;
                tracing::info!(broker = %m.url, pending = recovery.pending,
                    damaged = recovery.damaged.len(), "mqtt transport started");
                Some(MqttOut { spool, link })
            }
            None => None,
        };
        let observer = config.changes.events.then(|| {
            Observer::open(
                &config.state_dir,
                Settings {
                    confirm_polls: config.changes.confirm_polls,
                    unreachable_polls: config.changes.unreachable_polls,
                },
                now_ms(),
            )
        });
        tracing::info!(
            agent = %config.agent_id,
            zone = %config.zone,
            key_id = %key.key_id(),
            last_seq = tip.seq,
            diode = ?config.diode.map(|d| d.target),
            mqtt = ?config.mqtt.as_ref().map(|m| &m.url),
            devices = config.devices.len(),
            discover = config.discover.len(),
            profiles = profiles.as_ref().map_or(0, |l| l.profiles().count()),
            serial_buses = config.serial_buses.len(),
            change_events = config.changes.events,
            observed_state_damaged = observer.as_ref().map_or(0, Observer::damaged_files),
            "agent ready"
        );
        Ok(Agent {
            devices: config.devices.iter().cloned().map(Arc::new).collect(),
            discovery: Discovery::new(config.discover.clone()),
            profiles,
            config,
            key,
            state,
            tip,
            sender,
            mqtt,
            unreported_loss,
            last_summary_seq: 0,
            observer,
            cycles: 0,
        })
    }

    /// The MQTT link, when configured.
    pub fn mqtt(&self) -> Option<&MqttLink> {
        self.mqtt.as_ref().map(|m| &m.link)
    }

    /// Seals `body` as the next envelope, persists the tip, spools it (MQTT) and queues it on
    /// the diode (sent now when FEC is off or the window is full; otherwise by
    /// [`Agent::flush_diode`]). Returns the sequence number, wire size and datagrams sent.
    async fn emit(&mut self, body: &Body) -> Result<(u64, usize, usize), AgentError> {
        let sealed = envelope::seal(
            &self.key,
            &self.config.agent_id,
            &self.config.zone,
            &self.tip,
            now_ms(),
            body,
        )?;
        // Persist before sending: a sequence number must never be used twice.
        self.state.store_tip(&sealed.tip)?;
        self.tip = sealed.tip;
        let seq = sealed.tip.seq;
        if let Some(m) = &self.mqtt {
            let kind = match body {
                // A probe round may be dropped like a snapshot (the drop is reported in a
                // data-lost notice, and the next round repeats every probe).
                // A lost change set is repaired by the next snapshot, like a lost snapshot.
                Body::Summary(_) | Body::Probes(_) | Body::Changes(_) => EntryKind::Summary,
                Body::Heartbeat(_) => EntryKind::Heartbeat,
                // Notices are never dropped from the spool; a key handover is one.
                Body::DataLost(_) | Body::KeyHandover(_) => EntryKind::DataLost,
            };
            let pushed = match m.spool.lock() {
                Ok(mut spool) => spool.push(seq, kind, &sealed.wire),
                Err(_) => return Err(AgentError::SpoolPoisoned),
            };
            match pushed {
                Ok(dropped) => {
                    if !dropped.seqs.is_empty() {
                        tracing::warn!(
                            dropped = dropped.seqs.len(),
                            bytes = dropped.bytes,
                            "mqtt spool full: dropped the oldest snapshots {:?}; a data-lost notice follows",
                            dropped.seqs
                        );
                        self.unreported_loss.push((dropped.seqs, "spool_full"));
                    }
                }
                Err(e) => {
                    tracing::error!("{e}; envelope {seq} is lost for MQTT and will be reported");
                    self.unreported_loss.push((vec![seq], "spool_write_failed"));
                }
            }
            m.link.wake();
        }
        let mut datagrams = 0;
        if let Some(sender) = &mut self.sender {
            let queued = sender.queue(&sealed.wire).await;
            datagrams = self.diode_outcome(queued)?;
        }
        Ok((seq, sealed.wire.len(), datagrams))
    }

    /// Sends what waits in the diode's FEC window. Returns the datagrams sent.
    async fn flush_diode(&mut self) -> Result<usize, AgentError> {
        let Some(sender) = &mut self.sender else {
            return Ok(0);
        };
        let flushed = sender.flush().await;
        self.diode_outcome(flushed)
    }

    /// Logs a partly sent window; an error is fatal only without MQTT (the diode failing must
    /// not stop the spool).
    fn diode_outcome(
        &self,
        outcome: Result<Option<SendReport>, DiodeError>,
    ) -> Result<usize, AgentError> {
        match outcome {
            Ok(None) => Ok(0),
            Ok(Some(sent)) => {
                if sent.refused > 0 || sent.failed > 0 {
                    tracing::warn!(
                        refused = sent.refused,
                        failed = sent.failed,
                        envelopes = sent.envelopes,
                        "diode: window {} partly sent",
                        sent.message_id
                    );
                }
                Ok(sent.sent)
            }
            Err(e) if self.mqtt.is_some() => {
                tracing::error!("{e}");
                Ok(0)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// If a new key is staged (`outpost-agent rotate-key`), announces it in a `KeyHandover`
    /// sealed with the current key, then installs it and signs with it from now on.
    async fn hand_over_staged_key(&mut self) -> Result<(), AgentError> {
        let Some(new) = crate::rotate::load_staged(&self.config.key_file)? else {
            return Ok(());
        };
        if new.key_id() == self.key.key_id() {
            crate::rotate::install(&self.config.key_file)?;
            return Ok(());
        }
        let seq = self.tip.seq + 1;
        let handover = outpost_proto::handover::announce(
            &self.config.agent_id,
            &self.config.zone,
            &self.key,
            &new,
            seq,
        );
        let (seq, _, _) = self.emit(&Body::KeyHandover(handover)).await?;
        crate::rotate::install(&self.config.key_file)?;
        tracing::warn!(old = %self.key.key_id(), new = %new.key_id(), seq,
            "key handover sent in envelope {seq}: now signing with key {}", new.key_id());
        self.key = new;
        Ok(())
    }

    /// Seals a data-lost notice for every loss not yet reported.
    async fn report_losses(&mut self) -> Result<(), AgentError> {
        while let Some((seqs, reason)) = self.unreported_loss.first().cloned() {
            let (Some(&from_seq), Some(&to_seq)) = (seqs.iter().min(), seqs.iter().max()) else {
                self.unreported_loss.remove(0);
                continue;
            };
            let body = Body::DataLost(DataLost {
                agent: self.config.agent_id.clone(),
                zone: self.config.zone.clone(),
                from_seq,
                to_seq,
                dropped: seqs.len() as u64,
                reason: reason.to_owned(),
            });
            self.unreported_loss.remove(0);
            let (seq, _, _) = self.emit(&body).await?;
            tracing::warn!(
                from_seq,
                to_seq,
                reason,
                "data-lost notice sent as envelope {seq}"
            );
        }
        Ok(())
    }

    /// The last sealed envelope's tip.
    pub fn tip(&self) -> ChainTip {
        self.tip
    }

    /// The config the agent runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs one cycle: poll, summarise, seal, persist, send.
    pub async fn run_cycle(&mut self) -> Result<CycleReport, AgentError> {
        self.hand_over_staged_key().await?;
        let started = Instant::now();
        let started_ms = now_ms();
        if self.discovery.is_configured() {
            self.discovery
                .start_cycle(Timing::from(&self.config.modbus))
                .await;
        }
        // TCP devices and serial buses (one task per bus) are polled at the same time.
        let (mut assets, rtu) = tokio::join!(
            self.poll_all(),
            crate::modbus::bus::poll_buses(
                &self.config.serial_buses,
                self.config.modbus.min_request_gap,
                self.config.poll_interval.max(Duration::from_secs(1)),
            )
        );
        assets.extend(rtu);
        let collect = self.config.gateway.collect();
        let gateway = match tokio::task::spawn_blocking(move || host::collect(collect)).await {
            Ok(Ok(facts)) => Some(facts),
            Ok(Err(e)) => {
                tracing::warn!("{e}; the summary goes without gateway facts");
                None
            }
            Err(e) => {
                tracing::warn!("gateway facts task failed: {e}; the summary goes without them");
                None
            }
        };
        let mut report = CycleReport {
            seq: 0,
            snapshot: false,
            changes: 0,
            devices: assets.len(),
            ok: 0,
            partial: 0,
            unreachable: 0,
            envelope_bytes: 0,
            datagrams: 0,
        };
        for a in &assets {
            match &a.status {
                PollStatus::Ok => report.ok += 1,
                PollStatus::Partial => {
                    report.partial += 1;
                    for p in &a.problems {
                        tracing::info!("device {} (unit {}): {p}", a.name, a.unit_id);
                    }
                }
                PollStatus::Unreachable(why) => {
                    report.unreachable += 1;
                    tracing::warn!(
                        "device {} (unit {}) at {} unreachable: {why}",
                        a.name,
                        a.unit_id,
                        a.endpoint
                    );
                }
            }
        }
        let host = gateway.as_ref().filter(|_| self.config.changes.gateway);
        let changes = match &mut self.observer {
            Some(observer) => observer.observe(&assets, host),
            None => Vec::new(),
        };
        if !changes.is_empty() {
            let (seq, bytes, datagrams) =
                self.emit_changes(started_ms, changes, &mut report).await?;
            report.seq = seq;
            report.envelope_bytes += bytes;
            report.datagrams += datagrams;
        }
        // Persisted after the change set is sealed: a crash in between sends it again (the
        // collector records it as already current), never loses it.
        if let Some(observer) = &mut self.observer
            && let Err(e) = observer.persist()
        {
            tracing::error!("{e}; the next restart compares with an older observed state");
        }
        let every = u64::from(self.config.changes.snapshot_every.max(1));
        if self.cycles.is_multiple_of(every) {
            let body = Body::Summary(Summary {
                agent: self.config.agent_id.clone(),
                zone: self.config.zone.clone(),
                started_ms,
                finished_ms: now_ms(),
                gateway,
                assets,
            });
            let (seq, bytes, datagrams) = self.emit(&body).await?;
            self.last_summary_seq = seq;
            report.snapshot = true;
            report.seq = seq;
            report.envelope_bytes += bytes;
            report.datagrams += datagrams;
        }
        self.cycles += 1;
        if report.seq == 0 {
            report.seq = self.tip.seq;
        }
        self.report_losses().await?;
        // The summary and any data-lost notices go out together, now.
        report.datagrams += self.flush_diode().await?;
        tracing::info!(
            "cycle {}: {} devices ({} ok, {} partial, {} unreachable), {} changes, snapshot: {}, {} bytes, {} datagrams, {} ms",
            report.seq,
            report.devices,
            report.ok,
            report.partial,
            report.unreachable,
            report.changes,
            report.snapshot,
            report.envelope_bytes,
            report.datagrams,
            started.elapsed().as_millis()
        );
        Ok(report)
    }

    /// Seals the cycle's changes as one change set (cut at `MAX_CHANGES`; the next snapshot
    /// carries the rest) and logs each.
    async fn emit_changes(
        &mut self,
        observed_ms: u64,
        mut changes: Vec<Change>,
        report: &mut CycleReport,
    ) -> Result<(u64, usize, usize), AgentError> {
        let truncated = changes.len() > MAX_CHANGES;
        if truncated {
            tracing::warn!(
                seen = changes.len(),
                "more than {MAX_CHANGES} changes in one cycle: sending the first {MAX_CHANGES}; \
                 the next snapshot carries the rest"
            );
            changes.truncate(MAX_CHANGES);
        }
        for c in &changes {
            match &c.asset {
                Some(a) => tracing::info!(asset = %a.name, unit = a.unit_id, kind = c.what.name(),
                    "change observed on {} (unit {}): {}", a.name, a.unit_id, c.what.name()),
                None => tracing::info!(
                    kind = c.what.name(),
                    "change observed on the gateway: {:?}",
                    c.what
                ),
            }
        }
        report.changes = changes.len();
        let body = Body::Changes(ChangeSet {
            agent: self.config.agent_id.clone(),
            zone: self.config.zone.clone(),
            observed_ms,
            base_summary_seq: self.last_summary_seq,
            changes,
            truncated,
        });
        self.emit(&body).await
    }

    /// Seals and sends one heartbeat carrying the current chain tip (it takes the next
    /// sequence number, persisted before it leaves, like any envelope). Returns its sequence
    /// number.
    pub async fn send_heartbeat(&mut self) -> Result<u64, AgentError> {
        let body = Body::Heartbeat(Heartbeat {
            agent: self.config.agent_id.clone(),
            zone: self.config.zone.clone(),
            last_seq: self.tip.seq,
            last_hash: self.tip.hash,
            interval_ms: self.config.diode.map_or(0, |d| {
                u64::try_from(d.heartbeat_interval.as_millis()).unwrap_or(u64::MAX)
            }),
            last_summary_seq: self.last_summary_seq,
        });
        let (seq, _, queued) = self.emit(&body).await?;
        self.report_losses().await?;
        let datagrams = queued + self.flush_diode().await?;
        tracing::debug!(seq, datagrams, "heartbeat");
        Ok(seq)
    }

    /// Runs one round of segmentation probes inline and sends its report (`run --once`, tests).
    /// Returns the envelope's sequence number, or `None` without `[segmentation]`.
    pub async fn run_probe_round(&mut self) -> Result<Option<u64>, AgentError> {
        let Some(seg) = self.config.segmentation.clone() else {
            return Ok(None);
        };
        let report =
            crate::segmentation::probe::run_round(&self.config.agent_id, &self.config.zone, &seg)
                .await;
        self.send_probe_report(report).await.map(Some)
    }

    /// Seals and sends a probe report now.
    async fn send_probe_report(&mut self, report: ProbeReport) -> Result<u64, AgentError> {
        let targets = report.results.len();
        let problems = report.results.iter().filter(|r| r.is_problem()).count();
        let (seq, _, _) = self.emit(&Body::Probes(report)).await?;
        self.report_losses().await?;
        self.flush_diode().await?;
        tracing::info!(
            seq,
            targets,
            problems,
            "segmentation probes: {targets} targets, {problems} contradicting the zone's design, sent as envelope {seq}"
        );
        Ok(seq)
    }

    /// Polls every device (explicit ones, then discovered ones), at most
    /// `max_parallel_devices` at once; results in that order.
    async fn poll_all(&self) -> Vec<AssetObservation> {
        let timing = Timing::from(&self.config.modbus);
        let limit = self.config.modbus.max_parallel_devices.max(1);
        let deadline = self.config.poll_interval.max(Duration::from_secs(1));
        let mut devices = self.devices.clone();
        devices.extend(self.discovery.devices(&self.devices));
        let mut results: Vec<Option<Vec<AssetObservation>>> = vec![None; devices.len()];
        let mut tasks = JoinSet::new();
        let mut ids = std::collections::HashMap::new();
        let mut next = 0;
        loop {
            while next < devices.len() && tasks.len() < limit {
                let device = Arc::clone(&devices[next]);
                let profiles = self.profiles.clone();
                let index = next;
                let handle = tasks.spawn(async move {
                    let poll = poll_device_with(&device, timing, profiles.as_deref());
                    match tokio::time::timeout(deadline, poll).await {
                        Ok(obs) => (index, obs),
                        Err(_) => {
                            let why = format!(
                                "polling took longer than the poll interval ({}); abandoned",
                                humantime::format_duration(deadline)
                            );
                            let obs = device
                                .unit_ids
                                .iter()
                                .map(|&u| unreachable(&device, u, why.clone()))
                                .collect();
                            (index, obs)
                        }
                    }
                });
                ids.insert(handle.id(), index);
                next += 1;
            }
            let Some(joined) = tasks.join_next_with_id().await else {
                break;
            };
            match joined {
                Ok((_, (index, obs))) => results[index] = Some(obs),
                Err(e) => {
                    if let Some(&index) = ids.get(&e.id()) {
                        tracing::error!(device = %devices[index].name, "poll task failed: {e}");
                        let device = &devices[index];
                        results[index] = Some(
                            device
                                .unit_ids
                                .iter()
                                .map(|&u| unreachable(device, u, format!("internal error: {e}")))
                                .collect(),
                        );
                    }
                }
            }
        }
        let mut observations: Vec<AssetObservation> =
            results.into_iter().flatten().flatten().collect();
        let arp =
            crate::identity::ArpCache::read(std::path::Path::new(crate::identity::PROC_NET_ARP));
        crate::identity::annotate(&mut observations, self.profiles.as_deref(), &arp);
        observations
    }

    /// Stops the MQTT transport cleanly (offline status, disconnect); what is unsent stays
    /// spooled for the next start.
    pub async fn shutdown(&mut self) {
        if let Some(m) = self.mqtt.take() {
            let pending = m.link.pending();
            m.link.shutdown().await;
            if pending > 0 {
                tracing::info!(
                    pending,
                    "mqtt: envelopes left in the spool for the next start"
                );
            }
        }
    }

    /// Runs cycles every `poll_interval` until `shutdown` completes, with a heartbeat every
    /// `diode.heartbeat_interval` in between (no heartbeats without `[diode]`: MQTT has its
    /// status topic) (none while a cycle runs: its summary says as
    /// much). A failed cycle or heartbeat is logged and the next one runs on schedule.
    /// With `[segmentation]`, probe rounds run in a background task every
    /// `segmentation.interval` (the first at start); each report is sealed and sent between
    /// cycles.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        let (probe_tx, mut probe_rx) = tokio::sync::mpsc::channel::<ProbeReport>(2);
        let probes = self.config.segmentation.clone().map(|seg| {
            let agent = self.config.agent_id.clone();
            let zone = self.config.zone.clone();
            tokio::spawn(async move {
                let mut rounds = tokio::time::interval(seg.interval);
                rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    rounds.tick().await;
                    let report = crate::segmentation::probe::run_round(&agent, &zone, &seg).await;
                    if probe_tx.send(report).await.is_err() {
                        break;
                    }
                }
            })
        });
        let result = self.run_loop(shutdown, &mut probe_rx).await;
        if let Some(task) = probes {
            task.abort();
        }
        result
    }

    async fn run_loop(
        &mut self,
        shutdown: impl Future<Output = ()>,
        probe_rx: &mut tokio::sync::mpsc::Receiver<ProbeReport>,
    ) -> Result<(), AgentError> {
        let mut ticks = tokio::time::interval(self.config.poll_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beats = self.config.diode.map(|d| {
            let beat = d.heartbeat_interval;
            let mut beats = tokio::time::interval_at(Instant::now() + beat, beat);
            beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            beats
        });
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = ticks.tick() => {}
                Some(report) = probe_rx.recv() => {
                    if let Err(e) = self.send_probe_report(report).await {
                        tracing::error!("sending the segmentation probe report failed: {e}");
                    }
                    continue;
                }
                _ = async {
                    match &mut beats {
                        Some(b) => b.tick().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Err(e) = self.send_heartbeat().await {
                        tracing::error!("heartbeat failed: {e}");
                    }
                    continue;
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                result = self.run_cycle() => {
                    if let Err(e) = result {
                        tracing::error!("cycle failed: {e}");
                    }
                }
            }
        }
        tracing::info!(last_seq = self.tip.seq, "shutting down");
        self.shutdown().await;
        Ok(())
    }
}
