//! Drift-to-alert latency (MTTD): a test engineering workstation writes a configuration
//! register over Modbus; the real `outpost-agent` process (1 s polls) reports it; the collector
//! (in this process) judges it unauthorised and delivers the alert as RFC 5424 syslog to a UDP
//! socket standing in for the SIEM. Latency = write → syslog datagram received. Writes are
//! spread over the poll phase so the figure includes waiting for the next poll.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use outpost_collector::alert::{AlertConfig, Dispatcher, SinkSpec};
use outpost_collector::cmdb::Cmdb;
use outpost_collector::cmdb::baseline::Scope;
use outpost_collector::serve::{ServeConfig, Server};
use outpost_proto::SigningKey;
use outpost_testbed::ews::write_register;
use outpost_testbed::harness::{self, ChildGuard};
use outpost_testbed::scenario::{AgentSetup, PlantDevice, agent_config};
use outpost_testbed::sim::{Plant, default_plant};

/// The agent's poll interval in this measurement.
const POLL: Duration = Duration::from_secs(1);

pub async fn run(changes: u32) -> anyhow::Result<()> {
    println!(
        "\n== drift → alert latency (MTTD), {changes} register writes, {} ms polls, real agent \
         process, syslog over UDP",
        POLL.as_millis()
    );
    let agent_bin = match harness::binary("outpost-agent") {
        Ok(p) => p,
        Err(e) => {
            println!("skipped: {e}");
            return Ok(());
        }
    };
    let dir = harness::temp_dir("bench-drift")?;
    let dir = dir.path();
    let plant = Plant::start_local(default_plant())
        .await
        .context("could not start the simulated plant")?;
    let (key, doc) = SigningKey::generate()?;
    let (agent, zone) = super::ids()?;
    let key_file = dir.join("agent.key");
    super::write_private(&key_file, &doc)?;
    let db = dir.join("cmdb.sqlite");
    let mut cmdb = Cmdb::open(&db)?;
    cmdb.enroll(&key.public_key(), &agent, &[zone], 0)?;
    let server = Server::bind(ServeConfig::new(&db, "127.0.0.1:0".parse()?))?;
    let listen = server.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    let siem = UdpSocket::bind("127.0.0.1:0")?;
    siem.set_read_timeout(Some(Duration::from_millis(20)))?;
    let dispatcher = Dispatcher::start(AlertConfig {
        db: db.clone(),
        sinks: vec![SinkSpec::SyslogUdp(siem.local_addr()?.to_string())],
    })?;

    let state = dir.join("state");
    let mut setup = AgentSetup::new(agent.as_str(), "bench-zone", &state, &key_file, listen);
    setup.poll_interval = POLL;
    setup.volatile_process = true;
    let devices: Vec<PlantDevice> = plant.devices().iter().map(PlantDevice::from).collect();
    let config = dir.join("agent.toml");
    std::fs::write(&config, agent_config(&setup, &devices))?;
    let mut child = ChildGuard::spawn(
        "outpost-agent",
        Command::new(&agent_bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null()),
    )?;
    let started = Instant::now();
    while cmdb.assets()?.len() < devices.iter().map(|d| d.unit_ids.len()).sum() {
        if started.elapsed() > Duration::from_secs(20) {
            bail!("the agent's first summary did not arrive within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cmdb.approve_baseline(&Scope::All, "bench", "MTTD benchmark", 0)?;
    let mixer = plant
        .devices()
        .into_iter()
        .find(|d| d.name == "mixer-plc")
        .context("the default plant has a mixer-plc")?;

    let mut latencies = Vec::with_capacity(changes as usize);
    let mut buf = vec![0u8; 65536];
    for i in 0..changes {
        // Spread the writes over the poll phase (deterministic, no RNG needed). Two whole polls
        // pass first, so at least one unchanged summary separates two writes: a change in
        // consecutive polls is judged `unstable_value` (reported once), not a new alert.
        let phase = u64::from(i.wrapping_mul(389) % 1000);
        tokio::time::sleep(POLL * 2 + Duration::from_millis(phase)).await;
        let value = 2000 + u16::try_from(i % 30_000)?;
        let t0 = Instant::now();
        write_register(mixer.addr, 1, 100, value)
            .await
            .map_err(anyhow::Error::msg)?;
        loop {
            if t0.elapsed() > Duration::from_secs(15) {
                bail!("change {i}: no alert within 15 s");
            }
            match siem.recv(&mut buf) {
                Ok(_) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    tokio::task::yield_now().await;
                }
                Err(e) => bail!("syslog listener: {e}"),
            }
        }
        latencies.push(t0.elapsed());
    }
    let alerts = cmdb.alerts(None)?.len();
    child.stop(Duration::from_secs(10))?;
    dispatcher.stop();
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), collector).await;
    plant.stop().await;

    latencies.sort_unstable();
    let pick = |q: f64| {
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(i).copied().unwrap_or_default()
    };
    let (median, p99, max) = (pick(0.5), pick(0.99), pick(1.0));
    let target = POLL + Duration::from_secs(1);
    let verdict = if p99 <= target { "meets" } else { "MISSES" };
    println!(
        "{} changes, {alerts} alerts raised (one per change expected)",
        latencies.len()
    );
    println!(
        "MTTD median:                 {:>10.0} ms",
        median.as_secs_f64() * 1000.0
    );
    println!(
        "MTTD p99:                    {:>10.0} ms — {verdict} the ≤ {} ms target (poll + 1 s)",
        p99.as_secs_f64() * 1000.0,
        target.as_millis()
    );
    println!(
        "MTTD max:                    {:>10.0} ms",
        max.as_secs_f64() * 1000.0
    );
    if alerts != latencies.len() {
        bail!("{alerts} alerts for {} changes", latencies.len());
    }
    Ok(())
}
