//! One configuration block from poll to poll: confirmation, `unstable`, `settled`.
//!
//! A changed value is reported once it has been seen `confirm_polls` consecutive polls. A block
//! whose values change in two consecutive polls before a change is confirmed (or right after
//! one was) is reported once as `unstable`; nothing more is sent for it until one value holds
//! for `max(confirm_polls, 2)` polls, which is reported as `settled` with the change from the
//! last reported values.

use outpost_proto::changes::{BlockChange, BlockRef, ChangeKind, diff_ranges};
use outpost_proto::model::RegisterBlock;

use super::state::BlockState;

/// Steps `state` with this poll's `values`; returns the change to report, if any.
pub fn step(state: &mut BlockState, values: &[u16], confirm_polls: u32) -> Option<ChangeKind> {
    let confirm = confirm_polls.max(1);
    if values == state.last.as_slice() {
        // Only the thresholds matter: capped there, a steady block leaves the state unchanged.
        state.same_polls = state.same_polls.saturating_add(1).min(confirm.max(2));
        state.changed_polls = 0;
    } else {
        state.last = values.to_vec();
        state.same_polls = 1;
        state.changed_polls = state.changed_polls.saturating_add(1);
    }
    if state.unstable {
        if state.same_polls < confirm.max(2) {
            return None;
        }
        state.unstable = false;
        let change = block_change(state);
        state.reported = state.last.clone();
        return Some(ChangeKind::Settled(change));
    }
    if state.last == state.reported {
        return None;
    }
    if state.changed_polls >= 2 {
        state.unstable = true;
        return Some(ChangeKind::Unstable(BlockRef {
            name: state.name.clone(),
            kind: state.kind,
            start: state.start,
        }));
    }
    if state.same_polls >= confirm {
        let change = block_change(state);
        state.reported = state.last.clone();
        return Some(ChangeKind::Block(change));
    }
    None
}

/// The change from `reported` to `last`.
fn block_change(state: &BlockState) -> BlockChange {
    let (ranges, truncated) = diff_ranges(&state.reported, &state.last);
    BlockChange {
        block: BlockRef {
            name: state.name.clone(),
            kind: state.kind,
            start: state.start,
        },
        len: u16::try_from(state.last.len()).unwrap_or(u16::MAX),
        before_hash: RegisterBlock::content_hash(state.kind, state.start, &state.reported),
        after_hash: RegisterBlock::content_hash(state.kind, state.start, &state.last),
        ranges,
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::model::RegisterKind;

    fn block(values: &[u16]) -> BlockState {
        BlockState::baseline("cfg", RegisterKind::Holding, 100, values)
    }

    #[test]
    fn one_write_is_one_change() {
        let mut s = block(&[1, 2, 3]);
        assert_eq!(step(&mut s, &[1, 2, 3], 1), None);
        let Some(ChangeKind::Block(c)) = step(&mut s, &[1, 9, 3], 1) else {
            panic!("expected a block change");
        };
        assert_eq!(c.ranges.len(), 1);
        assert_eq!(
            (
                c.ranges[0].offset,
                c.ranges[0].before[0],
                c.ranges[0].after[0]
            ),
            (1, 2, 9)
        );
        assert_eq!(
            c.after_hash,
            RegisterBlock::content_hash(RegisterKind::Holding, 100, &[1, 9, 3])
        );
        for _ in 0..5 {
            assert_eq!(step(&mut s, &[1, 9, 3], 1), None);
        }
    }

    #[test]
    fn confirm_polls_debounces_a_flap() {
        let mut s = block(&[0]);
        assert_eq!(step(&mut s, &[5], 3), None);
        assert_eq!(step(&mut s, &[0], 3), None, "back before confirmation");
        for _ in 0..5 {
            assert_eq!(
                step(&mut s, &[0], 3),
                None,
                "a flap back to the base is no change"
            );
        }
        assert!(!s.unstable);
        let mut s = block(&[0]);
        assert_eq!(step(&mut s, &[5], 3), None);
        assert_eq!(step(&mut s, &[5], 3), None);
        assert!(matches!(step(&mut s, &[5], 3), Some(ChangeKind::Block(_))));
    }

    #[test]
    fn a_block_changing_every_poll_is_unstable_once_then_settled() {
        let mut s = block(&[0]);
        let mut out = Vec::new();
        for i in 1..=20u16 {
            out.extend(step(&mut s, &[i], 1));
        }
        let names: Vec<&str> = out.iter().map(ChangeKind::name).collect();
        assert_eq!(names, ["block", "unstable"]);
        // the value 20 was seen in poll 20; seen again, it has held for two polls
        let Some(ChangeKind::Settled(c)) = step(&mut s, &[20], 1) else {
            panic!("expected settled");
        };
        assert_eq!(c.ranges[0].before, [1]);
        assert_eq!(c.ranges[0].after, [20]);
        assert_eq!(step(&mut s, &[20], 1), None);
    }
}
