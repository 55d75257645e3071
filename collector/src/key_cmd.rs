//! `outpost-collector key list | revoke`: what the operator sees of the key lifecycle
//! (the CMDB side is [`crate::cmdb::key_lifecycle`]).

use serde::Serialize;

use crate::cmdb::key_lifecycle::{KeyRow, Revoked};
use crate::render::{Format, json};
use crate::table::{Table, opt};
use crate::time::rfc3339;

/// `key list` as a table or the `outpost.keys.v1` document (docs/json.md).
pub fn render_list(keys: &[KeyRow], format: Format, now_ms: i64) -> String {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Body<'a> {
            keys: &'a [KeyRow],
        }
        return json("outpost.keys.v1", now_ms, Body { keys });
    }
    let mut t = Table::new(&[
        "KEY", "AGENT", "STATUS", "ZONES", "ENROLLED", "SINCE", "DETAIL",
    ]);
    for k in keys {
        let (since, detail) = match k.status.as_str() {
            "retired" => (
                k.retired_at,
                format!(
                    "superseded by {} at seq {}",
                    opt(k.superseded_by.as_deref()),
                    opt(k.handover_seq)
                ),
            ),
            "revoked" => (k.revoked_at, opt(k.revoked_reason.as_deref())),
            _ => (None, String::new()),
        };
        t.row(vec![
            k.key_id.clone(),
            k.agent_id.clone(),
            k.status.clone(),
            k.zones.join(" "),
            rfc3339(k.enrolled_at.ms()),
            since.map(|t| rfc3339(t.ms())).unwrap_or_default(),
            detail,
        ]);
    }
    let n = t.len();
    format!("{}{n} key{}\n", t.render(), if n == 1 { "" } else { "s" })
}

/// The line `key revoke` prints.
pub fn render_revoked(r: &Revoked, reason: &str) -> String {
    if r.changed {
        format!(
            "revoked key {} of agent {} ({reason}); envelopes sealed with it are now quarantined \
             as key_revoked and raise a revoked_key_used event\n",
            r.key_id, r.agent_id
        )
    } else {
        format!(
            "key {} of agent {} was already revoked; nothing changed\n",
            r.key_id, r.agent_id
        )
    }
}
