//! Reassembling diode datagrams into messages, with bounded memory.
//!
//! At most [`MAX_PENDING`] messages are in flight at once (a fixed `heapless` table), each at most
//! [`ReassemblyLimits::max_message_bytes`], all together at most
//! [`ReassemblyLimits::max_pending_bytes`]. A message whose fragments stop arriving is dropped
//! after [`ReassemblyLimits::timeout_ms`]; when the table or the byte budget is full, the oldest
//! pending message makes room. Every such drop is reported through [`Reassembler::poll_dropped`]
//! so the caller can count and log it. Time is passed in, never read.
//!
//! FEC datagrams (see [`crate::fec`]) go to a RaptorQ decoder per block (a window of
//! envelopes), charged against the same budget before it is allocated: `(K +
//! FEC_EXTRA_SYMBOLS) × symbol` plus the block, all from a header that was checked first (a
//! header claiming more than [`ReassemblyLimits::max_message_bytes`] or
//! [`crate::fec::MAX_BLOCK_BYTES`] is refused). A rebuilt block is split into its envelopes
//! ([`crate::fec::split`]), all returned at once, in order. One source holds at most
//! [`MAX_PENDING_PER_SOURCE`] messages or blocks, and when the byte budget is short the source
//! holding the most bytes gives up its oldest first, so a flood of forged block headers from
//! one address evicts its own blocks, not another agent's. Datagrams for a block already
//! rebuilt are counted as surplus (unused repair, or a repeat round); for a block already given
//! up as `late`; neither starts it afresh.

use heapless::{Deque, Vec as HVec};
use raptorq::Decoder;

use crate::envelope::MAX_ENVELOPE_BYTES;
use crate::fec::{self, FecHeader};
use crate::frame::{self, Datagram, FrameError, FrameHeader, MAX_PAYLOAD};

/// Most messages reassembled at once.
pub const MAX_PENDING: usize = 64;
/// Most messages reassembled at once from one source: one noisy source cannot take the table.
pub const MAX_PENDING_PER_SOURCE: usize = 16;
/// How many finished message ids (completed or given up) are remembered to recognise late
/// fragments and surplus repair symbols.
pub const RECENT: usize = 256;
/// FEC symbols fed to the decoder beyond `K` at most; later ones are surplus.
pub const FEC_EXTRA_SYMBOLS: usize = 16;

/// Bounds on reassembly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Largest message (plain fragments: also capped at [`MAX_ENVELOPE_BYTES`]) or FEC block
    /// (also capped at [`fec::MAX_BLOCK_BYTES`]) a header may claim.
    pub max_message_bytes: usize,
    pub max_pending_bytes: usize,
    pub timeout_ms: u64,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: fec::MAX_BLOCK_BYTES,
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
    /// Fragments (or FEC symbols) received.
    pub received: u16,
    /// Fragments in the message (or FEC source symbols needed).
    pub count: u16,
    /// Envelopes lost with it (1 for plain fragments, the window's count for a FEC block).
    pub envelopes: u16,
    pub reason: DropReason,
}

/// Running totals, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Messages (envelopes) completed, from fragments or from rebuilt FEC blocks.
    pub completed: u64,
    pub duplicate_fragments: u64,
    pub expired: u64,
    pub evicted: u64,
    /// FEC blocks rebuilt (their envelopes are counted in `completed`).
    pub fec_decoded: u64,
    /// Of those, blocks that needed at least one repair symbol.
    pub fec_repaired: u64,
    /// FEC symbols taken in.
    pub fec_symbols: u64,
    /// FEC symbols arriving after their block was rebuilt (unused repair, repeat rounds:
    /// normal).
    pub fec_surplus: u64,
    /// Fragments or symbols arriving for a message already given up (expired or evicted).
    pub late: u64,
}

enum State {
    Fragments {
        count: u16,
        total_len: u32,
        received: u16,
        have: Vec<bool>,
        buf: Vec<u8>,
    },
    Fec {
        header: FecHeader,
        decoder: Box<Decoder>,
        received: u16,
        source_received: u16,
    },
}

struct Pending<K> {
    source: K,
    message_id: u64,
    state: State,
    /// Bytes charged against the budget.
    charge: usize,
    started_ms: u64,
    last_ms: u64,
}

impl<K> Pending<K> {
    /// (received, needed, envelopes)
    fn progress(&self) -> (u16, u16, u16) {
        match &self.state {
            State::Fragments {
                received, count, ..
            } => (*received, *count, 1),
            State::Fec {
                received, header, ..
            } => (*received, header.source_symbols, header.envelopes),
        }
    }
}

/// Reassembles messages from datagrams received from sources of type `K` (a socket address).
pub struct Reassembler<K> {
    limits: ReassemblyLimits,
    pending: HVec<Pending<K>, MAX_PENDING>,
    pending_bytes: usize,
    /// Finished messages: (source, id, given up).
    recent: Deque<(K, u64, bool), RECENT>,
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

    /// Bytes currently charged to pending messages (at most `max_pending_bytes` plus one
    /// message).
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Takes one datagram (plain fragment or FEC symbol). Returns the messages this datagram
    /// completed, in order: none, the message of a plain fragment, or every envelope of a
    /// rebuilt FEC block.
    pub fn push(
        &mut self,
        source: K,
        datagram: &[u8],
        now_ms: u64,
    ) -> Result<std::vec::Vec<std::vec::Vec<u8>>, FrameError> {
        match frame::parse_any(datagram, self.limits.max_message_bytes)? {
            Datagram::Data(h, payload) => self.push_fragment(source, h, payload, now_ms),
            Datagram::Fec(h, packet) => self.push_symbol(source, h, packet, now_ms),
        }
    }

    /// `Some(given_up)` when the message is finished (rebuilt, or given up).
    fn finished(&mut self, source: &K, message_id: u64) -> Option<bool> {
        self.recent
            .iter()
            .find(|(s, id, _)| *id == message_id && s == source)
            .map(|(_, _, given_up)| *given_up)
    }

    fn push_fragment(
        &mut self,
        source: K,
        h: FrameHeader,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<std::vec::Vec<std::vec::Vec<u8>>, FrameError> {
        match self.finished(&source, h.message_id) {
            Some(true) => {
                self.stats.late += 1;
                return Ok(vec![]);
            }
            Some(false) => {
                self.stats.duplicate_fragments += 1;
                return Ok(vec![]);
            }
            None => {}
        }
        let slot = match self.find(&source, h.message_id) {
            Some(i) => {
                let State::Fragments {
                    count, total_len, ..
                } = &self.pending[i].state
                else {
                    return Err(FrameError::Inconsistent(
                        "plain fragment for a message received as FEC symbols",
                    ));
                };
                if *count != h.count || *total_len != h.total_len {
                    return Err(FrameError::Inconsistent(
                        "fragments of one message disagree on its length",
                    ));
                }
                i
            }
            None => {
                if h.count == 1 {
                    // A one-datagram message needs no buffering.
                    self.remember(source, h.message_id, false);
                    self.stats.completed += 1;
                    return Ok(vec![payload.to_vec()]);
                }
                let total = h.total_len as usize;
                let state = || State::Fragments {
                    count: h.count,
                    total_len: h.total_len,
                    received: 0,
                    have: vec![false; usize::from(h.count)],
                    buf: vec![0; total],
                };
                self.start(source.clone(), h.message_id, state, total, now_ms)?
            }
        };
        let p = &mut self.pending[slot];
        p.last_ms = now_ms;
        let State::Fragments {
            count,
            received,
            have,
            buf,
            ..
        } = &mut p.state
        else {
            return Err(FrameError::Inconsistent("reassembly state mismatch"));
        };
        let index = usize::from(h.index);
        if have[index] {
            self.stats.duplicate_fragments += 1;
            return Ok(vec![]);
        }
        let at = index * MAX_PAYLOAD;
        buf[at..at + payload.len()].copy_from_slice(payload);
        have[index] = true;
        *received += 1;
        if *received < *count {
            return Ok(vec![]);
        }
        let done = self.pending.swap_remove(slot);
        self.pending_bytes -= done.charge;
        self.remember(source, h.message_id, false);
        self.stats.completed += 1;
        match done.state {
            State::Fragments { buf, .. } => Ok(vec![buf]),
            State::Fec { .. } => Err(FrameError::Inconsistent("reassembly state mismatch")),
        }
    }

    fn push_symbol(
        &mut self,
        source: K,
        h: FecHeader,
        packet: &[u8],
        now_ms: u64,
    ) -> Result<std::vec::Vec<std::vec::Vec<u8>>, FrameError> {
        match self.finished(&source, h.block_id) {
            Some(true) => {
                self.stats.late += 1;
                return Ok(vec![]);
            }
            Some(false) => {
                self.stats.fec_surplus += 1;
                return Ok(vec![]);
            }
            None => {}
        }
        let slot = match self.find(&source, h.block_id) {
            Some(i) => {
                let State::Fec { header, .. } = &self.pending[i].state else {
                    return Err(FrameError::Inconsistent(
                        "FEC symbol for a message received as plain fragments",
                    ));
                };
                if !header.same_params(&h) {
                    return Err(FrameError::Inconsistent(
                        "FEC symbols of one block disagree on its parameters",
                    ));
                }
                i
            }
            None => {
                // Charged before the decoder exists: it keeps at most K + FEC_EXTRA_SYMBOLS
                // symbols, then the rebuilt block and its envelopes.
                let charge = (usize::from(h.source_symbols) + FEC_EXTRA_SYMBOLS)
                    * (usize::from(h.symbol_size) + 8)
                    + 2 * h.transfer_len as usize;
                let state = || State::Fec {
                    header: h,
                    decoder: Box::new(Decoder::new(h.oti())),
                    received: 0,
                    source_received: 0,
                };
                self.start(source.clone(), h.block_id, state, charge, now_ms)?
            }
        };
        self.stats.fec_symbols += 1;
        let p = &mut self.pending[slot];
        p.last_ms = now_ms;
        let State::Fec {
            decoder,
            received,
            source_received,
            header,
        } = &mut p.state
        else {
            return Err(FrameError::Inconsistent("reassembly state mismatch"));
        };
        if usize::from(*received) >= usize::from(header.source_symbols) + FEC_EXTRA_SYMBOLS {
            self.stats.fec_surplus += 1;
            return Ok(vec![]);
        }
        *received += 1;
        if h.esi < u32::from(header.source_symbols) {
            *source_received += 1;
        }
        let repaired = *source_received < header.source_symbols;
        let envelopes = header.envelopes;
        let Some(block) = decoder.decode(fec::packet(packet)) else {
            return Ok(vec![]);
        };
        let done = self.pending.swap_remove(slot);
        self.pending_bytes -= done.charge;
        self.remember(source, h.block_id, false);
        self.stats.fec_decoded += 1;
        if repaired {
            self.stats.fec_repaired += 1;
        }
        // Only a sender that computed a valid CRC over a bad window gets here; refused whole.
        let messages = fec::split(&block, envelopes)?;
        self.stats.completed += messages.len() as u64;
        Ok(messages)
    }

    fn find(&self, source: &K, message_id: u64) -> Option<usize> {
        self.pending
            .iter()
            .position(|p| p.message_id == message_id && p.source == *source)
    }

    /// Makes room for `charge` bytes, then (only then) allocates the state.
    fn start(
        &mut self,
        source: K,
        message_id: u64,
        state: impl FnOnce() -> State,
        charge: usize,
        now_ms: u64,
    ) -> Result<usize, FrameError> {
        self.make_room(&source, charge);
        let pending = Pending {
            source,
            message_id,
            state: state(),
            charge,
            started_ms: now_ms,
            last_ms: now_ms,
        };
        if self.pending.push(pending).is_err() {
            // make_room guarantees a free slot; refuse rather than panic if it did not.
            return Err(FrameError::Inconsistent("reassembly table full"));
        }
        self.pending_bytes += charge;
        Ok(self.pending.len() - 1)
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

    fn make_room(&mut self, source: &K, incoming: usize) {
        // One source at its cap makes room among its own messages first.
        loop {
            let own = self.pending.iter().filter(|p| p.source == *source).count();
            if own < MAX_PENDING_PER_SOURCE {
                break;
            }
            let oldest = self
                .pending
                .iter()
                .enumerate()
                .filter(|(_, p)| p.source == *source)
                .min_by_key(|(_, p)| p.started_ms)
                .map(|(i, _)| i);
            let Some(oldest) = oldest else { break };
            let p = self.pending.swap_remove(oldest);
            self.drop_pending(p, DropReason::Evicted);
        }
        while self.pending.is_full()
            || (!self.pending.is_empty()
                && self.pending_bytes + incoming > self.limits.max_pending_bytes)
        {
            // The source holding the most bytes (the incoming charge counts for its sender)
            // gives up its oldest; if that is the sender with nothing pending, the oldest of
            // all goes.
            let held = |s: &K| -> usize {
                let own: usize = self
                    .pending
                    .iter()
                    .filter(|p| p.source == *s)
                    .map(|p| p.charge)
                    .sum();
                if s == source { own + incoming } else { own }
            };
            let heaviest = self
                .pending
                .iter()
                .map(|p| (held(&p.source), &p.source))
                .chain(std::iter::once((held(source), source)))
                .max_by_key(|(bytes, _)| *bytes)
                .map(|(_, s)| s.clone());
            let oldest_of = |only: Option<&K>| {
                self.pending
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| only.is_none_or(|s| p.source == *s))
                    .min_by_key(|(_, p)| p.started_ms)
                    .map(|(i, _)| i)
            };
            let victim = oldest_of(heaviest.as_ref()).or_else(|| oldest_of(None));
            let Some(victim) = victim else { break };
            let p = self.pending.swap_remove(victim);
            self.drop_pending(p, DropReason::Evicted);
        }
    }

    fn drop_pending(&mut self, p: Pending<K>, reason: DropReason) {
        self.pending_bytes -= p.charge;
        match reason {
            DropReason::Expired => self.stats.expired += 1,
            DropReason::Evicted => self.stats.evicted += 1,
        }
        let (received, count, envelopes) = p.progress();
        self.remember(p.source.clone(), p.message_id, true);
        // Bounded: at most MAX_PENDING drops can happen per push, and callers drain regularly;
        // cap anyway so a caller that never drains cannot grow this without limit.
        if self.dropped.len() < 4 * MAX_PENDING {
            self.dropped.push(Dropped {
                source: p.source,
                message_id: p.message_id,
                received,
                count,
                envelopes,
                reason,
            });
        }
    }

    fn remember(&mut self, source: K, message_id: u64, given_up: bool) {
        if self.recent.is_full() {
            self.recent.pop_front();
        }
        // Cannot fail: a slot was just freed.
        let _ = self.recent.push_back((source, message_id, given_up));
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
                assert!(r.push("a", &dup, 0).unwrap().is_empty());
            }
            if let Some(m) = r.push("a", p, 0).unwrap().pop() {
                out = Some(m);
            }
        }
        assert_eq!(out, Some(msg));
        assert_eq!(r.stats().duplicate_fragments, 1);
        // A late duplicate of a completed message is recognised, not started afresh.
        assert!(r.push("a", &dup, 1).unwrap().is_empty());
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn same_id_from_two_sources_stays_apart() {
        let a = message(2000);
        let b: std::vec::Vec<u8> = message(2000).iter().map(|x| x ^ 0xff).collect();
        let pa = fragment(1, &a).unwrap();
        let pb = fragment(1, &b).unwrap();
        let mut r = Reassembler::new(ReassemblyLimits::default());
        assert!(r.push(1, &pa[0], 0).unwrap().is_empty());
        assert!(r.push(2, &pb[0], 0).unwrap().is_empty());
        assert_eq!(r.push(2, &pb[1], 0).unwrap(), vec![b]);
        assert_eq!(r.push(1, &pa[1], 0).unwrap(), vec![a]);
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
        assert_eq!(
            (dropped[0].received, dropped[0].count, dropped[0].envelopes),
            (1, 3, 1)
        );
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
            r.push(id % 8, &parts[0], id).unwrap();
        }
        assert_eq!(r.pending(), MAX_PENDING);
        assert_eq!(r.stats().evicted, 10);
    }

    #[test]
    fn one_source_is_capped() {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let other = fragment(999, &message(2000)).unwrap();
        r.push(1u8, &other[0], 0).unwrap();
        for id in 0..100u64 {
            let parts = fragment(id, &message(2000)).unwrap();
            r.push(0u8, &parts[0], id + 1).unwrap();
        }
        assert_eq!(r.pending(), MAX_PENDING_PER_SOURCE + 1);
        // The other source's message survived the flood.
        assert_eq!(r.push(1u8, &other[1], 200).unwrap(), vec![message(2000)]);
    }

    #[test]
    fn fec_rebuilds_through_loss_and_counts_surplus_and_late() {
        use crate::fec::{FecParams, encode};
        let msg = message(20_000);
        let d = encode(5, &msg, FecParams::default()).unwrap();
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let mut out = None;
        // Lose the first 20 datagrams (a burst), feed the rest reversed with a duplicate.
        for (i, x) in d[20..].iter().rev().enumerate() {
            for m in r.push("a", x, i as u64).unwrap() {
                assert!(out.is_none());
                out = Some(m);
            }
        }
        assert_eq!(out, Some(msg));
        let s = r.stats();
        assert_eq!((s.fec_decoded, s.fec_repaired), (1, 1));
        assert!(s.fec_surplus > 0);
        assert_eq!(r.pending(), 0);
        assert_eq!(r.pending_bytes(), 0);

        // A message that never completes expires; its late symbols are counted, not restarted.
        let e = encode(6, &message(5000), FecParams::default()).unwrap();
        r.push("a", &e[0], 0).unwrap();
        assert_eq!(r.poll_dropped(60_000).len(), 1);
        r.push("a", &e[1], 60_001).unwrap();
        assert_eq!(r.stats().late, 1);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn fec_symbols_disagreeing_on_params_are_refused() {
        use crate::fec::{FecParams, encode};
        let a = encode(5, &message(3000), FecParams::default()).unwrap();
        let b = encode(
            5,
            &message(3000),
            FecParams {
                overhead_percent: 50,
                min_repair: 30,
                repeat: false,
            },
        )
        .unwrap();
        let mut r = Reassembler::new(ReassemblyLimits::default());
        r.push("a", &a[0], 0).unwrap();
        assert!(matches!(
            r.push("a", &b[1], 0),
            Err(FrameError::Inconsistent(_))
        ));
    }

    #[test]
    fn a_window_comes_out_as_its_envelopes_in_order() {
        use crate::fec::{FecParams, Window, encode_window};
        let msgs: std::vec::Vec<_> = (1..=20).map(|i| message(i * 150)).collect();
        let mut w = Window::new();
        for m in &msgs {
            w.push(m).unwrap();
        }
        let enc = encode_window(77, &w, FecParams::default()).unwrap();
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let mut out = std::vec::Vec::new();
        // A burst of 20 lost at the start.
        for (t, d) in enc.first[20..].iter().enumerate() {
            out.extend(r.push(9u8, d, t as u64).unwrap());
        }
        assert_eq!(out, msgs);
        assert_eq!(r.stats().completed, 20);
        assert_eq!(r.stats().fec_decoded, 1);
    }

    #[test]
    fn an_incomplete_window_is_reported_with_its_envelope_count() {
        use crate::fec::{FecParams, Window, encode_window};
        let mut w = Window::new();
        for i in 0..7 {
            w.push(&message(100 + i)).unwrap();
        }
        let enc = encode_window(5, &w, FecParams::default()).unwrap();
        let mut r = Reassembler::new(ReassemblyLimits::default());
        for d in &enc.first[..3] {
            assert!(r.push(1u8, d, 0).unwrap().is_empty());
        }
        let dropped = r.poll_dropped(60_000);
        assert_eq!(dropped.len(), 1);
        assert_eq!((dropped[0].received, dropped[0].envelopes), (3, 7));
        assert_eq!(r.pending_bytes(), 0);
    }

    #[test]
    fn a_flood_of_huge_blocks_evicts_its_own_not_another_source() {
        use crate::fec::{FecParams, Window, encode_window};
        let limits = ReassemblyLimits {
            max_pending_bytes: 2 * 1024 * 1024,
            ..ReassemblyLimits::default()
        };
        let mut r = Reassembler::new(limits);
        let mut small = Window::new();
        small.push(&message(3000)).unwrap();
        let legit = encode_window(1, &small, FecParams::default()).unwrap();
        r.push("agent", &legit.first[0], 0).unwrap();
        let mut big = Window::new();
        big.push(&message(150_000)).unwrap();
        // One real 150 kB block's first symbol, re-labelled with new block ids (CRC redone).
        let huge = encode_window(100, &big, FecParams::default())
            .unwrap()
            .first[0]
            .clone();
        for id in 0..40u64 {
            let mut d = huge.clone();
            d[4..12].copy_from_slice(&(100 + id).to_be_bytes());
            d[32..36].fill(0);
            let crc = crc32fast::hash(&d);
            d[32..36].copy_from_slice(&crc.to_be_bytes());
            r.push("flood", &d, id).unwrap();
            assert!(r.pending_bytes() <= 2 * 1024 * 1024 + 500_000);
        }
        let mut got = std::vec::Vec::new();
        for d in &legit.first[1..] {
            got.extend(r.push("agent", d, 50).unwrap());
        }
        assert_eq!(got, vec![message(3000)]);
        assert!(r.stats().evicted >= 30);
    }
}
