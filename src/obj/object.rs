//! A block as an object: its name (`<namespace>/<hh>/<key hex>.kvb` under the store's
//! prefix, the fs store's layout) and its bytes (exactly an fs block file, built and checked
//! with the fs store's codec, [`crate::fs::format`]).

use bytes::Bytes;
use opendal::Buffer;

use crate::fs::format::{self, Header, TensorSpec};
use crate::fs::path::BLOCK_EXT;
use crate::{err, Key, Result};

/// The object name of `key`'s block in `namespace`, relative to the store's prefix.
pub fn object_path(namespace: &str, key: &Key) -> String {
    let hex = key.to_hex();
    format!("{namespace}/{}/{hex}{BLOCK_EXT}", &hex[..2])
}

/// The key an object name (relative to its namespace directory: `<hh>/<hex>.kvb`) stands
/// for; `None` for a name that is not a block's.
pub fn key_of(name_in_namespace: &str) -> Option<Key> {
    let (dir, file) = name_in_namespace.split_once('/')?;
    let key = Key::from_hex(file.strip_suffix(BLOCK_EXT)?)?;
    (dir == &key.to_hex()[..2]).then_some(key)
}

/// The object's bytes: the block file header, then the payload (copied once into the
/// request body, which the HTTP client owns until the request ends).
pub fn encode(key: &Key, data: &[u8], tensor: &TensorSpec) -> Buffer {
    let header = format::encode_header(&key.0, data.len() as u64, format::checksum(data), tensor);
    Buffer::from(vec![Bytes::from(header), Bytes::copy_from_slice(data)])
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
    /// The header announces another payload length than the destination's: the block is
    /// intact but of another layout if the object is `object_len` bytes long.
    OtherLength {
        /// The header's payload length.
        payload_len: u64,
        /// The object's length if intact.
        object_len: u64,
    },
}

/// Checks a fetched object (`fetched` bytes of it, from offset 0) against `key` and copies
/// its payload into `dst` while checksumming it. `Corrupt` with the reason if it is bad;
/// `dst`'s contents are unspecified then. `complete`: `fetched` is the whole object.
pub fn check_into(fetched: &Buffer, complete: bool, key: &Key, dst: &mut [u8]) -> Result<Checked> {
    let total = fetched.len();
    let prefix_len = total.min(format::MAX_HEADER);
    let head = fetched.slice(0..prefix_len).to_bytes();
    let prefix: [u8; 8] = head
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            err!(
                Corrupt,
                "object is {total} bytes, shorter than a block header"
            )
        })?;
    let header_len = format::header_len(&prefix)?;
    if header_len > total {
        return if complete {
            Err(err!(
                Corrupt,
                "object is {total} bytes, its header says {header_len}"
            ))
        } else {
            Ok(Checked::FetchWhole(header_len as u64 + dst.len() as u64))
        };
    }
    let h = format::decode_header(&head[..header_len])?;
    if h.key != key.0 {
        return Err(err!(
            Corrupt,
            "object holds key {} but is named for {key}",
            Key::display_bytes(&h.key)
        ));
    }
    let want = h.data_offset as u64 + h.payload_len;
    if h.payload_len != dst.len() as u64 {
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
    let mut at = 0;
    for chunk in fetched.slice(h.data_offset..total) {
        dst[at..at + chunk.len()].copy_from_slice(&chunk);
        sum.update(&chunk);
        at += chunk.len();
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
        assert_eq!(key_of(p.strip_prefix("ns/").unwrap()), Some(key()));
        assert_eq!(key_of(&format!("ac/{}.kvb", key().to_hex())), None);
        assert_eq!(key_of("ab/xyz.kvb"), None);
        assert_eq!(key_of(&format!("ab/{}.tmp", key().to_hex())), None);
    }

    #[test]
    fn objects_are_block_files_and_are_checked() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let obj = encode(&key(), &data, &TensorSpec::bytes(data.len() as u64));
        let bytes = obj.to_bytes();
        // Exactly the fs store's block file: its own checker accepts it.
        crate::fs::maintenance::check_block_bytes(&bytes, "ns", &key()).unwrap();
        let mut dst = vec![0u8; data.len()];
        assert!(matches!(
            check_into(&obj, true, &key(), &mut dst).unwrap(),
            Checked::Loaded(_)
        ));
        assert_eq!(dst, data);
        // A shorter destination: another length, nothing claimed to be loaded.
        let mut short = vec![0u8; 10];
        assert!(matches!(
            check_into(&obj, false, &key(), &mut short).unwrap(),
            Checked::OtherLength {
                payload_len: 10_000,
                object_len: 14_096
            }
        ));
        // A truncated first fetch of a longer object asks for the rest.
        let part = obj.slice(0..4096 + 10_000 - 1);
        assert!(matches!(
            check_into(&part, false, &key(), &mut dst).unwrap(),
            Checked::FetchWhole(14_096)
        ));
        // Damage: a flipped payload bit, a truncation, another key.
        let mut bad = bytes.to_vec();
        *bad.last_mut().unwrap() ^= 1;
        let bad = Buffer::from(bad);
        let e = check_into(&bad, true, &key(), &mut dst).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.to_string().contains("checksum"), "{e}");
        let cut = obj.slice(0..obj.len() - 1);
        let e = check_into(&cut, true, &key(), &mut dst).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        let e = check_into(&obj, true, &Key([1; 16]), &mut dst)
            .err()
            .unwrap();
        assert!(e.to_string().contains("named for"), "{e}");
        let e = check_into(&Buffer::new(), true, &key(), &mut dst)
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }
}
