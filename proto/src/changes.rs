//! Change events: what an agent saw change since its last observation.
//!
//! A [`ChangeSet`] is the payload of a `Body::Changes` envelope. The agent keeps the last
//! observed state of every asset and of its gateway host; after each poll it compares and sends
//! the differences here, so the receiver can judge a change at once instead of at the next full
//! snapshot. Full snapshots still go out periodically: a lost change set is repaired by the
//! next one.
//!
//! Everything is bounded so a change set stays a small envelope: at most [`MAX_CHANGES`]
//! changes (more sets `truncated`; the next snapshot carries the rest), and per register block
//! at most [`MAX_RANGES_PER_BLOCK`] changed ranges holding at most [`MAX_REGISTERS_PER_BLOCK`]
//! registers (more sets the block's `truncated` flag; `after_hash` still names the whole new
//! block). A receiver calls [`ChangeSet::check`] before trusting the bounds.

use serde::{Deserialize, Serialize};

use crate::envelope::Digest;
use crate::ids::{AgentId, ZoneId};
use crate::model::{DeviceIdentity, Endpoint, RegisterKind};

/// Most changes in one change set.
pub const MAX_CHANGES: usize = 256;
/// Most changed ranges reported for one register block.
pub const MAX_RANGES_PER_BLOCK: usize = 32;
/// Most registers (or bits) across the ranges reported for one block.
pub const MAX_REGISTERS_PER_BLOCK: usize = 256;
/// Longest text (field name, value, reason) in a change, in bytes.
pub const MAX_CHANGE_TEXT: usize = 1024;

/// The changes one agent observed in one poll cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSet {
    pub agent: AgentId,
    pub zone: ZoneId,
    /// When the poll that saw the changes started, milliseconds since the Unix epoch.
    pub observed_ms: u64,
    /// The sequence number of the agent's last full snapshot before this set (0: none since
    /// the agent started).
    pub base_summary_seq: u64,
    /// The changes, in asset order; the gateway's (`asset: None`) last.
    pub changes: Vec<Change>,
    /// More changes were seen than [`MAX_CHANGES`]; the next full snapshot carries them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// One change of one asset (or of the gateway host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The field device; `None` for the gateway host the agent runs on.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<AssetRef>,
    #[serde(rename = "c")]
    pub what: ChangeKind,
}

/// Which field device a change is about: the same triple a summary's observation carries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AssetRef {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "ep")]
    pub endpoint: Endpoint,
    #[serde(rename = "u")]
    pub unit_id: u8,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// An identity object (FC 43) changed: `field` is the CMDB attribute name (`revision`,
    /// `vendor_name`, …, or `object.0xNN`).
    Identity(FieldChange),
    /// A configuration register or coil block changed (confirmed over `confirm_polls` polls).
    Block(BlockChange),
    /// A block changed in consecutive polls: reported once; its values are not sent again
    /// until it settles.
    Unstable(BlockRef),
    /// An unstable block held one value for `confirm_polls` polls: the change from the last
    /// reported value to the settled one.
    Settled(BlockChange),
    /// A configured device answered for the first time since the agent's state began.
    Appeared(DeviceIdentity),
    /// A device that had answered before stayed unreachable for `polls` consecutive polls.
    Disappeared { polls: u32, reason: String },
    /// A device reported as disappeared answers again.
    Returned,
    /// A gateway host fact changed: `field` is `os_version`, `kernel_version`, `os_name`,
    /// `hostname`, `interface` (value `name mac`), `listening` (value `proto/port address
    /// [exe]`) or `executable` (value the path or name). A list entry that appeared has no
    /// `before`; one that vanished has no `after`.
    Host(FieldChange),
}

impl ChangeKind {
    /// A short name for logs and the CMDB (`block`, `identity`, …).
    pub fn name(&self) -> &'static str {
        match self {
            ChangeKind::Identity(_) => "identity",
            ChangeKind::Block(_) => "block",
            ChangeKind::Unstable(_) => "unstable",
            ChangeKind::Settled(_) => "settled",
            ChangeKind::Appeared(_) => "appeared",
            ChangeKind::Disappeared { .. } => "disappeared",
            ChangeKind::Returned => "returned",
            ChangeKind::Host(_) => "host",
        }
    }
}

/// A text field's value before and after (absent: the field had no value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    #[serde(rename = "f")]
    pub field: String,
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Names a register block of an asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "k")]
    pub kind: RegisterKind,
    #[serde(rename = "s")]
    pub start: u16,
}

/// A block's changed ranges with before and after values, and the hashes of the whole block
/// before and after ([`crate::model::RegisterBlock::content_hash`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockChange {
    #[serde(rename = "blk")]
    pub block: BlockRef,
    /// The block's length in registers (or bits) after the change.
    #[serde(rename = "len")]
    pub len: u16,
    #[serde(rename = "bh")]
    pub before_hash: Digest,
    #[serde(rename = "ah")]
    pub after_hash: Digest,
    #[serde(rename = "r")]
    pub ranges: Vec<RangeChange>,
    /// Not every changed register fits the bounds: `ranges` holds the first ones only.
    #[serde(rename = "t", default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Consecutive registers that changed, from `offset` (relative to the block's start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeChange {
    #[serde(rename = "o")]
    pub offset: u16,
    #[serde(rename = "b", with = "crate::model::be_words")]
    pub before: Vec<u16>,
    #[serde(rename = "a", with = "crate::model::be_words")]
    pub after: Vec<u16>,
}

/// Why a decoded change set breaks its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeSetError {
    #[error("{0} changes, more than the {MAX_CHANGES} allowed")]
    TooManyChanges(usize),
    #[error(
        "change {index}: block {block:?} has {ranges} ranges, more than {MAX_RANGES_PER_BLOCK}"
    )]
    TooManyRanges {
        index: usize,
        block: String,
        ranges: usize,
    },
    #[error(
        "change {index}: block {block:?} reports {registers} registers, more than {MAX_REGISTERS_PER_BLOCK}"
    )]
    TooManyRegisters {
        index: usize,
        block: String,
        registers: usize,
    },
    #[error(
        "change {index}: block {block:?} has a range that is empty, uneven (before and after differ in length) or past the block's end"
    )]
    BadRange { index: usize, block: String },
    #[error("change {index}: a text field is longer than {MAX_CHANGE_TEXT} bytes")]
    TextTooLong { index: usize },
    #[error("change {index}: a {kind} change needs an asset")]
    MissingAsset { index: usize, kind: &'static str },
}

impl ChangeSet {
    /// Checks the bounds a receiver relies on (the decoder only bounds total size and depth).
    pub fn check(&self) -> Result<(), ChangeSetError> {
        if self.changes.len() > MAX_CHANGES {
            return Err(ChangeSetError::TooManyChanges(self.changes.len()));
        }
        for (index, change) in self.changes.iter().enumerate() {
            let long = |t: &str| t.len() > MAX_CHANGE_TEXT;
            if let Some(a) = &change.asset
                && long(&a.name)
            {
                return Err(ChangeSetError::TextTooLong { index });
            }
            let field_too_long = |f: &FieldChange| {
                long(&f.field)
                    || f.before.as_deref().is_some_and(long)
                    || f.after.as_deref().is_some_and(long)
            };
            match &change.what {
                ChangeKind::Identity(f) | ChangeKind::Host(f) if field_too_long(f) => {
                    return Err(ChangeSetError::TextTooLong { index });
                }
                ChangeKind::Disappeared { reason, .. } if long(reason) => {
                    return Err(ChangeSetError::TextTooLong { index });
                }
                ChangeKind::Unstable(b) if long(&b.name) => {
                    return Err(ChangeSetError::TextTooLong { index });
                }
                ChangeKind::Block(b) | ChangeKind::Settled(b) => check_block(index, b)?,
                _ => {}
            }
            if change.asset.is_none() && !matches!(change.what, ChangeKind::Host(_)) {
                return Err(ChangeSetError::MissingAsset {
                    index,
                    kind: change.what.name(),
                });
            }
        }
        Ok(())
    }
}

fn check_block(index: usize, b: &BlockChange) -> Result<(), ChangeSetError> {
    let block = || b.block.name.clone();
    if b.block.name.len() > MAX_CHANGE_TEXT {
        return Err(ChangeSetError::TextTooLong { index });
    }
    if b.ranges.len() > MAX_RANGES_PER_BLOCK {
        return Err(ChangeSetError::TooManyRanges {
            index,
            block: block(),
            ranges: b.ranges.len(),
        });
    }
    let registers: usize = b.ranges.iter().map(|r| r.after.len()).sum();
    if registers > MAX_REGISTERS_PER_BLOCK {
        return Err(ChangeSetError::TooManyRegisters {
            index,
            block: block(),
            registers,
        });
    }
    for r in &b.ranges {
        let end = usize::from(r.offset) + r.after.len();
        if r.after.is_empty() || r.before.len() != r.after.len() || end > usize::from(b.len) {
            return Err(ChangeSetError::BadRange {
                index,
                block: block(),
            });
        }
    }
    Ok(())
}

/// The changed ranges between two equally long value lists, bounded: returns the ranges that
/// fit [`MAX_RANGES_PER_BLOCK`] and [`MAX_REGISTERS_PER_BLOCK`], and whether any were left out.
/// Values past the end of the shorter list count as changed from/to 0.
pub fn diff_ranges(before: &[u16], after: &[u16]) -> (Vec<RangeChange>, bool) {
    let len = after.len().min(usize::from(u16::MAX));
    let old = |i: usize| before.get(i).copied().unwrap_or(0);
    let changed = |i: usize| i >= before.len() || before[i] != after[i];
    let mut ranges = Vec::new();
    let mut registers = 0;
    let mut i = 0;
    while i < len {
        if !changed(i) {
            i += 1;
            continue;
        }
        let from = i;
        while i < len && changed(i) {
            i += 1;
        }
        if ranges.len() == MAX_RANGES_PER_BLOCK || registers == MAX_REGISTERS_PER_BLOCK {
            return (ranges, true);
        }
        let room = MAX_REGISTERS_PER_BLOCK - registers;
        let to = i.min(from + room);
        registers += to - from;
        ranges.push(RangeChange {
            offset: u16::try_from(from).unwrap_or(u16::MAX),
            before: (from..to).map(old).collect(),
            after: after[from..to].to_vec(),
        });
        if to < i {
            return (ranges, true);
        }
    }
    (ranges, false)
}

/// `before` with the ranges applied (the receiver's reconstruction of the new block); `None`
/// when a range does not fit `len` or its `before` values do not match.
pub fn apply_ranges(before: &[u16], len: u16, ranges: &[RangeChange]) -> Option<Vec<u16>> {
    let mut values = before.to_vec();
    values.resize(usize::from(len), 0);
    for r in ranges {
        let from = usize::from(r.offset);
        let to = from.checked_add(r.after.len())?;
        let slot = values.get_mut(from..to)?;
        if r.before.len() != r.after.len() {
            return None;
        }
        for (k, v) in slot.iter_mut().enumerate() {
            if before.get(from + k).copied().unwrap_or(0) != r.before[k] {
                return None;
            }
            *v = r.after[k];
        }
    }
    Some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_runs_of_changed_registers() {
        let (r, t) = diff_ranges(&[1, 2, 3, 4, 5], &[1, 9, 9, 4, 6]);
        assert!(!t);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].offset, &r[0].before[..], &r[0].after[..]),
            (1, &[2, 3][..], &[9, 9][..])
        );
        assert_eq!((r[1].offset, &r[1].after[..]), (4, &[6][..]));
        assert_eq!(
            apply_ranges(&[1, 2, 3, 4, 5], 5, &r).unwrap(),
            vec![1, 9, 9, 4, 6]
        );
    }

    #[test]
    fn long_changes_are_cut_at_the_bounds() {
        // every other register changes: 500 ranges of one
        let before = vec![0u16; 1000];
        let after: Vec<u16> = (0..1000).map(|i| (i % 2) as u16).collect();
        let (r, t) = diff_ranges(&before, &after);
        assert!(t);
        assert_eq!(r.len(), MAX_RANGES_PER_BLOCK);
        // one long run: cut at the register bound
        let after = vec![7u16; 1000];
        let (r, t) = diff_ranges(&before, &after);
        assert!(t);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].after.len(), MAX_REGISTERS_PER_BLOCK);
    }

    #[test]
    fn apply_refuses_a_stale_base() {
        let (r, _) = diff_ranges(&[1, 2], &[1, 3]);
        assert_eq!(apply_ranges(&[1, 5], 2, &r), None);
    }
}
