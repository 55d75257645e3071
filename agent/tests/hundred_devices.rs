//! One agent process polls 100 devices in one cycle and sends the envelope. Its peak memory is
//! printed here for information; the ≤ 20 MB target is checked by `outpost-bench`, not by a test.

mod common;

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Behaviour, Device, start};

const BIN: &str = env!("CARGO_BIN_EXE_outpost-agent");

fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_polls_100_devices_in_one_cycle() {
    let mut devices = Vec::new();
    for _ in 0..100 {
        devices.push(start(Device::new(Behaviour::Identity)).await);
    }
    let dir = tempfile::tempdir().unwrap();
    assert!(
        Command::new(BIN)
            .args(["keygen", "--out", dir.path().join("keys").to_str().unwrap()])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = format!(
        "agent_id = \"gw-mem\"\nzone = \"z\"\nstate_dir = \"state\"\nkey_file = \"keys/agent.key\"\npoll_interval = \"60s\"\n[diode]\ntarget = \"{}\"\n[modbus]\nmin_request_gap = \"5ms\"\n",
        rx.local_addr().unwrap()
    );
    for (i, d) in devices.iter().enumerate() {
        let _ = write!(
            cfg,
            "[[devices]]\nname = \"plc-{i}\"\naddress = \"{}\"\n[[devices.blocks]]\nname = \"a\"\nkind = \"holding\"\nstart = 0\ncount = 125\n[[devices.blocks]]\nname = \"b\"\nkind = \"coil\"\nstart = 0\ncount = 10\n",
            d.addr
        );
    }
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // The first cycle's envelope arrives once all 100 devices were polled.
    let mut buf = [0u8; 2048];
    let got = tokio::time::timeout(Duration::from_secs(60), rx.recv_from(&mut buf)).await;
    let peak = peak_rss_kb(pid);
    let _ = child.kill();
    let _ = child.wait();
    assert!(matches!(got, Ok(Ok(_))), "no envelope within 60 s");
    let peak = peak.expect("VmHWM readable");
    println!("peak RSS polling 100 devices (debug build): {peak} kB");
    let polled: usize = devices.iter().map(|d| d.device.requests().len()).sum();
    // Per device: FC 43 extended (refused), the regular stream in 4 pages, 2 blocks.
    assert_eq!(polled, 100 * 7);
}
