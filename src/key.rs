//! Block keys and block names.
//!
//! An engine key is 1..=[`MAX_KEY_LEN`] bytes of the engine's choosing (vLLM: a 32-byte block
//! hash and a group index; SGLang: 64 hex characters; LMCache: a tuple). Every tier stores the
//! whole key in the block's own header and compares it on every load, so two different keys
//! never serve each other's bytes.
//!
//! A block's *name* ([`Key`], 16 bytes) places it: the fs store's file name, the slot file's
//! index entry. [`block_name`] derives it: a 16-byte key is its own name (the 16-byte
//! `kvr_block_key` of format version 1, whose files and slots so stay where they are), any
//! other key is named by the xxh3-128 of the namespace and the key. Names may collide
//! (another key's name, or a forced collision in tests, see [`testing`]); the stored full key
//! decides.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use crate::{err, Result};

/// Longest engine key, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// Checks an engine key: 1..=[`MAX_KEY_LEN`] bytes.
pub fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(err!(
            InvalidArgument,
            "a key must be 1..={MAX_KEY_LEN} bytes, got {} bytes",
            key.len()
        ));
    }
    Ok(())
}

/// The name of `key` in `namespace` (see the module docs): the key itself when it is 16
/// bytes, else the xxh3-128 of `namespace` and `key` (length-prefixed, so no two
/// (namespace, key) pairs hash the same input).
pub fn block_name(namespace: &[u8], key: &[u8]) -> Key {
    if HOOKED.load(Ordering::Relaxed) {
        let hook = *HOOK.read().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = hook {
            return f(namespace, key);
        }
    }
    natural_name(namespace, key)
}

/// [`block_name`] without the test hook.
pub fn natural_name(namespace: &[u8], key: &[u8]) -> Key {
    if let Ok(k) = <[u8; 16]>::try_from(key) {
        return Key(k);
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(namespace.len() as u64).to_le_bytes());
    h.update(namespace);
    h.update(key);
    Key(h.digest128().to_le_bytes())
}

/// A replacement of [`block_name`], for tests that force name collisions.
pub type NameHook = fn(&[u8], &[u8]) -> Key;

static HOOKED: AtomicBool = AtomicBool::new(false);
static HOOK: RwLock<Option<NameHook>> = RwLock::new(None);

/// Test hooks. Not for production use: the hook is process-wide.
pub mod testing {
    use super::*;

    /// Replaces [`block_name`] process-wide (`None` restores it), so tests can give two
    /// different keys the same file name or slot.
    pub fn set_name_hook(hook: Option<NameHook>) {
        *HOOK.write().unwrap_or_else(|p| p.into_inner()) = hook;
        HOOKED.store(hook.is_some(), Ordering::Relaxed);
    }
}

/// A block name (and the 16-byte engine key of format version 1): file name of an fs block,
/// index entry of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 16]);

impl Key {
    /// 32 lowercase hex digits, on the stack (block headers are encoded once per block).
    pub fn hex(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex_into(&self.0, &mut out);
        out
    }

    /// A key's bytes for messages: lowercase hex, cut after 64 bytes.
    pub fn display_bytes(key: &[u8]) -> String {
        let shown = &key[..key.len().min(64)];
        let mut out = vec![0u8; 2 * shown.len()];
        hex_into(shown, &mut out);
        let mut text: String = out.iter().map(|&c| c as char).collect();
        if shown.len() < key.len() {
            text.push_str(&format!("... ({} bytes)", key.len()));
        }
        text
    }

    /// 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.hex().iter().map(|&c| c as char).collect()
    }

    /// Parses exactly 32 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<Key> {
        let b = s.as_bytes();
        if b.len() != 32 {
            return None;
        }
        let nib = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let mut k = [0u8; 16];
        for (out, pair) in k.iter_mut().zip(b.chunks_exact(2)) {
            *out = (nib(pair[0])? << 4) | nib(pair[1])?;
        }
        Some(Key(k))
    }
}

/// Writes `bytes` as lowercase hex digits into `out` (two digits per byte, `out` is twice
/// as long as `bytes`).
pub(crate) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    debug_assert_eq!(out.len(), 2 * bytes.len());
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[(b >> 4) as usize];
        pair[1] = DIGITS[(b & 15) as usize];
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = self.hex();
        f.write_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_key_checks() {
        assert_eq!(block_name(b"ns", &[7; 16]), Key([7; 16]));
        let long = [1u8; 32];
        let a = block_name(b"ns", &long);
        assert_eq!(a, block_name(b"ns", &long), "deterministic");
        assert_ne!(a, block_name(b"nt", &long));
        assert_ne!(a, block_name(b"ns", &long[..31]));
        assert_ne!(block_name(b"n", b"sx"), block_name(b"ns", b"x"));
        assert!(check_key(&[0; 256]).is_ok());
        assert!(check_key(&[0; 1]).is_ok());
        assert!(check_key(&[]).is_err());
        assert!(check_key(&[0; 257]).is_err());
    }

    #[test]
    fn hex_round_trips() {
        let k = Key([
            0x00, 0x01, 0x7f, 0x80, 0xff, 0xab, 0xcd, 0xef, 1, 2, 3, 4, 5, 6, 7, 8,
        ]);
        let h = k.to_hex();
        assert_eq!(h, "00017f80ffabcdef0102030405060708");
        assert_eq!(k.to_string(), h);
        assert_eq!(&k.hex(), h.as_bytes());
        assert_eq!(Key::from_hex(&h), Some(k));
        assert_eq!(Key::from_hex(&h.to_uppercase()), Some(k));
        assert_eq!(Key::from_hex(&h[1..]), None);
        assert_eq!(Key::from_hex("g0017f80ffabcdef0102030405060708"), None);
        for b in 0..=255u8 {
            let k = Key([b; 16]);
            assert_eq!(Key::from_hex(&k.to_hex()), Some(k));
        }
    }
}
