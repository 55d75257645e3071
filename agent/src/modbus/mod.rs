//! Modbus TCP: the read-only client, device identification, and polling one device.

pub mod identify;
pub mod poll;
pub mod read_only;
