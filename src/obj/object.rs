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
/// unspecified then. `complete`: `fetched` is the whole object. (Loads feed a [`Checker`]
/// as the response arrives; this is it over a whole fetched buffer, for tests.)
#[cfg(test)]
pub fn check_into(
    fetched: &Buffer,
    complete: bool,
    namespace: &str,
    key: &[u8],
    dst: &mut [&mut [u8]],
    len: usize,
) -> Result<Checked> {
    let mut checker = Checker::new(namespace, key, dst, len);
    for chunk in fetched.clone() {
        if !checker.feed(&chunk) {
            break;
        }
    }
    checker.finish(complete)
}

/// [`check_into`] of an object that arrives chunk by chunk: each chunk's payload bytes are
/// copied into the destination and checksummed as it comes, so the response need not be
/// held (the HTTP client's receive buffer is reused, and stays in the cache).
pub struct Checker<'n, 'd, 'b> {
    namespace: &'n str,
    key: &'n [u8],
    len: usize,
    out: Scatter<'d, 'b>,
    /// The object's first bytes, gathered until its header is complete.
    head: Vec<u8>,
    /// The decoded header, once `head` holds it.
    header: Option<Header>,
    /// Bytes fed so far: the offset of the next byte.
    at: u64,
    sum: xxhash_rust::xxh3::Xxh3,
    /// What the header alone decided (another key or length, a bad header): no more
    /// bytes are needed.
    verdict: Option<Result<Checked>>,
}

impl<'n, 'd, 'b> Checker<'n, 'd, 'b> {
    pub fn new(namespace: &'n str, key: &'n [u8], dst: &'d mut [&'b mut [u8]], len: usize) -> Self {
        Checker {
            namespace,
            key,
            len,
            out: Scatter::new(dst),
            head: Vec::new(),
            header: None,
            at: 0,
            sum: xxhash_rust::xxh3::Xxh3::new(),
            verdict: None,
        }
    }

    /// Takes the object's next bytes; `false` once the verdict no longer depends on more.
    pub fn feed(&mut self, mut chunk: &[u8]) -> bool {
        if self.verdict.is_some() {
            return false;
        }
        if self.header.is_none() {
            let taken = self.gather_header(chunk);
            chunk = &chunk[taken..];
            if self.verdict.is_some() {
                return false;
            }
            if self.header.is_none() {
                return true;
            }
        }
        self.payload(chunk);
        true
    }

    /// Adds `chunk`'s first bytes to the header; decodes and judges it once complete. How
    /// many bytes it took.
    fn gather_header(&mut self, chunk: &[u8]) -> usize {
        let need = if self.head.len() < 8 {
            8
        } else {
            match format::header_len(&self.prefix()) {
                Ok(n) => n,
                Err(e) => {
                    self.verdict = Some(Err(e));
                    return 0;
                }
            }
        };
        let take = (need - self.head.len().min(need)).min(chunk.len());
        self.head.extend_from_slice(&chunk[..take]);
        self.at += take as u64;
        if self.head.len() < need {
            return take;
        }
        if need == 8 {
            // The length prefix is complete: now gather the header it announces.
            return take + self.gather_header(&chunk[take..]);
        }
        let h = match format::decode_header(&self.head[..need]) {
            Ok(h) => h,
            Err(e) => {
                self.verdict = Some(Err(e));
                return take;
            }
        };
        if h.key != self.key {
            let ns = self.namespace.as_bytes();
            let name = crate::key::block_name(ns, self.key);
            self.verdict = Some(if crate::key::block_name(ns, &h.key) == name {
                Ok(Checked::OtherKey(h.key))
            } else {
                Err(err!(
                    Corrupt,
                    "object holds key {} but is named for {name}",
                    Key::display_bytes(&h.key)
                ))
            });
            return take;
        }
        if h.payload_len != self.len as u64 {
            self.verdict = Some(Ok(Checked::OtherLength {
                payload_len: h.payload_len,
                object_len: h.data_offset as u64 + h.payload_len,
            }));
            return take;
        }
        // The payload starts right after the header (`decode_header` sets it so).
        debug_assert_eq!(h.data_offset, need);
        self.header = Some(h);
        take
    }

    /// Copies and checksums the part of `chunk` (the bytes at `self.at` on) that lies in
    /// the payload; counts the rest.
    fn payload(&mut self, chunk: &[u8]) {
        let h = self
            .header
            .as_ref()
            .expect("payload bytes follow the header");
        let (start, end) = (h.data_offset as u64, h.data_offset as u64 + h.payload_len);
        let from = self.at;
        self.at += chunk.len() as u64;
        let lo = start.clamp(from, self.at);
        let hi = end.clamp(from, self.at);
        if lo < hi {
            let part = &chunk[(lo - from) as usize..(hi - from) as usize];
            self.out.copy(part);
            self.sum.update(part);
        }
    }

    /// The object's 8-byte length prefix (once gathered).
    fn prefix(&self) -> [u8; 8] {
        let mut p = [0u8; 8];
        p.copy_from_slice(&self.head[..8]);
        p
    }

    /// The verdict once every byte fetched was fed; `complete`: they are the whole object.
    pub fn finish(self, complete: bool) -> Result<Checked> {
        if let Some(v) = self.verdict {
            return v;
        }
        let total = self.at;
        if total < 8 {
            return Err(err!(
                Corrupt,
                "object is {total} bytes, shorter than a block header"
            ));
        }
        let Some(h) = self.header else {
            let header_len = format::header_len(&self.prefix())?;
            return if complete {
                Err(err!(
                    Corrupt,
                    "object is {total} bytes, its header says {header_len}"
                ))
            } else {
                Ok(Checked::FetchWhole(header_len as u64 + self.len as u64))
            };
        };
        let want = h.data_offset as u64 + h.payload_len;
        if want != total {
            if !complete && want > total {
                return Ok(Checked::FetchWhole(want));
            }
            return Err(err!(
                Corrupt,
                "object is {total} bytes, its header says {want} ({} + {} payload)",
                h.data_offset,
                h.payload_len
            ));
        }
        let sum = self.sum.digest();
        if sum != h.checksum {
            return Err(err!(
                Corrupt,
                "checksum mismatch: xxh3-64 of the payload is {sum:016x}, header says {:016x}",
                h.checksum
            ));
        }
        Ok(Checked::Loaded(h))
    }
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
