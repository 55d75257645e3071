//! Synthetic but realistic workloads for benchmarks: summaries of N assets shaped like what the
//! agent sends (identity, two register blocks, gateway facts).

use outpost_proto::model::{
    AssetObservation, Body, DeviceIdentity, Endpoint, HostFacts, IdentMethod, NetInterface,
    PollStatus, RegisterBlock, RegisterKind, Summary,
};
use outpost_proto::{AgentId, ZoneId};

/// A summary body with `assets` devices; `round` varies the setpoint values so successive
/// summaries can carry changes.
pub fn summary_body(agent: &AgentId, zone: &ZoneId, assets: usize, round: u64) -> Body {
    let assets = (0..assets)
        .map(|i| {
            let i16v = (i % 65_000) as u16;
            AssetObservation {
                name: format!("device-{i:03}"),
                endpoint: Endpoint::Tcp {
                    host: format!("10.20.{}.{}", i / 250, i % 250 + 1),
                    port: 502,
                },
                unit_id: 1,
                status: PollStatus::Ok,
                identity: DeviceIdentity {
                    method: IdentMethod::ReadDeviceIdentification,
                    vendor_name: Some("Simulated Controls AG".into()),
                    product_code: Some(format!("SC-{}", 100 + i % 7)),
                    revision: Some(format!("V2.{}.{}", i % 4, i % 11)),
                    vendor_url: Some("https://example.invalid/products".into()),
                    product_name: Some("SimPLC compact controller".into()),
                    model_name: Some(format!("SimPLC-{}", 200 + i % 5)),
                    user_application_name: Some(format!("line1-cell{}", i % 9)),
                    other: Default::default(),
                },
                blocks: vec![
                    RegisterBlock::new(
                        "setpoints",
                        RegisterKind::Holding,
                        100,
                        (0..16)
                            .map(|r| i16v.wrapping_add(r) ^ (round as u16))
                            .collect(),
                    ),
                    RegisterBlock::new(
                        "config",
                        RegisterKind::Holding,
                        200,
                        (0..8).map(|r| r * 3 + i16v).collect(),
                    ),
                ],
                problems: vec![],
                profile: None,
                serial: None,
                mac: None,
            }
        })
        .collect();
    Body::Summary(Summary {
        agent: agent.clone(),
        zone: zone.clone(),
        started_ms: 1_700_000_000_000 + round * 1000,
        finished_ms: 1_700_000_000_500 + round * 1000,
        gateway: Some(HostFacts {
            hostname: Some("gw-bench".into()),
            os_name: Some("Debian GNU/Linux".into()),
            os_version: Some("12".into()),
            kernel_version: Some("6.1.0-18-arm64".into()),
            cpu_arch: "aarch64".into(),
            cpu_count: 4,
            memory_bytes: 2 << 30,
            boot_time: 1_699_000_000,
            interfaces: vec![NetInterface {
                name: "eth0".into(),
                mac: Some("02:00:00:00:00:01".into()),
                addresses: vec!["10.20.0.1/24".into()],
            }],
            agent_version: env!("CARGO_PKG_VERSION").into(),
            ..HostFacts::default()
        }),
        assets,
    })
}
