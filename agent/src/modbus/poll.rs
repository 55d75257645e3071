//! Polling one configured device: resolve, connect, then for each unit id identify it and read
//! its blocks, producing one [`AssetObservation`] per unit id.
//!
//! Outcomes per unit:
//! - `Unreachable(reason)`: the host did not resolve, the connection failed, or the unit never
//!   gave a Modbus answer (data or exception) before giving up; identity and blocks are empty.
//! - `Partial`: the unit answered, but something went wrong; one line per problem
//!   (`block setpoints: exception IllegalDataAddress`).
//! - `Ok`: everything answered.
//!
//! A unit is given up on after [`MAX_SILENT`] consecutive requests without an answer while it has
//! never answered, or after [`MAX_TIMEOUTS`] timeouts in all; the blocks left are reported as
//! skipped. That bounds the time a silent device costs to a few request timeouts. Blocks larger
//! than one request allows are read in legal chunks. Nothing here panics on device input.

use std::net::SocketAddr;

use outpost_proto::model::{
    AssetObservation, DeviceIdentity, PollStatus, RegisterBlock, RegisterKind,
};

use super::identify::identify;
use super::read_only::{ModbusError, ReadOnlyClient, Timing};
use crate::config::{BlockConfig, DeviceConfig, MAX_BITS_PER_READ, MAX_REGISTERS_PER_READ};

/// Requests in a row without an answer, from a unit that never answered, before giving up.
pub const MAX_SILENT: u32 = 3;
/// Timeouts per unit before giving up on the rest of its requests.
pub const MAX_TIMEOUTS: u32 = 3;
/// Resolved addresses tried per device.
const MAX_ADDRESSES: usize = 4;

/// Polls every unit id of `device`.
pub async fn poll_device(device: &DeviceConfig, timing: Timing) -> Vec<AssetObservation> {
    let mut client = match connect(device, timing).await {
        Ok(c) => c,
        Err(reason) => {
            return device
                .unit_ids
                .iter()
                .map(|&unit| unreachable(device, unit, reason.clone()))
                .collect();
        }
    };
    let mut out = Vec::with_capacity(device.unit_ids.len());
    for &unit in &device.unit_ids {
        client.set_unit(unit);
        out.push(poll_unit(&mut client, device, unit).await);
    }
    client.disconnect().await;
    out
}

/// An observation for a unit that could not be reached.
pub fn unreachable(device: &DeviceConfig, unit: u8, reason: String) -> AssetObservation {
    AssetObservation {
        name: device.name.clone(),
        endpoint: device.address.endpoint(),
        unit_id: unit,
        status: PollStatus::Unreachable(reason),
        identity: DeviceIdentity::default(),
        blocks: Vec::new(),
        problems: Vec::new(),
        serial: None,
        mac: None,
    }
}

async fn connect(device: &DeviceConfig, timing: Timing) -> Result<ReadOnlyClient, String> {
    let host = device.address.host.as_str();
    let port = device.address.port;
    let first_unit = device.unit_ids.first().copied().unwrap_or(1);
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(
        timing.connect_timeout,
        tokio::net::lookup_host((host, port)),
    )
    .await
    {
        Err(_) => {
            return Err(format!(
                "cannot resolve host {host:?}: no answer within {}",
                humantime::format_duration(timing.connect_timeout)
            ));
        }
        Ok(Err(e)) => return Err(format!("cannot resolve host {host:?}: {e}")),
        Ok(Ok(addrs)) => addrs.take(MAX_ADDRESSES).collect(),
    };
    let mut last = format!("host {host:?} resolved to no address");
    for addr in addrs {
        match ReadOnlyClient::connect(addr, first_unit, timing).await {
            Ok(client) => return Ok(client),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

/// How a unit has behaved so far.
struct Health {
    answered: bool,
    silent: u32,
    timeouts: u32,
    last_failure: String,
}

impl Health {
    fn record(&mut self, result: Result<(), &ModbusError>) {
        match result {
            Ok(()) => {
                self.answered = true;
                self.silent = 0;
            }
            Err(e) if e.is_answer() => {
                self.answered = true;
                self.silent = 0;
            }
            Err(e) => {
                self.silent += 1;
                if matches!(e, ModbusError::Timeout(_)) {
                    self.timeouts += 1;
                }
                self.last_failure = e.to_string();
            }
        }
    }

    fn give_up(&self) -> bool {
        (!self.answered && self.silent >= MAX_SILENT) || self.timeouts >= MAX_TIMEOUTS
    }
}

/// Identifies the unit `client` addresses and reads the device's blocks from it.
pub async fn poll_unit(
    client: &mut ReadOnlyClient,
    device: &DeviceConfig,
    unit: u8,
) -> AssetObservation {
    let before = client.requests();
    let ident = identify(client).await;
    let ident_requests = u32::try_from(client.requests() - before).unwrap_or(u32::MAX);
    let mut health = Health {
        answered: ident.answered,
        silent: if ident.answered { 0 } else { ident_requests },
        timeouts: ident.timeouts,
        last_failure: ident
            .problems
            .last()
            .cloned()
            .unwrap_or_else(|| "no answer".into()),
    };
    let mut problems = ident.problems;
    let mut blocks = Vec::with_capacity(device.blocks.len());
    for block in &device.blocks {
        if health.give_up() {
            problems.push(format!(
                "block {}: skipped, the device stopped answering",
                block.name
            ));
            continue;
        }
        let result = read_block(client, block).await;
        health.record(result.as_ref().map(|_| ()));
        match result {
            Ok(values) => blocks.push(
                RegisterBlock::new(block.name.clone(), block.kind, block.start, values)
                    .with_volatile(block.volatile),
            ),
            Err(e) => problems.push(format!("block {}: {e}", block.name)),
        }
    }
    if !health.answered {
        let requests = client.requests() - before;
        return unreachable(
            device,
            unit,
            format!(
                "connected to {}, but {requests} requests got no answer (last: {})",
                client.peer(),
                health.last_failure
            ),
        );
    }
    AssetObservation {
        name: device.name.clone(),
        endpoint: device.address.endpoint(),
        unit_id: unit,
        status: if problems.is_empty() {
            PollStatus::Ok
        } else {
            PollStatus::Partial
        },
        identity: ident.identity,
        blocks,
        problems,
        serial: None,
        mac: None,
    }
}

/// Reads one block, in as many requests as the function code's limit needs.
pub async fn read_block(
    client: &mut ReadOnlyClient,
    block: &BlockConfig,
) -> Result<Vec<u16>, ModbusError> {
    let per_read = match block.kind {
        RegisterKind::Holding | RegisterKind::Input => MAX_REGISTERS_PER_READ,
        RegisterKind::Coil | RegisterKind::DiscreteInput => MAX_BITS_PER_READ,
    };
    let end = u32::from(block.start) + u32::from(block.count);
    if end > 65536 {
        return Err(ModbusError::UnexpectedResponse(format!(
            "block runs past address 65535 (start {}, count {}); not sent",
            block.start, block.count
        )));
    }
    let mut values = Vec::with_capacity(usize::from(block.count));
    let mut at = u32::from(block.start);
    while at < end {
        let n = (end - at).min(u32::from(per_read));
        // Both fit: at < end <= 65536 and n <= per_read.
        let (addr, n) = (at as u16, n as u16);
        match block.kind {
            RegisterKind::Holding => values.extend(client.read_holding_registers(addr, n).await?),
            RegisterKind::Input => values.extend(client.read_input_registers(addr, n).await?),
            RegisterKind::Coil => {
                values.extend(client.read_coils(addr, n).await?.into_iter().map(u16::from))
            }
            RegisterKind::DiscreteInput => values.extend(
                client
                    .read_discrete_inputs(addr, n)
                    .await?
                    .into_iter()
                    .map(u16::from),
            ),
        }
        at += u32::from(n);
    }
    Ok(values)
}
