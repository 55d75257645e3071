//! A Modbus TCP plant simulator on tokio-modbus's server.
//!
//! A [`Plant`] runs one TCP listener per [`DeviceSpec`]. Devices answer:
//! - FC 1/2/3/4 from their tables: exception 02 IllegalDataAddress when any address of the
//!   request is unmapped, 03 IllegalDataValue for a quantity outside the spec's limits. Input
//!   registers are process values that change on every read.
//! - FC 43 / MEI 14 Read Device Identification with stream and individual access and paging
//!   (see [`ident`] for the exact semantics), FC 17 Report Server ID.
//! - FC 5/6/15/16 writes, so a test can play the engineering workstation that changes a
//!   setpoint. The agent must never send these; [`Plant::function_codes_seen`] proves it.
//! - Anything else: exception 01 IllegalFunction.
//! - A unit id the device does not serve: exception 0x0B GatewayTargetDeviceFailedToRespond.
//!
//! [`Behaviour`] makes a device silent, slow, busy (exception 06), an old one without FC 43,
//! or one that gets FC 43 wrong in one of the ways of [`Fc43Fault`].
//!
//! [`RtuLine`] serves the same devices over a Modbus RTU serial line (a pty in tests), several
//! unit ids on one line, recording when each request came and was answered.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use outpost_testbed::sim::{Plant, default_plant};
//! let plant = Plant::start_local(default_plant()).await?;
//! for d in plant.devices() {
//!     println!("{} listens on {} (units {:?})", d.name, d.addr, d.unit_ids);
//! }
//! plant.stop().await;
//! # Ok(()) }
//! ```

mod device;
pub mod ident;
mod plant;
mod plants;
mod report;
mod rtu;
mod spec;
mod tables;
mod wire;

pub use plant::{Plant, SimDevice};
pub use plants::{CONFIG_START, PROCESS_START, default_plant, generated_plant, varied_plant};
pub use report::{SCHEMA as DEVICES_SCHEMA, devices_json};
pub use rtu::{LineRequest, RtuLine, rtu_line};
pub use spec::{Behaviour, DeviceSpec, Fc43Fault, MAX_OBJECT_LEN, SimIdentity};
pub use wire::FcSniffer;

/// The read-only function codes an inventory poller may use: 1, 2, 3, 4, 17, 43.
pub const READ_ONLY_FCS: [u8; 6] = [0x01, 0x02, 0x03, 0x04, 0x11, 0x2B];

/// Why a simulator call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("no simulated device #{index}: the plant has {count} devices (0..{count})")]
    NoDevice { index: usize, count: usize },
    #[error("simulated device {device:?} does not serve unit id {unit}")]
    NoUnit { device: String, unit: u8 },
    #[error("simulated device {device:?} unit {unit} has no holding register {addr}")]
    NoRegister { device: String, unit: u8, addr: u16 },
    #[error("bad device spec: {0}")]
    BadSpec(String),
}
