//! One simulated device's state and how it answers a decoded request (no IO here).
//!
//! Unit ids: a request for a unit id the device does not serve gets exception 0x0B
//! GatewayTargetDeviceFailedToRespond at once, the way Modbus TCP gateways answer for an
//! absent serial device. That keeps tests fast (no timeouts) and is what a poller meets in
//! the field behind gateways.

use std::collections::BTreeMap;

use tokio_modbus::{ExceptionCode, Request, Response};

use super::ident;
use super::spec::{Behaviour, DeviceSpec, SimIdentity};
use super::tables::{
    MAX_READ_BITS, MAX_READ_REGISTERS, MAX_WRITE_BITS, MAX_WRITE_REGISTERS, ProcessTable, Table,
    UnitTables,
};

/// Longest FC 17 additional data sent (the PDU must stay within 253 bytes).
const MAX_SERVER_ID_DATA: usize = 200;

/// The mutable state of one device.
#[derive(Debug)]
pub struct DeviceState {
    pub identity: SimIdentity,
    pub units: BTreeMap<u8, UnitTables>,
    /// Requests seen on the wire, by function code (counted before decoding).
    pub fc_seen: BTreeMap<u8, u64>,
    /// "Server busy" answers still to give (`Behaviour::Busy`).
    pub busy_left: u32,
}

impl DeviceState {
    pub fn new(spec: &DeviceSpec) -> Self {
        let tables = UnitTables {
            holding: Table::from_blocks(&spec.holding),
            input: ProcessTable::from_blocks(&spec.input),
            coils: Table::from_blocks(&spec.coils),
            discrete: Table::from_blocks(&spec.discrete),
        };
        Self {
            identity: spec.identity.clone(),
            units: spec.unit_ids.iter().map(|u| (*u, tables.clone())).collect(),
            fc_seen: BTreeMap::new(),
            busy_left: match spec.behaviour {
                Behaviour::Busy(n) => n,
                _ => 0,
            },
        }
    }

    /// Answers `request` for `unit` as a device with `behaviour` would (without the delay of
    /// `Slow`, which the server applies). `Ok(None)` means: send nothing.
    pub fn answer(
        &mut self,
        behaviour: Behaviour,
        unit: u8,
        request: &Request<'_>,
    ) -> Result<Option<Response>, ExceptionCode> {
        if behaviour == Behaviour::Silent {
            return Ok(None);
        }
        if self.busy_left > 0 {
            self.busy_left -= 1;
            return Err(ExceptionCode::ServerDeviceBusy);
        }
        let identity = &self.identity;
        let Some(tables) = self.units.get_mut(&unit) else {
            return Err(ExceptionCode::GatewayTargetDevice);
        };
        let response = match request {
            Request::ReadCoils(addr, qty) => {
                Response::ReadCoils(tables.coils.read(*addr, *qty, MAX_READ_BITS)?)
            }
            Request::ReadDiscreteInputs(addr, qty) => {
                Response::ReadDiscreteInputs(tables.discrete.read(*addr, *qty, MAX_READ_BITS)?)
            }
            Request::ReadHoldingRegisters(addr, qty) => Response::ReadHoldingRegisters(
                tables.holding.read(*addr, *qty, MAX_READ_REGISTERS)?,
            ),
            Request::ReadInputRegisters(addr, qty) => {
                Response::ReadInputRegisters(tables.input.read(*addr, *qty)?)
            }
            Request::WriteSingleRegister(addr, value) => {
                tables.holding.write(*addr, &[*value], 1)?;
                Response::WriteSingleRegister(*addr, *value)
            }
            Request::WriteMultipleRegisters(addr, values) => {
                tables.holding.write(*addr, values, MAX_WRITE_REGISTERS)?;
                Response::WriteMultipleRegisters(*addr, quantity(values.len()))
            }
            Request::WriteSingleCoil(addr, value) => {
                tables.coils.write(*addr, &[*value], 1)?;
                Response::WriteSingleCoil(*addr, *value)
            }
            Request::WriteMultipleCoils(addr, values) => {
                tables.coils.write(*addr, values, MAX_WRITE_BITS)?;
                Response::WriteMultipleCoils(*addr, quantity(values.len()))
            }
            Request::ReadDeviceIdentification(code, object) => match behaviour {
                Behaviour::NoDeviceId => return Err(ExceptionCode::IllegalFunction),
                Behaviour::BadFc43(fault) => ident::faulty(identity, fault, *code, *object)?,
                _ => Response::ReadDeviceIdentification(ident::answer(identity, *code, *object)?),
            },
            Request::ReportServerId => {
                let mut data = format!(
                    "{} {} {}",
                    identity.vendor_name, identity.product_code, identity.revision
                )
                .into_bytes();
                data.truncate(MAX_SERVER_ID_DATA);
                report_server_id(unit, data)
            }
            _ => return Err(ExceptionCode::IllegalFunction),
        };
        Ok(Some(response))
    }
}

/// The FC 17 response, encoded by hand: tokio-modbus 0.17.0's server sizes
/// `Response::ReportServerId` one byte short in the MBAP length (it counts 3 + data bytes but
/// writes 4 + data), so clients read a truncated frame. As raw bytes after the function code:
/// byte count, server id, run indicator 0xFF, additional data.
fn report_server_id(server_id: u8, mut data: Vec<u8>) -> Response {
    data.truncate(MAX_SERVER_ID_DATA);
    let mut pdu = Vec::with_capacity(3 + data.len());
    pdu.push(u8::try_from(2 + data.len()).unwrap_or(u8::MAX));
    pdu.push(server_id);
    pdu.push(0xFF);
    pdu.extend_from_slice(&data);
    Response::Custom(0x11, pdu.into())
}

fn quantity(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::default_plant;

    #[test]
    fn unknown_unit_gets_gateway_exception_and_silent_gets_nothing() {
        let spec = &default_plant()[0];
        let mut s = DeviceState::new(spec);
        let req = Request::ReadHoldingRegisters(100, 1);
        assert_eq!(
            s.answer(Behaviour::Normal, 99, &req),
            Err(ExceptionCode::GatewayTargetDevice)
        );
        assert_eq!(
            s.answer(Behaviour::Silent, spec.unit_ids[0], &req),
            Ok(None)
        );
    }

    #[test]
    fn old_devices_refuse_fc43_but_report_server_id() {
        let spec = &default_plant()[0];
        let unit = spec.unit_ids[0];
        let mut s = DeviceState::new(spec);
        let fc43 = Request::ReadDeviceIdentification(tokio_modbus::prelude::ReadCode::Basic, 0);
        assert_eq!(
            s.answer(Behaviour::NoDeviceId, unit, &fc43),
            Err(ExceptionCode::IllegalFunction)
        );
        let Ok(Some(Response::Custom(0x11, pdu))) =
            s.answer(Behaviour::NoDeviceId, unit, &Request::ReportServerId)
        else {
            panic!("FC 17 must answer");
        };
        assert_eq!(usize::from(pdu[0]), pdu.len() - 1);
        assert_eq!((pdu[1], pdu[2]), (unit, 0xFF));
        assert!(String::from_utf8_lossy(&pdu[3..]).contains(&spec.identity.revision));
    }

    #[test]
    fn unsupported_functions_are_illegal() {
        let spec = &default_plant()[0];
        let mut s = DeviceState::new(spec);
        let req = Request::MaskWriteRegister(100, 0, 1);
        assert_eq!(
            s.answer(Behaviour::Normal, spec.unit_ids[0], &req),
            Err(ExceptionCode::IllegalFunction)
        );
    }
}
