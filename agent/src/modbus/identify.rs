//! Device identification: FC 43 / MEI 14 Read Device Identification, with FC 17 as fallback.
//!
//! 1. **Stream access**, most objects first: the Extended stream (read code 03: basic, regular
//!    and private objects 0x80–0xFF), then Regular (02), then Basic (01), stopping at the first
//!    that gives objects. A code the device refuses with exception 02/03 (not supported at that
//!    level), or answers with a malformed response, moves on to the next code. Each stream
//!    follows `more_follows` / `next_object_id`: at most [`MAX_PAGES`] requests per stream, and
//!    the next object id must be above the one just asked for (otherwise the device is looping;
//!    stop with a problem note and keep what arrived).
//! 2. **Individual access** (read code 04) as the fallback: when FC 43 is supported but the
//!    streams left a mandatory basic object (0x00–0x02) missing, or gave nothing, each missing
//!    object 0x00–0x06 is asked for on its own (exception 02 means "not there"; at most 7
//!    requests).
//! 3. Objects 0x00–0x06 fill the named [`DeviceIdentity`] fields; any other object id goes to
//!    `other`. Values are lossy UTF-8 (invalid bytes become U+FFFD), NULs and surrounding
//!    whitespace trimmed, capped at [`MAX_VALUE_CHARS`] characters.
//! 4. If FC 43 raised exception 01 Illegal Function, did not answer, or gave no objects at all,
//!    fall back to FC 17 Report Server ID and set `method = ReportServerId`. Its answer is stored
//!    in `other` (FC 43 objects cannot be present then, so the private ids 0x80–0x82 are free):
//!    - `other[0x80]`: the server id byte followed by the additional data, as lowercase hex;
//!    - `other[0x81]`: the run indicator, `on` or `off`;
//!    - `other[0x82]`: the additional data as text, only when it is printable ASCII.
//!
//! [`Identified::how`] records the path that identified the device (`fc43 extended stream`,
//! `fc43 regular stream + individual`, `fc43 individual`, `fc17 report server id`, or `none`).
//! Identification never fails as a whole: what went wrong is reported in
//! [`Identified::problems`], and [`Identified::answered`] / [`Identified::timeouts`] let the
//! caller decide whether the device is reachable at all. Work is bounded: at most
//! 3 × [`MAX_PAGES`] + 7 + 1 requests per unit, each under the request timeout.

use std::collections::BTreeMap;

use outpost_proto::model::{DeviceIdentity, IdentMethod};
use tokio_modbus::ExceptionCode;
use tokio_modbus::prelude::ReadCode;

use super::read_only::{ModbusError, ReadOnlyClient, ServerId};

/// Most requests spent on one FC 43 stream.
pub const MAX_PAGES: usize = 16;
/// Longest identity value kept, in characters.
pub const MAX_VALUE_CHARS: usize = 255;
/// Objects asked for individually (read code 04) when the streams did not give them.
const INDIVIDUAL_OBJECTS: std::ops::RangeInclusive<u8> = 0x00..=0x06;

/// The outcome of identifying one unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identified {
    pub identity: DeviceIdentity,
    /// How the identity was obtained (see the module docs); `none` when nothing identified it.
    pub how: String,
    /// The conformity level byte of the last FC 43 answer (0x01–0x03, 0x81–0x83), if any.
    pub conformity: Option<u8>,
    /// Problem lines for the summary (`identification: …`).
    pub problems: Vec<String>,
    /// The device gave at least one Modbus answer (data or exception).
    pub answered: bool,
    /// Requests that got no answer in time.
    pub timeouts: u32,
    /// Exceptions 0x0A/0x0B: a gateway said the unit behind it is absent or not answering.
    pub gateway_absent: bool,
}

impl Identified {
    fn note(&mut self, err: &ModbusError) {
        if err.is_answer() {
            self.answered = true;
        }
        if matches!(
            err,
            ModbusError::Exception(
                ExceptionCode::GatewayTargetDevice | ExceptionCode::GatewayPathUnavailable
            )
        ) {
            self.gateway_absent = true;
        }
        if matches!(err, ModbusError::Timeout(_)) {
            self.timeouts += 1;
        }
    }

    /// True when the only answers were "gateway: unit absent" exceptions.
    pub fn unit_absent(&self) -> bool {
        self.gateway_absent && self.identity.method == IdentMethod::None
    }
}

/// Objects read from one FC 43 stream, and how the read ended.
struct Stream {
    objects: BTreeMap<u8, Vec<u8>>,
    problem: Option<String>,
}

/// Reads one stream, following `more_follows`. Errs only when the first request failed.
async fn read_stream(
    client: &mut ReadOnlyClient,
    code: ReadCode,
    out: &mut Identified,
) -> Result<Stream, ModbusError> {
    let name = stream_name(code);
    let mut objects = BTreeMap::new();
    let mut asked = 0u8;
    for page in 0..MAX_PAGES {
        let response = match client.read_device_identification(code, asked).await {
            Ok(r) => r,
            Err(e) if page == 0 => {
                out.note(&e);
                return Err(e);
            }
            Err(e) => {
                out.note(&e);
                return Ok(Stream {
                    objects,
                    problem: Some(format!(
                        "identification: FC 43 {name} stream from object {asked:#04x}: {e}"
                    )),
                });
            }
        };
        out.answered = true;
        out.conformity = Some(response.conformity_level.value());
        let got = response.device_id_objects.len();
        for obj in response.device_id_objects {
            objects.insert(obj.id, obj.value.to_vec());
        }
        if !response.more_follows {
            return Ok(Stream {
                objects,
                problem: None,
            });
        }
        let next = response.next_object_id;
        if next <= asked || got == 0 {
            return Ok(Stream {
                objects,
                problem: Some(format!(
                    "identification: FC 43 {name} stream: device asked to continue from object {next:#04x} after {asked:#04x} with {got} objects; stopped to avoid a loop"
                )),
            });
        }
        asked = next;
    }
    Ok(Stream {
        objects,
        problem: Some(format!(
            "identification: FC 43 {name} stream: still more objects after {MAX_PAGES} requests; stopped"
        )),
    })
}

fn stream_name(code: ReadCode) -> &'static str {
    match code {
        ReadCode::Basic => "basic",
        ReadCode::Regular => "regular",
        ReadCode::Extended => "extended",
        ReadCode::Specific => "specific",
    }
}

/// What the stream phase concluded.
enum StreamOutcome {
    /// Objects from this stream (possibly empty), FC 43 is supported.
    Read(ReadCode, BTreeMap<u8, Vec<u8>>),
    /// FC 43 is supported, but every stream code was refused or garbled.
    NoStream,
    /// FC 43 is not there (exception 01), or the device did not answer it.
    Unsupported(String),
}

async fn read_streams(client: &mut ReadOnlyClient, out: &mut Identified) -> StreamOutcome {
    let mut last_refusal = String::new();
    for code in [ReadCode::Extended, ReadCode::Regular, ReadCode::Basic] {
        match read_stream(client, code, out).await {
            Ok(stream) if !stream.objects.is_empty() => {
                out.problems.extend(stream.problem);
                return StreamOutcome::Read(code, stream.objects);
            }
            Ok(stream) => {
                out.problems.extend(stream.problem);
                last_refusal = format!("{} stream gave no objects", stream_name(code));
            }
            Err(ModbusError::Exception(ExceptionCode::IllegalFunction)) => {
                return StreamOutcome::Unsupported("FC 43 exception IllegalFunction".into());
            }
            Err(
                e @ ModbusError::Exception(
                    ExceptionCode::GatewayTargetDevice | ExceptionCode::GatewayPathUnavailable,
                ),
            ) => return StreamOutcome::Unsupported(format!("FC 43 {e}")),
            // Not supported at this level: try the next, smaller category.
            Err(ModbusError::Exception(_)) => {
                last_refusal = format!("{} stream refused", stream_name(code));
            }
            // A malformed answer: a smaller category may still decode.
            Err(e @ (ModbusError::UnexpectedResponse(_) | ModbusError::Garbled(_))) => {
                out.problems.push(format!(
                    "identification: FC 43 {} stream: {e}",
                    stream_name(code)
                ));
                last_refusal = format!("{} stream malformed", stream_name(code));
            }
            // tokio-modbus reports a response it cannot decode as InvalidData, or as
            // UnexpectedEof when the object count or a length runs past the end.
            Err(ModbusError::Transport(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                out.problems.push(format!(
                    "identification: FC 43 {} stream: malformed answer: {e}",
                    stream_name(code)
                ));
                last_refusal = format!("{} stream malformed", stream_name(code));
            }
            // No answer / connection trouble: do not spend more time on FC 43.
            Err(e) => return StreamOutcome::Unsupported(format!("FC 43 {e}")),
        }
    }
    tracing::debug!(peer = %client.peer(), "FC 43 streams: {last_refusal}");
    StreamOutcome::NoStream
}

/// Asks for each missing object 0x00–0x06 with read code 04. Returns how many it got.
async fn read_individually(
    client: &mut ReadOnlyClient,
    objects: &mut BTreeMap<u8, Vec<u8>>,
    out: &mut Identified,
) -> usize {
    let mut got = 0;
    for id in INDIVIDUAL_OBJECTS {
        if objects.contains_key(&id) {
            continue;
        }
        match client
            .read_device_identification(ReadCode::Specific, id)
            .await
        {
            Ok(r) => {
                out.answered = true;
                out.conformity = Some(r.conformity_level.value());
                for obj in r.device_id_objects {
                    if obj.id == id {
                        objects.insert(obj.id, obj.value.to_vec());
                        got += 1;
                    }
                }
            }
            // "No such object": fine, the regular objects are optional.
            Err(ModbusError::Exception(
                ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue,
            )) => out.answered = true,
            Err(e) => {
                out.note(&e);
                out.problems.push(format!(
                    "identification: FC 43 individual access to object {id:#04x}: {e}; stopped"
                ));
                break;
            }
        }
    }
    got
}

/// Identifies the unit `client` currently addresses.
pub async fn identify(client: &mut ReadOnlyClient) -> Identified {
    let mut out = Identified {
        how: "none".into(),
        ..Identified::default()
    };
    let (mut objects, mut how, fc43_supported, failure) = match read_streams(client, &mut out).await
    {
        StreamOutcome::Read(code, objects) => (
            objects,
            format!("fc43 {} stream", stream_name(code)),
            true,
            String::new(),
        ),
        StreamOutcome::NoStream => (
            BTreeMap::new(),
            String::new(),
            true,
            "FC 43 streams refused".to_owned(),
        ),
        StreamOutcome::Unsupported(why) => {
            if !why.contains("IllegalFunction") {
                out.problems.push(format!("identification: {why}"));
            }
            (BTreeMap::new(), String::new(), false, why)
        }
    };
    let basic_missing = (0x00..=0x02).any(|id| !objects.contains_key(&id));
    if fc43_supported && basic_missing {
        let got = read_individually(client, &mut objects, &mut out).await;
        if got > 0 {
            how = if how.is_empty() {
                "fc43 individual".to_owned()
            } else {
                format!("{how} + individual")
            };
        }
    }
    if !objects.is_empty() {
        out.identity = identity_from_objects(&objects);
        out.how = how;
        return out;
    }
    if out.unit_absent() && !fc43_supported {
        // A gateway said the unit is not there: FC 17 would get the same answer.
        out.problems.push(format!("identification: {failure}"));
        return out;
    }
    match client.report_server_id().await {
        Ok(id) => {
            out.answered = true;
            out.identity = identity_from_server_id(&id);
            out.how = "fc17 report server id".into();
        }
        Err(e) => {
            out.note(&e);
            out.problems.push(format!(
                "identification: {failure}; FC 17 {e}; device not identified"
            ));
        }
    }
    out
}

/// Cleans an identity value: lossy UTF-8, NULs and outer whitespace trimmed, length-capped.
pub fn clean_value(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let trimmed = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    trimmed
        .chars()
        .filter(|c| *c != '\0')
        .take(MAX_VALUE_CHARS)
        .collect()
}

/// Maps FC 43 objects to the identity fields.
pub fn identity_from_objects(objects: &BTreeMap<u8, Vec<u8>>) -> DeviceIdentity {
    let mut id = DeviceIdentity {
        method: IdentMethod::ReadDeviceIdentification,
        ..DeviceIdentity::default()
    };
    for (&obj, raw) in objects {
        let value = clean_value(raw);
        let slot = match obj {
            0x00 => &mut id.vendor_name,
            0x01 => &mut id.product_code,
            0x02 => &mut id.revision,
            0x03 => &mut id.vendor_url,
            0x04 => &mut id.product_name,
            0x05 => &mut id.model_name,
            0x06 => &mut id.user_application_name,
            other => {
                id.other.insert(other, value);
                continue;
            }
        };
        *slot = Some(value);
    }
    id
}

/// Maps an FC 17 answer to an identity (see the module docs for where each part goes).
pub fn identity_from_server_id(sid: &ServerId) -> DeviceIdentity {
    let mut bytes = Vec::with_capacity(1 + sid.additional.len());
    bytes.push(sid.server_id);
    bytes.extend_from_slice(&sid.additional);
    let mut hex = outpost_proto::hex::encode(&bytes);
    hex.truncate(2 * MAX_VALUE_CHARS);
    let mut other = BTreeMap::new();
    other.insert(0x80, hex);
    other.insert(0x81, if sid.running { "on" } else { "off" }.to_owned());
    let text = clean_value(&sid.additional);
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        other.insert(0x82, text);
    }
    DeviceIdentity {
        method: IdentMethod::ReportServerId,
        other,
        ..DeviceIdentity::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_cleaned_and_capped() {
        assert_eq!(clean_value(b"  ACME\0\0"), "ACME");
        assert_eq!(clean_value(b"\0V1.2\0"), "V1.2");
        assert_eq!(clean_value(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(clean_value(&[b'x'; 400]).len(), MAX_VALUE_CHARS);
    }

    #[test]
    fn objects_map_to_fields() {
        let mut objects = BTreeMap::new();
        objects.insert(0, b"ACME".to_vec());
        objects.insert(2, b"v2.1".to_vec());
        objects.insert(6, b"Mixer".to_vec());
        objects.insert(0x80, b"serial-9".to_vec());
        let id = identity_from_objects(&objects);
        assert_eq!(id.method, IdentMethod::ReadDeviceIdentification);
        assert_eq!(id.vendor_name.as_deref(), Some("ACME"));
        assert_eq!(id.revision.as_deref(), Some("v2.1"));
        assert_eq!(id.user_application_name.as_deref(), Some("Mixer"));
        assert_eq!(id.product_code, None);
        assert_eq!(id.other.get(&0x80).map(String::as_str), Some("serial-9"));
    }

    #[test]
    fn server_id_mapping() {
        let id = identity_from_server_id(&ServerId {
            server_id: 0x42,
            running: true,
            additional: b"PLC-5".to_vec(),
        });
        assert_eq!(id.method, IdentMethod::ReportServerId);
        assert_eq!(id.other[&0x80], "42504c432d35");
        assert_eq!(id.other[&0x81], "on");
        assert_eq!(id.other[&0x82], "PLC-5");
        let id = identity_from_server_id(&ServerId {
            server_id: 1,
            running: false,
            additional: vec![0, 1, 2],
        });
        assert_eq!(id.other[&0x81], "off");
        assert!(!id.other.contains_key(&0x82));
    }
}
