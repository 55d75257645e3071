//! `outpost-bench --only scan`: `outpost-agent scan` against 254 simulated devices on a
//! loopback /24, next to `nmap -p 502 --script modbus-discover` on the same devices.
//!
//! Prints wall time, requests per device (counted by the simulator on the wire, for both
//! tools), identified unit ids and peak RSS (`ru_maxrss` of the child from `wait4`). A second
//! plant has 32 devices that accept connections and never answer. Port 502 needs root; without
//! it the agent still runs on a free port and the nmap comparison is skipped (its script only
//! runs on port 502).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use outpost_testbed::harness;
use outpost_testbed::sim::{DeviceSpec, Plant, generated_plant, varied_plant};

/// One finished child: wall time, peak RSS (KiB), exit success.
struct Run {
    wall: Duration,
    max_rss_kb: i64,
    ok: bool,
}

/// Runs `cmd` to completion (at most `limit`, then SIGKILL), reaping it with `wait4` to read
/// its own peak RSS.
fn run_measured(cmd: &mut Command, limit: Duration) -> anyhow::Result<Run> {
    let started = Instant::now();
    let child = cmd.spawn().context("cannot start the child")?;
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child's pid with valid pointers; WNOHANG never blocks.
        let got = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if got == pid {
            return Ok(Run {
                wall: started.elapsed(),
                max_rss_kb: usage.ru_maxrss,
                ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            });
        }
        if got < 0 {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        if started.elapsed() > limit {
            // SAFETY: kill(2) on our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn requests_seen(plant: &Plant, n: usize) -> u64 {
    (0..n)
        .map(|i| plant.function_codes_seen(i).values().sum::<u64>())
        .sum()
}

async fn start_plant(specs: Vec<DeviceSpec>, first: Ipv4Addr) -> anyhow::Result<(Plant, bool)> {
    match Plant::start_on_addresses(specs.clone(), first, 502).await {
        Ok(p) => Ok((p, true)),
        Err(e) => {
            println!("port 502 unavailable ({e}); agent on a free port, nmap skipped");
            Ok((Plant::start_on_addresses(specs, first, 0).await?, false))
        }
    }
}

async fn agent_scan(
    agent: &Path,
    range: &str,
    port: u16,
    units: &str,
    dir: &Path,
) -> anyhow::Result<(Run, serde_json::Value)> {
    let out = dir.join(format!("scan-{}.json", range.replace('/', "_")));
    let mut cmd = Command::new(agent);
    cmd.args([
        "scan",
        range,
        "--port",
        &port.to_string(),
        "--units",
        units,
        "--json",
    ])
    .env("RUST_LOG", "error")
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&out)?)
    .stderr(Stdio::null());
    let run = tokio::task::spawn_blocking(move || run_measured(&mut cmd, Duration::from_secs(300)))
        .await??;
    let doc = serde_json::from_str(&std::fs::read_to_string(&out)?)
        .context("outpost-agent scan printed no JSON")?;
    Ok((run, doc))
}

async fn nmap_scan(range: &str, dir: &Path) -> anyhow::Result<Option<(Run, usize)>> {
    let out = dir.join(format!("nmap-{}.txt", range.replace('/', "_")));
    let mut cmd = Command::new("nmap");
    cmd.args([
        "-n",
        "-Pn",
        "-p",
        "502",
        "--script",
        "modbus-discover",
        range,
    ])
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&out)?)
    .stderr(Stdio::null());
    let run =
        match tokio::task::spawn_blocking(move || run_measured(&mut cmd, Duration::from_secs(300)))
            .await?
        {
            Ok(r) => r,
            Err(e) => {
                println!("nmap not run: {e}");
                return Ok(None);
            }
        };
    let text = std::fs::read_to_string(&out)?;
    let sids = text
        .lines()
        .filter(|l| l.trim_start().starts_with("|   sid "))
        .count();
    Ok(Some((run, sids)))
}

fn print_agent(label: &str, run: &Run, doc: &serde_json::Value, wire: u64, devices: usize) {
    let t = &doc["totals"];
    let answered = t["answered"].as_u64().unwrap_or(0);
    let with_rev = doc["devices"]
        .as_array()
        .map(|d| {
            d.iter()
                .flat_map(|d| d["units"].as_array().cloned().unwrap_or_default())
                .filter(|u| u["identity"]["product_name"].is_string())
                .count()
        })
        .unwrap_or(0);
    println!(
        "{label:<8} wall {:>7.2} s  peak RSS {:>6.1} MB  {answered} devices, {} unit ids ({with_rev} with regular objects), {} silent  {:.2} requests/device on the wire{}",
        run.wall.as_secs_f64(),
        run.max_rss_kb as f64 / 1024.0,
        t["unit_ids"],
        t["silent"],
        wire as f64 / devices as f64,
        if run.ok { "" } else { "  (exit status not 0)" }
    );
}

fn print_nmap(run: &Run, sids: usize, wire: u64, devices: usize) {
    println!(
        "{:<8} wall {:>7.2} s  peak RSS {:>6.1} MB  {sids} unit ids (first answering sid per host, basic objects)  {:.2} requests/device on the wire{}",
        "nmap",
        run.wall.as_secs_f64(),
        run.max_rss_kb as f64 / 1024.0,
        wire as f64 / devices as f64,
        if run.ok {
            ""
        } else {
            "  (did not finish: killed at the 300 s limit, or failed)"
        }
    );
}

/// The scan section.
pub async fn run() -> anyhow::Result<()> {
    println!(
        "\n== discovery: outpost-agent scan vs nmap modbus-discover, 254 simulated devices on a loopback /24"
    );
    let agent = match harness::binary("outpost-agent") {
        Ok(p) => p,
        Err(e) => {
            println!("skipped: {e}");
            return Ok(());
        }
    };
    let dir = harness::temp_dir("bench-scan")?;
    let dir = dir.path();
    println!(
        "agent budget: defaults (16 connections, 10 requests/s per device, 500 ms connect, 1 s request timeout), --units 1,2"
    );

    let n = 254;
    let (plant, on_502) = start_plant(generated_plant(n), Ipv4Addr::new(127, 0, 80, 1)).await?;
    let port = plant.devices()[0].addr.port();
    let (run, doc) = agent_scan(&agent, "127.0.80.0/24", port, "1,2", dir).await?;
    let wire = requests_seen(&plant, n);
    print_agent("agent", &run, &doc, wire, n);
    let agent_wall = run.wall;
    if on_502 && let Some((run, sids)) = nmap_scan("127.0.80.0/24", dir).await? {
        let wire2 = requests_seen(&plant, n) - wire;
        print_nmap(&run, sids, wire2, n);
        let verdict = if agent_wall <= run.wall {
            "meets"
        } else {
            "MISSES"
        };
        println!("wall time {verdict} the \"no worse than nmap\" target");
    }
    plant.stop().await;

    println!(
        "\n-- a plant where 32 of 254 devices accept connections and never answer (varied: gateways, busy, slow, no FC 43, FC 43 faults)"
    );
    let silent: Vec<usize> = (0..n).filter(|i| i % 8 == 3).collect();
    let (plant, on_502) =
        start_plant(varied_plant(n, &silent), Ipv4Addr::new(127, 0, 81, 1)).await?;
    let port = plant.devices()[0].addr.port();
    let (run, doc) = agent_scan(&agent, "127.0.81.0/24", port, "1,2,3", dir).await?;
    let wire = requests_seen(&plant, n);
    print_agent("agent", &run, &doc, wire, n);
    if on_502 && let Some((run, sids)) = nmap_scan("127.0.81.0/24", dir).await? {
        let wire2 = requests_seen(&plant, n) - wire;
        print_nmap(&run, sids, wire2, n);
    }
    plant.stop().await;
    Ok(())
}
