//! What a simulated device is: its identity, unit ids, data tables and behaviour.

use std::time::Duration;

use super::SimError;

/// Longest identification object value accepted: one object must fit a 253-byte Modbus PDU
/// (7 bytes of FC 43 response header, 2 bytes of object id and length).
pub const MAX_OBJECT_LEN: usize = 253 - 7 - 2;

/// A simulated field device: one TCP listener answering for one or more unit ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// A short name (`mixer-plc`), also used in the agent configs tests write.
    pub name: String,
    pub identity: SimIdentity,
    /// Unit ids this device answers for. Each unit gets its own copy of the data tables.
    pub unit_ids: Vec<u8>,
    /// Holding registers (FC 3, writable by FC 6/16): (start address, values).
    pub holding: Vec<(u16, Vec<u16>)>,
    /// Input registers (FC 4): (start address, base values). These are process values: every
    /// read returns a value that differs from the previous read of the same register.
    pub input: Vec<(u16, Vec<u16>)>,
    /// Coils (FC 1, writable by FC 5/15).
    pub coils: Vec<(u16, Vec<bool>)>,
    /// Discrete inputs (FC 2).
    pub discrete: Vec<(u16, Vec<bool>)>,
    pub behaviour: Behaviour,
}

/// The Read Device Identification objects (FC 43 / MEI 14) of a device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SimIdentity {
    /// Object 0x00 (basic, mandatory).
    pub vendor_name: String,
    /// Object 0x01 (basic, mandatory).
    pub product_code: String,
    /// Object 0x02 MajorMinorRevision (basic, mandatory): the firmware version.
    pub revision: String,
    /// Object 0x03 (regular).
    pub vendor_url: Option<String>,
    /// Object 0x04 (regular).
    pub product_name: Option<String>,
    /// Object 0x05 (regular).
    pub model_name: Option<String>,
    /// Object 0x06 (regular).
    pub user_application_name: Option<String>,
    /// Further objects, returned by the extended stream (code 03) and individually (code 04).
    /// Ids must be 0x80..=0xFF (private objects); 0x07..=0x7F are reserved by the spec.
    pub extra: Vec<(u8, String)>,
}

impl SimIdentity {
    /// Every object the device has, sorted by object id.
    pub fn objects(&self) -> Vec<(u8, Vec<u8>)> {
        let mut out = vec![
            (0x00, self.vendor_name.as_bytes().to_vec()),
            (0x01, self.product_code.as_bytes().to_vec()),
            (0x02, self.revision.as_bytes().to_vec()),
        ];
        let regular = [
            (0x03, &self.vendor_url),
            (0x04, &self.product_name),
            (0x05, &self.model_name),
            (0x06, &self.user_application_name),
        ];
        for (id, value) in regular {
            if let Some(v) = value {
                out.push((id, v.as_bytes().to_vec()));
            }
        }
        let mut extra: Vec<(u8, Vec<u8>)> = self
            .extra
            .iter()
            .map(|(id, v)| (*id, v.as_bytes().to_vec()))
            .collect();
        extra.sort_by_key(|(id, _)| *id);
        out.extend(extra);
        out
    }

    /// Checks that every object can be sent: lengths, extra object ids, no duplicates.
    pub fn validate(&self, device: &str) -> Result<(), SimError> {
        let objects = self.objects();
        for (id, value) in &objects {
            if value.len() > MAX_OBJECT_LEN {
                return Err(SimError::BadSpec(format!(
                    "device {device:?}: identification object 0x{id:02X} is {} bytes; \
                     at most {MAX_OBJECT_LEN} fit in one Modbus response",
                    value.len()
                )));
            }
        }
        for (id, _) in &self.extra {
            if *id < 0x80 {
                return Err(SimError::BadSpec(format!(
                    "device {device:?}: extra identification object id 0x{id:02X} is reserved; \
                     use 0x80..=0xFF"
                )));
            }
        }
        if objects.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(SimError::BadSpec(format!(
                "device {device:?}: an extra identification object id appears twice"
            )));
        }
        Ok(())
    }
}

/// How a device behaves on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Answers every request.
    #[default]
    Normal,
    /// Accepts TCP connections and reads requests but never answers (a hung device or a
    /// firewall that lets SYNs through).
    Silent,
    /// An older device: FC 43 gets exception 01 IllegalFunction, FC 17 Report Server ID answers.
    NoDeviceId,
    /// Answers like `Normal`, but only after this delay (a slow serial gateway).
    Slow(Duration),
    /// Answers exception 06 ServerDeviceBusy to its first `n` requests, then like `Normal`.
    Busy(u32),
    /// Answers FC 43 wrongly in one way (everything else like `Normal`).
    BadFc43(Fc43Fault),
}

/// A way of getting FC 43 / MEI 14 wrong, as devices in the field do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fc43Fault {
    /// The object count says two more objects than the response holds.
    WrongCount,
    /// The last object's length runs past the end of the response.
    Truncated,
    /// Object values are not UTF-8 (vendor name `\xFF\xFEACME`).
    InvalidUtf8,
    /// Every stream answer says "more follows" from the next object id, forever.
    EndlessMoreFollows,
    /// Stream access (codes 01–03) refused with exception 03; individual access (04) works.
    IndividualOnly,
    /// Streams leave out object 0x02 (the revision); individual access has it.
    FewerObjects,
}

impl DeviceSpec {
    /// Checks the spec before a plant starts serving it.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.unit_ids.is_empty() {
            return Err(SimError::BadSpec(format!(
                "device {:?} has no unit ids; give at least one (usually 1)",
                self.name
            )));
        }
        self.identity.validate(&self.name)
    }
}
