//! `report.html`: the pack for people. Rendered only from what the pack holds (analysis of the
//! envelopes, keys, change records, the manifest's header), deterministically, so
//! `evidence verify` can render it again and compare byte for byte.

use std::fmt::Write as _;

use super::analysis::{Analysis, Ci};
use super::changes::Changes;
use super::collect::KeyEntry;
use crate::time::rfc3339;

/// What the report's header shows (all from the manifest).
pub struct Header<'a> {
    pub generator: &'a str,
    pub created_at: &'a str,
    pub collector_key_id: &'a str,
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

fn opt(v: &Option<String>) -> String {
    v.as_deref()
        .map_or_else(|| "<span class=\"nc\">not collected</span>".to_owned(), esc)
}

fn days(ms: i64) -> String {
    if ms < 86_400_000 {
        format!("{:.1} h", ms as f64 / 3_600_000.0)
    } else {
        format!("{:.1} d", ms as f64 / 86_400_000.0)
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 6px;\
text-align:left;vertical-align:top;font-size:90%}th{background:#eee}.ok{color:#060}\
.bad{color:#a00;font-weight:bold}.nc{color:#888;font-style:italic}code{font-size:90%}";

/// Renders the report.
pub fn render(h: &Header<'_>, a: &Analysis, keys: &[KeyEntry], changes: &Changes) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Outpost evidence: zone {zone}</title><style>{STYLE}</style></head><body>\n\
         <h1>Evidence pack: zone <code>{zone}</code></h1>\n\
         <p>Period <b>{from}</b> to <b>{to}</b> (agent clock; envelopes sealed in [from, to)). \
         Made {created} by {generator}; manifest signed by collector evidence key \
         <code>{key}</code>.</p>\n\
         <p>Check this pack offline with <code>outpost-collector evidence verify DIR \
         --collector-key evidence.pub</code>: it checks every file's SHA-256, the manifest \
         signature, every envelope's signature against <code>keys.json</code>, the hash chains, \
         and that this report says exactly what the envelopes say.</p>\n",
        zone = esc(&a.zone),
        from = esc(&a.from),
        to = esc(&a.to),
        created = esc(h.created_at),
        generator = esc(h.generator),
        key = esc(h.collector_key_id),
    );
    // Summary counts (data attributes let a script read them without parsing tables).
    let _ = write!(
        o,
        "<h2>Summary</h2>\n<table id=\"counts\" data-envelopes=\"{}\" data-cis=\"{}\" \
         data-discontinuities=\"{}\"><tr><th>envelopes</th><td>{}</td></tr>",
        a.envelopes,
        a.inventory.len(),
        a.discontinuities.len(),
        a.envelopes
    );
    for (kind, n) in &a.by_kind {
        let _ = write!(o, "<tr><th>{}</th><td>{n}</td></tr>", esc(kind));
    }
    let _ = writeln!(
        o,
        "<tr><th>configuration items</th><td>{}</td></tr>\
         <tr><th>CIs checked at least every 35 days</th><td class=\"{}\">{} of {}</td></tr>\
         <tr><th>gaps, chain breaks, restarts</th><td>{}</td></tr>\
         <tr><th>agent data-lost notices</th><td>{}</td></tr></table>",
        a.inventory.len(),
        if a.monitoring.outside_limit.is_empty() {
            "ok"
        } else {
            "bad"
        },
        a.monitoring.cis_within_limit,
        a.monitoring.cis,
        a.discontinuities.len(),
        a.data_lost.len()
    );
    inventory(&mut o, a);
    monitoring(&mut o, a);
    cip010(&mut o, &a.inventory);
    chain(&mut o, a);
    super::segmentation::render(&mut o, &a.segmentation);
    changes_section(&mut o, changes);
    keys_section(&mut o, keys);
    o.push_str("</body></html>\n");
    o
}

fn inventory(o: &mut String, a: &Analysis) {
    o.push_str(
        "<h2>Inventory</h2>\n<table id=\"inventory\"><tr><th>CI</th><th>class</th><th>name</th>\
         <th>agent</th><th>identity</th><th>last status</th></tr>\n",
    );
    for c in &a.inventory {
        let id: Vec<String> = c
            .identity
            .iter()
            .map(|(k, v)| format!("{}: {}", esc(k), esc(v)))
            .collect();
        let _ = writeln!(
            o,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.ci_key),
            c.class,
            esc(&c.name),
            esc(&c.agent_id),
            id.join("<br>"),
            esc(&c.last_status)
        );
    }
    o.push_str("</table>\n");
}

fn monitoring(o: &mut String, a: &Analysis) {
    o.push_str(
        "<h2>Monitoring intervals (CIP-010 R2.1: at least every 35 days)</h2>\n\
         <p>A check is a signed summary in which the CI answered. Leading: period start to \
         first check; trailing: last check to the period's end (or when the pack was made).</p>\n\
         <table id=\"monitoring\"><tr><th>CI</th><th>checks</th><th>first check</th>\
         <th>last check</th><th>longest gap</th><th>leading</th><th>trailing</th>\
         <th>within 35 days</th></tr>\n",
    );
    for c in &a.inventory {
        let _ = writeln!(
            o,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td class=\"{}\">{}</td></tr>",
            esc(&c.ci_key),
            c.checks,
            opt(&c.first_check),
            opt(&c.last_check),
            c.max_gap_ms.map_or_else(|| "-".to_owned(), days),
            days(c.leading_ms),
            days(c.trailing_ms),
            if c.within_limit { "ok" } else { "bad" },
            if c.within_limit { "yes" } else { "NO" }
        );
    }
    o.push_str("</table>\n");
}

fn cip010(o: &mut String, cis: &[Ci]) {
    o.push_str(
        "<h2>Baseline items (CIP-010 R1.1)</h2>\n<p>As far as Modbus identification (FC 43) \
         and the gateway's host facts carry them. <span class=\"nc\">not collected</span> means \
         Outpost has no data for the item, not that there is none.</p>\n\
         <table id=\"cip010\"><tr><th>CI</th><th>R1.1.1 OS / firmware</th>\
         <th>R1.1.2 software</th><th>R1.1.3 custom software</th>\
         <th>R1.1.4 network-accessible ports</th><th>R1.1.5 security patches</th></tr>\n",
    );
    for c in cis {
        let i = &c.cip010;
        let _ = writeln!(
            o,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.ci_key),
            opt(&i.os_firmware),
            opt(&i.software),
            opt(&i.custom_software),
            opt(&i.ports),
            opt(&i.patches)
        );
    }
    o.push_str("</table>\n");
}

fn chain(o: &mut String, a: &Analysis) {
    o.push_str(
        "<h2>Agents, gaps and chain breaks</h2>\n<table id=\"agents\"><tr><th>agent</th>\
         <th>envelopes</th><th>summaries</th><th>sequence</th><th>first</th><th>last</th>\
         <th>keys used</th></tr>\n",
    );
    for ag in &a.agents {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}..={}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&ag.agent_id),
            ag.envelopes,
            ag.summaries,
            ag.first_seq,
            ag.last_seq,
            esc(&ag.first_time),
            esc(&ag.last_time),
            esc(&ag.keys_used.join(" "))
        );
    }
    o.push_str("</table>\n");
    if a.discontinuities.is_empty() && a.data_lost.is_empty() {
        o.push_str("<p class=\"ok\">No gaps, chain breaks or restarts in the period.</p>\n");
    } else {
        o.push_str(
            "<table id=\"discontinuities\"><tr><th>agent</th><th>at seq</th><th>kind</th>\
             <th>missing</th></tr>\n",
        );
        for d in &a.discontinuities {
            let missing = match (d.from_seq, d.to_seq) {
                (Some(f), Some(t)) => format!("{f}..={t}"),
                _ => String::new(),
            };
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{missing}</td></tr>",
                esc(&d.agent_id),
                d.seq,
                d.kind
            );
        }
        for l in &a.data_lost {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td>{}</td><td>data_lost ({})</td><td>{}..={} ({} dropped)</td></tr>",
                esc(&l.agent_id),
                l.seq,
                esc(&l.reason),
                l.from_seq,
                l.to_seq,
                l.dropped
            );
        }
        o.push_str("</table>\n");
    }
    for k in &a.key_handovers {
        let _ = writeln!(
            o,
            "<p>Key handover: agent {} at seq {}: <code>{}</code> → <code>{}</code></p>",
            esc(&k.agent_id),
            k.seq,
            esc(&k.old_key_id),
            esc(&k.new_key_id)
        );
    }
}

#[cfg(test)]
pub(crate) fn render_changes_for_test(o: &mut String, c: &Changes) {
    changes_section(o, c);
}

fn changes_section(o: &mut String, c: &Changes) {
    o.push_str("<h2>Changes and their authorisation (CIP-010 R1.2, R2.1)</h2>\n");
    if !c.available {
        let _ = writeln!(
            o,
            "<p id=\"changes-unavailable\" class=\"nc\">Not available: {}</p>",
            esc(c.note.as_deref().unwrap_or("no change records"))
        );
        return;
    }
    o.push_str(
        "<p>Collector records (signed by the manifest, not by agents); every change names the \
         signed envelope it was observed in.</p>\n<h3>Approved baselines</h3>\n\
         <table id=\"baselines\"><tr><th>CI</th><th>approved</th><th>by</th><th>reason</th>\
         <th>ticket</th></tr>\n",
    );
    for b in &c.baselines {
        let _ = writeln!(
            o,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&b.ci_key),
            rfc3339(b.approved_at_ms),
            esc(&b.approved_by),
            esc(&b.reason),
            b.ticket.as_deref().map_or_else(String::new, esc)
        );
    }
    o.push_str(
        "</table>\n<h3>Detected changes</h3>\n<table id=\"changes\"><tr><th>CI</th><th>when \
         (agent)</th><th>verdict</th><th>what</th><th>authorisation</th><th>envelope</th></tr>\n",
    );
    for ch in &c.changes {
        let auth = match &ch.ticket {
            Some(t) => format!(
                "{} ({}{}){}",
                esc(t),
                esc(ch.record_state.as_deref().unwrap_or("?")),
                ch.confirmed_by
                    .as_deref()
                    .map_or_else(String::new, |b| format!(", confirmed by {}", esc(b))),
                ch.record_description
                    .as_deref()
                    .map_or_else(String::new, |d| format!(": {}", esc(d)))
            ),
            None if ch.verdict == "unauthorised" => {
                "<span class=\"bad\">none: investigate</span>".to_owned()
            }
            None => String::new(),
        };
        let _ = writeln!(
            o,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"{}\">{}</td><td><code>{}</code></td>\
             <td>{auth}</td><td>{} seq {}</td></tr>",
            esc(&ch.ci_key),
            rfc3339(ch.agent_time_ms),
            if ch.verdict == "unauthorised" {
                "bad"
            } else {
                "ok"
            },
            esc(&ch.verdict),
            esc(&ch.changes.to_string()),
            esc(&ch.agent_id),
            ch.envelope_seq
        );
    }
    o.push_str("</table>\n");
}

fn keys_section(o: &mut String, keys: &[KeyEntry]) {
    o.push_str(
        "<h2>Agent keys</h2>\n<table id=\"keys\"><tr><th>key id</th><th>agent</th>\
         <th>zones</th><th>status</th><th>enrolled</th><th>retired / revoked</th></tr>\n",
    );
    for k in keys {
        let end = match (&k.retired_at_ms, &k.revoked_at_ms) {
            (_, Some(r)) => format!(
                "revoked {}{}",
                rfc3339(*r),
                k.revoked_reason
                    .as_deref()
                    .map_or_else(String::new, |why| format!(": {}", esc(why)))
            ),
            (Some(r), None) => format!(
                "retired {} (seq {}), successor <code>{}</code>",
                rfc3339(*r),
                k.handover_seq
                    .map_or_else(|| "?".to_owned(), |s| s.to_string()),
                esc(k.superseded_by.as_deref().unwrap_or("?"))
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{end}</td></tr>",
            esc(&k.key_id),
            esc(&k.agent_id),
            esc(&k.zones.join(", ")),
            esc(&k.status),
            rfc3339(k.enrolled_at_ms)
        );
    }
    o.push_str("</table>\n");
}
