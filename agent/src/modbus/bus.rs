//! Polling Modbus RTU serial buses: one task per bus owns its port (one master on the line).
//!
//! On a bus, devices are polled one after another through one [`ReadOnlyClient`], so requests
//! never overlap; the client keeps the bus's frame gap between exchanges. A silent unit costs
//! at most a few timeouts (the same give-up rule as TCP, see [`super::poll`]) and the next
//! unit is asked after it. Different buses are independent ports and are polled concurrently.
//! Each bus is bounded as a whole by `deadline` (the poll interval): what is left is reported
//! unreachable, never waited for.

use std::time::Duration;

use outpost_proto::model::{AssetObservation, Endpoint};
use tokio::task::JoinSet;

use super::poll::{UnitTarget, poll_target};
use super::read_only::ReadOnlyClient;
use crate::rtu_config::{RtuDeviceConfig, SerialBusConfig};

/// A device on `bus` as a poll target.
pub fn target<'a>(bus: &SerialBusConfig, device: &'a RtuDeviceConfig) -> UnitTarget<'a> {
    UnitTarget {
        name: &device.name,
        endpoint: Endpoint::Rtu {
            device: bus.path.clone(),
        },
        blocks: &device.blocks,
    }
}

/// Polls every device on `bus`, in config order, one request at a time.
pub async fn poll_bus(bus: &SerialBusConfig, min_request_gap: Duration) -> Vec<AssetObservation> {
    let Some(first) = bus.devices.first() else {
        return Vec::new();
    };
    let mut client = match ReadOnlyClient::open_serial(bus, first.unit, min_request_gap) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(bus = %bus.path, "{e}");
            return bus
                .devices
                .iter()
                .map(|d| target(bus, d).unreachable(d.unit, e.to_string()))
                .collect();
        }
    };
    let mut out = Vec::with_capacity(bus.devices.len());
    for device in &bus.devices {
        client.set_unit(device.unit);
        let obs = poll_target(&mut client, &target(bus, device), device.unit, None).await;
        out.push(obs);
    }
    client.disconnect().await;
    out
}

/// Polls every bus concurrently (one task each), each bounded by `deadline`; results in
/// config order.
pub async fn poll_buses(
    buses: &[SerialBusConfig],
    min_request_gap: Duration,
    deadline: Duration,
) -> Vec<AssetObservation> {
    let mut tasks = JoinSet::new();
    for (index, bus) in buses.iter().enumerate() {
        let bus = bus.clone();
        tasks.spawn(async move {
            let obs = match tokio::time::timeout(deadline, poll_bus(&bus, min_request_gap)).await {
                Ok(obs) => obs,
                Err(_) => {
                    let why = format!(
                        "polling bus {} took longer than the poll interval ({}); abandoned",
                        bus.path,
                        humantime::format_duration(deadline)
                    );
                    bus.devices
                        .iter()
                        .map(|d| target(&bus, d).unreachable(d.unit, why.clone()))
                        .collect()
                }
            };
            (index, obs)
        });
    }
    let mut results: Vec<Vec<AssetObservation>> = vec![Vec::new(); buses.len()];
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, obs)) => {
                if let Some(slot) = results.get_mut(index) {
                    *slot = obs;
                }
            }
            Err(e) => tracing::error!("serial bus poll task failed: {e}"),
        }
    }
    // A failed task leaves its slot empty: report its devices rather than drop them silently.
    for (bus, slot) in buses.iter().zip(results.iter_mut()) {
        if slot.is_empty() {
            *slot = bus
                .devices
                .iter()
                .map(|d| {
                    target(bus, d).unreachable(d.unit, "internal error: poll task failed".into())
                })
                .collect();
        }
    }
    results.into_iter().flatten().collect()
}
