//! Two-stage ingest, to use both cores of a small collector.
//!
//! Checking an envelope ([`crate::check`]: parse, key lookup, signature, body decode) needs no
//! write, and is about half of the work; judging and applying it needs the writer. A helper
//! thread with its own read connection checks envelope N+1 while the writer applies envelope
//! N. Order is preserved, and the writer re-reads the key inside its transaction
//! ([`Ingest::apply_checked`]), so the result is exactly that of [`Ingest::envelope`] in a loop.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;

use outpost_proto::KeyId;

use crate::check::{Checked, Refusal, check_with};
use crate::cmdb::trust::{KeyStatus, TrustedKey};
use crate::cmdb::{Cmdb, CmdbError};
use crate::ingest::{Applied, Ingest, Rejected};

/// Envelopes in flight between the two stages.
pub const DEPTH: usize = 64;

/// The helper stage: owns a read connection to the CMDB, and the active keys it has read.
///
/// The keys are kept only to save two queries per envelope: the writer reads the key again
/// inside its transaction ([`Ingest::apply_checked`]), so a revocation or a handover since is
/// still honoured; and an envelope refused for a reason that depends on enrolment (unknown
/// key, agent, zone, revoked, retired) is checked once more against the database, so a zone
/// added since is honoured too. Only enrolled, active keys are kept: their number is what an
/// operator enrolled, whatever arrives on the wire.
pub struct Checker {
    cmdb: Cmdb,
    keys: RefCell<HashMap<KeyId, TrustedKey>>,
}

impl Checker {
    /// Opens its own connection to the CMDB at `path`.
    pub fn open(path: &Path) -> Result<Checker, CmdbError> {
        Ok(Checker {
            cmdb: Cmdb::open_existing(path)?,
            keys: RefCell::new(HashMap::new()),
        })
    }

    /// Checks one envelope (see [`crate::check::check`]) and works out what applying it can
    /// use ([`Checked::prepare`]).
    pub fn check(&self, wire: &[u8]) -> Result<Checked, Refusal> {
        let mut from_memory = false;
        let result = check_with(wire, &mut |key_id| {
            if let Some(key) = self.keys.borrow().get(key_id) {
                from_memory = true;
                return Ok(Some(key.clone()));
            }
            self.read_key(key_id)
        });
        let result = match result {
            Err(refusal) if from_memory && refusal.reason.depends_on_enrolment() => {
                // What was kept may be out of date: judge by what is enrolled now.
                self.keys.borrow_mut().clear();
                check_with(wire, &mut |key_id| self.read_key(key_id))
            }
            other => other,
        };
        result.map(|mut checked| {
            checked.prepare();
            checked
        })
    }

    /// Reads a key from the database and keeps it if it is active.
    fn read_key(&self, key_id: &KeyId) -> Result<Option<TrustedKey>, CmdbError> {
        let key = self.cmdb.trusted_key(key_id)?;
        if let Some(key) = key.as_ref().filter(|k| k.status == KeyStatus::Active) {
            self.keys.borrow_mut().insert(*key_id, key.clone());
        }
        Ok(key)
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
