//! Forward error correction on the diode: one message → RaptorQ (RFC 6330) symbol datagrams.
//!
//! A diode has no return path, so loss is repaired in advance: each message is one RaptorQ
//! source block of `K` source symbols, sent with `R` repair symbols; any `K` (almost always) or
//! `K + 2` (all but about one in a million) of the `K + R` datagrams rebuild it.
//!
//! `R = max(ceil(K × overhead_percent / 100), min_repair)`. The percentage covers random loss on
//! large messages; `min_repair` covers a *burst*: a run of consecutive lost datagrams hits one
//! message (the stream is idle between messages), so a message survives any burst of up to
//! `min_repair − 4` consecutive datagrams with 4 symbols to spare. Defaults: 25 %, 24 repairs
//! (bursts of 20). For the small messages Outpost sends (a heartbeat is one symbol, a summary a
//! few) that is many repairs, but few bytes; for a 1 MiB message it is 25 %.
//!
//! Datagram layout (framing version [`FEC_VERSION`], kind [`FrameKind::Fec`]), big-endian:
//!
//! | offset | size | field                                                         |
//! |-------:|-----:|---------------------------------------------------------------|
//! | 0      | 2    | magic `OD`                                                    |
//! | 2      | 1    | framing version (2)                                           |
//! | 3      | 1    | kind: 1 = RaptorQ symbol                                      |
//! | 4      | 8    | message id                                                    |
//! | 12     | 12   | RaptorQ OTI (RFC 6330 §3.3.2/3: length, symbol size, Z, N, Al) |
//! | 24     | 2    | source symbols `K`                                            |
//! | 26     | 2    | repair symbols `R`                                            |
//! | 28     | 4    | CRC-32 of the datagram with this field set to zero            |
//! | 32     | 4    | RaptorQ payload id (source block number, encoding symbol id)  |
//! | 36     | T    | the symbol (`T` = symbol size from the OTI)                   |
//!
//! Every datagram carries every parameter, so a receiver never guesses: the parser refuses
//! anything this build would not have produced itself (one source block, one sub-block,
//! alignment 8, `K` = ⌈length / T⌉, `K` and `R` within [`MAX_SOURCE_SYMBOLS`] and
//! [`MAX_REPAIR_SYMBOLS`], symbol id below `K + R`, exact payload length) *before* anything is
//! allocated or handed to `raptorq` (which panics on some malformed input). Symbols of one
//! message that disagree on any parameter are refused by the reassembler.

use raptorq::{EncodingPacket, ObjectTransmissionInformation, PayloadId, SourceBlockEncoder};

use crate::envelope::MAX_ENVELOPE_BYTES;
use crate::frame::{FrameError, FrameKind, MAGIC, MAX_DATAGRAM};

/// Framing version of FEC datagrams (plain fragments stay version 1).
pub const FEC_VERSION: u8 = 2;
/// Header bytes before the RaptorQ packet.
pub const FEC_HEADER_LEN: usize = 32;
/// RaptorQ payload id bytes.
pub const PAYLOAD_ID_LEN: usize = 4;
/// Symbol alignment (RaptorQ `Al`); symbol sizes are multiples of it.
pub const ALIGNMENT: u16 = 8;
/// Largest symbol: the datagram stays within [`MAX_DATAGRAM`].
pub const MAX_SYMBOL: u16 =
    ((MAX_DATAGRAM - FEC_HEADER_LEN - PAYLOAD_ID_LEN) as u16) / ALIGNMENT * ALIGNMENT;
/// Most source symbols per message (a 1 MiB envelope takes 904).
pub const MAX_SOURCE_SYMBOLS: u16 = 1024;
/// Most repair symbols per message.
pub const MAX_REPAIR_SYMBOLS: u16 = 1024;

/// How much repair to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FecParams {
    /// Repair symbols as a percentage of source symbols.
    pub overhead_percent: u16,
    /// At least this many repair symbols per message (burst tolerance + 4).
    pub min_repair: u16,
}

impl Default for FecParams {
    fn default() -> Self {
        Self {
            overhead_percent: 25,
            min_repair: 24,
        }
    }
}

impl FecParams {
    /// Repair symbols for a message of `k` source symbols.
    pub fn repair_for(&self, k: u16) -> u16 {
        let pct = (u32::from(k) * u32::from(self.overhead_percent)).div_ceil(100);
        let r = pct.max(u32::from(self.min_repair));
        u16::try_from(r.min(u32::from(MAX_REPAIR_SYMBOLS))).unwrap_or(MAX_REPAIR_SYMBOLS)
    }
}

/// A parsed FEC datagram header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FecHeader {
    pub message_id: u64,
    /// The 12-byte OTI exactly as sent.
    pub oti: [u8; 12],
    pub transfer_len: u32,
    pub symbol_size: u16,
    pub source_symbols: u16,
    pub repair_symbols: u16,
    /// The encoding symbol id of this datagram's symbol.
    pub esi: u32,
}

impl FecHeader {
    /// Whether two symbols claim the same parameters (same message must).
    pub fn same_params(&self, other: &FecHeader) -> bool {
        self.oti == other.oti
            && self.source_symbols == other.source_symbols
            && self.repair_symbols == other.repair_symbols
    }

    /// The OTI for `raptorq` (only call on a parsed header: parse checked every field).
    pub fn oti(&self) -> ObjectTransmissionInformation {
        ObjectTransmissionInformation::deserialize(&self.oti)
    }
}

/// The symbol size for a message of `len` bytes: the largest allowed, or the message rounded
/// up to the alignment when it fits one symbol.
fn symbol_size_for(len: usize) -> u16 {
    let rounded = len.div_ceil(usize::from(ALIGNMENT)) * usize::from(ALIGNMENT);
    u16::try_from(rounded.min(usize::from(MAX_SYMBOL))).unwrap_or(MAX_SYMBOL)
}

/// Encodes `message` into FEC datagrams: the `K` source symbols in order, then the repairs.
pub fn encode(
    message_id: u64,
    message: &[u8],
    params: FecParams,
) -> Result<Vec<Vec<u8>>, FrameError> {
    if message.is_empty() {
        return Err(FrameError::EmptyMessage);
    }
    let too_large = || FrameError::MessageTooLarge {
        len: message.len(),
        max: MAX_ENVELOPE_BYTES,
    };
    if message.len() > MAX_ENVELOPE_BYTES {
        return Err(too_large());
    }
    let t = symbol_size_for(message.len());
    let k = u16::try_from(message.len().div_ceil(usize::from(t))).map_err(|_| too_large())?;
    if k > MAX_SOURCE_SYMBOLS {
        return Err(too_large());
    }
    let r = params.repair_for(k);
    let oti = ObjectTransmissionInformation::new(message.len() as u64, t, 1, 1, ALIGNMENT as u8);
    // One source block, zero-padded to K symbols. `SourceBlockEncoder::new` reuses raptorq's
    // (bounded) cache of encoding plans per K; `Encoder::new` would rebuild the plan each time.
    let padded_len = usize::from(k) * usize::from(t);
    let padded;
    let block: &[u8] = if padded_len == message.len() {
        message
    } else {
        let mut p = Vec::with_capacity(padded_len);
        p.extend_from_slice(message);
        p.resize(padded_len, 0);
        padded = p;
        &padded
    };
    let encoder = SourceBlockEncoder::new(0, &oti, block);
    let oti_bytes = oti.serialize();
    let mut packets = encoder.source_packets();
    packets.extend(encoder.repair_packets(0, u32::from(r)));
    let mut out = Vec::with_capacity(packets.len());
    for p in packets {
        let mut d = Vec::with_capacity(FEC_HEADER_LEN + PAYLOAD_ID_LEN + usize::from(t));
        d.extend_from_slice(&MAGIC);
        d.push(FEC_VERSION);
        d.push(FrameKind::Fec as u8);
        d.extend_from_slice(&message_id.to_be_bytes());
        d.extend_from_slice(&oti_bytes);
        d.extend_from_slice(&k.to_be_bytes());
        d.extend_from_slice(&r.to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&p.payload_id().serialize());
        d.extend_from_slice(p.data());
        let crc = crc32fast::hash(&d);
        d[28..32].copy_from_slice(&crc.to_be_bytes());
        out.push(d);
    }
    Ok(out)
}

/// Parses and checks one FEC datagram (magic, version and kind already checked by the caller
/// or not: they are checked again), returning its header and the RaptorQ packet bytes.
pub fn parse(datagram: &[u8], max_message: usize) -> Result<(FecHeader, &[u8]), FrameError> {
    if datagram.len() < FEC_HEADER_LEN + PAYLOAD_ID_LEN {
        return Err(FrameError::TooShort(datagram.len()));
    }
    if datagram.len() > MAX_DATAGRAM {
        return Err(FrameError::TooLong(datagram.len()));
    }
    let magic = [datagram[0], datagram[1]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    if datagram[2] != FEC_VERSION {
        return Err(FrameError::UnsupportedVersion(datagram[2]));
    }
    if datagram[3] != FrameKind::Fec as u8 {
        return Err(FrameError::UnknownKind(datagram[3]));
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
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&datagram[..28]);
    hasher.update(&[0; 4]);
    hasher.update(&datagram[FEC_HEADER_LEN..]);
    if hasher.finalize() != be32(28) {
        return Err(FrameError::BadChecksum);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&datagram[4..12]);
    let mut oti = [0u8; 12];
    oti.copy_from_slice(&datagram[12..24]);
    // OTI: 40-bit transfer length, reserved byte, symbol size, Z, N (2 bytes), Al.
    let transfer_len =
        (u64::from(oti[0]) << 32) | u64::from(u32::from_be_bytes([oti[1], oti[2], oti[3], oti[4]]));
    let symbol_size = u16::from_be_bytes([oti[6], oti[7]]);
    let k = be16(24);
    let r = be16(26);
    let bad = |why| Err(FrameError::Inconsistent(why));
    if oti[5] != 0 || oti[8] != 1 || oti[9] != 0 || oti[10] != 1 || oti[11] != ALIGNMENT as u8 {
        return bad("FEC parameters other than one source block, one sub-block, alignment 8");
    }
    if transfer_len == 0 {
        return bad("FEC transfer length is zero");
    }
    let limit = max_message.min(MAX_ENVELOPE_BYTES);
    if transfer_len > limit as u64 {
        return Err(FrameError::MessageTooLarge {
            len: usize::try_from(transfer_len).unwrap_or(usize::MAX),
            max: limit,
        });
    }
    let len = transfer_len as usize;
    if symbol_size == 0 || symbol_size % ALIGNMENT != 0 || symbol_size > MAX_SYMBOL {
        return bad("FEC symbol size is not a multiple of 8 within the datagram");
    }
    if symbol_size != symbol_size_for(len) {
        return bad("FEC symbol size is not the one this framing uses for the length");
    }
    if k == 0 || k > MAX_SOURCE_SYMBOLS || usize::from(k) != len.div_ceil(usize::from(symbol_size))
    {
        return bad("FEC source symbol count does not match length and symbol size");
    }
    if r > MAX_REPAIR_SYMBOLS {
        return bad("FEC repair symbol count above the limit");
    }
    let packet = &datagram[FEC_HEADER_LEN..];
    if packet.len() != PAYLOAD_ID_LEN + usize::from(symbol_size) {
        return bad("FEC payload length does not match the symbol size");
    }
    let pid = PayloadId::deserialize(&[packet[0], packet[1], packet[2], packet[3]]);
    if pid.source_block_number() != 0 {
        return bad("FEC source block number is not 0");
    }
    let esi = pid.encoding_symbol_id();
    if esi >= u32::from(k) + u32::from(r) {
        return bad("FEC symbol id beyond source + repair count");
    }
    Ok((
        FecHeader {
            message_id: u64::from_be_bytes(id),
            oti,
            transfer_len: transfer_len as u32,
            symbol_size,
            source_symbols: k,
            repair_symbols: r,
            esi,
        },
        packet,
    ))
}

/// Turns a parsed packet into what `raptorq` decodes (only call with bytes from [`parse`]).
pub fn packet(bytes: &[u8]) -> EncodingPacket {
    EncodingPacket::deserialize(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raptorq::Decoder;

    fn message(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 + 5) as u8).collect()
    }

    fn decode(datagrams: &[Vec<u8>]) -> Option<Vec<u8>> {
        let (h, _) = parse(&datagrams[0], MAX_ENVELOPE_BYTES).unwrap();
        let mut dec = Decoder::new(h.oti());
        for d in datagrams {
            let (_, p) = parse(d, MAX_ENVELOPE_BYTES).unwrap();
            if let Some(m) = dec.decode(packet(p)) {
                return Some(m);
            }
        }
        None
    }

    #[test]
    fn round_trips_with_repairs_only() {
        for len in [1, 7, 300, 1160, 1161, 5000, 100_000] {
            let msg = message(len);
            let d = encode(7, &msg, FecParams::default()).unwrap();
            let (h, _) = parse(&d[0], MAX_ENVELOPE_BYTES).unwrap();
            assert_eq!(d.len(), usize::from(h.source_symbols + h.repair_symbols));
            assert!(d.iter().all(|x| x.len() <= MAX_DATAGRAM));
            // Drop every source symbol: the repairs alone rebuild it.
            let k = usize::from(h.source_symbols);
            if d.len() - k >= k + 2 {
                assert_eq!(decode(&d[k..]).as_deref(), Some(&msg[..]), "len {len}");
            }
            assert_eq!(decode(&d).as_deref(), Some(&msg[..]));
        }
    }

    #[test]
    fn repair_count_follows_params() {
        let p = FecParams::default();
        assert_eq!(p.repair_for(1), 24);
        assert_eq!(p.repair_for(904), 226);
        assert_eq!(
            MAX_ENVELOPE_BYTES.div_ceil(usize::from(MAX_SYMBOL)),
            904,
            "a 1 MiB envelope fits MAX_SOURCE_SYMBOLS"
        );
    }

    #[test]
    fn refuses_forged_headers() {
        let d = encode(1, &message(3000), FecParams::default()).unwrap();
        let reseal = |mut x: Vec<u8>| {
            x[28..32].copy_from_slice(&[0; 4]);
            let crc = crc32fast::hash(&x);
            x[28..32].copy_from_slice(&crc.to_be_bytes());
            x
        };
        // A huge claimed length.
        let mut huge = d[0].clone();
        huge[12..17].copy_from_slice(&[0xff; 5]);
        assert!(matches!(
            parse(&reseal(huge), MAX_ENVELOPE_BYTES),
            Err(FrameError::MessageTooLarge { .. })
        ));
        // Two source blocks.
        let mut z = d[0].clone();
        z[20] = 2;
        assert!(matches!(
            parse(&reseal(z), MAX_ENVELOPE_BYTES),
            Err(FrameError::Inconsistent(_))
        ));
        // A block number other than 0 (raptorq would panic on it).
        let mut sbn = d[0].clone();
        sbn[32] = 1;
        assert!(matches!(
            parse(&reseal(sbn), MAX_ENVELOPE_BYTES),
            Err(FrameError::Inconsistent(_))
        ));
        // Symbol id beyond K + R.
        let mut esi = d[0].clone();
        esi[33..36].copy_from_slice(&[0xff; 3]);
        assert!(parse(&reseal(esi), MAX_ENVELOPE_BYTES).is_err());
        // Truncated.
        assert!(parse(&d[0][..d[0].len() - 1], MAX_ENVELOPE_BYTES).is_err());
        assert!(matches!(
            parse(&d[0][..10], MAX_ENVELOPE_BYTES),
            Err(FrameError::TooShort(10))
        ));
        // Corrupted.
        let mut c = d[0].clone();
        c[40] ^= 1;
        assert_eq!(parse(&c, MAX_ENVELOPE_BYTES), Err(FrameError::BadChecksum));
    }
}
