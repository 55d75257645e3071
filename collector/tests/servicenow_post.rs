//! `export --format servicenow-ire --post URL` against a real local HTTP(S) server this test
//! starts (std `TcpListener`, rustls for HTTPS with a CA made by `openssl`): the server checks
//! the method, path, data source, authentication and the IRE payload shape of every batch, and
//! answers as scripted (IRE results, 401, 503 then 200).

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Fixture, gateway, plc};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_outpost-collector");
/// How long the server waits for the next connection before it stops.
const SERVER_WAIT: Duration = Duration::from_secs(20);

/// Runs the binary, bounded (killed by its PID after 60 s).
fn run(args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run outpost-collector");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("wait for outpost-collector"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{args:?} did not finish within 60 s (killed PID {pid})");
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    authorization: Option<String>,
    body: Value,
}

/// A CMDB with one gateway and `n` PLCs.
fn cmdb_with(n: u32) -> Fixture {
    let mut f = Fixture::new();
    let mut ingest = f.ingest();
    let mut summary = f.summary((1..=n).map(|i| plc(i, vec![1, 2])).collect());
    summary.gateway = Some(gateway());
    let wire = f.seal(&summary);
    ingest
        .envelope(&wire, "p", common::T0 + 1)
        .expect("summary applies");
    f
}

/// Reads one HTTP/1.1 request (bounded head and body).
fn read_request(stream: impl std::io::Read) -> Option<Seen> {
    let mut r = BufReader::new(stream.take(8 * 1024 * 1024));
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut length = 0usize;
    let mut authorization = None;
    for _ in 0..100 {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "authorization" => authorization = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).ok()?;
    Some(Seen {
        method,
        target,
        authorization,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

fn respond(mut stream: impl std::io::Write, status: u16, body: &str) {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

/// What IRE answers for a batch: one INSERT per item.
fn ire_result(batch: &Value) -> String {
    let items: Vec<Value> = batch["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| json!({"className": i["className"], "operation": "INSERT", "sysId": "x"}))
                .collect()
        })
        .unwrap_or_default();
    json!({"result": {"items": items, "relations": []}}).to_string()
}

/// Serves connections one at a time until `expected` requests were answered or none arrives
/// for [`SERVER_WAIT`]; `answer` picks the status and body for the n-th request. Returns what
/// it saw.
fn serve(
    expected: usize,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    answer: impl Fn(usize, &Seen) -> (u16, String) + Send + 'static,
) -> std::thread::JoinHandle<Vec<Seen>> {
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut last = Instant::now();
        while last.elapsed() < SERVER_WAIT && seen.len() < expected {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(_) => break,
            };
            last = Instant::now();
            stream.set_nonblocking(false).expect("blocking");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let handle = |s: &mut dyn ReadWrite| {
                let req = read_request(&mut *s)?;
                let (status, body) = answer(seen.len(), &req);
                respond(&mut *s, status, &body);
                Some(req)
            };
            let req = match &tls {
                None => {
                    let mut s = stream;
                    handle(&mut s)
                }
                Some(cfg) => {
                    let conn = rustls::ServerConnection::new(Arc::clone(cfg)).expect("tls");
                    let mut s = rustls::StreamOwned::new(conn, stream);
                    let req = handle(&mut s);
                    s.conn.send_close_notify();
                    let _ = s.flush();
                    req
                }
            };
            if let Some(req) = req {
                seen.push(req);
            }
        }
        seen
    })
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

fn secret(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{text}\n")).expect("write secret");
    p.to_str().expect("utf-8 path").to_owned()
}

fn check_batch(req: &Seen) {
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.target,
        "/api/now/identifyreconcile?sysparm_data_source=Outpost"
    );
    outpost_collector::export::servicenow::check_shape(&req.body)
        .unwrap_or_else(|e| panic!("batch shape: {e}: {}", req.body));
}

const BASIC: &str = "Basic aW50ZWdyYXRpb246czNjcmV0"; // integration:s3cret

#[test]
fn batches_are_posted_with_basic_auth_and_reported() {
    let f = cmdb_with(5);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = serve(3, listener, None, |_, req| {
        if req.authorization.as_deref() != Some(BASIC) {
            return (
                401,
                r#"{"error":{"message":"User Not Authenticated"}}"#.into(),
            );
        }
        (200, ire_result(&req.body))
    });
    let pw = secret(f.dir.path(), "pw", "s3cret");
    let out = run(&[
        "export",
        "--db",
        f.db.to_str().unwrap(),
        "--format",
        "servicenow-ire",
        "--post",
        &url,
        "--sn-user",
        "integration",
        "--sn-password-file",
        &pw,
        "--sn-batch-items",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = server.join().expect("server thread");
    // Five devices in batches of two: three requests, the gateway with each.
    assert_eq!(seen.len(), 3, "{seen:#?}");
    let mut devices = 0;
    let mut relations = 0;
    for req in &seen {
        check_batch(req);
        assert_eq!(req.authorization.as_deref(), Some(BASIC));
        let items = req.body["items"].as_array().unwrap();
        assert_eq!(
            items[0]["className"], "cmdb_ci_linux_server",
            "{}",
            req.body
        );
        devices += items.len() - 1;
        relations += req.body["relations"].as_array().unwrap().len();
    }
    assert_eq!(devices, 5);
    assert_eq!(relations, 5);
    assert!(
        stdout.contains("batch 1: 3 items, 2 relations: HTTP 200 after 1 attempt; INSERT 3"),
        "{stdout}"
    );
    assert!(stdout.contains("batch 3: 2 items, 1 relations"), "{stdout}");
    assert!(stdout.contains("posted 6 CIs"), "{stdout}");
}

#[test]
fn wrong_credentials_fail_at_once_with_status_and_body() {
    let f = cmdb_with(1);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    let server = serve(1, listener, None, |_, _| {
        (
            401,
            r#"{"error":{"message":"User Not Authenticated"}}"#.into(),
        )
    });
    let token = secret(f.dir.path(), "token", "not-the-token");
    let out = run(&[
        "export",
        "--db",
        f.db.to_str().unwrap(),
        "--format",
        "servicenow-ire",
        "--post",
        &url,
        "--sn-token-file",
        &token,
        "--sn-retry-pause",
        "10ms",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("batch 1/1"), "{stderr}");
    assert!(stderr.contains("HTTP 401"), "{stderr}");
    assert!(stderr.contains("User Not Authenticated"), "{stderr}");
    let seen = server.join().expect("server thread");
    // Not retried: a refusal is not transient.
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Bearer not-the-token")
    );
}

#[test]
fn transient_failures_are_retried_a_bounded_number_of_times() {
    let f = cmdb_with(1);
    let pw = secret(f.dir.path(), "pw", "s3cret");
    let post = |url: &str, retries: &str| {
        run(&[
            "export",
            "--db",
            f.db.to_str().unwrap(),
            "--format",
            "servicenow-ire",
            "--post",
            url,
            "--sn-user",
            "integration",
            "--sn-password-file",
            &pw,
            "--sn-retries",
            retries,
            "--sn-retry-pause",
            "10ms",
        ])
    };
    // One 503, then success.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = serve(2, listener, None, |n, req| {
        if n == 0 {
            (503, "<html>maintenance</html>".into())
        } else {
            (200, ire_result(&req.body))
        }
    });
    let out = post(&url, "3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("HTTP 200 after 2 attempts"), "{stdout}");
    assert_eq!(server.join().expect("server").len(), 2);

    // Always 503: 1 + 2 retries, then a clear failure.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = serve(3, listener, None, |_, _| {
        (503, "<html>maintenance</html>".into())
    });
    let out = post(&url, "2");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gave up after 3 attempts"), "{stderr}");
    assert!(
        stderr.contains("HTTP 503: <html>maintenance</html>"),
        "{stderr}"
    );
    assert_eq!(server.join().expect("server").len(), 3);
}

#[test]
fn clear_text_to_a_remote_host_and_missing_credentials_are_refused() {
    let f = cmdb_with(1);
    let pw = secret(f.dir.path(), "pw", "s3cret");
    let db = f.db.to_str().unwrap();
    let out = run(&[
        "export",
        "--db",
        db,
        "--format",
        "servicenow-ire",
        "--post",
        "http://acme.service-now.com",
        "--sn-user",
        "u",
        "--sn-password-file",
        &pw,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("clear text"));
    let out = run(&[
        "export",
        "--db",
        db,
        "--format",
        "servicenow-ire",
        "--post",
        "https://acme.service-now.com",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--post needs credentials"));
    let out = run(&[
        "export",
        "--db",
        db,
        "--format",
        "csv",
        "--post",
        "https://acme.service-now.com",
        "--sn-user",
        "u",
        "--sn-password-file",
        &pw,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--format servicenow-ire"));
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl command.
fn make_pki(dir: &Path) -> Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let openssl = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .ok()?;
    let ok = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Outpost test CA",
    ]) && openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]) && openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
    ]) && openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        "server.key",
        "-out",
        "server.pk8",
    ]);
    ok.then(|| {
        (
            dir.join("ca.pem"),
            dir.join("server.pem"),
            dir.join("server.pk8"),
        )
    })
}

#[test]
fn https_with_an_extra_ca_is_verified() {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let f = cmdb_with(2);
    let Some((ca, cert, key)) = make_pki(f.dir.path()) else {
        eprintln!("SKIP https_with_an_extra_ca_is_verified: the openssl command is not available");
        return;
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .expect("cert file")
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(&key).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let server = serve(1, listener, Some(Arc::new(config)), |_, req| {
        (200, ire_result(&req.body))
    });
    let pw = secret(f.dir.path(), "pw", "s3cret");
    let base = [
        "export",
        "--db",
        f.db.to_str().unwrap(),
        "--format",
        "servicenow-ire",
        "--post",
        &url,
        "--sn-user",
        "integration",
        "--sn-password-file",
        &pw,
        "--sn-retries",
        "0",
    ];
    // Without --sn-ca the private CA is not trusted: the handshake fails, nothing is sent.
    let out = run(&base);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("batch 1/1"), "{stderr}");
    // With it, the batch goes through.
    let mut args = base.to_vec();
    let ca = ca.to_str().unwrap().to_owned();
    args.extend(["--sn-ca", &ca]);
    let out = run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("HTTP 200"), "{stdout}");
    let seen = server.join().expect("server thread");
    assert_eq!(
        seen.len(),
        1,
        "only the verified connection carried a request"
    );
    check_batch(&seen[0]);
    assert_eq!(seen[0].authorization.as_deref(), Some(BASIC));
}
