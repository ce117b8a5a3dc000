//! The block key: 16 bytes chosen by the engine (usually its block hash). The fs store and the
//! disk slot file take the same keys, so one hash addresses a block in every tier.

/// A block key: 16 bytes chosen by the engine (usually its block hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 16]);

impl Key {
    /// 32 lowercase hex digits, on the stack (block headers are encoded once per block).
    pub fn hex(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex_into(&self.0, &mut out);
        out
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
