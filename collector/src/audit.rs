//! `outpost-collector audit verify`: re-check everything the CMDB stores about envelopes from
//! the database alone.
//!
//! For every stored envelope row (per agent, in the order the collector accepted them):
//! - the raw wire bytes parse, and their signature verifies under the key the header names,
//!   looked up in the stored key history (`agent_keys`, any status: retired keys still verify
//!   what they sealed);
//! - the key row is honest (its id is the fingerprint of its public key), is enrolled for the
//!   header's agent and zone, and was not retired by a handover before this envelope;
//! - the row's columns (agent, seq, hash, prev_hash, key, zone, agent time, kind) equal what the
//!   signed bytes say;
//! - the chain, re-judged from the previous row with [`outpost_proto::chain::judge`], gives
//!   the verdict the collector stored (`first`, `next`, `gap`, `chain_break`, `restart`): a row
//!   deleted from the middle turns a stored `next` into a gap, a deleted first row turns the
//!   second into `first`;
//! - a key handover's proof of possession verifies and the successor key row matches it;
//! - the agent's stored chain tip is the last row (a deleted tail is caught).
//!
//! Gaps, chain breaks and declared restarts are listed (they are facts the collector recorded,
//! not tampering). Anything else is a finding, and `audit verify` exits non-zero.
//!
//! What it cannot catch: someone with write access who deletes rows *and* rewrites the next
//! row's stored verdict and the agent's tip consistently can hide whole envelopes (the signed
//! bytes cannot say what is missing after them); the `sequence_gap` events, counters and the
//! agent's own later envelopes (which name their predecessor's hash) are the further evidence.

use std::collections::HashMap;
use std::path::Path;

use outpost_proto::envelope::{self, EnvelopeHeader};
use outpost_proto::model::Body;
use outpost_proto::{ChainTip, Digest, PublicKey, SequenceVerdict, chain, handover};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::cmdb::apply::verdict_name;
use crate::render::{Format, json};
use crate::table::Table;

/// One thing that does not check out: evidence of tampering or corruption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable name: `unparsable_envelope`, `bad_signature`, `unknown_key`, `key_tampered`,
    /// `key_not_authorised`, `key_retired_before`, `row_mismatch`, `verdict_mismatch`,
    /// `bad_handover`, `tip_mismatch`.
    pub kind: &'static str,
    pub agent_id: Option<String>,
    pub envelope_id: Option<i64>,
    pub seq: Option<i64>,
    pub detail: String,
}

/// A recorded discontinuity in an agent's chain (not tampering).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discontinuity {
    /// `gap`, `chain_break` or `restart`.
    pub kind: &'static str,
    pub agent_id: String,
    pub seq: u64,
    /// For a gap: the missing range.
    pub from_seq: Option<u64>,
    pub to_seq: Option<u64>,
}

/// The outcome of one audit.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditReport {
    pub envelopes_checked: u64,
    pub agents_checked: u64,
    pub keys_checked: u64,
    pub findings: Vec<Finding>,
    pub discontinuities: Vec<Discontinuity>,
}

impl AuditReport {
    /// Whether nothing was found.
    pub fn clean(&self) -> bool {
        self.findings.is_empty()
    }

    fn find(
        &mut self,
        kind: &'static str,
        agent: Option<&str>,
        row: Option<(i64, i64)>,
        detail: String,
    ) {
        self.findings.push(Finding {
            kind,
            agent_id: agent.map(str::to_owned),
            envelope_id: row.map(|r| r.0),
            seq: row.map(|r| r.1),
            detail,
        });
    }
}

/// Why the audit could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open CMDB {} read-only: {source}; pass the file `serve --db` writes", path.display())]
    Open {
        path: std::path::PathBuf,
        source: rusqlite::Error,
    },
    #[error("CMDB {}: {source}", path.display())]
    Sqlite {
        path: std::path::PathBuf,
        source: rusqlite::Error,
    },
}

struct KeyInfo {
    public: Option<PublicKey>,
    agent: String,
    zones: Vec<String>,
    handover_seq: Option<i64>,
    superseded_by: Option<String>,
}

struct Row {
    id: i64,
    agent: String,
    seq: i64,
    hash: String,
    prev_hash: String,
    key_id: String,
    zone: String,
    agent_time_ms: i64,
    kind: String,
    verdict: String,
    raw: Vec<u8>,
}

/// Audits the CMDB at `path`, opened read-only.
pub fn verify(path: &Path) -> Result<AuditReport, AuditError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| AuditError::Open {
        path: path.to_owned(),
        source,
    })?;
    let sqlite = |source| AuditError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let mut report = AuditReport::default();
    let keys = load_keys(&conn, &mut report).map_err(sqlite)?;

    let mut stmt = conn
        .prepare(
            "SELECT envelope_id, agent_id, seq, hash, prev_hash, key_id, zone, agent_time_ms,
                 kind, verdict, raw
             FROM envelopes ORDER BY agent_id, envelope_id",
        )
        .map_err(sqlite)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(Row {
                id: r.get(0)?,
                agent: r.get(1)?,
                seq: r.get(2)?,
                hash: r.get(3)?,
                prev_hash: r.get(4)?,
                key_id: r.get(5)?,
                zone: r.get(6)?,
                agent_time_ms: r.get(7)?,
                kind: r.get(8)?,
                verdict: r.get(9)?,
                // A blob; text holding the same bytes (what `||` in SQL makes) is read as
                // bytes too, so the signature check, not a type error, judges it.
                raw: match r.get_ref(10)? {
                    ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
                    _ => Vec::new(),
                },
            })
        })
        .map_err(sqlite)?;
    // Per agent: the tip as re-judged from the rows.
    let mut tips: HashMap<String, ChainTip> = HashMap::new();
    for row in rows {
        let row = row.map_err(sqlite)?;
        report.envelopes_checked += 1;
        let previous = tips.get(&row.agent).copied();
        if let Some(tip) = check_row(&row, previous, &keys, &mut report) {
            tips.insert(row.agent.clone(), tip);
        }
    }
    check_tips(&conn, &tips, &mut report).map_err(sqlite)?;
    Ok(report)
}

fn load_keys(
    conn: &Connection,
    report: &mut AuditReport,
) -> rusqlite::Result<HashMap<String, KeyInfo>> {
    let mut keys = HashMap::new();
    // Before schema version 3 there were no handovers (and no such columns).
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let sql = if version >= 3 {
        "SELECT key_id, public_key, agent_id, handover_seq, superseded_by FROM agent_keys"
    } else {
        "SELECT key_id, public_key, agent_id, NULL, NULL FROM agent_keys"
    };
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    for row in rows {
        let (key_id, public, agent, handover_seq, superseded_by) = row?;
        report.keys_checked += 1;
        let public = match <[u8; 32]>::try_from(public.as_slice()) {
            Ok(bytes) if PublicKey(bytes).key_id().to_string() == key_id => Some(PublicKey(bytes)),
            Ok(bytes) => {
                report.find(
                    "key_tampered",
                    Some(&agent),
                    None,
                    format!(
                        "key row {key_id}: its public key has fingerprint {}, not {key_id}",
                        PublicKey(bytes).key_id()
                    ),
                );
                None
            }
            Err(_) => {
                report.find(
                    "key_tampered",
                    Some(&agent),
                    None,
                    format!(
                        "key row {key_id}: public key is {} bytes, not 32",
                        public.len()
                    ),
                );
                None
            }
        };
        keys.insert(
            key_id,
            KeyInfo {
                public,
                agent,
                zones: Vec::new(),
                handover_seq,
                superseded_by,
            },
        );
    }
    let mut stmt = conn.prepare("SELECT key_id, zone FROM key_zones")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    for row in rows {
        let (key_id, zone) = row?;
        if let Some(k) = keys.get_mut(&key_id) {
            k.zones.push(zone);
        }
    }
    Ok(keys)
}

/// Checks one row; returns the tip it establishes when its signed bytes are usable.
fn check_row(
    row: &Row,
    previous: Option<ChainTip>,
    keys: &HashMap<String, KeyInfo>,
    report: &mut AuditReport,
) -> Option<ChainTip> {
    let at = Some((row.id, row.seq));
    let agent = Some(row.agent.as_str());
    let unverified = match envelope::parse(&row.raw) {
        Ok(u) => u,
        Err(e) => {
            report.find(
                "unparsable_envelope",
                agent,
                at,
                format!("stored wire bytes do not parse: {e}"),
            );
            return None;
        }
    };
    let key_hex = unverified.header().key_id.to_string();
    let Some(key) = keys.get(&key_hex) else {
        report.find(
            "unknown_key",
            agent,
            at,
            format!("signed with key {key_hex}, which is not in the key history"),
        );
        return None;
    };
    let Some(public) = key.public else {
        report.find(
            "bad_signature",
            agent,
            at,
            format!("key {key_hex} is damaged (see key_tampered); the signature cannot be checked"),
        );
        return None;
    };
    let verified = match unverified.verify(&public) {
        Ok(v) => v,
        Err(e) => {
            report.find("bad_signature", agent, at, e.to_string());
            return None;
        }
    };
    let h = &verified.header;
    if key.agent != h.agent.as_str() || !key.zones.iter().any(|z| z == h.zone.as_str()) {
        report.find(
            "key_not_authorised",
            agent,
            at,
            format!(
                "signed for agent {} zone {}, but key {key_hex} is recorded for agent {} zones [{}]",
                h.agent,
                h.zone,
                key.agent,
                key.zones.join(", ")
            ),
        );
    }
    if let Some(handover_seq) = key.handover_seq
        && i64::try_from(h.seq).map_or(true, |s| s > handover_seq)
    {
        report.find(
            "key_retired_before",
            agent,
            at,
            format!(
                "sealed with key {key_hex} at seq {}, after the key was handed over at seq \
                 {handover_seq}; the collector refuses such envelopes",
                h.seq
            ),
        );
    }
    let body = verified.body();
    let body_kind = body.as_ref().map(|b| b.kind()).unwrap_or("?");
    check_columns(row, h, &verified.hash, body_kind, report);
    let judged = chain::judge(previous.as_ref(), h);
    let judged_name = verdict_name(&judged);
    if judged_name != row.verdict {
        let what = match judged {
            SequenceVerdict::First => "a row before it was deleted, or this row was moved",
            SequenceVerdict::Gap { .. } => "rows between it and the previous one were deleted",
            SequenceVerdict::Replay { .. } => "it repeats or precedes a stored sequence number",
            _ => "the stored rows do not form the chain the collector recorded",
        };
        report.find(
            "verdict_mismatch",
            agent,
            at,
            format!(
                "stored verdict {:?}, but the chain from the stored rows says {judged_name:?}: {what}",
                row.verdict
            ),
        );
    }
    match judged {
        SequenceVerdict::Gap { from, to } => report.discontinuities.push(Discontinuity {
            kind: "gap",
            agent_id: row.agent.clone(),
            seq: h.seq,
            from_seq: Some(from),
            to_seq: Some(to),
        }),
        SequenceVerdict::ChainBreak | SequenceVerdict::Restart { .. } => {
            report.discontinuities.push(Discontinuity {
                kind: judged_name,
                agent_id: row.agent.clone(),
                seq: h.seq,
                from_seq: None,
                to_seq: None,
            })
        }
        _ => {}
    }
    if let Ok(Body::KeyHandover(k)) = &body {
        match handover::verify(k, &h.agent, &h.key_id, h.seq) {
            Err(e) => report.find("bad_handover", agent, at, e.to_string()),
            Ok(new) => {
                let new_hex = new.key_id().to_string();
                let ok = keys
                    .get(&new_hex)
                    .is_some_and(|n| n.public == Some(new) && n.agent == h.agent.as_str())
                    && key.superseded_by.as_deref() == Some(new_hex.as_str());
                if !ok {
                    report.find(
                        "bad_handover",
                        agent,
                        at,
                        format!(
                            "the handover to key {new_hex} is signed, but the key history does \
                             not record that key as the successor of {key_hex} for agent {}",
                            h.agent
                        ),
                    );
                }
            }
        }
    }
    Some(verified.tip())
}

fn check_columns(
    row: &Row,
    h: &EnvelopeHeader,
    hash: &Digest,
    body_kind: &str,
    report: &mut AuditReport,
) {
    let checks: [(&str, String, String); 8] = [
        ("agent_id", row.agent.clone(), h.agent.to_string()),
        ("seq", row.seq.to_string(), h.seq.to_string()),
        ("hash", row.hash.clone(), hash.to_string()),
        ("prev_hash", row.prev_hash.clone(), h.prev_hash.to_string()),
        ("key_id", row.key_id.clone(), h.key_id.to_string()),
        ("zone", row.zone.clone(), h.zone.to_string()),
        (
            "agent_time_ms",
            row.agent_time_ms.to_string(),
            h.time_ms.to_string(),
        ),
        ("kind", row.kind.clone(), body_kind.to_owned()),
    ];
    for (column, stored, signed) in checks {
        if stored != signed {
            report.find(
                "row_mismatch",
                Some(&row.agent),
                Some((row.id, row.seq)),
                format!("column {column} is {stored:?} but the signed envelope says {signed:?}"),
            );
        }
    }
}

fn check_tips(
    conn: &Connection,
    tips: &HashMap<String, ChainTip>,
    report: &mut AuditReport,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare("SELECT agent_id, last_seq, last_hash FROM agents")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<i64>>(1)?,
            r.get::<_, Option<String>>(2)?,
        ))
    })?;
    for row in rows {
        let (agent, last_seq, last_hash) = row?;
        report.agents_checked += 1;
        let stored = last_seq.zip(last_hash);
        let derived = tips
            .get(&agent)
            .map(|t| (i64::try_from(t.seq).unwrap_or(-1), t.hash.to_string()));
        if stored != derived {
            let show = |t: &Option<(i64, String)>| match t {
                Some((s, h)) => format!("seq {s} hash {h}"),
                None => "nothing".to_owned(),
            };
            report.find(
                "tip_mismatch",
                Some(&agent),
                None,
                format!(
                    "agent's stored chain tip is {}, but its last stored envelope gives {} \
                     (rows at the end were deleted or the tip was edited)",
                    show(&stored),
                    show(&derived)
                ),
            );
        }
    }
    Ok(())
}

/// The report for people or scripts (`outpost.audit.v1`, see docs/json.md).
pub fn render(report: &AuditReport, format: Format, now_ms: i64) -> String {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Body<'a> {
            audit: &'a AuditReport,
            clean: bool,
        }
        return json(
            "outpost.audit.v1",
            now_ms,
            Body {
                audit: report,
                clean: report.clean(),
            },
        );
    }
    let mut out = format!(
        "checked {} envelopes, {} agents, {} keys\n",
        report.envelopes_checked, report.agents_checked, report.keys_checked
    );
    if !report.discontinuities.is_empty() {
        let mut t = Table::new(&["AGENT", "SEQ", "KIND", "MISSING"]);
        for d in &report.discontinuities {
            let missing = match (d.from_seq, d.to_seq) {
                (Some(a), Some(b)) => format!("{a}..={b}"),
                _ => String::new(),
            };
            t.row(vec![
                d.agent_id.clone(),
                d.seq.to_string(),
                d.kind.to_owned(),
                missing,
            ]);
        }
        out.push_str("\nrecorded gaps, chain breaks and restarts (not tampering):\n");
        out.push_str(&t.render());
    }
    if report.clean() {
        out.push_str("\nOK: every envelope verifies and every chain matches what was recorded\n");
    } else {
        out.push_str(&format!(
            "\nTAMPERING OR CORRUPTION: {} finding(s)\n",
            report.findings.len()
        ));
        for f in &report.findings {
            let mut at = String::new();
            if let Some(a) = &f.agent_id {
                at.push_str(&format!(" agent {a}"));
            }
            if let Some(id) = f.envelope_id {
                at.push_str(&format!(" envelope row {id}"));
            }
            if let Some(seq) = f.seq {
                at.push_str(&format!(" seq {seq}"));
            }
            // Details quote stored text: escape control characters like the tables do.
            let detail: String = f
                .detail
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            out.push_str(&format!("{}:{at}: {detail}\n", f.kind));
        }
    }
    out
}
