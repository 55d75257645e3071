//! `outpost-sim`: run a simulated Modbus TCP plant until SIGTERM/SIGINT.
//!
//! Each device listens on its own loopback address: --bind, then the next addresses
//! (127.0.1.1, 127.0.1.2, …; all of 127/8 is loopback on Linux).
//!
//! With `--rtu PATH` it serves a Modbus RTU line instead: three devices (units 1, 2, 3) on the
//! serial port PATH (e.g. one end of `socat -d -d pty,raw,echo=0 pty,raw,echo=0`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Parser;
use outpost_testbed::harness::write_atomically;
use outpost_testbed::sim::{
    Plant, RtuLine, SimDevice, default_plant, devices_json, generated_plant, rtu_line,
};

/// Simulated Modbus TCP plant for Outpost demos and tests.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Generate this many varied devices instead of the default five-device line.
    #[arg(long, value_name = "N")]
    devices: Option<usize>,
    /// Address of the first device; later devices take the following addresses.
    #[arg(long, value_name = "IP", default_value = "127.0.1.1")]
    bind: Ipv4Addr,
    /// TCP port every device listens on (0: a free port each; 502 needs root).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Write the device list as JSON to this file once every device listens.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    /// Print the device list as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Serve a Modbus RTU line (units 1, 2, 3) on this serial port instead of a TCP plant.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["devices", "port"])]
    rtu: Option<PathBuf>,
}

/// Serves the RTU line on `path` until SIGTERM/SIGINT.
async fn serve_rtu(
    path: &std::path::Path,
    ready_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let specs = rtu_line();
    let line = RtuLine::start(path, &specs)
        .with_context(|| format!("cannot serve the RTU line on {}", path.display()))?;
    let devices: Vec<serde_json::Value> = specs
        .iter()
        .map(|d| {
            serde_json::json!({
                "name": d.name,
                "unit_ids": d.unit_ids,
                "vendor_name": d.identity.vendor_name,
                "product_code": d.identity.product_code,
                "revision": d.identity.revision,
            })
        })
        .collect();
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "serial_port": path.display().to_string(),
        "devices": devices,
    }))?;
    println!("{json}");
    if let Some(ready) = ready_file {
        write_atomically(ready, json.as_bytes())
            .with_context(|| format!("cannot write the ready file {}", ready.display()))?;
    }
    tracing::info!(port = %path.display(), "simulated RTU line serving");
    let why = shutdown_signal().await?;
    tracing::info!("{why}: stopping the simulated RTU line");
    line.stop().await;
    Ok(())
}

fn addresses(first: Ipv4Addr, port: u16, n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let start = u32::from(first);
    (0..n)
        .map(|i| {
            let ip = u32::try_from(i)
                .ok()
                .and_then(|i| start.checked_add(i))
                .map(Ipv4Addr::from)
                .filter(|ip| !first.is_loopback() || ip.is_loopback())
                .with_context(|| {
                    format!("--bind {first} has no room for {n} consecutive addresses")
                })?;
            Ok(SocketAddr::new(IpAddr::V4(ip), port))
        })
        .collect()
}

fn table(devices: &[SimDevice]) -> String {
    let mut out = format!(
        "{:<16} {:<22} {:<8} {:<22} {:<22} {}\n",
        "NAME", "ADDRESS", "UNITS", "VENDOR", "PRODUCT", "REVISION"
    );
    for d in devices {
        let units: Vec<String> = d.unit_ids.iter().map(u8::to_string).collect();
        let id = &d.spec.identity;
        out.push_str(&format!(
            "{:<16} {:<22} {:<8} {:<22} {:<22} {}\n",
            d.name,
            d.addr,
            units.join(","),
            id.vendor_name,
            id.product_code,
            id.revision
        ));
    }
    out
}

async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Some(path) = &args.rtu {
        return serve_rtu(path, args.ready_file.as_deref()).await;
    }
    let specs = match args.devices {
        Some(0) => bail!("--devices 0: give at least one device"),
        Some(n) => generated_plant(n),
        None => default_plant(),
    };
    let binds = addresses(args.bind, args.port, specs.len())?;
    let plant = Plant::start(specs, binds)
        .await
        .context("cannot start the simulated plant")?;
    let devices = plant.devices();
    let json = serde_json::to_string_pretty(&devices_json(&devices))?;
    if args.json {
        println!("{json}");
    } else {
        print!("{}", table(&devices));
    }
    if let Some(path) = &args.ready_file {
        write_atomically(path, json.as_bytes())
            .with_context(|| format!("cannot write the ready file {}", path.display()))?;
    }
    tracing::info!(devices = devices.len(), "simulated plant listening");
    let why = shutdown_signal().await?;
    tracing::info!("{why}: stopping the simulated plant");
    plant.stop().await;
    Ok(())
}
