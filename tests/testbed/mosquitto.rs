//! A real mosquitto broker for tests: generated config on a free loopback port, a test-time PKI
//! (CA, server and client certificates made with the `openssl` CLI), a password file made with
//! `mosquitto_passwd`, and an ACL that lets each agent publish only under its own zone and id.
//!
//! The broker is a child process stopped by its PID ([`ChildGuard`]); [`Broker::stop`] and
//! [`Broker::start`] restart it on the same port with its persistence kept (so the collector's
//! persistent session and queued messages survive, as with a real broker restart).
//!
//! Running as root, mosquitto 2.0 drops to user `mosquitto`: the broker directory is made
//! world-readable (and its data directory world-writable). Test keys are throwaway.

use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{self, ChildGuard, HarnessError, LOCALHOST};

/// Where mosquitto is looked for (Debian puts it in /usr/sbin).
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// Why the broker could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    Harness(#[from] HarnessError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{cmd} failed: {stderr}")]
    Tool { cmd: String, stderr: String },
    #[error("mosquitto not found at {MOSQUITTO}; install the Debian package `mosquitto`")]
    Missing,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BrokerError {
    let what = what.into();
    move |source| BrokerError::Io { what, source }
}

fn tool(cmd: &mut Command) -> Result<(), BrokerError> {
    let name = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("cannot run {name}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BrokerError::Tool {
            cmd: name,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// A test PKI made with openssl: PEM files.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A CA that signed nothing the broker uses (for "TLS mismatch" tests).
    pub other_ca_cert: PathBuf,
}

/// A client certificate and key signed by the test CA.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn ec_key(path: &Path) -> Result<(), BrokerError> {
    tool(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(path),
    )
}

fn self_signed_ca(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), BrokerError> {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.crt"));
    ec_key(&key)?;
    tool(
        Command::new("openssl")
            .args(["req", "-x509", "-new", "-days", "2", "-subj"])
            .arg(format!("/CN={name}"))
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-key")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    )?;
    Ok((cert, key))
}

fn signed(
    dir: &Path,
    name: &str,
    ca: &(PathBuf, PathBuf),
    ext: &str,
) -> Result<(PathBuf, PathBuf), BrokerError> {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let cert = dir.join(format!("{name}.crt"));
    let extfile = dir.join(format!("{name}.ext"));
    ec_key(&key)?;
    tool(
        Command::new("openssl")
            .args(["req", "-new", "-subj"])
            .arg(format!("/CN={name}"))
            .arg("-key")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    )?;
    fs::write(&extfile, ext).map_err(io("write extfile"))?;
    tool(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-set_serial"])
            .arg(format!(
                "{}",
                std::process::id() as u64 * 1000 + name.len() as u64
            ))
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&ca.0)
            .arg("-CAkey")
            .arg(&ca.1)
            .arg("-extfile")
            .arg(&extfile)
            .arg("-out")
            .arg(&cert),
    )?;
    Ok((cert, key))
}

impl Pki {
    /// Makes a CA, a server certificate for `localhost` / 127.0.0.1, and an unrelated CA.
    pub fn generate(dir: &Path) -> Result<Pki, BrokerError> {
        fs::create_dir_all(dir).map_err(io("create pki dir"))?;
        let ca = self_signed_ca(dir, "outpost-test-ca")?;
        let other = self_signed_ca(dir, "unrelated-ca")?;
        let server = signed(
            dir,
            "server",
            &ca,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )?;
        Ok(Pki {
            ca_cert: ca.0,
            server_cert: server.0,
            server_key: server.1,
            other_ca_cert: other.0,
        })
    }

    /// A client certificate named `name`, signed by the test CA.
    pub fn client(&self, name: &str) -> Result<ClientCert, BrokerError> {
        let dir = self.ca_cert.parent().unwrap_or(Path::new("."));
        let ca_key = self.ca_cert.with_extension("key");
        let (cert, key) = signed(
            dir,
            name,
            &(self.ca_cert.clone(), ca_key),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        )?;
        Ok(ClientCert { cert, key })
    }
}

/// What the broker allows.
#[derive(Debug, Clone, Default)]
pub struct BrokerSpec {
    /// Serve TLS with this PKI (otherwise plain TCP).
    pub tls: Option<Pki>,
    /// Require a client certificate signed by the test CA.
    pub require_client_cert: bool,
    /// (username, password) pairs; empty = anonymous allowed.
    pub users: Vec<(String, String)>,
    /// Agents: (username, zone, agent id) → may write only `outpost/v1/<zone>/<agent>/#`.
    pub agents: Vec<(String, String, String)>,
    /// Collectors: usernames that may read `outpost/v1/#`.
    pub collectors: Vec<String>,
}

/// A running (or stopped) mosquitto.
#[derive(Debug)]
pub struct Broker {
    dir: PathBuf,
    addr: SocketAddr,
    tls: bool,
    child: Option<ChildGuard>,
    starts: u32,
}

fn open_up(path: &Path, mode: u32) -> Result<(), BrokerError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))
}

impl Broker {
    /// Writes the config (password file, ACL) into `dir` and picks a free port; does not start.
    pub fn configure(dir: &Path, spec: &BrokerSpec) -> Result<Broker, BrokerError> {
        if !Path::new(MOSQUITTO).exists() {
            return Err(BrokerError::Missing);
        }
        let dir = dir.to_owned();
        let data = dir.join("data");
        fs::create_dir_all(&data).map_err(io("create broker dir"))?;
        // mosquitto (dropped to user `mosquitto` when started as root) must read the config
        // and write its data directory; every directory above must be traversable.
        for a in dir
            .ancestors()
            .take_while(|a| a.starts_with(std::env::temp_dir()))
        {
            if a != std::env::temp_dir() {
                open_up(a, 0o755)?;
            }
        }
        open_up(&data, 0o777)?;
        let addr = harness::free_tcp_addr(LOCALHOST).map_err(io("pick a port"))?;
        let mut conf = String::new();
        let _ = writeln!(conf, "per_listener_settings false");
        let _ = writeln!(conf, "persistence true");
        let _ = writeln!(conf, "persistence_location {}/", data.display());
        // The default (1000) drops messages for a slow or absent persistent subscriber.
        let _ = writeln!(conf, "max_queued_messages 100000");
        let _ = writeln!(conf, "log_dest stderr");
        let _ = writeln!(
            conf,
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information"
        );
        let _ = writeln!(conf, "listener {} 127.0.0.1", addr.port());
        if spec.users.is_empty() {
            let _ = writeln!(conf, "allow_anonymous true");
        } else {
            let passwd = dir.join("passwd");
            let _ = fs::remove_file(&passwd);
            fs::write(&passwd, "").map_err(io("create password file"))?;
            for (user, password) in &spec.users {
                tool(
                    Command::new("mosquitto_passwd")
                        .arg("-b")
                        .arg(&passwd)
                        .arg(user)
                        .arg(password),
                )?;
            }
            open_up(&passwd, 0o644)?;
            let _ = writeln!(conf, "allow_anonymous false");
            let _ = writeln!(conf, "password_file {}", passwd.display());
            let mut acl = String::new();
            for (user, zone, agent) in &spec.agents {
                let _ = writeln!(
                    acl,
                    "user {user}\ntopic write outpost/v1/{zone}/{agent}/#\n"
                );
            }
            for user in &spec.collectors {
                let _ = writeln!(acl, "user {user}\ntopic read outpost/v1/#\n");
            }
            let acl_path = dir.join("acl");
            fs::write(&acl_path, acl).map_err(io("write ACL"))?;
            open_up(&acl_path, 0o644)?;
            let _ = writeln!(conf, "acl_file {}", acl_path.display());
        }
        if let Some(pki) = &spec.tls {
            for f in [&pki.ca_cert, &pki.server_cert, &pki.server_key] {
                open_up(f, 0o644)?;
            }
            let _ = writeln!(conf, "cafile {}", pki.ca_cert.display());
            let _ = writeln!(conf, "certfile {}", pki.server_cert.display());
            let _ = writeln!(conf, "keyfile {}", pki.server_key.display());
            let _ = writeln!(conf, "require_certificate {}", spec.require_client_cert);
        }
        let conf_path = dir.join("mosquitto.conf");
        fs::write(&conf_path, conf).map_err(io("write mosquitto.conf"))?;
        open_up(&conf_path, 0o644)?;
        Ok(Broker {
            dir,
            addr,
            tls: spec.tls.is_some(),
            child: None,
            starts: 0,
        })
    }

    /// Configures and starts.
    pub fn start_new(dir: &Path, spec: &BrokerSpec) -> Result<Broker, BrokerError> {
        let mut b = Broker::configure(dir, spec)?;
        b.start()?;
        Ok(b)
    }

    /// Starts mosquitto and waits (at most 10 s) until its port accepts connections.
    pub fn start(&mut self) -> Result<(), BrokerError> {
        if self.child.is_some() {
            return Ok(());
        }
        self.starts += 1;
        let log = fs::File::create(self.dir.join(format!("mosquitto.{}.log", self.starts)))
            .map_err(io("create broker log"))?;
        let child = ChildGuard::spawn(
            "mosquitto",
            Command::new(MOSQUITTO)
                .arg("-c")
                .arg(self.dir.join("mosquitto.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )
        .map_err(io("start mosquitto"))?;
        self.child = Some(child);
        let addr = self.addr;
        harness::wait_for(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .ok_or_else(|| {
            BrokerError::Harness(HarnessError::Timeout {
                what: format!("mosquitto listening on {addr} (log: {})", self.log()),
                waited: Duration::from_secs(10),
            })
        })?;
        Ok(())
    }

    /// Stops it by PID (SIGTERM, so it saves its persistence), waiting at most 5 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.stop(Duration::from_secs(5));
        }
    }

    /// `mqtt://127.0.0.1:PORT` or `mqtts://localhost:PORT`.
    pub fn url(&self) -> String {
        if self.tls {
            format!("mqtts://localhost:{}", self.addr.port())
        } else {
            format!("mqtt://127.0.0.1:{}", self.addr.port())
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything the broker logged so far (all runs).
    pub fn log(&self) -> String {
        (1..=self.starts)
            .filter_map(|i| fs::read_to_string(self.dir.join(format!("mosquitto.{i}.log"))).ok())
            .collect::<Vec<_>>()
            .join("")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
