//! The slot file's on-disk format: pure encoding, decoding and geometry, no I/O.
//!
//! ```text
//! offset 0                      file header page (4096 bytes): magic, version, geometry
//! offset 4096                   header table: one 128-byte slot header per slot, rounded
//!                               up to 4096 bytes (read in one sweep at open)
//! slots_start + i*stride        slot i: header page (the same 128-byte header, then the
//!                               metadata), then `slot_size` bytes of payload capacity
//! stride = 4096 + slot_size     (slot_size is a multiple of 4096)
//! ```
//!
//! Every field is little-endian. Headers end with an xxh3-64 of the bytes before it, so a
//! torn or bit-flipped header never decodes. A slot header carries an xxh3-64 of the payload
//! followed by the metadata, checked on read.
//!
//! The table entry is what makes an entry exist: recovery reads only the table (one
//! sequential read of 128 bytes per slot, 12.8 MB for 100 000 slots) instead of one random
//! read per slot. The copy in the slot's own header page travels in the same write as the
//! payload; a read checks it against the table (key, sequence number, lengths), so a slot
//! whose contents do not belong to the entry the table names is never served.
//!
//! Entry versions (the file header's version stays 1: the file's layout is unchanged):
//! version 2 keys an entry by its block name (16 bytes, see [`crate::key::block_name`]) in
//! the fixed header and stores the engine's whole key (1..=256 bytes) in the slot's header
//! page right after the fixed header, the metadata after it, so its metadata is at most
//! [`MAX_META`] less the key's length; it is written for every key that is not 16 bytes.
//! Version 1 entries (a 16-byte key, which is its own name, and the metadata right after
//! the fixed header, up to [`MAX_META`]) are still written for 16-byte keys, byte for byte as
//! before. A read compares the whole key in both versions.

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::io::IO_ALIGN;
use crate::key::MAX_KEY_LEN;
use crate::{err, Result};

/// Keys are the engine's block hashes, the same type as the fs store's.
pub use crate::key::Key;

/// Magic of the file header page.
pub const FILE_MAGIC: [u8; 8] = *b"KVRDISK\0";
/// Magic of a slot header.
pub const SLOT_MAGIC: [u8; 8] = *b"KVRSLOT\0";
/// Version of the file header (a reopen refuses others) and of 16-byte keys' slot headers.
pub const FORMAT_VERSION: u32 = 1;
/// Version of the slot headers of keys that are not 16 bytes (whole key in the page).
pub const FORMAT_VERSION_V2: u32 = 2;
/// Bytes of the file header page, and of every slot's header page.
pub const PAGE: u64 = IO_ALIGN as u64;
/// Bytes of the fixed part of a slot header (the metadata follows it in the header page).
pub const SLOT_HEADER_LEN: usize = 128;
/// Largest user metadata per entry: the rest of the slot's header page (less the key's
/// length for a key that is not 16 bytes, see [`max_meta`]).
pub const MAX_META: usize = PAGE as usize - SLOT_HEADER_LEN;

/// Largest metadata of an entry under a key of `key_len` bytes: [`MAX_META`] for a 16-byte
/// key (version 1, the key lives in the fixed header), else [`MAX_META`] less the key.
pub fn max_meta(key_len: usize) -> usize {
    if key_len == 16 {
        MAX_META
    } else {
        MAX_META.saturating_sub(key_len)
    }
}
/// Offset of the whole key's length in a version-2 slot header.
const KEY_LEN_AT: usize = 60;
/// Offset of the header checksum in both headers (it covers bytes `0..CHECKSUM_AT`).
const CHECKSUM_AT: usize = 120;

/// Geometry of a slot file: fixed at creation, checked on every reopen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Payload capacity of one slot, a multiple of 4096.
    pub slot_size: u64,
    /// Number of slots.
    pub num_slots: u64,
}

impl Geometry {
    /// Validates and rounds `slot_size` up to 4096. Rejects zero sizes and files whose size
    /// overflows `i64` (the largest file offset).
    pub fn new(slot_size: u64, num_slots: u64) -> Result<Geometry> {
        if slot_size == 0 {
            return Err(err!(InvalidArgument, "slot size is 0"));
        }
        if num_slots == 0 {
            return Err(err!(InvalidArgument, "number of slots is 0"));
        }
        if num_slots > u32::MAX as u64 - 1 {
            return Err(err!(
                InvalidArgument,
                "{num_slots} slots is more than the {} supported",
                u32::MAX - 1
            ));
        }
        let rounded = slot_size
            .checked_next_multiple_of(PAGE)
            .ok_or_else(|| err!(InvalidArgument, "slot size {slot_size} overflows"))?;
        let g = Geometry {
            slot_size: rounded,
            num_slots,
        };
        match g.checked_file_len() {
            Some(len) if len <= i64::MAX as u64 => Ok(g),
            _ => Err(err!(
                InvalidArgument,
                "{num_slots} slots of {rounded} bytes overflow the largest file size"
            )),
        }
    }

    fn checked_file_len(&self) -> Option<u64> {
        (self.slot_size + PAGE)
            .checked_mul(self.num_slots)?
            .checked_add(PAGE + Self::table_len_for(self.num_slots))
    }

    fn table_len_for(num_slots: u64) -> u64 {
        (num_slots * SLOT_HEADER_LEN as u64).next_multiple_of(PAGE)
    }

    /// File offset of the header table.
    pub fn table_offset(&self) -> u64 {
        PAGE
    }

    /// Bytes of the header table (128 per slot, rounded up to 4096).
    pub fn table_len(&self) -> u64 {
        Self::table_len_for(self.num_slots)
    }

    /// File offset of slot `i`'s entry in the header table.
    pub fn table_entry_offset(&self, i: u32) -> u64 {
        PAGE + i as u64 * SLOT_HEADER_LEN as u64
    }

    /// File offset of slot 0.
    pub fn slots_start(&self) -> u64 {
        PAGE + self.table_len()
    }

    /// Bytes from one slot to the next: header page plus payload capacity.
    pub fn stride(&self) -> u64 {
        self.slot_size + PAGE
    }

    /// File offset of slot `i`'s header page.
    pub fn slot_offset(&self, i: u32) -> u64 {
        self.slots_start() + i as u64 * self.stride()
    }

    /// Total file size.
    pub fn file_len(&self) -> u64 {
        self.slots_start() + self.num_slots * self.stride()
    }
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Encodes the file header page into `page` (at least 128 bytes; the rest is left alone).
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0   | 8 | magic `KVRDISK\0` |
/// | 8   | 4 | format version |
/// | 12  | 4 | page size (4096) |
/// | 16  | 8 | slot size (payload capacity) |
/// | 24  | 8 | number of slots |
/// | 32  | 8 | stride |
/// | 40  | 8 | offset of slot 0 |
/// | 48  | 8 | offset of the header table |
/// | 56  | 64 | zero |
/// | 120 | 8 | xxh3-64 of bytes 0..120 |
pub fn encode_file_header(g: &Geometry, page: &mut [u8]) {
    page[..SLOT_HEADER_LEN].fill(0);
    page[0..8].copy_from_slice(&FILE_MAGIC);
    put_u32(page, 8, FORMAT_VERSION);
    put_u32(page, 12, PAGE as u32);
    put_u64(page, 16, g.slot_size);
    put_u64(page, 24, g.num_slots);
    put_u64(page, 32, g.stride());
    put_u64(page, 40, g.slots_start());
    put_u64(page, 48, g.table_offset());
    let sum = xxh3_64(&page[..CHECKSUM_AT]);
    put_u64(page, CHECKSUM_AT, sum);
}

/// Why a file header did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileHeaderError {
    /// Not a kvr slot file (magic differs).
    NotSlotFile,
    /// A kvr slot file of another format version.
    Version(u32),
    /// The header checksum fails (torn or damaged header page).
    Checksum,
}

/// Decodes a file header page; returns the geometry it records.
pub fn decode_file_header(page: &[u8]) -> std::result::Result<Geometry, FileHeaderError> {
    if page.len() < SLOT_HEADER_LEN || page[0..8] != FILE_MAGIC {
        return Err(FileHeaderError::NotSlotFile);
    }
    if xxh3_64(&page[..CHECKSUM_AT]) != get_u64(page, CHECKSUM_AT) {
        return Err(FileHeaderError::Checksum);
    }
    let v = get_u32(page, 8);
    if v != FORMAT_VERSION {
        return Err(FileHeaderError::Version(v));
    }
    let g = Geometry {
        slot_size: get_u64(page, 16),
        num_slots: get_u64(page, 24),
    };
    let consistent = get_u32(page, 12) as u64 == PAGE
        && get_u64(page, 32) == g.stride()
        && Geometry::new(g.slot_size, g.num_slots).ok() == Some(g);
    if !consistent || get_u64(page, 40) != g.slots_start() || get_u64(page, 48) != PAGE {
        return Err(FileHeaderError::Checksum);
    }
    Ok(g)
}

/// The fixed header of one slot's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotHeader {
    /// The entry's block name (version 1: its 16-byte key).
    pub key: Key,
    /// Bytes of payload.
    pub len: u64,
    /// Bytes of user metadata (stored right after this header, at most [`MAX_META`]).
    pub meta_len: u32,
    /// Write sequence number: for one key the highest wins at recovery.
    pub seq: u64,
    /// xxh3-64 of the payload followed by the metadata.
    pub data_sum: u64,
    /// Index of the slot the entry was written to (catches misplaced writes).
    pub slot: u32,
}

/// xxh3-64 of the payload followed by the metadata, as stored in [`SlotHeader::data_sum`].
pub fn data_checksum(payload: &[u8], meta: &[u8]) -> u64 {
    if meta.is_empty() {
        return xxh3_64(payload);
    }
    let mut h = Xxh3::new();
    h.update(payload);
    h.update(meta);
    h.digest()
}

/// [`data_checksum`] of the concatenation of `segments`, then the metadata.
pub fn data_checksum_segments(segments: &[&[u8]], meta: &[u8]) -> u64 {
    if let [one] = segments {
        return data_checksum(one, meta);
    }
    let mut h = Xxh3::new();
    for s in segments {
        h.update(s);
    }
    h.update(meta);
    h.digest()
}

/// Encodes a version-2 slot header page: the fixed header (as [`encode_slot_header`], with
/// version 2 and the whole key's length at offset 60), the whole `key`, then `meta`. `page`
/// must hold at least `SLOT_HEADER_LEN + key.len() + meta.len()` bytes; the rest of it is
/// left alone.
pub fn encode_slot_header_v2(h: &SlotHeader, key: &[u8], meta: &[u8], page: &mut [u8]) {
    debug_assert_eq!(meta.len(), h.meta_len as usize);
    debug_assert!(!key.is_empty() && key.len() <= MAX_KEY_LEN);
    debug_assert!(meta.len() <= max_meta(key.len()));
    fixed_header(h, FORMAT_VERSION_V2, key.len() as u32, page);
    let (k, m) = (SLOT_HEADER_LEN, SLOT_HEADER_LEN + key.len());
    page[k..m].copy_from_slice(key);
    page[m..m + meta.len()].copy_from_slice(meta);
}

fn fixed_header(h: &SlotHeader, version: u32, key_len: u32, page: &mut [u8]) {
    page[..SLOT_HEADER_LEN].fill(0);
    page[0..8].copy_from_slice(&SLOT_MAGIC);
    put_u32(page, 8, version);
    put_u32(page, 12, h.meta_len);
    page[16..32].copy_from_slice(&h.key.0);
    put_u64(page, 32, h.len);
    put_u64(page, 40, h.seq);
    put_u64(page, 48, h.data_sum);
    put_u32(page, 56, h.slot);
    put_u32(page, KEY_LEN_AT, key_len);
    let sum = xxh3_64(&page[..CHECKSUM_AT]);
    put_u64(page, CHECKSUM_AT, sum);
}

/// The whole key and the metadata in a slot's header page whose fixed header decoded as
/// `h` (version 1: the key is the 16-byte name in the fixed header).
pub fn slot_key_and_meta<'a>(page: &'a [u8], h: &SlotHeader) -> (&'a [u8], &'a [u8]) {
    let m = h.meta_len as usize;
    if get_u32(page, 8) == FORMAT_VERSION {
        return (&page[16..32], &page[SLOT_HEADER_LEN..SLOT_HEADER_LEN + m]);
    }
    let k = get_u32(page, KEY_LEN_AT) as usize;
    let key = &page[SLOT_HEADER_LEN..SLOT_HEADER_LEN + k];
    (key, &page[SLOT_HEADER_LEN + k..SLOT_HEADER_LEN + k + m])
}

/// Encodes a version-1 slot header page (a 16-byte key, its own name): the fixed header then
/// `meta`. `page` must hold at least
/// `SLOT_HEADER_LEN + meta.len()` bytes; the rest of it is left alone.
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0   | 8 | magic `KVRSLOT\0` |
/// | 8   | 4 | format version |
/// | 12  | 4 | metadata length |
/// | 16  | 16 | key |
/// | 32  | 8 | payload length |
/// | 40  | 8 | sequence number |
/// | 48  | 8 | xxh3-64 of payload then metadata |
/// | 56  | 4 | slot index |
/// | 60  | 60 | zero |
/// | 120 | 8 | xxh3-64 of bytes 0..120 |
/// | 128 | meta length | metadata |
pub fn encode_slot_header(h: &SlotHeader, meta: &[u8], page: &mut [u8]) {
    debug_assert_eq!(meta.len(), h.meta_len as usize);
    fixed_header(h, FORMAT_VERSION, 0, page);
    page[SLOT_HEADER_LEN..SLOT_HEADER_LEN + meta.len()].copy_from_slice(meta);
}

/// Decodes a slot header; `None` for a free, torn, damaged or foreign header, or one whose
/// lengths do not fit `slot_size` or whose slot index is not `slot`.
pub fn decode_slot_header(page: &[u8], slot: u32, slot_size: u64) -> Option<SlotHeader> {
    if page.len() < SLOT_HEADER_LEN || page[0..8] != SLOT_MAGIC {
        return None;
    }
    if xxh3_64(&page[..CHECKSUM_AT]) != get_u64(page, CHECKSUM_AT) {
        return None;
    }
    let h = SlotHeader {
        key: Key(page[16..32].try_into().unwrap()),
        len: get_u64(page, 32),
        meta_len: get_u32(page, 12),
        seq: get_u64(page, 40),
        data_sum: get_u64(page, 48),
        slot: get_u32(page, 56),
    };
    let key_len = get_u32(page, KEY_LEN_AT) as usize;
    let layout_ok = match get_u32(page, 8) {
        FORMAT_VERSION => key_len == 0 && h.meta_len as usize <= MAX_META,
        FORMAT_VERSION_V2 => {
            (1..=MAX_KEY_LEN).contains(&key_len)
                && key_len != 16
                && h.meta_len as usize <= max_meta(key_len)
        }
        _ => false,
    };
    let ok = layout_ok && h.slot == slot && h.len > 0 && h.len <= slot_size;
    ok.then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_rounds_and_rejects() {
        let g = Geometry::new(1, 3).unwrap();
        assert_eq!(g.slot_size, 4096);
        assert_eq!(g.stride(), 8192);
        assert_eq!((g.table_offset(), g.table_len()), (4096, 4096));
        assert_eq!(g.table_entry_offset(2), 4096 + 256);
        assert_eq!(g.slot_offset(0), 8192);
        assert_eq!(g.slot_offset(2), 8192 + 2 * 8192);
        assert_eq!(g.file_len(), 8192 + 3 * 8192);
        let g = Geometry::new(65536, 100_000).unwrap();
        assert_eq!(g.table_len(), 12_800_000);
        assert_eq!(g.slots_start() % PAGE, 0);
        assert_eq!(Geometry::new(1, 33).unwrap().table_len(), 8192);
        assert_eq!(Geometry::new(4096, 1).unwrap().slot_size, 4096);
        assert_eq!(Geometry::new(4097, 1).unwrap().slot_size, 8192);
        assert!(Geometry::new(0, 1).is_err());
        assert!(Geometry::new(4096, 0).is_err());
        assert!(Geometry::new(u64::MAX, 1).is_err());
        assert!(Geometry::new(1 << 40, 1 << 30).is_err());
        assert!(Geometry::new(4096, u32::MAX as u64).is_err());
        for s in (1..100_000u64).step_by(997) {
            let g = Geometry::new(s, 7).unwrap();
            assert_eq!(g.slot_size % PAGE, 0);
            assert!(g.slot_size >= s && g.slot_size < s + PAGE);
            assert_eq!(g.slot_offset(6) + g.stride(), g.file_len());
            assert!(g.table_entry_offset(6) + 128 <= g.slots_start());
        }
    }

    #[test]
    fn file_header_round_trip_and_every_bit_flip_fails() {
        let g = Geometry::new(65536, 100).unwrap();
        let mut page = vec![0u8; 4096];
        encode_file_header(&g, &mut page);
        assert_eq!(decode_file_header(&page), Ok(g));
        for bit in 0..CHECKSUM_AT * 8 + 64 {
            let mut p = page.clone();
            p[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_file_header(&p).is_err(), "bit {bit}");
        }
        assert_eq!(
            decode_file_header(&[0u8; 4096]),
            Err(FileHeaderError::NotSlotFile)
        );
        let mut p = page.clone();
        put_u32(&mut p, 8, 2);
        let sum = xxh3_64(&p[..CHECKSUM_AT]);
        put_u64(&mut p, CHECKSUM_AT, sum);
        assert_eq!(decode_file_header(&p), Err(FileHeaderError::Version(2)));
    }

    fn sample(slot: u32) -> SlotHeader {
        SlotHeader {
            key: Key(*b"0123456789abcdef"),
            len: 5000,
            meta_len: 3,
            seq: 42,
            data_sum: 0xdead_beef,
            slot,
        }
    }

    #[test]
    fn slot_header_round_trip_and_every_bit_flip_fails() {
        let h = sample(7);
        let mut page = vec![0u8; 4096];
        encode_slot_header(&h, b"abc", &mut page);
        assert_eq!(decode_slot_header(&page, 7, 8192), Some(h));
        assert_eq!(&page[128..131], b"abc");
        for bit in 0..SLOT_HEADER_LEN * 8 {
            let mut p = page.clone();
            p[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode_slot_header(&p, 7, 8192), None, "bit {bit}");
        }
        // Wrong slot, payload longer than the slot, zero page.
        assert_eq!(decode_slot_header(&page, 8, 8192), None);
        assert_eq!(decode_slot_header(&page, 7, 4096), None);
        assert_eq!(decode_slot_header(&[0u8; 4096], 0, 8192), None);
    }

    #[test]
    fn data_checksum_covers_payload_and_meta() {
        let a = data_checksum(b"hello", b"");
        assert_eq!(a, xxh3_64(b"hello"));
        assert_eq!(data_checksum(b"hello", b"m"), xxh3_64(b"hellom"));
        assert_ne!(data_checksum(b"hello", b"m"), a);
    }

    #[test]
    fn v2_slot_pages_hold_the_whole_key() {
        let h = sample(3);
        for key_len in [1usize, 15, 36, 256] {
            let key: Vec<u8> = (0..key_len).map(|i| i as u8 ^ 0x5a).collect();
            let mut page = vec![0u8; 4096];
            encode_slot_header_v2(&h, &key, b"abc", &mut page);
            assert_eq!(decode_slot_header(&page, 3, 8192), Some(h));
            assert_eq!(slot_key_and_meta(&page, &h), (&key[..], &b"abc"[..]));
            for bit in 0..SLOT_HEADER_LEN * 8 {
                let mut p = page.clone();
                p[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(decode_slot_header(&p, 3, 8192), None, "bit {bit}");
            }
        }
        // The longest key leaves MAX_META - 256 bytes of metadata.
        let mut big = sample(0);
        big.meta_len = max_meta(MAX_KEY_LEN) as u32;
        let mut page = vec![0u8; 4096];
        encode_slot_header_v2(&big, &[1; MAX_KEY_LEN], &vec![2; 3712], &mut page);
        assert_eq!(decode_slot_header(&page, 0, 8192), Some(big));
        assert_eq!(
            (max_meta(MAX_KEY_LEN), max_meta(16), max_meta(1)),
            (3712, 3968, 3967)
        );
        let mut v1 = vec![0u8; 4096];
        encode_slot_header(&h, b"abc", &mut v1);
        assert_eq!(slot_key_and_meta(&v1, &h), (&h.key.0[..], &b"abc"[..]));
    }
}
