//! `outpost-agent scan`: arguments, live progress (indicatif on a terminal, nothing otherwise),
//! then the table or JSON, and the starter config.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::report;
use super::scan::{Budget, Outcome, ScanPlan, scan};
use super::targets::{expand, parse_units};
use crate::modbus::read_only::Timing;

/// Most connections a scan may hold open at once, whatever `--max-connections` says.
pub const MAX_CONNECTIONS: usize = 256;

/// Arguments of `outpost-agent scan`.
#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    /// CIDR ranges, address ranges or single addresses to sweep (e.g. 10.20.0.0/24
    /// 10.20.1.10-10.20.1.50 10.20.2.7).
    #[arg(required = true, value_name = "CIDR")]
    pub ranges: Vec<String>,
    /// Modbus TCP port.
    #[arg(long, default_value_t = 502)]
    pub port: u16,
    /// Unit ids to ask at every address (never 0): e.g. 1,2,255 or 1-4.
    #[arg(long, default_value = "1", value_name = "LIST")]
    pub units: String,
    /// K: connections (devices) in flight at once.
    #[arg(long, default_value_t = 16, value_name = "K")]
    pub max_connections: usize,
    /// R: requests per second per device.
    #[arg(long, default_value_t = 10.0, value_name = "R")]
    pub rate: f64,
    /// Connect timeout: what an unreachable address costs.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Request timeout.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Sweep ranges larger than 4096 addresses (up to 65536).
    #[arg(long)]
    pub force: bool,
    /// Print a JSON document (schema outpost.scan.v1) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// A directory of device profiles (*.toml) besides the built-in ones.
    #[arg(long, value_name = "DIR")]
    pub profiles: Option<PathBuf>,
    /// Write a starter agent config for what answered to FILE (refuses to overwrite).
    #[arg(long, value_name = "FILE")]
    pub write_config: Option<PathBuf>,
}

impl ScanArgs {
    /// The plan these arguments describe, or why they are refused.
    pub fn plan(&self) -> anyhow::Result<ScanPlan> {
        let addresses = expand(&self.ranges, self.force)?;
        let units = parse_units(&self.units)?;
        if self.max_connections == 0 || self.max_connections > MAX_CONNECTIONS {
            anyhow::bail!(
                "--max-connections {}: give 1..={MAX_CONNECTIONS}",
                self.max_connections
            );
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 1000.0) {
            anyhow::bail!(
                "--rate {}: give requests per second per device, 0 < R <= 1000",
                self.rate
            );
        }
        if self.connect_timeout.is_zero() || self.timeout.is_zero() {
            anyhow::bail!("--connect-timeout and --timeout must be above zero");
        }
        Ok(ScanPlan {
            addresses,
            port: self.port,
            units,
            budget: Budget {
                max_connections: self.max_connections,
                timing: Timing {
                    connect_timeout: self.connect_timeout,
                    request_timeout: self.timeout,
                    min_request_gap: Duration::from_secs_f64(1.0 / self.rate),
                },
            },
        })
    }
}

/// Runs the scan on a current-thread runtime and prints the results.
pub fn run(args: ScanArgs) -> anyhow::Result<()> {
    let plan = args.plan()?;
    let library = match &args.profiles {
        Some(dir) => crate::profile::Library::with_dir(dir)?,
        None => crate::profile::Library::builtin()?,
    };
    if let Some(path) = &args.write_config
        && path.exists()
    {
        anyhow::bail!(
            "--write-config {}: the file exists; give a new file name (scan never overwrites a config)",
            path.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let bar = ProgressBar::with_draw_target(
        Some(plan.addresses.len() as u64),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} addresses {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let started = std::time::Instant::now();
    let mut answered = 0usize;
    let mut units = 0usize;
    let mut results = runtime.block_on(scan(&plan, |r| {
        if r.outcome == Outcome::Answered {
            answered += 1;
            units += r.units.len();
        }
        bar.set_message(format!("· {answered} devices, {units} unit ids"));
        bar.inc(1);
    }));
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    for u in results.iter_mut().flat_map(|r| r.units.iter_mut()) {
        u.profile = library.find(&u.identity).map(|p| p.name.clone());
    }
    if args.json {
        let doc = report::to_json(&plan, &results, elapsed);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", report::table(&results, elapsed));
    }
    if let Some(path) = &args.write_config {
        let text = report::starter_config(&args.ranges, &results, Some(&library));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        std::io::Write::write_all(&mut file, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "starter config written to {}; fill in the placeholders, then `outpost-agent check-config --config {}`",
            path.display(),
            path.display()
        );
    }
    Ok(())
}
