//! POSTing an IRE payload to a ServiceNow instance (`export --format servicenow-ire --post URL`).
//!
//! The payload is split into batches of at most `batch_items` CIs; a relation's two ends must
//! travel in one request (IRE relations name items by index), so a batch also carries the
//! gateways its devices relate to (IRE identifies a re-sent gateway by its identification rule
//! and reconciles it as the same CI). Each batch goes to
//! `<instance>/api/now/identifyreconcile?sysparm_data_source=Outpost` with Basic or Bearer
//! authentication, under a timeout. Transient failures (no connection, timeouts, HTTP 429, 502,
//! 503, 504) are retried a bounded number of times with doubling pauses; anything else stops
//! with the status and an excerpt of the body. IRE answers 200 with a `result.items` array;
//! items that carry `errors` are counted and reported per batch.
//!
//! `http://` is accepted only for loopback addresses (a local test instance or proxy): the
//! credentials must not cross a network in clear text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

/// The IRE endpoint, relative to the instance URL.
pub const IRE_PATH: &str = "/api/now/identifyreconcile";
/// Most CIs per batch (`--sn-batch-items`).
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Default CIs per batch.
pub const DEFAULT_BATCH_ITEMS: usize = 100;
/// Timeout of one request (connect, send, answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest body excerpt quoted in an error.
const EXCERPT: usize = 300;

/// How the collector authenticates to the instance.
#[derive(Clone)]
pub enum Auth {
    /// HTTP Basic with an integration user.
    Basic { user: String, password: String },
    /// An OAuth bearer token.
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Basic { user, .. } => write!(f, "Basic({user}, <password>)"),
            Auth::Bearer(_) => f.write_str("Bearer(<token>)"),
        }
    }
}

impl Auth {
    fn header(&self) -> String {
        match self {
            Auth::Basic { user, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
            Auth::Bearer(token) => format!("Bearer {token}"),
        }
    }
}

/// Reads a secret: the file's first line, trimmed; an empty secret is refused.
pub fn read_secret(path: &Path, what: &str) -> Result<String, PostError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PostError::Setup(format!("{what} {}: cannot read: {e}", path.display())))?;
    let line = text.lines().next().unwrap_or("").trim().to_owned();
    if line.is_empty() {
        return Err(PostError::Setup(format!(
            "{what} {}: the first line is empty; put the secret on it",
            path.display()
        )));
    }
    Ok(line)
}

/// Where and how to POST.
#[derive(Debug, Clone)]
pub struct PostConfig {
    /// The instance URL as given (`https://acme.service-now.com`), or a full IRE URL.
    pub url: String,
    pub auth: Auth,
    /// A PEM file with the CA certificate(s) the instance's certificate chains to; trusted
    /// instead of the built-in Mozilla roots (for instances behind a private CA).
    pub ca_file: Option<PathBuf>,
    pub batch_items: usize,
    /// Further attempts after a transient failure.
    pub retries: u32,
    /// The pause before the first retry; it doubles each time.
    pub retry_pause: Duration,
}

/// Why a POST failed.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("{0}")]
    Setup(String),
    /// A batch was refused (or failed past its retries).
    #[error(
        "batch {batch}/{batches} ({items} items): {why}{}",
        if done > &0 { format!(" ({done} earlier batches were accepted)") } else { String::new() }
    )]
    Batch {
        batch: usize,
        batches: usize,
        items: usize,
        done: usize,
        why: String,
    },
}

/// What one batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchReport {
    /// 1-based.
    pub batch: usize,
    pub items: usize,
    pub relations: usize,
    pub status: u16,
    pub attempts: u32,
    /// IRE's `operation` per item (`INSERT`, `UPDATE`, `NO_CHANGE`, …) counted.
    pub operations: BTreeMap<String, usize>,
    /// Items IRE reported errors for, with the first error message of each.
    pub item_errors: Vec<String>,
}

/// The full IRE URL for `url`.
pub fn endpoint(url: &str) -> Result<String, PostError> {
    let bad = |why: &str| {
        PostError::Setup(format!(
            "--post {url:?}: {why} (e.g. https://acme.service-now.com)"
        ))
    };
    let uri: ureq::http::Uri = url.trim().parse().map_err(|_| bad("not a URL"))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("no host"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") => {
            let h = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Err(bad(
                    "http:// would send the credentials in clear text; use https:// \
                     (http:// is accepted for loopback addresses only)",
                ));
            }
        }
        _ => return Err(bad("use an https:// URL")),
    }
    if uri.query().is_some() {
        return Err(bad("leave out the query; Outpost adds sysparm_data_source"));
    }
    let base = url.trim().trim_end_matches('/');
    let base = base.strip_suffix(IRE_PATH).unwrap_or(base);
    Ok(format!(
        "{base}{IRE_PATH}?sysparm_data_source={}",
        super::SOURCE_NAME
    ))
}

/// Splits an IRE payload into batches of at most `max` items, each with the relations among
/// its items (re-indexed) and the items those relations need (see the module docs).
pub fn batches(payload: &Value, max: usize) -> Vec<Value> {
    let empty = Vec::new();
    let items = payload["items"].as_array().unwrap_or(&empty);
    let relations = payload["relations"].as_array().unwrap_or(&empty);
    let ends = |r: &Value| -> Option<(usize, usize)> {
        let p = usize::try_from(r["parent"].as_u64()?).ok()?;
        let c = usize::try_from(r["child"].as_u64()?).ok()?;
        (p < items.len() && c < items.len()).then_some((p, c))
    };
    // Parents (gateways) travel with their children, so only the other items are chunked.
    let parents: std::collections::BTreeSet<usize> =
        relations.iter().filter_map(ends).map(|(p, _)| p).collect();
    let own: Vec<usize> = (0..items.len()).filter(|i| !parents.contains(i)).collect();
    let mut out = Vec::new();
    for chunk in own.chunks(max.max(1)) {
        // Each item preceded by the parents its relations need.
        let mut members: Vec<usize> = Vec::new();
        for &i in chunk {
            for (p, c) in relations.iter().filter_map(ends) {
                if c == i && !members.contains(&p) {
                    members.push(p);
                }
            }
            if !members.contains(&i) {
                members.push(i);
            }
        }
        let index: BTreeMap<usize, usize> = members
            .iter()
            .enumerate()
            .map(|(new, &old)| (old, new))
            .collect();
        let batch_items: Vec<Value> = members.iter().map(|&i| items[i].clone()).collect();
        // A relation goes with the batch that carries its child (so it is sent once).
        let batch_relations: Vec<Value> = relations
            .iter()
            .filter_map(|r| {
                let (p, c) = ends(r)?;
                if !chunk.contains(&c) {
                    return None;
                }
                let mut r = r.clone();
                r["parent"] = json!(index.get(&p)?);
                r["child"] = json!(index.get(&c)?);
                Some(r)
            })
            .collect();
        out.push(json!({"items": batch_items, "relations": batch_relations}));
    }
    out
}

/// A single request's outcome.
enum Attempt {
    Done(u16, String),
    Transient(String),
    Fatal(String),
}

fn agent(cfg: &PostConfig) -> Result<ureq::Agent, PostError> {
    let mut builder = ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .http_status_as_error(false);
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| PostError::Setup(format!("--sn-ca {}: cannot read: {e}", ca.display())))?;
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(PostError::Setup(format!(
                "--sn-ca {}: no PEM certificate in the file (expected -----BEGIN CERTIFICATE-----)",
                ca.display()
            )));
        }
        builder = builder.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        );
    }
    Ok(builder.build().into())
}

fn excerpt(body: &str) -> String {
    let flat: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(EXCERPT)
        .collect();
    if body.chars().count() > EXCERPT {
        format!("{flat}…")
    } else {
        flat
    }
}

fn attempt(http: &ureq::Agent, url: &str, auth: &str, body: &str) -> Attempt {
    let sent = http
        .post(url)
        .header("Authorization", auth)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .send(body);
    let mut response = match sent {
        Ok(r) => r,
        Err(e @ (ureq::Error::Io(_) | ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed)) => {
            return Attempt::Transient(e.to_string());
        }
        Err(ureq::Error::HostNotFound) => {
            return Attempt::Fatal(format!("host not found ({url})"));
        }
        Err(e) => return Attempt::Fatal(e.to_string()),
    };
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(4 * 1024 * 1024)
        .read_to_string()
        .unwrap_or_else(|e| format!("(body unreadable: {e})"));
    match status {
        200..=299 => Attempt::Done(status, text),
        429 | 502 | 503 | 504 => Attempt::Transient(format!("HTTP {status}: {}", excerpt(&text))),
        401 | 403 => Attempt::Fatal(format!(
            "HTTP {status} (check --sn-user/--sn-password-file or --sn-token-file, and that \
             the user has the import_transformer or itil role): {}",
            excerpt(&text)
        )),
        _ => Attempt::Fatal(format!("HTTP {status}: {}", excerpt(&text))),
    }
}

/// Reads IRE's answer: operations per item and item errors.
fn summarise(text: &str) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut ops = BTreeMap::new();
    let mut errors = Vec::new();
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let items = v["result"]["items"].as_array().or(v["items"].as_array());
    for (i, it) in items.into_iter().flatten().enumerate() {
        let op = it["operation"].as_str().unwrap_or("UNKNOWN").to_owned();
        *ops.entry(op).or_insert(0) += 1;
        if let Some(first) = it["errors"].as_array().and_then(|e| e.first()) {
            let msg = first["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| first.to_string());
            errors.push(format!(
                "item {i} ({}): {}",
                it["className"].as_str().unwrap_or("?"),
                excerpt(&msg)
            ));
        }
    }
    (ops, errors)
}

/// POSTs `payload` in batches; `on_batch` is told about each accepted batch as it completes
/// and `pause` is how the retry pauses are taken (the CLI sleeps).
pub fn post(
    payload: &Value,
    cfg: &PostConfig,
    mut on_batch: impl FnMut(&BatchReport),
    mut pause: impl FnMut(Duration),
) -> Result<Vec<BatchReport>, PostError> {
    if cfg.batch_items == 0 || cfg.batch_items > MAX_BATCH_ITEMS {
        return Err(PostError::Setup(format!(
            "--sn-batch-items {}: use 1..={MAX_BATCH_ITEMS}",
            cfg.batch_items
        )));
    }
    let url = endpoint(&cfg.url)?;
    let http = agent(cfg)?;
    let auth = cfg.auth.header();
    let all = batches(payload, cfg.batch_items);
    let total = all.len();
    let mut reports = Vec::with_capacity(total);
    for (n, batch) in all.iter().enumerate() {
        let items = batch["items"].as_array().map_or(0, Vec::len);
        let relations = batch["relations"].as_array().map_or(0, Vec::len);
        let body = batch.to_string();
        let mut attempts = 0u32;
        let mut wait = cfg.retry_pause;
        let fail = |why: String| PostError::Batch {
            batch: n + 1,
            batches: total,
            items,
            done: n,
            why,
        };
        let (status, text) = loop {
            attempts += 1;
            match attempt(&http, &url, &auth, &body) {
                Attempt::Done(status, text) => break (status, text),
                Attempt::Fatal(why) => return Err(fail(format!("POST {url}: {why}"))),
                Attempt::Transient(why) if attempts > cfg.retries => {
                    return Err(fail(format!(
                        "POST {url}: {why}; gave up after {attempts} attempts"
                    )));
                }
                Attempt::Transient(why) => {
                    tracing::warn!(
                        batch = n + 1,
                        attempts,
                        "POST {url}: {why}; retrying in {}",
                        humantime::format_duration(wait)
                    );
                    pause(wait);
                    wait = wait.saturating_mul(2);
                }
            }
        };
        let (operations, item_errors) = summarise(&text);
        let report = BatchReport {
            batch: n + 1,
            items,
            relations,
            status,
            attempts,
            operations,
            item_errors,
        };
        on_batch(&report);
        reports.push(report);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_built_and_clear_text_is_refused() {
        assert_eq!(
            endpoint("https://acme.service-now.com/").unwrap(),
            "https://acme.service-now.com/api/now/identifyreconcile?sysparm_data_source=Outpost"
        );
        assert_eq!(
            endpoint("https://acme.service-now.com/api/now/identifyreconcile").unwrap(),
            "https://acme.service-now.com/api/now/identifyreconcile?sysparm_data_source=Outpost"
        );
        assert!(endpoint("http://127.0.0.1:8080").is_ok());
        let err = endpoint("http://acme.service-now.com")
            .unwrap_err()
            .to_string();
        assert!(err.contains("clear text"), "{err}");
        assert!(endpoint("ftp://x").is_err());
    }

    fn item(name: &str) -> Value {
        json!({"className": "cmdb_ci_ot_plc", "values": {"name": name}})
    }

    #[test]
    fn batches_keep_each_relation_with_both_ends() {
        // Two gateways (0, 3), devices 1, 2 under gateway 0 and 4, 5, 6 under gateway 3.
        let items: Vec<Value> = ["g1", "d1", "d2", "g2", "d3", "d4", "d5"]
            .iter()
            .map(|n| item(n))
            .collect();
        let rel = |p: usize, c: usize| json!({"parent": p, "child": c, "type": "A::B"});
        let payload = json!({
            "items": items,
            "relations": [rel(0, 1), rel(0, 2), rel(3, 4), rel(3, 5), rel(3, 6)],
        });
        let out = batches(&payload, 2);
        let mut devices_seen = Vec::new();
        let mut relations_seen = 0;
        for b in &out {
            let items = b["items"].as_array().unwrap();
            for r in b["relations"].as_array().unwrap() {
                let p = &items[r["parent"].as_u64().unwrap() as usize]["values"]["name"];
                let c = &items[r["child"].as_u64().unwrap() as usize]["values"]["name"];
                assert!(p.as_str().unwrap().starts_with('g'), "{b}");
                assert!(c.as_str().unwrap().starts_with('d'), "{b}");
                relations_seen += 1;
            }
            for it in items {
                let name = it["values"]["name"].as_str().unwrap();
                if name.starts_with('d') {
                    devices_seen.push(name.to_owned());
                }
            }
            let devices = items
                .iter()
                .filter(|i| i["values"]["name"].as_str().unwrap().starts_with('d'))
                .count();
            assert!(devices <= 2, "{b}");
        }
        devices_seen.sort();
        assert_eq!(devices_seen, ["d1", "d2", "d3", "d4", "d5"]);
        assert_eq!(relations_seen, 5);
    }

    #[test]
    fn lone_gateways_are_sent_too() {
        let payload = json!({"items": [item("g1"), item("d1")], "relations": []});
        let out = batches(&payload, 1);
        assert_eq!(out.len(), 2);
        assert!(batches(&json!({"items": [], "relations": []}), 5).is_empty());
        let payload = json!({
            "items": [item("g1"), item("g2"), item("d1")],
            "relations": [{"parent": 1, "child": 2, "type": "A::B"}],
        });
        let out = batches(&payload, 10);
        let names: Vec<String> = out
            .iter()
            .flat_map(|b| b["items"].as_array().unwrap().clone())
            .map(|i| i["values"]["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["g1", "g2", "d1"]);
    }

    #[test]
    fn ire_answers_are_summarised() {
        let (ops, errors) = summarise(
            r#"{"result":{"items":[{"className":"cmdb_ci_ot_plc","operation":"INSERT"},
                {"className":"cmdb_ci_ot_plc","operation":"NO_CHANGE","errors":[{"message":"MISSING_MATCHING_ATTRIBUTES"}]}]}}"#,
        );
        assert_eq!(ops["INSERT"], 1);
        assert_eq!(ops["NO_CHANGE"], 1);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("MISSING_MATCHING_ATTRIBUTES"));
    }
}
