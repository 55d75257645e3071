//! Forward error correction on the diode: a *window* of envelopes → one RaptorQ (RFC 6330)
//! source block → symbol datagrams.
//!
//! A diode has no return path, so loss is repaired in advance. RaptorQ needs many symbols per
//! block before a fixed repair percentage covers random loss (the binomial tail): at 10 % loss
//! and 25 % repair a block of 3 source symbols is hopeless without a large repair floor, one of
//! 150+ is safe to better than 1 in 10⁴, one of 450 to 1 in 10¹¹. Outpost's envelopes are small
//! (a heartbeat is ~350 bytes, a summary a few kB), so the sender packs consecutive envelopes
//! into a [`Window`] (each entry a 4-byte big-endian length then the envelope bytes), bounded
//! in bytes and in time by the sender, and encodes the window as one block of `K` source
//! symbols and `R` repair symbols: the `K` source symbols in order, then the repairs.
//!
//! `R = max(⌊K × overhead_percent / 100⌋, min_repair)`. The percentage covers random loss on
//! full windows; `min_repair` covers a *burst*: a run of consecutive lost datagrams hitting one
//! block, which survives any burst of up to `min_repair − 4` datagrams with 4 symbols to spare
//! (defaults: 25 %, 24 repairs, bursts of 20). With [`FecParams::repeat`] the block is sent a
//! second time, later, as `K + R` *fresh* repair symbols (the sender chooses when): either
//! round alone rebuilds it, so a burst longer than the repair covers is survived as long as it
//! does not span both rounds.
//!
//! The symbol size follows the block length ([`symbol_size_for`]) so that `K` avoids the range
//! where neither the percentage nor the floor is enough: at most [`SMALL_K`] source symbols
//! (the 24-repair floor then gives ≥ 50 % repair) or at least [`LARGE_K`] (25 % repair is then
//! enough), with symbols of at least [`MIN_SYMBOL`] bytes. A 3 kB summary alone is 47 symbols
//! of 64 bytes plus 24 repairs: 7.4 kB on the wire (one symbol per datagram of 1.2 kB would be
//! 32 kB).
//!
//! Datagram layout (framing version [`FEC_VERSION`], kind [`FrameKind::Fec`]), big-endian:
//!
//! | offset | size | field                                                         |
//! |-------:|-----:|---------------------------------------------------------------|
//! | 0      | 2    | magic `OD`                                                    |
//! | 2      | 1    | framing version (3)                                           |
//! | 3      | 1    | kind: 1 = RaptorQ symbol of a window                          |
//! | 4      | 8    | block id (per sender, +1 per window)                          |
//! | 12     | 12   | RaptorQ OTI (RFC 6330 §3.3.2/3: length, symbol size, Z, N, Al) |
//! | 24     | 2    | source symbols `K`                                            |
//! | 26     | 2    | repair symbols, both rounds (`R`, or `R + K + R` with repeat) |
//! | 28     | 2    | envelopes in the window                                       |
//! | 30     | 2    | reserved, zero                                                |
//! | 32     | 4    | CRC-32 of the datagram with this field set to zero            |
//! | 36     | 4    | RaptorQ payload id (source block number, encoding symbol id)  |
//! | 40     | T    | the symbol (`T` = symbol size from the OTI)                   |
//!
//! Every datagram carries every parameter, so a receiver never guesses: the parser refuses
//! anything this build would not have produced itself (one source block, one sub-block,
//! alignment 8, the symbol size [`symbol_size_for`] gives for the length, `K` = ⌈length / T⌉,
//! `K` and `R` within [`MAX_SOURCE_SYMBOLS`] and [`MAX_REPAIR_SYMBOLS`], an envelope count that
//! fits the length, symbol id below `K + R`, exact payload length) *before* anything is
//! allocated or handed to `raptorq` (which panics on some malformed input). Symbols of one
//! block that disagree on any parameter are refused by the reassembler, and a rebuilt block
//! whose entries do not add up to its envelope count is refused by [`split`].
//!
//! Framing version 2 (one envelope per block, 32-byte header) is no longer written or read.

use raptorq::{EncodingPacket, ObjectTransmissionInformation, PayloadId, SourceBlockEncoder};

use crate::envelope::MAX_ENVELOPE_BYTES;
use crate::frame::{FrameError, FrameKind, MAGIC, MAX_DATAGRAM};

/// Framing version of FEC datagrams (plain fragments stay version 1).
pub const FEC_VERSION: u8 = 3;
/// Header bytes before the RaptorQ packet.
pub const FEC_HEADER_LEN: usize = 36;
/// RaptorQ payload id bytes.
pub const PAYLOAD_ID_LEN: usize = 4;
/// Offset of the CRC field.
const CRC_AT: usize = 32;
/// Symbol alignment (RaptorQ `Al`); symbol sizes are multiples of it.
pub const ALIGNMENT: u16 = 8;
/// Largest symbol: the datagram stays within [`MAX_DATAGRAM`].
pub const MAX_SYMBOL: u16 =
    ((MAX_DATAGRAM - FEC_HEADER_LEN - PAYLOAD_ID_LEN) as u16) / ALIGNMENT * ALIGNMENT;
/// Smallest symbol (below it the 40-byte header dominates the datagram).
pub const MIN_SYMBOL: u16 = 64;
/// Small blocks have at most this many source symbols (the repair floor covers them).
pub const SMALL_K: usize = 48;
/// Larger blocks have at least this many (the repair percentage covers them).
pub const LARGE_K: usize = 150;
/// Most source symbols per block.
pub const MAX_SOURCE_SYMBOLS: u16 = 1024;
/// Most repair symbols per block, both rounds together.
pub const MAX_REPAIR_SYMBOLS: u16 = 3 * 1024;
/// Largest block (window contents, length prefixes included).
pub const MAX_BLOCK_BYTES: usize = MAX_SOURCE_SYMBOLS as usize * MAX_SYMBOL as usize;
/// Bytes of length prefix before each envelope in a window.
pub const ENTRY_PREFIX: usize = 4;
/// Most envelopes in one window.
pub const MAX_WINDOW_ENVELOPES: u16 = 4096;
// The largest envelope always fits a window of its own.
const _: () = assert!(MAX_ENVELOPE_BYTES + ENTRY_PREFIX <= MAX_BLOCK_BYTES);

/// How much repair to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FecParams {
    /// Repair symbols as a percentage of source symbols.
    pub overhead_percent: u16,
    /// At least this many repair symbols per block (burst tolerance + 4).
    pub min_repair: u16,
    /// Also encode a second, later round of `K + R` fresh repair symbols (see the module docs).
    pub repeat: bool,
}

impl Default for FecParams {
    fn default() -> Self {
        Self {
            overhead_percent: 25,
            min_repair: 24,
            repeat: false,
        }
    }
}

impl FecParams {
    /// Repair symbols of the first round for a block of `k` source symbols.
    pub fn repair_for(&self, k: u16) -> u16 {
        // Rounded down: the repair share never exceeds the percentage (the floor covers small K).
        let pct = u32::from(k) * u32::from(self.overhead_percent) / 100;
        let r = pct.max(u32::from(self.min_repair));
        u16::try_from(r.min(u32::from(MAX_SOURCE_SYMBOLS))).unwrap_or(MAX_SOURCE_SYMBOLS)
    }

    /// Repair symbols of both rounds (what every datagram's `R` field says).
    pub fn repair_total(&self, k: u16) -> u16 {
        let r = self.repair_for(k);
        if self.repeat { r + k + r } else { r }
    }
}

/// A parsed FEC datagram header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FecHeader {
    pub block_id: u64,
    /// The 12-byte OTI exactly as sent.
    pub oti: [u8; 12],
    pub transfer_len: u32,
    pub symbol_size: u16,
    pub source_symbols: u16,
    pub repair_symbols: u16,
    /// Envelopes in the window.
    pub envelopes: u16,
    /// The encoding symbol id of this datagram's symbol.
    pub esi: u32,
}

impl FecHeader {
    /// Whether two symbols claim the same parameters (same block must).
    pub fn same_params(&self, other: &FecHeader) -> bool {
        self.oti == other.oti
            && self.source_symbols == other.source_symbols
            && self.repair_symbols == other.repair_symbols
            && self.envelopes == other.envelopes
    }

    /// The OTI for `raptorq` (only call on a parsed header: parse checked every field).
    pub fn oti(&self) -> ObjectTransmissionInformation {
        ObjectTransmissionInformation::deserialize(&self.oti)
    }
}

/// The symbol size for a block of `len` bytes (see the module docs): `K ≤ SMALL_K` up to
/// `LARGE_K × MIN_SYMBOL` bytes, `K ≥ LARGE_K` above, symbols of `MIN_SYMBOL..=MAX_SYMBOL`.
pub fn symbol_size_for(len: usize) -> u16 {
    let min = usize::from(MIN_SYMBOL);
    let al = usize::from(ALIGNMENT);
    let t = if len <= SMALL_K * min {
        min
    } else if len < LARGE_K * min {
        len.div_ceil(SMALL_K).div_ceil(al) * al
    } else {
        (len / LARGE_K) / al * al
    };
    u16::try_from(t.min(usize::from(MAX_SYMBOL))).unwrap_or(MAX_SYMBOL)
}

/// Envelopes collected for one block: each a 4-byte big-endian length then its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    content: Vec<u8>,
    envelopes: u16,
}

impl Window {
    /// An empty window.
    pub fn new() -> Window {
        Window::default()
    }

    /// Bytes of content so far (prefixes included).
    pub fn bytes(&self) -> usize {
        self.content.len()
    }

    /// Envelopes so far.
    pub fn envelopes(&self) -> u16 {
        self.envelopes
    }

    pub fn is_empty(&self) -> bool {
        self.envelopes == 0
    }

    /// Whether an envelope of `len` bytes still fits within `max_bytes` of content (an empty
    /// window takes any envelope up to [`MAX_ENVELOPE_BYTES`]).
    pub fn has_room(&self, len: usize, max_bytes: usize) -> bool {
        self.is_empty()
            || (self.content.len() + ENTRY_PREFIX + len <= max_bytes.min(MAX_BLOCK_BYTES)
                && self.envelopes < MAX_WINDOW_ENVELOPES)
    }

    /// Adds one envelope. Refuses an empty or oversized envelope, and one that does not fit
    /// the largest block.
    pub fn push(&mut self, envelope: &[u8]) -> Result<(), FrameError> {
        if envelope.is_empty() {
            return Err(FrameError::EmptyMessage);
        }
        if envelope.len() > MAX_ENVELOPE_BYTES {
            return Err(FrameError::MessageTooLarge {
                len: envelope.len(),
                max: MAX_ENVELOPE_BYTES,
            });
        }
        if !self.has_room(envelope.len(), MAX_BLOCK_BYTES) {
            return Err(FrameError::MessageTooLarge {
                len: self.content.len() + ENTRY_PREFIX + envelope.len(),
                max: MAX_BLOCK_BYTES,
            });
        }
        // Cannot fail: at most MAX_ENVELOPE_BYTES.
        let len = u32::try_from(envelope.len()).unwrap_or(u32::MAX);
        self.content.extend_from_slice(&len.to_be_bytes());
        self.content.extend_from_slice(envelope);
        self.envelopes += 1;
        Ok(())
    }

    /// Empties the window (keeping its allocation).
    pub fn clear(&mut self) {
        self.content.clear();
        self.envelopes = 0;
    }
}

/// The datagrams of one block: the first round (source, then repair) and, with
/// [`FecParams::repeat`], the second (fresh repair symbols only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded {
    pub first: Vec<Vec<u8>>,
    pub repeat: Vec<Vec<u8>>,
}

/// Encodes `window` as block `block_id`.
pub fn encode_window(
    block_id: u64,
    window: &Window,
    params: FecParams,
) -> Result<Encoded, FrameError> {
    if window.is_empty() {
        return Err(FrameError::EmptyMessage);
    }
    let content = &window.content;
    let too_large = || FrameError::MessageTooLarge {
        len: content.len(),
        max: MAX_BLOCK_BYTES,
    };
    if content.len() > MAX_BLOCK_BYTES {
        return Err(too_large());
    }
    let t = symbol_size_for(content.len());
    let k = u16::try_from(content.len().div_ceil(usize::from(t))).map_err(|_| too_large())?;
    if k > MAX_SOURCE_SYMBOLS {
        return Err(too_large());
    }
    let r = params.repair_for(k);
    let r_total = params.repair_total(k);
    let oti = ObjectTransmissionInformation::new(content.len() as u64, t, 1, 1, ALIGNMENT as u8);
    // One source block, zero-padded to K symbols. `SourceBlockEncoder::new` reuses raptorq's
    // (bounded) cache of encoding plans per K; `Encoder::new` would rebuild the plan each time.
    let padded_len = usize::from(k) * usize::from(t);
    let padded;
    let block: &[u8] = if padded_len == content.len() {
        content
    } else {
        let mut p = Vec::with_capacity(padded_len);
        p.extend_from_slice(content);
        p.resize(padded_len, 0);
        padded = p;
        &padded
    };
    let encoder = SourceBlockEncoder::new(0, &oti, block);
    let mut header = [0u8; FEC_HEADER_LEN];
    header[..2].copy_from_slice(&MAGIC);
    header[2] = FEC_VERSION;
    header[3] = FrameKind::Fec as u8;
    header[4..12].copy_from_slice(&block_id.to_be_bytes());
    header[12..24].copy_from_slice(&oti.serialize());
    header[24..26].copy_from_slice(&k.to_be_bytes());
    header[26..28].copy_from_slice(&r_total.to_be_bytes());
    header[28..30].copy_from_slice(&window.envelopes.to_be_bytes());
    let datagram = |p: &EncodingPacket| {
        let mut d = Vec::with_capacity(FEC_HEADER_LEN + PAYLOAD_ID_LEN + usize::from(t));
        d.extend_from_slice(&header);
        d.extend_from_slice(&p.payload_id().serialize());
        d.extend_from_slice(p.data());
        let crc = crc32fast::hash(&d);
        d[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        d
    };
    let mut first: Vec<Vec<u8>> = encoder.source_packets().iter().map(datagram).collect();
    first.extend(encoder.repair_packets(0, u32::from(r)).iter().map(datagram));
    let repeat = if params.repeat {
        // Repair symbol ids continue after the first round's: K + R fresh symbols.
        let second = u32::from(k) + u32::from(r);
        encoder
            .repair_packets(u32::from(r), second)
            .iter()
            .map(datagram)
            .collect()
    } else {
        Vec::new()
    };
    Ok(Encoded { first, repeat })
}

/// Encodes one envelope as a window of its own (both rounds, in order).
pub fn encode(
    block_id: u64,
    message: &[u8],
    params: FecParams,
) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut w = Window::new();
    w.push(message)?;
    let Encoded { mut first, repeat } = encode_window(block_id, &w, params)?;
    first.extend(repeat);
    Ok(first)
}

/// Splits a rebuilt block into its envelopes; the entries must be exactly `envelopes`, each
/// non-empty and at most [`MAX_ENVELOPE_BYTES`], and fill the block exactly.
pub fn split(content: &[u8], envelopes: u16) -> Result<Vec<Vec<u8>>, FrameError> {
    let bad =
        || FrameError::Inconsistent("FEC window entries do not add up to its length and count");
    let mut out = Vec::with_capacity(usize::from(envelopes));
    let mut rest = content;
    while !rest.is_empty() {
        if out.len() >= usize::from(envelopes) || rest.len() < ENTRY_PREFIX {
            return Err(bad());
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[ENTRY_PREFIX..];
        if len == 0 || len > MAX_ENVELOPE_BYTES || len > rest.len() {
            return Err(bad());
        }
        out.push(rest[..len].to_vec());
        rest = &rest[len..];
    }
    if out.len() != usize::from(envelopes) {
        return Err(bad());
    }
    Ok(out)
}

/// Parses and checks one FEC datagram (magic, version and kind already checked by the caller
/// or not: they are checked again), returning its header and the RaptorQ packet bytes.
/// `max_block` bounds the length a header may claim (at most [`MAX_BLOCK_BYTES`]).
pub fn parse(datagram: &[u8], max_block: usize) -> Result<(FecHeader, &[u8]), FrameError> {
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
    hasher.update(&datagram[..CRC_AT]);
    hasher.update(&[0; 4]);
    hasher.update(&datagram[FEC_HEADER_LEN..]);
    if hasher.finalize() != be32(CRC_AT) {
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
    let envelopes = be16(28);
    let bad = |why| Err(FrameError::Inconsistent(why));
    if oti[5] != 0 || oti[8] != 1 || oti[9] != 0 || oti[10] != 1 || oti[11] != ALIGNMENT as u8 {
        return bad("FEC parameters other than one source block, one sub-block, alignment 8");
    }
    if be16(30) != 0 {
        return bad("FEC reserved header field is not zero");
    }
    if transfer_len == 0 {
        return bad("FEC transfer length is zero");
    }
    let limit = max_block.min(MAX_BLOCK_BYTES);
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
    if envelopes == 0
        || envelopes > MAX_WINDOW_ENVELOPES
        || usize::from(envelopes) * (ENTRY_PREFIX + 1) > len
    {
        return bad("FEC envelope count does not fit the block length");
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
            block_id: u64::from_be_bytes(id),
            oti,
            transfer_len: transfer_len as u32,
            symbol_size,
            source_symbols: k,
            repair_symbols: r,
            envelopes,
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
        let (h, _) = parse(&datagrams[0], MAX_BLOCK_BYTES).unwrap();
        let mut dec = Decoder::new(h.oti());
        for d in datagrams {
            let (_, p) = parse(d, MAX_BLOCK_BYTES).unwrap();
            if let Some(m) = dec.decode(packet(p)) {
                return Some(m);
            }
        }
        None
    }

    fn one(msg: &[u8]) -> Vec<u8> {
        let mut w = Window::new();
        w.push(msg).unwrap();
        w.content
    }

    #[test]
    fn round_trips_with_repairs_only() {
        for len in [1, 7, 300, 1160, 1161, 3000, 5000, 10_000, 100_000] {
            let msg = message(len);
            let d = encode(7, &msg, FecParams::default()).unwrap();
            let (h, _) = parse(&d[0], MAX_BLOCK_BYTES).unwrap();
            assert_eq!(d.len(), usize::from(h.source_symbols + h.repair_symbols));
            assert!(d.iter().all(|x| x.len() <= MAX_DATAGRAM));
            // Drop every source symbol: the repairs alone rebuild it.
            let k = usize::from(h.source_symbols);
            if d.len() - k >= k + 2 {
                assert_eq!(decode(&d[k..]), Some(one(&msg)), "len {len}");
            }
            assert_eq!(decode(&d), Some(one(&msg)));
        }
    }

    #[test]
    fn symbol_sizes_keep_k_out_of_the_weak_range() {
        for len in (1..400_000).step_by(97).chain([MAX_BLOCK_BYTES]) {
            let t = symbol_size_for(len);
            assert!(
                (MIN_SYMBOL..=MAX_SYMBOL).contains(&t) && t.is_multiple_of(ALIGNMENT),
                "{len}"
            );
            let k = len.div_ceil(usize::from(t));
            assert!(k <= SMALL_K || k >= LARGE_K, "len {len}: K {k}");
            assert!(k <= usize::from(MAX_SOURCE_SYMBOLS));
        }
        // A 3 kB summary: 47 symbols of 64 bytes, not 3 of 1160.
        assert_eq!(symbol_size_for(3004), 64);
        assert_eq!(symbol_size_for(MAX_ENVELOPE_BYTES + 4), MAX_SYMBOL);
    }

    #[test]
    fn a_window_carries_several_envelopes_and_splits_back() {
        let a = message(3000);
        let b = message(17);
        let c = message(70_000);
        let mut w = Window::new();
        for m in [&a, &b, &c] {
            assert!(w.has_room(m.len(), 256 * 1024));
            w.push(m).unwrap();
        }
        assert!(!w.has_room(200_000, 256 * 1024));
        let enc = encode_window(9, &w, FecParams::default()).unwrap();
        assert!(enc.repeat.is_empty());
        let (h, _) = parse(&enc.first[0], MAX_BLOCK_BYTES).unwrap();
        assert_eq!((h.block_id, h.envelopes), (9, 3));
        let content = decode(&enc.first).unwrap();
        assert_eq!(split(&content, 3).unwrap(), vec![a, b, c]);
        assert!(split(&content, 2).is_err());
        assert!(split(&content, 4).is_err());
        assert!(split(&content[..content.len() - 1], 3).is_err());
        assert!(split(&[0, 0, 0, 0], 1).is_err());
        assert_eq!(w.push(b""), Err(FrameError::EmptyMessage));
    }

    #[test]
    fn the_repeat_round_alone_rebuilds_the_block() {
        let params = FecParams {
            repeat: true,
            ..FecParams::default()
        };
        let msg = message(20_000);
        let mut w = Window::new();
        w.push(&msg).unwrap();
        let enc = encode_window(1, &w, params).unwrap();
        let (h, _) = parse(&enc.first[0], MAX_BLOCK_BYTES).unwrap();
        let k = usize::from(h.source_symbols);
        let r = usize::from(params.repair_for(h.source_symbols));
        assert_eq!(enc.first.len(), k + r);
        assert_eq!(enc.repeat.len(), k + r);
        assert_eq!(usize::from(h.repair_symbols), r + k + r);
        assert_eq!(decode(&enc.repeat), Some(one(&msg)));
        // Every datagram of both rounds has a distinct symbol id.
        let mut ids: Vec<u32> = enc
            .first
            .iter()
            .chain(&enc.repeat)
            .map(|d| parse(d, MAX_BLOCK_BYTES).unwrap().0.esi)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 2 * (k + r));
    }

    #[test]
    fn repair_count_follows_params() {
        let p = FecParams::default();
        assert_eq!(p.repair_for(1), 24);
        assert_eq!(p.repair_for(904), 226);
        assert_eq!(p.repair_total(904), 226);
        assert_eq!(
            FecParams { repeat: true, ..p }.repair_total(MAX_SOURCE_SYMBOLS),
            256 + 1024 + 256
        );
    }

    #[test]
    fn refuses_forged_headers() {
        let d = encode(1, &message(3000), FecParams::default()).unwrap();
        let reseal = |mut x: Vec<u8>| {
            x[CRC_AT..CRC_AT + 4].copy_from_slice(&[0; 4]);
            let crc = crc32fast::hash(&x);
            x[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
            x
        };
        assert!(parse(&reseal(d[0].clone()), MAX_BLOCK_BYTES).is_ok());
        // A huge claimed length.
        let mut huge = d[0].clone();
        huge[12..17].copy_from_slice(&[0xff; 5]);
        assert!(matches!(
            parse(&reseal(huge), MAX_BLOCK_BYTES),
            Err(FrameError::MessageTooLarge { .. })
        ));
        // Two source blocks.
        let mut z = d[0].clone();
        z[20] = 2;
        assert!(matches!(
            parse(&reseal(z), MAX_BLOCK_BYTES),
            Err(FrameError::Inconsistent(_))
        ));
        // More envelopes than the length could hold; none at all; reserved bits set.
        for (at, v) in [(28, [0xff, 0xff]), (28, [0, 0]), (30, [0, 1])] {
            let mut e = d[0].clone();
            e[at..at + 2].copy_from_slice(&v);
            assert!(matches!(
                parse(&reseal(e), MAX_BLOCK_BYTES),
                Err(FrameError::Inconsistent(_))
            ));
        }
        // A block number other than 0 (raptorq would panic on it).
        let mut sbn = d[0].clone();
        sbn[FEC_HEADER_LEN] = 1;
        assert!(matches!(
            parse(&reseal(sbn), MAX_BLOCK_BYTES),
            Err(FrameError::Inconsistent(_))
        ));
        // Symbol id beyond K + R.
        let mut esi = d[0].clone();
        esi[FEC_HEADER_LEN + 1..FEC_HEADER_LEN + 4].copy_from_slice(&[0xff; 3]);
        assert!(parse(&reseal(esi), MAX_BLOCK_BYTES).is_err());
        // The old version 2.
        let mut v2 = d[0].clone();
        v2[2] = 2;
        assert_eq!(
            parse(&reseal(v2), MAX_BLOCK_BYTES),
            Err(FrameError::UnsupportedVersion(2))
        );
        // Truncated.
        assert!(parse(&d[0][..d[0].len() - 1], MAX_BLOCK_BYTES).is_err());
        assert!(matches!(
            parse(&d[0][..10], MAX_BLOCK_BYTES),
            Err(FrameError::TooShort(10))
        ));
        // Corrupted.
        let mut c = d[0].clone();
        c[44] ^= 1;
        assert_eq!(parse(&c, MAX_BLOCK_BYTES), Err(FrameError::BadChecksum));
    }
}
