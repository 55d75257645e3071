//! `outpost-collector evidence verify DIR`: check a pack with nothing but the pack.
//!
//! 1. `manifest.sig` verifies over the exact bytes of `manifest.json` under `collector.pub`
//!    (or under the pinned key, when one is given: then a pack re-signed by anyone else fails).
//! 2. Every file the manifest lists exists with its SHA-256 and size; no file is unlisted.
//! 3. Every envelope's signature verifies against `keys.json`, its index row matches its
//!    signed bytes, and the chain re-judged over the pack gives the collector's recorded
//!    verdicts — the same checks `audit verify` makes on a CMDB ([`crate::audit`]).
//! 4. `report.json` equals the analysis of the verified envelopes, and `report.html` equals
//!    its rendering (when made by this generator).
//! 5. Every judged change in `changes.json` names an envelope in the pack.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path};

use outpost_proto::envelope;
use outpost_proto::model::Body;
use outpost_proto::{ChainTip, Digest, EnvelopeHeader, PublicKey};
use serde::{Deserialize, Serialize};

use super::analysis::{self, Period, Sealed};
use super::changes::Changes;
use super::collect::{IndexRow, KeyEntry};
use super::html;
use super::manifest::{self, Manifest};
use super::{EvidenceError, GENERATOR, files};
use crate::audit::{self, AuditReport, Discontinuity, KeyInfo, Row};

/// `envelopes/index.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    pub schema: String,
    pub envelopes: Vec<IndexRow>,
}

/// `keys.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Keys {
    pub schema: String,
    pub keys: Vec<KeyEntry>,
}

pub const INDEX_SCHEMA: &str = "outpost.evidence.envelopes.v1";
pub const KEYS_SCHEMA: &str = "outpost.evidence.keys.v1";

/// One thing in a pack that does not check out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `manifest_signature`, `collector_key_not_pinned`, `missing_file`, `hash_mismatch`,
    /// `unlisted_file`, `bad_path`, `unreadable`, `out_of_scope`, `report_mismatch`,
    /// `change_without_envelope`, or an `audit verify` kind (`bad_signature`,
    /// `unparsable_envelope`, `unknown_key`, `key_tampered`, `key_not_authorised`,
    /// `key_retired_before`, `row_mismatch`, `verdict_mismatch`, `bad_handover`).
    pub kind: &'static str,
    pub detail: String,
}

/// The outcome of verifying a pack.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub zone: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub collector_key_id: Option<String>,
    pub pinned: bool,
    pub files_checked: u64,
    pub envelopes_checked: u64,
    pub keys_checked: u64,
    pub cis: u64,
    pub discontinuities: Vec<Discontinuity>,
    pub findings: Vec<Finding>,
    pub notes: Vec<String>,
}

impl VerifyReport {
    pub fn clean(&self) -> bool {
        self.findings.is_empty()
    }

    fn find(&mut self, kind: &'static str, detail: impl Into<String>) {
        self.findings.push(Finding {
            kind,
            detail: detail.into(),
        });
    }
}

/// The envelopes that verified, and the audit-style findings.
pub(crate) struct Checked {
    pub audit: AuditReport,
    pub verified: Vec<(usize, EnvelopeHeader, Body)>,
}

/// Checks envelopes (rows with their bytes; `None` = file missing, already reported) against
/// the key history, with the chain judged over the given order. Shared by build and verify.
pub(crate) fn check_envelopes(rows: &[(IndexRow, Option<Vec<u8>>)], keys: &[KeyEntry]) -> Checked {
    let mut audit = AuditReport::default();
    let mut infos: HashMap<String, KeyInfo> = HashMap::new();
    for k in keys {
        let public = decode_hex(&k.public_key);
        let mut info = audit::key_info(
            &k.key_id,
            &public,
            k.agent_id.clone(),
            k.handover_seq,
            k.superseded_by.clone(),
            &mut audit,
        );
        info.zones = k.zones.clone();
        infos.insert(k.key_id.clone(), info);
    }
    let mut tips: HashMap<String, ChainTip> = HashMap::new();
    let mut verified = Vec::new();
    for (i, (r, raw)) in rows.iter().enumerate() {
        let Some(raw) = raw else { continue };
        audit.envelopes_checked += 1;
        let previous = match &r.predecessor {
            Some(p) => match (u64::try_from(p.seq), Digest::from_hex(&p.hash)) {
                (Ok(seq), Some(hash)) => Some(ChainTip { seq, hash }),
                _ => {
                    audit.find(
                        "row_mismatch",
                        Some(&r.agent_id),
                        Some((r.envelope_id, r.seq)),
                        format!(
                            "predecessor {:?} seq {} is not a sequence number and hash",
                            p.hash, p.seq
                        ),
                    );
                    None
                }
            },
            None => tips.get(&r.agent_id).copied(),
        };
        let row = Row {
            id: r.envelope_id,
            agent: r.agent_id.clone(),
            seq: r.seq,
            hash: r.hash.clone(),
            prev_hash: r.prev_hash.clone(),
            key_id: r.key_id.clone(),
            zone: r.zone.clone(),
            agent_time_ms: r.agent_time_ms,
            kind: r.kind.clone(),
            verdict: r.verdict.clone(),
            raw: raw.clone(),
        };
        let before = audit.findings.len();
        if let Some(tip) = audit::check_row(&row, previous, &infos, &mut audit) {
            tips.insert(r.agent_id.clone(), tip);
        }
        if audit.findings.len() != before {
            continue;
        }
        // Clean: decode it for the analysis (the key is known to verify it).
        let Ok(unverified) = envelope::parse(raw) else {
            continue;
        };
        let key = infos
            .get(&unverified.header().key_id.to_string())
            .and_then(|k| k.public);
        if let Some(v) = key.and_then(|k| unverified.verify(&k).ok())
            && let Ok(body) = v.body()
        {
            verified.push((i, v.header, body));
        }
    }
    Checked { audit, verified }
}

fn decode_hex(text: &str) -> Vec<u8> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(2) {
        return Vec::new();
    }
    text.chunks_exact(2)
        .map_while(|p| {
            let s = std::str::from_utf8(p).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

/// The analysis of checked envelopes for a period.
pub(crate) fn analyse(
    period: &Period,
    rows: &[(IndexRow, Option<Vec<u8>>)],
    checked: &Checked,
) -> analysis::Analysis {
    let sealed: Vec<Sealed<'_>> = checked
        .verified
        .iter()
        .map(|(i, header, body)| Sealed {
            row: &rows[*i].0,
            header,
            body,
        })
        .collect();
    analysis::analyse(period, &sealed, &checked.audit.discontinuities)
}

fn safe_relative(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

fn read_listed(dir: &Path, path: &str, report: &mut VerifyReport) -> Option<Vec<u8>> {
    match std::fs::read(dir.join(path)) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.find(
                "missing_file",
                format!("{path}: listed in the manifest but not in the pack"),
            );
            None
        }
        Err(e) => {
            report.find("unreadable", format!("{path}: {e}"));
            None
        }
    }
}

fn walk(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&e.path(), &rel, out),
            _ => {
                out.insert(rel);
            }
        }
    }
}

/// Verifies the pack in `dir`; `pinned` is the collector evidence key the caller trusts.
/// `Err` only when `dir` is not a pack at all.
pub fn verify(dir: &Path, pinned: Option<&PublicKey>) -> Result<VerifyReport, EvidenceError> {
    let mut report = VerifyReport {
        pinned: pinned.is_some(),
        ..VerifyReport::default()
    };
    let manifest_path = dir.join(files::MANIFEST);
    let manifest_bytes = std::fs::read(&manifest_path).map_err(|e| {
        EvidenceError::invalid(format!(
            "{} is not an evidence pack: cannot read {}: {e}",
            dir.display(),
            files::MANIFEST
        ))
    })?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
        EvidenceError::invalid(format!(
            "{}: not an evidence manifest: {e}",
            manifest_path.display()
        ))
    })?;
    if manifest.schema != manifest::SCHEMA {
        return Err(EvidenceError::invalid(format!(
            "{}: schema {:?}, this build reads {}",
            manifest_path.display(),
            manifest.schema,
            manifest::SCHEMA
        )));
    }
    report.zone = Some(manifest.zone.clone());
    report.from = Some(manifest.from.clone());
    report.to = Some(manifest.to.clone());
    report.collector_key_id = Some(manifest.collector_key_id.clone());

    // 1. The manifest signature.
    let bundled = std::fs::read_to_string(dir.join(files::COLLECTOR_KEY))
        .ok()
        .and_then(|t| PublicKey::parse_file(&t).ok())
        .map(|(k, _)| k);
    if let (Some(p), Some(b)) = (pinned, bundled)
        && p != &b
    {
        report.find(
            "collector_key_not_pinned",
            format!(
                "the pack is signed with collector key {}, not the pinned key {}",
                b.key_id(),
                p.key_id()
            ),
        );
    }
    match pinned.copied().or(bundled) {
        None => report.find(
            "manifest_signature",
            format!(
                "{} is missing or unreadable and no key is pinned",
                files::COLLECTOR_KEY
            ),
        ),
        Some(key) => {
            if key.key_id().to_string() != manifest.collector_key_id {
                report.find(
                    "manifest_signature",
                    format!(
                        "the manifest names collector key {}, but the key checked is {}",
                        manifest.collector_key_id,
                        key.key_id()
                    ),
                );
            }
            match std::fs::read_to_string(dir.join(files::SIGNATURE)) {
                Err(e) => report.find("manifest_signature", format!("{}: {e}", files::SIGNATURE)),
                Ok(sig) => {
                    if let Err(why) = manifest::check_signature(&sig, &manifest_bytes, &key) {
                        report.find("manifest_signature", why);
                    }
                }
            }
        }
    }
    if pinned.is_none() {
        report.notes.push(format!(
            "no --collector-key given: the pack is consistent with its own key {}; pin the \
             collector's evidence.pub to know who made it",
            manifest.collector_key_id
        ));
    }

    // 2. Files.
    let mut contents: HashMap<String, Vec<u8>> = HashMap::new();
    let mut listed = BTreeSet::new();
    for f in &manifest.files {
        if !safe_relative(&f.path) {
            report.find(
                "bad_path",
                format!("{:?}: not a relative path inside the pack", f.path),
            );
            continue;
        }
        listed.insert(f.path.clone());
        report.files_checked += 1;
        let Some(bytes) = read_listed(dir, &f.path, &mut report) else {
            continue;
        };
        let sha = Digest::of(&bytes).to_string();
        if sha != f.sha256 || bytes.len() as u64 != f.bytes {
            report.find(
                "hash_mismatch",
                format!(
                    "{}: SHA-256 {sha} ({} bytes), but the manifest says {} ({} bytes): the file \
                     was changed",
                    f.path,
                    bytes.len(),
                    f.sha256,
                    f.bytes
                ),
            );
        }
        contents.insert(f.path.clone(), bytes);
    }
    let mut present = BTreeSet::new();
    walk(dir, "", &mut present);
    for p in present {
        if p != files::MANIFEST && p != files::SIGNATURE && !listed.contains(&p) {
            report.find(
                "unlisted_file",
                format!("{p}: in the pack but not in the manifest"),
            );
        }
    }
    for required in [
        files::COLLECTOR_KEY,
        files::KEYS,
        files::INDEX,
        files::REPORT_JSON,
        files::REPORT_HTML,
        files::CHANGES,
    ] {
        if !listed.contains(required) {
            report.find(
                "missing_file",
                format!("{required}: not listed in the manifest"),
            );
        }
    }

    // 3. Envelopes.
    let parse = |name: &str, report: &mut VerifyReport| -> Option<serde_json::Value> {
        let bytes = contents.get(name)?;
        match serde_json::from_slice(bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                report.find("unreadable", format!("{name}: not JSON: {e}"));
                None
            }
        }
    };
    let keys: Vec<KeyEntry> = parse(files::KEYS, &mut report)
        .and_then(|v| {
            serde_json::from_value::<Keys>(v)
                .map_err(|e| report.find("unreadable", format!("{}: {e}", files::KEYS)))
                .ok()
        })
        .map(|k| k.keys)
        .unwrap_or_default();
    let index: Vec<IndexRow> = parse(files::INDEX, &mut report)
        .and_then(|v| {
            serde_json::from_value::<Index>(v)
                .map_err(|e| report.find("unreadable", format!("{}: {e}", files::INDEX)))
                .ok()
        })
        .map(|i| i.envelopes)
        .unwrap_or_default();
    let mut rows = Vec::with_capacity(index.len());
    for r in index {
        if r.zone != manifest.zone
            || r.agent_time_ms < manifest.from_ms
            || r.agent_time_ms >= manifest.to_ms
        {
            report.find(
                "out_of_scope",
                format!(
                    "{}: zone {} time {} is outside the pack's zone {} and period",
                    r.file, r.zone, r.agent_time_ms, manifest.zone
                ),
            );
        }
        let raw = if listed.contains(&r.file) {
            contents.get(&r.file).cloned()
        } else {
            report.find(
                "missing_file",
                format!("{}: in the index but not in the manifest", r.file),
            );
            None
        };
        rows.push((r, raw));
    }
    let checked = check_envelopes(&rows, &keys);
    report.envelopes_checked = checked.audit.envelopes_checked;
    report.keys_checked = checked.audit.keys_checked;
    report.discontinuities = checked.audit.discontinuities.clone();
    for f in &checked.audit.findings {
        let at = format!(
            "{}{}",
            f.agent_id
                .as_deref()
                .map_or_else(String::new, |a| format!("agent {a} ")),
            f.seq.map_or_else(String::new, |s| format!("seq {s}: "))
        );
        report.find(f.kind, format!("{at}{}", f.detail));
    }

    // 4. The report.
    let period = Period {
        zone: manifest.zone.clone(),
        from_ms: manifest.from_ms,
        to_ms: manifest.to_ms,
        end_ms: manifest.end_ms(),
    };
    let analysis = analyse(&period, &rows, &checked);
    report.cis = analysis.inventory.len() as u64;
    let derived = serde_json::to_value(&analysis).unwrap_or_default();
    if let Some(stated) = parse(files::REPORT_JSON, &mut report)
        && let Some((path, said, is)) = first_difference(&stated, &derived, String::new())
    {
        report.find(
            "report_mismatch",
            format!(
                "report.json{path} says {}, but the envelopes give {}",
                short(&said),
                short(&is)
            ),
        );
    }
    let changes: Changes = parse(files::CHANGES, &mut report)
        .and_then(|v| {
            serde_json::from_value(v)
                .map_err(|e| report.find("unreadable", format!("{}: {e}", files::CHANGES)))
                .ok()
        })
        .unwrap_or_default();
    if manifest.generator == GENERATOR {
        let header = html::Header {
            generator: &manifest.generator,
            created_at: &manifest.created_at,
            collector_key_id: &manifest.collector_key_id,
        };
        let expected = html::render(&header, &analysis, &keys, &changes);
        if let Some(actual) = contents.get(files::REPORT_HTML)
            && actual.as_slice() != expected.as_bytes()
        {
            let at = actual
                .iter()
                .zip(expected.as_bytes())
                .position(|(a, b)| a != b)
                .unwrap_or(actual.len().min(expected.len()));
            report.find(
                "report_mismatch",
                format!(
                    "report.html differs from the report the envelopes give, from byte {at}: \
                     …{}… instead of …{}…",
                    excerpt(actual, at),
                    excerpt(expected.as_bytes(), at)
                ),
            );
        }
    } else {
        report.notes.push(format!(
            "report.html was made by {}, this is {GENERATOR}: only its hash is checked",
            manifest.generator
        ));
    }

    // 5. Changes name envelopes in the pack.
    let hashes: BTreeSet<(&str, i64, &str)> = rows
        .iter()
        .map(|(r, _)| (r.agent_id.as_str(), r.seq, r.hash.as_str()))
        .collect();
    for c in &changes.changes {
        if !hashes.contains(&(
            c.agent_id.as_str(),
            c.envelope_seq,
            c.envelope_hash.as_str(),
        )) {
            report.find(
                "change_without_envelope",
                format!(
                    "change {} on {} names envelope {} seq {} hash {}, which is not in the pack",
                    c.change_id, c.ci_key, c.agent_id, c.envelope_seq, c.envelope_hash
                ),
            );
        }
    }
    Ok(report)
}

fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.len() > 120 {
        format!("{}…", s.chars().take(120).collect::<String>())
    } else {
        s
    }
}

fn excerpt(bytes: &[u8], at: usize) -> String {
    let end = (at + 40).min(bytes.len());
    String::from_utf8_lossy(&bytes[at.min(end)..end]).replace('\n', "\\n")
}

/// The first place two JSON values differ: (path, left, right).
fn first_difference(
    a: &serde_json::Value,
    b: &serde_json::Value,
    path: String,
) -> Option<(String, serde_json::Value, serde_json::Value)> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (l, r) = (
                    x.get(k).cloned().unwrap_or(Value::Null),
                    y.get(k).cloned().unwrap_or(Value::Null),
                );
                if let Some(d) = first_difference(&l, &r, format!("{path}.{k}")) {
                    return Some(d);
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (l, r))| first_difference(l, r, format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some((path, a.clone(), b.clone())),
    }
}

/// Text for people.
pub fn render(r: &VerifyReport) -> String {
    let mut out = format!(
        "evidence pack: zone {} from {} to {}, collector key {}{}\n\
         checked {} files, {} envelopes, {} keys; {} configuration items in the report\n",
        r.zone.as_deref().unwrap_or("?"),
        r.from.as_deref().unwrap_or("?"),
        r.to.as_deref().unwrap_or("?"),
        r.collector_key_id.as_deref().unwrap_or("?"),
        if r.pinned { " (pinned)" } else { "" },
        r.files_checked,
        r.envelopes_checked,
        r.keys_checked,
        r.cis
    );
    for d in &r.discontinuities {
        let missing = match (d.from_seq, d.to_seq) {
            (Some(f), Some(t)) => format!(" (missing {f}..={t})"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "recorded {} at agent {} seq {}{missing}\n",
            d.kind, d.agent_id, d.seq
        ));
    }
    for n in &r.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    if r.clean() {
        out.push_str("OK: every file, signature, chain and report figure checks out\n");
    } else {
        out.push_str(&format!(
            "TAMPERED OR DAMAGED: {} finding(s)\n",
            r.findings.len()
        ));
        for f in &r.findings {
            let detail: String = f
                .detail
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            out.push_str(&format!("{}: {detail}\n", f.kind));
        }
    }
    out
}
