//! Modbus TCP and RTU: the read-only client, device identification, polling one device, and
//! polling serial buses.

pub mod bus;
pub mod identify;
pub mod poll;
pub mod read_only;
pub mod serial;
