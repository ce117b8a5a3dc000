//! A block as an object: its name (`<namespace>/<hh>/<name hex>.kvb` under the store's
//! prefix, the fs store's layout and naming: the block name of [`crate::key::block_name`],
//! the key itself for a 16-byte key) and its bytes (exactly an fs block file, built and
//! checked with the fs store's codec, [`crate::fs::format`]: the whole key is in its header).

use bytes::Bytes;
use opendal::Buffer;

use super::body_pool::BodyPool;
use crate::fs::format::{self, Header, TensorSpec};
use crate::fs::path::BLOCK_EXT;
use crate::{err, Key, Result};

/// The object name of the block named `name` (see [`crate::key::block_name`]; a 16-byte
/// key is its own name) in `namespace`, relative to the store's prefix.
pub fn object_path(namespace: &str, name: &Key) -> String {
    let hex = name.to_hex();
    format!("{namespace}/{}/{hex}{BLOCK_EXT}", &hex[..2])
}

/// The block name an object name (relative to its namespace directory: `<hh>/<hex>.kvb`)
/// stands for; `None` for a name that is not a block's.
pub fn name_of(name_in_namespace: &str) -> Option<Key> {
    let (dir, file) = name_in_namespace.split_once('/')?;
    let key = Key::from_hex(file.strip_suffix(BLOCK_EXT)?)?;
    (dir == &key.to_hex()[..2]).then_some(key)
}

/// The object's bytes: the block file header of the whole engine `key`, then the payload
/// gathered from `segments` (copied once into a body from `bodies`, which the HTTP client
/// owns until the request ends). `len` is the segments' total.
pub fn encode(
    bodies: &BodyPool,
    key: &[u8],
    segments: &[&[u8]],
    len: usize,
    tensor: &TensorSpec,
) -> Buffer {
    let (payload, sum) = bodies.gather(segments, len);
    let header = format::encode_header(key, len as u64, sum, tensor);
    Buffer::from(vec![Bytes::from(header), payload])
}

/// How many bytes a load of a `payload_len` block fetches in one request: the header of any
/// ordinary shape fits in one page (a longer header costs a second request). Exactly the
/// block's size: a ranged read of more than the object holds is an error to OpenDAL, so
/// bytes after the block's end are not seen by loads (they check everything the header
/// covers; `verify` also checks the object's size).
pub fn first_fetch(payload_len: usize) -> u64 {
    crate::io::IO_ALIGN as u64 + payload_len as u64
}

/// What checking a fetched object found.
pub enum Checked {
    /// Intact, and its payload was copied into the destination.
    Loaded(Header),
    /// The header asks for more bytes than were fetched (a header longer than a page, or a
    /// payload longer than the destination): fetch this many and check again.
    FetchWhole(u64),
    /// The object holds the block of another key with the same name (a name collision):
    /// intact, but never this key's bytes.
    OtherKey(Vec<u8>),
    /// The header announces another payload length than the destination's: the block is
    /// intact but of another layout if the object is `object_len` bytes long.
    OtherLength {
        /// The header's payload length.
        payload_len: u64,
        /// The object's length if intact.
        object_len: u64,
    },
}

/// Checks a fetched object (`fetched` bytes of it, from offset 0) against the whole engine
/// `key` of `namespace` and scatters its payload over `dst`'s segments (`len` bytes in all)
/// while checksumming it. `Corrupt` with the reason if it is bad; `dst`'s contents are
/// unspecified then. `complete`: `fetched` is the whole object.
pub fn check_into(
    fetched: &Buffer,
    complete: bool,
    namespace: &str,
    key: &[u8],
    dst: &mut [&mut [u8]],
    len: usize,
) -> Result<Checked> {
    let total = fetched.len();
    if total < 8 {
        return Err(err!(
            Corrupt,
            "object is {total} bytes, shorter than a block header"
        ));
    }
    // Only the header is gathered into one piece: `to_bytes` of a response of several
    // chunks copies, and the payload is copied once, below, into `dst`.
    let mut prefix = [0u8; 8];
    bytes::Buf::copy_to_slice(&mut fetched.slice(0..8), &mut prefix);
    let header_len = format::header_len(&prefix)?;
    if header_len > total {
        return if complete {
            Err(err!(
                Corrupt,
                "object is {total} bytes, its header says {header_len}"
            ))
        } else {
            Ok(Checked::FetchWhole(header_len as u64 + len as u64))
        };
    }
    let head = fetched.slice(0..header_len).to_bytes();
    let h = format::decode_header(&head)?;
    if h.key != key {
        let ns = namespace.as_bytes();
        let name = crate::key::block_name(ns, key);
        if crate::key::block_name(ns, &h.key) == name {
            return Ok(Checked::OtherKey(h.key));
        }
        return Err(err!(
            Corrupt,
            "object holds key {} but is named for {name}",
            Key::display_bytes(&h.key)
        ));
    }
    let want = h.data_offset as u64 + h.payload_len;
    if h.payload_len != len as u64 {
        return Ok(Checked::OtherLength {
            payload_len: h.payload_len,
            object_len: want,
        });
    }
    if want != total as u64 {
        if !complete && want > total as u64 {
            return Ok(Checked::FetchWhole(want));
        }
        return Err(err!(
            Corrupt,
            "object is {total} bytes, its header says {want} ({} + {} payload)",
            h.data_offset,
            h.payload_len
        ));
    }
    let mut sum = xxhash_rust::xxh3::Xxh3::new();
    let mut out = Scatter::new(dst);
    for chunk in fetched.slice(h.data_offset..total) {
        out.copy(&chunk);
        sum.update(&chunk);
    }
    let sum = sum.digest();
    if sum != h.checksum {
        return Err(err!(
            Corrupt,
            "checksum mismatch: xxh3-64 of the payload is {sum:016x}, header says {:016x}",
            h.checksum
        ));
    }
    Ok(Checked::Loaded(h))
}

/// Copies a byte stream, chunk by chunk, over a list of destination segments in order.
struct Scatter<'a, 'b> {
    dst: &'a mut [&'b mut [u8]],
    segment: usize,
    at: usize,
}

impl<'a, 'b> Scatter<'a, 'b> {
    fn new(dst: &'a mut [&'b mut [u8]]) -> Self {
        Scatter {
            dst,
            segment: 0,
            at: 0,
        }
    }

    /// Copies `chunk` to the current position (the segments have room for every chunk: the
    /// caller checked the total).
    fn copy(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let seg = &mut self.dst[self.segment];
            let n = chunk.len().min(seg.len() - self.at);
            seg[self.at..self.at + n].copy_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            self.at += n;
            if self.at == seg.len() {
                self.segment += 1;
                self.at = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn key() -> Key {
        Key([0xab; 16])
    }

    #[test]
    fn names_round_trip() {
        let p = object_path("ns", &key());
        assert_eq!(p, format!("ns/ab/{}.kvb", key().to_hex()));
        assert_eq!(name_of(p.strip_prefix("ns/").unwrap()), Some(key()));
        assert_eq!(name_of(&format!("ac/{}.kvb", key().to_hex())), None);
        assert_eq!(name_of("ab/xyz.kvb"), None);
        assert_eq!(name_of(&format!("ab/{}.tmp", key().to_hex())), None);
        // A whole key is named as the fs store names its block file.
        let long = [5u8; 40];
        let name = crate::key::block_name(b"ns", &long);
        let hex = name.to_hex();
        assert_eq!(
            object_path("ns", &name),
            format!("ns/{}/{hex}.kvb", &hex[..2])
        );
    }

    /// `check_into` of one contiguous destination.
    fn check(obj: &Buffer, complete: bool, key: &[u8], dst: &mut [u8]) -> Result<Checked> {
        let len = dst.len();
        check_into(obj, complete, "ns", key, &mut [dst], len)
    }

    #[test]
    fn objects_are_block_files_and_are_checked() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let obj = encode(
            &BodyPool::new(1),
            &key().0,
            &[&data],
            data.len(),
            &TensorSpec::bytes(10_000),
        );
        let bytes = obj.to_bytes();
        // Exactly the fs store's block file: its own checker accepts it.
        crate::fs::maintenance::check_block_bytes(&bytes, "ns", &key()).unwrap();
        let mut dst = vec![0u8; data.len()];
        assert!(matches!(
            check(&obj, true, &key().0, &mut dst).unwrap(),
            Checked::Loaded(_)
        ));
        assert_eq!(dst, data);
        // A shorter destination: another length, nothing claimed to be loaded.
        let mut short = vec![0u8; 10];
        assert!(matches!(
            check(&obj, false, &key().0, &mut short).unwrap(),
            Checked::OtherLength {
                payload_len: 10_000,
                object_len: 14_096
            }
        ));
        // A truncated first fetch of a longer object asks for the rest.
        let part = obj.slice(0..4096 + 10_000 - 1);
        assert!(matches!(
            check(&part, false, &key().0, &mut dst).unwrap(),
            Checked::FetchWhole(14_096)
        ));
        // Damage: a flipped payload bit, a truncation, another key.
        let mut bad = bytes.to_vec();
        *bad.last_mut().unwrap() ^= 1;
        let bad = Buffer::from(bad);
        let e = check(&bad, true, &key().0, &mut dst).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.to_string().contains("checksum"), "{e}");
        let cut = obj.slice(0..obj.len() - 1);
        let e = check(&cut, true, &key().0, &mut dst).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        let e = check(&obj, true, &[1; 16], &mut dst).err().unwrap();
        assert!(e.to_string().contains("named for"), "{e}");
        let e = check(&Buffer::new(), true, &key().0, &mut dst)
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }

    /// A response arrives in chunks of any size, the 8-byte length prefix and the header
    /// split across them: checked and loaded all the same, and damage still found.
    #[test]
    fn responses_in_small_chunks_are_checked_as_one() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7) as u8).collect();
        let bytes = encode(
            &BodyPool::new(1),
            &key().0,
            &[&data],
            data.len(),
            &TensorSpec::bytes(20_000),
        )
        .to_bytes();
        for size in [1usize, 3, 5, 4095, 4097] {
            let chunked = |b: &[u8]| -> Buffer {
                b.chunks(size).map(bytes::Bytes::copy_from_slice).collect()
            };
            let mut dst = vec![0u8; data.len()];
            assert!(matches!(
                check(&chunked(&bytes), true, &key().0, &mut dst).unwrap(),
                Checked::Loaded(_)
            ));
            assert_eq!(dst, data, "chunks of {size}");
            let mut bad = bytes.to_vec();
            bad[4096 + 12_345] ^= 0x40;
            let e = check(&chunked(&bad), true, &key().0, &mut dst)
                .err()
                .unwrap();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "chunks of {size}: {e}");
            let e = check(&chunked(&bytes[..7]), true, &key().0, &mut dst)
                .err()
                .unwrap();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "chunks of {size}: {e}");
        }
    }

    #[test]
    fn whole_keys_are_gathered_scattered_and_compared_in_full() {
        let long: Vec<u8> = (0..200u8).collect();
        let parts: [&[u8]; 3] = [&[1; 3000], &[2; 5000], &[3; 100]];
        let obj = encode(
            &BodyPool::new(1),
            &long,
            &parts,
            8100,
            &TensorSpec::bytes(8100),
        );
        let bytes = obj.to_bytes();
        let name = crate::key::block_name(b"ns", &long);
        let h = crate::fs::maintenance::check_block_bytes(&bytes, "ns", &name).unwrap();
        assert_eq!((h.version, h.key.as_slice()), (2, long.as_slice()));
        // Scattered over segments that cut the parts elsewhere.
        let (mut a, mut b) = (vec![0u8; 1], vec![0u8; 8099]);
        let got = check_into(&obj, true, "ns", &long, &mut [&mut a, &mut b], 8100).unwrap();
        assert!(matches!(got, Checked::Loaded(_)));
        let whole: Vec<u8> = parts.concat();
        assert_eq!([a, b].concat(), whole);
        // Another key, named elsewhere: an object holding `long` cannot be its block (a
        // forced name collision, where it is a plain miss, is tested in tests/obj_keys.rs).
        let mut other = long.clone();
        other[199] ^= 1;
        let mut dst = vec![0u8; 8100];
        let e = check(&obj, true, &other, &mut dst).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }
}
