//! Evidence packs for auditors: `outpost-collector evidence` and `evidence verify`.
//!
//! A pack is a directory anyone can check offline with nothing but the pack (and, to know who
//! made it, the collector's pinned evidence public key):
//!
//! | file                      | what                                                          |
//! |---------------------------|---------------------------------------------------------------|
//! | `manifest.json`           | zone, period, generator, and SHA-256 + size of every other file |
//! | `manifest.sig`            | the collector evidence key's Ed25519 signature over the manifest |
//! | `collector.pub`           | that key (`outpost-ed25519 <base64> collector-evidence`)      |
//! | `keys.json`               | the agents' public keys with their history                    |
//! | `envelopes/index.json`    | one row per envelope: the CMDB's columns and verdict          |
//! | `envelopes/<agent>/<seq>.cbor` | the signed envelopes, verbatim bytes from the CMDB       |
//! | `report.json`             | what the envelopes prove (inventory, intervals, gaps, CIP-010 items, segmentation probes) |
//! | `report.html`             | the same for people, plus change records when the CMDB has them |
//! | `changes.json`            | baselines and judged changes (collector records, when present) |
//!
//! `report.json` and `report.html` are derived from the envelopes alone (plus `changes.json`
//! and the manifest's header): `evidence verify` recomputes both and refuses a pack whose
//! report says anything the envelopes do not.
//!
//! - [`key`]: the collector evidence key (generate, load).
//! - [`manifest`]: the manifest, its signature, file hashing.
//! - [`collect`]: reading a zone and period out of the CMDB (read-only).
//! - [`analysis`]: what the envelopes prove; shared by building and verifying.
//! - [`changes`]: baselines and change records (drift tables), when the CMDB has them.
//! - [`segmentation`]: the segmentation probe section (per agent and target), when the period
//!   holds probe rounds.
//! - [`html`]: the human-readable report.
//! - [`build`] and [`verify`]: writing and checking a pack.

pub mod analysis;
pub mod build;
pub mod changes;
pub mod collect;
pub mod html;
pub mod key;
pub mod manifest;
pub mod segmentation;
pub mod verify;

pub use build::{BuildRequest, BuildSummary, build};
pub use verify::{VerifyReport, verify};

/// File names inside a pack.
pub mod files {
    pub const MANIFEST: &str = "manifest.json";
    pub const SIGNATURE: &str = "manifest.sig";
    pub const COLLECTOR_KEY: &str = "collector.pub";
    pub const KEYS: &str = "keys.json";
    pub const INDEX: &str = "envelopes/index.json";
    pub const ENVELOPES_DIR: &str = "envelopes";
    pub const REPORT_JSON: &str = "report.json";
    pub const REPORT_HTML: &str = "report.html";
    pub const CHANGES: &str = "changes.json";
}

/// The generator named in every manifest; the HTML report is re-rendered and compared only by
/// the same generator (another version may lay it out differently).
pub const GENERATOR: &str = concat!("outpost-collector ", env!("CARGO_PKG_VERSION"));

/// CIP-010 R2.1: configuration checked at least every 35 calendar days.
pub const MONITORING_LIMIT_MS: i64 = 35 * 24 * 60 * 60 * 1000;

/// Why a pack could not be built or read at all (tampering is a finding, not an error).
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
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
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{what}")]
    Invalid { what: String },
}

impl EvidenceError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> EvidenceError + '_ {
        move |source| EvidenceError::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>) -> EvidenceError {
        EvidenceError::Invalid { what: what.into() }
    }
}
