//! `serve` over a real UDP socket on 127.0.0.1: fragmented envelopes, garbage datagrams, an
//! unfinished message, then a clean shutdown.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{Fixture, count, plc};
use outpost_collector::{Cmdb, ServeConfig, serve};
use outpost_proto::frame;

/// Waits (bounded) until `check` holds on a fresh read of the CMDB.
fn wait_for(db: &std::path::Path, what: &str, check: impl Fn(&Cmdb) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(cmdb) = Cmdb::open_existing(db)
            && check(&cmdb)
        {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_fragmented_envelopes_and_counts_garbage() {
    let mut f = Fixture::new();
    let ready = f.dir.path().join("ready");
    let mut cfg = ServeConfig::new(&f.db, "127.0.0.1:0".parse().unwrap());
    cfg.ready_file = Some(ready.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(cfg, async {
        let _ = stop_rx.await;
    }));

    // The ready file appears only once the socket is bound.
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr: SocketAddr = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            break text.trim().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no ready file");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_ne!(addr.port(), 0);

    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let assets: Vec<_> = (0..50).map(|i| plc(i, vec![i as u16; 16])).collect();
    const ENVELOPES: u64 = 5;
    let mut fragments_sent = 0;
    for n in 0..ENVELOPES {
        let mut assets = assets.clone();
        assets[0] = plc(0, vec![n as u16; 16]);
        let wire = f.seal(&f.summary(assets));
        let parts = frame::fragment(1_000 + n, &wire).unwrap();
        assert!(parts.len() > 1, "envelope should need several datagrams");
        fragments_sent += parts.len();
        // Out of order, with a duplicate, interleaved with garbage.
        for part in parts.iter().rev() {
            sender.send_to(part, addr).unwrap();
        }
        sender.send_to(&parts[0], addr).unwrap();
        sender
            .send_to(b"GET / HTTP/1.0\r\n\r\n garbage", addr)
            .unwrap();
        let mut corrupt = parts[0].clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0x55;
        sender.send_to(&corrupt, addr).unwrap();
        // Pace a little so a small kernel buffer does not drop anything.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The first fragment of a message whose other fragments never come.
    let orphan_wire = f.seal(&f.summary(assets.clone()));
    let orphan = frame::fragment(9_999, &orphan_wire).unwrap();
    sender.send_to(&orphan[0], addr).unwrap();

    let db = f.db.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(&db, "all envelopes and garbage", |c| {
            c.counter("envelopes_accepted").unwrap_or(0) == ENVELOPES as i64
                && c.counter("datagrams_rejected").unwrap_or(0) == 2 * ENVELOPES as i64
        })
    })
    .await
    .unwrap();

    stop_tx.send(()).unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("serve did not shut down")
        .unwrap()
        .unwrap();
    assert_eq!(stats.envelopes_applied, ENVELOPES);
    assert_eq!(stats.envelopes_rejected, 0);
    assert_eq!(stats.messages_reassembled, ENVELOPES);
    assert_eq!(stats.datagrams_rejected, 2 * ENVELOPES);
    assert_eq!(stats.duplicate_fragments, ENVELOPES);
    assert_eq!(
        stats.reassembly_dropped, 1,
        "the orphan is reported at shutdown"
    );
    assert_eq!(
        stats.datagrams,
        fragments_sent as u64 + 3 * ENVELOPES + 1,
        "every datagram sent was received"
    );

    let cmdb = Cmdb::open_existing(&f.db).unwrap();
    assert_eq!(cmdb.assets().unwrap().len(), 50);
    assert_eq!(cmdb.agents().unwrap()[0].last_seq, Some(ENVELOPES as i64));
    assert_eq!(cmdb.counter("datagrams_rejected.bad_magic").unwrap(), 5);
    assert_eq!(cmdb.counter("datagrams_rejected.bad_checksum").unwrap(), 5);
    assert_eq!(cmdb.counter("reassembly_dropped").unwrap(), 1);
    assert_eq!(count(&cmdb, "quarantine", "stage = 'datagram'"), 10);
    assert_eq!(count(&cmdb, "events", "kind = 'reassembly_dropped'"), 1);
    // plc-0's block changed in every envelope after the first.
    assert_eq!(count(&cmdb, "events", "kind = 'asset_changed'"), 4);
    let peer: String = cmdb.agents().unwrap()[0].last_peer.clone().unwrap();
    assert_eq!(peer, sender.local_addr().unwrap().to_string());
}

#[tokio::test]
async fn refuses_to_serve_without_a_cmdb() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServeConfig::new(
        dir.path().join("none.sqlite"),
        "127.0.0.1:0".parse().unwrap(),
    );
    let err = serve(cfg, std::future::pending()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("run `outpost-collector enroll` first"),
        "{err}"
    );
}

#[tokio::test]
async fn bind_failure_names_the_address() {
    let f = Fixture::new();
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = serve(ServeConfig::new(&f.db, addr), std::future::pending())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&addr.to_string()), "{msg}");
}
