//! The plant simulator, exercised over real TCP on loopback with tokio-modbus's client.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outpost_testbed::harness::{self, ChildGuard};
use outpost_testbed::sim::{
    Behaviour, CONFIG_START, DeviceSpec, PROCESS_START, Plant, SimIdentity, default_plant,
    generated_plant,
};
use tokio::time::timeout;
use tokio_modbus::client::{Client, Context, Reader, Writer, tcp};
use tokio_modbus::prelude::{ReadCode, ReadDeviceIdentificationResponse};
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

const T: Duration = Duration::from_secs(5);

async fn connect(addr: SocketAddr, unit: u8) -> Context {
    timeout(T, tcp::connect_slave(addr, Slave(unit)))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

/// Reads a whole identification stream, following more_follows (bounded).
async fn read_stream(ctx: &mut Context, code: ReadCode) -> Vec<(u8, String)> {
    let mut start = 0;
    let mut out = Vec::new();
    for _ in 0..16 {
        let r: ReadDeviceIdentificationResponse =
            timeout(T, ctx.read_device_identification(code, start))
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        out.extend(
            r.device_id_objects
                .iter()
                .map(|o| (o.id, String::from_utf8_lossy(&o.value).into_owned())),
        );
        if !r.more_follows {
            return out;
        }
        start = r.next_object_id;
    }
    panic!("identification stream did not end in 16 pages");
}

fn loopback(last: u8, n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([127, 0, 3, last + i as u8], 0)))
        .collect()
}

#[tokio::test]
async fn default_plant_answers_reads_identity_and_exceptions() {
    let specs = default_plant();
    let n = specs.len();
    let plant = Plant::start(specs, loopback(1, n)).await.unwrap();
    let devices = plant.devices();
    assert_eq!(devices[0].addr.ip().to_string(), "127.0.3.1");
    assert_ne!(devices[0].addr.port(), 0);

    let plc = &devices[0];
    let mut ctx = connect(plc.addr, 1).await;
    let ident = read_stream(&mut ctx, ReadCode::Regular).await;
    assert_eq!(ident[0], (0, "Schneider Electric".to_owned()));
    assert_eq!(ident[2], (2, plc.spec.identity.revision.clone()));
    assert_eq!(ident.len(), 7);

    let config = &plc.spec.holding[0].1;
    let got = ctx
        .read_holding_registers(CONFIG_START, config.len() as u16)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, config);

    // Process values change on every read.
    let a = ctx
        .read_input_registers(PROCESS_START, 4)
        .await
        .unwrap()
        .unwrap();
    let b = ctx
        .read_input_registers(PROCESS_START, 4)
        .await
        .unwrap()
        .unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| x != y), "{a:?} vs {b:?}");

    let coils = ctx.read_coils(0, 8).await.unwrap().unwrap();
    assert_eq!(coils, plc.spec.coils[0].1);
    let inputs = ctx.read_discrete_inputs(0, 8).await.unwrap().unwrap();
    assert_eq!(inputs, plc.spec.discrete[0].1);

    // Exceptions: unmapped address, bad quantity, unsupported function.
    assert_eq!(
        ctx.read_holding_registers(5000, 2).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        ctx.read_holding_registers(CONFIG_START, 126).await.unwrap(),
        Err(ExceptionCode::IllegalDataValue)
    );
    assert_eq!(
        ctx.read_coils(0, 0).await.unwrap(),
        Err(ExceptionCode::IllegalDataValue)
    );
    assert_eq!(
        ctx.masked_write_register(CONFIG_START, 0xFFFF, 0)
            .await
            .unwrap(),
        Err(ExceptionCode::IllegalFunction)
    );
    assert_eq!(
        ctx.read_device_identification(ReadCode::Specific, 0x05)
            .await
            .unwrap()
            .map(|r| r.device_id_objects.len()),
        Ok(1)
    );
    assert_eq!(
        ctx.read_device_identification(ReadCode::Specific, 0x90)
            .await
            .unwrap()
            .map(|_| ()),
        Err(ExceptionCode::IllegalDataAddress)
    );

    // A unit id the device does not serve: gateway exception, at once.
    let mut other = connect(plc.addr, 7).await;
    assert_eq!(
        timeout(T, other.read_holding_registers(CONFIG_START, 1))
            .await
            .unwrap()
            .unwrap(),
        Err(ExceptionCode::GatewayTargetDevice)
    );

    // Units behind the gateway have their own tables.
    let gw = &devices[1];
    let mut u1 = connect(gw.addr, 1).await;
    let mut u2 = connect(gw.addr, 2).await;
    u1.write_single_register(CONFIG_START, 999)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        u2.read_holding_registers(CONFIG_START, 1)
            .await
            .unwrap()
            .unwrap(),
        [gw.spec.holding[0].1[0]]
    );
    assert_eq!(plant.read_holding(1, 1, CONFIG_START), Ok(999));

    let fcs = plant.function_codes_seen(0);
    assert_eq!(fcs.get(&0x2B), Some(&3)); // one Regular stream page + two Specific
    assert_eq!(fcs.get(&0x03), Some(&4)); // three on unit 1, one for unit 7
    assert_eq!(fcs.get(&0x04), Some(&2));
    assert_eq!(fcs.get(&0x16), Some(&1));
    assert_eq!(fcs.get(&0x01), Some(&2));
    assert!(!fcs.contains_key(&0x06));
    plant.stop().await;
}

#[tokio::test]
async fn workstation_writes_and_test_hooks_change_what_a_poller_sees() {
    let plant = Plant::start_local(default_plant()).await.unwrap();
    let plc = plant.devices()[0].clone();
    let mut ews = connect(plc.addr, 1).await;
    ews.write_multiple_registers(CONFIG_START + 1, &[301, 656])
        .await
        .unwrap()
        .unwrap();
    ews.write_single_coil(1, true).await.unwrap().unwrap();
    assert_eq!(
        ews.write_single_register(4000, 1).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    plant.write_holding(0, 1, CONFIG_START, 1250).unwrap();
    assert!(plant.write_holding(0, 9, CONFIG_START, 1).is_err());
    assert!(plant.write_holding(0, 1, 4000, 1).is_err());
    assert!(plant.write_holding(42, 1, CONFIG_START, 1).is_err());
    plant.set_revision(0, "V1.12.0.0").unwrap();
    assert!(plant.set_revision(0, &"x".repeat(300)).is_err());

    let mut poller = connect(plc.addr, 1).await;
    assert_eq!(
        poller
            .read_holding_registers(CONFIG_START, 3)
            .await
            .unwrap()
            .unwrap(),
        [1250, 301, 656]
    );
    let basic = read_stream(&mut poller, ReadCode::Basic).await;
    assert_eq!(basic[2], (2, "V1.12.0.0".to_owned()));
    assert_eq!(plant.devices()[0].spec.identity.revision, "V1.12.0.0");
    let Ok(Response::ReportServerId(_, true, data)) =
        poller.call(Request::ReportServerId).await.unwrap()
    else {
        panic!("FC 17 must answer");
    };
    assert!(String::from_utf8_lossy(&data).ends_with("V1.12.0.0"));

    let fcs = plant.function_codes_seen(0);
    assert_eq!(fcs.get(&0x10), Some(&1));
    assert_eq!(fcs.get(&0x06), Some(&1));
    assert_eq!(fcs.get(&0x05), Some(&1));
    plant.stop().await;
}

fn spec(name: &str, behaviour: Behaviour, extra: Vec<(u8, String)>) -> DeviceSpec {
    DeviceSpec {
        name: name.into(),
        identity: SimIdentity {
            vendor_name: "Test Vendor".into(),
            product_code: "TV-1".into(),
            revision: "V0.1".into(),
            vendor_url: Some("https://vendor.example".into()),
            product_name: Some("Test device".into()),
            model_name: Some("TV-1/A".into()),
            user_application_name: None,
            extra,
        },
        unit_ids: vec![1],
        holding: vec![(CONFIG_START, vec![1, 2, 3])],
        input: vec![(PROCESS_START, vec![10])],
        coils: vec![],
        discrete: vec![],
        behaviour,
    }
}

#[tokio::test]
async fn misbehaving_devices_and_paging_over_the_wire() {
    let big: Vec<(u8, String)> = (0x80..0x86)
        .map(|i| (i, format!("{i:02x}").repeat(60)))
        .collect();
    let plant = Plant::start_local(vec![
        spec("silent", Behaviour::Silent, vec![]),
        spec("old", Behaviour::NoDeviceId, vec![]),
        spec("slow", Behaviour::Slow(Duration::from_millis(300)), vec![]),
        spec("big", Behaviour::Normal, big.clone()),
    ])
    .await
    .unwrap();
    let d = plant.devices();

    let mut silent = connect(d[0].addr, 1).await;
    assert!(
        timeout(
            Duration::from_millis(300),
            silent.read_holding_registers(CONFIG_START, 1)
        )
        .await
        .is_err(),
        "a silent device must not answer"
    );

    let mut old = connect(d[1].addr, 1).await;
    assert_eq!(
        old.read_device_identification(ReadCode::Basic, 0)
            .await
            .unwrap()
            .map(|_| ()),
        Err(ExceptionCode::IllegalFunction)
    );
    assert!(matches!(
        old.call(Request::ReportServerId).await.unwrap(),
        Ok(Response::ReportServerId(1, true, _))
    ));

    let mut slow = connect(d[2].addr, 1).await;
    let started = Instant::now();
    slow.read_holding_registers(CONFIG_START, 3)
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));

    let mut paged = connect(d[3].addr, 1).await;
    let mut pages = 0;
    let mut start = 0;
    let mut all = Vec::new();
    for _ in 0..16 {
        let r = paged
            .read_device_identification(ReadCode::Extended, start)
            .await
            .unwrap()
            .unwrap();
        pages += 1;
        all.extend(r.device_id_objects.iter().map(|o| o.id));
        if !r.more_follows {
            break;
        }
        start = r.next_object_id;
    }
    assert!(pages >= 3, "six 120-byte objects need at least three pages");
    let mut want = vec![0, 1, 2, 3, 4, 5];
    want.extend(big.iter().map(|(id, _)| *id));
    assert_eq!(all, want);
    assert_eq!(plant.function_codes_seen(0).get(&0x03), Some(&1));
    plant.stop().await;
}

#[tokio::test]
async fn a_generated_plant_of_120_devices_on_consecutive_loopback_addresses() {
    let specs = generated_plant(120);
    let binds = (0..120u8)
        .map(|i| SocketAddr::from(([127, 0, 4, 1 + i], 0)))
        .collect();
    let plant = Plant::start(specs, binds).await.unwrap();
    for (i, d) in plant.devices().iter().enumerate() {
        let mut ctx = connect(d.addr, *d.unit_ids.last().unwrap()).await;
        let r = timeout(T, ctx.read_device_identification(ReadCode::Basic, 0))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            r.device_id_objects[2].value.as_ref(),
            d.spec.identity.revision.as_bytes(),
            "device {i}"
        );
    }
    plant.stop().await;
}

#[test]
fn the_sim_binary_reports_its_devices_and_stops_on_sigterm() {
    let dir = harness::temp_dir("sim").unwrap();
    let ready = dir.path().join("ready.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost-sim"));
    cmd.args(["--bind", "127.0.5.1", "--json", "--ready-file"])
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut sim = ChildGuard::spawn("outpost-sim", &mut cmd).unwrap();
    let doc = harness::wait_ready_json(&ready, Duration::from_secs(20)).unwrap();
    assert_eq!(doc["schema"], "outpost-sim/devices/v1");
    let devices = doc["devices"].as_array().unwrap();
    assert_eq!(devices.len(), default_plant().len());
    assert_eq!(devices[1]["host"], "127.0.5.2");
    assert_eq!(devices[0]["blocks"][0]["name"], "config");
    let addr: SocketAddr = devices[0]["address"].as_str().unwrap().parse().unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut ctx = connect(addr, 1).await;
        let v = ctx.read_holding_registers(CONFIG_START, 1).await.unwrap();
        assert!(v.is_ok());
    });

    let status = sim.stop(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "outpost-sim exited with {status}");
}
