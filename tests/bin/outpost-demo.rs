//! `outpost-demo`: the whole Outpost path on loopback, on embedded defaults.
//!
//! simulated plant (Modbus TCP) → agent (poll, sign) → UDP "diode" → collector (verify, apply)
//! → SQLite CMDB; an operator approves the baseline; then an engineering workstation changes a
//! configuration register, the agent polls again, and the collector judges it an unauthorised
//! change (alert as OCSF and syslog); the same kind of change under a change record is
//! authorised, with evidence.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use outpost_agent::{Agent, Config, keyfile};
use outpost_collector::alert::{AlertConfig, Dispatcher, SinkSpec};
use outpost_collector::cmdb::Cmdb;
use outpost_collector::cmdb::baseline::Scope;
use outpost_collector::cmdb::change_record::ChangeInput;
use outpost_collector::render::{self, Format};
use outpost_collector::render_drift;
use outpost_collector::serve::{ServeConfig, Server};
use outpost_proto::{AgentId, ZoneId};
use outpost_testbed::scenario::{AgentSetup, PlantDevice, agent_config};
use outpost_testbed::sim::{Plant, default_plant};
use tokio::sync::oneshot;

/// Run the Outpost demo: plant → agent → diode → collector → CMDB, with a drift.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Keep the keys, agent state, config and CMDB in this directory instead of a temporary one.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Show the agent's and collector's log lines (otherwise only warnings).
    #[arg(long)]
    verbose: bool,
}

const AGENT: &str = "gw-line1";
const ZONE: &str = "cell-1";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = if args.verbose { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let temp;
    let dir: PathBuf = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("could not create --keep directory {}", dir.display()))?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("outpost-demo-")
                .tempdir()
                .context("could not create a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    runtime.block_on(demo(&dir))?;
    if args.keep.is_some() {
        println!(
            "\nKept in {dir}: inspect with\n  outpost-collector assets --db {db}\n  outpost-collector history --db {db}\n  outpost-collector drift --db {db}\n  outpost-collector alerts --db {db}\n  outpost-collector changes --db {db}",
            dir = dir.display(),
            db = dir.join("cmdb.sqlite").display()
        );
    }
    Ok(())
}

async fn demo(dir: &Path) -> anyhow::Result<()> {
    let agent_id = AgentId::new(AGENT)?;
    let zone = ZoneId::new(ZONE)?;

    step("1. Simulated plant: Modbus TCP devices on loopback");
    let plant = Plant::start_local(default_plant())
        .await
        .context("could not start the simulated plant")?;
    for d in plant.devices() {
        let id = &d.spec.identity;
        println!(
            "   {:<13} {:<22} units {:<6} {} {} {}",
            d.name,
            d.addr.to_string(),
            d.unit_ids
                .iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(","),
            id.vendor_name,
            id.product_code,
            id.revision
        );
    }

    step("2. Agent key (Ed25519), enrolled at the collector for one agent and one zone");
    let keys = dir.join("keys");
    let generated = match keyfile::generate(&keys, Some(&agent_id)) {
        Ok(g) => g,
        Err(e) => bail!("{e} (use a fresh --keep directory)"),
    };
    let db = dir.join("cmdb.sqlite");
    let mut cmdb = Cmdb::open(&db).with_context(|| format!("opening {}", db.display()))?;
    cmdb.enroll(
        &generated.public,
        &agent_id,
        std::slice::from_ref(&zone),
        now_ms(),
    )?;
    println!(
        "   key {} trusted for agent {agent_id} in zone {zone}",
        generated.key_id
    );

    step("3. Collector listening on a UDP diode port");
    let server = Server::bind(ServeConfig::new(
        &db,
        "127.0.0.1:0".parse().context("loopback address")?,
    ))?;
    let listen = server.local_addr()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let collector = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    println!("   {listen} → {}", db.display());

    step("4. Agent polls the plant (read-only function codes), signs and sends one summary");
    let state = dir.join("state");
    let config_path = dir.join("agent.toml");
    let setup = AgentSetup::new(AGENT, ZONE, &state, &generated.private_path, listen);
    let devices = plant.devices();
    let plant_devices: Vec<PlantDevice> = devices.iter().map(PlantDevice::from).collect();
    std::fs::write(&config_path, agent_config(&setup, &plant_devices))
        .with_context(|| format!("writing {}", config_path.display()))?;
    let config = Config::load(&config_path)?;
    let mut agent = Agent::new(config)?;
    let report = agent.run_cycle().await?;
    println!(
        "   envelope seq {}: {} devices ({} ok, {} partial, {} unreachable), {} bytes in {} datagrams",
        report.seq,
        report.devices,
        report.ok,
        report.partial,
        report.unreachable,
        report.envelope_bytes,
        report.datagrams
    );
    wait_applied(&cmdb, AGENT, report.seq).await?;

    step("5. The CMDB: configuration items as the collector verified and stored them");
    print!(
        "{}",
        render::assets(&cmdb.assets()?, Format::Text, now_ms_i64())
    );

    step("6. An operator approves what was observed as the baseline; alerts go to a SIEM");
    let approved = cmdb.approve_baseline(
        &Scope::All,
        "demo-operator",
        "initial commissioning, CHG0000001",
        now_ms(),
    )?;
    println!(
        "   baseline approved for {} assets in zone(s) {} by demo-operator",
        approved.assets,
        approved.zones.join(", ")
    );
    let siem = std::net::UdpSocket::bind("127.0.0.1:0").context("binding the demo SIEM")?;
    let siem_addr = siem.local_addr()?;
    let ocsf_file = dir.join("alerts.ocsf.jsonl");
    let dispatcher = Dispatcher::start(AlertConfig {
        db: db.clone(),
        sinks: vec![
            SinkSpec::OcsfFile(ocsf_file.clone()),
            SinkSpec::SyslogUdp(siem_addr.to_string()),
        ],
    })?;
    println!(
        "   alerts → OCSF JSON lines in {} and RFC 5424 syslog to udp://{siem_addr}",
        ocsf_file.display()
    );

    step("7. An engineering workstation writes a setpoint to mixer-plc over Modbus (FC 6)");
    let device = devices
        .iter()
        .find(|d| d.name == "mixer-plc")
        .context("the default plant has a mixer-plc")?;
    let (start, values) = device
        .spec
        .holding
        .first()
        .context("mixer-plc has a configuration block")?;
    let unit = device.unit_ids.first().copied().unwrap_or(1);
    let old = values.first().copied().unwrap_or(0);
    let new = old + 150;
    engineering_write(device.addr, unit, *start, new).await?;
    println!("   holding register {start} (mixer speed setpoint, rpm): {old} → {new}");

    step("8. Agent polls again; the collector records the drift and judges it");
    let report = agent.run_cycle().await?;
    println!("   envelope seq {} sent", report.seq);
    wait_applied(&cmdb, AGENT, report.seq).await?;
    let seq = i64::try_from(report.seq).unwrap_or(i64::MAX);
    let changes: Vec<_> = cmdb
        .history(None, None)?
        .into_iter()
        .filter(|h| h.envelope_seq == seq)
        .collect();
    if changes.is_empty() {
        bail!("the CMDB recorded no change for envelope {seq}");
    }
    let assets = cmdb.assets()?;
    for h in &changes {
        let name = assets
            .iter()
            .find(|a| a.ci_key == h.asset)
            .map_or(h.asset.as_str(), |a| a.name.as_str());
        println!("   DRIFT {name}: {}", describe_change(h));
        println!(
            "         observed {} by {} in envelope seq {} (hash {}…)",
            h.observed_at,
            h.agent_id,
            h.envelope_seq,
            h.envelope_hash.get(..16).unwrap_or(&h.envelope_hash)
        );
    }
    let events = cmdb
        .events(None)?
        .into_iter()
        .filter(|e| e.kind == "asset_changed")
        .count();
    println!("   {events} asset_changed event(s) in the CMDB's event log");
    let alerts = cmdb.alerts(None)?;
    let alert = alerts
        .first()
        .context("the collector raised no alert for the unauthorised change")?;
    let what: Vec<String> = alert.detail["changes"]
        .as_array()
        .map(|c| c.iter().map(render_drift::describe).collect())
        .unwrap_or_default();
    println!(
        "   ALERT #{} {} ({}, OCSF severity {}): {} — no change record covers it",
        alert.alert_id,
        alert.kind.to_uppercase(),
        alert.category,
        alert.severity_id,
        what.join("; ")
    );
    siem.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = vec![0u8; 65536];
    let n = siem
        .recv(&mut buf)
        .context("the SIEM received no syslog message within 10 s")?;
    let line = String::from_utf8_lossy(&buf[..n]);
    let header_end = line.find("] ").map_or(line.len(), |i| i + 1);
    println!(
        "   SIEM received (syslog, OCSF body cut): {}",
        &line[..header_end]
    );

    step("9. The same kind of change under a change record: authorised, with evidence");
    let now = now_ms_i64();
    let ticket = "CHG0031337";
    let (mix_time, new_mix_time) = (values.get(1).copied().unwrap_or(0), 360);
    cmdb.add_changes(
        &[(
            "demo".to_owned(),
            ChangeInput {
                ticket: ticket.into(),
                asset: "mixer-plc".into(),
                from: outpost_collector::time::rfc3339(now - 60_000),
                to: outpost_collector::time::rfc3339(now + 3_600_000),
                expect: vec![format!(
                    "block.config-{start}[{}]={new_mix_time}",
                    start + 1
                )],
                ..ChangeInput::default()
            },
        )],
        "demo",
        now_ms(),
    )?;
    println!(
        "   {ticket}: mixer-plc register {} → {new_mix_time} within the next hour",
        start + 1
    );
    engineering_write(device.addr, unit, start + 1, new_mix_time).await?;
    println!(
        "   holding register {} (mix time, s): {mix_time} → {new_mix_time}",
        start + 1
    );
    let report = agent.run_cycle().await?;
    wait_applied(&cmdb, AGENT, report.seq).await?;
    let records = cmdb.changes()?;
    let record = records
        .iter()
        .find(|r| r.ticket == ticket)
        .context("the change record is stored")?;
    let evidence = record
        .evidence
        .last()
        .context("the authorised change left no evidence")?;
    println!(
        "   {ticket} {}: observed {} in envelope seq {} (hash {}…); alerts still {}",
        record.state.to_uppercase(),
        evidence["observed_at"].as_str().unwrap_or("?"),
        evidence["envelope_seq"],
        evidence["envelope_hash"]
            .as_str()
            .and_then(|h| h.get(..16))
            .unwrap_or("?"),
        cmdb.alerts(None)?.len()
    );
    dispatcher.stop();

    step("10. What the plant received from the agent (function codes → requests)");
    for (i, d) in plant.devices().iter().enumerate() {
        let fcs = plant.function_codes_seen(i);
        let list: Vec<String> = fcs.iter().map(|(fc, n)| format!("FC{fc}×{n}")).collect();
        println!("   {:<13} {}", d.name, list.join(" "));
    }
    println!(
        "   (the FC 6 writes are the engineering workstation's; the agent sends only read codes)"
    );

    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(10), collector).await {
        Ok(Ok(Ok(stats))) => println!(
            "\nCollector stopped: {} datagrams, {} envelopes applied, {} refused.",
            stats.datagrams, stats.envelopes_applied, stats.envelopes_rejected
        ),
        Ok(Ok(Err(e))) => bail!("collector failed: {e}"),
        Ok(Err(e)) => bail!("collector task failed: {e}"),
        Err(_) => bail!("collector did not stop within 10 s"),
    }
    plant.stop().await;
    Ok(())
}

/// Plays the engineering workstation: one FC 6 write, as a real one would send it.
async fn engineering_write(
    addr: std::net::SocketAddr,
    unit: u8,
    register: u16,
    value: u16,
) -> anyhow::Result<()> {
    use tokio_modbus::client::Writer as _;
    let mut ews = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(unit)),
    )
    .await
    .context("engineering workstation: connect timed out")?
    .context("engineering workstation: connect failed")?;
    tokio::time::timeout(
        Duration::from_secs(5),
        ews.write_single_register(register, value),
    )
    .await
    .context("engineering workstation: write timed out")?
    .context("engineering workstation: write failed")?
    .map_err(|e| anyhow::anyhow!("engineering workstation: device refused the write: {e}"))?;
    Ok(())
}

/// "block config-100: register 100: 1200 → 1350", or the raw values for other attributes.
fn describe_change(h: &outpost_collector::cmdb::query::HistoryRow) -> String {
    let parse = |v: &Option<String>| -> Option<serde_json::Value> {
        v.as_deref().and_then(|t| serde_json::from_str(t).ok())
    };
    if let (Some(block), Some(old), Some(new)) = (
        h.attribute.strip_prefix("block."),
        parse(&h.old_value),
        parse(&h.new_value),
    ) {
        let start = new["start"].as_u64().unwrap_or(0);
        let values = |v: &serde_json::Value| -> Vec<u64> {
            v["values"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
                .unwrap_or_default()
        };
        let (old, new) = (values(&old), values(&new));
        let diffs: Vec<String> = old
            .iter()
            .zip(&new)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("register {}: {a} → {b}", start + i as u64))
            .collect();
        return format!("block {block}: {}", diffs.join(", "));
    }
    format!(
        "{}: {} → {}",
        h.attribute,
        h.old_value.as_deref().unwrap_or("(none)"),
        h.new_value.as_deref().unwrap_or("(none)")
    )
}

/// Waits (at most 10 s) until the collector has applied envelope `seq` of `agent`.
async fn wait_applied(cmdb: &Cmdb, agent: &str, seq: u64) -> anyhow::Result<()> {
    let want = i64::try_from(seq).context("sequence number out of range")?;
    for _ in 0..200 {
        let agents = cmdb.agents()?;
        if agents
            .iter()
            .any(|a| a.agent_id == agent && a.last_seq.is_some_and(|s| s >= want))
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = cmdb.stats()?;
    bail!(
        "the collector had not applied envelope {seq} after 10 s; its counters: {}",
        serde_json::to_string(&stats).unwrap_or_default()
    )
}

fn step(title: &str) {
    println!("\n{title}");
}

fn now_ms() -> u64 {
    outpost_collector::time::now_ms()
}

fn now_ms_i64() -> i64 {
    i64::try_from(now_ms()).unwrap_or(i64::MAX)
}
