//! `outpost-agent`: the command line around the agent library.
//!
//! - `keygen --out DIR [--agent ID] [--force]`: write `agent.key` (0600) and `agent.pub`.
//! - `run --config FILE [--once]`: poll and send every `poll_interval` until SIGTERM/SIGINT, or
//!   one cycle with `--once` (exit 0 when the envelope was sent — or, for MQTT, spooled: `--once`
//!   waits up to 10 s for the broker's acknowledgements; unreachable devices are reported inside
//!   the summary, not as a failure). With `[segmentation]`, `--once` also runs one probe round
//!   after the cycle; `run` probes in the background every `segmentation.interval`.
//! - `scan CIDR... [--port 502] [--units 1,2,255] [--json] [--write-config FILE]`: a one-shot
//!   discovery sweep under the politeness budget (see `outpost_agent::discovery`).
//! - `rotate-key --config FILE [--force]`: stage a new signing key; the agent announces it at
//!   its next cycle (see `outpost_agent::rotate`).
//! - `check-config --config FILE`: validate (config and device profiles) and print what would
//!   be polled.
//! - `gateway [--config FILE] [--json]`: print the gateway's self-inventory without sending it
//!   (`[gateway]` switches from the config when one is given).
//!
//! Logs go to stderr (`RUST_LOG` respected, default `info`); the runtime is tokio's
//! current-thread one, to keep a small gateway's footprint small.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use outpost_agent::{Agent, Config, keyfile};
use outpost_proto::AgentId;

#[derive(Parser)]
#[command(
    name = "outpost-agent",
    version,
    about = "Outpost edge agent: read-only Modbus TCP inventory, signed summaries over a one-way UDP diode"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the agent's signing key: DIR/agent.key (mode 0600) and DIR/agent.pub.
    Keygen {
        /// Directory to write the key files into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Agent id to write into agent.pub (the collector enrolls it under this id).
        #[arg(long, value_name = "ID")]
        agent: Option<AgentId>,
        /// Replace an existing key (the collector must then enroll the new agent.pub).
        #[arg(long)]
        force: bool,
    },
    /// Poll the configured devices and send signed summaries over the diode.
    Run {
        /// The agent's TOML config.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Run one cycle and exit: 0 when the summary was sent.
        #[arg(long)]
        once: bool,
    },
    /// Sweep address ranges for Modbus TCP devices and identify them (read-only, rate-limited).
    Scan(outpost_agent::discovery::command::ScanArgs),
    /// Stage a new signing key (<key_file>.next): the agent announces it at its next cycle in
    /// an envelope signed by the current key and by the new one, then switches to it.
    RotateKey {
        /// The agent's TOML config.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Replace a key already staged and not yet announced.
        #[arg(long)]
        force: bool,
    },
    /// Validate a config and print what would be polled.
    CheckConfig {
        /// The agent's TOML config.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the gateway's self-inventory (what a summary carries about this host); sends nothing.
    Gateway {
        /// The agent's TOML config, for its `[gateway]` switches (default: every list on).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// JSON (`outpost.gateway.v1`) instead of tables.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keygen { out, agent, force } => keygen(out, agent, force),
        Command::CheckConfig { config } => check_config(config),
        Command::Run { config, once } => run(config, once),
        Command::Scan(args) => outpost_agent::discovery::command::run(args),
        Command::RotateKey { config, force } => rotate_key(config, force),
        Command::Gateway { config, json } => gateway(config, json),
    }
}

fn gateway(config: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let collect = match config {
        Some(path) => Config::load(&path)?.gateway.collect(),
        None => outpost_agent::host::Collect::default(),
    };
    let facts = outpost_agent::host::collect(collect)?;
    if json {
        println!("{}", outpost_agent::host::report::json(&facts)?);
    } else {
        print!("{}", outpost_agent::host::report::table(&facts));
    }
    Ok(())
}

fn keygen(out: PathBuf, agent: Option<AgentId>, force: bool) -> anyhow::Result<()> {
    let g = keyfile::generate_with(&out, agent.as_ref(), force)?;
    println!("key id:      {}", g.key_id);
    println!("private key: {}", g.private_path.display());
    println!("public key:  {}", g.public_path.display());
    println!(
        "enroll it at the collector: outpost-collector enroll --db FILE --zone ZONE --key {}",
        g.public_path.display()
    );
    Ok(())
}

fn rotate_key(path: PathBuf, force: bool) -> anyhow::Result<()> {
    let c = Config::load(&path)?;
    let s = outpost_agent::rotate::stage(&c.key_file, &c.agent_id, force)?;
    println!("current key: {}", s.old_key_id);
    println!(
        "staged key:  {} ({})",
        s.new_key_id,
        s.private_path.display()
    );
    println!("public key:  {}", s.public_path.display());
    println!(
        "the agent announces it at its next cycle (signed by both keys) and the collector \
         enrolls it for the same agent and zones; if that envelope is lost, enroll {} by hand",
        s.public_path.display()
    );
    Ok(())
}

fn check_config(path: PathBuf) -> anyhow::Result<()> {
    let c = Config::load(&path)?;
    let profiles = c.profiles.load()?;
    println!("{}: OK", path.display());
    println!("agent {} in zone {}", c.agent_id, c.zone);
    println!("key file:  {}", c.key_file.display());
    println!("state dir: {}", c.state_dir.display());
    println!("every {}", humantime::format_duration(c.poll_interval));
    if let Some(d) = &c.diode {
        println!(
            "to diode {} at up to {} datagrams/s",
            d.target, d.max_datagrams_per_sec
        );
    }
    if let Some(m) = &c.mqtt {
        println!(
            "to mqtt broker {} as client {:?}, spool up to {} bytes in {}",
            m.url,
            m.client_id,
            m.spool_max_bytes,
            c.state_dir.join("spool").display()
        );
    }
    let m = &c.modbus;
    println!(
        "modbus: connect timeout {}, request timeout {}, gap {}, {} devices in parallel",
        humantime::format_duration(m.connect_timeout),
        humantime::format_duration(m.request_timeout),
        humantime::format_duration(m.min_request_gap),
        m.max_parallel_devices
    );
    match profiles {
        None => println!("profiles: off (devices without blocks report identity only)"),
        Some(lib) => println!(
            "profiles: {} ({}) for devices without blocks",
            lib.profiles().count(),
            c.profiles
                .dir
                .as_ref()
                .map_or("built-in".to_owned(), |d| format!(
                    "built-in + {}",
                    d.display()
                ))
        ),
    }
    for d in &c.discover {
        let units: Vec<String> = d.unit_ids.iter().map(u8::to_string).collect();
        println!(
            "discover {} ({} addresses) port {} unit ids [{}], every {} cycles, {} connections at once; a sweep where nothing answers takes up to {}",
            d.ranges.join(" "),
            d.addresses.len(),
            d.port,
            units.join(", "),
            d.every,
            d.max_connections,
            humantime::format_duration(d.worst_case_unreachable())
        );
    }
    let on_off = |on: bool| if on { "on" } else { "off" };
    println!(
        "gateway inventory: listening sockets {}, running programs {}",
        on_off(c.gateway.listening),
        on_off(c.gateway.processes)
    );
    if c.devices.is_empty() && c.discover.is_empty() && c.serial_buses.is_empty() {
        println!("no devices: gateway facts only");
    }
    for b in &c.serial_buses {
        println!(
            "serial bus {} at {} baud, parity {:?}, {} data bits, {} stop bits, timeout {}, frame gap {}",
            b.path,
            b.baud,
            b.parity,
            b.data_bits,
            b.stop_bits,
            humantime::format_duration(b.timeout),
            humantime::format_duration(b.frame_gap)
        );
        for d in &b.devices {
            println!(
                "  device {} unit {} ({} blocks)",
                d.name,
                d.unit,
                d.blocks.len()
            );
        }
    }
    for d in &c.devices {
        let units: Vec<String> = d.unit_ids.iter().map(u8::to_string).collect();
        println!(
            "device {} at {} unit ids [{}]",
            d.name,
            d.address,
            units.join(", ")
        );
        for b in &d.blocks {
            println!(
                "  block {}: {} {}..{} ({} values)",
                b.name,
                b.kind.as_str(),
                b.start,
                u32::from(b.start) + u32::from(b.count) - 1,
                b.count
            );
        }
    }
    if c.discover.is_empty() {
        println!("{} assets per cycle", c.asset_count());
    } else {
        println!(
            "{} assets per cycle from [[devices]], plus what discovery finds",
            c.asset_count()
        );
    }
    println!("{} assets per cycle", c.asset_count());
    if let Some(seg) = &c.segmentation {
        println!(
            "segmentation probes every {}: {} targets, connect timeout {}, at most {} probes/s",
            humantime::format_duration(seg.interval),
            seg.targets.len(),
            humantime::format_duration(seg.connect_timeout),
            seg.max_probes_per_sec
        );
        for t in &seg.targets {
            println!("  {} {} (from {:?})", t.expect.as_str(), t.addr, t.rule);
        }
    }
    Ok(())
}

/// How long `run --once` waits for the MQTT spool to drain.
const ONCE_FLUSH: std::time::Duration = std::time::Duration::from_secs(10);

fn run(path: PathBuf, once: bool) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut agent = Agent::new(config)?;
        if once {
            let report = agent.run_cycle().await?;
            tracing::debug!(?report, "single cycle done");
            // With [segmentation], one probe round runs inline after the cycle.
            agent.run_probe_round().await?;
            if let Some(link) = agent.mqtt()
                && !link.wait_drained(ONCE_FLUSH).await
            {
                tracing::warn!(
                    pending = link.pending(),
                    "mqtt: not everything was acknowledged within {}s; it stays spooled for the next run",
                    ONCE_FLUSH.as_secs()
                );
            }
            agent.shutdown().await;
            return Ok(());
        }
        agent.run(shutdown_signal()).await?;
        Ok(())
    })
}

/// Completes on SIGTERM or SIGINT. If the handlers cannot be installed, it never completes
/// (the process can still be killed) and says so.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (term, int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot install signal handlers: {e}; stop the agent with SIGKILL");
            std::future::pending::<()>().await;
            return;
        }
    };
    let (mut term, mut int) = (term, int);
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
