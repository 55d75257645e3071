//! One round of segmentation probes.
//!
//! Probes start at most `max_probes_per_sec` per second (evenly spaced) and run concurrently,
//! each bounded by `connect_timeout`, so a round of N targets takes about
//! N / rate + timeout. A probe is a TCP connect and nothing else: a socket that connects is
//! dropped (closed) at once without a byte written or read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_proto::model::{ProbeOutcome, ProbeReport, ProbeResult};
use outpost_proto::{AgentId, ZoneId};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{ProbeTarget, SegmentationConfig};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One TCP connect attempt, judged.
pub async fn probe_one(target: &ProbeTarget, timeout: Duration) -> ProbeResult {
    let started = Instant::now();
    let attempt = tokio::time::timeout(timeout, TcpStream::connect(target.addr)).await;
    let elapsed_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
    let (outcome, detail) = match attempt {
        Ok(Ok(stream)) => {
            // Closed at once: nothing written, nothing read.
            drop(stream);
            (ProbeOutcome::Connected, None)
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            (ProbeOutcome::Refused, None)
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => (
            ProbeOutcome::Error,
            Some(
                "connect not permitted on the gateway itself (the unit's IPAddressAllow= or a \
                 local firewall): this probe tests nothing beyond the gateway; allow the target \
                 in the agent's unit to probe the network"
                    .into(),
            ),
        ),
        Ok(Err(e)) => {
            let mut text = e.to_string().replace(char::is_control, " ");
            text.truncate(
                (0..=outpost_proto::model::MAX_PROBE_TEXT.min(text.len()))
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0),
            );
            (ProbeOutcome::Error, Some(text))
        }
        Err(_) => (ProbeOutcome::TimedOut, None),
    };
    ProbeResult {
        target: target.addr.to_string(),
        rule: target.rule.clone(),
        expect: target.expect,
        outcome,
        elapsed_ms,
        detail,
    }
}

/// Probes every target of `config` and returns the report (results in config order).
pub async fn run_round(agent: &AgentId, zone: &ZoneId, config: &SegmentationConfig) -> ProbeReport {
    let started_ms = now_ms();
    let gap = Duration::from_secs(1) / config.max_probes_per_sec.max(1);
    let mut tasks = JoinSet::new();
    let mut slots: Vec<Option<ProbeResult>> = vec![None; config.targets.len()];
    let mut next_start = Instant::now();
    for (index, target) in config.targets.iter().enumerate() {
        tokio::time::sleep_until(next_start).await;
        next_start += gap;
        let target = target.clone();
        let timeout = config.connect_timeout;
        tasks.spawn(async move { (index, probe_one(&target, timeout).await) });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, result)) => slots[index] = Some(result),
            Err(e) => tracing::error!("segmentation probe task failed: {e}"),
        }
    }
    let results: Vec<ProbeResult> = slots
        .into_iter()
        .zip(&config.targets)
        .map(|(slot, target)| {
            slot.unwrap_or_else(|| ProbeResult {
                target: target.addr.to_string(),
                rule: target.rule.clone(),
                expect: target.expect,
                outcome: ProbeOutcome::Error,
                elapsed_ms: 0,
                detail: Some("internal error: the probe task failed".into()),
            })
        })
        .collect();
    for r in results.iter().filter(|r| r.is_problem()) {
        tracing::warn!(
            target = %r.target,
            expect = r.expect.as_str(),
            outcome = r.outcome.as_str(),
            "segmentation probe contradicts the zone's design: {} ({}) {}",
            r.target,
            r.expect.as_str(),
            r.outcome.as_str()
        );
    }
    ProbeReport {
        agent: agent.clone(),
        zone: zone.clone(),
        started_ms,
        finished_ms: now_ms().max(started_ms),
        results,
    }
}
