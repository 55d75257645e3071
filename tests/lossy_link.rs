//! The diode link through loss: agent-side sender (FEC, paced) → lossy relay (real UDP,
//! seeded) → collector `serve` → a real SQLite file.
//!
//! Claims tested: every message delivered and applied at 10 % random loss and at bursts of 20
//! consecutive datagrams with the default FEC; at 50 % loss every lost message is reported as
//! a gap (zero undetected loss) and the CMDB converges after the next full snapshot; a lost
//! last message is reported within one heartbeat interval; a flood of garbage and forged FEC
//! headers from another address leaves memory bounded and every datagram counted.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outpost_agent::Agent;
use outpost_agent::config::Config;
use outpost_agent::keyfile;
use outpost_agent::transport::diode::DiodeSender;
use outpost_collector::{Cmdb, ServeConfig, ServeStats, serve};
use outpost_proto::chain::ChainTip;
use outpost_proto::envelope::MAX_ENVELOPE_BYTES;
use outpost_proto::envelope::seal;
use outpost_proto::fec::FecParams;
use outpost_proto::{AgentId, SigningKey, ZoneId};
use outpost_testbed::relay::{LossProfile, Relay};
use outpost_testbed::workload::summary_body;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(30);

/// A collector serving a fresh CMDB on 127.0.0.1, with one enrolled agent key.
struct Collector {
    _dir: tempfile::TempDir,
    db: PathBuf,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<ServeStats, outpost_collector::ServeError>>,
}

impl Collector {
    async fn start(enroll: &[(&SigningKey, &AgentId, &ZoneId)]) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("cmdb.sqlite");
        let mut cmdb = Cmdb::open(&db).unwrap();
        for (key, agent, zone) in enroll {
            cmdb.enroll(&key.public_key(), agent, std::slice::from_ref(*zone), 1)
                .unwrap();
        }
        drop(cmdb);
        let ready = dir.path().join("ready");
        let mut cfg = ServeConfig::new(&db, "127.0.0.1:0".parse().unwrap());
        cfg.ready_file = Some(ready.clone());
        let (stop, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(cfg, async {
            let _ = stop_rx.await;
        }));
        let deadline = Instant::now() + WAIT;
        let addr = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                break text.trim().parse().unwrap();
            }
            assert!(Instant::now() < deadline, "collector did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        Collector {
            _dir: dir,
            db,
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Runs `sql` (one integer) on a fresh connection.
    fn int(&self, sql: &str) -> i64 {
        let cmdb = Cmdb::open_existing(&self.db).unwrap();
        cmdb.connection()
            .query_row(sql, [], |r| r.get(0))
            .unwrap_or(0)
    }

    fn counter(&self, name: &str) -> i64 {
        self.int(&format!(
            "SELECT COALESCE((SELECT value FROM counters WHERE name = '{name}'), 0)"
        ))
    }

    /// Waits (bounded) until `check` holds.
    async fn wait(&self, what: &str, check: impl Fn(&Collector) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Missing sequence numbers reported in `sequence_gap` events.
    fn gap_seqs(&self) -> Vec<u64> {
        let cmdb = Cmdb::open_existing(&self.db).unwrap();
        let mut out = Vec::new();
        for e in cmdb.events(None).unwrap() {
            if e.kind == "sequence_gap" {
                let from = e.detail["from_seq"].as_u64().unwrap();
                let to = e.detail["to_seq"].as_u64().unwrap();
                out.extend(from..=to);
            }
        }
        out
    }

    async fn stop(mut self) -> ServeStats {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("collector stops")
            .unwrap()
            .unwrap()
    }
}

/// An agent identity that seals envelopes itself (the chain tip is kept here).
struct Sealer {
    key: SigningKey,
    agent: AgentId,
    zone: ZoneId,
    tip: ChainTip,
    round: u64,
}

impl Sealer {
    fn new(agent: &str) -> Sealer {
        Sealer {
            key: SigningKey::generate().unwrap().0,
            agent: AgentId::new(agent).unwrap(),
            zone: ZoneId::new("cell-1").unwrap(),
            tip: ChainTip::GENESIS,
            round: 0,
        }
    }

    /// The next summary envelope (5 assets: ~3 KB, 3 FEC source symbols).
    fn summary(&mut self) -> Vec<u8> {
        self.round += 1;
        let body = summary_body(&self.agent, &self.zone, 5, self.round);
        let sealed = seal(&self.key, &self.agent, &self.zone, &self.tip, 1_000, &body).unwrap();
        self.tip = sealed.tip;
        sealed.wire
    }
}

/// A sender with the agent's defaults (FEC 25 % / 24 repairs), paced for loopback.
fn sender(to: SocketAddr) -> DiodeSender {
    DiodeSender::new(to, 50_000)
        .unwrap()
        .with_link_rate(20_000_000)
        .with_fec(FecParams::default())
}

async fn delivers_all(profile: LossProfile, messages: u64) -> (Collector, Relay) {
    let mut s = Sealer::new("gw-loss");
    let c = Collector::start(&[(&s.key, &s.agent, &s.zone)]).await;
    let relay = Relay::start(c.addr, profile, 1_000_000).unwrap();
    let mut tx = sender(relay.addr());
    for _ in 0..messages {
        tx.send_message(&s.summary()).await.unwrap();
    }
    let want = messages as i64;
    c.wait("every envelope applied", |c| {
        c.int("SELECT count(*) FROM envelopes") == want
    })
    .await;
    assert!(c.gap_seqs().is_empty(), "no gap may be reported");
    assert_eq!(c.counter("reassembly_dropped"), 0);
    (c, relay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_message_at_ten_percent_random_loss() {
    let profile = LossProfile {
        reorder: 0.05,
        duplicate: 0.02,
        ..LossProfile::random(0.10, 0x5eed_0010)
    };
    let (c, relay) = delivers_all(profile, 200).await;
    let r = relay.stop();
    assert!(
        r.dropped_random > 300,
        "the relay really lost datagrams: {r:?}"
    );
    assert!(r.reordered > 0 && r.duplicated > 0, "{r:?}");
    let stats = c.stop().await;
    assert_eq!(stats.envelopes_applied, 200);
    assert!(stats.fec_repaired > 50, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_message_through_bursts_of_twenty() {
    let (c, relay) = delivers_all(LossProfile::bursts(20, (40, 120), 0x5eed_0020), 200).await;
    let r = relay.stop();
    assert!(r.dropped_burst >= 20 * 40, "bursts really happened: {r:?}");
    let stats = c.stop().await;
    assert_eq!(stats.envelopes_applied, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_fifty_percent_loss_every_lost_message_is_a_gap_and_state_converges() {
    let mut s = Sealer::new("gw-half");
    let mut other = Sealer::new("gw-other");
    let c = Collector::start(&[
        (&s.key, &s.agent, &s.zone),
        (&other.key, &other.agent, &other.zone),
    ])
    .await;
    // Half the datagrams lost, in long bursts (the loss FEC cannot repair), plus random loss
    // and truncation.
    let profile = LossProfile {
        loss: 0.05,
        truncate: 0.02,
        ..LossProfile::bursts(60, (30, 90), 0x5eed_0050)
    };
    let relay = Relay::start(c.addr, profile, 1_000_000).unwrap();
    let mut tx = sender(relay.addr());
    const N: u64 = 150;
    for _ in 0..N {
        tx.send_message(&s.summary()).await.unwrap();
    }
    // Another agent on a clean conduit meanwhile: undisturbed.
    let mut clean = sender(c.addr);
    for _ in 0..20 {
        clean.send_message(&other.summary()).await.unwrap();
    }
    // The conduit heals; the next full snapshot goes through.
    relay.set_profile(LossProfile::clean(1));
    tx.send_message(&s.summary()).await.unwrap();
    let last = s.tip.seq;
    c.wait("the final snapshot", |c| {
        c.int("SELECT last_seq FROM agents WHERE agent_id = 'gw-half'") == last as i64
    })
    .await;
    let r = relay.stop();
    assert!(r.dropped() * 10 >= r.received * 4, "about half lost: {r:?}");

    // Zero undetected loss: every sequence number either applied or named in a gap.
    let cmdb = Cmdb::open_existing(&c.db).unwrap();
    let mut applied: Vec<u64> = cmdb
        .connection()
        .prepare("SELECT seq FROM envelopes WHERE agent_id = 'gw-half' ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|x| x.unwrap() as u64)
        .collect();
    let gaps = c.gap_seqs();
    assert!(!gaps.is_empty(), "at 50 % loss some messages must be lost");
    let first = applied[0];
    applied.extend(&gaps);
    applied.sort_unstable();
    let expected: Vec<u64> = (first..=last).collect();
    assert_eq!(
        applied, expected,
        "applied + reported gaps = everything sent"
    );
    assert!(
        first <= 3,
        "the first message got through early (seq {first})"
    );

    // Converged: every asset reflects the final snapshot, nothing marked stale.
    let assets = cmdb.assets().unwrap();
    let mine: Vec<_> = assets.iter().filter(|a| a.agent_id == "gw-half").collect();
    assert_eq!(mine.len(), 5);
    for a in &mine {
        assert_eq!(a.last_envelope_seq, last as i64);
        assert_eq!(a.stale_since, None, "{a:?}");
    }
    // The other agent: all 20, no gap.
    assert_eq!(
        c.int("SELECT count(*) FROM envelopes WHERE agent_id = 'gw-other'"),
        20
    );
    assert_eq!(
        c.int("SELECT count(*) FROM events WHERE kind = 'sequence_gap' AND agent_id = 'gw-other'"),
        0
    );
    let stats = c.stop().await;
    assert!(
        stats.datagrams_rejected > 0,
        "truncated datagrams refused: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_marks_assets_stale_until_the_next_snapshot() {
    let mut s = Sealer::new("gw-stale");
    let c = Collector::start(&[(&s.key, &s.agent, &s.zone)]).await;
    let mut tx = sender(c.addr);
    tx.send_message(&s.summary()).await.unwrap();
    let _lost = s.summary();
    // A heartbeat after the lost summary: gap detected, assets stale.
    let beat = outpost_proto::model::Body::Heartbeat(outpost_proto::model::Heartbeat {
        agent: s.agent.clone(),
        zone: s.zone.clone(),
        last_seq: s.tip.seq,
        last_hash: s.tip.hash,
        interval_ms: 1_000,
        last_summary_seq: s.tip.seq,
    });
    let sealed = seal(&s.key, &s.agent, &s.zone, &s.tip, 2_000, &beat).unwrap();
    s.tip = sealed.tip;
    tx.send_message(&sealed.wire).await.unwrap();
    c.wait("the gap", |c| c.gap_seqs() == vec![2]).await;
    let stale = Cmdb::open_existing(&c.db).unwrap().assets().unwrap();
    assert_eq!(stale.len(), 5);
    assert!(stale.iter().all(|a| a.stale_since.is_some()));
    assert!(
        stale
            .iter()
            .all(|a| a.stale_gap.as_deref() == Some("2..=2"))
    );
    tx.send_message(&s.summary()).await.unwrap();
    c.wait("the snapshot", |c| {
        c.int("SELECT count(*) FROM envelopes") == 3
    })
    .await;
    let fresh = Cmdb::open_existing(&c.db).unwrap().assets().unwrap();
    assert!(fresh.iter().all(|a| a.stale_since.is_none()), "{fresh:?}");
    c.stop().await;
}

fn agent_config(dir: &Path, target: SocketAddr, heartbeat: &str) -> Config {
    let text = format!(
        "agent_id = \"gw-beat\"\nzone = \"cell-1\"\nstate_dir = \"state\"\n\
         key_file = \"keys/agent.key\"\npoll_interval = \"1h\"\ndevices = []\n\
         [diode]\ntarget = \"{target}\"\nlink_bytes_per_sec = 5000000\n\
         heartbeat_interval = \"{heartbeat}\"\n"
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    Config::load(&path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_last_message_is_reported_within_one_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let agent_id = AgentId::new("gw-beat").unwrap();
    let zone = ZoneId::new("cell-1").unwrap();
    let generated = keyfile::generate(&dir.path().join("keys"), Some(&agent_id)).unwrap();
    let key = keyfile::load_private(&generated.private_path).unwrap();
    let c = Collector::start(&[(&key, &agent_id, &zone)]).await;
    let relay = Relay::start(c.addr, LossProfile::clean(3), 1_000_000).unwrap();
    let config = agent_config(dir.path(), relay.addr(), "2s");
    let mut agent = Agent::new(config).unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        agent
            .run(async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        agent.tip()
    });
    // The first cycle arrives.
    c.wait("the first summary", |c| {
        c.int("SELECT count(*) FROM envelopes") >= 1
    })
    .await;
    // The summary's surplus repair symbols may still be on their way: wait until the relay
    // has seen nothing new for 150 ms, then lose the next message entirely (the first
    // heartbeat: 1 source + 24 repair symbols).
    let mut seen = relay.stats().received;
    let deadline = Instant::now() + WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let now = relay.stats().received;
        if now == seen {
            break;
        }
        seen = now;
        assert!(Instant::now() < deadline, "the relay never went quiet");
    }
    let lost_at = Instant::now();
    relay.drop_next(25);
    c.wait("the next message lost", |_| relay.drops_pending() == 0)
        .await;
    let lost_sent = Instant::now();
    c.wait("the gap", |c| !c.gap_seqs().is_empty()).await;
    let detected = lost_sent.elapsed();
    // The agent's chain starts at its clock: the lost message is the one after the first.
    let first = c.int("SELECT min(seq) FROM envelopes") as u64;
    assert_eq!(
        c.gap_seqs(),
        vec![first + 1],
        "exactly the lost message is named"
    );
    assert!(
        detected <= Duration::from_millis(2_000 + 500),
        "detected {detected:?} after the loss (heartbeat 2 s); waited {:?} in all",
        lost_at.elapsed()
    );
    let _ = stop_tx.send(());
    let tip = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    assert!(tip.seq >= 3);
    relay.stop();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_garbage_and_forged_fec_headers_is_bounded_and_counted() {
    let mut s = Sealer::new("gw-flood");
    let c = Collector::start(&[(&s.key, &s.agent, &s.zone)]).await;
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Forged FEC symbols: each a well-formed symbol of its own 1 MiB message (each would start
    // a decoder), then one claiming a 1 TB message, then garbage with the right magic.
    const FLOOD: u64 = 3_000;
    for id in 0..FLOOD {
        let _ = flood.send_to(&forged_symbol(id, MAX_ENVELOPE_BYTES as u64), c.addr);
        let _ = flood.send_to(&forged_symbol(id, (1 << 40) - 1), c.addr);
        let _ = flood.send_to(&[b'O', b'D', 2, 1, 0, 0, 0], c.addr);
        if id % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // A real agent's messages still get through afterwards.
    let mut tx = sender(c.addr);
    for _ in 0..5 {
        tx.send_message(&s.summary()).await.unwrap();
    }
    c.wait("the agent's envelopes", |c| {
        c.int("SELECT count(*) FROM envelopes") == 5
    })
    .await;
    c.wait("the flood counted", |c| {
        c.counter("datagrams_rejected") >= 2 * FLOOD as i64
    })
    .await;
    assert!(c.counter("datagrams_rejected.message_too_large") >= FLOOD as i64);
    let stats = c.stop().await;
    assert!(stats.datagrams >= FLOOD, "{stats:?}");
    // Forged messages were given up (evicted under the budget), never delivered.
    assert!(stats.reassembly_dropped > 0, "{stats:?}");
    assert_eq!(stats.envelopes_applied, 5);
}

/// A well-formed FEC symbol (valid CRC, consistent parameters) of a message `len` bytes long
/// that was never sent: symbol size 1160, `K` from the length, `R` 226, symbol id `id % 900`.
fn forged_symbol(id: u64, len: u64) -> Vec<u8> {
    let t: u16 = 1160;
    let k = u16::try_from(len.div_ceil(u64::from(t))).unwrap_or(u16::MAX);
    let mut d = vec![b'O', b'D', 2, 1];
    d.extend_from_slice(&id.to_be_bytes());
    d.extend_from_slice(&len.to_be_bytes()[3..8]);
    d.push(0);
    d.extend_from_slice(&t.to_be_bytes());
    d.extend_from_slice(&[1, 0, 1, 8]);
    d.extend_from_slice(&k.to_be_bytes());
    d.extend_from_slice(&226u16.to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    let esi = (id % 900) as u32;
    d.push(0);
    d.extend_from_slice(&esi.to_be_bytes()[1..4]);
    d.extend((0..t).map(|i| (i as u64 ^ id) as u8));
    let crc = crc32fast::hash(&d);
    d[28..32].copy_from_slice(&crc.to_be_bytes());
    d
}
