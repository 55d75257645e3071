//! The observer: compares each poll with the last observed state and yields the changes.
//!
//! Assets are matched by endpoint and unit id (a device renamed in the config is the same
//! device). What the state has never seen is recorded silently as a baseline: a new asset, a
//! new or resized block (a config change), the first gateway facts. Volatile blocks are never
//! compared (nor kept). Presence: a device that has answered before and then stays unreachable
//! for `unreachable_polls` consecutive polls is `disappeared` (once), and `returned` when it
//! answers again; a configured device that answers for the first time after the state began
//! has `appeared`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use outpost_proto::changes::{AssetRef, Change, ChangeKind, FieldChange};
use outpost_proto::model::{
    AssetObservation, DeviceIdentity, Endpoint, HostFacts, HostList, IdentMethod, PollStatus,
};

use super::block;
use super::host_diff;
use super::state::{AssetState, BlockState, ObservedState};
use super::store::{self, StoreError};

/// The noise-control settings (`[changes]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// A changed block value must be seen this many consecutive polls (≥ 1).
    pub confirm_polls: u32,
    /// A device unreachable for this many consecutive polls has disappeared (≥ 1).
    pub unreachable_polls: u32,
}

/// The last observed state, its file, and the comparison.
#[derive(Debug)]
pub struct Observer {
    dir: PathBuf,
    state: ObservedState,
    settings: Settings,
    damaged_files: u64,
    /// Digest of the state last written (or loaded).
    written: Option<outpost_proto::Digest>,
}

impl Observer {
    /// Loads `dir/observed-state.cbor` (a damaged file is set aside and counted, never fatal).
    pub fn open(dir: &Path, settings: Settings, now_ms: u64) -> Observer {
        let loaded = store::load(dir, now_ms);
        let mut state = loaded.state;
        state.version = ObservedState::VERSION;
        if loaded.found {
            tracing::info!(
                assets = state.assets.len(),
                "observed state loaded: changes are compared with the last poll before the restart"
            );
        }
        Observer {
            dir: dir.to_owned(),
            state,
            settings,
            damaged_files: u64::from(loaded.set_aside.is_some()),
            written: None,
        }
    }

    /// Damaged observed-state files set aside since the agent started.
    pub fn damaged_files(&self) -> u64 {
        self.damaged_files
    }

    /// The state as it stands.
    pub fn state(&self) -> &ObservedState {
        &self.state
    }

    /// Writes the state to the state directory (atomically).
    /// An unchanged state is not written again (a gateway's flash is spared a write per poll).
    pub fn persist(&mut self) -> Result<(), StoreError> {
        let digest = store::digest(&self.state)?;
        if self.written == Some(digest) {
            return Ok(());
        }
        store::save(&self.dir, &self.state)?;
        self.written = Some(digest);
        Ok(())
    }

    /// Compares one cycle's observations (in config order) and gateway facts with the state,
    /// updates it, and returns the changes: assets in order, the gateway's last.
    pub fn observe(
        &mut self,
        assets: &[AssetObservation],
        gateway: Option<&HostFacts>,
    ) -> Vec<Change> {
        let mut previous: HashMap<(Endpoint, u8), AssetState> =
            std::mem::take(&mut self.state.assets)
                .into_iter()
                .map(|a| ((a.asset.endpoint.clone(), a.asset.unit_id), a))
                .collect();
        let mut changes = Vec::new();
        let mut next = Vec::with_capacity(assets.len());
        for obs in assets {
            let key = (obs.endpoint.clone(), obs.unit_id);
            let state = match previous.remove(&key) {
                Some(mut prev) => {
                    for what in self.compare(&mut prev, obs) {
                        changes.push(Change {
                            asset: Some(prev.asset.clone()),
                            what,
                        });
                    }
                    prev
                }
                None => baseline(obs),
            };
            next.push(state);
        }
        self.state.assets = next;
        if let Some(now) = gateway {
            let mut host = Vec::new();
            match &self.state.gateway {
                Some(before) => {
                    host = host_diff::diff(before, now);
                    // A program missing from a cut list may simply not have fitted; a list
                    // switched back on in `[gateway]` is a new baseline, not a burst of news.
                    if before.switched_off.contains(&HostList::Executables) {
                        self.state.known_programs.extend(host_diff::programs(now));
                    } else if !before.truncated.contains(&HostList::Executables) {
                        host.extend(host_diff::new_programs(now, &mut self.state.known_programs));
                    }
                }
                None => self.state.known_programs.extend(host_diff::programs(now)),
            }
            changes.extend(host.into_iter().map(|f| Change {
                asset: None,
                what: ChangeKind::Host(f),
            }));
            self.state.gateway = Some(now.clone());
        }
        changes
    }

    fn compare(&self, prev: &mut AssetState, obs: &AssetObservation) -> Vec<ChangeKind> {
        let mut out = Vec::new();
        prev.asset.name.clone_from(&obs.name);
        if let PollStatus::Unreachable(why) = &obs.status {
            prev.down_polls = prev.down_polls.saturating_add(1);
            if prev.answered
                && !prev.reported_down
                && prev.down_polls >= self.settings.unreachable_polls.max(1)
            {
                prev.reported_down = true;
                out.push(ChangeKind::Disappeared {
                    polls: prev.down_polls,
                    reason: why.clone(),
                });
            }
            return out;
        }
        prev.down_polls = 0;
        if prev.reported_down {
            prev.reported_down = false;
            out.push(ChangeKind::Returned);
        }
        if !prev.answered {
            let fresh = baseline(obs);
            prev.answered = true;
            prev.identity = fresh.identity;
            prev.blocks = fresh.blocks;
            out.push(ChangeKind::Appeared(obs.identity.clone()));
            return out;
        }
        if obs.identity.method != IdentMethod::None {
            if let Some(old) = &prev.identity {
                out.extend(
                    identity_changes(old, &obs.identity)
                        .into_iter()
                        .map(ChangeKind::Identity),
                );
            }
            prev.identity = Some(obs.identity.clone());
        }
        let mut old_blocks: Vec<BlockState> = std::mem::take(&mut prev.blocks);
        let mut blocks = Vec::with_capacity(obs.blocks.len());
        for b in obs.blocks.iter().filter(|b| !b.volatile) {
            let found = old_blocks
                .iter()
                .position(|s| s.same_shape(&b.name, b.kind, b.start, b.values.len()));
            match found {
                Some(i) => {
                    let mut s = old_blocks.swap_remove(i);
                    out.extend(block::step(&mut s, &b.values, self.settings.confirm_polls));
                    blocks.push(s);
                }
                None => blocks.push(BlockState::baseline(&b.name, b.kind, b.start, &b.values)),
            }
        }
        if obs.status == PollStatus::Partial {
            // A block missing from a partial poll keeps its state (absence is not evidence).
            blocks.extend(
                old_blocks
                    .into_iter()
                    .filter(|s| !obs.blocks.iter().any(|b| b.name == s.name)),
            );
        }
        prev.blocks = blocks;
        out
    }
}

/// The state of an asset seen for the first time (nothing reported).
fn baseline(obs: &AssetObservation) -> AssetState {
    let answered = !matches!(obs.status, PollStatus::Unreachable(_));
    AssetState {
        asset: AssetRef {
            name: obs.name.clone(),
            endpoint: obs.endpoint.clone(),
            unit_id: obs.unit_id,
        },
        answered,
        identity: (answered && obs.identity.method != IdentMethod::None)
            .then(|| obs.identity.clone()),
        blocks: obs
            .blocks
            .iter()
            .filter(|b| !b.volatile)
            .map(|b| BlockState::baseline(&b.name, b.kind, b.start, &b.values))
            .collect(),
        down_polls: u32::from(!answered),
        reported_down: false,
    }
}

/// Identity objects that changed, named as the collector's attributes (`revision`,
/// `object.0x80`).
fn identity_changes(old: &DeviceIdentity, new: &DeviceIdentity) -> Vec<FieldChange> {
    let mut out = Vec::new();
    for ((field, b), (_, a)) in old.fields().into_iter().zip(new.fields()) {
        if b != a {
            out.push(FieldChange {
                field: field.to_owned(),
                before: b.map(str::to_owned),
                after: a.map(str::to_owned),
            });
        }
    }
    let ids: std::collections::BTreeSet<u8> =
        old.other.keys().chain(new.other.keys()).copied().collect();
    for id in ids {
        let (b, a) = (old.other.get(&id), new.other.get(&id));
        if b != a {
            out.push(FieldChange {
                field: format!("object.0x{id:02x}"),
                before: b.cloned(),
                after: a.cloned(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::model::{RegisterBlock, RegisterKind};

    const SETTINGS: Settings = Settings {
        confirm_polls: 1,
        unreachable_polls: 3,
    };

    fn obs(values: &[u16], revision: &str) -> AssetObservation {
        AssetObservation {
            name: "plc".into(),
            endpoint: Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 502,
            },
            unit_id: 1,
            status: PollStatus::Ok,
            identity: DeviceIdentity {
                method: IdentMethod::ReadDeviceIdentification,
                revision: Some(revision.into()),
                ..DeviceIdentity::default()
            },
            blocks: vec![
                RegisterBlock::new("cfg", RegisterKind::Holding, 0, values.to_vec()),
                RegisterBlock::new("pv", RegisterKind::Input, 0, vec![values[0]])
                    .with_volatile(true),
            ],
            problems: vec![],
            profile: None,
            serial: None,
            mac: None,
        }
    }

    fn down(mut o: AssetObservation) -> AssetObservation {
        o.status = PollStatus::Unreachable("connection refused".into());
        o.blocks.clear();
        o.identity = DeviceIdentity::default();
        o
    }

    fn names(changes: &[Change]) -> Vec<&'static str> {
        changes.iter().map(|c| c.what.name()).collect()
    }

    #[test]
    fn first_poll_is_a_silent_baseline_then_changes_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Observer::open(dir.path(), SETTINGS, 0);
        assert!(o.observe(&[obs(&[1, 2], "1.0")], None).is_empty());
        assert!(o.observe(&[obs(&[1, 2], "1.0")], None).is_empty());
        let c = o.observe(&[obs(&[1, 3], "1.1")], None);
        assert_eq!(names(&c), ["identity", "block"]);
        let ChangeKind::Identity(f) = &c[0].what else {
            panic!()
        };
        assert_eq!(
            (f.field.as_str(), f.before.as_deref(), f.after.as_deref()),
            ("revision", Some("1.0"), Some("1.1"))
        );
    }

    #[test]
    fn volatile_blocks_are_never_compared() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Observer::open(dir.path(), SETTINGS, 0);
        for i in 0..50u16 {
            let mut a = obs(&[1, 2], "1.0");
            a.blocks[1] =
                RegisterBlock::new("pv", RegisterKind::Input, 0, vec![i]).with_volatile(true);
            assert!(o.observe(&[a], None).is_empty(), "poll {i}");
        }
    }

    #[test]
    fn restart_and_a_new_block_cause_no_changes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut o = Observer::open(dir.path(), SETTINGS, 0);
            o.observe(&[obs(&[1, 2], "1.0")], None);
            o.persist().unwrap();
        }
        let mut o = Observer::open(dir.path(), SETTINGS, 0);
        assert_eq!(o.state().assets.len(), 1);
        let mut a = obs(&[1, 2], "1.0");
        a.blocks.push(RegisterBlock::new(
            "added",
            RegisterKind::Coil,
            8,
            vec![1, 0, 1],
        ));
        assert!(
            o.observe(&[a.clone()], None).is_empty(),
            "a new block is a baseline"
        );
        a.blocks[2] = RegisterBlock::new("added", RegisterKind::Coil, 8, vec![1, 1, 1]);
        assert_eq!(names(&o.observe(&[a], None)), ["block"]);
    }

    #[test]
    fn a_damaged_state_file_is_counted_and_causes_no_changes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut o = Observer::open(dir.path(), SETTINGS, 0);
            o.observe(&[obs(&[1, 2], "1.0")], None);
            o.persist().unwrap();
        }
        let file = dir.path().join(store::STATE_FILE);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes.truncate(bytes.len() / 2);
        std::fs::write(&file, bytes).unwrap();
        let mut o = Observer::open(dir.path(), SETTINGS, 5);
        assert_eq!(o.damaged_files(), 1);
        // The device did change meanwhile: still no change, the poll is the new baseline.
        assert!(o.observe(&[obs(&[9, 9], "2.0")], None).is_empty());
        assert_eq!(names(&o.observe(&[obs(&[9, 8], "2.0")], None)), ["block"]);
    }

    #[test]
    fn a_steady_state_is_not_written_again() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(store::STATE_FILE);
        let mut o = Observer::open(dir.path(), SETTINGS, 0);
        let inode = |o: &mut Observer| {
            o.persist().unwrap();
            std::fs::metadata(&file).unwrap().ino()
        };
        // (the second poll confirms the baseline's values: the state settles there)
        o.observe(&[obs(&[1, 2], "1.0")], None);
        o.observe(&[obs(&[1, 2], "1.0")], None);
        let first = inode(&mut o);
        for _ in 0..5 {
            o.observe(&[obs(&[1, 2], "1.0")], None);
        }
        let steady = inode(&mut o);
        assert_eq!(first, steady, "unchanged: not replaced");
        o.observe(&[obs(&[1, 3], "1.0")], None);
        assert_ne!(
            inode(&mut o),
            steady,
            "changed: written (a new file renamed over)"
        );
    }

    #[test]
    fn presence_disappeared_after_n_polls_then_returned() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Observer::open(dir.path(), SETTINGS, 0);
        o.observe(&[obs(&[1], "1.0")], None);
        assert!(o.observe(&[down(obs(&[1], "1.0"))], None).is_empty());
        assert!(o.observe(&[down(obs(&[1], "1.0"))], None).is_empty());
        assert_eq!(
            names(&o.observe(&[down(obs(&[1], "1.0"))], None)),
            ["disappeared"]
        );
        assert!(
            o.observe(&[down(obs(&[1], "1.0"))], None).is_empty(),
            "once"
        );
        assert_eq!(names(&o.observe(&[obs(&[1], "1.0")], None)), ["returned"]);
    }

    #[test]
    fn a_device_answering_for_the_first_time_has_appeared() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Observer::open(dir.path(), SETTINGS, 0);
        assert!(o.observe(&[down(obs(&[1], "1.0"))], None).is_empty());
        assert_eq!(names(&o.observe(&[obs(&[1], "1.0")], None)), ["appeared"]);
        assert!(o.observe(&[obs(&[1], "1.0")], None).is_empty());
    }

    #[test]
    fn gateway_changes_come_last() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Observer::open(dir.path(), SETTINGS, 0);
        let mut g = HostFacts {
            kernel_version: Some("6.1".into()),
            ..HostFacts::default()
        };
        assert!(o.observe(&[obs(&[1], "1.0")], Some(&g)).is_empty());
        g.kernel_version = Some("6.2".into());
        let c = o.observe(&[obs(&[2], "1.0")], Some(&g));
        assert_eq!(names(&c), ["block", "host"]);
        assert!(c[1].asset.is_none());
    }
}
