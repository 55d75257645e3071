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

use super::spec::SimIdentity;

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
