//! One poll cycle, and the loop of cycles.
//!
//! A cycle: poll every device concurrently (at most `max_parallel_devices` at once; each device
//! is bounded by its own timeouts and, as a safety net, by the poll interval), collect gateway
//! facts, build the [`Summary`], seal it as the envelope after the persisted chain tip, persist
//! the new tip (fsync + rename), and only then send it. A crash between persisting and sending
//! loses one envelope — the collector records a gap — but never reuses a sequence number.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_proto::envelope;
use outpost_proto::model::{AssetObservation, Body, Heartbeat, PollStatus, Summary};
use outpost_proto::{ChainTip, SigningKey};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::AgentError;
use crate::config::{Config, DeviceConfig};
use crate::host;
use crate::keyfile;
use crate::modbus::poll::{poll_device, unreachable};
use crate::modbus::read_only::Timing;
use crate::state::StateDir;
use crate::transport::diode::DiodeSender;

/// What one cycle did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CycleReport {
    pub seq: u64,
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
    sender: DiodeSender,
    last_summary_seq: u64,
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
    /// tip and opens the diode socket.
    pub fn new(config: Config) -> Result<Agent, AgentError> {
        let key = keyfile::load_private(&config.key_file)?;
        let state = StateDir::open(&config.state_dir)?;
        let tip = state.load_tip()?;
        let sender = DiodeSender::from_config(&config.diode)?;
        tracing::info!(
            agent = %config.agent_id,
            zone = %config.zone,
            key_id = %key.key_id(),
            last_seq = tip.seq,
            diode = %config.diode.target,
            devices = config.devices.len(),
            "agent ready"
        );
        Ok(Agent {
            devices: config.devices.iter().cloned().map(Arc::new).collect(),
            config,
            key,
            state,
            tip,
            sender,
            last_summary_seq: 0,
        })
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
        let started = Instant::now();
        let started_ms = now_ms();
        let assets = self.poll_all().await;
        let gateway = match tokio::task::spawn_blocking(host::collect).await {
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
        let body = Body::Summary(Summary {
            agent: self.config.agent_id.clone(),
            zone: self.config.zone.clone(),
            started_ms,
            finished_ms: now_ms(),
            gateway,
            assets,
        });
        let sealed = envelope::seal(
            &self.key,
            &self.config.agent_id,
            &self.config.zone,
            &self.tip,
            now_ms(),
            &body,
        )?;
        // Persist before sending: a sequence number must never be used twice.
        self.state.store_tip(&sealed.tip)?;
        self.tip = sealed.tip;
        self.last_summary_seq = sealed.tip.seq;
        report.seq = sealed.tip.seq;
        report.envelope_bytes = sealed.wire.len();
        let sent = self.sender.send_message(&sealed.wire).await?;
        report.datagrams = sent.sent;
        tracing::info!(
            refused = sent.refused,
            failed = sent.failed,
            "cycle {}: {} devices ({} ok, {} partial, {} unreachable), {} bytes in {} datagrams, {} ms",
            report.seq,
            report.devices,
            report.ok,
            report.partial,
            report.unreachable,
            report.envelope_bytes,
            sent.sent,
            started.elapsed().as_millis()
        );
        Ok(report)
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
            interval_ms: u64::try_from(self.config.diode.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
            last_summary_seq: self.last_summary_seq,
        });
        let sealed = envelope::seal(
            &self.key,
            &self.config.agent_id,
            &self.config.zone,
            &self.tip,
            now_ms(),
            &body,
        )?;
        self.state.store_tip(&sealed.tip)?;
        self.tip = sealed.tip;
        let sent = self.sender.send_message(&sealed.wire).await?;
        tracing::debug!(seq = sealed.tip.seq, datagrams = sent.sent, "heartbeat");
        Ok(sealed.tip.seq)
    }

    /// Polls every device, at most `max_parallel_devices` at once; results in config order.
    async fn poll_all(&self) -> Vec<AssetObservation> {
        let timing = Timing::from(&self.config.modbus);
        let limit = self.config.modbus.max_parallel_devices.max(1);
        let deadline = self.config.poll_interval.max(Duration::from_secs(1));
        let mut results: Vec<Option<Vec<AssetObservation>>> = vec![None; self.devices.len()];
        let mut tasks = JoinSet::new();
        let mut ids = std::collections::HashMap::new();
        let mut next = 0;
        loop {
            while next < self.devices.len() && tasks.len() < limit {
                let device = Arc::clone(&self.devices[next]);
                let index = next;
                let handle = tasks.spawn(async move {
                    match tokio::time::timeout(deadline, poll_device(&device, timing)).await {
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
                        tracing::error!(device = %self.devices[index].name, "poll task failed: {e}");
                        let device = &self.devices[index];
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
        results.into_iter().flatten().flatten().collect()
    }

    /// Runs cycles every `poll_interval` until `shutdown` completes, with a heartbeat every
    /// `diode.heartbeat_interval` in between (none while a cycle runs: its summary says as
    /// much). A failed cycle or heartbeat is logged and the next one runs on schedule.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        let mut ticks = tokio::time::interval(self.config.poll_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let beat = self.config.diode.heartbeat_interval;
        let mut beats = tokio::time::interval_at(Instant::now() + beat, beat);
        beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = ticks.tick() => {}
                _ = beats.tick() => {
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
        Ok(())
    }
}
