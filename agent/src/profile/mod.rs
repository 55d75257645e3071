//! Device profiles: what to read from a kind of device, found by what the device says it is.
//!
//! A profile is a TOML file (the built-in ones live in `agent/profiles/` and are compiled in;
//! a user directory can add more, and a user file with the same `name` replaces a built-in
//! one). It names:
//! - `[match]`: which devices it is for. `vendor`, `product` (product code, else model name) and
//!   `revision` are patterns on the FC 43 objects 0x00, 0x01 and 0x02; `server_id` is a pattern
//!   on the FC 17 text, for old devices without FC 43. Patterns are case-insensitive, `*` matches
//!   any run of characters and `[ab]` one of the listed characters. Every FC 43 pattern given
//!   must match; a profile without `vendor` never matches an FC 43 device, and one without
//!   `server_id` never matches an FC 17 device.
//! - `[[blocks]]`: register and coil blocks, each either configuration (baselined; the default)
//!   or `volatile = true` (process values: reported, not judged as drift — the same meaning as
//!   `volatile` on a block in the agent config).
//! - `[firmware]` (optional): where the firmware version lives when FC 43 does not give it.
//! - `[serial]` (optional): `object = 0x80`, the FC 43 object (0x07–0xFF) holding the device's
//!   serial number. The agent reports it, and the collector then identifies the device by
//!   vendor + product code + serial, so it stays one CI when its address changes.
//!
//! When several profiles match, the most specific wins: more patterns given, then more literal
//! characters in them, then the name (so the choice is deterministic). Blocks written in the
//! agent config for a device replace the profile's blocks for it.

mod builtin;
mod pattern;

use std::collections::BTreeMap;
use std::path::Path;

use outpost_proto::model::{DeviceIdentity, IdentMethod, RegisterKind};
use serde::Deserialize;

pub use pattern::Pattern;

/// Largest profile file read.
pub const MAX_PROFILE_BYTES: u64 = 64 * 1024;
/// Most profile files read from a user directory.
pub const MAX_USER_PROFILES: usize = 512;

/// Why a profile (or a profile directory) was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("profile {origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("profile directory {dir}: {source}")]
    Dir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// One block a profile reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileBlock {
    pub name: String,
    pub kind: RegisterKind,
    pub start: u16,
    pub count: u16,
    /// Process values that change in normal operation: reported, never judged as drift.
    #[serde(default)]
    pub volatile: bool,
}

/// How the firmware register's words read as a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirmwareFormat {
    /// Words joined with dots (`2`, `3`, `14` → `2.3.14`); one word reads as its number.
    U16,
    /// Two ASCII characters per word, big-endian, NULs and spaces trimmed.
    Ascii,
}

/// Where the firmware version lives.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firmware {
    pub kind: RegisterKind,
    pub start: u16,
    pub count: u16,
    pub format: FirmwareFormat,
}

impl Firmware {
    /// The version text from the words read.
    pub fn render(&self, words: &[u16]) -> String {
        match self.format {
            FirmwareFormat::U16 => words
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join("."),
            FirmwareFormat::Ascii => {
                let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
                crate::modbus::identify::clean_value(&bytes)
            }
        }
    }
}

/// Where the serial number lives: an FC 43 object beyond the named ones (0x07–0xFF).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSource {
    pub object: u8,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    vendor: Option<String>,
    product: Option<String>,
    revision: Option<String>,
    server_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(rename = "match")]
    matches: RawMatch,
    firmware: Option<Firmware>,
    serial: Option<SerialSource>,
    #[serde(default)]
    blocks: Vec<ProfileBlock>,
}

/// A parsed, validated profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Where it came from: `built-in` or the file path.
    pub origin: String,
    pub vendor: Option<Pattern>,
    pub product: Option<Pattern>,
    pub revision: Option<Pattern>,
    pub server_id: Option<Pattern>,
    pub firmware: Option<Firmware>,
    /// The FC 43 object holding the serial number, if the profile names one.
    pub serial: Option<SerialSource>,
    pub blocks: Vec<ProfileBlock>,
}

const MAX_COUNT: u32 = 2000;

impl Profile {
    /// Parses and checks one profile file's text.
    pub fn parse(text: &str, origin: &str) -> Result<Profile, ProfileError> {
        let bad = |message: String| ProfileError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        let raw: RawProfile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if raw.name.is_empty()
            || raw.name.len() > 64
            || !raw
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(bad(format!(
                "name {:?}: use 1..64 of [A-Za-z0-9._-]",
                raw.name
            )));
        }
        let pat = |field: &str, p: &Option<String>| -> Result<Option<Pattern>, ProfileError> {
            p.as_deref()
                .map(|t| Pattern::new(t).map_err(|e| bad(format!("match.{field}: {e}"))))
                .transpose()
        };
        let m = &raw.matches;
        let (vendor, product, revision, server_id) = (
            pat("vendor", &m.vendor)?,
            pat("product", &m.product)?,
            pat("revision", &m.revision)?,
            pat("server_id", &m.server_id)?,
        );
        if vendor.is_none() && server_id.is_none() {
            return Err(bad(
                "[match] needs `vendor` (FC 43 devices) or `server_id` (FC 17 devices); a profile matching everything is refused"
                    .into(),
            ));
        }
        if vendor.is_none() && (product.is_some() || revision.is_some()) {
            return Err(bad(
                "match.product and match.revision need match.vendor".into()
            ));
        }
        let mut names = std::collections::HashSet::new();
        for b in &raw.blocks {
            let end = u32::from(b.start) + u32::from(b.count);
            if b.count == 0 || u32::from(b.count) > MAX_COUNT || end > 65536 {
                return Err(bad(format!(
                    "block {:?}: count {} from {} must be 1..={MAX_COUNT} and end by address 65535",
                    b.name, b.count, b.start
                )));
            }
            if b.name.trim().is_empty() || !names.insert(b.name.as_str()) {
                return Err(bad(format!(
                    "block name {:?} is empty or used twice",
                    b.name
                )));
            }
        }
        if let Some(f) = &raw.firmware
            && (f.count == 0 || f.count > 16 || u32::from(f.start) + u32::from(f.count) > 65536)
        {
            return Err(bad(format!(
                "firmware: count {} must be 1..=16 and end by address 65535",
                f.count
            )));
        }
        if let Some(s) = raw.serial
            && s.object < 0x07
        {
            return Err(bad(format!(
                "serial: object 0x{:02X} is one of the named objects 0x00-0x06 (vendor, product, \
                 revision, ...); name the object holding the serial number, 0x07-0xFF",
                s.object
            )));
        }
        Ok(Profile {
            name: raw.name,
            description: raw.description,
            origin: origin.to_owned(),
            vendor,
            product,
            revision,
            server_id,
            firmware: raw.firmware,
            serial: raw.serial,
            blocks: raw.blocks,
        })
    }

    /// How specifically this profile matches `id`, or `None` when it does not.
    pub fn score(&self, id: &DeviceIdentity) -> Option<(usize, usize)> {
        let mut used = Vec::new();
        match id.method {
            IdentMethod::ReadDeviceIdentification => {
                let vendor = self.vendor.as_ref()?;
                if !vendor.matches(id.vendor_name.as_deref()?) {
                    return None;
                }
                used.push(vendor);
                let product = id.product_code.as_deref().or(id.model_name.as_deref());
                for (p, value) in [
                    (&self.product, product),
                    (&self.revision, id.revision.as_deref()),
                ] {
                    if let Some(p) = p {
                        if !p.matches(value?) {
                            return None;
                        }
                        used.push(p);
                    }
                }
            }
            IdentMethod::ReportServerId => {
                let p = self.server_id.as_ref()?;
                if !p.matches(id.other.get(&0x82)?) {
                    return None;
                }
                used.push(p);
            }
            IdentMethod::None => return None,
        }
        Some((used.len(), used.iter().map(|p| p.literal_len()).sum()))
    }
}

/// The profiles an agent knows: the built-in ones, overridden and extended by a user directory.
#[derive(Debug, Clone, Default)]
pub struct Library {
    profiles: BTreeMap<String, Profile>,
}

impl Library {
    /// The built-in profiles (compiled in from `agent/profiles/`).
    pub fn builtin() -> Result<Library, ProfileError> {
        let mut lib = Library::default();
        for (file, text) in builtin::FILES {
            let p = Profile::parse(text, &format!("built-in {file}"))?;
            lib.profiles.insert(p.name.clone(), p);
        }
        Ok(lib)
    }

    /// The built-in profiles plus every `*.toml` in `dir` (a user file replaces the built-in
    /// profile of the same name). A bad file is an error naming it.
    pub fn with_dir(dir: &Path) -> Result<Library, ProfileError> {
        let mut lib = Self::builtin()?;
        let dir_err = |source| ProfileError::Dir {
            dir: dir.display().to_string(),
            source,
        };
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(dir_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        if paths.len() > MAX_USER_PROFILES {
            return Err(dir_err(std::io::Error::other(format!(
                "{} profile files; at most {MAX_USER_PROFILES} are read",
                paths.len()
            ))));
        }
        for path in paths {
            let origin = path.display().to_string();
            let bad = |message: String| ProfileError::Invalid {
                origin: origin.clone(),
                message,
            };
            let meta = std::fs::metadata(&path).map_err(|e| bad(e.to_string()))?;
            if meta.len() > MAX_PROFILE_BYTES {
                return Err(bad(format!(
                    "{} bytes; a profile is at most {MAX_PROFILE_BYTES}",
                    meta.len()
                )));
            }
            let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
            let p = Profile::parse(&text, &origin)?;
            lib.profiles.insert(p.name.clone(), p);
        }
        Ok(lib)
    }

    /// Every profile, by name.
    pub fn profiles(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }

    /// The profile named `name`.
    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    /// The most specific profile matching `id`, if any.
    pub fn find(&self, id: &DeviceIdentity) -> Option<&Profile> {
        // BTreeMap order is by name, and max_by_key keeps the last maximum: iterate in reverse
        // so that on equal scores the first name wins.
        self.profiles
            .values()
            .rev()
            .filter_map(|p| p.score(id).map(|s| (s, p)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, p)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fc43(vendor: &str, product: &str, rev: &str) -> DeviceIdentity {
        DeviceIdentity {
            method: IdentMethod::ReadDeviceIdentification,
            vendor_name: Some(vendor.into()),
            product_code: Some(product.into()),
            revision: Some(rev.into()),
            ..DeviceIdentity::default()
        }
    }

    #[test]
    fn builtin_profiles_parse_and_match_the_simulated_plant() {
        let lib = Library::builtin().unwrap();
        assert!(lib.profiles().count() >= 5);
        let m = |v, p| lib.find(&fc43(v, p, "V1")).map(|p| p.name.clone());
        assert_eq!(
            m("Schneider Electric", "TM221CE24T").as_deref(),
            Some("schneider-modicon-m2xx")
        );
        assert_eq!(
            m("schneider electric", "TM241CE40T").as_deref(),
            Some("schneider-modicon-m2xx")
        );
        assert_eq!(
            m("Siemens", "6ES7 214-1AG40-0XB0").as_deref(),
            Some("siemens-s7-1200")
        );
        assert_eq!(
            m("ABB", "ACS580-01-12A7-4").as_deref(),
            Some("abb-acs-drive")
        );
        assert_eq!(
            m("Phoenix Contact", "2703981").as_deref(),
            Some("phoenix-bus-coupler")
        );
        assert_eq!(m("WAGO", "750-8212").as_deref(), Some("wago-pfc200"));
        let coupler = lib.get("phoenix-bus-coupler").unwrap();
        assert_eq!(coupler.serial, Some(SerialSource { object: 0x80 }));
        assert_eq!(m("Schneider Electric", "BMXP342020"), None);
        assert_eq!(m("Unknown", "X"), None);
        let mut old = DeviceIdentity {
            method: IdentMethod::ReportServerId,
            ..DeviceIdentity::default()
        };
        old.other
            .insert(0x82, "Janitza electronics UMG 96-PA V2.3.14".into());
        let janitza = lib.find(&old).unwrap();
        assert_eq!(janitza.name, "janitza-umg");
        assert_eq!(
            janitza.firmware.as_ref().unwrap().render(&[2, 3, 14]),
            "2.3.14"
        );
        assert!(janitza.blocks.iter().any(|b| b.volatile));
    }

    #[test]
    fn the_most_specific_profile_wins_and_user_files_override() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m221-v1.toml"),
            "name = \"m221-v1\"\n[match]\nvendor = \"Schneider Electric\"\nproduct = \"TM221*\"\nrevision = \"V1.*\"\n[[blocks]]\nname = \"c\"\nkind = \"holding\"\nstart = 0\ncount = 1\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("override.toml"),
            "name = \"wago-pfc200\"\n[match]\nvendor = \"WAGO\"\n",
        )
        .unwrap();
        let lib = Library::with_dir(dir.path()).unwrap();
        let m = |v, p, r| lib.find(&fc43(v, p, r)).map(|p| p.name.clone());
        assert_eq!(
            m("Schneider Electric", "TM221CE24T", "V1.11").as_deref(),
            Some("m221-v1")
        );
        assert_eq!(
            m("Schneider Electric", "TM221CE24T", "V2.0").as_deref(),
            Some("schneider-modicon-m2xx")
        );
        let wago = lib.get("wago-pfc200").unwrap();
        assert!(wago.blocks.is_empty());
        assert!(wago.origin.ends_with("override.toml"));
    }

    #[test]
    fn bad_profiles_are_refused_with_the_file_named() {
        let cases = [
            ("name = \"x\"\n[match]\n", "needs `vendor`"),
            (
                "name = \"x\"\n[match]\nproduct = \"A\"\nserver_id = \"B\"\n",
                "need match.vendor",
            ),
            ("name = \"bad name\"\n[match]\nvendor = \"A\"\n", "name"),
            (
                "name = \"x\"\n[match]\nvendor = \"A\"\ncolour = 1\n",
                "unknown field",
            ),
            ("name = \"x\"\n[match]\nvendor = \"A[\"\n", "match.vendor"),
            (
                "name = \"x\"\n[match]\nvendor = \"A\"\n[[blocks]]\nname = \"b\"\nkind = \"holding\"\nstart = 65535\ncount = 2\n",
                "end by address",
            ),
            (
                "name = \"x\"\n[match]\nvendor = \"A\"\n[[blocks]]\nname = \"b\"\nkind = \"coil\"\nstart = 0\ncount = 1\n[[blocks]]\nname = \"b\"\nkind = \"coil\"\nstart = 1\ncount = 1\n",
                "used twice",
            ),
            (
                "name = \"x\"\n[match]\nvendor = \"A\"\n[serial]\nobject = 1\n",
                "named objects",
            ),
        ];
        for (text, want) in cases {
            let err = Profile::parse(text, "f.toml").unwrap_err().to_string();
            assert!(
                err.contains("f.toml") && err.contains(want),
                "{want}: {err}"
            );
        }
    }

    #[test]
    fn missing_directory_is_an_error() {
        let err = Library::with_dir(Path::new("/nonexistent/outpost-profiles")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/outpost-profiles"));
    }
}
