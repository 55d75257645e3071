//! `outpost-collector evidence --db F --zone Z --from T --to T --out DIR --key K`: write a pack.

use std::path::{Path, PathBuf};

use outpost_proto::{AgentId, SigningKey};

use super::analysis::Period;
use super::collect::{self, IndexRow};
use super::manifest::{self, FileEntry, Manifest};
use super::verify::{self, Index, Keys};
use super::{EvidenceError, GENERATOR, changes, files, html, key};
use crate::time::rfc3339;

/// What to put in a pack.
pub struct BuildRequest<'a> {
    pub db: &'a Path,
    pub zone: &'a str,
    pub from_ms: i64,
    pub to_ms: i64,
    pub out: &'a Path,
    pub key: &'a SigningKey,
    pub now_ms: i64,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct BuildSummary {
    pub out: PathBuf,
    pub envelopes: u64,
    pub agents: u64,
    pub cis: u64,
    pub cis_within_limit: u64,
    pub discontinuities: u64,
    pub files: u64,
    pub changes_available: bool,
    pub collector_key_id: String,
}

fn write(
    out: &Path,
    rel: &str,
    bytes: &[u8],
    entries: &mut Vec<FileEntry>,
) -> Result<(), EvidenceError> {
    let path = out.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(EvidenceError::io(parent))?;
    }
    std::fs::write(&path, bytes).map_err(EvidenceError::io(&path))?;
    entries.push(manifest::entry(rel, bytes));
    Ok(())
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut text =
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    text.push('\n');
    text.into_bytes()
}

/// Builds the pack. Refuses a non-empty `out`, an empty or inverted period, and a CMDB whose
/// envelopes do not verify (run `audit verify` on it).
pub fn build(req: &BuildRequest<'_>) -> Result<BuildSummary, EvidenceError> {
    if req.to_ms <= req.from_ms {
        return Err(EvidenceError::invalid(format!(
            "--to {} is not after --from {}",
            rfc3339(req.to_ms),
            rfc3339(req.from_ms)
        )));
    }
    if req.out.exists()
        && std::fs::read_dir(req.out)
            .map_err(EvidenceError::io(req.out))?
            .next()
            .is_some()
    {
        return Err(EvidenceError::invalid(format!(
            "{} exists and is not empty; a pack is written into a new directory",
            req.out.display()
        )));
    }
    let conn = collect::open(req.db)?;
    let collected = collect::collect(&conn, req.db, req.zone, req.from_ms, req.to_ms)?;
    let changes = changes::read(&conn, req.zone, req.from_ms, req.to_ms);
    drop(conn);

    let rows: Vec<(IndexRow, Option<Vec<u8>>)> = collected
        .rows
        .into_iter()
        .map(|(r, raw)| (r, Some(raw)))
        .collect();
    let checked = verify::check_envelopes(&rows, &collected.keys);
    if let Some(f) = checked.audit.findings.first() {
        return Err(EvidenceError::invalid(format!(
            "the CMDB's envelopes for zone {} do not verify ({} finding(s); first: {}: {}); run \
             `outpost-collector audit verify --db {}`",
            req.zone,
            checked.audit.findings.len(),
            f.kind,
            f.detail,
            req.db.display()
        )));
    }
    let period = Period {
        zone: req.zone.to_owned(),
        from_ms: req.from_ms,
        to_ms: req.to_ms,
        end_ms: req.to_ms.min(req.now_ms),
    };
    let analysis = verify::analyse(&period, &rows, &checked);

    std::fs::create_dir_all(req.out).map_err(EvidenceError::io(req.out))?;
    let mut entries = Vec::new();
    let label = AgentId::new(key::KEY_LABEL).map_err(|e| EvidenceError::invalid(e.to_string()))?;
    write(
        req.out,
        files::COLLECTOR_KEY,
        req.key.public_key().to_line(Some(&label)).as_bytes(),
        &mut entries,
    )?;
    for (r, raw) in &rows {
        if let Some(raw) = raw {
            write(req.out, &r.file, raw, &mut entries)?;
        }
    }
    let index = Index {
        schema: verify::INDEX_SCHEMA.to_owned(),
        envelopes: rows.iter().map(|(r, _)| r.clone()).collect(),
    };
    write(req.out, files::INDEX, &json(&index), &mut entries)?;
    let keys = Keys {
        schema: verify::KEYS_SCHEMA.to_owned(),
        keys: collected.keys.clone(),
    };
    write(req.out, files::KEYS, &json(&keys), &mut entries)?;
    write(req.out, files::REPORT_JSON, &json(&analysis), &mut entries)?;
    write(req.out, files::CHANGES, &json(&changes), &mut entries)?;
    let created_at = rfc3339(req.now_ms);
    let collector_key_id = req.key.key_id().to_string();
    let header = html::Header {
        generator: GENERATOR,
        created_at: &created_at,
        collector_key_id: &collector_key_id,
    };
    let page = html::render(&header, &analysis, &collected.keys, &changes);
    write(req.out, files::REPORT_HTML, page.as_bytes(), &mut entries)?;

    let manifest = Manifest {
        schema: manifest::SCHEMA.to_owned(),
        generator: GENERATOR.to_owned(),
        created_at,
        created_at_ms: req.now_ms,
        zone: req.zone.to_owned(),
        from: rfc3339(req.from_ms),
        from_ms: req.from_ms,
        to: rfc3339(req.to_ms),
        to_ms: req.to_ms,
        collector_key_id: collector_key_id.clone(),
        files: entries,
    };
    let manifest_bytes = json(&manifest);
    let manifest_path = req.out.join(files::MANIFEST);
    std::fs::write(&manifest_path, &manifest_bytes).map_err(EvidenceError::io(&manifest_path))?;
    let sig_path = req.out.join(files::SIGNATURE);
    std::fs::write(&sig_path, manifest::sign(req.key, &manifest_bytes))
        .map_err(EvidenceError::io(&sig_path))?;
    Ok(BuildSummary {
        out: req.out.to_owned(),
        envelopes: analysis.envelopes,
        agents: analysis.agents.len() as u64,
        cis: analysis.monitoring.cis,
        cis_within_limit: analysis.monitoring.cis_within_limit,
        discontinuities: analysis.discontinuities.len() as u64,
        files: manifest.files.len() as u64 + 2,
        changes_available: changes.available,
        collector_key_id,
    })
}
