//! Two-stage ingest, to use both cores of a small collector.
//!
//! Checking an envelope ([`crate::check`]: parse, key lookup, signature, body decode) needs no
//! write, and is about half of the work; judging and applying it needs the writer. A helper
//! thread with its own read connection checks envelope N+1 while the writer applies envelope
//! N. Order is preserved, and the writer re-reads the key inside its transaction
//! ([`Ingest::apply_checked`]), so the result is exactly that of [`Ingest::envelope`] in a loop.

use std::path::Path;
use std::sync::mpsc;

use crate::check::{Checked, Refusal, check};
use crate::cmdb::{Cmdb, CmdbError};
use crate::ingest::{Applied, Ingest, Rejected};

/// Envelopes in flight between the two stages.
pub const DEPTH: usize = 64;

/// The helper stage: owns a read connection to the CMDB.
pub struct Checker {
    cmdb: Cmdb,
}

impl Checker {
    /// Opens its own connection to the CMDB at `path`.
    pub fn open(path: &Path) -> Result<Checker, CmdbError> {
        Ok(Checker {
            cmdb: Cmdb::open_existing(path)?,
        })
    }

    /// Checks one envelope (see [`crate::check::check`]).
    pub fn check(&self, wire: &[u8]) -> Result<Checked, Refusal> {
        check(&self.cmdb, wire)
    }
}

/// One envelope to ingest: wire bytes, peer, receive time (collector wall clock, ms).
pub type Item = (Vec<u8>, String, u64);

/// Ingests `items` in order with checking on a helper thread; returns one result per item.
/// Fails only if the helper's connection cannot be opened.
pub fn ingest_all<I>(
    ingest: &mut Ingest,
    items: I,
) -> Result<Vec<Result<Applied, Rejected>>, CmdbError>
where
    I: IntoIterator<Item = Item>,
    I::IntoIter: Send,
{
    let checker = Checker::open(ingest.cmdb().path())?;
    let items = items.into_iter();
    let (tx, rx) = mpsc::sync_channel::<(Item, Result<Checked, Refusal>)>(DEPTH);
    let mut results = Vec::new();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for item in items {
                let checked = checker.check(&item.0);
                if tx.send((item, checked)).is_err() {
                    break;
                }
            }
        });
        for ((wire, peer, now), checked) in rx {
            results.push(match checked {
                Ok(checked) => ingest.apply_checked(checked, &wire, &peer, now),
                Err(refusal) => ingest.finish_refused(refusal, &wire, &peer, now),
            });
        }
    });
    Ok(results)
}
