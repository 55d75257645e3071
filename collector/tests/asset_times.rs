//! An asset's times (last seen, last polled, envelope) as readers see them, now that an
//! unchanged asset follows its agent's latest summary instead of being rewritten by it
//! (`MIGRATION_INGEST_FOLLOWS`, the `asset_times` view).
//!
//! A seeded sequence of summaries (devices listed or not, answering or not, values changing or
//! not, heartbeats in between, a device changing hands between two agents, the writer's cache
//! dropped now and then) is applied, and after every envelope `assets()` must show exactly the
//! times a plain model computes: what the collector showed when it rewrote every asset's times
//! on every summary.

mod common;

use std::collections::BTreeMap;

use common::{Fixture, T0, plc, plc_key};
use outpost_collector::Ingest;
use outpost_proto::envelope;
use outpost_proto::model::{Body, Heartbeat, PollStatus, Summary};
use outpost_proto::{AgentId, SigningKey};

/// What a reader must see for one asset.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Times {
    agent: String,
    last_seen: Option<i64>,
    last_polled: i64,
    seq: i64,
}

/// Deterministic pseudo-random numbers (64-bit LCG), so a failure replays exactly.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn heartbeat(f: &mut Fixture) -> Vec<u8> {
    let body = Body::Heartbeat(Heartbeat {
        agent: f.agent.clone(),
        zone: f.zone.clone(),
        last_seq: f.tip.seq,
        last_hash: f.tip.hash,
        interval_ms: 1000,
        last_summary_seq: 0,
    });
    let sealed = envelope::seal(&f.key, &f.agent, &f.zone, &f.tip, T0, &body).unwrap();
    f.tip = sealed.tip;
    sealed.wire
}

fn seen(ingest: &Ingest) -> BTreeMap<String, Times> {
    ingest
        .cmdb()
        .assets()
        .unwrap()
        .into_iter()
        .map(|a| {
            (
                a.ci_key,
                Times {
                    agent: a.agent_id,
                    last_seen: a.last_seen.map(|t| t.ms()),
                    last_polled: a.last_polled.ms(),
                    seq: a.last_envelope_seq,
                },
            )
        })
        .collect()
}

#[test]
fn asset_times_match_a_model_that_rewrites_every_listed_asset() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let (key2, _) = SigningKey::generate().unwrap();
    let gw2 = AgentId::new("gw-2").unwrap();
    ingest
        .cmdb_mut()
        .enroll(&key2.public_key(), &gw2, std::slice::from_ref(&f.zone), T0)
        .unwrap();
    let mut g = Fixture {
        dir: tempfile::tempdir().unwrap(),
        db: f.db.clone(),
        key: key2,
        agent: gw2,
        zone: f.zone.clone(),
        tip: outpost_proto::ChainTip::GENESIS,
    };

    let mut rng = Lcg(0x5eed_0002);
    let mut model: BTreeMap<String, Times> = BTreeMap::new();
    // Per device: its current register value, so "unchanged" really is unchanged.
    let mut values = [1u16; 5];
    let (mut unchanged_followers, mut missing, mut down_while_following) = (0, 0, 0);
    for step in 0..200u64 {
        let now = T0 + 1_000 * (step + 1);
        if step % 11 == 5 {
            // Heartbeats move the agent's last-seen time, never an asset's.
            ingest.envelope(&heartbeat(&mut f), "p", now).unwrap();
            assert_eq!(seen(&ingest), model, "after a heartbeat at step {step}");
            continue;
        }
        if step % 13 == 7 {
            // A fresh writer: no asset cache, everything is read back from the database.
            ingest = f.ingest();
        }
        // Device 4 is sometimes reported by gw-2 instead (it changes hands).
        let by_second = rng.below(6) == 0;
        let (fixture, devices): (&mut Fixture, &[u32]) = if by_second {
            (&mut g, &[4])
        } else {
            (&mut f, &[1, 2, 3, 4])
        };
        let mut assets = Vec::new();
        for &d in devices {
            if d != 1 && rng.below(5) == 0 {
                missing += 1;
                continue; // not listed in this summary
            }
            if rng.below(8) == 0 {
                values[d as usize] = values[d as usize].wrapping_add(1);
            }
            let mut obs = plc(d, vec![values[d as usize]]);
            let down = rng.below(6) == 0;
            if down {
                obs.status = PollStatus::Unreachable("connect timeout after 2s".into());
                obs.identity = Default::default();
                obs.blocks.clear();
            }
            let key = plc_key(d);
            let before = model.get(&key).cloned();
            if before
                .as_ref()
                .is_some_and(|b| b.agent == fixture.agent.as_str())
            {
                if down
                    && before
                        .as_ref()
                        .is_some_and(|b| b.last_seen == Some(b.last_polled))
                {
                    down_while_following += 1;
                } else {
                    unchanged_followers += 1;
                }
            }
            let seq = i64::try_from(fixture.tip.seq + 1).unwrap();
            model.insert(
                key,
                Times {
                    agent: fixture.agent.to_string(),
                    last_seen: if down {
                        before.and_then(|b| b.last_seen)
                    } else {
                        Some(now as i64)
                    },
                    last_polled: now as i64,
                    seq,
                },
            );
            assets.push(obs);
        }
        let summary: Summary = fixture.summary(assets);
        let wire = fixture.seal(&summary);
        ingest.envelope(&wire, "p", now).unwrap();
        assert_eq!(seen(&ingest), model, "after summary step {step}");
    }
    // The sequence exercised what it is meant to.
    assert!(unchanged_followers > 100, "{unchanged_followers}");
    assert!(missing > 50, "{missing}");
    assert!(down_while_following > 10, "{down_while_following}");
}

#[test]
fn a_steady_state_summary_does_not_rewrite_unchanged_assets() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let assets = || (1..=20).map(|i| plc(i, vec![i as u16])).collect::<Vec<_>>();
    for i in 0..3 {
        let wire = f.seal(&f.summary(assets()));
        ingest.envelope(&wire, "p", T0 + i).unwrap();
    }
    // Mark every asset row; an UPDATE of the row by the next summary would be visible as a
    // changed `changes()` count, so compare the rows' stored columns instead.
    let stored = |ingest: &Ingest| -> Vec<(i64, Option<i64>, i64, i64)> {
        ingest
            .cmdb()
            .connection()
            .prepare(
                "SELECT last_polled_ms, last_seen_ms, last_envelope_seq, follows_agent
                 FROM assets ORDER BY asset_id",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let before = stored(&ingest);
    assert!(before.iter().all(|r| r.3 == 1), "all follow: {before:?}");
    let wire = f.seal(&f.summary(assets()));
    let applied = ingest.envelope(&wire, "p", T0 + 100).unwrap();
    assert_eq!(applied.outcome.assets_unchanged, 20);
    assert_eq!(stored(&ingest), before, "no asset row was written");
    // ...yet readers see the new summary's times.
    for a in ingest.cmdb().assets().unwrap() {
        assert_eq!(a.last_polled.ms(), (T0 + 100) as i64);
        assert_eq!(a.last_seen.map(|t| t.ms()), Some((T0 + 100) as i64));
        assert_eq!(a.last_envelope_seq, 4);
    }
}

#[test]
fn rows_written_before_the_migration_keep_their_times_until_a_summary_moves_them() {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let wire = f.seal(&f.summary(vec![plc(1, vec![1]), plc(2, vec![2])]));
    ingest.envelope(&wire, "p", T0 + 10).unwrap();
    // What MIGRATION_INGEST_FOLLOWS leaves for rows written before it: nothing follows, the
    // agent has no latest summary, the times are in the asset's own columns.
    ingest
        .cmdb()
        .connection()
        .execute_batch(
            "UPDATE assets SET follows_agent = 0;
             UPDATE agents SET last_summary_ms = NULL, last_summary_seq = NULL;",
        )
        .unwrap();
    drop(ingest);
    let mut ingest = f.ingest();
    let times = |ingest: &Ingest| -> Vec<(Option<i64>, i64, i64)> {
        ingest
            .cmdb()
            .assets()
            .unwrap()
            .into_iter()
            .map(|a| {
                (
                    a.last_seen.map(|t| t.ms()),
                    a.last_polled.ms(),
                    a.last_envelope_seq,
                )
            })
            .collect()
    };
    let t10 = (T0 + 10) as i64;
    assert_eq!(times(&ingest), [(Some(t10), t10, 1), (Some(t10), t10, 1)]);
    // Device 1 unchanged, device 2 not listed: 1 moves on, 2 keeps what it had.
    let wire = f.seal(&f.summary(vec![plc(1, vec![1])]));
    ingest.envelope(&wire, "p", T0 + 20).unwrap();
    let t20 = (T0 + 20) as i64;
    assert_eq!(times(&ingest), [(Some(t20), t20, 2), (Some(t10), t10, 1)]);
    let wire = f.seal(&f.summary(vec![plc(1, vec![1])]));
    ingest.envelope(&wire, "p", T0 + 30).unwrap();
    let t30 = (T0 + 30) as i64;
    assert_eq!(times(&ingest), [(Some(t30), t30, 3), (Some(t10), t10, 1)]);
}
