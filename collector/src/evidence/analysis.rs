//! What a pack's envelopes prove, computed from verified envelopes only. The builder writes
//! it as `report.json` (and renders `report.html` from it); `evidence verify` computes it again
//! from the pack and compares, so a report cannot say anything its envelopes do not.
//!
//! - **Inventory**: every CI the period's summaries observed (field devices and gateways), with
//!   its last identity and status.
//! - **Monitoring intervals** (CIP-010 R2.1): per CI, the longest time between consecutive
//!   *checks* (observations where it answered), and the uncovered time from the period's start
//!   to its first check and from its last check to the period's end; each at most 35 days.
//! - **Gaps and chain breaks**: the discontinuities the chain judgement finds, and the agents'
//!   own signed `data_lost` notices.
//! - **Segmentation probes** (IEC 62443-3-3 SR 5.1/5.2): per agent and target, the signed probe
//!   rounds' results (`segmentation.rs`).
//! - **CIP-010 R1.1 baseline items** per CI, as far as Modbus identification and host facts
//!   carry them; `null` means "not collected", never "none".

use std::collections::BTreeMap;

use outpost_proto::EnvelopeHeader;
use outpost_proto::ZoneId;
use outpost_proto::model::{Body, Endpoint, HostFacts, HostList, PollStatus};
use serde::Serialize;

use super::MONITORING_LIMIT_MS;
use super::collect::IndexRow;
use crate::audit::Discontinuity;
use crate::cmdb::attributes::status_name;
use crate::cmdb::ci_key;
use crate::cmdb::gateway_facts;
use crate::time::rfc3339;

/// `report.json`'s schema name.
pub const SCHEMA: &str = "outpost.evidence.report.v1";

/// One envelope whose signature verified against the pack's keys.
pub struct Sealed<'a> {
    pub row: &'a IndexRow,
    pub header: &'a EnvelopeHeader,
    pub body: &'a Body,
}

/// The period a pack covers.
#[derive(Debug, Clone)]
pub struct Period {
    pub zone: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// `min(to, pack creation)`: the end the monitoring intervals are measured to.
    pub end_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub schema: &'static str,
    pub zone: String,
    pub from: String,
    pub from_ms: i64,
    pub to: String,
    pub to_ms: i64,
    pub end_ms: i64,
    pub envelopes: u64,
    pub by_kind: BTreeMap<String, u64>,
    pub agents: Vec<AgentPeriod>,
    pub discontinuities: Vec<Discontinuity>,
    pub data_lost: Vec<Lost>,
    pub key_handovers: Vec<HandoverSeen>,
    pub inventory: Vec<Ci>,
    pub monitoring: Monitoring,
    /// Segmentation probe rounds in the period (absent when there were none).
    #[serde(skip_serializing_if = "super::segmentation::Segmentation::is_empty")]
    pub segmentation: super::segmentation::Segmentation,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentPeriod {
    pub agent_id: String,
    pub envelopes: u64,
    pub summaries: u64,
    pub first_seq: i64,
    pub last_seq: i64,
    pub first_time: String,
    pub last_time: String,
    pub keys_used: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Lost {
    pub agent_id: String,
    pub seq: u64,
    pub from_seq: u64,
    pub to_seq: u64,
    pub dropped: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HandoverSeen {
    pub agent_id: String,
    pub seq: u64,
    pub old_key_id: String,
    pub new_key_id: String,
}

/// CIP-010 R1.1 baseline items of one CI; `None` = not collected.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cip010Items {
    /// R1.1.1 operating system or firmware.
    pub os_firmware: Option<String>,
    /// R1.1.2 commercially available or open-source software.
    pub software: Option<String>,
    /// R1.1.3 custom software.
    pub custom_software: Option<String>,
    /// R1.1.4 logical network-accessible ports.
    pub ports: Option<String>,
    /// R1.1.5 security patches applied.
    pub patches: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ci {
    pub ci_key: String,
    /// `field_device` or `gateway`.
    pub class: &'static str,
    pub agent_id: String,
    pub name: String,
    pub endpoint: Option<String>,
    pub unit_id: Option<u8>,
    /// Last identity read (FC 43 objects, or host facts for a gateway).
    pub identity: BTreeMap<String, String>,
    pub last_status: String,
    /// Summaries that listed it.
    pub observations: u64,
    /// Observations where it answered (its configuration was read).
    pub checks: u64,
    pub first_check: Option<String>,
    pub last_check: Option<String>,
    /// Longest time between consecutive checks.
    pub max_gap_ms: Option<i64>,
    /// From the period's start to the first check (the whole period when never checked).
    pub leading_ms: i64,
    /// From the last check to the period's end.
    pub trailing_ms: i64,
    /// All three at most 35 days.
    pub within_limit: bool,
    pub cip010: Cip010Items,
}

#[derive(Debug, Clone, Serialize)]
pub struct Monitoring {
    pub limit_days: u32,
    pub limit_ms: i64,
    pub cis: u64,
    pub cis_within_limit: u64,
    /// CI keys whose intervals exceed the limit.
    pub outside_limit: Vec<String>,
}

#[derive(Default)]
struct CiAcc {
    class: &'static str,
    agent_id: String,
    name: String,
    endpoint: Option<String>,
    unit_id: Option<u8>,
    identity: BTreeMap<String, String>,
    last_status: String,
    observations: u64,
    checks: Vec<i64>,
    cip010: Cip010Items,
}

/// Computes the analysis of `envelopes` (in pack order) for `period`.
pub fn analyse(
    period: &Period,
    envelopes: &[Sealed<'_>],
    discontinuities: &[Discontinuity],
) -> Analysis {
    let mut by_kind = BTreeMap::new();
    let mut agents: BTreeMap<String, AgentPeriod> = BTreeMap::new();
    let mut cis: BTreeMap<String, CiAcc> = BTreeMap::new();
    let mut data_lost = Vec::new();
    let mut key_handovers = Vec::new();
    let mut probes = super::segmentation::Acc::default();
    for e in envelopes {
        *by_kind.entry(e.body.kind().to_owned()).or_insert(0u64) += 1;
        let time = i64::try_from(e.header.time_ms).unwrap_or(i64::MAX);
        let agent = e.header.agent.to_string();
        let a = agents.entry(agent.clone()).or_insert_with(|| AgentPeriod {
            agent_id: agent.clone(),
            envelopes: 0,
            summaries: 0,
            first_seq: e.row.seq,
            last_seq: e.row.seq,
            first_time: rfc3339(time),
            last_time: rfc3339(time),
            keys_used: Vec::new(),
        });
        a.envelopes += 1;
        a.last_seq = e.row.seq;
        a.last_time = rfc3339(time);
        let key = e.header.key_id.to_string();
        if !a.keys_used.contains(&key) {
            a.keys_used.push(key);
        }
        match e.body {
            Body::Summary(s) => {
                a.summaries += 1;
                for obs in &s.assets {
                    let ci = ci_key::asset(&e.header.zone, &obs.endpoint, obs.unit_id);
                    let acc = cis.entry(ci).or_default();
                    acc.class = "field_device";
                    acc.agent_id = agent.clone();
                    acc.name = obs.name.clone();
                    acc.endpoint = Some(obs.endpoint.to_string());
                    acc.unit_id = Some(obs.unit_id);
                    acc.last_status = status_name(&obs.status).to_owned();
                    acc.observations += 1;
                    if !matches!(obs.status, PollStatus::Unreachable(_)) {
                        acc.checks.push(time);
                        let id: BTreeMap<String, String> = obs
                            .identity
                            .fields()
                            .into_iter()
                            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned())))
                            .collect();
                        if !id.is_empty() {
                            acc.identity = id;
                        }
                        acc.cip010 = device_items(&acc.identity, &obs.endpoint);
                    }
                }
                let ci = ci_key::gateway(agent.as_str());
                let acc = cis.entry(ci).or_default();
                acc.class = "gateway";
                acc.agent_id = agent.clone();
                acc.observations += 1;
                match &s.gateway {
                    Some(g) => {
                        acc.name = g.hostname.clone().unwrap_or_else(|| agent.clone());
                        acc.last_status = "ok".to_owned();
                        acc.checks.push(time);
                        acc.identity = gateway_identity(g);
                        acc.cip010 = gateway_items(g);
                    }
                    None => {
                        if acc.name.is_empty() {
                            acc.name = agent.clone();
                        }
                        acc.last_status = "host_facts_missing".to_owned();
                    }
                }
            }
            Body::DataLost(d) => data_lost.push(Lost {
                agent_id: agent.clone(),
                seq: e.header.seq,
                from_seq: d.from_seq,
                to_seq: d.to_seq,
                dropped: d.dropped,
                reason: d.reason.clone(),
            }),
            Body::KeyHandover(k) => key_handovers.push(HandoverSeen {
                agent_id: agent.clone(),
                seq: e.header.seq,
                old_key_id: k.old_key_id.to_string(),
                new_key_id: k.new_key_id.to_string(),
            }),
            Body::Probes(r) => probes.round(&agent, time, r),
            Body::Heartbeat(_) | Body::Changes(_) => {}
        }
    }
    let inventory: Vec<Ci> = cis
        .into_iter()
        .map(|(ci_key, acc)| finish_ci(ci_key, acc, period))
        .collect();
    let outside_limit: Vec<String> = inventory
        .iter()
        .filter(|c| !c.within_limit)
        .map(|c| c.ci_key.clone())
        .collect();
    let monitoring = Monitoring {
        limit_days: 35,
        limit_ms: MONITORING_LIMIT_MS,
        cis: inventory.len() as u64,
        cis_within_limit: (inventory.len() - outside_limit.len()) as u64,
        outside_limit,
    };
    Analysis {
        schema: SCHEMA,
        zone: period.zone.clone(),
        from: rfc3339(period.from_ms),
        from_ms: period.from_ms,
        to: rfc3339(period.to_ms),
        to_ms: period.to_ms,
        end_ms: period.end_ms,
        envelopes: envelopes.len() as u64,
        by_kind,
        agents: agents.into_values().collect(),
        discontinuities: discontinuities.to_vec(),
        data_lost,
        key_handovers,
        inventory,
        monitoring,
        segmentation: probes.finish(),
    }
}

fn finish_ci(ci_key: String, mut acc: CiAcc, period: &Period) -> Ci {
    acc.checks.sort_unstable();
    let max_gap_ms = acc.checks.windows(2).map(|w| w[1] - w[0]).max();
    let (leading_ms, trailing_ms) = match (acc.checks.first(), acc.checks.last()) {
        (Some(first), Some(last)) => (
            (first - period.from_ms).max(0),
            (period.end_ms - last).max(0),
        ),
        _ => ((period.end_ms - period.from_ms).max(0), 0),
    };
    let within_limit = !acc.checks.is_empty()
        && max_gap_ms.unwrap_or(0) <= MONITORING_LIMIT_MS
        && leading_ms <= MONITORING_LIMIT_MS
        && trailing_ms <= MONITORING_LIMIT_MS;
    Ci {
        ci_key,
        class: acc.class,
        agent_id: acc.agent_id,
        name: acc.name,
        endpoint: acc.endpoint,
        unit_id: acc.unit_id,
        identity: acc.identity,
        last_status: acc.last_status,
        observations: acc.observations,
        checks: acc.checks.len() as u64,
        first_check: acc.checks.first().map(|t| rfc3339(*t)),
        last_check: acc.checks.last().map(|t| rfc3339(*t)),
        max_gap_ms,
        leading_ms,
        trailing_ms,
        within_limit,
        cip010: acc.cip010,
    }
}

fn device_items(identity: &BTreeMap<String, String>, endpoint: &Endpoint) -> Cip010Items {
    let get = |k: &str| identity.get(k).cloned();
    let os_firmware = get("revision").map(|rev| {
        let what: Vec<String> = [get("vendor_name"), get("product_code")]
            .into_iter()
            .flatten()
            .collect();
        if what.is_empty() {
            format!("firmware {rev}")
        } else {
            format!("{} firmware {rev}", what.join(" "))
        }
    });
    let ports = Some(match endpoint {
        Endpoint::Tcp { port, .. } => {
            format!("tcp/{port} (Modbus TCP, answering); a full port scan is not collected")
        }
        Endpoint::Rtu { device } => format!("none: serial Modbus RTU on {device}"),
    });
    Cip010Items {
        os_firmware,
        software: None,
        custom_software: get("user_application_name"),
        ports,
        patches: None,
    }
}

fn gateway_identity(g: &HostFacts) -> BTreeMap<String, String> {
    let mut id = BTreeMap::new();
    let mut put = |k: &str, v: Option<&String>| {
        if let Some(v) = v {
            id.insert(k.to_owned(), v.clone());
        }
    };
    put("hostname", g.hostname.as_ref());
    put("os_name", g.os_name.as_ref());
    put("os_version", g.os_version.as_ref());
    put("kernel_version", g.kernel_version.as_ref());
    put("cpu_arch", Some(&g.cpu_arch));
    put("agent_version", Some(&g.agent_version));
    id
}

fn gateway_items(g: &HostFacts) -> Cip010Items {
    let os: Vec<&str> = [g.os_name.as_deref(), g.os_version.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let os_firmware = match (os.is_empty(), &g.kernel_version) {
        (true, None) => None,
        (false, None) => Some(os.join(" ")),
        (true, Some(k)) => Some(format!("kernel {k}")),
        (false, Some(k)) => Some(format!("{} (kernel {k})", os.join(" "))),
    };
    Cip010Items {
        os_firmware,
        software: Some(gateway_software(g)),
        custom_software: None,
        ports: gateway_ports(g),
        patches: None,
    }
}

/// R1.1.2 for a gateway: the agent, and the distinct program executables it saw running
/// (when it collected them; an older agent or `[gateway] processes = false` lists none).
fn gateway_software(g: &HostFacts) -> String {
    let agent = format!("outpost-agent {}", g.agent_version);
    if g.switched_off.contains(&HostList::Executables) {
        return format!(
            "{agent}; running programs not collected (switched off in the agent's [gateway] config)"
        );
    }
    if !gateway_facts::collected(g) {
        return agent;
    }
    let programs: Vec<String> = g
        .executables
        .iter()
        .map(|e| match &e.exe {
            Some(path) => path.clone(),
            None => format!("{} (path not visible)", e.name),
        })
        .collect();
    let cut = if g.truncated.contains(&HostList::Executables) {
        " (list cut at its cap)"
    } else {
        ""
    };
    format!("{agent}; running programs{cut}: {}", programs.join(", "))
}

/// R1.1.4 for a gateway: its listening TCP and unconnected UDP sockets with their owners, when
/// the agent collected them (`None` = not collected).
fn gateway_ports(g: &HostFacts) -> Option<String> {
    if g.switched_off.contains(&HostList::Listening) || !gateway_facts::collected(g) {
        return None;
    }
    if g.listening.is_empty() {
        return Some("none listening".into());
    }
    let ports: Vec<String> = g
        .listening
        .iter()
        .map(|s| {
            let owner = s.exe.as_deref().unwrap_or("owner not visible");
            let address = if s.address.contains(':') {
                format!("[{}]", s.address)
            } else {
                s.address.clone()
            };
            format!("{} {address}:{} ({owner})", s.protocol.as_str(), s.port)
        })
        .collect();
    let cut = if g.truncated.contains(&HostList::Listening) {
        " (list cut at its cap)"
    } else {
        ""
    };
    Some(format!("{}{cut}", ports.join(", ")))
}

/// The zone id the period names, validated (an invalid zone can have no envelopes).
pub fn zone_id(zone: &str) -> Option<ZoneId> {
    ZoneId::new(zone).ok()
}
