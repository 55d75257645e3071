//! FC 43 / MEI 14 Read Device Identification, answered per the Modbus Application Protocol
//! v1.1b3 §6.21.
//!
//! - Stream access: code 01 (basic) returns objects 0x00–0x02, code 02 (regular) 0x00–0x06,
//!   code 03 (extended) those plus the private objects 0x80–0xFF, starting at the requested
//!   object id. A start id the device does not have in that category restarts the stream at
//!   object 0x00 (as the spec says).
//! - Objects go into the response in id order while they fit the 253-byte PDU; when the next
//!   one does not, `more_follows` is 0xFF and `next_object_id` names it, so the client asks
//!   again from there. The last response has `more_follows` 0x00 and `next_object_id` 0x00.
//! - Code 04 (individual access) returns exactly the requested object, or exception 02
//!   IllegalDataAddress when the device does not have it.
//! - The conformity level is 0x81, 0x82 or 0x83 (basic, regular, extended; individual access
//!   supported) depending on which objects the device has.

use tokio_modbus::ExceptionCode;
use tokio_modbus::bytes::Bytes;
use tokio_modbus::prelude::{
    ConformityLevel, DeviceIdObject, ReadCode, ReadDeviceIdentificationResponse,
};

use super::spec::{Fc43Fault, SimIdentity};
use tokio_modbus::Response;

/// Largest Modbus PDU.
const MAX_PDU: usize = 253;
/// Function code, MEI type, read code, conformity, more follows, next object id, object count.
const RESPONSE_HEADER: usize = 7;

/// Answers one Read Device Identification request.
pub fn answer(
    identity: &SimIdentity,
    code: ReadCode,
    start: u8,
) -> Result<ReadDeviceIdentificationResponse, ExceptionCode> {
    let objects = identity.objects();
    let conformity_level = conformity(&objects);
    if code == ReadCode::Specific {
        let Some((id, value)) = objects.into_iter().find(|(id, _)| *id == start) else {
            return Err(ExceptionCode::IllegalDataAddress);
        };
        return Ok(ReadDeviceIdentificationResponse {
            read_code: code,
            conformity_level,
            more_follows: false,
            next_object_id: 0,
            device_id_objects: vec![DeviceIdObject {
                id,
                value: Bytes::from(value),
            }],
        });
    }
    let stream: Vec<(u8, Vec<u8>)> = objects
        .into_iter()
        .filter(|(id, _)| in_category(code, *id))
        .collect();
    let begin = stream.iter().position(|(id, _)| *id == start).unwrap_or(0);
    let mut size = RESPONSE_HEADER;
    let mut device_id_objects = Vec::new();
    let mut next = None;
    for (id, value) in stream.into_iter().skip(begin) {
        if size + 2 + value.len() > MAX_PDU {
            next = Some(id);
            break;
        }
        size += 2 + value.len();
        device_id_objects.push(DeviceIdObject {
            id,
            value: Bytes::from(value),
        });
    }
    Ok(ReadDeviceIdentificationResponse {
        read_code: code,
        conformity_level,
        more_follows: next.is_some(),
        next_object_id: next.unwrap_or(0),
        device_id_objects,
    })
}

/// Answers one Read Device Identification request the way a device with `fault` would. The
/// malformed answers are encoded by hand (`Response::Custom(0x2B, ..)`), since tokio-modbus's
/// encoder only writes well-formed ones.
pub fn faulty(
    identity: &SimIdentity,
    fault: Fc43Fault,
    code: ReadCode,
    start: u8,
) -> Result<Response, ExceptionCode> {
    let good = || answer(identity, code, start);
    match fault {
        Fc43Fault::IndividualOnly => {
            if code == ReadCode::Specific {
                Ok(Response::ReadDeviceIdentification(good()?))
            } else {
                Err(ExceptionCode::IllegalDataValue)
            }
        }
        Fc43Fault::FewerObjects => {
            let mut r = good()?;
            if code != ReadCode::Specific {
                r.device_id_objects.retain(|o| o.id != 0x02);
            }
            Ok(Response::ReadDeviceIdentification(r))
        }
        Fc43Fault::InvalidUtf8 => {
            let mut r = good()?;
            for o in &mut r.device_id_objects {
                if o.id == 0x00 {
                    let mut v = vec![0xFF, 0xFE];
                    v.extend_from_slice(&o.value);
                    o.value = Bytes::from(v);
                }
            }
            Ok(Response::ReadDeviceIdentification(r))
        }
        Fc43Fault::EndlessMoreFollows => {
            let objects = identity.objects();
            let value = objects.first().map(|(_, v)| v.clone()).unwrap_or_default();
            Ok(Response::ReadDeviceIdentification(
                ReadDeviceIdentificationResponse {
                    read_code: code,
                    conformity_level: conformity(&objects),
                    more_follows: true,
                    next_object_id: start.wrapping_add(1),
                    device_id_objects: vec![DeviceIdObject {
                        id: start,
                        value: Bytes::from(value),
                    }],
                },
            ))
        }
        Fc43Fault::WrongCount | Fc43Fault::Truncated => {
            let r = good()?;
            let mut pdu = vec![
                0x0E,
                read_code_byte(code),
                r.conformity_level.value(),
                if r.more_follows { 0xFF } else { 0x00 },
                r.next_object_id,
            ];
            let count = r.device_id_objects.len();
            let declared = if fault == Fc43Fault::WrongCount {
                count + 2
            } else {
                count
            };
            pdu.push(u8::try_from(declared).unwrap_or(u8::MAX));
            for (i, o) in r.device_id_objects.iter().enumerate() {
                pdu.push(o.id);
                let len = o.value.len();
                if fault == Fc43Fault::Truncated && i + 1 == count {
                    // Claims 40 more bytes than it carries.
                    pdu.push(u8::try_from(len + 40).unwrap_or(u8::MAX));
                } else {
                    pdu.push(u8::try_from(len).unwrap_or(u8::MAX));
                }
                pdu.extend_from_slice(&o.value);
            }
            Ok(Response::Custom(0x2B, Bytes::from(pdu)))
        }
    }
}

fn read_code_byte(code: ReadCode) -> u8 {
    match code {
        ReadCode::Basic => 0x01,
        ReadCode::Regular => 0x02,
        ReadCode::Extended => 0x03,
        ReadCode::Specific => 0x04,
    }
}

fn in_category(code: ReadCode, id: u8) -> bool {
    match code {
        ReadCode::Basic => id <= 0x02,
        ReadCode::Regular => id <= 0x06,
        ReadCode::Extended | ReadCode::Specific => true,
    }
}

fn conformity(objects: &[(u8, Vec<u8>)]) -> ConformityLevel {
    let top = objects.iter().map(|(id, _)| *id).max().unwrap_or(0);
    if top >= 0x80 {
        ConformityLevel::ExtendedIdentification
    } else if top >= 0x03 {
        ConformityLevel::RegularIdentification
    } else {
        ConformityLevel::BasicIdentification
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> SimIdentity {
        SimIdentity {
            vendor_name: "Vendor".into(),
            product_code: "P-1".into(),
            revision: "V1.0".into(),
            vendor_url: Some("https://vendor.example".into()),
            product_name: Some("Product".into()),
            model_name: None,
            user_application_name: Some("app".into()),
            extra: vec![(0x81, "b".into()), (0x80, "a".into())],
        }
    }

    fn ids(r: &ReadDeviceIdentificationResponse) -> Vec<u8> {
        r.device_id_objects.iter().map(|o| o.id).collect()
    }

    #[test]
    fn streams_by_category() {
        let id = identity();
        let basic = answer(&id, ReadCode::Basic, 0).unwrap();
        assert_eq!(ids(&basic), [0, 1, 2]);
        assert!(!basic.more_follows);
        assert_eq!(
            basic.conformity_level,
            ConformityLevel::ExtendedIdentification
        );
        assert_eq!(
            ids(&answer(&id, ReadCode::Regular, 0).unwrap()),
            [0, 1, 2, 3, 4, 6]
        );
        assert_eq!(
            ids(&answer(&id, ReadCode::Extended, 0).unwrap()),
            [0, 1, 2, 3, 4, 6, 0x80, 0x81]
        );
        assert_eq!(ids(&answer(&id, ReadCode::Regular, 3).unwrap()), [3, 4, 6]);
        // 0x05 is missing: the stream restarts at 0x00.
        assert_eq!(
            ids(&answer(&id, ReadCode::Regular, 5).unwrap()),
            [0, 1, 2, 3, 4, 6]
        );
        assert_eq!(ids(&answer(&id, ReadCode::Basic, 4).unwrap()), [0, 1, 2]);
    }

    #[test]
    fn specific_object_or_illegal_address() {
        let id = identity();
        let one = answer(&id, ReadCode::Specific, 0x80).unwrap();
        assert_eq!(one.device_id_objects[0].value.as_ref(), b"a");
        assert_eq!(
            answer(&id, ReadCode::Specific, 0x05),
            Err(ExceptionCode::IllegalDataAddress)
        );
    }

    #[test]
    fn pages_when_objects_do_not_fit() {
        let mut id = identity();
        id.extra = (0x80..0x88).map(|i| (i, "x".repeat(100))).collect();
        let mut start = 0;
        let mut seen = Vec::new();
        for _ in 0..10 {
            let r = answer(&id, ReadCode::Extended, start).unwrap();
            let size: usize = 7 + r
                .device_id_objects
                .iter()
                .map(|o| 2 + o.value.len())
                .sum::<usize>();
            assert!(size <= MAX_PDU);
            seen.extend(ids(&r));
            if !r.more_follows {
                assert_eq!(r.next_object_id, 0);
                break;
            }
            start = r.next_object_id;
        }
        let mut want = vec![0, 1, 2, 3, 4, 6];
        want.extend(0x80..0x88);
        assert_eq!(seen, want);
    }

    #[test]
    fn basic_only_device_conforms_at_basic_level() {
        let id = SimIdentity {
            vendor_name: "V".into(),
            product_code: "P".into(),
            revision: "1".into(),
            ..SimIdentity::default()
        };
        let r = answer(&id, ReadCode::Extended, 0).unwrap();
        assert_eq!(r.conformity_level, ConformityLevel::BasicIdentification);
        assert_eq!(ids(&r), [0, 1, 2]);
    }
}
