//! The on-disk outbound spool for store-and-forward transports (MQTT).
//!
//! One file per envelope in `<state_dir>/spool/`, named by its zero-padded sequence number
//! (`00000000000000000042.env`). A file is written to a temporary name, fsynced, renamed and the
//! directory fsynced *before* the envelope is handed to a client, and removed only after the
//! broker acknowledged it (PUBACK). So the spool survives broker outages, agent restarts and
//! SIGKILL; envelopes leave in sequence order.
//!
//! File format: `OSP1`, one kind byte (0 = summary, 1 = data_lost, 2 = heartbeat), the payload length (u32 BE),
//! the payload (the envelope's wire bytes), then SHA-256 of the payload. A file that fails this
//! check on [`Spool::open`] (truncated by a power cut, say) is renamed `*.damaged`, and its
//! sequence number is reported in [`Recovery::damaged`] so the caller can send a data-lost
//! notice for it.
//!
//! Bounded: the total payload bytes are kept at or under `max_bytes`. **Full-spool policy**:
//! when a new envelope does not fit, the *oldest snapshots and heartbeats* are dropped first (the new one too,
//! if it alone is larger than the limit); notices (data-lost reports, and any future change
//! events or evidence) are never dropped — they are small, and the spool may exceed its limit
//! by them. Every drop is returned to the caller, which must report it in a signed notice.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use outpost_proto::Digest;

const MAGIC: &[u8; 4] = b"OSP1";
const HEADER: usize = 4 + 1 + 4;
const TRAILER: usize = 32;

/// Whether the full-spool policy may drop an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A full inventory snapshot (`summary`): the next one supersedes it, so it may be dropped.
    Summary,
    /// A data-lost notice: never dropped.
    DataLost,
    /// A heartbeat: the next one (or summary) supersedes it, so it may be dropped.
    Heartbeat,
}

impl EntryKind {
    fn byte(self) -> u8 {
        match self {
            EntryKind::Summary => 0,
            EntryKind::DataLost => 1,
            EntryKind::Heartbeat => 2,
        }
    }

    /// Whether the full-spool policy may drop it.
    pub fn droppable(self) -> bool {
        self != EntryKind::DataLost
    }
}

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {}: {what}: {source}; check that the state directory is writable and not full", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    bytes: u64,
    kind: EntryKind,
}

/// What [`Spool::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Intact envelopes waiting to be sent.
    pub pending: usize,
    /// Sequence numbers whose files were damaged (renamed `*.damaged`).
    pub damaged: Vec<u64>,
}

/// What [`Spool::push`] had to drop to stay within its limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    pub seqs: Vec<u64>,
    pub bytes: u64,
}

/// The spool directory and an index of what it holds.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    entries: BTreeMap<u64, Entry>,
    total: u64,
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        what,
        source,
    }
}

impl Spool {
    /// Opens (creating) the spool in `dir`, indexing intact files and setting damaged ones
    /// aside.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<(Spool, Recovery), SpoolError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io(&dir, "cannot create the spool directory"))?;
        let mut spool = Spool {
            dir,
            max_bytes,
            entries: BTreeMap::new(),
            total: 0,
        };
        let mut recovery = Recovery::default();
        let listing = fs::read_dir(&spool.dir).map_err(io(&spool.dir, "cannot list"))?;
        for item in listing {
            let item = item.map_err(io(&spool.dir, "cannot list"))?;
            let path = item.path();
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                // Never renamed into place: never handed to a client.
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(seq) = name
                .strip_suffix(".env")
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            match fs::read(&path).map(|b| decode(&b)) {
                Ok(Some((kind, len))) => {
                    spool.entries.insert(seq, Entry { bytes: len, kind });
                    spool.total += len;
                }
                Ok(None) | Err(_) => {
                    tracing::error!(
                        "spool file {} is damaged (truncated by a power cut?); envelope {seq} is lost and will be reported in a data-lost notice",
                        path.display()
                    );
                    let _ = fs::rename(&path, path.with_extension("damaged"));
                    recovery.damaged.push(seq);
                }
            }
        }
        recovery.damaged.sort_unstable();
        recovery.pending = spool.entries.len();
        Ok((spool, recovery))
    }

    fn path_of(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.env"))
    }

    /// Writes envelope `seq` durably, then applies the full-spool policy.
    pub fn push(&mut self, seq: u64, kind: EntryKind, wire: &[u8]) -> Result<Dropped, SpoolError> {
        let path = self.path_of(seq);
        let tmp = path.with_extension("tmp");
        let mut data = Vec::with_capacity(HEADER + wire.len() + TRAILER);
        data.extend_from_slice(MAGIC);
        data.push(kind.byte());
        data.extend_from_slice(&u32::try_from(wire.len()).unwrap_or(u32::MAX).to_be_bytes());
        data.extend_from_slice(wire);
        data.extend_from_slice(&Digest::of(wire).0);
        {
            let mut f = File::create(&tmp).map_err(io(&tmp, "cannot create"))?;
            f.write_all(&data).map_err(io(&tmp, "cannot write"))?;
            f.sync_all().map_err(io(&tmp, "cannot fsync"))?;
        }
        fs::rename(&tmp, &path).map_err(io(&path, "cannot rename into place"))?;
        self.sync_dir()?;
        let bytes = wire.len() as u64;
        self.entries.insert(seq, Entry { bytes, kind });
        self.total += bytes;
        self.enforce_limit()
    }

    fn enforce_limit(&mut self) -> Result<Dropped, SpoolError> {
        let mut dropped = Dropped::default();
        while self.total > self.max_bytes {
            let victim = self
                .entries
                .iter()
                .find(|(_, e)| e.kind.droppable())
                .map(|(&s, _)| s);
            let Some(seq) = victim else {
                tracing::warn!(
                    total = self.total,
                    max = self.max_bytes,
                    "spool holds only notices and is over its limit; notices are never dropped"
                );
                break;
            };
            let bytes = self.entries.get(&seq).map_or(0, |e| e.bytes);
            self.remove(seq)?;
            dropped.seqs.push(seq);
            dropped.bytes += bytes;
        }
        Ok(dropped)
    }

    fn sync_dir(&self) -> Result<(), SpoolError> {
        OpenOptions::new()
            .read(true)
            .open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir, "cannot fsync the directory"))
    }

    /// Removes envelope `seq` (acknowledged, or dropped); absent is fine.
    pub fn remove(&mut self, seq: u64) -> Result<(), SpoolError> {
        if let Some(e) = self.entries.remove(&seq) {
            self.total -= e.bytes;
            let path = self.path_of(seq);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path, "cannot remove")(e)),
            }
        }
        Ok(())
    }

    /// The first spooled sequence number above `after`, with its bytes (a file that has gone
    /// bad since is reported and skipped).
    pub fn next_after(
        &mut self,
        after: u64,
    ) -> Result<Option<(u64, EntryKind, Vec<u8>)>, SpoolError> {
        loop {
            let Some((&seq, _)) = self.entries.range(after.saturating_add(1)..).next() else {
                return Ok(None);
            };
            let path = self.path_of(seq);
            let data = fs::read(&path).map_err(io(&path, "cannot read"))?;
            match decode(&data) {
                Some((kind, len)) => {
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    return Ok(Some((seq, kind, data[HEADER..HEADER + len].to_vec())));
                }
                None => {
                    tracing::error!("spool file {} went bad; dropping it", path.display());
                    self.remove(seq)?;
                }
            }
        }
    }

    /// Envelopes waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Payload bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.total
    }

    /// The spooled sequence numbers, oldest first.
    pub fn seqs(&self) -> Vec<u64> {
        self.entries.keys().copied().collect()
    }
}

/// Checks a spool file; returns its kind and payload length when intact.
fn decode(data: &[u8]) -> Option<(EntryKind, u64)> {
    if data.len() < HEADER + TRAILER || &data[..4] != MAGIC {
        return None;
    }
    let kind = match data[4] {
        0 => EntryKind::Summary,
        1 => EntryKind::DataLost,
        2 => EntryKind::Heartbeat,
        _ => return None,
    };
    let len = u32::from_be_bytes([data[5], data[6], data[7], data[8]]) as usize;
    if data.len() != HEADER + len + TRAILER {
        return None;
    }
    let payload = &data[HEADER..HEADER + len];
    (Digest::of(payload).0[..] == data[HEADER + len..]).then_some((kind, len as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_in_order_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, r) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(r, Recovery::default());
        for seq in [3u64, 1, 2] {
            s.push(seq, EntryKind::Summary, &[seq as u8; 10]).unwrap();
        }
        drop(s);
        let (mut s, r) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(r.pending, 3);
        assert_eq!(
            s.next_after(0).unwrap().unwrap(),
            (1, EntryKind::Summary, vec![1; 10])
        );
        assert_eq!(s.next_after(1).unwrap().unwrap().0, 2);
        s.remove(1).unwrap();
        assert_eq!(s.seqs(), vec![2, 3]);
        assert_eq!(s.bytes(), 20);
    }

    #[test]
    fn full_spool_drops_oldest_snapshots_never_notices() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), 30).unwrap();
        s.push(1, EntryKind::DataLost, &[0; 10]).unwrap();
        s.push(2, EntryKind::Summary, &[0; 10]).unwrap();
        s.push(3, EntryKind::Summary, &[0; 10]).unwrap();
        let d = s.push(4, EntryKind::Summary, &[0; 10]).unwrap();
        assert_eq!(d.seqs, vec![2]);
        let d = s.push(5, EntryKind::DataLost, &[0; 25]).unwrap();
        assert_eq!(d.seqs, vec![3, 4]);
        assert_eq!(s.seqs(), vec![1, 5]);
        // A snapshot larger than the whole limit drops itself.
        let d = s.push(6, EntryKind::Summary, &[0; 40]).unwrap();
        assert_eq!(d.seqs, vec![6]);
    }

    #[test]
    fn truncated_file_is_reported_and_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        s.push(7, EntryKind::Summary, &[7; 100]).unwrap();
        s.push(8, EntryKind::Summary, &[8; 100]).unwrap();
        drop(s);
        let victim = dir.path().join(format!("{:020}.env", 7));
        let data = fs::read(&victim).unwrap();
        fs::write(&victim, &data[..50]).unwrap();
        let (mut s, r) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(r.damaged, vec![7]);
        assert_eq!(r.pending, 1);
        assert_eq!(s.next_after(0).unwrap().unwrap().0, 8);
        assert!(victim.with_extension("damaged").exists());
    }
}
