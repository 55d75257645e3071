//! Reassembling diode datagrams into messages, with bounded memory.
//!
//! At most [`MAX_PENDING`] messages are in flight at once (a fixed `heapless` table), each at most
//! [`ReassemblyLimits::max_message_bytes`], all together at most
//! [`ReassemblyLimits::max_pending_bytes`]. A message whose fragments stop arriving is dropped
//! after [`ReassemblyLimits::timeout_ms`]; when the table or the byte budget is full, the oldest
//! pending message makes room. Every such drop is reported through [`Reassembler::poll_dropped`]
//! so the caller can count and log it. Time is passed in, never read.

use heapless::{Deque, Vec as HVec};

use crate::envelope::MAX_ENVELOPE_BYTES;
use crate::frame::{self, FrameError, MAX_PAYLOAD};

/// Most messages reassembled at once.
pub const MAX_PENDING: usize = 64;
/// How many completed message ids are remembered to recognise late duplicate fragments.
pub const RECENT: usize = 256;

/// Bounds on reassembly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyLimits {
    pub max_message_bytes: usize,
    pub max_pending_bytes: usize,
    pub timeout_ms: u64,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: MAX_ENVELOPE_BYTES,
            max_pending_bytes: 16 * MAX_ENVELOPE_BYTES,
            timeout_ms: 5_000,
        }
    }
}

/// Why a partly received message was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No fragment arrived for longer than the timeout.
    Expired,
    /// Room was needed for newer messages.
    Evicted,
}

/// A partly received message that was given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped<K> {
    pub source: K,
    pub message_id: u64,
    pub received: u16,
    pub count: u16,
    pub reason: DropReason,
}

/// Running totals, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    pub completed: u64,
    pub duplicate_fragments: u64,
    pub expired: u64,
    pub evicted: u64,
}

struct Pending<K> {
    source: K,
    message_id: u64,
    count: u16,
    total_len: u32,
    received: u16,
    have: Vec<bool>,
    buf: Vec<u8>,
    started_ms: u64,
    last_ms: u64,
}

/// Reassembles messages from datagrams received from sources of type `K` (a socket address).
pub struct Reassembler<K> {
    limits: ReassemblyLimits,
    pending: HVec<Pending<K>, MAX_PENDING>,
    pending_bytes: usize,
    recent: Deque<(K, u64), RECENT>,
    dropped: std::vec::Vec<Dropped<K>>,
    stats: ReassemblyStats,
}

impl<K: Clone + PartialEq> Reassembler<K> {
    /// A reassembler with the given limits.
    pub fn new(limits: ReassemblyLimits) -> Self {
        Self {
            limits,
            pending: HVec::new(),
            pending_bytes: 0,
            recent: Deque::new(),
            dropped: std::vec::Vec::new(),
            stats: ReassemblyStats::default(),
        }
    }

    /// Running totals.
    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// Messages currently being reassembled.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes one datagram. Returns the whole message when this datagram completed it.
    pub fn push(
        &mut self,
        source: K,
        datagram: &[u8],
        now_ms: u64,
    ) -> Result<Option<std::vec::Vec<u8>>, FrameError> {
        let (h, payload) = frame::parse(datagram, self.limits.max_message_bytes)?;
        if self
            .recent
            .iter()
            .any(|(s, id)| *id == h.message_id && *s == source)
        {
            self.stats.duplicate_fragments += 1;
            return Ok(None);
        }
        let slot = match self
            .pending
            .iter()
            .position(|p| p.message_id == h.message_id && p.source == source)
        {
            Some(i) => {
                let p = &self.pending[i];
                if p.count != h.count || p.total_len != h.total_len {
                    return Err(FrameError::Inconsistent(
                        "fragments of one message disagree on its length",
                    ));
                }
                i
            }
            None => {
                if h.count == 1 {
                    // A one-datagram message needs no buffering.
                    self.remember(source, h.message_id);
                    self.stats.completed += 1;
                    return Ok(Some(payload.to_vec()));
                }
                self.make_room(h.total_len as usize);
                let total = h.total_len as usize;
                let pending = Pending {
                    source: source.clone(),
                    message_id: h.message_id,
                    count: h.count,
                    total_len: h.total_len,
                    received: 0,
                    have: vec![false; usize::from(h.count)],
                    buf: vec![0; total],
                    started_ms: now_ms,
                    last_ms: now_ms,
                };
                if self.pending.push(pending).is_err() {
                    // make_room guarantees a free slot; refuse rather than panic if it did not.
                    return Err(FrameError::Inconsistent("reassembly table full"));
                }
                self.pending_bytes += total;
                self.pending.len() - 1
            }
        };
        let p = &mut self.pending[slot];
        let index = usize::from(h.index);
        if p.have[index] {
            self.stats.duplicate_fragments += 1;
            return Ok(None);
        }
        let at = index * MAX_PAYLOAD;
        p.buf[at..at + payload.len()].copy_from_slice(payload);
        p.have[index] = true;
        p.received += 1;
        p.last_ms = now_ms;
        if p.received < p.count {
            return Ok(None);
        }
        let done = self.pending.swap_remove(slot);
        self.pending_bytes -= done.buf.len();
        self.remember(source, h.message_id);
        self.stats.completed += 1;
        Ok(Some(done.buf))
    }

    /// Gives up messages idle past the timeout, then returns everything given up since the
    /// last call (expired and evicted).
    pub fn poll_dropped(&mut self, now_ms: u64) -> std::vec::Vec<Dropped<K>> {
        let timeout = self.limits.timeout_ms;
        let mut i = 0;
        while i < self.pending.len() {
            if now_ms.saturating_sub(self.pending[i].last_ms) > timeout {
                let p = self.pending.swap_remove(i);
                self.drop_pending(p, DropReason::Expired);
            } else {
                i += 1;
            }
        }
        std::mem::take(&mut self.dropped)
    }

    fn make_room(&mut self, incoming: usize) {
        while self.pending.is_full()
            || (!self.pending.is_empty()
                && self.pending_bytes + incoming > self.limits.max_pending_bytes)
        {
            let oldest = self
                .pending
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.started_ms)
                .map(|(i, _)| i);
            let Some(oldest) = oldest else { break };
            let p = self.pending.swap_remove(oldest);
            self.drop_pending(p, DropReason::Evicted);
        }
    }

    fn drop_pending(&mut self, p: Pending<K>, reason: DropReason) {
        self.pending_bytes -= p.buf.len();
        match reason {
            DropReason::Expired => self.stats.expired += 1,
            DropReason::Evicted => self.stats.evicted += 1,
        }
        // Bounded: at most MAX_PENDING drops can happen per push, and callers drain regularly;
        // cap anyway so a caller that never drains cannot grow this without limit.
        if self.dropped.len() < 4 * MAX_PENDING {
            self.dropped.push(Dropped {
                source: p.source,
                message_id: p.message_id,
                received: p.received,
                count: p.count,
                reason,
            });
        }
    }

    fn remember(&mut self, source: K, message_id: u64) {
        if self.recent.is_full() {
            self.recent.pop_front();
        }
        // Cannot fail: a slot was just freed.
        let _ = self.recent.push_back((source, message_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::fragment;

    fn message(len: usize) -> std::vec::Vec<u8> {
        (0..len).map(|i| (i * 7) as u8).collect()
    }

    #[test]
    fn reassembles_out_of_order_with_duplicates() {
        let msg = message(5000);
        let mut parts = fragment(9, &msg).unwrap();
        parts.reverse();
        let dup = parts[1].clone();
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let mut out = None;
        for (i, p) in parts.iter().enumerate() {
            if i == 2 {
                assert_eq!(r.push("a", &dup, 0).unwrap(), None);
            }
            if let Some(m) = r.push("a", p, 0).unwrap() {
                out = Some(m);
            }
        }
        assert_eq!(out, Some(msg));
        assert_eq!(r.stats().duplicate_fragments, 1);
        // A late duplicate of a completed message is recognised, not started afresh.
        assert_eq!(r.push("a", &dup, 1).unwrap(), None);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn same_id_from_two_sources_stays_apart() {
        let a = message(2000);
        let b: std::vec::Vec<u8> = message(2000).iter().map(|x| x ^ 0xff).collect();
        let pa = fragment(1, &a).unwrap();
        let pb = fragment(1, &b).unwrap();
        let mut r = Reassembler::new(ReassemblyLimits::default());
        assert_eq!(r.push(1, &pa[0], 0).unwrap(), None);
        assert_eq!(r.push(2, &pb[0], 0).unwrap(), None);
        assert_eq!(r.push(2, &pb[1], 0).unwrap(), Some(b));
        assert_eq!(r.push(1, &pa[1], 0).unwrap(), Some(a));
    }

    #[test]
    fn incomplete_messages_expire_and_are_reported() {
        let parts = fragment(3, &message(3000)).unwrap();
        let mut r = Reassembler::new(ReassemblyLimits::default());
        r.push("a", &parts[0], 1_000).unwrap();
        assert!(r.poll_dropped(2_000).is_empty());
        let dropped = r.poll_dropped(10_000);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].reason, DropReason::Expired);
        assert_eq!((dropped[0].received, dropped[0].count), (1, 3));
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn memory_is_bounded_by_eviction() {
        let limits = ReassemblyLimits {
            max_pending_bytes: 10_000,
            ..ReassemblyLimits::default()
        };
        let mut r = Reassembler::new(limits);
        for id in 0..200u64 {
            let parts = fragment(id, &message(3000)).unwrap();
            r.push(0u8, &parts[0], id).unwrap();
            assert!(r.pending() <= 3);
        }
        let dropped = r.poll_dropped(200);
        assert!(dropped.iter().all(|d| d.reason == DropReason::Evicted));
        assert_eq!(r.stats().evicted, 197);
    }

    #[test]
    fn table_is_bounded_by_count() {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        for id in 0..(MAX_PENDING as u64 + 10) {
            let parts = fragment(id, &message(2000)).unwrap();
            r.push(0u8, &parts[0], id).unwrap();
        }
        assert_eq!(r.pending(), MAX_PENDING);
        assert_eq!(r.stats().evicted, 10);
    }
}
