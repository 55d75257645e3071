//! Property tests of change events (`Body::Changes`): bounded diffs rebuild the new block,
//! change sets round-trip through the CBOR codec and a sealed envelope, what the agent builds
//! always passes the receiver's bound check, and no byte string panics the decoder.

use outpost_proto::changes::{
    AssetRef, BlockChange, BlockRef, Change, ChangeKind, ChangeSet, FieldChange,
    MAX_RANGES_PER_BLOCK, MAX_REGISTERS_PER_BLOCK, apply_ranges, diff_ranges,
};
use outpost_proto::model::{Body, DeviceIdentity, Endpoint, RegisterBlock, RegisterKind};
use outpost_proto::{AgentId, ChainTip, SigningKey, ZoneId, cbor, envelope};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

/// Two equally long blocks: a base and a copy with some registers changed.
fn before_after() -> impl Strategy<Value = (Vec<u16>, Vec<u16>)> {
    vec(any::<u16>(), 0..600).prop_flat_map(|before| {
        let len = before.len();
        (
            Just(before),
            vec((0..len.max(1), any::<u16>()), 0..80),
            any::<bool>(),
        )
            .prop_map(|(before, edits, runs)| {
                let mut after = before.clone();
                for (i, v) in edits {
                    if i < after.len() {
                        after[i] = v;
                        if runs {
                            // a run of consecutive writes
                            let end = (i + 7).min(after.len());
                            for w in &mut after[i..end] {
                                *w = v;
                            }
                        }
                    }
                }
                (before, after)
            })
    })
}

fn text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

fn field() -> impl Strategy<Value = FieldChange> {
    (text(), option::of(text()), option::of(text())).prop_map(|(field, before, after)| {
        FieldChange {
            field,
            before,
            after,
        }
    })
}

fn block_change(before: &[u16], after: &[u16], name: String) -> BlockChange {
    let (ranges, truncated) = diff_ranges(before, after);
    BlockChange {
        block: BlockRef {
            name,
            kind: RegisterKind::Holding,
            start: 40,
        },
        len: u16::try_from(after.len()).unwrap(),
        before_hash: RegisterBlock::content_hash(RegisterKind::Holding, 40, before),
        after_hash: RegisterBlock::content_hash(RegisterKind::Holding, 40, after),
        ranges,
        truncated,
    }
}

fn change() -> impl Strategy<Value = Change> {
    let asset = (text(), any::<u16>(), any::<u8>()).prop_map(|(name, port, unit_id)| AssetRef {
        name,
        endpoint: Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port,
        },
        unit_id,
    });
    let what = prop_oneof![
        field().prop_map(ChangeKind::Identity),
        (before_after(), text()).prop_map(|((b, a), n)| ChangeKind::Block(block_change(&b, &a, n))),
        (before_after(), text())
            .prop_map(|((b, a), n)| ChangeKind::Settled(block_change(&b, &a, n))),
        text().prop_map(|name| ChangeKind::Unstable(BlockRef {
            name,
            kind: RegisterKind::Coil,
            start: 0
        })),
        text().prop_map(|revision| ChangeKind::Appeared(DeviceIdentity {
            revision: Some(revision),
            ..DeviceIdentity::default()
        })),
        (any::<u32>(), text())
            .prop_map(|(polls, reason)| ChangeKind::Disappeared { polls, reason }),
        Just(ChangeKind::Returned),
    ];
    prop_oneof![
        (asset, what).prop_map(|(a, what)| Change {
            asset: Some(a),
            what
        }),
        field().prop_map(|f| Change {
            asset: None,
            what: ChangeKind::Host(f)
        }),
    ]
}

fn change_set() -> impl Strategy<Value = ChangeSet> {
    (
        any::<u64>(),
        any::<u64>(),
        vec(change(), 0..12),
        any::<bool>(),
    )
        .prop_map(
            |(observed_ms, base_summary_seq, changes, truncated)| ChangeSet {
                agent: AgentId::new("agent-1").unwrap(),
                zone: ZoneId::new("zone-a").unwrap(),
                observed_ms,
                base_summary_seq,
                changes,
                truncated,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The ranges stay within their bounds; when not truncated they rebuild `after` exactly
    /// (and so its hash); when truncated they are the first changes, still consistent.
    #[test]
    fn ranges_are_bounded_and_rebuild_the_block((before, after) in before_after()) {
        let (ranges, truncated) = diff_ranges(&before, &after);
        prop_assert!(ranges.len() <= MAX_RANGES_PER_BLOCK);
        let registers: usize = ranges.iter().map(|r| r.after.len()).sum();
        prop_assert!(registers <= MAX_REGISTERS_PER_BLOCK);
        let len = u16::try_from(after.len()).unwrap();
        let rebuilt = apply_ranges(&before, len, &ranges).expect("own ranges apply");
        if truncated {
            prop_assert_ne!(&rebuilt, &after);
        } else {
            prop_assert_eq!(&rebuilt, &after);
        }
        let changed = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        prop_assert_eq!(truncated, registers < changed);
    }

    /// What an agent builds passes the receiver's check and survives a sealed envelope.
    #[test]
    fn change_sets_round_trip_and_check(set in change_set()) {
        prop_assert_eq!(set.check(), Ok(()));
        let body = Body::Changes(set);
        let bytes = cbor::encode(&body).unwrap();
        prop_assert_eq!(&cbor::decode::<Body>(&bytes).unwrap(), &body);
        let key = SigningKey::generate().unwrap().0;
        let sealed = envelope::seal(
            &key,
            &AgentId::new("agent-1").unwrap(),
            &ZoneId::new("zone-a").unwrap(),
            &ChainTip::GENESIS,
            1,
            &body,
        ).unwrap();
        let verified = envelope::parse(&sealed.wire).unwrap().verify(&key.public_key()).unwrap();
        prop_assert_eq!(verified.body().unwrap(), body);
    }

    /// Any flipped byte of an encoded change set decodes to an error or to a value; it never
    /// panics, and whatever decodes can be checked.
    #[test]
    fn damaged_change_sets_never_panic(set in change_set(), at in any::<usize>(), bit in 0u8..8) {
        let mut bytes = cbor::encode(&Body::Changes(set)).unwrap();
        let i = at % bytes.len();
        bytes[i] ^= 1 << bit;
        if let Ok(Body::Changes(c)) = cbor::decode::<Body>(&bytes) {
            let _ = c.check();
        }
    }
}

#[test]
fn out_of_bounds_sets_are_refused_by_check() {
    let base = || ChangeSet {
        agent: AgentId::new("a").unwrap(),
        zone: ZoneId::new("z").unwrap(),
        observed_ms: 0,
        base_summary_seq: 0,
        changes: vec![],
        truncated: false,
    };
    let mut too_many = base();
    too_many.changes = vec![
        Change {
            asset: None,
            what: ChangeKind::Host(FieldChange {
                field: "x".into(),
                before: None,
                after: None,
            }),
        };
        outpost_proto::changes::MAX_CHANGES + 1
    ];
    assert!(too_many.check().is_err());
    let mut no_asset = base();
    no_asset.changes.push(Change {
        asset: None,
        what: ChangeKind::Returned,
    });
    assert!(
        no_asset
            .check()
            .unwrap_err()
            .to_string()
            .contains("needs an asset")
    );
    let mut past_end = base();
    let mut b = block_change(&[1, 2], &[1, 3], "b".into());
    b.len = 1;
    past_end.changes.push(Change {
        asset: Some(AssetRef {
            name: "p".into(),
            endpoint: Endpoint::Rtu {
                device: "/dev/ttyS0".into(),
            },
            unit_id: 1,
        }),
        what: ChangeKind::Block(b),
    });
    assert!(
        past_end
            .check()
            .unwrap_err()
            .to_string()
            .contains("past the block's end")
    );
}
