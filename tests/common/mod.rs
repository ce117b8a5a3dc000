//! Helpers shared by the crate's integration tests (`mod common;` in each test file).

// Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

pub mod bounded;
pub mod files;

use std::ffi::CStr;

use kvr::Key;

/// A xorshift64 generator: deterministic test data and choices from a seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An index in `0..n` (0 when `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// `n` random bytes, one per step.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Fills `out` eight bytes per step.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes()[..chunk.len()]);
        }
    }
}

/// The key of test block `i`: `i` little-endian, then a multiplicative hash of it.
pub fn key(i: u64) -> Key {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k[8..].copy_from_slice(&(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
    Key(k)
}

/// The test index a key from [`key`] was made from.
pub fn key_index(k: &Key) -> u64 {
    u64::from_le_bytes(k.0[..8].try_into().unwrap())
}

/// Deterministic bytes derived from the key, so any reader (or process) can check any block.
pub fn fill_content(k: &Key, out: &mut [u8]) {
    Rng(key_index(k) ^ 0x1234_5678_9abc_def1).fill(out);
}

/// [`fill_content`] into a new buffer of `len` bytes.
pub fn content(k: &Key, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill_content(k, &mut out);
    out
}

/// This thread's `kvr_last_error_message()`.
pub fn last_error() -> String {
    // SAFETY: kvr returns a NUL-terminated string valid until the next kvr call on this thread.
    unsafe { CStr::from_ptr(kvr::ffi::status::kvr_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

/// The writer an fs block file's header names (blocks written in place), once its header is
/// complete.
pub fn header_writer(p: &std::path::Path) -> Option<u64> {
    let bytes = std::fs::read(p).ok()?;
    kvr::fs::format::decode_header(&bytes).ok()?.writer
}
