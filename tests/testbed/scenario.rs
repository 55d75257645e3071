//! Agent configurations for a running simulated plant: what the demo, the end-to-end tests and
//! the benchmarks hand to a real agent.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::sim::SimDevice;

/// What an agent config for a plant needs besides the plant itself.
#[derive(Debug, Clone)]
pub struct AgentSetup<'a> {
    pub agent_id: &'a str,
    pub zone: &'a str,
    pub state_dir: &'a Path,
    pub key_file: &'a Path,
    pub diode_target: SocketAddr,
    pub poll_interval: Duration,
    pub request_timeout: Duration,
    pub min_request_gap: Duration,
    /// Also poll each device's process input block, marked `volatile = true` (its values change
    /// on every read: never judged as drift).
    pub volatile_process: bool,
    /// Collect the gateway's listening sockets and running executables (`[gateway]`). Off by
    /// default: other processes on a test machine open and close sockets, which would make
    /// assertions about gateway alerts flaky. The benchmark and `e2e_gateway` switch it on.
    pub gateway_inventory: bool,
}

impl<'a> AgentSetup<'a> {
    /// Test-friendly defaults: 1 s polls, 1 s request timeout (generous: CI machines are loaded), 5 ms
    /// between requests.
    pub fn new(
        agent_id: &'a str,
        zone: &'a str,
        state_dir: &'a Path,
        key_file: &'a Path,
        diode_target: SocketAddr,
    ) -> Self {
        Self {
            agent_id,
            zone,
            state_dir,
            key_file,
            diode_target,
            poll_interval: Duration::from_secs(1),
            request_timeout: Duration::from_millis(1000),
            min_request_gap: Duration::from_millis(5),
            volatile_process: false,
            gateway_inventory: false,
        }
    }
}

/// Block name under which the holding registers starting at `start` are configured: these
/// are the configuration registers a drift shows up in.
pub fn config_block_name(start: u16) -> String {
    format!("config-{start}")
}

/// What an agent config needs to know of one simulated device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlantDevice {
    pub name: String,
    pub addr: SocketAddr,
    pub unit_ids: Vec<u8>,
    /// Holding-register blocks: (start, count).
    pub holding: Vec<(u16, usize)>,
    /// Input-register (process value) blocks: (start, count).
    pub process: Vec<(u16, usize)>,
}

impl From<&SimDevice> for PlantDevice {
    fn from(d: &SimDevice) -> Self {
        Self {
            name: d.name.clone(),
            addr: d.addr,
            unit_ids: d.unit_ids.clone(),
            holding: d.spec.holding.iter().map(|(a, v)| (*a, v.len())).collect(),
            process: d.spec.input.iter().map(|(a, v)| (*a, v.len())).collect(),
        }
    }
}

/// Reads the devices from `outpost-sim`'s JSON document (its `--json` output or ready file).
pub fn devices_from_sim_json(doc: &Value) -> Result<Vec<PlantDevice>, String> {
    let devices = doc["devices"]
        .as_array()
        .ok_or("simulator JSON has no \"devices\" array")?;
    devices
        .iter()
        .map(|d| {
            let name = d["name"]
                .as_str()
                .ok_or("device without a name")?
                .to_owned();
            let addr = d["address"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("device {name}: no valid address"))?;
            let unit_ids = d["unit_ids"]
                .as_array()
                .map(|u| {
                    u.iter()
                        .filter_map(|x| x.as_u64().and_then(|x| u8::try_from(x).ok()))
                        .collect()
                })
                .ok_or_else(|| format!("device {name}: no unit_ids"))?;
            let blocks_of = |kind: &str| -> Vec<(u16, usize)> {
                d["blocks"]
                    .as_array()
                    .map(|blocks| {
                        blocks
                            .iter()
                            .filter(|b| b["kind"] == kind)
                            .filter_map(|b| {
                                let start = u16::try_from(b["start"].as_u64()?).ok()?;
                                let count = usize::try_from(b["count"].as_u64()?).ok()?;
                                Some((start, count))
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            Ok(PlantDevice {
                name,
                addr,
                unit_ids,
                holding: blocks_of("holding"),
                process: blocks_of("input"),
            })
        })
        .collect()
}

/// The agent TOML polling every device of the plant: identity plus each holding-register block
/// (configuration). Input registers are process values that change every read, so they are
/// left out, as an engineer would.
pub fn agent_config(setup: &AgentSetup<'_>, devices: &[PlantDevice]) -> String {
    let mut t = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(t, "agent_id = {:?}", setup.agent_id);
    let _ = writeln!(t, "zone = {:?}", setup.zone);
    let _ = writeln!(t, "state_dir = {:?}", setup.state_dir.display().to_string());
    let _ = writeln!(t, "key_file = {:?}", setup.key_file.display().to_string());
    let _ = writeln!(
        t,
        "poll_interval = \"{}ms\"",
        setup.poll_interval.as_millis()
    );
    let _ = writeln!(t, "\n[diode]\ntarget = \"{}\"", setup.diode_target);
    let _ = writeln!(
        t,
        "\n[modbus]\nconnect_timeout = \"{}ms\"\nrequest_timeout = \"{}ms\"\nmin_request_gap = \"{}ms\"\nmax_parallel_devices = 16",
        setup.request_timeout.as_millis(),
        setup.request_timeout.as_millis(),
        setup.min_request_gap.as_millis()
    );
    let _ = writeln!(
        t,
        "\n[gateway]\nlistening = {0}\nprocesses = {0}",
        setup.gateway_inventory
    );
    for d in devices {
        let _ = writeln!(
            t,
            "\n[[devices]]\nname = {:?}\naddress = \"{}\"",
            d.name, d.addr
        );
        let units: Vec<String> = d.unit_ids.iter().map(u8::to_string).collect();
        let _ = writeln!(t, "unit_ids = [{}]", units.join(", "));
        for (start, count) in &d.holding {
            let _ = writeln!(
                t,
                "[[devices.blocks]]\nname = {:?}\nkind = \"holding\"\nstart = {start}\ncount = {}",
                config_block_name(*start),
                (*count).min(125)
            );
        }
        if setup.volatile_process {
            for (start, count) in &d.process {
                let _ = writeln!(
                    t,
                    "[[devices.blocks]]\nname = \"process-{start}\"\nkind = \"input\"\nstart = {start}\ncount = {}\nvolatile = true",
                    (*count).min(125)
                );
            }
        }
    }
    t
}
