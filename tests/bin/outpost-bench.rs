//! `outpost-bench`: the figures README records, measured and printed with their targets.
//!
//! Build everything in release first, then run it:
//!
//! ```sh
//! cargo build --release --workspace && target/release/outpost-bench
//! ```
//!
//! - envelope sign and verify rates (a 50-asset summary);
//! - collector ingest rate: signed 50-asset summaries verified and applied to a real SQLite
//!   file per second, steady state (nothing changed) and worst case (every asset changed);
//! - agent peak RSS while polling 100 simulated devices (the real `outpost-agent` process);
//! - size of the stripped static aarch64 agent, when `.ci/build-aarch64.sh` has built it;
//! - the diode link with FEC: raw loopback UDP rate, FEC goodput, overhead, CPU per MB,
//!   delivery at 10 % random loss (`--only fec` runs just this section);
//! - drift → alert latency (MTTD) with 1 s polls: Modbus write → syslog datagram at a SIEM
//!   socket, median and p99 (`--only drift`);
//! - discovery: `outpost-agent scan` of 254 simulated devices on a loopback /24 next to
//!   `nmap --script modbus-discover` (`--only scan`), and a plant with silent devices.
//!
//! `outpost-bench --mqtt` measures the MQTT transport instead, against a real mosquitto on
//! loopback: the fsynced spool's cost, publish throughput (spool → broker, every PUBACK
//! received), and end-to-end delivery (spool → mosquitto → `serve_mqtt` → the SQLite CMDB).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use outpost_collector::cmdb::Cmdb;
use outpost_collector::ingest::Ingest;
use outpost_collector::pipeline::{Checker, ingest_all};
use outpost_collector::serve::{ServeConfig, Server};
use outpost_proto::chain::ChainTip;
use outpost_proto::envelope::{Sealed, parse, seal};
use outpost_proto::{AgentId, SigningKey, ZoneId};
use outpost_testbed::harness::{self, ChildGuard};
use outpost_testbed::scenario::{AgentSetup, PlantDevice, agent_config};
use outpost_testbed::sim::{Plant, generated_plant};
use outpost_testbed::workload::summary_body;

/// The allocator `outpost-collector` runs with, so the ingest figures are what it gets.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure Outpost's speed and memory figures.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Envelopes per rate measurement.
    #[arg(long, default_value_t = 4000)]
    envelopes: u64,
    /// Simulated devices for the agent memory measurement.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Agent poll cycles to run before reading its peak RSS.
    #[arg(long, default_value_t = 5)]
    cycles: u64,
    /// Measure the MQTT transport (spool, publish, end to end through mosquitto) only.
    #[arg(long)]
    mqtt: bool,
    /// Envelopes per MQTT measurement.
    #[arg(long, default_value_t = 1000)]
    mqtt_envelopes: u64,
    /// Loss patterns for one envelope alone in the FEC delivery measurement.
    #[arg(long, default_value_t = 10_000)]
    fec_trials: u64,
    /// Small envelopes in the windowed FEC delivery measurement (× 20 loss patterns).
    #[arg(long, default_value_t = 20_000)]
    fec_messages: usize,
    /// Run only this section: `fec`, `ingest`, `envelope`, `agent` (peak RSS polling the plant, gateway inventory on), `drift` or `scan`.
    #[arg(long)]
    only: Option<String>,
    /// Register writes in the drift → alert latency (MTTD) measurement.
    #[arg(long, default_value_t = 30)]
    drift_changes: u32,
}

#[path = "bench/drift_mttd.rs"]
mod drift_mttd;
#[path = "bench/fec_link.rs"]
mod fec_link;
#[path = "bench/scan.rs"]
mod scan;

const ASSETS: usize = 50;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; figures are only meaningful from --release");
    }
    println!(
        "outpost-bench on {} CPUs, load average {}",
        num_cpus(),
        load_average()
    );
    if args.mqtt {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("could not start the async runtime")?;
        return runtime.block_on(mqtt_rates(args.mqtt_envelopes));
    }
    match args.only.as_deref() {
        Some("fec") => return fec_link::run(args.fec_trials, args.fec_messages),
        Some("ingest") => return ingest_rates(args.envelopes),
        Some("envelope") => return envelope_rates(args.envelopes),
        Some("drift") => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("could not start the async runtime")?;
            return runtime.block_on(drift_mttd::run(args.drift_changes));
        }
        Some("scan") => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("could not start the async runtime")?;
            return runtime.block_on(scan::run());
        }
        Some("agent") => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("could not start the async runtime")?;
            return runtime.block_on(agent_memory(args.devices, args.cycles));
        }
        Some(other) => {
            bail!("--only {other}: expected fec, ingest, envelope, agent, drift or scan")
        }
        None => {}
    }
    envelope_rates(args.envelopes)?;
    ingest_rates(args.envelopes)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(agent_memory(args.devices, args.cycles))?;
    runtime.block_on(drift_mttd::run(args.drift_changes))?;
    runtime.block_on(scan::run())?;
    binary_sizes();
    fec_link::run(args.fec_trials, args.fec_messages)?;
    Ok(())
}

fn ids() -> anyhow::Result<(AgentId, ZoneId)> {
    Ok((AgentId::new("bench-gw")?, ZoneId::new("bench-zone")?))
}

/// `n` consecutive envelopes of one agent; `changing` varies every asset's setpoints per round.
fn chain(key: &SigningKey, n: u64, changing: bool) -> anyhow::Result<Vec<Sealed>> {
    let (agent, zone) = ids()?;
    let mut tip = ChainTip::GENESIS;
    let mut out = Vec::with_capacity(usize::try_from(n)?);
    for i in 0..n {
        let body = summary_body(&agent, &zone, ASSETS, if changing { i } else { 0 });
        let sealed = seal(key, &agent, &zone, &tip, 1_700_000_000_000 + i, &body)?;
        tip = sealed.tip;
        out.push(sealed);
    }
    Ok(out)
}

fn envelope_rates(n: u64) -> anyhow::Result<()> {
    let (key, _) = SigningKey::generate()?;
    let (agent, zone) = ids()?;
    let body = summary_body(&agent, &zone, ASSETS, 1);
    let start = Instant::now();
    let mut last = None;
    for i in 0..n {
        last = Some(seal(&key, &agent, &zone, &ChainTip::GENESIS, i, &body)?);
    }
    let sign = rate(n, start.elapsed());
    let wire = last.context("at least one envelope")?.wire;
    let public = key.public_key();
    let start = Instant::now();
    for _ in 0..n {
        parse(&wire)?.verify(&public)?;
    }
    let verify = rate(n, start.elapsed());
    println!(
        "\n== envelopes ({ASSETS}-asset summary, {} bytes on the wire)",
        wire.len()
    );
    println!("seal (encode + sign):        {sign:>10.0} envelopes/s");
    println!("parse + verify signature:    {verify:>10.0} envelopes/s");
    Ok(())
}

fn ingest_rates(n: u64) -> anyhow::Result<()> {
    println!(
        "\n== collector ingest ({ASSETS} assets per summary, real SQLite file, one transaction each)"
    );
    println!(
        "   two-stage = what `serve` runs: check (parse, verify, decode) on one thread, apply on another"
    );
    let mut steady_two_stage = None;
    for (label, changing) in [("no change", false), ("every asset changed", true)] {
        for two_stage in [false, true] {
            let dir = harness::temp_dir("bench-ingest")?;
            let db = dir.path().join("cmdb.sqlite");
            let (key, _) = SigningKey::generate()?;
            let (agent, zone) = ids()?;
            let mut cmdb = Cmdb::open(&db)?;
            cmdb.enroll(&key.public_key(), &agent, &[zone], 0)?;
            let envelopes = chain(&key, n, changing)?;
            if two_stage && !changing {
                check_stage_alone(&db, &envelopes)?;
            }
            let mut ingest = Ingest::new(cmdb);
            let cpu_start = process_cpu();
            let start = Instant::now();
            let refused = if two_stage {
                let items = envelopes
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| (e.wire, "bench".to_owned(), 1_700_000_000_000 + i as u64));
                ingest_all(&mut ingest, items)?
                    .iter()
                    .filter(|r| r.is_err())
                    .count()
            } else {
                envelopes
                    .iter()
                    .enumerate()
                    .filter(|(i, e)| {
                        ingest
                            .envelope(&e.wire, "bench", 1_700_000_000_000 + *i as u64)
                            .is_err()
                    })
                    .count()
            };
            let elapsed = start.elapsed();
            let cpu = process_cpu().saturating_sub(cpu_start);
            if refused > 0 {
                bail!("{refused} envelopes refused during the ingest benchmark");
            }
            let per_s = rate(n, elapsed);
            let verdict = if per_s >= 2000.0 { "meets" } else { "MISSES" };
            let mode = if two_stage { "two-stage" } else { "one thread" };
            if two_stage && !changing {
                steady_two_stage = Some(per_s);
            }
            println!(
                "{label:<20} {mode:<10} {per_s:>8.0} summaries/s ({:>7.0} assets/s) — {verdict} the ≥ 2,000/s target",
                per_s * ASSETS as f64
            );
            // CPU time does not depend on what else the machine runs, unlike the rate above.
            println!(
                "{:<31} {:>8.0} µs CPU per summary, all threads ({:.0} % of the elapsed time)",
                "",
                cpu.as_secs_f64() * 1e6 / n as f64,
                cpu.as_secs_f64() * 100.0 / elapsed.as_secs_f64().max(1e-9)
            );
        }
    }
    if let Some(per_s) = steady_two_stage {
        let verdict = if per_s >= 2000.0 { "MEETS" } else { "MISSES" };
        println!(
            "ingest, steady state, two-stage (as `serve` runs it): {per_s:.0} summaries/s — \
             {verdict} the ≥ 2,000/s target (load average now: {})",
            load_average()
        );
    }
    Ok(())
}

async fn agent_memory(devices: usize, cycles: u64) -> anyhow::Result<()> {
    println!("\n== agent memory, polling {devices} simulated devices (real outpost-agent process)");
    let agent_bin = match harness::binary("outpost-agent") {
        Ok(p) => p,
        Err(e) => {
            println!("skipped: {e}");
            return Ok(());
        }
    };
    let dir = harness::temp_dir("bench-agent")?;
    let dir = dir.path();
    let binds = (0..devices)
        .map(|i| {
            let i = u32::try_from(i)?;
            let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(127, 0, 9, 1)) + i);
            Ok(std::net::SocketAddr::from((ip, 0)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let plant = Plant::start(generated_plant(devices), binds)
        .await
        .context("could not start the simulated plant")?;
    let (key, doc) = SigningKey::generate()?;
    let (agent, zone) = ids()?;
    let key_file = dir.join("agent.key");
    write_private(&key_file, &doc)?;
    let db = dir.join("cmdb.sqlite");
    let mut cmdb = Cmdb::open(&db)?;
    cmdb.enroll(&key.public_key(), &agent, &[zone], 0)?;
    let server = Server::bind(ServeConfig::new(&db, "127.0.0.1:0".parse()?))?;
    let listen = server.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));

    let state = dir.join("state");
    let mut setup = AgentSetup::new(agent.as_str(), "bench-zone", &state, &key_file, listen);
    // The gateway self-inventory (listening sockets with owners, running executables) is part
    // of every cycle on a real gateway, so it is part of the measured one.
    setup.gateway_inventory = true;
    let sim_devices: Vec<PlantDevice> = plant.devices().iter().map(PlantDevice::from).collect();
    let config = dir.join("agent.toml");
    std::fs::write(&config, agent_config(&setup, &sim_devices))?;
    let mut child = ChildGuard::spawn(
        "outpost-agent",
        Command::new(&agent_bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null()),
    )?;
    let pid = child.pid();
    let start = Instant::now();
    let mut applied = 0;
    // Bounded: cycles × (poll interval + slack).
    let deadline = Duration::from_secs(cycles * 3 + 20);
    while start.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Envelopes, not the sequence number: a new chain starts at the agent's clock.
        applied = cmdb.agents()?.first().map_or(0, |a| a.envelopes_accepted);
        if applied >= i64::try_from(cycles)? {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!("the agent exited early: {status}");
        }
    }
    let status = read_status(pid)?;
    let assets = cmdb.assets()?;
    let ok = assets.iter().filter(|a| a.status == "ok").count();
    child.stop(Duration::from_secs(10))?;
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), collector).await;
    plant.stop().await;

    let hwm = status.0 as f64 / 1024.0;
    let verdict = if hwm <= 20.0 { "meets" } else { "MISSES" };
    println!(
        "{applied} cycles applied, {} assets in the CMDB ({ok} answered) in {:.1} s",
        assets.len(),
        start.elapsed().as_secs_f64()
    );
    println!("gateway self-inventory:      listening sockets + executables on");
    println!("agent peak RSS (VmHWM):      {hwm:>10.1} MB — {verdict} the ≤ 20 MB target");
    println!(
        "agent RSS now (VmRSS):       {:>10.1} MB",
        status.1 as f64 / 1024.0
    );
    println!("agent binary used:           {}", agent_bin.display());
    Ok(())
}

/// (VmHWM, VmRSS) of a process, in KiB.
fn read_status(pid: u32) -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmHWM:"), field("VmRSS:")))
}

fn write_private(path: &Path, doc: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(doc)?;
    Ok(())
}

fn binary_sizes() {
    println!("\n== agent binary size (stripped)");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let candidates: [(&str, PathBuf); 2] = [
        (
            "aarch64-unknown-linux-musl",
            root.join("aarch64-unknown-linux-musl/release/outpost-agent"),
        ),
        ("host release", root.join("release/outpost-agent")),
    ];
    for (label, path) in candidates {
        match std::fs::metadata(&path) {
            Ok(m) => {
                let mb = m.len() as f64 / (1024.0 * 1024.0);
                let verdict = if mb <= 8.0 { "meets" } else { "MISSES" };
                println!(
                    "{label:<28} {mb:>6.2} MB — {verdict} the ≤ 8 MB target ({})",
                    path.display()
                );
            }
            Err(_) => println!(
                "{label:<28} not built ({}; run .ci/build-aarch64.sh or cargo build --release)",
                path.display()
            ),
        }
    }
}

/// The MQTT transport's figures (see the module docs).
async fn mqtt_rates(n: u64) -> anyhow::Result<()> {
    use outpost_agent::config::MqttConfig;
    use outpost_agent::transport::mqtt::MqttLink;
    use outpost_agent::transport::spool::{EntryKind, Spool};
    use outpost_collector::mqtt::{MqttServeConfig, serve_mqtt};
    use outpost_testbed::mosquitto::{Broker, BrokerSpec};
    use std::sync::{Arc, Mutex};

    println!("\n== MQTT transport ({ASSETS}-asset summaries, real mosquitto on loopback, QoS 1)");
    let (key, _) = SigningKey::generate()?;
    let (agent, zone) = ids()?;
    let envelopes = chain(&key, n, false)?;
    let bytes: usize = envelopes.iter().map(|e| e.wire.len()).sum();
    println!(
        "envelope size:               {:>10} bytes",
        bytes / envelopes.len().max(1)
    );
    let dir = harness::temp_dir("bench-mqtt")?;

    // 1. The spool alone: write + fsync file + fsync dir per envelope, then remove.
    let (mut spool, _) = Spool::open(dir.path().join("spool-cost"), u64::MAX)?;
    let start = Instant::now();
    for e in &envelopes {
        spool.push(e.tip.seq, EntryKind::Summary, &e.wire)?;
    }
    let push = start.elapsed();
    let start = Instant::now();
    for e in &envelopes {
        spool.remove(e.tip.seq)?;
    }
    let remove = start.elapsed();
    println!(
        "spool push (write+fsync):    {:>10.0} envelopes/s ({:.2} ms each)",
        rate(n, push),
        push.as_secs_f64() * 1000.0 / n as f64
    );
    println!(
        "spool remove after PUBACK:   {:>10.0} envelopes/s",
        rate(n, remove)
    );

    let broker = Broker::start_new(&dir.path().join("broker"), &BrokerSpec::default())?;
    let cfg = |client_id: &str| MqttConfig {
        url: broker.url(),
        tls: false,
        host: "127.0.0.1".into(),
        port: broker.addr().port(),
        ca_file: None,
        client_cert: None,
        client_key: None,
        username: None,
        password_file: None,
        spool_max_bytes: u64::MAX,
        client_id: client_id.into(),
        keep_alive: Duration::from_secs(30),
    };
    // Fills a spool, starts a link, waits until `done()`; returns the elapsed time.
    async fn drain(
        spool_dir: &Path,
        cfg: &MqttConfig,
        agent: &AgentId,
        zone: &ZoneId,
        envelopes: &[Sealed],
        mut done: impl FnMut(&MqttLink) -> bool,
    ) -> anyhow::Result<Duration> {
        let (mut spool, _) = Spool::open(spool_dir, u64::MAX)?;
        for e in envelopes {
            spool.push(e.tip.seq, EntryKind::Summary, &e.wire)?;
        }
        let spool = Arc::new(Mutex::new(spool));
        let start = Instant::now();
        let link = MqttLink::start(cfg, agent, zone, spool)?;
        let deadline = start + Duration::from_secs(120);
        while !done(&link) {
            if Instant::now() > deadline {
                bail!("not done within 120 s ({} still spooled)", link.pending());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = start.elapsed();
        link.shutdown().await;
        Ok(elapsed)
    }

    // 2. Publish throughput: spool → broker, until every PUBACK arrived (no subscriber).
    let took = drain(
        &dir.path().join("spool-publish"),
        &cfg("bench-publisher"),
        &agent,
        &zone,
        &envelopes,
        |l| l.pending() == 0,
    )
    .await?;
    println!(
        "publish, spool → PUBACK:     {:>10.0} envelopes/s ({:.1} MB/s)",
        rate(n, took),
        bytes as f64 / took.as_secs_f64() / 1e6
    );

    // 3. End to end: spool → mosquitto → serve_mqtt → CMDB (a fresh chain for a fresh CMDB).
    let db = dir.path().join("cmdb.sqlite");
    let mut cmdb = Cmdb::open(&db)?;
    cmdb.enroll(&key.public_key(), &agent, std::slice::from_ref(&zone), 0)?;
    drop(cmdb);
    let ready = dir.path().join("collector.ready");
    let mut scfg = MqttServeConfig::new(&db, broker.url());
    scfg.client_id = "bench-collector".into();
    scfg.ready_file = Some(ready.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(serve_mqtt(scfg, async move {
        let _ = stop_rx.await;
    }));
    harness::wait_ready_file(&ready, Duration::from_secs(20))?;
    let reader = rusqlite::Connection::open(&db)?;
    let took = drain(
        &dir.path().join("spool-e2e"),
        &cfg("bench-e2e"),
        &agent,
        &zone,
        &envelopes,
        |_| {
            reader
                .query_row("SELECT COUNT(*) FROM envelopes", [], |r| r.get::<_, i64>(0))
                .map(|c| c as u64 >= n)
                .unwrap_or(false)
        },
    )
    .await?;
    let _ = stop_tx.send(());
    let stats = collector.await??;
    println!(
        "end to end into the CMDB:    {:>10.0} envelopes/s ({} applied, {} duplicates, {} refused)",
        rate(n, took),
        stats.envelopes_applied,
        stats.duplicates,
        stats.envelopes_rejected
    );
    Ok(())
}

/// CPU time (user + system) this process has used so far, all threads included.
/// The checking stage alone (parse, key, signature, body decode, CI keys and hashes), on this
/// thread, so the two stages' shares of the work can be told apart: the two-stage rate is
/// bounded by the busier one.
fn check_stage_alone(db: &Path, envelopes: &[Sealed]) -> anyhow::Result<()> {
    let checker = Checker::open(db)?;
    let cpu_start = process_cpu();
    let start = Instant::now();
    let refused = envelopes
        .iter()
        .filter(|e| checker.check(&e.wire).is_err())
        .count();
    let elapsed = start.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_start);
    if refused > 0 {
        bail!("{refused} envelopes refused by the checking stage");
    }
    let n = envelopes.len().max(1) as f64;
    println!(
        "{:<31} {:>8.0} µs CPU per summary in the checking stage alone (one thread, {:.0}/s); \
         the rest of the two-stage CPU below is the writer's",
        "",
        cpu.as_secs_f64() * 1e6 / n,
        n / elapsed.as_secs_f64().max(1e-9)
    );
    Ok(())
}

fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
