//! Shared fixtures for the collector's tests: a CMDB in a temp dir, an enrolled signing key,
//! and builders for summaries and envelopes (sealed with the real `proto::envelope::seal`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use outpost_collector::{Cmdb, Ingest};
use outpost_proto::envelope::{self, EnvelopeHeader, SIGNING_CONTEXT};
use outpost_proto::model::{
    AssetObservation, Body, DeviceIdentity, Endpoint, HostFacts, IdentMethod, NetInterface,
    PollStatus, RegisterBlock, RegisterKind, Summary,
};
use outpost_proto::{AgentId, ChainTip, SigningKey, ZoneId};

pub const T0: u64 = 1_760_000_000_000;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub key: SigningKey,
    pub agent: AgentId,
    pub zone: ZoneId,
    pub tip: ChainTip,
}

impl Fixture {
    /// A fresh CMDB with `gw-1`'s key enrolled for `cell-1`.
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("cmdb.sqlite");
        let (key, _) = SigningKey::generate().unwrap();
        let agent = AgentId::new("gw-1").unwrap();
        let zone = ZoneId::new("cell-1").unwrap();
        let mut cmdb = Cmdb::open(&db).unwrap();
        cmdb.enroll(&key.public_key(), &agent, std::slice::from_ref(&zone), T0)
            .unwrap();
        Fixture {
            dir,
            db,
            key,
            agent,
            zone,
            tip: ChainTip::GENESIS,
        }
    }

    pub fn ingest(&self) -> Ingest {
        Ingest::new(Cmdb::open_existing(&self.db).unwrap())
    }

    /// A summary from this fixture's agent and zone.
    pub fn summary(&self, assets: Vec<AssetObservation>) -> Summary {
        Summary {
            agent: self.agent.clone(),
            zone: self.zone.clone(),
            started_ms: T0,
            finished_ms: T0 + 500,
            gateway: None,
            assets,
        }
    }

    /// Seals the next envelope in this fixture's chain.
    pub fn seal(&mut self, summary: &Summary) -> Vec<u8> {
        let sealed = envelope::seal(
            &self.key,
            &self.agent,
            &self.zone,
            &self.tip,
            T0 + self.tip.seq,
            &Body::Summary(summary.clone()),
        )
        .unwrap();
        self.tip = sealed.tip;
        sealed.wire
    }

    /// Seals an envelope with an arbitrary header agent/zone/body bytes, signed by this key
    /// (for bodies `seal` cannot produce).
    pub fn seal_raw(&mut self, agent: &str, zone: &str, body: Vec<u8>) -> Vec<u8> {
        let header = EnvelopeHeader {
            version: envelope::ENVELOPE_VERSION,
            agent: AgentId::new(agent).unwrap(),
            zone: ZoneId::new(zone).unwrap(),
            key_id: self.key.key_id(),
            seq: self.tip.seq + 1,
            time_ms: T0,
            prev_hash: self.tip.hash,
            body,
        };
        let signed = outpost_proto::cbor::encode(&header).unwrap();
        // What proto signs: the domain prefix, then SHA-256 of the signed bytes.
        let mut input = SIGNING_CONTEXT.to_vec();
        input.extend_from_slice(&outpost_proto::Digest::of(&signed).0);
        let signature = self.key.sign(&input);
        let wire = ciborium::Value::Array(vec![
            ciborium::Value::Bytes(signed.clone()),
            ciborium::Value::Bytes(signature.to_vec()),
        ]);
        self.tip = ChainTip {
            seq: header.seq,
            hash: outpost_proto::Digest::of(&signed),
        };
        outpost_proto::cbor::encode(&wire).unwrap()
    }
}

/// A reachable PLC at 10.0.0.<i>:502 unit 1 with one holding block.
pub fn plc(i: u32, values: Vec<u16>) -> AssetObservation {
    AssetObservation {
        name: format!("plc-{i}"),
        endpoint: Endpoint::Tcp {
            host: format!("10.0.{}.{}", i / 250, i % 250 + 1),
            port: 502,
        },
        unit_id: 1,
        status: PollStatus::Ok,
        identity: DeviceIdentity {
            method: IdentMethod::ReadDeviceIdentification,
            vendor_name: Some("ACME".into()),
            product_code: Some("PLC-9".into()),
            revision: Some("1.0".into()),
            other: BTreeMap::new(),
            ..DeviceIdentity::default()
        },
        blocks: vec![RegisterBlock::new(
            "setpoints",
            RegisterKind::Holding,
            100,
            values,
        )],
        problems: vec![],
        profile: None,
        serial: None,
        mac: None,
    }
}

/// CI key of `plc(i, ..)` in cell-1.
pub fn plc_key(i: u32) -> String {
    format!(
        "zone/cell-1/modbus/tcp://10.0.{}.{}:502/unit/1",
        i / 250,
        i % 250 + 1
    )
}

pub fn gateway() -> HostFacts {
    HostFacts {
        hostname: Some("gw-host".into()),
        os_name: Some("Debian".into()),
        os_version: Some("13".into()),
        kernel_version: Some("6.12".into()),
        cpu_arch: "x86_64".into(),
        cpu_count: 2,
        memory_bytes: 4 << 30,
        boot_time: 1_700_000_000,
        interfaces: vec![NetInterface {
            name: "eth0".into(),
            mac: Some("02:00:00:00:00:01".into()),
            addresses: vec!["10.0.0.254/24".into()],
        }],
        agent_version: "0.1.0".into(),
        ..HostFacts::default()
    }
}

/// Every row of every table that describes inventory (not quarantine or counters), as text,
/// to check that a refused envelope changed nothing.
pub fn snapshot(cmdb: &Cmdb) -> Vec<String> {
    let tables = [
        "zones",
        "agents",
        "agent_keys",
        "key_zones",
        "assets",
        "gateways",
        "gateway_attributes",
        "gateway_attribute_history",
        "asset_attributes",
        "attribute_history",
        "relations",
        "envelopes",
        "events",
    ];
    let conn = cmdb.connection();
    let mut out = Vec::new();
    for table in tables {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1"))
            .unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                let mut line = format!("{table}:");
                for i in 0..n {
                    let v: rusqlite::types::Value = r.get(i)?;
                    line.push_str(&format!(" {v:?}"));
                }
                Ok(line)
            })
            .unwrap();
        for row in rows {
            out.push(row.unwrap());
        }
    }
    out
}

/// `SELECT count(*)` with a WHERE clause.
pub fn count(cmdb: &Cmdb, table: &str, filter: &str) -> i64 {
    cmdb.connection()
        .query_row(
            &format!("SELECT count(*) FROM {table} WHERE {filter}"),
            [],
            |r| r.get(0),
        )
        .unwrap()
}
