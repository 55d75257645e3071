//! Background WAL checkpoints, so the ingest thread never waits for `fsync`.
//!
//! With `journal_mode=WAL` and `synchronous=NORMAL` a commit only appends to the WAL; the
//! `fsync`s happen when the WAL is copied back into the database (a checkpoint). SQLite's
//! automatic checkpoint runs inside the committing thread, which stalls ingest for as long as
//! the disk takes. A writer started with [`Cmdb::start_background_checkpoints`] instead gets a
//! thread with its own connection running `PRAGMA wal_checkpoint(PASSIVE)` every
//! [`INTERVAL`] (passive checkpoints never block the writer); the writer's own automatic
//! checkpoint stays as a backstop at [`BACKSTOP_PAGES`] in case the thread falls behind.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{BUSY_TIMEOUT, Cmdb, CmdbError};

/// How often the background thread checkpoints.
pub const INTERVAL: Duration = Duration::from_millis(200);
/// WAL size (pages) at which the writer checkpoints by itself.
pub const BACKSTOP_PAGES: u32 = 16_384;
/// WAL file size kept after a checkpoint resets it.
pub const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// The running checkpoint thread; stops (and is joined) when dropped.
#[derive(Debug)]
pub struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer, CmdbError> {
        let open_err = |source| CmdbError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let db = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("outpost-checkpoint".into())
            .spawn(move || {
                // Stops on a message or when the sender is dropped.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                    checkpoint(&conn, &db);
                }
            })
            .map_err(|e| CmdbError::Thread(e.to_string()))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

fn checkpoint(conn: &Connection, db: &str) {
    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    match result {
        Ok((_busy, wal_pages, copied)) => {
            tracing::trace!(db, wal_pages, copied, "WAL checkpoint");
        }
        Err(e) => tracing::warn!(db, "background WAL checkpoint failed: {e}"),
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Cmdb {
    /// Moves WAL checkpoints (and their `fsync`s) off this connection's thread. Call once on a
    /// connection that writes a lot (the ingest path does); idempotent.
    pub fn start_background_checkpoints(&mut self) -> Result<(), CmdbError> {
        if self.checkpointer.is_some() {
            return Ok(());
        }
        self.conn
            .pragma_update(None, "wal_autocheckpoint", BACKSTOP_PAGES)
            .map_err(|e| self.err(e))?;
        self.conn
            .pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(|e| self.err(e))?;
        self.checkpointer = Some(Checkpointer::start(&self.path)?);
        Ok(())
    }
}
