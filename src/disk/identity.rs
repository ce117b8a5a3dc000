//! A slot file's identity: the namespace its entries belong to ([`crate::Namespace::name`]),
//! recorded in the file header page at creation and checked at every reopen, so a slot
//! file of one model, dtype, geometry or tenant is never served to another.
//!
//! The record lives at [`IDENTITY_OFFSET`] of the file header page, outside the 128-byte
//! checksummed header (whose format and version it leaves alone): files written before it
//! have zeros there, which read as "no identity".
//!
//! | off  | size | field |
//! |-----:|-----:|-------|
//! | 2048 | 8    | magic `KVRNSID\0` |
//! | 2056 | 4    | name length n (1..=[`MAX_IDENTITY_LEN`]) |
//! | 2060 | n    | the name, UTF-8 |
//! | 2060+n | 8  | xxh3-64 of bytes 2048..2060+n |

use xxhash_rust::xxh3::xxh3_64;

use crate::{err, Result};

/// Offset of the identity record in the file header page.
pub const IDENTITY_OFFSET: usize = 2048;
/// Longest identity, in bytes.
pub const MAX_IDENTITY_LEN: usize = 1024;
const MAGIC: [u8; 8] = *b"KVRNSID\0";

/// Checks an identity a config asks for: 1..=[`MAX_IDENTITY_LEN`] bytes, no NUL.
pub fn validate(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_IDENTITY_LEN || name.contains('\0') {
        return Err(err!(
            InvalidArgument,
            "slot file namespace must be 1..={MAX_IDENTITY_LEN} bytes without NUL, got {} bytes",
            name.len()
        ));
    }
    Ok(())
}

/// Writes `name`'s record into the file header page `page` (4096 bytes).
pub fn encode(name: &str, page: &mut [u8]) {
    let rec = &mut page[IDENTITY_OFFSET..];
    let n = name.len();
    rec[..8].copy_from_slice(&MAGIC);
    rec[8..12].copy_from_slice(&(n as u32).to_le_bytes());
    rec[12..12 + n].copy_from_slice(name.as_bytes());
    let sum = xxh3_64(&rec[..12 + n]);
    rec[12 + n..20 + n].copy_from_slice(&sum.to_le_bytes());
}

/// The identity recorded in the file header page `page`: `None` where there is none
/// (zeros: created without one, or by a kvr before identities); `Corrupt` if damaged.
pub fn decode(page: &[u8]) -> Result<Option<String>> {
    let rec = &page[IDENTITY_OFFSET..];
    if rec[..8] != MAGIC {
        return Ok(None);
    }
    let n = u32::from_le_bytes(rec[8..12].try_into().expect("4 bytes")) as usize;
    if n == 0 || n > MAX_IDENTITY_LEN {
        return Err(err!(Corrupt, "identity record of {n} bytes"));
    }
    let sum = u64::from_le_bytes(rec[12 + n..20 + n].try_into().expect("8 bytes"));
    if xxh3_64(&rec[..12 + n]) != sum {
        return Err(err!(Corrupt, "identity record checksum mismatch"));
    }
    String::from_utf8(rec[12..12 + n].to_vec())
        .map(Some)
        .map_err(|_| err!(Corrupt, "identity record is not UTF-8"))
}

/// `LayoutMismatch` unless the recorded identity is the one asked for (both absent counts
/// as equal).
pub fn check(recorded: Option<&str>, wanted: Option<&str>, path: &std::path::Path) -> Result<()> {
    if recorded == wanted {
        return Ok(());
    }
    let show =
        |v: Option<&str>| v.map_or("no namespace".to_string(), |s| format!("namespace {s:?}"));
    Err(err!(
        LayoutMismatch,
        "slot file {} belongs to {}, the config asks for {}; use another path or remove it",
        path.display(),
        show(recorded),
        show(wanted)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_absence() {
        let mut page = vec![0u8; 4096];
        assert_eq!(decode(&page).unwrap(), None);
        encode("m.bf16.tp0of1.pp0.cp0.00ff", &mut page);
        assert_eq!(
            decode(&page).unwrap().as_deref(),
            Some("m.bf16.tp0of1.pp0.cp0.00ff")
        );
        page[IDENTITY_OFFSET + 13] ^= 1;
        assert_eq!(decode(&page).unwrap_err().kind(), crate::ErrorKind::Corrupt);
        let long = "x".repeat(MAX_IDENTITY_LEN);
        encode(&long, &mut page);
        assert_eq!(decode(&page).unwrap(), Some(long));
        assert!(validate("").is_err() && validate(&"x".repeat(MAX_IDENTITY_LEN + 1)).is_err());
    }

    #[test]
    fn check_requires_equal_identities() {
        let p = std::path::Path::new("f");
        assert!(check(None, None, p).is_ok());
        assert!(check(Some("a"), Some("a"), p).is_ok());
        for (r, w) in [(Some("a"), Some("b")), (None, Some("a")), (Some("a"), None)] {
            assert_eq!(
                check(r, w, p).unwrap_err().kind(),
                crate::ErrorKind::LayoutMismatch
            );
        }
    }
}
