//! Transports that carry sealed envelopes out of the zone. Today: the UDP diode.

pub mod diode;
