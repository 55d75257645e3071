//! The CMDB schema and its versioned migrations.
//!
//! The schema version is SQLite's `PRAGMA user_version`: the number of entries of
//! [`MIGRATIONS`] applied. Opening a database applies the missing migrations in order, each in
//! its own transaction together with the new `user_version`, so a crash leaves the database at
//! a whole version. A database with a higher version than this build knows is refused (an old
//! collector must not write to a schema it does not understand).
//!
//! To change the schema, append a migration; never edit one that has shipped.
//!
//! Conventions: times are integer milliseconds since the Unix epoch, by the collector's clock
//! unless the column name says `agent`; hashes and key ids are lower-case hex text; CI keys are
//! text (see [`crate::cmdb::ci_key`]).

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::cmdb::CmdbError;

/// Schema migrations, in order. Migration `n` (1-based) brings the schema to version `n`.
pub const MIGRATIONS: &[&str] = &[
    MIGRATION_1,
    MIGRATION_2,
    MIGRATION_3,
    MIGRATION_4,
    MIGRATION_5,
    MIGRATION_GATEWAY_FACTS,
    MIGRATION_PROBES,
    MIGRATION_OBSERVED_CHANGES,
    MIGRATION_INGEST_FOLLOWS,
    MIGRATION_IDENTITY,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

const MIGRATION_1: &str = r#"
CREATE TABLE zones (
    zone            TEXT PRIMARY KEY,
    created_at_ms   INTEGER NOT NULL
);

CREATE TABLE agents (
    agent_id                 TEXT PRIMARY KEY,
    enrolled_at_ms           INTEGER NOT NULL,
    first_seen_ms            INTEGER,          -- first accepted envelope
    last_seen_ms             INTEGER,          -- last accepted envelope
    last_seq                 INTEGER,          -- chain tip: sequence number
    last_hash                TEXT,             -- chain tip: envelope hash
    last_envelope_agent_ms   INTEGER,          -- agent clock of the last envelope
    last_peer                TEXT,
    envelopes_accepted       INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE agent_keys (
    key_id          TEXT PRIMARY KEY,
    public_key      BLOB NOT NULL,
    agent_id        TEXT NOT NULL REFERENCES agents(agent_id),
    enrolled_at_ms  INTEGER NOT NULL,
    status          TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    revoked_at_ms   INTEGER
);
CREATE INDEX agent_keys_by_agent ON agent_keys(agent_id);

CREATE TABLE key_zones (
    key_id          TEXT NOT NULL REFERENCES agent_keys(key_id),
    zone            TEXT NOT NULL REFERENCES zones(zone),
    added_at_ms     INTEGER NOT NULL,
    PRIMARY KEY (key_id, zone)
) WITHOUT ROWID;

CREATE TABLE assets (
    asset_id                INTEGER PRIMARY KEY,
    ci_key                  TEXT NOT NULL UNIQUE,
    zone                    TEXT NOT NULL REFERENCES zones(zone),
    agent_id                TEXT NOT NULL REFERENCES agents(agent_id),
    name                    TEXT NOT NULL,
    endpoint                TEXT NOT NULL,
    unit_id                 INTEGER NOT NULL,
    vendor_name             TEXT,
    product_code            TEXT,
    revision                TEXT,
    vendor_url              TEXT,
    product_name            TEXT,
    model_name              TEXT,
    user_application_name   TEXT,
    ident_method            TEXT NOT NULL,
    status                  TEXT NOT NULL CHECK (status IN ('ok', 'partial', 'unreachable')),
    last_problem            TEXT,
    content_hash            BLOB NOT NULL,    -- of the last observation; equal = nothing to do
    first_seen_ms           INTEGER NOT NULL,
    last_seen_ms            INTEGER,          -- last time it answered; NULL = never
    last_polled_ms          INTEGER NOT NULL,
    last_envelope_seq       INTEGER NOT NULL
);
CREATE INDEX assets_by_agent ON assets(agent_id);
CREATE INDEX assets_by_zone ON assets(zone);

CREATE TABLE gateways (
    ci_key          TEXT PRIMARY KEY,
    agent_id        TEXT NOT NULL UNIQUE REFERENCES agents(agent_id),
    zone            TEXT NOT NULL REFERENCES zones(zone),
    hostname        TEXT,
    os_name         TEXT,
    os_version      TEXT,
    kernel_version  TEXT,
    cpu_arch        TEXT NOT NULL,
    cpu_count       INTEGER NOT NULL,
    memory_bytes    INTEGER NOT NULL,
    boot_time_ms    INTEGER NOT NULL,
    interfaces_json TEXT NOT NULL,
    agent_version   TEXT NOT NULL,
    first_seen_ms   INTEGER NOT NULL,
    last_seen_ms    INTEGER NOT NULL
);

CREATE TABLE asset_attributes (
    asset_id        INTEGER NOT NULL REFERENCES assets(asset_id),
    attribute       TEXT NOT NULL,
    value           TEXT,                     -- NULL = no longer reported
    updated_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (asset_id, attribute)
) WITHOUT ROWID;

CREATE TABLE attribute_history (
    history_id      INTEGER PRIMARY KEY,
    asset_id        INTEGER NOT NULL REFERENCES assets(asset_id),
    attribute       TEXT NOT NULL,
    old_value       TEXT,                     -- NULL on the first observation
    new_value       TEXT,
    observed_at_ms  INTEGER NOT NULL,
    agent_id        TEXT NOT NULL,
    envelope_seq    INTEGER NOT NULL,
    envelope_hash   TEXT NOT NULL
);
CREATE INDEX attribute_history_by_asset ON attribute_history(asset_id, history_id);

CREATE TABLE relations (
    from_ci         TEXT NOT NULL,
    type            TEXT NOT NULL CHECK (type IN ('located_in', 'reported_by', 'hosts')),
    to_ci           TEXT NOT NULL,
    since_ms        INTEGER NOT NULL,
    PRIMARY KEY (from_ci, type, to_ci)
) WITHOUT ROWID;
CREATE INDEX relations_by_target ON relations(to_ci, type);

CREATE TABLE envelopes (
    envelope_id     INTEGER PRIMARY KEY,
    agent_id        TEXT NOT NULL REFERENCES agents(agent_id),
    seq             INTEGER NOT NULL,
    hash            TEXT NOT NULL,
    prev_hash       TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    zone            TEXT NOT NULL,
    agent_time_ms   INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    verdict         TEXT NOT NULL,            -- first | next | gap | chain_break
    received_at_ms  INTEGER NOT NULL,
    peer            TEXT NOT NULL,
    raw             BLOB NOT NULL,            -- the wire bytes, verbatim
    UNIQUE (agent_id, seq)
);

CREATE TABLE events (
    event_id        INTEGER PRIMARY KEY,
    time_ms         INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    agent_id        TEXT,
    zone            TEXT,
    asset           TEXT,                     -- CI key
    detail          TEXT NOT NULL             -- JSON object
);
CREATE INDEX events_by_kind ON events(kind, event_id);
CREATE INDEX events_by_asset ON events(asset, event_id);

CREATE TABLE quarantine (
    quarantine_id   INTEGER PRIMARY KEY,
    received_at_ms  INTEGER NOT NULL,
    peer            TEXT NOT NULL,
    stage           TEXT NOT NULL CHECK (stage IN ('datagram', 'envelope')),
    reason          TEXT NOT NULL,
    detail          TEXT NOT NULL,
    agent_claimed   TEXT,
    key_claimed     TEXT,
    seq_claimed     INTEGER,
    raw             BLOB NOT NULL,            -- at most MAX_QUARANTINE_BYTES
    raw_len         INTEGER NOT NULL          -- length of the original
);
CREATE INDEX quarantine_by_reason ON quarantine(reason, quarantine_id);

CREATE TABLE counters (
    name            TEXT PRIMARY KEY,
    value           INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// Version 2: "stale since gap". When envelopes of an agent are lost (a sequence gap), what the
/// CMDB holds for that agent's CIs may be out of date until its next full snapshot applies.
const MIGRATION_2: &str = r#"
ALTER TABLE agents ADD COLUMN stale_since_ms INTEGER;  -- set by a gap, cleared by a summary
ALTER TABLE agents ADD COLUMN stale_from_seq INTEGER;  -- first missing sequence number
ALTER TABLE agents ADD COLUMN stale_to_seq INTEGER;    -- last missing sequence number (grows)
"#;

/// Version 3: key lifecycle. A key handed over to a successor (`KeyHandover`) is *retired*:
/// its row stays (old envelopes still verify against it) with `retired_at_ms`, the successor's
/// id and the handover's sequence number; its `status` stays `active` in the column (SQLite
/// cannot alter the CHECK of migration 1 without rebuilding the table) and reads as `retired`.
/// A revocation records why.
const MIGRATION_3: &str = r#"
ALTER TABLE agent_keys ADD COLUMN retired_at_ms INTEGER;   -- set by a key handover
ALTER TABLE agent_keys ADD COLUMN superseded_by TEXT;      -- the successor key's id
ALTER TABLE agent_keys ADD COLUMN handover_seq INTEGER;    -- envelope that announced it
ALTER TABLE agent_keys ADD COLUMN revoked_reason TEXT;     -- `key revoke --reason`
"#;

/// Version 4: drift judgement. Approved baselines per CI (and per zone, for new devices),
/// change records (RFCs) from an ITSM tool, every judged change with its evidence, and the alert
/// outbox with per-sink delivery state (see `baseline.rs`, `change_record.rs`, `judge.rs`,
/// `alerts.rs`).
const MIGRATION_4: &str = r#"
CREATE TABLE baselines (
    asset_id        INTEGER PRIMARY KEY REFERENCES assets(asset_id),
    approved_at_ms  INTEGER NOT NULL,
    approved_by     TEXT NOT NULL,
    reason          TEXT NOT NULL,
    ticket          TEXT                      -- the change record that moved it, if any
);

CREATE TABLE baseline_attributes (
    asset_id        INTEGER NOT NULL REFERENCES baselines(asset_id),
    attribute       TEXT NOT NULL,
    value           TEXT,
    PRIMARY KEY (asset_id, attribute)
) WITHOUT ROWID;

-- A gateway host's approved facts (JSON object: hostname, os_name, os_version,
-- kernel_version, cpu_arch, interfaces).
CREATE TABLE baseline_gateways (
    ci_key          TEXT PRIMARY KEY,
    facts           TEXT NOT NULL,
    approved_at_ms  INTEGER NOT NULL,
    approved_by     TEXT NOT NULL,
    reason          TEXT NOT NULL,
    ticket          TEXT
);

-- A zone with an approved baseline: a device appearing in it afterwards is a new device.
CREATE TABLE baseline_zones (
    zone            TEXT PRIMARY KEY REFERENCES zones(zone),
    approved_at_ms  INTEGER NOT NULL,
    approved_by     TEXT NOT NULL,
    reason          TEXT NOT NULL
);

CREATE TABLE change_records (
    record_id       INTEGER PRIMARY KEY,
    ticket          TEXT NOT NULL,
    asset           TEXT NOT NULL,            -- CI key
    window_from_ms  INTEGER NOT NULL,
    window_to_ms    INTEGER NOT NULL CHECK (window_to_ms > window_from_ms),
    expect          TEXT NOT NULL,            -- JSON object: attribute → expected value
    auto_confirm    INTEGER NOT NULL CHECK (auto_confirm IN (0, 1)),
    state           TEXT NOT NULL CHECK (state IN ('open', 'implemented', 'confirmed')),
    description     TEXT,
    source          TEXT NOT NULL,            -- `cli` or the imported file
    created_at_ms   INTEGER NOT NULL,
    implemented_at_ms INTEGER,
    confirmed_at_ms INTEGER,
    confirmed_by    TEXT,
    UNIQUE (ticket, asset)
);
CREATE INDEX change_records_by_asset ON change_records(asset, window_from_ms);

-- Every change the collector judged on a baselined CI.
CREATE TABLE detected_changes (
    change_id       INTEGER PRIMARY KEY,
    asset           TEXT NOT NULL,            -- CI key
    verdict         TEXT NOT NULL CHECK (verdict IN ('authorised', 'unauthorised',
                                                     'back_to_baseline', 'unstable')),
    record_id       INTEGER REFERENCES change_records(record_id),
    alert_id        INTEGER,
    observed_at_ms  INTEGER NOT NULL,         -- collector clock (applied)
    agent_time_ms   INTEGER NOT NULL,         -- agent clock (sealed)
    agent_id        TEXT NOT NULL,
    zone            TEXT NOT NULL,
    envelope_seq    INTEGER NOT NULL,
    envelope_hash   TEXT NOT NULL,
    changes         TEXT NOT NULL             -- JSON array: attribute, before, after
);
CREATE INDEX detected_changes_by_record ON detected_changes(record_id);
CREATE INDEX detected_changes_by_asset ON detected_changes(asset, change_id);

-- The alert outbox: written in the transaction that judged the change, delivered later.
CREATE TABLE alerts (
    alert_id        INTEGER PRIMARY KEY,
    raised_at_ms    INTEGER NOT NULL,
    kind            TEXT NOT NULL,            -- unauthorised_change | unstable_value | new_device |
                                              -- device_unreachable
    category        TEXT NOT NULL,            -- identity | new_device | config | presence
    severity_id     INTEGER NOT NULL,         -- OCSF: 2 low, 3 medium, 4 high
    asset           TEXT NOT NULL,
    asset_name      TEXT NOT NULL,
    zone            TEXT NOT NULL,
    agent_id        TEXT NOT NULL,
    agent_time_ms   INTEGER NOT NULL,
    envelope_seq    INTEGER NOT NULL,
    envelope_hash   TEXT NOT NULL,
    detail          TEXT NOT NULL             -- JSON object
);

-- Per sink: alerts up to `delivered_through` are delivered, in order.
CREATE TABLE alert_sinks (
    sink            TEXT PRIMARY KEY,
    delivered_through INTEGER NOT NULL DEFAULT 0,
    delivered       INTEGER NOT NULL DEFAULT 0,
    failures        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    last_attempt_ms INTEGER,
    last_delivered_ms INTEGER
);

CREATE TABLE alert_deliveries (
    alert_id        INTEGER NOT NULL REFERENCES alerts(alert_id),
    sink            TEXT NOT NULL,
    delivered_at_ms INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    PRIMARY KEY (alert_id, sink)
) WITHOUT ROWID;
"#;

/// Presence and confirmation debounce (issue 4): consecutive unreachable polls per asset,
/// changes waiting for confirmation, and the drift settings as `serve` last recorded them.
const MIGRATION_5: &str = r#"
CREATE TABLE presence_streaks (
    asset_id        INTEGER PRIMARY KEY REFERENCES assets(asset_id),
    agent_id        TEXT NOT NULL,
    polls           INTEGER NOT NULL,         -- consecutive unreachable observations
    since_ms        INTEGER NOT NULL,         -- first of them (collector clock)
    alert_id        INTEGER                   -- the device_unreachable alert, once raised
);
CREATE INDEX presence_streaks_by_agent ON presence_streaks(agent_id);
-- Devices already unreachable when this migration runs: one poll counted, and the alert the
-- earlier rule raised (on the first unreachable poll) remembered so it is not raised again.
INSERT INTO presence_streaks (asset_id, agent_id, polls, since_ms, alert_id)
    SELECT a.asset_id, a.agent_id, 1, COALESCE(a.last_polled_ms, a.first_seen_ms, 0),
           (SELECT MAX(alert_id) FROM alerts
             WHERE alerts.asset = a.ci_key AND alerts.kind = 'device_unreachable')
    FROM assets a WHERE a.status = 'unreachable';

-- Confirmation-count debounce: a judged change waiting to be seen in M consecutive polls.
CREATE TABLE pending_changes (
    asset_id        INTEGER PRIMARY KEY REFERENCES assets(asset_id),
    agent_id        TEXT NOT NULL,
    seen            INTEGER NOT NULL,         -- consecutive observations of the current value
    flaps           INTEGER NOT NULL,         -- further changes before it was confirmed
    first_seen_ms   INTEGER NOT NULL,
    first_seq       INTEGER NOT NULL,
    before          TEXT NOT NULL,            -- JSON object: attribute -> value before the change
    unstable_alert_id INTEGER                 -- the unstable_value alert, once raised
);
CREATE INDEX pending_changes_by_agent ON pending_changes(agent_id);

-- Two agents reporting one CI with different judged values (open conflicts only).
CREATE TABLE observation_conflicts (
    asset_id        INTEGER PRIMARY KEY REFERENCES assets(asset_id),
    agent_a         TEXT NOT NULL,
    agent_b         TEXT NOT NULL,
    first_ms        INTEGER NOT NULL,
    last_ms         INTEGER NOT NULL,
    reports         INTEGER NOT NULL,
    alert_id        INTEGER
);

CREATE TABLE drift_settings (
    name            TEXT PRIMARY KEY,
    value           INTEGER NOT NULL
);
"#;

/// Gateway self-inventory (issues 3 and 4): the gateway CI's attributes beyond the `gateways`
/// columns (cpu_model, disks, listening, executables, truncated, switched_off, problems; lists
/// as JSON arrays) and their history, like `asset_attributes` / `attribute_history`.
const MIGRATION_GATEWAY_FACTS: &str = r#"
CREATE TABLE gateway_attributes (
    ci_key          TEXT NOT NULL REFERENCES gateways(ci_key),
    attribute       TEXT NOT NULL,
    value           TEXT,                     -- NULL = no longer reported
    updated_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (ci_key, attribute)
) WITHOUT ROWID;

CREATE TABLE gateway_attribute_history (
    history_id      INTEGER PRIMARY KEY,
    ci_key          TEXT NOT NULL,
    attribute       TEXT NOT NULL,
    old_value       TEXT,                     -- NULL on the first observation
    new_value       TEXT,
    observed_at_ms  INTEGER NOT NULL,
    agent_id        TEXT NOT NULL,
    envelope_seq    INTEGER NOT NULL,
    envelope_hash   TEXT NOT NULL
);
CREATE INDEX gateway_attribute_history_by_ci ON gateway_attribute_history(ci_key, history_id);
"#;

/// Segmentation probes: every result (history) and the latest state per agent and target.
const MIGRATION_PROBES: &str = r#"
CREATE TABLE probe_results (
    result_id       INTEGER PRIMARY KEY,
    agent_id        TEXT NOT NULL,
    zone            TEXT NOT NULL,
    envelope_seq    INTEGER NOT NULL,
    round_started_agent_ms INTEGER NOT NULL,  -- agent clock
    received_at_ms  INTEGER NOT NULL,
    target          TEXT NOT NULL,            -- ip:port probed
    rule            TEXT NOT NULL,            -- the config entry it came from
    expect          TEXT NOT NULL,            -- must_not_reach | may_reach
    outcome         TEXT NOT NULL,            -- connected | refused | timed_out | error
    elapsed_ms      INTEGER NOT NULL,
    detail          TEXT,
    problem         INTEGER NOT NULL          -- 1: contradicts the zone's design
);
CREATE INDEX probe_results_by_agent ON probe_results(agent_id, envelope_seq);
CREATE INDEX probe_results_by_time ON probe_results(received_at_ms);

CREATE TABLE probe_state (
    agent_id        TEXT NOT NULL,
    target          TEXT NOT NULL,
    expect          TEXT NOT NULL,
    zone            TEXT NOT NULL,
    rule            TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    problem         INTEGER NOT NULL,
    since_ms        INTEGER NOT NULL,         -- when the current judgement (problem or not) began
    last_seen_ms    INTEGER NOT NULL,         -- collector clock of the last result
    last_seq        INTEGER NOT NULL,
    alert_id        INTEGER,                  -- the open segmentation_violation / conduit_down
    PRIMARY KEY (agent_id, target, expect)
);
"#;

/// Change events from agents (`Body::Changes`): one row per change with its explicit outcome
/// (see `cmdb/observed_changes.rs`), nothing dropped.
const MIGRATION_OBSERVED_CHANGES: &str = r#"
CREATE TABLE observed_changes (
    change_id       INTEGER PRIMARY KEY,
    received_at_ms  INTEGER NOT NULL,         -- collector clock
    observed_at_ms  INTEGER NOT NULL,         -- agent clock: when the poll that saw it started
    agent_id        TEXT NOT NULL,
    zone            TEXT NOT NULL,
    envelope_seq    INTEGER NOT NULL,
    envelope_hash   TEXT NOT NULL,
    base_summary_seq INTEGER NOT NULL,
    asset           TEXT,                     -- CI key (gateway CI key for host changes)
    asset_name      TEXT,
    category        TEXT NOT NULL,            -- identity, block, unstable, settled, appeared, ...
    attribute       TEXT,                     -- the CMDB attribute it concerns, when one
    before_value    TEXT,                     -- JSON
    after_value     TEXT,                     -- JSON
    truncated       INTEGER NOT NULL DEFAULT 0,
    outcome         TEXT NOT NULL,            -- applied, already_current, unknown_asset, ...
    detail          TEXT                      -- why, for people
);
CREATE INDEX observed_changes_by_asset ON observed_changes(asset, change_id);
CREATE INDEX observed_changes_by_agent ON observed_changes(agent_id, envelope_seq);
"#;

/// Unchanged assets follow their agent's latest summary instead of being rewritten by it.
///
/// `agents.last_summary_ms` / `last_summary_seq` record the agent's latest applied summary
/// (receive time, sequence number). An asset with `follows_agent = 1` was in that summary, so
/// its poll time, its envelope and (while it answers) its last-seen time are the summary's;
/// its own columns hold them only as of its last write. Every reader goes through the
/// `asset_times` view, which works them out; the writer freezes an asset's times into its
/// columns (`follows_agent = 0`) when its agent's next summary does not list it.
const MIGRATION_INGEST_FOLLOWS: &str = r#"
ALTER TABLE agents ADD COLUMN last_summary_ms INTEGER;
ALTER TABLE agents ADD COLUMN last_summary_seq INTEGER;
ALTER TABLE assets ADD COLUMN follows_agent INTEGER NOT NULL DEFAULT 0;

CREATE VIEW asset_times AS
SELECT a.asset_id,
       CASE WHEN a.follows_agent = 1 AND a.status <> 'unreachable'
            THEN COALESCE(g.last_summary_ms, a.last_seen_ms) ELSE a.last_seen_ms END
           AS last_seen_ms,
       CASE WHEN a.follows_agent = 1 THEN COALESCE(g.last_summary_ms, a.last_polled_ms)
            ELSE a.last_polled_ms END AS last_polled_ms,
       CASE WHEN a.follows_agent = 1 THEN COALESCE(g.last_summary_seq, a.last_envelope_seq)
            ELSE a.last_envelope_seq END AS last_envelope_seq
FROM assets a LEFT JOIN agents g ON g.agent_id = a.agent_id;
"#;

/// CI identity and reconciliation (issue 3; see `reconcile.rs`): what a field device's CI key
/// rests on (`identity_basis`: `serial`, `mac` or `address`; every existing CI is `address`,
/// the key form it already has), the serial number and MAC address last reported, the CI that
/// replaced a device at its address, and one row per (CI, agent) observing it.
const MIGRATION_IDENTITY: &str = r#"
ALTER TABLE assets ADD COLUMN identity_basis TEXT NOT NULL DEFAULT 'address'
    CHECK (identity_basis IN ('address', 'mac', 'serial'));
ALTER TABLE assets ADD COLUMN serial TEXT;
ALTER TABLE assets ADD COLUMN mac TEXT;
ALTER TABLE assets ADD COLUMN replaced_by TEXT;        -- CI key of the device now at its address
ALTER TABLE assets ADD COLUMN replaced_at_ms INTEGER;
UPDATE assets SET identity_basis = 'address';
CREATE INDEX assets_by_address ON assets(zone, endpoint, unit_id);
CREATE INDEX assets_by_mac ON assets(zone, mac) WHERE mac IS NOT NULL;

-- Who sees a CI, where: one row per (CI, agent). A device seen by two agents is one CI with
-- two rows; an agent seeing a CI at a new address updates its row (and raises address_changed).
CREATE TABLE asset_observations (
    asset_id        INTEGER NOT NULL REFERENCES assets(asset_id),
    agent_id        TEXT NOT NULL,
    endpoint        TEXT NOT NULL,
    unit_id         INTEGER NOT NULL,
    first_seen_ms   INTEGER NOT NULL,
    last_seen_ms    INTEGER NOT NULL,         -- last summary of this agent that reported it
    PRIMARY KEY (asset_id, agent_id)
) WITHOUT ROWID;
CREATE INDEX asset_observations_by_agent ON asset_observations(agent_id);
INSERT INTO asset_observations (asset_id, agent_id, endpoint, unit_id, first_seen_ms,
                                last_seen_ms)
    SELECT a.asset_id, a.agent_id, a.endpoint, a.unit_id, a.first_seen_ms, t.last_polled_ms
    FROM assets a JOIN asset_times t USING (asset_id);
"#;

/// Reads the schema version of an open database.
pub fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |row| row.get::<_, u32>(0))
}

/// Brings the database at `path` (open as `conn`) to [`SCHEMA_VERSION`]; returns the version
/// it had before.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<u32, CmdbError> {
    let sqlite = |source| CmdbError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let found = version(conn).map_err(sqlite)?;
    if found > SCHEMA_VERSION {
        return Err(CmdbError::TooNew {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let to = i as u32 + 1;
        let fail = |source| CmdbError::Migrate {
            path: path.to_owned(),
            to,
            source,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)
            .map_err(fail)?;
        // Another process may have migrated while we waited for the lock.
        let now = version(&tx).map_err(fail)?;
        if now >= to {
            continue;
        }
        tx.execute_batch(sql).map_err(fail)?;
        tx.pragma_update(None, "user_version", to).map_err(fail)?;
        tx.commit().map_err(fail)?;
        tracing::info!(db = %path.display(), version = to, "applied CMDB schema migration");
    }
    Ok(found)
}
