//! A three-namespace network for the proof of one-way: plant ─ agent ─ IT.
//!
//! ```text
//!  [plant ns]                      [agent ns]                          [IT ns]
//!  simulator on 10.203.1.0/24 ── veth 10.203.0.1/30 ⇄ 10.203.0.2/30
//!  (AnyIP: the whole /24 is local)                   10.203.0.5/30 ⇄ 10.203.0.6/30 ── collector
//!                                                     └ the conduit ┘
//! ```
//!
//! nftables in the agent's namespace (loaded by [`OneWayLab::seal_agent`]):
//! - `netdev outpost_conduit`: an ingress hook on the conduit interface with policy drop — every
//!   frame arriving from the IT side (IP, ARP, anything; established or not) is dropped before
//!   the IP stack sees it. The agent reaches the collector's MAC through a static neighbour
//!   entry, as a hardware diode's sending side is configured.
//! - `inet outpost_oneway`: the input hook with policy drop; the only accepted packets are
//!   replies on connections the agent opened (`ct state established`) arriving on the plant
//!   interface (Modbus TCP needs replies). Nothing new is accepted from anywhere, loopback included.
//!
//! Named counters (`conduit_dropped`, `plant_replies`, `input_dropped`) show the rules saw
//! traffic. Every namespace is deleted by name when the lab is dropped, also on panic.
//! Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN), `ip` (iproute2) and `nft` (nftables);
//! [`lab_unavailable`] says why not when they are missing.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the plant simulator's devices live (the whole /24 is local in the plant namespace).
pub const PLANT_FIRST_DEVICE: Ipv4Addr = Ipv4Addr::new(10, 203, 1, 10);
/// The agent's address toward the plant.
pub const AGENT_PLANT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 2);
/// The agent's address on the conduit.
pub const AGENT_CONDUIT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 5);
/// The collector's address on the conduit (the diode target).
pub const COLLECTOR: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 6);

/// Runs `program args…`, returning its stdout; any failure names the command and its stderr.
fn run(program: &str, args: &[&str]) -> io::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {program}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `nft -f -` in namespace `ns` with `rules` on stdin.
fn nft_load(ns: &str, rules: &str) -> io::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run ip netns exec nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(rules.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "nft in {ns} refused the rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// A network namespace, deleted by name when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add name`, with loopback up.
    pub fn create(name: &str) -> io::Result<Netns> {
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> args…`.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A command that runs `program` inside this namespace (`ip netns exec`, which execs it:
    /// the child's PID is the program's).
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(program.as_ref())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `f` on a fresh thread that has joined this namespace, so the sockets `f` opens
    /// live there; the calling thread stays where it is.
    pub fn run_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let path = PathBuf::from("/run/netns").join(&self.name);
        std::thread::spawn(move || -> io::Result<T> {
            let file = File::open(&path).map_err(|e| proc_err(&path, e))?;
            // SAFETY: setns(2) on a namespace file we hold open; it changes only this thread's
            // network namespace, and this thread ends when `f` returns.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("the thread inside the namespace panicked"))?
    }
}

fn proc_err(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("could not delete network namespace {}: {e}", self.name);
        }
    }
}

/// Why the lab cannot be built here (not root, no `ip`/`nft`, namespaces or nftables refused by
/// the kernel or container), or `None` when it can.
pub fn lab_unavailable() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (network namespaces and nftables need it)".into());
    }
    for tool in ["ip", "nft"] {
        if run(tool, &["--version"]).is_err() && run(tool, &["-V"]).is_err() {
            return Some(format!(
                "`{tool}` not found (apt-get install iproute2 nftables)"
            ));
        }
    }
    let probe = format!("outpost-probe-{}", std::process::id());
    let ns = match Netns::create(&probe) {
        Ok(ns) => ns,
        Err(e) => return Some(format!("cannot create a network namespace: {e}")),
    };
    if let Err(e) = nft_load(ns.name(), "table inet outpost_probe {\n}\n") {
        return Some(format!("nftables unusable in a namespace: {e}"));
    }
    None
}

/// Deletes namespaces a killed earlier run left behind (`outpost-ow-<pid>-…` whose process is
/// gone), by name.
fn remove_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix("outpost-ow-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// Counters of the agent namespace's rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FirewallCounters {
    /// Frames that arrived on the conduit interface (all dropped).
    pub conduit_dropped: u64,
    /// Reply packets accepted from the plant.
    pub plant_replies: u64,
    /// Packets dropped by the input hook (not from the conduit, which never gets that far).
    pub input_dropped: u64,
}

/// The plant, agent and IT namespaces and the links between them.
#[derive(Debug)]
pub struct OneWayLab {
    // Drop order: the namespaces go with the lab (veths die with them).
    pub plant: Netns,
    pub agent: Netns,
    pub it: Netns,
    /// The agent's interface toward the plant.
    pub agent_plant_if: String,
    /// The agent's interface on the conduit.
    pub agent_conduit_if: String,
}

impl OneWayLab {
    /// Builds the three namespaces, links and routes (no firewall yet: see [`Self::seal_agent`]).
    /// `tag` keeps concurrent labs apart (at most 3 characters).
    pub fn build(tag: &str) -> io::Result<OneWayLab> {
        remove_stale();
        let pid = std::process::id();
        let ns = |role: &str| format!("outpost-ow-{pid}-{tag}-{role}");
        let plant = Netns::create(&ns("plant"))?;
        let agent = Netns::create(&ns("agent"))?;
        let it = Netns::create(&ns("it"))?;
        // Interface names: at most 15 bytes, unique per host while being created.
        let short = pid % 1_000_000;
        let ifname = |x: &str| format!("ow{short}{tag}{x}");
        let (plant_if, agent_plant_if) = (ifname("p"), ifname("a"));
        let (agent_conduit_if, it_if) = (ifname("c"), ifname("i"));

        run(
            "ip",
            &[
                "link",
                "add",
                &plant_if,
                "netns",
                plant.name(),
                "type",
                "veth",
                "peer",
                "name",
                &agent_plant_if,
                "netns",
                agent.name(),
            ],
        )?;
        run(
            "ip",
            &[
                "link",
                "add",
                &agent_conduit_if,
                "netns",
                agent.name(),
                "type",
                "veth",
                "peer",
                "name",
                &it_if,
                "netns",
                it.name(),
            ],
        )?;
        for (n, dev, addr) in [
            (&plant, &plant_if, "10.203.0.1/30"),
            (&agent, &agent_plant_if, "10.203.0.2/30"),
            (&agent, &agent_conduit_if, "10.203.0.5/30"),
            (&it, &it_if, "10.203.0.6/30"),
        ] {
            n.ip(&["addr", "add", addr, "dev", dev])?;
            n.ip(&["link", "set", dev, "up"])?;
        }
        // The plant's devices: any address of 10.203.1.0/24 is local in the plant namespace.
        plant.ip(&["route", "add", "local", "10.203.1.0/24", "dev", "lo"])?;
        agent.ip(&["route", "add", "10.203.1.0/24", "via", "10.203.0.1"])?;

        // A static neighbour entry for the collector: the agent never needs an ARP reply.
        let links: serde_json::Value =
            serde_json::from_str(&it.ip(&["-j", "link", "show", &it_if])?)
                .map_err(|e| io::Error::other(format!("ip -j link show: not JSON: {e}")))?;
        let mac = links[0]["address"]
            .as_str()
            .ok_or_else(|| io::Error::other(format!("no MAC address for {it_if}: {links}")))?
            .to_owned();
        agent.ip(&[
            "neigh",
            "replace",
            "10.203.0.6",
            "lladdr",
            &mac,
            "dev",
            &agent_conduit_if,
            "nud",
            "permanent",
        ])?;
        Ok(OneWayLab {
            plant,
            agent,
            it,
            agent_plant_if,
            agent_conduit_if,
        })
    }

    /// Loads the agent namespace's firewall: drop every inbound frame on the conduit, and every
    /// inbound packet except replies from the plant.
    pub fn seal_agent(&self) -> io::Result<()> {
        let rules = format!(
            r#"table netdev outpost_conduit {{
    counter conduit_dropped {{ }}
    chain ingress {{
        type filter hook ingress device "{conduit}" priority -500; policy drop;
        counter name "conduit_dropped"
    }}
}}
table inet outpost_oneway {{
    counter plant_replies {{ }}
    counter input_dropped {{ }}
    chain input {{
        type filter hook input priority filter; policy drop;
        iifname "{plant}" ct state established counter name "plant_replies" accept
        counter name "input_dropped"
    }}
}}
"#,
            conduit = self.agent_conduit_if,
            plant = self.agent_plant_if,
        );
        nft_load(self.agent.name(), &rules)
    }

    /// The firewall's rules as nft prints them (for failure messages and the test log).
    pub fn ruleset(&self) -> io::Result<String> {
        run(
            "ip",
            &["netns", "exec", self.agent.name(), "nft", "list", "ruleset"],
        )
    }

    /// The named counters of the agent namespace's firewall.
    pub fn counters(&self) -> io::Result<FirewallCounters> {
        let text = run(
            "ip",
            &[
                "netns",
                "exec",
                self.agent.name(),
                "nft",
                "-j",
                "list",
                "counters",
            ],
        )?;
        let doc: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| io::Error::other(format!("nft -j list counters: not JSON: {e}")))?;
        let mut c = FirewallCounters::default();
        for item in doc["nftables"].as_array().into_iter().flatten() {
            let counter = &item["counter"];
            let packets = counter["packets"].as_u64().unwrap_or(0);
            match counter["name"].as_str() {
                Some("conduit_dropped") => c.conduit_dropped = packets,
                Some("plant_replies") => c.plant_replies = packets,
                Some("input_dropped") => c.input_dropped = packets,
                _ => {}
            }
        }
        Ok(c)
    }

    /// The diode target on the collector's side of the conduit.
    pub fn collector_addr(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(COLLECTOR), port)
    }
}
