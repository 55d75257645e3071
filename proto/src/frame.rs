//! Diode framing: one envelope ↔ datagrams of at most [`MAX_DATAGRAM`] bytes.
//!
//! Every datagram carries a fixed 24-byte header, all integers big-endian:
//!
//! | offset | size | field                                                       |
//! |-------:|-----:|-------------------------------------------------------------|
//! | 0      | 2    | magic `OD`                                                  |
//! | 2      | 1    | framing version (1)                                         |
//! | 3      | 1    | kind: 0 = data fragment (FEC symbols are version 3, kind 1)  |
//! | 4      | 8    | message id (chosen by the sender, unique per message)       |
//! | 12     | 2    | fragment index                                              |
//! | 14     | 2    | fragment count                                              |
//! | 16     | 4    | total message length in bytes                               |
//! | 20     | 4    | CRC-32 of the whole datagram with this field set to zero    |
//!
//! Fragments are the message cut into [`MAX_PAYLOAD`]-byte pieces in order; only the last may
//! be shorter. The CRC catches corruption, not forgery: the envelope's signature does that.
//!
//! Version 3 datagrams are RaptorQ symbols of a window of envelopes, with their own header
//! (see [`crate::fec`]); [`parse_any`] reads both. Version 2 (one envelope per RaptorQ block)
//! is no longer read: it is refused as an unsupported version.

use crate::envelope::MAX_ENVELOPE_BYTES;

/// The framing magic.
pub const MAGIC: [u8; 2] = *b"OD";
/// The framing version this crate writes and reads.
pub const FRAME_VERSION: u8 = 1;
/// Bytes of header in every datagram.
pub const HEADER_LEN: usize = 24;
/// Largest datagram sent: fits a 1280-byte IPv6 minimum MTU with room for IP and UDP headers.
pub const MAX_DATAGRAM: usize = 1200;
/// Largest payload per datagram.
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - HEADER_LEN;

/// Datagram kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A plain fragment of the message (framing version 1).
    Data = 0,
    /// A RaptorQ symbol of a window (framing version 3, see [`crate::fec`]).
    Fec = 1,
}

/// A parsed datagram of either kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// A plain fragment and its payload.
    Data(FrameHeader, &'a [u8]),
    /// A FEC symbol and its RaptorQ packet (payload id + symbol).
    Fec(crate::fec::FecHeader, &'a [u8]),
}

/// Parses and checks a datagram of any kind this build reads. `max_message` bounds the length
/// a header may claim: a plain message is also capped at [`MAX_ENVELOPE_BYTES`], a FEC block
/// at [`crate::fec::MAX_BLOCK_BYTES`].
pub fn parse_any(datagram: &[u8], max_message: usize) -> Result<Datagram<'_>, FrameError> {
    if datagram.len() >= 3 && datagram[..2] == MAGIC && datagram[2] == crate::fec::FEC_VERSION {
        let (h, p) = crate::fec::parse(datagram, max_message)?;
        return Ok(Datagram::Fec(h, p));
    }
    let (h, p) = parse(datagram, max_message)?;
    Ok(Datagram::Data(h, p))
}

/// A parsed datagram header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub message_id: u64,
    pub index: u16,
    pub count: u16,
    pub total_len: u32,
}

/// Why a datagram was refused (or a message could not be framed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("datagram of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort(usize),
    #[error("datagram of {0} bytes is longer than the {MAX_DATAGRAM}-byte maximum")]
    TooLong(usize),
    #[error("bad magic {0:02x?}: not an Outpost diode datagram")]
    BadMagic([u8; 2]),
    #[error(
        "framing version {0} is not supported (this build reads versions {FRAME_VERSION} and 3; \
         agent and collector must run matching releases)"
    )]
    UnsupportedVersion(u8),
    #[error("unknown datagram kind {0}")]
    UnknownKind(u8),
    #[error("checksum mismatch: datagram corrupted in transit")]
    BadChecksum,
    #[error("inconsistent header: {0}")]
    Inconsistent(&'static str),
    #[error("message of {len} bytes is larger than the {max}-byte limit")]
    MessageTooLarge { len: usize, max: usize },
    #[error("refusing to frame an empty message")]
    EmptyMessage,
}

impl FrameError {
    /// A stable, short name for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::TooShort(_) => "datagram_too_short",
            FrameError::TooLong(_) => "datagram_too_long",
            FrameError::BadMagic(_) => "bad_magic",
            FrameError::UnsupportedVersion(_) => "unsupported_frame_version",
            FrameError::UnknownKind(_) => "unknown_frame_kind",
            FrameError::BadChecksum => "bad_checksum",
            FrameError::Inconsistent(_) => "inconsistent_frame",
            FrameError::MessageTooLarge { .. } => "message_too_large",
            FrameError::EmptyMessage => "empty_message",
        }
    }
}

/// How many fragments a message of `len` bytes takes.
pub fn fragment_count(len: usize) -> usize {
    len.div_ceil(MAX_PAYLOAD)
}

/// Cuts `message` into datagrams.
pub fn fragment(message_id: u64, message: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
    if message.is_empty() {
        return Err(FrameError::EmptyMessage);
    }
    if message.len() > MAX_ENVELOPE_BYTES {
        return Err(FrameError::MessageTooLarge {
            len: message.len(),
            max: MAX_ENVELOPE_BYTES,
        });
    }
    let count = fragment_count(message.len());
    let count16 = u16::try_from(count).map_err(|_| FrameError::MessageTooLarge {
        len: message.len(),
        max: MAX_ENVELOPE_BYTES,
    })?;
    let total = u32::try_from(message.len()).map_err(|_| FrameError::MessageTooLarge {
        len: message.len(),
        max: MAX_ENVELOPE_BYTES,
    })?;
    let mut out = Vec::with_capacity(count);
    for (index, chunk) in (0u16..count16).zip(message.chunks(MAX_PAYLOAD)) {
        let mut d = Vec::with_capacity(HEADER_LEN + chunk.len());
        d.extend_from_slice(&MAGIC);
        d.push(FRAME_VERSION);
        d.push(FrameKind::Data as u8);
        d.extend_from_slice(&message_id.to_be_bytes());
        d.extend_from_slice(&index.to_be_bytes());
        d.extend_from_slice(&count16.to_be_bytes());
        d.extend_from_slice(&total.to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(chunk);
        let crc = crc32fast::hash(&d);
        d[20..24].copy_from_slice(&crc.to_be_bytes());
        out.push(d);
    }
    Ok(out)
}

/// Parses and checks one datagram, returning its header and payload.
///
/// `max_message` bounds the total length a header may claim.
pub fn parse(datagram: &[u8], max_message: usize) -> Result<(FrameHeader, &[u8]), FrameError> {
    if datagram.len() < HEADER_LEN {
        return Err(FrameError::TooShort(datagram.len()));
    }
    if datagram.len() > MAX_DATAGRAM {
        return Err(FrameError::TooLong(datagram.len()));
    }
    let be16 = |at: usize| u16::from_be_bytes([datagram[at], datagram[at + 1]]);
    let be32 = |at: usize| {
        u32::from_be_bytes([
            datagram[at],
            datagram[at + 1],
            datagram[at + 2],
            datagram[at + 3],
        ])
    };
    let magic = [datagram[0], datagram[1]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    if datagram[2] != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(datagram[2]));
    }
    let kind = match datagram[3] {
        0 => FrameKind::Data,
        other => return Err(FrameError::UnknownKind(other)),
    };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&datagram[..20]);
    hasher.update(&[0; 4]);
    hasher.update(&datagram[HEADER_LEN..]);
    if hasher.finalize() != be32(20) {
        return Err(FrameError::BadChecksum);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&datagram[4..12]);
    let header = FrameHeader {
        kind,
        message_id: u64::from_be_bytes(id),
        index: be16(12),
        count: be16(14),
        total_len: be32(16),
    };
    let total = header.total_len as usize;
    if total == 0 {
        return Err(FrameError::Inconsistent("total length is zero"));
    }
    let limit = max_message.min(MAX_ENVELOPE_BYTES);
    if total > limit {
        return Err(FrameError::MessageTooLarge {
            len: total,
            max: limit,
        });
    }
    if usize::from(header.count) != fragment_count(total) {
        return Err(FrameError::Inconsistent(
            "fragment count does not match total length",
        ));
    }
    if header.index >= header.count {
        return Err(FrameError::Inconsistent("fragment index beyond count"));
    }
    let payload = &datagram[HEADER_LEN..];
    let expected = if header.index + 1 == header.count {
        total - usize::from(header.index) * MAX_PAYLOAD
    } else {
        MAX_PAYLOAD
    };
    if payload.len() != expected {
        return Err(FrameError::Inconsistent(
            "payload length does not match its place in the message",
        ));
    }
    Ok((header, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_and_parses() {
        let msg: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let parts = fragment(42, &msg).unwrap();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.len() <= MAX_DATAGRAM));
        let mut joined = Vec::new();
        for p in &parts {
            let (h, payload) = parse(p, MAX_ENVELOPE_BYTES).unwrap();
            assert_eq!(h.message_id, 42);
            assert_eq!(h.count, 3);
            joined.extend_from_slice(payload);
        }
        assert_eq!(joined, msg);
    }

    #[test]
    fn refuses_bad_datagrams() {
        let parts = fragment(1, b"hello").unwrap();
        let good = &parts[0];
        assert_eq!(parse(&good[..10], 100), Err(FrameError::TooShort(10)));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(parse(&bad, 100), Err(FrameError::BadMagic(_))));
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(parse(&bad, 100), Err(FrameError::BadChecksum));
        assert!(matches!(
            parse(good, 3),
            Err(FrameError::MessageTooLarge { .. })
        ));
        assert_eq!(fragment(1, b""), Err(FrameError::EmptyMessage));
        assert_eq!(parse(&vec![0u8; 1500], 100), Err(FrameError::TooLong(1500)));
    }
}
