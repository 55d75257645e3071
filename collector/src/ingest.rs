//! Envelope bytes in; applied to the CMDB or quarantined out. No sockets, no clock reads.
//!
//! The checks, in order (each refusal has a stable [`Reason`] name):
//! 1. parse the wire form (`oversize`, `malformed`, `malformed_header`, `unsupported_version`);
//! 2. find the enrolled key named by the header (`unknown_key`, `key_revoked`);
//! 3. the key must be enrolled for the header's agent (`agent_mismatch`) and zone
//!    (`zone_not_authorised`);
//! 4. the signature must verify over the exact bytes (`bad_signature`), the sequence number
//!    must be storable (`bad_sequence`);
//! 5. decode the body (`malformed_body`); its agent and zone must equal the header's
//!    (`body_mismatch`) and every register block's hash must match its values
//!    (`bad_block_hash`);
//! 6. the agent's clock may not be ahead of the collector's by more than the allowed skew
//!    ([`Ingest::set_max_clock_skew`], default [`DEFAULT_MAX_CLOCK_SKEW_MS`]:
//!    `future_timestamp`); judge the sequence number and chain against the agent's stored tip
//!    (`replay`; an envelope below the tip that was never stored arrived late, reordered on
//!    the way: still `replay`, and counted as `envelopes_late`; a gap, chain break or declared
//!    restart is accepted and recorded as an event; with
//!    [`Ingest::recognise_redelivery`] a byte-identical copy of a stored envelope is `duplicate`,
//!    counted but not quarantined);
//! 7. apply it ([`Cmdb::apply_summary`], or [`Cmdb::apply_data_lost`] for a data-lost notice,
//!    [`Cmdb::apply_key_handover`] for a key handover, which may refuse it as `bad_handover`);
//!    a database failure is `storage`.
//!
//! An envelope sealed with a revoked key also raises a `revoked_key_used` event naming agent,
//! key and peer (thinned like the log line: one per second).
//!
//! Steps 1–5 are [`crate::check`] (read-only; [`crate::pipeline`] runs them on another thread);
//! 6–7 and the key lookup happen in one transaction. [`Ingest::envelope`] does all of it in one
//! transaction; [`Ingest::apply_checked`] finishes an envelope checked elsewhere.
//!
//! Every refusal writes a quarantine row and increments `envelopes_rejected` and
//! `envelopes_rejected.<reason>` in one transaction, and logs a warning naming the peer, the
//! reason and the agent/key claimed (thinned by [`LogLimiter`]). Under a flood, quarantine rows
//! are limited by [`crate::budget`]; the counters still count every refusal.

use std::collections::BTreeMap;
use std::fmt;

use outpost_proto::frame::FrameError;
use outpost_proto::model::Body;
use outpost_proto::reassembly::{DropReason, Dropped};
use outpost_proto::{AgentId, SequenceVerdict, ZoneId, chain};
use serde_json::json;

use crate::budget::{Admission, QuarantineBudget};
use crate::check::{Checked, Claimed, Refusal, authorise, check};
use crate::cmdb::alerts::{Category, NewAlert};
use crate::cmdb::apply::{ApplyOutcome, EnvelopeMeta, verdict_name};
use crate::cmdb::ci_key;
use crate::cmdb::record::{
    EventScope, MAX_DATAGRAM_COPY, MAX_QUARANTINE_BYTES, QuarantineRow, kind,
};
use crate::cmdb::{Cmdb, CmdbError};
use crate::lograte::LogLimiter;
use crate::time::sql_int;

pub use crate::check::Reason;

/// A refused envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason: Reason,
    /// What was wrong and what to do, for people.
    pub detail: String,
    /// From the (unverified) header, when it could be parsed.
    pub agent_claimed: Option<String>,
    pub key_claimed: Option<String>,
    pub seq_claimed: Option<u64>,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl std::error::Error for Rejected {}

/// An applied envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub agent: AgentId,
    pub zone: ZoneId,
    pub seq: u64,
    pub verdict: SequenceVerdict,
    pub outcome: ApplyOutcome,
}

/// The verify-and-apply pipeline around one [`Cmdb`].
pub struct Ingest {
    cmdb: Cmdb,
    logs: LogLimiter,
    budget: QuarantineBudget,
    /// Counts of refusals past the quarantine budget, not yet written.
    pending_counts: BTreeMap<String, i64>,
    /// Treat a byte-identical copy of a stored envelope as a duplicate, not a replay.
    redelivery: bool,
    /// Largest accepted lead of the agent's clock over ours, in milliseconds.
    max_skew_ms: u64,
}

/// How far ahead of the collector's clock an agent's envelope time may be: 5 minutes.
pub const DEFAULT_MAX_CLOCK_SKEW_MS: u64 = 300_000;

/// Suppressed refusals held in memory before they are written regardless of the timer.
const PENDING_FLUSH_AT: i64 = 10_000;

impl Ingest {
    /// Ingests into `cmdb`, moving its WAL checkpoints to a background thread (a failure to
    /// start that thread is logged; SQLite then checkpoints in this thread as usual).
    pub fn new(mut cmdb: Cmdb) -> Self {
        if let Err(e) = cmdb.start_background_checkpoints() {
            tracing::warn!("{e}; checkpoints will run in the ingest thread");
        }
        Self {
            cmdb,
            logs: LogLimiter::default(),
            budget: QuarantineBudget::default(),
            pending_counts: BTreeMap::new(),
            redelivery: false,
            max_skew_ms: DEFAULT_MAX_CLOCK_SKEW_MS,
        }
    }

    /// Envelopes sealed (by the agent's clock) more than `skew` after the collector's clock
    /// are refused as `future_timestamp`. Envelopes from the past are accepted (they may have
    /// waited in a spool); their order is the sequence number's, not the clock's.
    pub fn set_max_clock_skew(&mut self, skew: std::time::Duration) {
        self.max_skew_ms = u64::try_from(skew.as_millis()).unwrap_or(u64::MAX);
    }

    /// On a transport that redelivers (MQTT QoS 1), a byte-identical copy of an envelope
    /// already stored (same agent, sequence number and hash) is [`Reason::Duplicate`]: counted
    /// as `envelopes_duplicate`, logged at debug level, not quarantined. Off by default: on the
    /// diode, `serve` turns it on too (a FEC repeat round can deliver an envelope twice).
    pub fn recognise_redelivery(&mut self, on: bool) {
        self.redelivery = on;
    }

    /// The CMDB, for queries.
    pub fn cmdb(&self) -> &Cmdb {
        &self.cmdb
    }

    /// The CMDB, for direct writes (enrolment, counters).
    pub fn cmdb_mut(&mut self) -> &mut Cmdb {
        &mut self.cmdb
    }

    /// Gives the CMDB back.
    pub fn into_cmdb(self) -> Cmdb {
        self.cmdb
    }

    /// Verifies, judges and applies one envelope received from `peer` at `now_ms` (collector
    /// wall clock), or quarantines it. Everything happens in one transaction.
    pub fn envelope(&mut self, wire: &[u8], peer: &str, now_ms: u64) -> Result<Applied, Rejected> {
        let mut claimed = Claimed::default();
        let dedup = self.redelivery;
        let skew = self.max_skew_ms;
        let result = self.cmdb.in_transaction(|db| {
            let checked = check(db, wire).map_err(|r| {
                claimed = r.claimed;
                (r.reason, r.detail)
            })?;
            claimed = checked.claimed();
            apply_in(db, checked, wire, peer, now_ms, false, dedup, skew)
        });
        self.finish(result, claimed, wire, peer, now_ms)
    }

    /// Judges and applies an envelope that [`check`] accepted (possibly on another thread),
    /// re-reading its key inside the transaction so that a revocation since is honoured.
    pub fn apply_checked(
        &mut self,
        checked: Checked,
        wire: &[u8],
        peer: &str,
        now_ms: u64,
    ) -> Result<Applied, Rejected> {
        let claimed = checked.claimed();
        let dedup = self.redelivery;
        let skew = self.max_skew_ms;
        let result = self
            .cmdb
            .in_transaction(|db| apply_in(db, checked, wire, peer, now_ms, true, dedup, skew));
        self.finish(result, claimed, wire, peer, now_ms)
    }

    /// Finishes an envelope that [`check`] refused on another thread. An `unknown_key` is
    /// checked again here, inside the writer's transaction: the key may have been enrolled
    /// by a key handover the writer applied after the checker looked (the handover and the
    /// first envelope under the new key arrive back to back). Anything else is recorded
    /// ([`Ingest::refuse`]).
    pub fn finish_refused(
        &mut self,
        refusal: Refusal,
        wire: &[u8],
        peer: &str,
        now_ms: u64,
    ) -> Result<Applied, Rejected> {
        if refusal.reason == Reason::UnknownKey {
            return self.envelope(wire, peer, now_ms);
        }
        Err(self.refuse(refusal, wire, peer, now_ms))
    }

    /// Records an envelope that [`check`] refused (quarantine, counters, log line).
    pub fn refuse(&mut self, refusal: Refusal, wire: &[u8], peer: &str, now_ms: u64) -> Rejected {
        self.reject(
            wire,
            peer,
            now_ms,
            refusal.claimed,
            refusal.reason,
            refusal.detail,
        )
    }

    fn finish(
        &mut self,
        result: Result<Result<Applied, (Reason, String)>, CmdbError>,
        claimed: Claimed,
        wire: &[u8],
        peer: &str,
        now_ms: u64,
    ) -> Result<Applied, Rejected> {
        let applied = match result {
            Ok(Ok(applied)) => applied,
            Ok(Err((Reason::Duplicate, detail))) => {
                if let Err(e) = self
                    .cmdb
                    .bump_counter(Reason::Duplicate.counter(), 1, now_ms)
                {
                    tracing::error!(%peer, "could not count a duplicate: {e}");
                }
                tracing::debug!(%peer, agent = claimed.agent.as_deref().unwrap_or("-"),
                    seq = claimed.seq, "duplicate (redelivered) envelope ignored: {detail}");
                return Err(Rejected {
                    reason: Reason::Duplicate,
                    detail,
                    agent_claimed: claimed.agent,
                    key_claimed: claimed.key,
                    seq_claimed: claimed.seq,
                });
            }
            Ok(Err((reason, detail))) => {
                return Err(self.reject(wire, peer, now_ms, claimed, reason, detail));
            }
            Err(e) => {
                let detail = e.to_string();
                return Err(self.reject(wire, peer, now_ms, claimed, Reason::Storage, detail));
            }
        };
        let Applied {
            agent,
            zone,
            seq,
            verdict,
            outcome,
        } = &applied;
        match *verdict {
            SequenceVerdict::Gap { from, to } => tracing::warn!(
                %peer, %agent, from, to,
                "sequence gap: envelopes {from}..={to} from agent {agent} never arrived"
            ),
            SequenceVerdict::ChainBreak => tracing::warn!(
                %peer, %agent, seq,
                "chain break: envelope {seq} does not name the previous envelope held; \
                 the agent's state was restored or its key is shared"
            ),
            SequenceVerdict::First => tracing::info!(
                %peer, %agent, %zone, seq, "first envelope from agent"
            ),
            SequenceVerdict::Restart { last } => tracing::warn!(
                %peer, %agent, seq, last,
                "agent reported state loss: it started a new chain at {seq} (last accepted \
                 {last}); envelopes it sealed before losing its state may be missing"
            ),
            _ => {}
        }
        tracing::debug!(%peer, %agent, seq, verdict = verdict_name(verdict),
            assets = outcome.assets, new = outcome.assets_new, changed = outcome.assets_changed,
            "applied summary");
        Ok(applied)
    }

    fn reject(
        &mut self,
        wire: &[u8],
        peer: &str,
        now_ms: u64,
        claimed: Claimed,
        reason: Reason,
        detail: String,
    ) -> Rejected {
        let row = QuarantineRow {
            received_at_ms: now_ms,
            peer,
            stage: "envelope",
            reason: reason.as_str(),
            detail: &detail,
            agent_claimed: claimed.agent.as_deref(),
            key_claimed: claimed.key.as_deref(),
            seq_claimed: claimed.seq,
            raw: &wire[..wire.len().min(MAX_QUARANTINE_BYTES)],
            raw_len: wire.len(),
        };
        let late = reason == Reason::Replay && detail.starts_with(LATE);
        let counters: &[&str] = if late {
            &["envelopes_rejected", reason.counter(), "envelopes_late"]
        } else {
            &["envelopes_rejected", reason.counter()]
        };
        if reason == Reason::KeyRevoked {
            self.revoked_key_used(peer, &claimed, now_ms);
        }
        if let Err(e) = self.quarantine(row, counters)
            && let Some(suppressed) = self.logs.check("storage_error", now_ms)
        {
            tracing::error!(%peer, reason = %reason, suppressed,
                "could not quarantine refused envelope: {e}{}", suppressed_note(suppressed));
        }
        if let Some(suppressed) = self.logs.check(reason.counter(), now_ms) {
            tracing::warn!(
                %peer,
                reason = reason.as_str(),
                agent = claimed.agent.as_deref().unwrap_or("-"),
                key = claimed.key.as_deref().unwrap_or("-"),
                seq = claimed.seq,
                suppressed,
                "refused envelope: {detail}{}",
                suppressed_note(suppressed)
            );
        }
        Rejected {
            reason,
            detail,
            agent_claimed: claimed.agent,
            key_claimed: claimed.key,
            seq_claimed: claimed.seq,
        }
    }

    /// The alert for an envelope sealed with a revoked key: a `revoked_key_used` event naming
    /// agent, key and peer, at most one per second (the quarantine row and counter record
    /// every one).
    fn revoked_key_used(&mut self, peer: &str, claimed: &Claimed, now_ms: u64) {
        if self.logs.check("revoked_key_used_event", now_ms).is_none() {
            return;
        }
        let agent = claimed.agent.as_deref();
        let detail = json!({
            "key_id": claimed.key,
            "agent": agent,
            "peer": peer,
            "seq": claimed.seq,
        });
        let scope = EventScope {
            agent,
            ..EventScope::default()
        };
        // Also an alert (OCSF Detection Finding) for the SIEM sinks, on the agent's CI.
        let agent_name = agent.unwrap_or("-");
        let alert = NewAlert {
            raised_at_ms: sql_int(now_ms),
            kind: kind::REVOKED_KEY_USED,
            category: Category::Security,
            asset: &ci_key::agent(agent_name),
            asset_name: agent_name,
            zone: "-",
            agent: agent_name,
            // Not verified: the collector's receive time stands in for the agent's clock.
            agent_time_ms: sql_int(now_ms),
            envelope_seq: claimed.seq.map_or(0, sql_int),
            envelope_hash: "",
            detail: &detail,
        };
        if let Err(e) = self
            .cmdb
            .event_and_alert(kind::REVOKED_KEY_USED, scope, &detail, &alert)
        {
            tracing::error!(%peer, "could not record a revoked_key_used event: {e}");
        }
        tracing::error!(%peer, agent = agent.unwrap_or("-"),
            key = claimed.key.as_deref().unwrap_or("-"),
            "ALERT: envelope sealed with a revoked key (the key may be in someone else's hands)");
    }

    /// Records a datagram the framing refused: quarantine row (capped copy) + counters
    /// `datagrams_rejected` and `datagrams_rejected.<reason>` + a thinned warning.
    pub fn datagram_rejected(
        &mut self,
        peer: &str,
        error: &FrameError,
        datagram: &[u8],
        now_ms: u64,
    ) -> Result<(), CmdbError> {
        let copy = &datagram[..datagram.len().min(MAX_DATAGRAM_COPY)];
        self.datagram_rejected_len(peer, error, copy, datagram.len(), now_ms)
    }

    /// [`Ingest::datagram_rejected`] given only the first bytes (`copy`) of a datagram of `len`.
    pub fn datagram_rejected_len(
        &mut self,
        peer: &str,
        error: &FrameError,
        copy: &[u8],
        len: usize,
        now_ms: u64,
    ) -> Result<(), CmdbError> {
        let reason = error.reason();
        let counter = format!("datagrams_rejected.{reason}");
        let detail = error.to_string();
        let row = QuarantineRow {
            received_at_ms: now_ms,
            peer,
            stage: "datagram",
            reason,
            detail: &detail,
            agent_claimed: None,
            key_claimed: None,
            seq_claimed: None,
            raw: &copy[..copy.len().min(MAX_DATAGRAM_COPY)],
            raw_len: len,
        };
        let result = self.quarantine(row, &["datagrams_rejected", &counter]);
        if let Some(suppressed) = self.logs.check(&counter, now_ms) {
            tracing::warn!(
                %peer,
                reason,
                len,
                suppressed,
                "refused datagram: {detail}{}",
                suppressed_note(suppressed)
            );
        }
        result
    }

    /// Writes a quarantine row with its counters, within the flood budget: past it, the row
    /// loses its bytes or is not written, and the counters are kept in memory until
    /// [`Ingest::flush_counts`].
    fn quarantine(&mut self, row: QuarantineRow<'_>, counters: &[&str]) -> Result<(), CmdbError> {
        let now = row.received_at_ms;
        match self.budget.admit(row.raw.len(), now) {
            Admission::RowWithBytes => self.cmdb.quarantine_and_count(&row, counters),
            Admission::RowOnly => {
                let row = QuarantineRow { raw: &[], ..row };
                self.cmdb.quarantine_and_count(&row, counters)
            }
            Admission::Nothing => {
                for name in counters.iter().copied().chain(["quarantine_suppressed"]) {
                    *self.pending_counts.entry(name.to_owned()).or_insert(0) += 1;
                }
                if self
                    .pending_counts
                    .get("quarantine_suppressed")
                    .copied()
                    .unwrap_or(0)
                    >= PENDING_FLUSH_AT
                {
                    self.flush_counts(now)?;
                }
                Ok(())
            }
        }
    }

    /// Writes the counts of refusals that were not quarantined (see [`crate::budget`]) in one
    /// transaction. Call it periodically; `serve` does.
    pub fn flush_counts(&mut self, now_ms: u64) -> Result<(), CmdbError> {
        if self.pending_counts.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending_counts);
        let result = self.cmdb.in_transaction(|db| {
            for (name, delta) in &pending {
                db.bump_counter(name, *delta, now_ms)?;
            }
            Ok::<_, CmdbError>(())
        });
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) | Err(e) => {
                // Keep them for the next attempt.
                for (name, delta) in pending {
                    *self.pending_counts.entry(name).or_insert(0) += delta;
                }
                Err(e)
            }
        }
    }

    /// Records a message the reassembler gave up: `reassembly_dropped` event + counters
    /// `reassembly_dropped` and `reassembly_dropped.<expired|evicted>` + a thinned warning.
    pub fn reassembly_dropped<K>(
        &mut self,
        peer: &str,
        dropped: &Dropped<K>,
        now_ms: u64,
    ) -> Result<(), CmdbError> {
        let why = match dropped.reason {
            DropReason::Expired => "expired",
            DropReason::Evicted => "evicted",
        };
        let counter = format!("reassembly_dropped.{why}");
        let detail = json!({
            "peer": peer,
            "message_id": dropped.message_id,
            "fragments_received": dropped.received,
            "fragments_total": dropped.count,
            "envelopes": dropped.envelopes,
            "reason": why,
        });
        let result = self.cmdb.event_and_count(
            now_ms,
            kind::REASSEMBLY_DROPPED,
            EventScope::default(),
            &detail,
            &["reassembly_dropped", &counter],
        );
        if let Some(suppressed) = self.logs.check(&counter, now_ms) {
            tracing::warn!(
                %peer,
                reason = why,
                message_id = dropped.message_id,
                received = dropped.received,
                count = dropped.count,
                suppressed,
                "gave up reassembling a message or FEC window of {} envelope(s): {} of {} \
                 fragments/symbols needed arrived ({why}); the collector reports the lost \
                 sequence numbers as a gap when the agent's next envelope arrives{}",
                dropped.envelopes,
                dropped.received,
                dropped.count,
                suppressed_note(suppressed)
            );
        }
        result
    }

    /// Adds `delta` to a counter (for events counted outside this type, like backpressure).
    pub fn count(&mut self, name: &str, delta: i64, now_ms: u64) -> Result<(), CmdbError> {
        self.cmdb.bump_counter(name, delta, now_ms)
    }

    /// Logs one "N more suppressed" line per reason whose flood has stopped.
    pub fn flush_logs(&mut self, now_ms: u64) {
        for (reason, n) in self.logs.flush(now_ms) {
            tracing::warn!(reason = %reason, suppressed = n, "{n} more `{reason}` refusals were not logged individually");
        }
    }
}

/// How the detail of a `replay` that arrived late (never stored) begins.
const LATE: &str = "late:";

/// Judgement and apply, inside the caller's transaction.
#[allow(clippy::too_many_arguments)]
fn apply_in(
    db: &mut Cmdb,
    checked: Checked,
    wire: &[u8],
    peer: &str,
    now_ms: u64,
    recheck_key: bool,
    dedup: bool,
    max_skew_ms: u64,
) -> Result<Applied, (Reason, String)> {
    let storage = |e: CmdbError| (Reason::Storage, e.to_string());
    let Checked {
        verified,
        body,
        prepared,
    } = checked;
    let h = &verified.header;
    if recheck_key {
        let key = db.trusted_key(&h.key_id).map_err(storage)?;
        authorise(key.as_ref(), &h.agent, &h.zone, &h.key_id.to_string())?;
    }
    if h.time_ms > now_ms.saturating_add(max_skew_ms) {
        return Err((
            Reason::FutureTimestamp,
            format!(
                "envelope {} from agent {} was sealed at {} by the agent's clock, {} ms ahead of \
                 the collector's clock ({}); the allowed skew is {max_skew_ms} ms. Fix the clock \
                 of the agent's gateway (NTP) or of the collector, or raise --max-clock-skew",
                h.seq,
                h.agent,
                h.time_ms,
                h.time_ms - now_ms,
                now_ms
            ),
        ));
    }
    let previous = db.chain_tip(&h.agent).map_err(storage)?;
    let verdict = chain::judge(previous.as_ref(), h);
    if let SequenceVerdict::Replay { last } = verdict {
        if dedup
            && db
                .envelope_stored(&h.agent, h.seq, &verified.hash)
                .map_err(storage)?
        {
            return Err((
                Reason::Duplicate,
                format!(
                    "envelope {} from agent {} is already stored (same hash {})",
                    h.seq, h.agent, verified.hash
                ),
            ));
        }
        if !db.envelope_seq_stored(&h.agent, h.seq).map_err(storage)? {
            return Err((
                Reason::Replay,
                format!(
                    "{LATE} sequence number {} from agent {} arrived after {last} was accepted \
                     and was never stored (reordered or delayed on the way); it cannot be \
                     applied out of order. If the agent lost its state and restarted its \
                     sequence, it did not declare it (a zero prev_hash above {last})",
                    h.seq, h.agent
                ),
            ));
        }
        return Err((
            Reason::Replay,
            format!(
                "sequence number {} from agent {} is not above the last accepted {last} \
                 (a replay or a late duplicate)",
                h.seq, h.agent
            ),
        ));
    }
    let meta = EnvelopeMeta {
        agent: &h.agent,
        zone: &h.zone,
        key_id: h.key_id,
        seq: h.seq,
        hash: verified.hash,
        prev_hash: h.prev_hash,
        agent_time_ms: h.time_ms,
        kind: body.kind(),
        verdict,
        previous,
        peer,
        received_at_ms: now_ms,
        raw: wire,
    };
    let outcome = match &body {
        Body::Summary(summary) => db
            .apply_summary_prepared(&meta, summary, prepared.as_ref())
            .map_err(storage)?,
        Body::Heartbeat(_) => db.apply_heartbeat(&meta).map_err(storage)?,
        Body::DataLost(notice) => {
            tracing::warn!(%peer, agent = %h.agent, from = notice.from_seq, to = notice.to_seq,
                reason = %notice.reason,
                "agent {} reports envelopes {}..={} lost before delivery ({})",
                h.agent, notice.from_seq, notice.to_seq, notice.reason);
            db.apply_data_lost(&meta, notice).map_err(storage)?
        }
        Body::Probes(report) => db.apply_probes(&meta, report).map_err(storage)?,
        Body::KeyHandover(handover) => db
            .apply_key_handover(&meta, handover)
            .map_err(storage)?
            .map_err(|why| (Reason::BadHandover, why))?,
        Body::Changes(set) => db.apply_changes(&meta, set).map_err(storage)?,
    };
    Ok(Applied {
        agent: h.agent.clone(),
        zone: h.zone.clone(),
        seq: h.seq,
        verdict,
        outcome,
    })
}

fn suppressed_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more suppressed since the last line)")
    }
}
