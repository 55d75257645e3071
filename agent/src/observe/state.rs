//! The last observed state of every asset and of the gateway host (what is persisted).

use std::collections::BTreeSet;

use outpost_proto::changes::AssetRef;
use outpost_proto::model::{DeviceIdentity, HostFacts, RegisterKind};
use serde::{Deserialize, Serialize};

/// Everything the agent remembers between polls (and restarts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedState {
    /// [`ObservedState::VERSION`] when written by this agent.
    pub version: u32,
    pub assets: Vec<AssetState>,
    /// The gateway's last facts (`None`: not yet collected).
    pub gateway: Option<HostFacts>,
    /// Every program executable seen running on the gateway since the state began (bounded).
    #[serde(default)]
    pub known_programs: BTreeSet<String>,
}

impl Default for ObservedState {
    fn default() -> Self {
        Self {
            version: Self::VERSION,
            assets: Vec::new(),
            gateway: None,
            known_programs: BTreeSet::new(),
        }
    }
}

impl ObservedState {
    /// The file format version.
    pub const VERSION: u32 = 1;
}

/// One (device, unit id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetState {
    pub asset: AssetRef,
    /// The device has answered at least once.
    pub answered: bool,
    /// The last identity read (only identifications that returned something).
    pub identity: Option<DeviceIdentity>,
    pub blocks: Vec<BlockState>,
    /// Consecutive polls without an answer.
    pub down_polls: u32,
    /// A `disappeared` change was sent and no `returned` since.
    pub reported_down: bool,
}

/// One configuration block's debounce state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    pub name: String,
    pub kind: RegisterKind,
    pub start: u16,
    /// The values last reported (or recorded silently as a baseline): the base of the next change.
    pub reported: Vec<u16>,
    /// The values seen in the last poll.
    pub last: Vec<u16>,
    /// Consecutive polls `last` has been seen.
    pub same_polls: u32,
    /// Consecutive polls whose values differed from the poll before.
    pub changed_polls: u32,
    /// An `unstable` change was sent and no `settled` since.
    pub unstable: bool,
}

impl BlockState {
    /// A block seen for the first time: its values are the baseline.
    pub fn baseline(name: &str, kind: RegisterKind, start: u16, values: &[u16]) -> BlockState {
        BlockState {
            name: name.to_owned(),
            kind,
            start,
            reported: values.to_vec(),
            last: values.to_vec(),
            same_polls: 1,
            changed_polls: 0,
            unstable: false,
        }
    }

    /// Whether a polled block is this one as configured (same name, table, start and length);
    /// anything else is a config change and starts a new baseline.
    pub fn same_shape(&self, name: &str, kind: RegisterKind, start: u16, len: usize) -> bool {
        self.name == name && self.kind == kind && self.start == start && self.reported.len() == len
    }
}
