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
//!
//! Profiles ([`poll_device_with`]): for a device whose config names no blocks, the best matching
//! profile of the [`Library`] (chosen per unit, after identification) supplies the blocks and,
//! when identification gave no revision, the firmware register; the observation names the
//! profile. Blocks written in the config always win: no profile is applied to such a device.

use std::net::SocketAddr;

use outpost_proto::model::{
    AssetObservation, DeviceIdentity, Endpoint, PollStatus, RegisterBlock, RegisterKind,
};

use super::identify::identify;
use super::read_only::{ModbusError, ReadOnlyClient, Timing};
use crate::config::{BlockConfig, DeviceConfig, MAX_BITS_PER_READ, MAX_REGISTERS_PER_READ};
use crate::profile::{Library, Profile};

/// Requests in a row without an answer, from a unit that never answered, before giving up.
pub const MAX_SILENT: u32 = 3;
/// Timeouts per unit before giving up on the rest of its requests.
pub const MAX_TIMEOUTS: u32 = 3;
/// Resolved addresses tried per device.
const MAX_ADDRESSES: usize = 4;

/// Polls every unit id of `device`, reading only the blocks its config names.
pub async fn poll_device(device: &DeviceConfig, timing: Timing) -> Vec<AssetObservation> {
    poll_device_with(device, timing, None).await
}

/// Polls every unit id of `device`; with `profiles`, a device without configured blocks gets
/// the blocks of the profile matching each unit's identity.
pub async fn poll_device_with(
    device: &DeviceConfig,
    timing: Timing,
    profiles: Option<&Library>,
) -> Vec<AssetObservation> {
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
        out.push(poll_unit_with(&mut client, device, unit, profiles).await);
    }
    client.disconnect().await;
    out
}

/// An observation for a unit that could not be reached.
pub fn unreachable(device: &DeviceConfig, unit: u8, reason: String) -> AssetObservation {
    device.target().unreachable(unit, reason)
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

/// What one unit is polled as: its name, where it is, and the blocks to read. A TCP device
/// and an RTU device on a serial bus are polled by the same code.
#[derive(Debug, Clone)]
pub struct UnitTarget<'a> {
    pub name: &'a str,
    pub endpoint: Endpoint,
    pub blocks: &'a [BlockConfig],
}

impl<'a> UnitTarget<'a> {
    /// An observation for a unit that could not be reached.
    pub fn unreachable(&self, unit: u8, reason: String) -> AssetObservation {
        AssetObservation {
            name: self.name.to_owned(),
            endpoint: self.endpoint.clone(),
            unit_id: unit,
            status: PollStatus::Unreachable(reason),
            identity: DeviceIdentity::default(),
            blocks: Vec::new(),
            problems: Vec::new(),
            profile: None,
            serial: None,
            mac: None,
        }
    }
}

impl DeviceConfig {
    /// The device as a [`UnitTarget`].
    pub fn target(&self) -> UnitTarget<'_> {
        UnitTarget {
            name: &self.name,
            endpoint: self.address.endpoint(),
            blocks: &self.blocks,
        }
    }
}

/// Identifies the unit `client` addresses and reads the device's blocks from it.
pub async fn poll_unit(
    client: &mut ReadOnlyClient,
    device: &DeviceConfig,
    unit: u8,
) -> AssetObservation {
    poll_unit_with(client, device, unit, None).await
}

/// The profile applied to a unit: none when its config names blocks.
fn applied_profile<'a>(
    blocks: &[BlockConfig],
    profiles: Option<&'a Library>,
    identity: &DeviceIdentity,
) -> Option<&'a Profile> {
    if !blocks.is_empty() {
        return None;
    }
    profiles?.find(identity)
}

/// A profile's blocks in the config's shape.
fn profile_blocks(profile: &Profile) -> Vec<BlockConfig> {
    profile
        .blocks
        .iter()
        .map(|b| BlockConfig {
            name: b.name.clone(),
            kind: b.kind,
            start: b.start,
            count: b.count,
            volatile: b.volatile,
        })
        .collect()
}

/// [`poll_unit`], with the matching profile's blocks and firmware register for a device whose
/// config names no blocks.
pub async fn poll_unit_with(
    client: &mut ReadOnlyClient,
    device: &DeviceConfig,
    unit: u8,
    profiles: Option<&Library>,
) -> AssetObservation {
    poll_target(client, &device.target(), unit, profiles).await
}

/// Identifies the unit `client` addresses and reads `device`'s blocks from it (or, when it
/// names none, the matching profile's blocks and firmware register).
pub async fn poll_target(
    client: &mut ReadOnlyClient,
    device: &UnitTarget<'_>,
    unit: u8,
    profiles: Option<&Library>,
) -> AssetObservation {
    let before = client.requests();
    let mut ident = identify(client).await;
    let profile = if ident.answered {
        applied_profile(device.blocks, profiles, &ident.identity)
    } else {
        None
    };
    let profile_blocks = profile.map(profile_blocks);
    let to_read = profile_blocks.as_deref().unwrap_or(device.blocks);
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
    let mut problems = std::mem::take(&mut ident.problems);
    if let Some(p) = profile
        && let Some(fw) = &p.firmware
        && ident.identity.revision.is_none()
        && !health.give_up()
    {
        let block = BlockConfig {
            name: "firmware".into(),
            kind: fw.kind,
            start: fw.start,
            count: fw.count,
            volatile: false,
        };
        let result = read_block(client, &block).await;
        health.record(result.as_ref().map(|_| ()));
        match result {
            Ok(words) => {
                let version = fw.render(&words);
                if !version.is_empty() {
                    ident.identity.revision = Some(version);
                }
            }
            Err(e) => problems.push(format!("firmware register (profile {}): {e}", p.name)),
        }
    }
    let mut blocks = Vec::with_capacity(to_read.len());
    for block in to_read {
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
        return device.unreachable(
            unit,
            format!(
                "connected to {}, but {requests} requests got no answer (last: {})",
                client.peer(),
                health.last_failure
            ),
        );
    }
    AssetObservation {
        name: device.name.to_owned(),
        endpoint: device.endpoint.clone(),
        unit_id: unit,
        status: if problems.is_empty() {
            PollStatus::Ok
        } else {
            PollStatus::Partial
        },
        identity: ident.identity,
        blocks,
        problems,
        profile: profile.map(|p| p.name.clone()),
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
