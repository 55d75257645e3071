//! Reconciliation: which CI an observation is about. The identity rule lives here (the key
//! forms are in [`super::ci_key`]).
//!
//! **The rule.** A field device's CI key rests on the strongest identity it gives, strongest
//! first:
//! 1. `serial`: vendor name (FC 43 object 0x00) + product code (0x01, `-` when absent) + the
//!    serial number its device profile names. Unique by manufacture, so it holds across address
//!    changes, agents and restarts.
//! 2. `mac`: the MAC address the gateway's ARP cache gives for the device's IP, with the unit id
//!    (several unit ids behind one Modbus gateway share its MAC and are different devices).
//! 3. `address`: zone + endpoint + unit id (the form every CI had before; RTU devices and
//!    devices without a serial or a known MAC stay here).
//!
//! **Resolving an observation** (in the envelope's transaction):
//! - a CI with the observation's strongest key exists → that CI. If this agent last saw it at
//!   another endpoint or unit id, the CI's address moves (`address_changed`).
//! - else the CI currently at the same zone + endpoint + unit id (not replaced), if any:
//!   - it rests on a stronger identity than this observation gives (an unreachable poll, a
//!     serial not read this time) → that CI, unchanged;
//!   - it rests on a weaker identity → it gains the stronger key (`ci_rekeyed`): one CI, its
//!     history, baseline (by asset id), change records, relations and events move with it;
//!   - it rests on an identity of the same strength that differs (another serial, another MAC)
//!     → a different device took its place: a new CI, the old one marked `replaced_by` it
//!     (`device_replaced`). A MAC-keyed CI whose MAC differs from the observation's is replaced
//!     too, not re-keyed onto a serial. A replaced device that answers again (swapped back) is
//!     current again, and the CI at the address it answers on is marked replaced by it.
//! - else a new CI with the strongest key.
//!
//! **Ambiguous cases.**
//! - Two observations in one summary claim the same serial at different addresses: the serial
//!   is not used for either (`identity_duplicate` on each); each falls back to its MAC or
//!   address key, so the two devices never merge.
//! - One MAC behind several unit ids (a Modbus gateway): normal; the unit id is part of the MAC
//!   key, so each unit is its own CI (`identity_shared`, once, when the second one appears).
//! - A device seen by two agents: one CI, one row per agent in `asset_observations` (agent,
//!   endpoint, unit, first and last seen). Two agents reporting the same serial at different
//!   addresses are taken to see one device (a serial is unique by manufacture).
//! - Evidence that cannot identify anything is refused with a counter (`identity_refused`) and a
//!   log line, and the observation falls back to the next rule: a MAC that is not six hex
//!   octets or is all-zero, broadcast or multicast; a serial that is empty, longer than
//!   [`MAX_SERIAL_LEN`], has control characters or is a placeholder (`0000`, `N/A`, `unknown`,
//!   one repeated character), or comes without a vendor name.
//!
//! Observations are resolved strongest identity first, so a device that moved to a new
//! address has moved before the poll of its old, now silent, address is looked at.

use std::collections::HashMap;

use outpost_proto::ZoneId;
use outpost_proto::model::AssetObservation;
use rusqlite::{OptionalExtension, params};
use serde_json::json;

use super::apply::Writer;
use super::ci_key;
use super::record::kind;
use crate::time::sql_int;

/// Longest serial number used for identity (bytes).
pub const MAX_SERIAL_LEN: usize = 128;

/// What a CI key rests on, weakest first (the order is the strength).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Basis {
    Address,
    Mac,
    Serial,
}

impl Basis {
    /// The stored name (`assets.identity_basis`).
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Address => "address",
            Basis::Mac => "mac",
            Basis::Serial => "serial",
        }
    }

    /// From the stored name; anything unknown reads as the weakest.
    pub fn parse(text: &str) -> Basis {
        match text {
            "serial" => Basis::Serial,
            "mac" => Basis::Mac,
            _ => Basis::Address,
        }
    }
}

/// The identity one observation offers, worked out without the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The strongest key the observation supports (the key a new CI gets).
    pub key: String,
    pub basis: Basis,
    /// The serial number, when usable (even if a duplicate kept it from being the key).
    pub serial: Option<String>,
    /// The normalised MAC address, when usable.
    pub mac: Option<String>,
    /// Another observation of the same summary claims this serial key: it is not used.
    pub duplicate_of: Option<String>,
    /// Evidence refused, one line each (counted and logged when applied).
    pub refused: Vec<String>,
}

/// The candidates of a summary's observations, in order; a serial claimed by two or more
/// observations is used by none of them.
pub fn candidates(zone: &ZoneId, observations: &[AssetObservation]) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = observations
        .iter()
        .map(|obs| candidate(zone, obs, true))
        .collect();
    let mut claims: HashMap<&str, usize> = HashMap::new();
    for c in out.iter().filter(|c| c.basis == Basis::Serial) {
        *claims.entry(c.key.as_str()).or_insert(0) += 1;
    }
    let duplicated: Vec<String> = claims
        .into_iter()
        .filter(|&(_, n)| n > 1)
        .map(|(k, _)| k.to_owned())
        .collect();
    if duplicated.is_empty() {
        return out;
    }
    for (obs, c) in observations.iter().zip(out.iter_mut()) {
        if c.basis == Basis::Serial && duplicated.contains(&c.key) {
            let claimed = std::mem::take(&mut c.key);
            *c = candidate(zone, obs, false);
            c.duplicate_of = Some(claimed);
        }
    }
    out
}

/// One observation's candidate; `use_serial` false skips rule 1.
pub fn candidate(zone: &ZoneId, obs: &AssetObservation, use_serial: bool) -> Candidate {
    let mut refused = Vec::new();
    let mac = obs.mac.as_deref().and_then(|m| match normalise_mac(m) {
        Some(mac) => Some(mac),
        None => {
            refused.push(format!(
                "mac {m:?} is not a unicast MAC address (six hex octets, not all zero)"
            ));
            None
        }
    });
    let serial = obs.serial.as_deref().and_then(|s| match clean_serial(s) {
        Ok(s) => Some(s),
        Err(why) => {
            refused.push(format!("serial {s:?}: {why}"));
            None
        }
    });
    let vendor = obs.identity.vendor_name.as_deref().map(str::trim);
    let serial_key = match (&serial, vendor) {
        (Some(s), Some(v)) if !v.is_empty() => {
            let product = obs
                .identity
                .product_code
                .as_deref()
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .unwrap_or("-");
            Some(ci_key::asset_serial(zone, v, product, s))
        }
        (Some(_), _) => {
            refused.push("serial without a vendor name (FC 43 object 0x00)".into());
            None
        }
        _ => None,
    };
    let (key, basis) = match (serial_key.filter(|_| use_serial), &mac) {
        (Some(k), _) => (k, Basis::Serial),
        (None, Some(m)) => (ci_key::asset_mac(zone, m, obs.unit_id), Basis::Mac),
        (None, None) => (
            ci_key::asset(zone, &obs.endpoint, obs.unit_id),
            Basis::Address,
        ),
    };
    Candidate {
        key,
        basis,
        serial,
        mac,
        duplicate_of: None,
        refused,
    }
}

/// `aa:bb:cc:dd:ee:ff` from six hex octets separated by `:` or `-`; `None` for anything else
/// and for addresses that name no single device (all zero, broadcast, multicast).
pub fn normalise_mac(text: &str) -> Option<String> {
    let parts: Vec<&str> = text.trim().split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut octets = [0u8; 6];
    for (o, p) in octets.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return None;
        }
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    if octets == [0; 6] || octets[0] & 1 == 1 {
        return None;
    }
    Some(
        octets
            .iter()
            .map(|o| format!("{o:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// A serial number fit to identify a device, trimmed; why not otherwise.
pub fn clean_serial(text: &str) -> Result<String, &'static str> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty");
    }
    if s.len() > MAX_SERIAL_LEN {
        return Err("longer than 128 bytes");
    }
    if s.chars().any(char::is_control) {
        return Err("contains control characters");
    }
    const PLACEHOLDERS: &[&str] = &[
        "n/a", "na", "none", "null", "unknown", "default", "serial", "sn", "-", "tbd",
    ];
    let lower = s.to_ascii_lowercase();
    let mut chars = s.chars();
    let first = chars.next();
    if PLACEHOLDERS.contains(&lower.as_str()) || chars.all(|c| Some(c) == first) {
        return Err("a placeholder, not a serial number");
    }
    Ok(s.to_owned())
}

/// A stored CI, as far as reconciliation needs it.
struct Ci {
    id: i64,
    key: String,
    basis: Basis,
    serial: Option<String>,
    mac: Option<String>,
    endpoint: String,
    unit_id: u8,
    replaced: bool,
}

const CI_COLUMNS: &str = "asset_id, ci_key, identity_basis, serial, mac, endpoint, unit_id,
     replaced_at_ms IS NOT NULL FROM assets";

fn ci_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Ci> {
    Ok(Ci {
        id: r.get(0)?,
        key: r.get(1)?,
        basis: Basis::parse(&r.get::<_, String>(2)?),
        serial: r.get(3)?,
        mac: r.get(4)?,
        endpoint: r.get(5)?,
        unit_id: r.get(6)?,
        replaced: r.get(7)?,
    })
}

impl Writer<'_, '_> {
    /// Decides which CI `obs` is about: `(Some(asset id), key)` for an existing CI (re-keyed or
    /// moved as the rule says), `(None, key)` for a new one (the caller inserts it and then
    /// calls [`Writer::identified`]).
    pub(super) fn resolve(
        &mut self,
        obs: &AssetObservation,
        cand: &Candidate,
    ) -> rusqlite::Result<(Option<i64>, String)> {
        for why in &cand.refused {
            tracing::warn!(agent = %self.meta.agent, seq = self.meta.seq, device = %obs.name,
                endpoint = %obs.endpoint, unit = obs.unit_id, "identity evidence refused: {why}; \
                the device is identified by the next rule (fix the device profile or ARP entry)");
            self.count("identity_refused", 1);
        }
        let endpoint = obs.endpoint.to_string();
        let by_key = self.ci_by_key(&cand.key)?;
        let resolved = match by_key {
            // A replaced CI comes back only on a serial or MAC, never on an address alone.
            Some(ci) if !ci.replaced || cand.basis > Basis::Address => {
                if ci.replaced {
                    self.back(&ci, obs, cand)?;
                }
                self.remember(&ci, cand)?;
                (Some(ci.id), ci.key)
            }
            by_key => match self.ci_at(&endpoint, obs.unit_id)? {
                Some(ci) => {
                    let mac_differs = matches!((&ci.mac, &cand.mac), (Some(a), Some(b)) if a != b);
                    if ci.basis > cand.basis
                        || (ci.basis == cand.basis && cand.basis == Basis::Address)
                    {
                        (Some(ci.id), ci.key)
                    } else if ci.basis == cand.basis || (ci.basis == Basis::Mac && mac_differs) {
                        self.replaced(&ci, obs, cand)?;
                        (None, cand.key.clone())
                    } else {
                        self.rekey(&ci, obs, cand)?;
                        (Some(ci.id), cand.key.clone())
                    }
                }
                // Nothing current at this address: the replaced address CI it names.
                None => match by_key {
                    Some(ci) => (Some(ci.id), ci.key),
                    None => (None, cand.key.clone()),
                },
            },
        };
        if let Some(claimed) = &cand.duplicate_of
            && !self.duplicate_known(&resolved.1, claimed)?
        {
            self.count("identity_duplicates", 1);
            let detail = json!({
                "claimed_key": claimed,
                "serial": cand.serial,
                "endpoint": endpoint,
                "unit_id": obs.unit_id,
                "used_key": resolved.1,
                "note": "another device in the same summary reports this serial number: \
                         neither is identified by it; each keeps its MAC or address key",
            });
            self.event(kind::IDENTITY_DUPLICATE, Some(&resolved.1), detail)?;
        }
        Ok(resolved)
    }

    /// A new CI was inserted for `cand`: record what its key rests on.
    pub(super) fn identified(
        &mut self,
        id: i64,
        key: &str,
        cand: &Candidate,
    ) -> rusqlite::Result<()> {
        self.db
            .prepare_cached(
                "UPDATE assets SET identity_basis = ?2, serial = ?3, mac = ?4 WHERE asset_id = ?1",
            )?
            .execute(params![id, cand.basis.as_str(), cand.serial, cand.mac])?;
        if cand.basis == Basis::Mac {
            self.shared_mac(id, key, cand)?;
        }
        Ok(())
    }

    /// Records that this agent reported CI `id` at the observation's endpoint and unit; a CI
    /// this agent last saw elsewhere moves there (`address_changed`).
    pub(super) fn observed(
        &mut self,
        id: i64,
        key: &str,
        obs: &AssetObservation,
    ) -> rusqlite::Result<()> {
        let endpoint = obs.endpoint.to_string();
        let agent = self.meta.agent.as_str();
        let before: Option<(String, u8)> = self
            .db
            .prepare_cached(
                "SELECT endpoint, unit_id FROM asset_observations
                 WHERE asset_id = ?1 AND agent_id = ?2",
            )?
            .query_row(params![id, agent], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        self.db
            .prepare_cached(
                "INSERT INTO asset_observations (asset_id, agent_id, endpoint, unit_id,
                     first_seen_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT (asset_id, agent_id) DO UPDATE SET endpoint = excluded.endpoint,
                     unit_id = excluded.unit_id, last_seen_ms = excluded.last_seen_ms",
            )?
            .execute(params![id, agent, endpoint, obs.unit_id, self.now])?;
        let Some((old_endpoint, old_unit)) = before else {
            return Ok(());
        };
        if old_endpoint == endpoint && old_unit == obs.unit_id {
            return Ok(());
        }
        self.db
            .prepare_cached(
                "UPDATE assets SET endpoint = ?2, unit_id = ?3, replaced_by = NULL,
                     replaced_at_ms = NULL
                 WHERE asset_id = ?1",
            )?
            .execute(params![id, endpoint, obs.unit_id])?;
        // A placeholder CI at the new address that never answered (the agent polled an address
        // nothing answered on) was this device all along.
        let placeholders: Vec<i64> = self
            .db
            .prepare_cached(
                "UPDATE assets SET replaced_by = ?4, replaced_at_ms = ?5
                 WHERE zone = ?1 AND endpoint = ?2 AND unit_id = ?3 AND asset_id <> ?6
                     AND identity_basis = 'address' AND last_seen_ms IS NULL
                     AND replaced_at_ms IS NULL
                 RETURNING asset_id",
            )?
            .query_map(
                params![
                    self.meta.zone.as_str(),
                    endpoint,
                    obs.unit_id,
                    key,
                    self.now,
                    id
                ],
                |r| r.get(0),
            )?
            .collect::<rusqlite::Result<_>>()?;
        if !placeholders.is_empty() {
            self.count(
                "address_placeholders_replaced",
                sql_int(placeholders.len() as u64),
            );
            self.reidentified.extend(placeholders);
        }
        self.reidentified.push(id);
        self.moved_between_agents = true;
        self.count("address_changes", 1);
        let detail = json!({
            "old_endpoint": old_endpoint,
            "old_unit_id": old_unit,
            "endpoint": endpoint,
            "unit_id": obs.unit_id,
            "serial": obs.serial,
            "mac": obs.mac,
        });
        self.event(kind::ADDRESS_CHANGED, Some(key), detail)
    }

    /// The last-seen time of this agent's observation rows for unchanged CIs that another
    /// agent reports (`ids`, from `follow`). The row of a CI's own agent is never written for
    /// an unchanged CI: like the CI's times it follows that agent's latest summary, and readers
    /// take the later of the row and `asset_times` (see `query.rs`), so a steady-state summary
    /// writes no observation row. One statement; the ids travel as one JSON array.
    pub(super) fn observed_unchanged(&mut self, ids: &[i64]) -> rusqlite::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let list = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
        self.db
            .prepare_cached(
                "UPDATE asset_observations SET last_seen_ms = ?1
                 WHERE agent_id = ?2 AND asset_id IN (SELECT value FROM json_each(?3))",
            )?
            .execute(params![self.now, self.meta.agent.as_str(), list])?;
        Ok(())
    }

    /// Before a CI passes from `old_agent` to this one, freezes `old_agent`'s observation row
    /// at the time that agent last reported it (its row followed the CI's times until now).
    pub(super) fn freeze_observation(&mut self, id: i64, old_agent: &str) -> rusqlite::Result<()> {
        self.db
            .prepare_cached(
                "UPDATE asset_observations SET last_seen_ms = MAX(last_seen_ms,
                     COALESCE((SELECT t.last_polled_ms FROM asset_times t WHERE t.asset_id = ?1),
                              last_seen_ms))
                 WHERE asset_id = ?1 AND agent_id = ?2",
            )?
            .execute(params![id, old_agent])?;
        Ok(())
    }

    /// True when `asset` already has an `identity_duplicate` event for `claimed` (raised once,
    /// not on every poll of a device whose content changes).
    fn duplicate_known(&mut self, asset: &str, claimed: &str) -> rusqlite::Result<bool> {
        self.db
            .prepare_cached(
                "SELECT 1 FROM events WHERE asset = ?1 AND kind = 'identity_duplicate'
                     AND json_extract(detail, '$.claimed_key') = ?2 LIMIT 1",
            )?
            .exists(params![asset, claimed])
    }

    fn ci_by_key(&mut self, key: &str) -> rusqlite::Result<Option<Ci>> {
        self.db
            .prepare_cached(&format!("SELECT {CI_COLUMNS} WHERE ci_key = ?1"))?
            .query_row([key], ci_row)
            .optional()
    }

    /// The CI most recently polled at this zone, endpoint and unit id that was not replaced.
    fn ci_at(&mut self, endpoint: &str, unit_id: u8) -> rusqlite::Result<Option<Ci>> {
        self.db
            .prepare_cached(&format!(
                "SELECT {CI_COLUMNS} WHERE zone = ?1 AND endpoint = ?2 AND unit_id = ?3
                     AND replaced_at_ms IS NULL
                 ORDER BY last_polled_ms DESC, asset_id DESC LIMIT 1"
            ))?
            .query_row(params![self.meta.zone.as_str(), endpoint, unit_id], ci_row)
            .optional()
    }

    /// A CI found by its key learns a serial or MAC it did not have.
    fn remember(&mut self, ci: &Ci, cand: &Candidate) -> rusqlite::Result<()> {
        let serial = cand
            .serial
            .as_ref()
            .filter(|s| ci.serial.as_ref() != Some(*s));
        let mac = cand.mac.as_ref().filter(|m| ci.mac.as_ref() != Some(*m));
        if serial.is_none() && mac.is_none() {
            return Ok(());
        }
        self.db
            .prepare_cached(
                "UPDATE assets SET serial = COALESCE(?2, serial), mac = COALESCE(?3, mac)
                 WHERE asset_id = ?1",
            )?
            .execute(params![ci.id, serial, mac])?;
        Ok(())
    }

    /// `ci` gains `cand`'s stronger key; everything stored under its old key moves with it.
    fn rekey(&mut self, ci: &Ci, obs: &AssetObservation, cand: &Candidate) -> rusqlite::Result<()> {
        let (old, new) = (ci.key.as_str(), cand.key.as_str());
        self.db
            .prepare_cached(
                "UPDATE assets SET ci_key = ?2, identity_basis = ?3,
                     serial = COALESCE(?4, serial), mac = COALESCE(?5, mac)
                 WHERE asset_id = ?1",
            )?
            .execute(params![
                ci.id,
                new,
                cand.basis.as_str(),
                cand.serial,
                cand.mac
            ])?;
        self.reidentified.push(ci.id);
        for sql in [
            "UPDATE OR IGNORE relations SET from_ci = ?2 WHERE from_ci = ?1",
            "UPDATE OR IGNORE change_records SET asset = ?2 WHERE asset = ?1",
            "UPDATE detected_changes SET asset = ?2 WHERE asset = ?1",
            "UPDATE events SET asset = ?2 WHERE asset = ?1",
        ] {
            self.db.prepare_cached(sql)?.execute(params![old, new])?;
        }
        // Relations the new key already had (none, normally) kept theirs; drop the leftovers.
        self.db
            .prepare_cached("DELETE FROM relations WHERE from_ci = ?1")?
            .execute([old])?;
        self.moved_between_agents = true;
        self.count("assets_rekeyed", 1);
        let detail = json!({
            "old_key": old,
            "new_key": new,
            "old_basis": ci.basis.as_str(),
            "new_basis": cand.basis.as_str(),
            "serial": cand.serial,
            "mac": cand.mac,
            "endpoint": obs.endpoint.to_string(),
            "unit_id": obs.unit_id,
        });
        self.event(kind::CI_REKEYED, Some(new), detail)?;
        if cand.basis == Basis::Mac {
            self.shared_mac(ci.id, new, cand)?;
        }
        Ok(())
    }

    /// A different device now answers at `ci`'s address: `ci` is marked replaced by the new
    /// CI the caller inserts under `cand.key`.
    fn replaced(
        &mut self,
        ci: &Ci,
        obs: &AssetObservation,
        cand: &Candidate,
    ) -> rusqlite::Result<()> {
        self.db
            .prepare_cached(
                "UPDATE assets SET replaced_by = ?2, replaced_at_ms = ?3 WHERE asset_id = ?1",
            )?
            .execute(params![ci.id, cand.key, self.now])?;
        self.reidentified.push(ci.id);
        self.moved_between_agents = true;
        self.count("devices_replaced", 1);
        let detail = json!({
            "replaced_by": cand.key,
            "endpoint": ci.endpoint,
            "unit_id": ci.unit_id,
            "old_serial": ci.serial,
            "new_serial": cand.serial,
            "old_mac": ci.mac,
            "new_mac": cand.mac,
            "name": obs.name,
        });
        let old = ci.key.clone();
        self.event(kind::DEVICE_REPLACED, Some(&old), detail)
    }

    /// A device marked replaced answers again (swapped back, or moved elsewhere): it is current
    /// again, and whatever CI stood at the address it answers on is replaced by it.
    fn back(&mut self, ci: &Ci, obs: &AssetObservation, cand: &Candidate) -> rusqlite::Result<()> {
        self.db
            .prepare_cached(
                "UPDATE assets SET replaced_by = NULL, replaced_at_ms = NULL WHERE asset_id = ?1",
            )?
            .execute([ci.id])?;
        self.reidentified.push(ci.id);
        let endpoint = obs.endpoint.to_string();
        if let Some(current) = self.ci_at(&endpoint, obs.unit_id)?
            && current.id != ci.id
        {
            self.replaced(&current, obs, cand)?;
        }
        self.moved_between_agents = true;
        Ok(())
    }

    /// Raises `identity_shared` when another unit id already stands behind this MAC.
    fn shared_mac(&mut self, id: i64, key: &str, cand: &Candidate) -> rusqlite::Result<()> {
        let mut units: Vec<u8> = Vec::new();
        {
            let mut stmt = self.db.prepare_cached(
                "SELECT unit_id FROM assets WHERE zone = ?1 AND mac = ?2 AND asset_id <> ?3
                     AND identity_basis = 'mac' AND replaced_at_ms IS NULL
                 ORDER BY unit_id LIMIT 256",
            )?;
            let rows = stmt.query_map(params![self.meta.zone.as_str(), cand.mac, id], |r| {
                r.get::<_, u8>(0)
            })?;
            for unit in rows {
                units.push(unit?);
            }
        }
        if units.is_empty() {
            return Ok(());
        }
        self.count("identity_shared", 1);
        let detail = json!({
            "mac": cand.mac,
            "other_unit_ids": units,
            "note": "several unit ids behind one MAC address (a Modbus gateway): each unit id \
                     is its own CI",
        });
        self.event(kind::IDENTITY_SHARED, Some(key), detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_normalised_and_non_unicast_refused() {
        assert_eq!(
            normalise_mac("02-AB-cd-00-11-22").as_deref(),
            Some("02:ab:cd:00:11:22")
        );
        assert_eq!(normalise_mac("00:00:00:00:00:00"), None);
        assert_eq!(normalise_mac("ff:ff:ff:ff:ff:ff"), None);
        assert_eq!(normalise_mac("01:00:5e:00:00:01"), None);
        assert_eq!(normalise_mac("02:ab:cd:00:11"), None);
        assert_eq!(normalise_mac("02:ab:cd:00:11:2"), None);
        assert_eq!(normalise_mac("02:ab:cd:00:11:zz"), None);
    }

    #[test]
    fn placeholder_serials_are_refused() {
        assert_eq!(clean_serial("  SN 1234567 ").as_deref(), Ok("SN 1234567"));
        for bad in [
            "",
            "   ",
            "0000000",
            "N/A",
            "unknown",
            "x\u{7}y",
            &"a1".repeat(100),
        ] {
            assert!(clean_serial(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn basis_order_is_strength() {
        assert!(Basis::Serial > Basis::Mac && Basis::Mac > Basis::Address);
        for b in [Basis::Address, Basis::Mac, Basis::Serial] {
            assert_eq!(Basis::parse(b.as_str()), b);
        }
    }
}
