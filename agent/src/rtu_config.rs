//! `[[serial_bus]]`: Modbus RTU buses (RS-485 lines on the gateway) and the devices on them.
//!
//! ```toml
//! [[serial_bus]]
//! path = "/dev/ttyRS485-1"
//! baud = 19200          # default 19200
//! parity = "even"       # none | even | odd; default even (the Modbus serial default)
//! data_bits = 8         # 7 or 8; default 8
//! stop_bits = 1         # 1 or 2; default 1
//! timeout = "500ms"     # per request; default 1s
//! # frame_gap = "4ms"   # default: the Modbus minimum (below)
//!
//! [[serial_bus.device]]
//! name = "dosing-pump-3"
//! unit = 3              # 1-247; 0 (broadcast) is refused
//! blocks = [ { name = "setpoints", kind = "holding", start = 0, count = 8 } ]
//! ```
//!
//! Timing rule (Modbus over Serial Line V1.02, 2.5.1.1): frames are separated by at least
//! 3.5 character times of silence. A character is 1 start bit + `data_bits` + a parity bit
//! (none: 0) + `stop_bits`, so at 9600 baud 8E1 (11 bits) the gap is 3.5 × 11 / 9600 = 4.0 ms.
//! Above 19,200 baud the gap is fixed at 1.75 ms. That is both the default and the minimum of
//! `frame_gap`; a longer gap may be configured for slow devices.
//!
//! Names share one namespace with `[[devices]]` (the checks are done by `config.rs`); unit ids
//! must be unique per bus, bus paths unique per agent.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{BlockConfig, check_blocks, check_name};

/// Highest unit id a serial device may have (248–255 are reserved on a serial line).
pub const MAX_RTU_UNIT: u8 = 247;
/// The fixed inter-frame gap above 19,200 baud.
pub const FAST_FRAME_GAP: Duration = Duration::from_micros(1750);

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// One validated serial bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialBusConfig {
    pub path: String,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
    /// How long to wait for each answer.
    pub timeout: Duration,
    /// Silence kept between the end of one exchange and the next request.
    pub frame_gap: Duration,
    pub devices: Vec<RtuDeviceConfig>,
}

/// One device on a serial bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtuDeviceConfig {
    pub name: String,
    pub unit: u8,
    pub blocks: Vec<BlockConfig>,
}

/// The Modbus minimum silence between frames: 3.5 character times, 1.75 ms above 19,200 baud.
pub fn min_frame_gap(baud: u32, parity: Parity, data_bits: u8, stop_bits: u8) -> Duration {
    if baud > 19_200 || baud == 0 {
        return FAST_FRAME_GAP;
    }
    let parity_bits = u64::from(parity != Parity::None);
    let bits = 1 + u64::from(data_bits) + parity_bits + u64::from(stop_bits);
    // 3.5 × bits / baud seconds, in nanoseconds, rounded up.
    let nanos = (35 * bits * 1_000_000_000).div_ceil(10 * u64::from(baud));
    Duration::from_nanos(nanos)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSerialBus {
    path: String,
    #[serde(default = "default_baud")]
    baud: u32,
    #[serde(default = "default_parity")]
    parity: Parity,
    #[serde(default = "default_data_bits")]
    data_bits: u8,
    #[serde(default = "default_stop_bits")]
    stop_bits: u8,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default, with = "humantime_serde")]
    frame_gap: Option<Duration>,
    #[serde(default)]
    device: Vec<RawRtuDevice>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRtuDevice {
    name: String,
    unit: u8,
    #[serde(default)]
    blocks: Vec<BlockConfig>,
}

fn default_baud() -> u32 {
    19_200
}
fn default_parity() -> Parity {
    Parity::Even
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}

/// Validates the buses; `names` holds the device names already taken (and receives these).
/// Names and blocks go through config.rs's own checks, so the rules stay one.
pub(crate) fn validate(
    raw: Vec<RawSerialBus>,
    names: &mut HashSet<String>,
    mut problem: &mut dyn FnMut(String, String),
) -> Vec<SerialBusConfig> {
    let mut buses = Vec::with_capacity(raw.len());
    let mut paths = HashSet::new();
    for (i, b) in raw.into_iter().enumerate() {
        let at = format!("serial_bus[{i}]");
        let path = b.path.trim().to_owned();
        if path.is_empty() {
            problem(
                format!("{at}.path"),
                "is empty; name the serial device, e.g. \"/dev/ttyUSB0\"".into(),
            );
        } else if !path.starts_with('/') {
            problem(
                format!("{at}.path"),
                format!("{path:?} is not an absolute path; write e.g. \"/dev/ttyRS485-1\""),
            );
        } else if !paths.insert(path.clone()) {
            problem(
                format!("{at}.path"),
                format!(
                    "{path:?} is used by an earlier bus; one bus per port (one master per line)"
                ),
            );
        }
        if !(300..=4_000_000).contains(&b.baud) {
            problem(
                format!("{at}.baud"),
                format!("{} is outside 300..=4000000", b.baud),
            );
        }
        if !matches!(b.data_bits, 7 | 8) {
            problem(
                format!("{at}.data_bits"),
                format!("{} is not 7 or 8 (Modbus RTU uses 8)", b.data_bits),
            );
        }
        if !matches!(b.stop_bits, 1 | 2) {
            problem(
                format!("{at}.stop_bits"),
                format!("{} is not 1 or 2", b.stop_bits),
            );
        }
        if b.timeout.is_zero() {
            problem(format!("{at}.timeout"), "must be longer than 0s".into());
        }
        let min_gap = min_frame_gap(b.baud, b.parity, b.data_bits, b.stop_bits);
        let frame_gap = match b.frame_gap {
            None => min_gap,
            Some(g) if g < min_gap => {
                problem(
                    format!("{at}.frame_gap"),
                    format!(
                        "{} is shorter than 3.5 character times at {} baud ({}); leave it out \
                         for the minimum",
                        humantime::format_duration(g),
                        b.baud,
                        humantime::format_duration(min_gap)
                    ),
                );
                min_gap
            }
            Some(g) if g > Duration::from_secs(1) => {
                problem(format!("{at}.frame_gap"), "is above 1s".into());
                g
            }
            Some(g) => g,
        };
        if b.device.is_empty() {
            problem(
                format!("{at}.device"),
                "no [[serial_bus.device]] on this bus; add one or remove the bus".into(),
            );
        }
        let mut units = HashSet::new();
        let mut devices = Vec::with_capacity(b.device.len());
        for (j, d) in b.device.into_iter().enumerate() {
            let at = format!("{at}.device[{j}]");
            if let Err(why) = check_name(&d.name) {
                problem(format!("{at}.name"), why);
            } else if !names.insert(d.name.clone()) {
                problem(
                    format!("{at}.name"),
                    format!(
                        "{:?} is used by an earlier device; device names must be unique",
                        d.name
                    ),
                );
            }
            if d.unit == 0 {
                problem(
                    format!("{at}.unit"),
                    "0 is the Modbus broadcast address and is never polled; use the device's \
                     unit id (1-247)"
                        .into(),
                );
            } else if d.unit > MAX_RTU_UNIT {
                problem(
                    format!("{at}.unit"),
                    format!(
                        "{} is above 247; 248-255 are reserved on a serial line",
                        d.unit
                    ),
                );
            } else if !units.insert(d.unit) {
                problem(
                    format!("{at}.unit"),
                    format!(
                        "{} is used by an earlier device on this bus; unit ids are unique per bus",
                        d.unit
                    ),
                );
            }
            check_blocks(&at, &d.blocks, &mut problem);
            devices.push(RtuDeviceConfig {
                name: d.name,
                unit: d.unit,
                blocks: d.blocks,
            });
        }
        buses.push(SerialBusConfig {
            path,
            baud: b.baud,
            parity: b.parity,
            data_bits: b.data_bits,
            stop_bits: b.stop_bits,
            timeout: b.timeout,
            frame_gap,
            devices,
        });
    }
    buses
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    const HEAD: &str = "agent_id = \"gw\"\nzone = \"z\"\nstate_dir = \"s\"\nkey_file = \"k\"\n\
                        [diode]\ntarget = \"127.0.0.1:7000\"\n";

    fn parse(tail: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{HEAD}{tail}"), "agent.toml")
    }

    fn problems(tail: &str) -> String {
        match parse(tail) {
            Ok(_) => panic!("accepted: {tail}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_serial_only_config_is_accepted_with_defaults() {
        let c = parse(
            "[[serial_bus]]\npath = \"/dev/ttyRS485-1\"\n\
             [[serial_bus.device]]\nname = \"pump\"\nunit = 3\n\
             blocks = [ { name = \"sp\", kind = \"holding\", start = 0, count = 8 } ]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.devices.is_empty());
        let b = &c.serial_buses[0];
        assert_eq!(b.path, "/dev/ttyRS485-1");
        assert_eq!(
            (b.baud, b.parity, b.data_bits, b.stop_bits),
            (19_200, Parity::Even, 8, 1)
        );
        assert_eq!(b.timeout, Duration::from_secs(1));
        // 19200 8E1: 3.5 × 11 / 19200 s.
        assert_eq!(b.frame_gap.as_micros(), 2005);
        assert_eq!(b.devices[0].unit, 3);
        assert_eq!(c.asset_count(), 1);
    }

    #[test]
    fn bad_serial_values_are_refused_by_field() {
        let why = problems(
            "[[devices]]\nname = \"pump\"\naddress = \"10.0.0.1\"\n\
             [[serial_bus]]\npath = \"ttyUSB0\"\nbaud = 9600\nframe_gap = \"1ms\"\n\
             data_bits = 6\nstop_bits = 3\n\
             [[serial_bus.device]]\nname = \"pump\"\nunit = 0\n\
             [[serial_bus.device]]\nname = \"b\"\nunit = 248\n\
             [[serial_bus.device]]\nname = \"c\"\nunit = 5\n\
             [[serial_bus.device]]\nname = \"d\"\nunit = 5\n\
             [[serial_bus]]\npath = \"/dev/x\"\n",
        );
        for needle in [
            "serial_bus[0].path: \"ttyUSB0\" is not an absolute path",
            "serial_bus[0].frame_gap: 1ms is shorter than 3.5 character times at 9600 baud",
            "serial_bus[0].data_bits: 6 is not 7 or 8",
            "serial_bus[0].stop_bits: 3 is not 1 or 2",
            "serial_bus[0].device[0].name: \"pump\" is used by an earlier device",
            "serial_bus[0].device[0].unit: 0 is the Modbus broadcast address",
            "serial_bus[0].device[1].unit: 248 is above 247",
            "serial_bus[0].device[3].unit: 5 is used by an earlier device on this bus",
            "serial_bus[1].device: no [[serial_bus.device]] on this bus",
        ] {
            assert!(why.contains(needle), "missing {needle:?} in:\n{why}");
        }
        assert!(why.starts_with("agent.toml: "), "{why}");
    }

    #[test]
    fn unknown_serial_keys_and_duplicate_paths_are_refused() {
        let why = problems("[[serial_bus]]\npath = \"/dev/x\"\nbaudrate = 9600\n");
        assert!(why.contains("unknown field `baudrate`"), "{why}");
        let why = problems(
            "[[serial_bus]]\npath = \"/dev/x\"\n[[serial_bus.device]]\nname = \"a\"\nunit = 1\n\
             [[serial_bus]]\npath = \"/dev/x\"\n[[serial_bus.device]]\nname = \"b\"\nunit = 1\n",
        );
        assert!(
            why.contains("serial_bus[1].path: \"/dev/x\" is used by an earlier bus"),
            "{why}"
        );
    }

    #[test]
    fn frame_gap_is_three_and_a_half_characters_then_fixed() {
        // 9600 8E1: 11 bits per character, 3.5 × 11 / 9600 s = 4.0104 ms.
        let g = min_frame_gap(9600, Parity::Even, 8, 1);
        assert_eq!(g.as_micros(), 4010);
        // 19200 8N1: 10 bits, 1.8229 ms.
        assert_eq!(min_frame_gap(19_200, Parity::None, 8, 1).as_micros(), 1822);
        // Above 19200: fixed 1.75 ms.
        assert_eq!(min_frame_gap(38_400, Parity::Even, 8, 1), FAST_FRAME_GAP);
        assert_eq!(min_frame_gap(115_200, Parity::None, 8, 2), FAST_FRAME_GAP);
    }
}
