//! `outpost-collector`: enroll agent keys, serve the diode, and read the CMDB.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use outpost_collector::alert::{AlertConfig, Dispatcher, SinkSpec};
use outpost_collector::cmdb::baseline::Scope;
use outpost_collector::cmdb::change_record::{self, ChangeInput};
use outpost_collector::mqtt::{MqttServeConfig, serve_mqtt};
use outpost_collector::render::{self, Format};
use outpost_collector::render_drift;
use outpost_collector::time::now_ms;
use outpost_collector::{Cmdb, ServeConfig, serve};
use outpost_collector::{audit, evidence, key_cmd};
use outpost_proto::{AgentId, KeyId, PublicKey, ZoneId};

/// mimalloc instead of the system allocator: ingest allocates a summary's strings on the
/// checking thread and frees them on the writer, which glibc's malloc handles slowly (about a
/// tenth of each thread's time in profiles); see README "Figures".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "outpost-collector",
    version,
    about = "Receives signed inventory from Outpost agents over a one-way UDP diode and keeps a \
             SQLite CMDB",
    after_help = "Logging goes to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more detail."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `serve --mqtt …`: subscribe to a broker (can be combined with --diode-listen).
#[derive(Args, Debug)]
struct MqttArgs {
    /// Broker to subscribe to: mqtt://host[:port] or mqtts://host[:port].
    #[arg(long, value_name = "URL")]
    mqtt: Option<String>,
    /// PEM CA certificate the broker's certificate must chain to (mqtts://).
    #[arg(long, value_name = "FILE", requires = "mqtt")]
    mqtt_ca: Option<PathBuf>,
    /// PEM client certificate, for brokers that require one (with --mqtt-key).
    #[arg(long, value_name = "FILE", requires = "mqtt_key")]
    mqtt_cert: Option<PathBuf>,
    /// PEM client key (with --mqtt-cert).
    #[arg(long, value_name = "FILE", requires = "mqtt_cert")]
    mqtt_key: Option<PathBuf>,
    /// Broker username.
    #[arg(long, value_name = "USER", requires = "mqtt")]
    mqtt_user: Option<String>,
    /// File whose first line is the broker password.
    #[arg(long, value_name = "FILE", requires = "mqtt_user")]
    mqtt_password_file: Option<PathBuf>,
    /// Subscription; use $share/<group>/outpost/v1/# to split agents between collectors.
    #[arg(long, value_name = "FILTER", default_value = outpost_collector::mqtt::DEFAULT_TOPIC)]
    mqtt_topic: String,
    /// MQTT client id; unique per collector (the broker keeps this collector's queue under it).
    #[arg(long, value_name = "ID", default_value = "outpost-collector")]
    mqtt_client_id: String,
}

#[derive(Subcommand)]
enum Command {
    /// Trust an agent's public key for one or more zones (creates the CMDB if needed).
    Enroll {
        /// The CMDB file.
        #[arg(long)]
        db: PathBuf,
        /// A zone the agent may report for (repeat for several).
        #[arg(long = "zone", required = true)]
        zones: Vec<ZoneId>,
        /// The agent's public key file (`agent.pub` from `outpost-agent keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The agent id; defaults to the comment at the end of the key line.
        #[arg(long)]
        agent: Option<AgentId>,
    },
    /// Listen on the diode and apply what arrives (SIGTERM/SIGINT stop it cleanly).
    Serve {
        /// The CMDB file (create it with `enroll`).
        #[arg(long)]
        db: PathBuf,
        /// Address to receive diode datagrams on, e.g. 0.0.0.0:7000.
        #[arg(long, required_unless_present = "mqtt")]
        diode_listen: Option<SocketAddr>,
        /// Write the bound address (or, with only --mqtt, the broker URL once subscribed) here.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// How far ahead of this collector's clock an envelope's agent time may be (e.g.
        /// 300s, 10m); envelopes further in the future are quarantined as future_timestamp.
        #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = humantime::parse_duration)]
        max_clock_skew: std::time::Duration,
        #[command(flatten)]
        mqtt: MqttArgs,
        #[command(flatten)]
        alerts: AlertArgs,
    },
    /// Enrolled keys: list them, revoke one.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Re-verify what the CMDB stores.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Evidence packs for auditors: write one (`evidence --db F --zone Z --from T --to T --out
    /// DIR --key K`), make the key (`evidence keygen`), check one offline (`evidence verify DIR`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Evidence {
        #[command(subcommand)]
        command: Option<EvidenceCommand>,
        #[command(flatten)]
        build: EvidenceBuild,
    },
    /// Exports for ITSM tools: a ServiceNow IRE payload, CSV, or a CycloneDX 1.6 JSON HBOM
    /// (field mapping: docs/exports.md).
    Export {
        /// The CMDB file.
        #[arg(long)]
        db: PathBuf,
        /// servicenow-ire, csv or cyclonedx.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Where to write; `-` for stdout (optional with --post).
        #[arg(long, required_unless_present = "post")]
        out: Option<PathBuf>,
        /// Only this zone's CIs.
        #[arg(long)]
        zone: Option<String>,
        #[command(flatten)]
        post: ServiceNowPost,
    },
    /// Field devices (configuration items).
    Assets(Query),
    /// Agents, their keys and gateways.
    Agents(Query),
    /// Events: new and changed assets, gaps, chain breaks, drops.
    Events {
        #[command(flatten)]
        query: Query,
        /// Show only the newest N.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Attribute change history.
    History {
        #[command(flatten)]
        query: Query,
        /// Only this asset (its CI key, as shown by `assets --json`; `gateway/<agent>` for a
        /// gateway's self-inventory attributes).
        #[arg(long)]
        asset: Option<String>,
        /// Show only the newest N.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Refused datagrams and envelopes.
    Quarantine {
        #[command(flatten)]
        query: Query,
        /// Show only the newest N.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Counters and totals.
    Stats(Query),
    /// Approve the observed state as the baseline drift is judged against.
    #[command(subcommand)]
    Baseline(BaselineCommand),
    /// Current drift of every CI against its approved baseline.
    Drift(Query),
    /// Record, import or confirm change records (RFCs).
    #[command(subcommand)]
    Change(ChangeCommand),
    /// Change records with their evidence, and change/alert totals (MTTD, % verified).
    Changes(Query),
    /// Change events sent by agents between snapshots, each with its outcome (applied,
    /// already_current, unknown_asset, stale_base, awaiting_snapshot, other_agent, …).
    ChangesObserved {
        #[command(flatten)]
        query: Query,
        /// Show only the newest N.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Alerts raised (unauthorised changes, new and unreachable devices) and their delivery.
    Alerts {
        #[command(flatten)]
        query: Query,
        /// Show only the newest N.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Segmentation probes: the latest result per agent and target (violations and conduits
    /// down first); `--all` adds the history of results, newest first.
    Probes {
        #[command(flatten)]
        query: Query,
        /// Also list every stored probe result (newest first, at most 10000).
        #[arg(long)]
        all: bool,
    },
}

/// `serve` alert delivery (see README "Drift and change authorisation").
#[derive(Args, Debug)]
struct AlertArgs {
    /// Append alerts as OCSF JSON lines (class 5019 / 5001) to this file.
    #[arg(long, value_name = "FILE")]
    alert_file: Option<PathBuf>,
    /// Send alerts as RFC 5424 syslog to udp://HOST:PORT or tcp://HOST:PORT (repeatable).
    #[arg(long, value_name = "URL")]
    alert_syslog: Vec<String>,
    /// POST each alert's OCSF event as JSON to this http:// or https:// URL (repeatable).
    #[arg(long, value_name = "URL")]
    alert_webhook: Vec<String>,
    /// Consecutive unreachable observations of a baselined device before `device_unreachable`
    /// is raised (once); recorded in the CMDB.
    #[arg(long, value_name = "N", default_value_t = outpost_collector::cmdb::presence::DEFAULT_UNREACHABLE_POLLS,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    unreachable_polls: u32,
    /// Consecutive observations a changed identity/register value of a baselined device needs
    /// before it is judged (1: at once); recorded in the CMDB.
    #[arg(long, value_name = "M", default_value_t = outpost_collector::cmdb::debounce::DEFAULT_CONFIRM_POLLS,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    confirm_polls: u32,
}

#[derive(Subcommand)]
enum BaselineCommand {
    /// Approve one asset, a zone (and new devices there become alerts) or everything.
    Approve {
        /// The CMDB file.
        #[arg(long)]
        db: PathBuf,
        /// One asset: its CI key or unique name.
        #[arg(long, group = "scope", required_unless_present_any = ["zone", "all"])]
        asset: Option<String>,
        /// Every asset of this zone.
        #[arg(long, group = "scope")]
        zone: Option<String>,
        /// Every asset and zone.
        #[arg(long, group = "scope")]
        all: bool,
        /// Who approves (recorded).
        #[arg(long)]
        by: String,
        /// Why: a reason or ticket (recorded).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum ChangeCommand {
    /// Record one change record.
    Add {
        /// The CMDB file.
        #[arg(long)]
        db: PathBuf,
        /// The ticket id, e.g. CHG0031337.
        #[arg(long)]
        ticket: String,
        /// The CI it changes: CI key or unique asset name.
        #[arg(long)]
        asset: String,
        /// Window start, RFC 3339 (2026-12-01T14:00:00Z).
        #[arg(long)]
        from: String,
        /// Window end, RFC 3339.
        #[arg(long)]
        to: String,
        /// Expected value after the change: revision=2.1 or block.NAME[ADDRESS]=VALUE (repeatable).
        #[arg(long, value_name = "FIELD=VALUE")]
        expect: Vec<String>,
        /// Move the baseline as soon as the change is observed (default: on `change confirm`).
        #[arg(long)]
        auto_confirm: bool,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// Import change records from a JSON or CSV file (all or none).
    Import {
        /// The CMDB file.
        #[arg(long)]
        db: PathBuf,
        /// JSON (array of records) or CSV (header ticket,asset,from,to[,expect][,auto_confirm][,description]).
        file: PathBuf,
    },
    /// Confirm an implemented change record: its CIs' baselines move to what is observed now.
    Confirm {
        /// The CMDB file.
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        ticket: String,
        /// Who confirms (recorded).
        #[arg(long)]
        by: String,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Every enrolled key with its agent, zones and status (active, retired, revoked).
    List(Query),
    /// Stop trusting a key: later envelopes sealed with it are quarantined (key_revoked) and
    /// each raises a revoked_key_used event naming agent, key and peer.
    Revoke {
        /// The CMDB file.
        #[arg(long)]
        db: PathBuf,
        /// The key id (32 hex digits, as `key list` shows it).
        #[arg(long, value_name = "ID")]
        key_id: String,
        /// Why, recorded with the revocation and in the key_revoked event.
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Re-verify every stored envelope's signature (against the stored key history) and every
    /// agent's hash chain from the database alone; list gaps and breaks. Exits 3 on any sign
    /// of tampering, 1 if the audit could not run.
    Verify(Query),
}

#[derive(Args)]
struct EvidenceBuild {
    /// The CMDB file.
    #[arg(long, required = true)]
    db: Option<PathBuf>,
    /// The zone the pack covers.
    #[arg(long, required = true)]
    zone: Option<String>,
    /// Start of the period (agent clock), RFC 3339 (2026-11-01T00:00:00Z) or a date (2026-11-01).
    #[arg(long, required = true, value_parser = parse_time)]
    from: Option<i64>,
    /// End of the period (exclusive); default now.
    #[arg(long, value_parser = parse_time)]
    to: Option<i64>,
    /// A new (or empty) directory to write the pack into.
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    /// The collector evidence key (`evidence.key` from `evidence keygen`) that signs the manifest.
    #[arg(long, required = true)]
    key: Option<PathBuf>,
}

/// `export --format servicenow-ire --post URL` (docs/exports.md "POSTing to an instance").
#[derive(Args, Debug)]
struct ServiceNowPost {
    /// POST the IRE payload to this ServiceNow instance (https://acme.service-now.com), in
    /// batches, to /api/now/identifyreconcile.
    #[arg(long, value_name = "URL")]
    post: Option<String>,
    /// Integration user for Basic authentication (with --sn-password-file).
    #[arg(long, value_name = "USER", requires = "sn_password_file")]
    sn_user: Option<String>,
    /// File whose first line is the user's password.
    #[arg(long, value_name = "FILE", requires = "sn_user")]
    sn_password_file: Option<PathBuf>,
    /// File whose first line is an OAuth bearer token (instead of user and password).
    #[arg(long, value_name = "FILE", conflicts_with = "sn_user")]
    sn_token_file: Option<PathBuf>,
    /// PEM CA certificate(s) the instance's certificate chains to (trusted instead of the
    /// built-in Mozilla roots).
    #[arg(long, value_name = "FILE")]
    sn_ca: Option<PathBuf>,
    /// Most CIs per request (gateways travel with their devices on top).
    #[arg(long, value_name = "N", default_value_t = 100)]
    sn_batch_items: usize,
    /// Further attempts after a transient failure (no connection, timeout, 429, 502-504).
    #[arg(long, value_name = "N", default_value_t = 3)]
    sn_retries: u32,
    /// Pause before the first retry (doubles each time).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    sn_retry_pause: std::time::Duration,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    ServicenowIre,
    Csv,
    Cyclonedx,
}

#[derive(Subcommand)]
enum EvidenceCommand {
    /// Make a collector evidence key: DIR/evidence.key (0600, never overwritten) and
    /// DIR/evidence.pub (give it to auditors).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a pack with nothing but the pack: file hashes, manifest signature, every
    /// envelope's signature and chain, and that the report says what the envelopes say. Exits
    /// 3 on any sign of tampering, 1 if the pack cannot be read at all.
    Verify {
        /// The pack directory.
        dir: PathBuf,
        /// The collector's evidence.pub the pack must be signed with (recommended).
        #[arg(long, value_name = "FILE")]
        collector_key: Option<PathBuf>,
        /// Print JSON (`outpost.evidence-verify.v1`).
        #[arg(long)]
        json: bool,
    },
}

fn parse_time(text: &str) -> Result<i64, String> {
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    let t = humantime::parse_rfc3339_weak(&full)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time like 2026-11-01T00:00:00Z: {e}"))?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?
        .as_millis();
    i64::try_from(ms).map_err(|_| format!("{text:?} is too far in the future"))
}

#[derive(Args)]
struct Query {
    /// The CMDB file.
    #[arg(long)]
    db: PathBuf,
    /// Print a versioned JSON document (see docs/json.md) instead of a table.
    #[arg(long)]
    json: bool,
}

impl Query {
    fn open(&self) -> Result<(Cmdb, Format)> {
        let cmdb = Cmdb::open_existing(&self.db)?;
        let format = if self.json {
            Format::Json
        } else {
            Format::Text
        };
        Ok((cmdb, format))
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<TamperFound>() => {
            eprintln!("outpost-collector: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("outpost-collector: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
    match cli.command {
        Command::Enroll {
            db,
            zones,
            key,
            agent,
        } => enroll(&db, &zones, &key, agent),
        Command::Serve {
            db,
            diode_listen,
            ready_file,
            max_clock_skew,
            mqtt,
            alerts,
        } => {
            let mut sinks = Vec::new();
            if let Some(file) = alerts.alert_file {
                sinks.push(SinkSpec::OcsfFile(file));
            }
            for url in &alerts.alert_syslog {
                sinks.push(SinkSpec::syslog(url).map_err(anyhow::Error::msg)?);
            }
            for url in &alerts.alert_webhook {
                sinks.push(SinkSpec::webhook(url).map_err(anyhow::Error::msg)?);
            }
            // serve never creates the CMDB (an operator enrols agents first): open_existing.
            let mut cmdb = Cmdb::open_existing(&db)?;
            cmdb.set_unreachable_polls(alerts.unreachable_polls)
                .and_then(|()| cmdb.set_confirm_polls(alerts.confirm_polls))
                .with_context(|| {
                    format!(
                        "recording --unreachable-polls and --confirm-polls in {}",
                        db.display()
                    )
                })?;
            drop(cmdb);
            let alert_cfg = AlertConfig {
                db: db.clone(),
                sinks,
            };
            let mqtt_cfg = mqtt.mqtt.map(|url| {
                let mut m = MqttServeConfig::new(db.clone(), url);
                m.ca_file = mqtt.mqtt_ca;
                m.client_cert = mqtt.mqtt_cert;
                m.client_key = mqtt.mqtt_key;
                m.username = mqtt.mqtt_user;
                m.password_file = mqtt.mqtt_password_file;
                m.topic = mqtt.mqtt_topic;
                m.client_id = mqtt.mqtt_client_id;
                m.max_clock_skew = max_clock_skew;
                if diode_listen.is_none() {
                    m.ready_file = ready_file.clone();
                }
                m
            });
            let diode_cfg = diode_listen.map(|listen| {
                let mut cfg = ServeConfig::new(db, listen);
                cfg.ready_file = ready_file;
                cfg.max_clock_skew = max_clock_skew;
                cfg
            });
            if alert_cfg.sinks.is_empty() {
                return run_serve(diode_cfg, mqtt_cfg);
            }
            let dispatcher = Dispatcher::start(alert_cfg)?;
            let served = run_serve(diode_cfg, mqtt_cfg);
            dispatcher.stop();
            served
        }
        Command::Assets(q) => {
            let (cmdb, f) = q.open()?;
            print(&render::assets(&cmdb.assets()?, f, now))
        }
        Command::Agents(q) => {
            let (cmdb, f) = q.open()?;
            print(&render::agents(&cmdb.agents()?, f, now))
        }
        Command::Events { query, limit } => {
            let (cmdb, f) = query.open()?;
            print(&render::events(&cmdb.events(limit)?, f, now))
        }
        Command::History {
            query,
            asset,
            limit,
        } => {
            let (cmdb, f) = query.open()?;
            let rows = cmdb.history(asset.as_deref(), limit)?;
            if let Some(asset) = &asset
                && rows.is_empty()
                && !cmdb.assets()?.iter().any(|a| &a.ci_key == asset)
            {
                bail!(
                    "no asset with CI key {asset:?} in {}; list CI keys with \
                     `outpost-collector assets --json --db {}`",
                    q_path(&cmdb),
                    q_path(&cmdb)
                );
            }
            print(&render::history(&rows, f, now))
        }
        Command::Quarantine { query, limit } => {
            let (cmdb, f) = query.open()?;
            print(&render::quarantine(&cmdb.quarantine(limit)?, f, now))
        }
        Command::Stats(q) => {
            let (cmdb, f) = q.open()?;
            print(&render::stats(&cmdb.stats()?, f, now))
        }
        Command::Baseline(BaselineCommand::Approve {
            db,
            asset,
            zone,
            all,
            by,
            reason,
        }) => {
            let scope = match (asset, zone, all) {
                (Some(a), _, _) => Scope::Asset(a),
                (_, Some(z), _) => Scope::Zone(z),
                (_, _, true) => Scope::All,
                _ => bail!("pass --asset CI, --zone ZONE or --all"),
            };
            let mut cmdb = Cmdb::open_existing(&db)?;
            let done = cmdb.approve_baseline(&scope, &by, &reason, now_ms())?;
            let zones = if done.zones.is_empty() {
                String::new()
            } else {
                format!(
                    "; zone(s) {} baselined (new devices there raise alerts)",
                    done.zones.join(", ")
                )
            };
            print(&format!(
                "approved the observed state of {} asset(s) and {} gateway(s) as baseline, by \
                 {by}: {reason}{zones}\n",
                done.assets, done.gateways
            ))
        }
        Command::Drift(q) => {
            let (cmdb, f) = q.open()?;
            print(&render_drift::drift(&cmdb.drift()?, f, now))
        }
        Command::Change(cmd) => change(cmd),
        Command::Changes(q) => {
            let (cmdb, f) = q.open()?;
            let rows = cmdb.changes()?;
            let totals = cmdb.change_totals()?;
            print(&render_drift::changes(&rows, &totals, f, now))
        }
        Command::ChangesObserved { query, limit } => {
            let (cmdb, f) = query.open()?;
            let rows = cmdb.observed_changes(limit)?;
            print(&render_drift::observed_changes(&rows, f, now))
        }
        Command::Alerts { query, limit } => {
            let (cmdb, f) = query.open()?;
            let rows = cmdb.alerts(limit)?;
            print(&render_drift::alerts(&rows, &cmdb.alert_sinks()?, f, now))
        }
        Command::Probes { query, all } => {
            let (cmdb, f) = query.open()?;
            let state = cmdb.probe_state()?;
            let history = if all {
                Some(cmdb.probe_history(outpost_collector::cmdb::probes::MAX_HISTORY_ROWS)?)
            } else {
                None
            };
            print(&outpost_collector::render_probes::probes(
                &state,
                history.as_deref(),
                f,
                now,
            ))
        }
        Command::Key(KeyCommand::List(q)) => {
            let (cmdb, f) = q.open()?;
            print(&key_cmd::render_list(&cmdb.key_list()?, f, now))
        }
        Command::Key(KeyCommand::Revoke { db, key_id, reason }) => {
            let Some(id) = KeyId::from_hex(key_id.trim()) else {
                bail!(
                    "--key-id {key_id:?} is not a key id (32 hex digits);                      `outpost-collector key list --db {}` shows them",
                    db.display()
                );
            };
            let mut cmdb = Cmdb::open_existing(&db)?;
            let done = cmdb.revoke_key(&id, &reason, now_ms())?;
            print(&key_cmd::render_revoked(&done, &reason))
        }
        Command::Evidence { command, build } => run_evidence(command, build, now),
        Command::Export {
            db,
            format,
            out,
            zone,
            post,
        } => match post.post.clone() {
            Some(url) => {
                run_servicenow_post(&db, format, out.as_deref(), zone.as_deref(), url, post, now)
            }
            None => {
                let Some(out) = out else {
                    bail!("--out FILE is required (or --post URL with --format servicenow-ire)");
                };
                run_export(&db, format, &out, zone.as_deref(), now)
            }
        },
        Command::Audit(AuditCommand::Verify(q)) => {
            let format = if q.json { Format::Json } else { Format::Text };
            if !q.db.exists() {
                bail!(
                    "CMDB {} does not exist; pass the file `serve --db` writes",
                    q.db.display()
                );
            }
            let report = audit::verify(&q.db)?;
            print(&audit::render(&report, format, now))?;
            if report.clean() {
                Ok(())
            } else {
                Err(TamperFound(report.findings.len()).into())
            }
        }
    }
}

fn change(cmd: ChangeCommand) -> Result<()> {
    match cmd {
        ChangeCommand::Add {
            db,
            ticket,
            asset,
            from,
            to,
            expect,
            auto_confirm,
            description,
        } => {
            let input = ChangeInput {
                ticket: ticket.clone(),
                asset,
                from,
                to,
                expect,
                auto_confirm,
                description,
            };
            let mut cmdb = Cmdb::open_existing(&db)?;
            cmdb.add_changes(&[("change record".to_owned(), input)], "cli", now_ms())?;
            print(&format!("recorded change record {ticket}\n"))
        }
        ChangeCommand::Import { db, file } => {
            let inputs = change_record::read_file(&file)?;
            let mut cmdb = Cmdb::open_existing(&db)?;
            let source = format!("import:{}", file.display());
            let n = cmdb.add_changes(&inputs, &source, now_ms())?;
            print(&format!(
                "imported {n} change record(s) from {}\n",
                file.display()
            ))
        }
        ChangeCommand::Confirm { db, ticket, by } => {
            let mut cmdb = Cmdb::open_existing(&db)?;
            let done = cmdb.confirm_change(&ticket, &by, now_ms())?;
            let mut text = format!("confirmed {ticket}\n");
            for c in &done {
                let moved = if c.moved.is_empty() {
                    "nothing".to_owned()
                } else {
                    c.moved.join(", ")
                };
                text.push_str(&format!("  {}: baseline moved for {moved}\n", c.asset));
                if !c.unexplained.is_empty() {
                    text.push_str(&format!(
                        "  {}: still drift, not explained by {ticket}: {} (see `alerts`; \
                         approve explicitly with `baseline approve --asset`)\n",
                        c.asset,
                        c.unexplained.join(", ")
                    ));
                }
            }
            print(&text)
        }
    }
}

/// `audit verify` found something: exit status 3 (1 is any error, as for every command).
#[derive(Debug)]
struct TamperFound(usize);

impl std::fmt::Display for TamperFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "found {} sign(s) of tampering or corruption", self.0)
    }
}

impl std::error::Error for TamperFound {}

fn q_path(cmdb: &Cmdb) -> String {
    cmdb.path().display().to_string()
}

fn enroll(db: &Path, zones: &[ZoneId], key_file: &Path, agent: Option<AgentId>) -> Result<()> {
    let text = std::fs::read_to_string(key_file).with_context(|| {
        format!(
            "cannot read public key file {}; pass the agent.pub written by `outpost-agent keygen`",
            key_file.display()
        )
    })?;
    let (key, named) = PublicKey::parse_file(&text)
        .with_context(|| format!("public key file {} is not usable", key_file.display()))?;
    let agent = match (agent, named) {
        (Some(given), Some(named)) if given != named => bail!(
            "{} names agent {named} but --agent says {given}; a key is trusted for one agent \
             only: drop --agent or use the key file of agent {given}",
            key_file.display()
        ),
        (Some(given), _) => given,
        (None, Some(named)) => named,
        (None, None) => bail!(
            "{} does not name an agent; pass --agent AGENT_ID (the agent_id in the agent's \
             config) or append the agent id to the key line",
            key_file.display()
        ),
    };
    let mut cmdb = Cmdb::open(db)?;
    let done = cmdb.enroll(&key, &agent, zones, now_ms())?;
    let all: Vec<&str> = done.zones.iter().map(ZoneId::as_str).collect();
    let what = if done.new_key {
        "enrolled".to_owned()
    } else if done.zones_added.is_empty() {
        "already enrolled, nothing changed:".to_owned()
    } else {
        let added: Vec<&str> = done.zones_added.iter().map(ZoneId::as_str).collect();
        format!("added zone(s) {} to", added.join(", "))
    };
    print(&format!(
        "{what} key {} for agent {} in zone(s) {} (CMDB {})\n",
        done.key_id,
        done.agent,
        all.join(", "),
        db.display()
    ))
}

fn run_serve(diode: Option<ServeConfig>, mqtt: Option<MqttServeConfig>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal()?;
        match (diode, mqtt) {
            (Some(d), None) => {
                serve(d, shutdown).await?;
            }
            (None, Some(m)) => {
                serve_mqtt(m, shutdown).await?;
            }
            (Some(d), Some(m)) => {
                // One signal stops both.
                let (tx, rx) = tokio::sync::watch::channel(false);
                let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                    let _ = rx.wait_for(|v| *v).await;
                };
                let signal = async move {
                    shutdown.await;
                    let _ = tx.send(true);
                };
                let (_, a, b) =
                    tokio::join!(signal, serve(d, stop(rx.clone())), serve_mqtt(m, stop(rx)));
                a?;
                b?;
            }
            (None, None) => bail!("serve needs --diode-listen ADDR, --mqtt URL, or both"),
        }
        Ok(())
    })
}

/// Completes on SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

fn run_export(
    db: &Path,
    format: ExportFormat,
    out: &Path,
    zone: Option<&str>,
    now: i64,
) -> Result<()> {
    use outpost_collector::export::{self, Inventory};
    let cmdb = Cmdb::open_existing(db)?;
    let inv = Inventory::read(&cmdb, zone)?;
    let bytes = match format {
        ExportFormat::ServicenowIre => {
            let p = export::servicenow::payload(&inv);
            export::servicenow::check_shape(&p)
                .map_err(|e| anyhow::anyhow!("internal error: IRE payload shape: {e}"))?;
            let mut t = serde_json::to_string_pretty(&p)?;
            t.push('\n');
            t.into_bytes()
        }
        ExportFormat::Csv => export::csv::render(&inv).context("cannot write CSV")?,
        ExportFormat::Cyclonedx => {
            let mut t = serde_json::to_string_pretty(&export::cyclonedx::bom(&inv, now))?;
            t.push('\n');
            t.into_bytes()
        }
    };
    if out == Path::new("-") {
        return print(&String::from_utf8_lossy(&bytes));
    }
    std::fs::write(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "wrote {} ({} field devices, {} gateways)",
        out.display(),
        inv.assets.len(),
        inv.gateways.len()
    );
    Ok(())
}

fn run_servicenow_post(
    db: &Path,
    format: ExportFormat,
    out: Option<&Path>,
    zone: Option<&str>,
    url: String,
    args: ServiceNowPost,
    now: i64,
) -> Result<()> {
    use outpost_collector::export::servicenow_post::{self as sn, Auth, PostConfig};
    use outpost_collector::export::{self, Inventory};
    if !matches!(format, ExportFormat::ServicenowIre) {
        bail!("--post sends a ServiceNow IRE payload; use it with --format servicenow-ire");
    }
    let auth = match (&args.sn_user, &args.sn_password_file, &args.sn_token_file) {
        (Some(user), Some(pw), None) => Auth::Basic {
            user: user.clone(),
            password: sn::read_secret(pw, "--sn-password-file")?,
        },
        (None, None, Some(token)) => Auth::Bearer(sn::read_secret(token, "--sn-token-file")?),
        _ => bail!(
            "--post needs credentials: --sn-user USER --sn-password-file FILE, or \
             --sn-token-file FILE"
        ),
    };
    if let Some(out) = out {
        // Keep a copy of what is sent, like a plain export.
        run_export(db, format, out, zone, now)?;
    }
    let cmdb = Cmdb::open_existing(db)?;
    let inv = Inventory::read(&cmdb, zone)?;
    let payload = export::servicenow::payload(&inv);
    export::servicenow::check_shape(&payload)
        .map_err(|e| anyhow::anyhow!("internal error: IRE payload shape: {e}"))?;
    if payload["items"].as_array().is_none_or(Vec::is_empty) {
        eprintln!(
            "nothing to send: the CMDB holds no CIs{}",
            zone.map(|z| format!(" in zone {z}")).unwrap_or_default()
        );
        return Ok(());
    }
    let cfg = PostConfig {
        url,
        auth,
        ca_file: args.sn_ca,
        batch_items: args.sn_batch_items,
        retries: args.sn_retries,
        retry_pause: args.sn_retry_pause,
    };
    let mut item_errors = 0usize;
    let reports = sn::post(
        &payload,
        &cfg,
        |b| {
            let ops: Vec<String> = b
                .operations
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            println!(
                "batch {}: {} items, {} relations: HTTP {} after {} attempt{}; {}{}",
                b.batch,
                b.items,
                b.relations,
                b.status,
                b.attempts,
                if b.attempts == 1 { "" } else { "s" },
                if ops.is_empty() {
                    "no per-item result".to_owned()
                } else {
                    ops.join(", ")
                },
                if b.item_errors.is_empty() {
                    String::new()
                } else {
                    format!("; {} item errors", b.item_errors.len())
                }
            );
            for e in &b.item_errors {
                println!("  {e}");
            }
            item_errors += b.item_errors.len();
        },
        std::thread::sleep,
    )?;
    println!(
        "posted {} CIs ({} field devices, {} gateways) in {} batches",
        inv.assets.len() + inv.gateways.len(),
        inv.assets.len(),
        inv.gateways.len(),
        reports.len()
    );
    if item_errors > 0 {
        bail!("ServiceNow reported errors for {item_errors} items (listed above)");
    }
    Ok(())
}

fn run_evidence(command: Option<EvidenceCommand>, b: EvidenceBuild, now: i64) -> Result<()> {
    match command {
        Some(EvidenceCommand::Keygen { out }) => {
            let (private, public, key) = evidence::key::generate(&out)?;
            print(&format!(
                "wrote {} (keep it secret; mode 0600) and {} (key id {}; give it to auditors)\n",
                private.display(),
                public.display(),
                key.key_id()
            ))
        }
        Some(EvidenceCommand::Verify {
            dir,
            collector_key,
            json,
        }) => {
            let pinned = collector_key
                .as_deref()
                .map(evidence::key::load_public)
                .transpose()?;
            let report = evidence::verify(&dir, pinned.as_ref())?;
            if json {
                print(&render::json_document(
                    "outpost.evidence-verify.v1",
                    now,
                    &report,
                ))?;
            } else {
                print(&evidence::verify::render(&report))?;
            }
            if report.clean() {
                Ok(())
            } else {
                Err(TamperFound(report.findings.len()).into())
            }
        }
        None => {
            let (Some(db), Some(zone), Some(from_ms), Some(out), Some(key)) =
                (b.db, b.zone, b.from, b.out, b.key)
            else {
                bail!("evidence needs --db, --zone, --from, --out and --key (see --help)");
            };
            let key = evidence::key::load(&key)?;
            let summary = evidence::build(&evidence::BuildRequest {
                db: &db,
                zone: &zone,
                from_ms,
                to_ms: b.to.unwrap_or(now),
                out: &out,
                key: &key,
                now_ms: now,
            })?;
            print(&format!(
                "wrote evidence pack {}: {} envelopes from {} agent(s), {} CIs ({} checked at \
                 least every 35 days), {} gap(s)/break(s), change records {}; manifest signed by \
                 collector key {}\ncheck it with: outpost-collector evidence verify {} \
                 --collector-key evidence.pub\n",
                summary.out.display(),
                summary.envelopes,
                summary.agents,
                summary.cis,
                summary.cis_within_limit,
                summary.discontinuities,
                if summary.changes_available {
                    "included"
                } else {
                    "not available in this CMDB"
                },
                summary.collector_key_id,
                summary.out.display()
            ))
        }
    }
}
