//! Opening, migrating and reopening CMDB files; enrolment rules.

mod common;

use common::T0;
use outpost_collector::cmdb::schema::SCHEMA_VERSION;
use outpost_collector::{Cmdb, CmdbError};
use outpost_proto::{AgentId, SigningKey, ZoneId};

#[test]
fn migrates_an_empty_file_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cmdb.sqlite");
    std::fs::write(&db, b"").unwrap(); // an empty file is an empty SQLite database
    {
        let cmdb = Cmdb::open_existing(&db).unwrap();
        assert_eq!(cmdb.schema_version().unwrap(), SCHEMA_VERSION);
        let mode: String = cmdb
            .connection()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = cmdb
            .connection()
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }
    let mut cmdb = Cmdb::open(&db).unwrap();
    assert_eq!(cmdb.schema_version().unwrap(), SCHEMA_VERSION);
    let (key, _) = SigningKey::generate().unwrap();
    let agent = AgentId::new("gw-1").unwrap();
    cmdb.enroll(&key.public_key(), &agent, &[ZoneId::new("z").unwrap()], T0)
        .unwrap();
    drop(cmdb);
    let cmdb = Cmdb::open(&db).unwrap();
    assert!(cmdb.trusted_key(&key.key_id()).unwrap().is_some());
}

#[test]
fn open_creates_but_open_existing_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("new.sqlite");
    let err = Cmdb::open_existing(&db).unwrap_err();
    assert!(matches!(err, CmdbError::Missing { .. }));
    let msg = err.to_string();
    assert!(msg.contains("new.sqlite"), "{msg}");
    assert!(
        msg.contains("run `outpost-collector enroll` first"),
        "{msg}"
    );
    Cmdb::open(&db).unwrap();
    assert!(db.exists());
}

#[test]
fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("future.sqlite");
    drop(Cmdb::open(&db).unwrap());
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let err = Cmdb::open(&db).unwrap_err();
    assert!(
        matches!(err, CmdbError::TooNew { found, .. } if found == SCHEMA_VERSION + 1),
        "{err}"
    );
    assert!(
        err.to_string().contains("upgrade outpost-collector"),
        "{err}"
    );
}

#[test]
fn refuses_a_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("notes.txt");
    std::fs::write(
        &db,
        "this is not a database, it is a shopping list\n".repeat(50),
    )
    .unwrap();
    let err = Cmdb::open_existing(&db).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("notes.txt"), "{msg}");
}

#[test]
fn enrolment_adds_zones_and_refuses_a_second_agent() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmdb = Cmdb::open(dir.path().join("c.sqlite")).unwrap();
    let (key, _) = SigningKey::generate().unwrap();
    let public = key.public_key();
    let gw1 = AgentId::new("gw-1").unwrap();
    let z1 = ZoneId::new("cell-1").unwrap();
    let z2 = ZoneId::new("cell-2").unwrap();

    let first = cmdb
        .enroll(&public, &gw1, std::slice::from_ref(&z1), T0)
        .unwrap();
    assert!(first.new_key);
    assert_eq!(first.zones, vec![z1.clone()]);

    let again = cmdb
        .enroll(&public, &gw1, &[z1.clone(), z2.clone()], T0)
        .unwrap();
    assert!(!again.new_key);
    assert_eq!(again.zones_added, vec![z2.clone()]);
    assert_eq!(again.zones, vec![z1.clone(), z2.clone()]);

    let err = cmdb
        .enroll(
            &public,
            &AgentId::new("gw-2").unwrap(),
            std::slice::from_ref(&z1),
            T0,
        )
        .unwrap_err();
    assert!(matches!(err, CmdbError::KeyBoundToOtherAgent { .. }));
    let msg = err.to_string();
    assert!(msg.contains("already enrolled for agent gw-1"), "{msg}");

    assert!(matches!(
        cmdb.enroll(&public, &gw1, &[], T0),
        Err(CmdbError::NoZones)
    ));

    let trusted = cmdb.trusted_key(&key.key_id()).unwrap().unwrap();
    assert_eq!(trusted.agent, gw1);
    assert_eq!(trusted.public_key, public);
    assert_eq!(trusted.zones, vec![z1, z2]);
    let (other, _) = SigningKey::generate().unwrap();
    assert!(cmdb.trusted_key(&other.key_id()).unwrap().is_none());
}
