//! Transports that carry sealed envelopes out of the zone: the UDP diode ([`diode`]) and MQTT
//! ([`mqtt`]) with its on-disk store-and-forward [`spool`].

pub mod diode;
pub mod mqtt;
pub mod spool;
