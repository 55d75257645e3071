//! The bounded CBOR codec.
//!
//! CBOR through `ciborium` (the maintained successor of the unmaintained `serde_cbor`,
//! RUSTSEC-2021-0127). Decoding is bounded: input size, nesting depth, and no trailing bytes.
//! Nothing ever re-encodes a value to check a signature: signatures cover the exact bytes.

use serde::{Serialize, de::DeserializeOwned};

/// Deepest nesting accepted when decoding. Outpost's own messages nest fewer than 12 levels.
pub const MAX_DEPTH: usize = 32;

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    #[error("CBOR input is {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    #[error("CBOR value followed by {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    #[error("could not encode CBOR: {0}")]
    Encode(String),
}

/// Encodes a value as CBOR.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CborError> {
    let mut out = Vec::with_capacity(256);
    ciborium::ser::into_writer(value, &mut out).map_err(|e| CborError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes exactly one CBOR value that fills `bytes`, with the default depth limit.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CborError> {
    decode_bounded(bytes, usize::MAX)
}

/// Decodes exactly one CBOR value that fills `bytes`, refusing inputs over `max_len` bytes.
pub fn decode_bounded<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, CborError> {
    if bytes.len() > max_len {
        return Err(CborError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    let mut rest = bytes;
    let value = ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_DEPTH)
        .map_err(|e| CborError::Malformed(describe(e)))?;
    if !rest.is_empty() {
        return Err(CborError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

fn describe<E: std::fmt::Debug>(e: ciborium::de::Error<E>) -> String {
    use ciborium::de::Error;
    match e {
        Error::Io(e) => format!("truncated input ({e:?})"),
        Error::Syntax(at) => format!("syntax error at byte {at}"),
        Error::Semantic(Some(at), msg) => format!("{msg} (at byte {at})"),
        Error::Semantic(None, msg) => msg,
        Error::RecursionLimitExceeded => format!("nested deeper than {MAX_DEPTH} levels"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_trailing_bytes() {
        let mut bytes = encode(&7u32).unwrap();
        bytes.push(0);
        assert_eq!(decode::<u32>(&bytes), Err(CborError::TrailingBytes(1)));
    }

    #[test]
    fn refuses_deep_nesting() {
        // 1000 nested one-element arrays: 0x81 0x81 ... 0x00
        let mut bytes = vec![0x81u8; 1000];
        bytes.push(0x00);
        let err = decode::<ciborium::Value>(&bytes).unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{err}");
    }

    #[test]
    fn refuses_oversize_and_truncated_input() {
        let bytes = encode(&"hello").unwrap();
        assert!(matches!(
            decode_bounded::<String>(&bytes, 2),
            Err(CborError::TooLarge { .. })
        ));
        assert!(matches!(
            decode::<String>(&bytes[..3]),
            Err(CborError::Malformed(_))
        ));
    }
}
