//! The safetensors header codec, the one place kvr writes and reads safetensors headers:
//! [`HeaderWriter`] builds one (the 8-byte length, the JSON, the padding) in one buffer and
//! [`RawHeader`] reads one with names and values borrowed from the text. Tensor files
//! ([`super::header`]) and fs block files (`fs::format`, one tensor named `block`) are both
//! written and read with it.

use std::borrow::Cow;

use safetensors::tensor::TensorInfo;

use super::Dtype;
use crate::{err, Result};

/// A tensor's element type and shape: what a safetensors header records about it besides its
/// name and offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions (empty for a scalar).
    pub shape: Vec<u64>,
}

impl TensorSpec {
    /// A one-dimensional `U8` tensor of `len` bytes (an fs block's default).
    pub fn bytes(len: u64) -> Self {
        TensorSpec {
            dtype: Dtype::U8,
            shape: vec![len],
        }
    }

    /// Checks the tensor is exactly `len` bytes of whole-byte elements, as an fs block's
    /// payload must be (packed sub-byte dtypes are refused; sizes may use all 64 bits).
    pub fn check(&self, len: u64) -> Result<()> {
        let size = self.dtype.byte_size().ok_or_else(|| {
            err!(
                InvalidArgument,
                "unknown or unsupported safetensors dtype {:?}",
                self.dtype.name()
            )
        })?;
        let elems = self
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let bytes = elems.and_then(|e| e.checked_mul(size as u64));
        if bytes != Some(len) {
            return Err(err!(
                InvalidArgument,
                "tensor {} {:?} is {} bytes, but the payload is {len} bytes",
                self.dtype,
                self.shape,
                bytes.map_or("an overflowing number of".into(), |b| b.to_string())
            ));
        }
        Ok(())
    }
}

/// A `u64` in decimal, on the stack.
pub(crate) struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    /// The digits of `n`.
    pub(crate) fn new(mut n: u64) -> Decimal {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Decimal { digits, start }
    }

    /// The digits as text.
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.digits[self.start..]).expect("decimal digits are ASCII")
    }
}

/// The order of the fields of a tensor entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldOrder {
    /// `dtype`, `shape`, `data_offsets`: the order the `safetensors` crate writes (tensor files).
    Declared,
    /// `data_offsets`, `dtype`, `shape`: sorted, the order fs block files have always had
    /// (their first encoder went through serde_json's sorted maps; files stay byte-identical).
    Sorted,
}

/// Builds a header in one buffer: the 8-byte length, the JSON object (no whitespace), then
/// space padding. Entries are written in the order of the calls.
pub(crate) struct HeaderWriter {
    buf: Vec<u8>,
    entries: usize,
}

impl HeaderWriter {
    /// An empty header; `capacity` (bytes, length prefix and padding included) is a guess of
    /// its final size: one allocation when it is right.
    pub(crate) fn with_capacity(capacity: usize) -> HeaderWriter {
        let mut buf = Vec::with_capacity(capacity.max(16));
        buf.extend_from_slice(&[0; 8]);
        buf.push(b'{');
        HeaderWriter { buf, entries: 0 }
    }

    fn next_entry(&mut self) {
        if self.entries > 0 {
            self.buf.push(b',');
        }
        self.entries += 1;
    }

    fn string(&mut self, s: &str) {
        serde_json::to_writer(&mut self.buf, s).expect("a string always serialises into a Vec");
    }

    fn number(&mut self, n: u64) {
        self.buf
            .extend_from_slice(Decimal::new(n).as_str().as_bytes());
    }

    /// Writes the `__metadata__` object of string entries; nothing when there are none (the
    /// format makes it optional).
    pub(crate) fn metadata<'a>(&mut self, entries: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut entries = entries.into_iter().peekable();
        if entries.peek().is_none() {
            return;
        }
        self.next_entry();
        self.buf.extend_from_slice(b"\"__metadata__\":{");
        for (i, (key, value)) in entries.enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            self.string(key);
            self.buf.push(b':');
            self.string(value);
        }
        self.buf.push(b'}');
    }

    /// Writes one tensor entry: data bytes `offsets[0]..offsets[1]` of the data area.
    pub(crate) fn tensor(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: &[u64],
        offsets: [u64; 2],
        order: FieldOrder,
    ) {
        self.next_entry();
        self.string(name);
        self.buf.extend_from_slice(b":{");
        match order {
            FieldOrder::Declared => {
                self.dtype_field(dtype);
                self.buf.push(b',');
                self.list_field("shape", shape);
                self.buf.push(b',');
                self.list_field("data_offsets", &offsets);
            }
            FieldOrder::Sorted => {
                self.list_field("data_offsets", &offsets);
                self.buf.push(b',');
                self.dtype_field(dtype);
                self.buf.push(b',');
                self.list_field("shape", shape);
            }
        }
        self.buf.push(b'}');
    }

    fn dtype_field(&mut self, dtype: Dtype) {
        // Dtype names are plain ASCII: nothing to escape.
        self.buf.extend_from_slice(b"\"dtype\":\"");
        self.buf.extend_from_slice(dtype.name().as_bytes());
        self.buf.push(b'"');
    }

    fn list_field(&mut self, name: &str, values: &[u64]) {
        self.string(name);
        self.buf.extend_from_slice(b":[");
        for (i, &v) in values.iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            self.number(v);
        }
        self.buf.push(b']');
    }

    /// Closes the object and pads it with spaces so the data starts at a multiple of
    /// `unit`; returns the whole header, length prefix included.
    pub(crate) fn finish(mut self, unit: u64) -> Vec<u8> {
        self.buf.push(b'}');
        let total = (self.buf.len() as u64).div_ceil(unit) * unit;
        self.buf[..8].copy_from_slice(&(total - 8).to_le_bytes());
        self.buf.resize(total as usize, b' ');
        self.buf
    }
}

/// A JSON string of a header, borrowed from the header's text unless it holds escapes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct JsonStr<'a>(pub(crate) Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for JsonStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = JsonStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> std::result::Result<Self::Value, E> {
                Ok(JsonStr(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> std::result::Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> std::result::Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The `__metadata__` object: string entries in file order.
struct MetadataEntries<'a>(Vec<(JsonStr<'a>, JsonStr<'a>)>);

impl<'de> serde::Deserialize<'de> for MetadataEntries<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MetadataEntries<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                // An fs block has five entries: one allocation.
                let mut entries = Vec::with_capacity(8);
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(MetadataEntries(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// A header's JSON as the `safetensors` crate reads it (an object of `TensorInfo`s plus an
/// optional `__metadata__` string map), deserialized straight from the text with the
/// crate's own `TensorInfo` and `Dtype` impls, names and values borrowed from the text. The
/// crate's `read_metadata` goes through a serde `flatten`, which buffers the whole document
/// in generic `Content` values first and costs about 3/4 of the time to open a file.
/// Repeated names are all kept here; where one counts, the last one does (as in the crate's
/// `HashMap`s).
pub(crate) struct RawHeader<'a> {
    /// The entries of the last `__metadata__` object, in file order; `None` without one.
    pub(crate) metadata: Option<Vec<(JsonStr<'a>, JsonStr<'a>)>>,
    /// Tensor entries in file order.
    pub(crate) tensors: Vec<(JsonStr<'a>, TensorInfo)>,
}

impl<'a> RawHeader<'a> {
    /// Parses the JSON text of a header (trailing space padding allowed).
    pub(crate) fn parse(json: &'a [u8]) -> serde_json::Result<RawHeader<'a>> {
        serde_json::from_slice(trim_padding(json))
    }

    /// The value of metadata entry `key` (the last one if repeated).
    pub(crate) fn metadata_value(&self, key: &str) -> Option<&str> {
        let entries = self.metadata.as_ref()?;
        let (_, value) = entries.iter().rev().find(|(k, _)| k.0 == key)?;
        Some(&value.0)
    }

    /// Takes tensor `name`'s entry (the last one if repeated) out of the header.
    pub(crate) fn take_tensor(&mut self, name: &str) -> Option<TensorInfo> {
        let i = self.tensors.iter().rposition(|(n, _)| n.0 == name)?;
        Some(self.tensors.swap_remove(i).1)
    }
}

/// `json` without its trailing spaces. The JSON parser would skip them too, one byte at a
/// time: most of the time of a block header's 4 KiB page went there.
fn trim_padding(json: &[u8]) -> &[u8] {
    const SPACES: [u8; 8] = [b' '; 8];
    let whole_words = json
        .rchunks_exact(8)
        .take_while(|word| *word == SPACES)
        .count();
    let rest = &json[..json.len() - 8 * whole_words];
    let end = rest.iter().rposition(|&c| c != b' ').map_or(0, |i| i + 1);
    &rest[..end]
}

impl<'de> serde::Deserialize<'de> for RawHeader<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawHeader<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a safetensors header object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<RawHeader<'de>, A::Error> {
                let mut metadata = None;
                let mut tensors = Vec::new();
                while let Some(key) = map.next_key::<JsonStr<'de>>()? {
                    if key.0 == "__metadata__" {
                        metadata = Some(map.next_value::<MetadataEntries<'de>>()?.0);
                    } else {
                        tensors.push((key, map.next_value()?));
                    }
                }
                Ok(RawHeader { metadata, tensors })
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        for n in [0u64, 7, 10, 4096, 65536, u64::MAX] {
            assert_eq!(Decimal::new(n).as_str(), n.to_string());
        }
    }

    /// Strings are escaped as serde_json escapes them; fields come in the order asked for.
    #[test]
    fn writer_output() {
        let mut w = HeaderWriter::with_capacity(0);
        w.metadata([("k\"1", "v\n\u{1}\u{e9}")]);
        w.tensor("a", Dtype::BF16, &[2, 3], [0, 12], FieldOrder::Declared);
        w.tensor("b\\", Dtype::U8, &[], [12, 13], FieldOrder::Sorted);
        w.metadata([]);
        let h = w.finish(8);
        let json = concat!(
            r#"{"__metadata__":{"k\"1":"v\n\u0001é"},"#,
            r#""a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},"#,
            r#""b\\":{"data_offsets":[12,13],"dtype":"U8","shape":[]}}"#
        );
        assert_eq!(h.len() % 8, 0);
        assert_eq!(
            u64::from_le_bytes(h[..8].try_into().unwrap()),
            h.len() as u64 - 8
        );
        assert_eq!(std::str::from_utf8(&h[8..]).unwrap().trim_end(), json);
        let raw = RawHeader::parse(&h[8..]).unwrap();
        assert_eq!(raw.metadata_value("k\"1"), Some("v\n\u{1}\u{e9}"));
        assert_eq!(raw.tensors.len(), 2);
        let empty = HeaderWriter::with_capacity(0).finish(4096);
        assert_eq!(empty.len(), 4096);
        assert_eq!(&empty[8..10], b"{}");
    }

    #[test]
    fn padding_is_trimmed_and_nothing_else() {
        for (text, want) in [
            ("", ""),
            ("{}", "{}"),
            ("{} ", "{}"),
            ("{}\n  ", "{}\n"),
            ("        ", ""),
            ("{\"a\": 1}  \t     ", "{\"a\": 1}  \t"),
        ] {
            assert_eq!(trim_padding(text.as_bytes()), want.as_bytes(), "{text:?}");
        }
        for pad in 0..40 {
            let mut v = b"{\"k\":\"v \"}".to_vec();
            v.resize(v.len() + pad, b' ');
            assert_eq!(trim_padding(&v), b"{\"k\":\"v \"}");
        }
    }
}
