//! A test "engineering workstation": the one thing in the test bed that writes to a device, the
//! way a real engineering tool would (FC 6 over Modbus TCP). Demos, end-to-end tests and the
//! drift benchmark use it to cause the changes Outpost must detect.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_modbus::client::Writer as _;

/// How long a connect or a write may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Writes one holding register (FC 6) on `unit` at `addr`.
pub async fn write_register(
    addr: SocketAddr,
    unit: u8,
    register: u16,
    value: u16,
) -> Result<(), String> {
    let mut ctx = tokio::time::timeout(
        TIMEOUT,
        tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(unit)),
    )
    .await
    .map_err(|_| format!("engineering workstation: connect to {addr} timed out"))?
    .map_err(|e| format!("engineering workstation: connect to {addr} failed: {e}"))?;
    tokio::time::timeout(TIMEOUT, ctx.write_single_register(register, value))
        .await
        .map_err(|_| format!("engineering workstation: write to {addr} timed out"))?
        .map_err(|e| format!("engineering workstation: write to {addr} failed: {e}"))?
        .map_err(|e| format!("engineering workstation: {addr} refused the write: {e}"))
}

/// [`write_register`] from synchronous code (its own single-threaded runtime).
pub fn write_register_blocking(
    addr: SocketAddr,
    unit: u8,
    register: u16,
    value: u16,
) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("engineering workstation: no runtime: {e}"))?
        .block_on(write_register(addr, unit, register, value))
}
