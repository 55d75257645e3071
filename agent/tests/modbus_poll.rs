//! Polling real Modbus TCP devices (tokio-modbus servers on 127.0.0.1).

mod common;

use std::time::{Duration, Instant};

use common::{Behaviour, Device, closed_port, start};
use outpost_agent::config::{BlockConfig, DeviceAddress, DeviceConfig};
use outpost_agent::modbus::poll::{poll_device, read_block};
use outpost_agent::modbus::read_only::{ReadOnlyClient, Timing};
use outpost_proto::model::{Endpoint, IdentMethod, PollStatus, RegisterBlock, RegisterKind};
use tokio_modbus::Request;

fn timing() -> Timing {
    Timing {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(300),
        min_request_gap: Duration::from_millis(5),
    }
}

fn block(name: &str, kind: RegisterKind, start: u16, count: u16) -> BlockConfig {
    BlockConfig {
        name: name.into(),
        kind,
        start,
        count,
        volatile: false,
    }
}

fn device(name: &str, addr: std::net::SocketAddr, blocks: Vec<BlockConfig>) -> DeviceConfig {
    DeviceConfig {
        name: name.into(),
        address: DeviceAddress {
            host: addr.ip().to_string(),
            port: addr.port(),
        },
        unit_ids: vec![1],
        blocks,
    }
}

#[tokio::test]
async fn identity_and_registers_from_a_full_device() {
    let dev = start(Device::new(Behaviour::Identity)).await;
    let cfg = device(
        "mixer-plc",
        dev.addr,
        vec![
            block("setpoints", RegisterKind::Holding, 100, 8),
            block("temps", RegisterKind::Input, 0, 4),
            block("outputs", RegisterKind::Coil, 0, 10),
        ],
    );
    let obs = poll_device(&cfg, timing()).await;
    assert_eq!(obs.len(), 1);
    let o = &obs[0];
    assert_eq!(o.status, PollStatus::Ok, "{:?}", o.problems);
    assert!(o.problems.is_empty());
    assert_eq!(o.name, "mixer-plc");
    assert_eq!(o.unit_id, 1);
    assert_eq!(
        o.endpoint,
        Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: dev.addr.port()
        }
    );
    let id = &o.identity;
    assert_eq!(id.method, IdentMethod::ReadDeviceIdentification);
    assert_eq!(id.vendor_name.as_deref(), Some("ACME Automation"));
    assert_eq!(id.product_code.as_deref(), Some("AX-200"));
    assert_eq!(id.revision.as_deref(), Some("v3.2.1"));
    assert_eq!(id.vendor_url.as_deref(), Some("https://acme.example/ax200"));
    assert_eq!(id.product_name.as_deref(), Some("AX Controller"));
    assert_eq!(id.model_name.as_deref(), Some("AX-200-PN"));
    assert_eq!(id.user_application_name.as_deref(), Some("Mixer line 1"));
    assert!(id.other.is_empty());

    assert_eq!(
        o.blocks,
        vec![
            RegisterBlock::new(
                "setpoints",
                RegisterKind::Holding,
                100,
                (1100..1108).collect()
            ),
            RegisterBlock::new("temps", RegisterKind::Input, 0, vec![7, 8, 9, 10]),
            RegisterBlock::new(
                "outputs",
                RegisterKind::Coil,
                0,
                vec![1, 0, 0, 1, 0, 0, 1, 0, 0, 1]
            ),
        ]
    );
    assert!(o.blocks.iter().all(RegisterBlock::hash_is_consistent));

    // Extended first (this device refuses it with exception 03), then Regular paged as 0-1,
    // 2-3, 4-5, 6: FC 43 requests follow next_object_id. Regular holds the basic objects, so
    // Basic is not asked.
    let fc43: Vec<Request<'static>> = dev
        .device
        .requests()
        .into_iter()
        .map(|l| l.request)
        .filter(|r| matches!(r, Request::ReadDeviceIdentification(..)))
        .collect();
    use tokio_modbus::prelude::ReadCode::{Extended, Regular};
    assert_eq!(
        fc43,
        vec![
            Request::ReadDeviceIdentification(Extended, 0),
            Request::ReadDeviceIdentification(Regular, 0),
            Request::ReadDeviceIdentification(Regular, 2),
            Request::ReadDeviceIdentification(Regular, 4),
            Request::ReadDeviceIdentification(Regular, 6),
        ]
    );
    // Only read function codes ever reached the device.
    assert!(dev.device.requests().iter().all(|l| matches!(
        l.request,
        Request::ReadCoils(..)
            | Request::ReadDiscreteInputs(..)
            | Request::ReadHoldingRegisters(..)
            | Request::ReadInputRegisters(..)
            | Request::ReadDeviceIdentification(..)
            | Request::ReportServerId
    )));
}

#[tokio::test]
async fn illegal_function_on_fc43_falls_back_to_fc17() {
    let dev = start(Device::new(Behaviour::NoFc43)).await;
    let cfg = device(
        "legacy",
        dev.addr,
        vec![block("setpoints", RegisterKind::Holding, 100, 2)],
    );
    let obs = poll_device(&cfg, timing()).await;
    let o = &obs[0];
    assert_eq!(o.status, PollStatus::Ok, "{:?}", o.problems);
    assert_eq!(o.identity.method, IdentMethod::ReportServerId);
    assert_eq!(o.identity.vendor_name, None);
    // Server id 0x42, then "LEGACY-PLC 4.1".
    assert_eq!(o.identity.other[&0x80], "424c45474143592d504c4320342e31");
    assert_eq!(o.identity.other[&0x81], "on");
    assert_eq!(o.identity.other[&0x82], "LEGACY-PLC 4.1");
    assert_eq!(o.blocks[0].values, vec![1100, 1101]);
}

#[tokio::test]
async fn basic_only_device_keeps_basic_identity() {
    let dev = start(Device::new(Behaviour::BasicOnly)).await;
    let obs = poll_device(&device("basic", dev.addr, vec![]), timing()).await;
    let o = &obs[0];
    assert_eq!(o.status, PollStatus::Ok, "{:?}", o.problems);
    assert_eq!(o.identity.method, IdentMethod::ReadDeviceIdentification);
    assert_eq!(o.identity.vendor_name.as_deref(), Some("ACME Automation"));
    assert_eq!(o.identity.revision.as_deref(), Some("v3.2.1"));
    assert_eq!(o.identity.product_name, None);
}

#[tokio::test]
async fn paging_loop_is_cut_short_with_a_problem() {
    let dev = start(Device::new(Behaviour::LoopingFc43)).await;
    let obs = poll_device(&device("looper", dev.addr, vec![]), timing()).await;
    let o = &obs[0];
    assert_eq!(o.status, PollStatus::Partial);
    assert_eq!(o.identity.vendor_name.as_deref(), Some("ACME Automation"));
    assert!(
        o.problems
            .iter()
            .any(|p| p.contains("regular stream") && p.contains("stopped to avoid a loop")),
        "{:?}",
        o.problems
    );
    // Extended (refused), one Regular request (the loop is seen on the first answer), then
    // the missing mandatory object 0x02 individually (refused by this device: 03).
    let codes: Vec<Request<'static>> = dev
        .device
        .requests()
        .into_iter()
        .map(|l| l.request)
        .collect();
    use tokio_modbus::prelude::ReadCode::{Extended, Regular, Specific};
    assert_eq!(
        codes[..2],
        [
            Request::ReadDeviceIdentification(Extended, 0),
            Request::ReadDeviceIdentification(Regular, 0),
        ]
    );
    assert!(
        codes[2..]
            .iter()
            .all(|r| matches!(r, Request::ReadDeviceIdentification(Specific, _))),
        "{codes:?}"
    );
    assert!(codes.len() <= 2 + 7);
}

#[tokio::test]
async fn exception_on_a_block_is_partial_with_a_problem_line() {
    let dev = start(Device::new(Behaviour::Identity)).await;
    let cfg = device(
        "mixer-plc",
        dev.addr,
        vec![
            block("setpoints", RegisterKind::Holding, 100, 8),
            block("missing", RegisterKind::Holding, 5000, 2),
            block("temps", RegisterKind::Input, 0, 4),
        ],
    );
    let obs = poll_device(&cfg, timing()).await;
    let o = &obs[0];
    assert_eq!(o.status, PollStatus::Partial);
    assert_eq!(
        o.problems,
        vec!["block missing: exception IllegalDataAddress"]
    );
    let names: Vec<&str> = o.blocks.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, vec!["setpoints", "temps"]);
}

#[tokio::test]
async fn silent_device_is_unreachable_within_a_bounded_time() {
    let dev = start(Device::new(Behaviour::Silent)).await;
    let cfg = device(
        "mute",
        dev.addr,
        (0..10)
            .map(|i| block(&format!("b{i}"), RegisterKind::Holding, i * 10, 2))
            .collect(),
    );
    let t = timing();
    let started = Instant::now();
    let obs = poll_device(&cfg, t).await;
    let took = started.elapsed();
    let o = &obs[0];
    match &o.status {
        PollStatus::Unreachable(why) => {
            assert!(why.contains("3 requests got no answer"), "{why}");
            assert!(why.contains("no answer within 300ms"), "{why}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(o.blocks.is_empty());
    assert_eq!(o.identity, Default::default());
    // Three timeouts, not one per block.
    assert!(took >= t.request_timeout * 3, "{took:?}");
    assert!(
        took < t.request_timeout * 3 + Duration::from_secs(1),
        "{took:?}"
    );
    assert_eq!(dev.device.requests().len(), 3);
}

#[tokio::test]
async fn closed_port_is_unreachable_with_the_reason() {
    let addr = closed_port();
    let mut cfg = device("gone", addr, vec![]);
    cfg.unit_ids = vec![1, 2];
    let obs = poll_device(&cfg, timing()).await;
    assert_eq!(obs.len(), 2);
    for (o, unit) in obs.iter().zip([1, 2]) {
        assert_eq!(o.unit_id, unit);
        match &o.status {
            PollStatus::Unreachable(why) => {
                assert!(why.contains(&addr.to_string()), "{why}");
                assert!(why.contains("refused"), "{why}");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn unresolvable_host_is_unreachable() {
    let mut cfg = device("nowhere", closed_port(), vec![]);
    cfg.address.host = "no-such-host.invalid".into();
    let obs = poll_device(&cfg, timing()).await;
    match &obs[0].status {
        PollStatus::Unreachable(why) => {
            assert!(
                why.contains("cannot resolve host \"no-such-host.invalid\""),
                "{why}"
            )
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn each_unit_id_is_addressed() {
    let dev = start(Device::new(Behaviour::Identity)).await;
    let mut cfg = device(
        "gw",
        dev.addr,
        vec![block("s", RegisterKind::Holding, 100, 1)],
    );
    cfg.unit_ids = vec![3, 7];
    let obs = poll_device(&cfg, timing()).await;
    assert_eq!(
        obs.iter().map(|o| o.unit_id).collect::<Vec<_>>(),
        vec![3, 7]
    );
    let units: Vec<u8> = dev.device.requests().iter().map(|l| l.unit).collect();
    let first7 = units.iter().position(|&u| u == 7).unwrap_or(units.len());
    assert!(
        first7 > 0 && units[..first7].iter().all(|&u| u == 3),
        "{units:?}"
    );
    assert!(units[first7..].iter().all(|&u| u == 7), "{units:?}");
}

#[tokio::test]
async fn large_blocks_are_read_in_legal_chunks() {
    let dev = start(Device::new(Behaviour::Identity)).await;
    let mut client = ReadOnlyClient::connect(dev.addr, 1, timing())
        .await
        .unwrap();
    let values = read_block(&mut client, &block("big", RegisterKind::Holding, 0, 300))
        .await
        .unwrap();
    let expected: Vec<u16> = (0..300u16)
        .map(|i| if (100..108).contains(&i) { 1000 + i } else { i })
        .collect();
    assert_eq!(values, expected);
    let reads: Vec<Request<'static>> = dev
        .device
        .requests()
        .into_iter()
        .map(|l| l.request)
        .collect();
    assert_eq!(
        reads,
        vec![
            Request::ReadHoldingRegisters(0, 125),
            Request::ReadHoldingRegisters(125, 125),
            Request::ReadHoldingRegisters(250, 50),
        ]
    );
}

#[tokio::test]
async fn requests_to_one_device_keep_the_minimum_gap() {
    let dev = start(Device::new(Behaviour::Identity)).await;
    let gap = Duration::from_millis(40);
    let t = Timing {
        min_request_gap: gap,
        ..timing()
    };
    let cfg = device(
        "polite",
        dev.addr,
        vec![
            block("a", RegisterKind::Holding, 100, 2),
            block("b", RegisterKind::Input, 0, 2),
        ],
    );
    poll_device(&cfg, t).await;
    let log = dev.device.requests();
    // FC 43 extended (refused), regular in 4 pages, 2 blocks.
    assert_eq!(log.len(), 7, "{log:?}");
    for pair in log.windows(2) {
        let between = pair[1].at.duration_since(pair[0].at);
        // Measured at the server; allow a little scheduling jitter.
        assert!(between >= gap - Duration::from_millis(5), "{between:?}");
    }
}
