//! Pure path derivation: namespace validation, block and temp file names.
//!
//! A block of key `k` (16 bytes, hex `h`) lives at
//! `<root>/<namespace>/[r<rank>/]<h[0..2]>/<h>.kvb`: one level of 256 fan-out directories
//! (ext4's hashed directories and other modern file systems handle large directories well,
//! while every extra fan-out directory costs a `mkdir` and an inode allocation when a store
//! starts filling). Where the file system has no `O_TMPFILE`, writers create a named temp
//! file `.<h>~<writer>.<n>.tmp` in the same directory and hard-link it into place; `<writer>`
//! (16 hex digits) names the writing store's lock file under `<store dir>/.writers/`, which
//! tells cleaners whether the writer lives (see `fs::writers`). Older versions named temp
//! files `.<h>.<pid>.<n>.tmp` and `flock`ed each one; those are still cleaned by that rule.

use std::path::{Path, PathBuf};

pub use crate::key::Key;
use crate::{Error, Result};

/// File name suffix of a complete block.
pub const BLOCK_EXT: &str = ".kvb";
/// File name suffix of a writer's temporary file.
pub const TEMP_EXT: &str = ".tmp";

/// Checks a namespace: 1..=255 bytes, not `.`, no `/`, `..`, NUL, and no leading `.`
/// (hidden names are reserved for kvr's own files).
pub fn validate_namespace(ns: &str) -> Result<()> {
    if ns.is_empty() || ns.len() > 255 {
        return Err(Error::invalid(format!(
            "fs namespace must be 1..=255 bytes, got {} bytes",
            ns.len()
        )));
    }
    if ns.contains('/') || ns.contains("..") || ns.contains('\0') || ns.starts_with('.') {
        return Err(Error::invalid(format!(
            "fs namespace {ns:?} must not contain '/', '..' or NUL, nor start with '.'"
        )));
    }
    Ok(())
}

/// The directory all of a store's blocks live under: `<root>/<namespace>[/r<rank>]`.
pub fn store_dir(root: &Path, ns: &str, rank: Option<u32>) -> Result<PathBuf> {
    validate_namespace(ns)?;
    let mut p = root.join(ns);
    if let Some(r) = rank {
        p.push(format!("r{r}"));
    }
    Ok(p)
}

/// The fan-out directory of `key` under `store_dir`: `<hh>`, the key's first byte in hex.
#[cfg(test)]
pub fn block_dir(store_dir: &Path, key: &Key) -> PathBuf {
    store_dir.join(&key.to_hex()[0..2])
}

/// The name of fan-out directory `index` (0..256): two lowercase hex digits.
pub fn fanout_name(index: usize) -> String {
    format!("{index:02x}")
}

/// The index (0..256) of `key`'s fan-out directory: its first byte.
pub fn fanout_index(key: &Key) -> usize {
    key.0[0] as usize
}

/// The path of `key`'s block file under `store_dir`.
pub fn block_path(store_dir: &Path, key: &Key) -> PathBuf {
    let h = key.to_hex();
    let mut p = store_dir.join(&h[0..2]);
    p.push(format!("{h}{BLOCK_EXT}"));
    p
}

/// The temporary file name of an older version's writer (`flock`ed per file): only made
/// by tests now, to check that such files are still cleaned.
pub fn legacy_temp_name(key: &Key, pid: u32, seq: u64) -> String {
    format!(".{}.{pid}.{seq}{TEMP_EXT}", key.to_hex())
}

/// The unique temporary file name writer `writer` gives its `seq`-th block of `key`.
///
/// The `~` after the key keeps these names out of older versions' temp-file rule (which
/// would take an unlocked one for abandoned): those versions leave them alone.
pub fn temp_name(key: &Key, writer: u64, seq: u64) -> String {
    format!(".{}~{writer:016x}.{seq}{TEMP_EXT}", key.to_hex())
}

/// What a directory entry in a fan-out directory is.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// A complete block of this key.
    Block(Key),
    /// A temporary file of the writer whose lock file is named by this id (`fs::writers`).
    Temp(u64),
    /// An older version's temporary file, `flock`ed by its writer while in use.
    LegacyTemp,
    /// Something else (left alone).
    Other,
}

/// Classifies a file name found in a fan-out directory.
pub fn classify(name: &str) -> Entry {
    if let Some(stem) = name.strip_suffix(BLOCK_EXT) {
        if let Some(k) = Key::from_hex(stem) {
            return Entry::Block(k);
        }
    }
    if !name.starts_with('.')
        || !name.ends_with(TEMP_EXT)
        || name.get(1..33).and_then(Key::from_hex).is_none()
    {
        return Entry::Other;
    }
    match name.get(33..34) {
        Some(".") => Entry::LegacyTemp,
        Some("~") => match name.get(34..50).and_then(parse_writer_id) {
            Some(id) if name.get(50..51) == Some(".") => Entry::Temp(id),
            _ => Entry::Other,
        },
        _ => Entry::Other,
    }
}

/// A writer id as written in names: exactly 16 lowercase hex digits.
pub fn parse_writer_id(s: &str) -> Option<u64> {
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if s.len() != 16 || !s.bytes().all(hex) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Whether `name` is a fan-out directory name (two lowercase hex digits).
pub fn is_fanout_dir(name: &str) -> bool {
    name.len() == 2
        && name
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces() {
        for ok in ["llama-3-8b_tp2_b16", "a", "m.odel", "x..", ""] {
            if ok.is_empty() || ok.contains("..") {
                continue;
            }
            assert!(validate_namespace(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a/b",
            "..",
            "a..b",
            "/abs",
            ".hidden",
            "nul\0",
            &"x".repeat(256),
        ] {
            let e = validate_namespace(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{bad:?}");
        }
        assert!(validate_namespace(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn paths() {
        let k = Key::from_hex("abcdef00112233445566778899aabbcc").unwrap();
        let d = store_dir(Path::new("/r"), "ns", Some(3)).unwrap();
        assert_eq!(d, Path::new("/r/ns/r3"));
        assert_eq!(
            block_path(&d, &k),
            Path::new("/r/ns/r3/ab/abcdef00112233445566778899aabbcc.kvb")
        );
        assert_eq!(block_dir(&d, &k), Path::new("/r/ns/r3/ab"));
        assert_eq!(
            block_path(&d, &k).parent(),
            Some(block_dir(&d, &k).as_path())
        );
        assert_eq!(fanout_index(&k), 0xab);
        for b in 0..=255u8 {
            let k = Key([b; 16]);
            let dir = block_dir(&d, &k);
            let name = dir.file_name().unwrap().to_str().unwrap();
            assert!(is_fanout_dir(name));
            assert_eq!(usize::from_str_radix(name, 16).unwrap(), fanout_index(&k));
            assert_eq!(fanout_name(fanout_index(&k)), name);
        }
        let d = store_dir(Path::new("/r"), "ns", None).unwrap();
        assert_eq!(d, Path::new("/r/ns"));
        assert!(store_dir(Path::new("/r"), "../x", None).is_err());
    }

    #[test]
    fn classify_names() {
        let k = Key([7; 16]);
        assert_eq!(classify(&format!("{}.kvb", k.to_hex())), Entry::Block(k));
        assert_eq!(classify(&legacy_temp_name(&k, 42, 7)), Entry::LegacyTemp);
        let w = 0x0123_4567_89ab_cdef;
        assert_eq!(classify(&temp_name(&k, w, 7)), Entry::Temp(w));
        assert_eq!(classify(&temp_name(&k, 5, 0)), Entry::Temp(5));
        let upper = temp_name(&k, w, 7).replace("abcdef", "ABCDEF");
        assert_eq!(classify(&upper), Entry::Other);
        assert_eq!(classify(&format!(".{}~12.1.tmp", k.to_hex())), Entry::Other);
        assert_eq!(
            classify(&format!(".{}~{w:016x}x1.tmp", k.to_hex())),
            Entry::Other
        );
        assert_eq!(classify("notes.txt"), Entry::Other);
        assert_eq!(classify(".kvr_direct_probe.1.tmp"), Entry::Other);
        assert_eq!(classify("0707.kvb"), Entry::Other);
        assert_eq!(classify(".\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}x.tmp"), Entry::Other);
        assert!(is_fanout_dir("a0"));
        assert!(!is_fanout_dir("A0"));
        assert!(!is_fanout_dir("r0"));
        assert!(!is_fanout_dir("abc"));
    }
}
