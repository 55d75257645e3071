//! Helpers for end-to-end tests: find the built binaries, run them as children that are
//! always stopped, wait with a bound, pick free loopback ports, make temp dirs, read ready files.
//!
//! Binaries are never built from here. `cargo test --workspace --all-targets` builds them (a
//! package's binaries are built when its integration tests are); if one is missing the error
//! says which command to run.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How often [`wait_for`] polls.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// How long [`ChildGuard`]'s drop waits after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Why a harness helper failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(
        "binary {name:?} not found (looked in {looked:?}); build it first: \
         `cargo build -p {package}` (or run `cargo test --workspace --all-targets`)"
    )]
    BinaryMissing {
        name: String,
        package: String,
        looked: Vec<PathBuf>,
    },
    #[error("{what} did not happen within {waited:?}")]
    Timeout { what: String, waited: Duration },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The package that builds each workspace binary (for the "build it first" hint).
fn package_of(name: &str) -> &str {
    match name {
        "outpost-agent" | "outpost-collector" => name,
        _ => "outpost-testbed",
    }
}

/// Candidate directories holding built binaries, best first: the directory of the running
/// test executable's profile (`target/<profile>`, honours `CARGO_TARGET_DIR`), then
/// `<workspace>/target/{debug,release}`.
fn bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/deps/<test> or target/<profile>/<bin>
        for dir in exe.ancestors().skip(1).take(2) {
            dirs.push(dir.to_path_buf());
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let (first, second) = if cfg!(debug_assertions) {
        ("debug", "release")
    } else {
        ("release", "debug")
    };
    dirs.push(target.join(first));
    dirs.push(target.join(second));
    dirs.dedup();
    dirs
}

/// Finds a built workspace binary (`outpost-agent`, `outpost-collector`, `outpost-sim`, …).
///
/// `CARGO_BIN_EXE_<name>` wins when set (cargo sets it for integration tests of the package
/// that owns the binary; pass `env!("CARGO_BIN_EXE_outpost-sim")` yourself at compile time
/// when you can).
pub fn binary(name: &str) -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        return Ok(PathBuf::from(path));
    }
    let looked: Vec<PathBuf> = bin_dirs().into_iter().map(|d| d.join(name)).collect();
    looked
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| HarnessError::BinaryMissing {
            name: name.to_owned(),
            package: package_of(name).to_owned(),
            looked,
        })
}

/// A child process that is stopped when dropped: SIGTERM to its PID, then SIGKILL when it
/// has not exited within [`STOP_GRACE`].
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd`; `name` is used in messages.
    pub fn spawn(name: &str, cmd: &mut Command) -> io::Result<ChildGuard> {
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {name} ({:?}): {e}", cmd.get_program()),
            )
        })?;
        Ok(ChildGuard {
            name: name.to_owned(),
            child,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The underlying child, e.g. to take its stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the process has ended, without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits for the process to end by itself, at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus, HarnessError> {
        let name = self.name.clone();
        wait_for(timeout, || self.try_wait().ok().flatten()).ok_or(HarnessError::Timeout {
            what: format!("{name} exiting"),
            waited: timeout,
        })
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process if it is still running.
    pub fn signal(&mut self, signal: i32) -> io::Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.child.id())
            .map_err(|_| io::Error::other(format!("{}: pid out of range", self.name)))?;
        // SAFETY: kill(2) with a PID of a child we spawned and have not yet reaped (so it cannot
        // have been reused) and a plain signal number.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(libc::SIGTERM)?;
        if let Ok(status) = self.wait_timeout(grace) {
            return Ok(status);
        }
        self.child.kill()?;
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(e) = self.stop(STOP_GRACE) {
            eprintln!(
                "could not stop {} (pid {}): {e}",
                self.name,
                self.child.id()
            );
        }
    }
}

/// Polls `cond` every [`POLL_EVERY`] until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// A loopback UDP address on `ip` with a port that was free a moment ago.
pub fn free_udp_addr(ip: IpAddr) -> io::Result<SocketAddr> {
    UdpSocket::bind((ip, 0))?.local_addr()
}

/// A loopback TCP address on `ip` with a port that was free a moment ago.
pub fn free_tcp_addr(ip: IpAddr) -> io::Result<SocketAddr> {
    TcpListener::bind((ip, 0))?.local_addr()
}

/// 127.0.0.1.
pub const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A fresh temporary directory, removed when dropped.
pub fn temp_dir(prefix: &str) -> io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("outpost-{prefix}-"))
        .tempdir()
}

/// Waits until `path` exists and is not empty, and returns its contents.
///
/// Writers should write a temporary file and rename it into place, so a reader never sees
/// half a file.
pub fn wait_ready_file(path: &Path, timeout: Duration) -> Result<String, HarnessError> {
    wait_for(timeout, || {
        std::fs::read_to_string(path)
            .ok()
            .filter(|text| !text.trim().is_empty())
    })
    .ok_or_else(|| HarnessError::Timeout {
        what: format!("ready file {} appearing", path.display()),
        waited: timeout,
    })
}

/// [`wait_ready_file`], parsed as JSON.
pub fn wait_ready_json(path: &Path, timeout: Duration) -> Result<serde_json::Value, HarnessError> {
    let text = wait_ready_file(path, timeout)?;
    serde_json::from_str(&text).map_err(|source| HarnessError::Json {
        path: path.to_owned(),
        source,
    })
}

/// Runs the built binary `name` with `args` to completion, bounded by `timeout`: a child still
/// running then is killed by its PID (through [`ChildGuard`]). Output goes through files, so a
/// chatty child never blocks on a full pipe. Panics (this is for tests) when it cannot start.
pub fn run_bounded(name: &str, args: &[&str], timeout: Duration) -> Output {
    let bin = binary(name).unwrap_or_else(|e| panic!("{e}"));
    let dir = temp_dir(&format!("run-{name}")).expect("temp dir");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = ChildGuard::spawn(
        name,
        Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file")),
    )
    .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let status = child
        .wait_timeout(timeout)
        .unwrap_or_else(|e| panic!("{name} {args:?}: {e}"));
    Output {
        status,
        stdout: std::fs::read(out).unwrap_or_default(),
        stderr: std::fs::read(err).unwrap_or_default(),
    }
}

/// Starts `outpost-collector serve --db DB --diode-listen 127.0.0.1:0 [extra…]` with its ready
/// file in `dir`, and returns it with the UDP address it listens on (read from the ready file).
pub fn start_diode_collector(
    dir: &Path,
    db: &Path,
    extra: &[&str],
    timeout: Duration,
) -> (ChildGuard, SocketAddr) {
    let bin = binary("outpost-collector").unwrap_or_else(|e| panic!("{e}"));
    let ready = dir.join("collector.ready");
    let utf8 = |p: &Path| p.to_str().expect("temp paths are UTF-8").to_owned();
    let child = ChildGuard::spawn(
        "outpost-collector",
        Command::new(bin)
            .args(["serve", "--db", &utf8(db), "--diode-listen", "127.0.0.1:0"])
            .args(["--ready-file", &utf8(&ready)])
            .args(extra)
            .stdin(Stdio::null()),
    )
    .expect("collector starts");
    let addr = wait_ready_file(&ready, timeout)
        .expect("collector ready")
        .trim()
        .parse()
        .expect("ready file holds an address");
    (child, addr)
}

/// Writes `contents` to `path` atomically (temporary file in the same directory, then rename).
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), HarnessError> {
    let io_err = |source| HarnessError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents).map_err(io_err)?;
    std::fs::rename(&tmp, path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_is_stopped_on_drop_and_wait_for_is_bounded() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let guard = ChildGuard::spawn("sleep", &mut cmd).unwrap();
        let pid = guard.pid();
        drop(guard);
        // The child was reaped: its /proc entry is gone.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());

        let started = Instant::now();
        assert_eq!(wait_for(Duration::from_millis(100), || None::<()>), None);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn ready_files_and_ports() {
        let dir = temp_dir("harness").unwrap();
        let path = dir.path().join("ready.json");
        assert!(matches!(
            wait_ready_file(&path, Duration::from_millis(50)),
            Err(HarnessError::Timeout { .. })
        ));
        write_atomically(&path, br#"{"ok":true}"#).unwrap();
        let v = wait_ready_json(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(v["ok"], true);
        assert_ne!(free_udp_addr(LOCALHOST).unwrap().port(), 0);
        assert_ne!(free_tcp_addr(LOCALHOST).unwrap().port(), 0);
    }

    #[test]
    fn missing_binary_says_how_to_build_it() {
        let err = binary("outpost-no-such-binary").unwrap_err().to_string();
        assert!(err.contains("cargo build -p outpost-testbed"), "{err}");
    }
}
