//! The SQLite CMDB.
//!
//! [`Cmdb`] owns one connection (WAL journal, `synchronous=NORMAL`, foreign keys on, a busy
//! timeout so the CLI can read while `serve` writes). The write side is split by job:
//! [`schema`] (versioned migrations), [`trust`] (enrolled keys), [`apply`] (one verified
//! summary → CIs, attributes, history, relations, events, counters; the per-device part in
//! `assets.rs`), [`attributes`] (what an
//! observation says, and its content hash), [`ci_key`] (the identity rule) and [`record`]
//! (counters, events and quarantine rows). [`query`] is the read side; [`checkpoint`] moves WAL
//! checkpoints off a busy writer's thread. Drift judgement: [`baseline`] (approved state per
//! CI), [`change_record`] (RFCs), `judge.rs` (authorised vs unauthorised, called from
//! `assets.rs` inside the apply transaction) and [`alerts`] (the alert outbox). [`probes`]:
//! segmentation probe reports (history, latest state, violation / conduit alerts).
//!
//! Run one `serve` per CMDB; enrolment and any number of readers may run alongside it.
//! [`Cmdb::in_transaction`] groups the key lookup, chain judgement and apply of one envelope.

pub mod alerts;
pub mod apply;
mod assets;
pub mod attributes;
pub mod baseline;
pub mod change_record;
pub mod checkpoint;
pub mod ci_key;
mod conflict;
pub mod debounce;
mod gateway_baseline;
pub mod gateway_facts;
mod judge;
pub mod key_lifecycle;
pub mod observed_changes;
pub mod presence;
pub mod probes;
pub mod query;
pub mod reconcile;
pub mod record;
pub mod schema;
pub mod trust;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// How long a statement waits for another process's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the CMDB could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum CmdbError {
    #[error(
        "CMDB {} does not exist; run `outpost-collector enroll` first or check --db",
        path.display()
    )]
    Missing { path: PathBuf },
    #[error("cannot open CMDB {}: {source}; check the path and its permissions", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "CMDB {} has schema version {found}, newer than the {supported} this outpost-collector \
         understands; upgrade outpost-collector (do not downgrade a CMDB)",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("CMDB {}: migration to schema version {to} failed: {source}", path.display())]
    Migrate {
        path: PathBuf,
        to: u32,
        source: rusqlite::Error,
    },
    #[error("CMDB {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "key {key_id} is already enrolled for agent {enrolled_for}, not {requested}; a key is \
         trusted for one agent only: generate a new key for {requested} \
         (`outpost-agent keygen`) or enroll with --agent {enrolled_for}"
    )]
    KeyBoundToOtherAgent {
        key_id: String,
        enrolled_for: String,
        requested: String,
    },
    #[error(
        "key {key_id} has been revoked and cannot be enrolled again; generate a new key \
         (`outpost-agent keygen`) and enroll that"
    )]
    KeyRevoked { key_id: String },
    #[error(
        "key {key_id} was retired by a key handover and cannot be enrolled again; enroll the \
         agent's current key (`outpost-collector key list` shows its successor)"
    )]
    KeyRetired { key_id: String },
    #[error(
        "no enrolled key has id {key_id}; `outpost-collector key list` shows the enrolled keys"
    )]
    KeyNotEnrolled { key_id: String },
    #[error("enrolling needs at least one zone; pass --zone ZONE")]
    NoZones,
    #[error("cannot start a CMDB thread: {0}")]
    Thread(String),
    #[error("CMDB {}: stored {what} is corrupt: {detail}", path.display())]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
}

/// An open CMDB.
pub struct Cmdb {
    // Field order matters: the checkpointer is stopped before the connection closes.
    checkpointer: Option<checkpoint::Checkpointer>,
    conn: Connection,
    path: PathBuf,
    /// Per agent, its assets' content hashes as of its last applied envelope (see `apply`).
    known_assets: std::collections::HashMap<String, apply::KnownAssets>,
    /// The cache update of the open transaction, applied when it commits.
    pending_known: Option<apply::PendingKnown>,
}

impl std::fmt::Debug for Cmdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cmdb({})", self.path.display())
    }
}

impl Cmdb {
    /// Opens the CMDB at `path`, creating it if it does not exist, and migrates it to the
    /// current schema.
    pub fn open(path: impl AsRef<Path>) -> Result<Cmdb, CmdbError> {
        Self::open_with(path.as_ref(), true)
    }

    /// Opens an existing CMDB; a missing file is [`CmdbError::Missing`].
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Cmdb, CmdbError> {
        Self::open_with(path.as_ref(), false)
    }

    fn open_with(path: &Path, create: bool) -> Result<Cmdb, CmdbError> {
        if !create && !path.exists() {
            return Err(CmdbError::Missing {
                path: path.to_owned(),
            });
        }
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let open_err = |source| CmdbError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Fails with "file is not a database" here when the file is something else.
        let _mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn, path)?;
        Ok(Cmdb {
            checkpointer: None,
            conn,
            path: path.to_owned(),
            known_assets: std::collections::HashMap::new(),
            pending_known: None,
        })
    }

    /// The file this CMDB lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, CmdbError> {
        schema::version(&self.conn).map_err(|e| self.err(e))
    }

    /// The underlying connection, for read-only inspection (tests, tools).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Wraps a SQLite error with this CMDB's path.
    pub(crate) fn err(&self, source: rusqlite::Error) -> CmdbError {
        CmdbError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs `f` inside one `BEGIN IMMEDIATE` transaction: committed when `f` returns `Ok`,
    /// rolled back when it returns `Err`. The outer error is a failure to begin or commit.
    pub fn in_transaction<T, E>(
        &mut self,
        f: impl FnOnce(&mut Cmdb) -> Result<T, E>,
    ) -> Result<Result<T, E>, CmdbError> {
        self.pending_known = None;
        self.conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]))
            .map_err(|e| self.err(e))?;
        let result = f(self);
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = self
            .conn
            .prepare_cached(end)
            .and_then(|mut s| s.execute([]));
        let pending = self.pending_known.take();
        if let Err(e) = ended {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            return Err(self.err(e));
        }
        if let (Ok(_), Some(pending)) = (&result, pending) {
            pending.commit(&mut self.known_assets);
        }
        Ok(result)
    }

    /// Adds `delta` to a persistent counter in its own transaction.
    pub fn bump_counter(&mut self, name: &str, delta: i64, now_ms: u64) -> Result<(), CmdbError> {
        record::bump(&self.conn, name, delta, now_ms).map_err(|e| self.err(e))
    }
}
