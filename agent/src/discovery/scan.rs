//! The sweep: one task per address, at most `max_connections` at a time.
//!
//! Per address: one TCP connection (under the connect timeout), then for each unit id one
//! identification ([`crate::modbus::identify`]) through the read-only client, which keeps one
//! request outstanding, spaces request starts by the budget's gap, backs off on "server busy"
//! and slow answers, and bounds each request by the request timeout. An address that accepts
//! the connection but never answers is given up after [`MAX_SILENT_TIMEOUTS`] timeouts; an
//! address whose units time out is given up after [`MAX_ADDRESS_TIMEOUTS`] timeouts in all.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use outpost_proto::model::DeviceIdentity;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::modbus::identify::identify;
use crate::modbus::read_only::{ModbusError, ReadOnlyClient, Timing};

/// Timeouts in a row, from an address that never answered, before its other units are skipped.
pub const MAX_SILENT_TIMEOUTS: u32 = 2;
/// Timeouts in all, per address, before its remaining units are skipped.
pub const MAX_ADDRESS_TIMEOUTS: u32 = 4;

/// The politeness budget of one scan (see the module docs of [`crate::discovery`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// K: TCP connections open at once (= devices talked to at once).
    pub max_connections: usize,
    /// Connect and request timeouts, and the gap between request starts per device (1 / R).
    pub timing: Timing,
}

impl Budget {
    /// Requests per second per device this budget allows.
    pub fn rate_per_device(&self) -> f64 {
        let gap = self.timing.min_request_gap.as_secs_f64();
        if gap > 0.0 { 1.0 / gap } else { f64::INFINITY }
    }
}

/// What one scan sweeps.
#[derive(Debug, Clone)]
pub struct ScanPlan {
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    pub units: Vec<u8>,
    pub budget: Budget,
}

/// One unit id that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFound {
    pub unit_id: u8,
    /// How it was identified: `fc43 extended stream`, `fc17 report server id`, `none`, …
    pub method: String,
    /// The FC 43 conformity level byte, when FC 43 answered.
    pub conformity_level: Option<u8>,
    pub identity: DeviceIdentity,
    pub problems: Vec<String>,
    /// The device profile that matches the identity, if any (filled in by the caller).
    pub profile: Option<String>,
}

/// What happened at one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// At least one unit id answered (see `units`).
    Answered,
    /// Connected, but no unit id gave a Modbus answer (or only "gateway: unit absent").
    NoUnitAnswered,
    /// Accepted the connection and never answered: given up after a bounded number of timeouts.
    Silent,
    /// The connection was refused (nothing listens on the port).
    Refused,
    /// No answer to the connection attempt within the connect timeout.
    ConnectTimeout,
    /// Another connection error.
    ConnectError(String),
}

impl Outcome {
    /// A short name for tables and JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::NoUnitAnswered => "no_unit_answered",
            Outcome::Silent => "silent",
            Outcome::Refused => "refused",
            Outcome::ConnectTimeout => "connect_timeout",
            Outcome::ConnectError(_) => "connect_error",
        }
    }
}

/// The result for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressResult {
    pub address: SocketAddr,
    pub outcome: Outcome,
    pub units: Vec<UnitFound>,
    /// Modbus requests sent to this address.
    pub requests: u64,
    /// Waits caused by "server busy" answers.
    pub busy_backoffs: u64,
    /// The gap between requests at the end (grown from the budget's when answers were slow).
    pub final_gap_ms: u64,
    pub elapsed_ms: u64,
}

/// Scans every address of `plan`, calling `on_done` as each address finishes (in completion
/// order). Results come back in address order.
pub async fn scan(plan: &ScanPlan, mut on_done: impl FnMut(&AddressResult)) -> Vec<AddressResult> {
    let k = plan.budget.max_connections.max(1);
    let mut pending = plan.addresses.iter().copied().enumerate();
    let mut running = JoinSet::new();
    let mut results: Vec<Option<AddressResult>> = vec![None; plan.addresses.len()];
    loop {
        while running.len() < k {
            let Some((index, ip)) = pending.next() else {
                break;
            };
            let addr = SocketAddr::new(ip, plan.port);
            let units = plan.units.clone();
            let budget = plan.budget;
            running.spawn(async move { (index, scan_address(addr, &units, budget).await) });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        match joined {
            Ok((index, result)) => {
                on_done(&result);
                if let Some(slot) = results.get_mut(index) {
                    *slot = Some(result);
                }
            }
            // A task can only fail by panicking (a bug); say so and carry on with the rest.
            Err(e) => tracing::error!(
                "scan: a probe task failed: {e}; its address is missing from the results"
            ),
        }
    }
    results.into_iter().flatten().collect()
}

/// Probes one address: connect once, then identify each unit id in turn.
pub async fn scan_address(addr: SocketAddr, units: &[u8], budget: Budget) -> AddressResult {
    let started = Instant::now();
    let first = units.first().copied().unwrap_or(1);
    let mut result = AddressResult {
        address: addr,
        outcome: Outcome::NoUnitAnswered,
        units: Vec::new(),
        requests: 0,
        busy_backoffs: 0,
        final_gap_ms: millis(budget.timing.min_request_gap),
        elapsed_ms: 0,
    };
    let mut client = match ReadOnlyClient::connect(addr, first, budget.timing).await {
        Ok(c) => c,
        Err(e) => {
            result.outcome = match e {
                ModbusError::ConnectTimeout(_) => Outcome::ConnectTimeout,
                ModbusError::Connect(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                    Outcome::Refused
                }
                other => Outcome::ConnectError(other.to_string()),
            };
            result.elapsed_ms = millis(started.elapsed());
            return result;
        }
    };
    let mut ever_answered = false;
    let mut timeouts = 0u32;
    let mut skipped = Vec::new();
    for (i, &unit) in units.iter().enumerate() {
        if (!ever_answered && timeouts >= MAX_SILENT_TIMEOUTS) || timeouts >= MAX_ADDRESS_TIMEOUTS {
            skipped.extend_from_slice(&units[i..]);
            break;
        }
        client.set_unit(unit);
        let ident = identify(&mut client).await;
        timeouts += ident.timeouts;
        if !ident.answered || ident.unit_absent() {
            ever_answered |= ident.answered;
            continue;
        }
        ever_answered = true;
        result.units.push(UnitFound {
            unit_id: unit,
            method: ident.how,
            conformity_level: ident.conformity,
            identity: ident.identity,
            problems: ident.problems,
            profile: None,
        });
    }
    result.outcome = if !result.units.is_empty() {
        Outcome::Answered
    } else if !ever_answered && timeouts > 0 {
        Outcome::Silent
    } else {
        Outcome::NoUnitAnswered
    };
    if !skipped.is_empty()
        && let Some(last) = result.units.last_mut()
    {
        last.problems.push(format!(
            "unit ids {skipped:?} not asked: {timeouts} timeouts at this address"
        ));
    }
    result.requests = client.requests();
    result.busy_backoffs = client.busy_backoffs();
    result.final_gap_ms = millis(client.current_gap());
    client.disconnect().await;
    result.elapsed_ms = millis(started.elapsed());
    result
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
