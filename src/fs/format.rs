//! The block file format (pure encoding and decoding, no I/O), built on the safetensors
//! header codec (`crate::tensors::header`).
//!
//! A block file is a valid safetensors file holding one tensor named `block`:
//!
//! ```text
//! [u64 LE header length N][N bytes of JSON, padded with spaces][payload]
//! ```
//!
//! `8 + N` is a multiple of 4096, so the payload starts page-aligned (O_DIRECT reads it
//! straight into an aligned buffer). The JSON, without whitespace and with its keys in this
//! (sorted) order, is
//!
//! ```json
//! {"__metadata__":{"format":"kvr.block","key":"<hex of the key>","payload_len":"<bytes>",
//!   "version":"2","xxh3_64":"<16 hex>"},
//!  "block":{"data_offsets":[0,<bytes>],"dtype":"U8","shape":[<bytes>]}}
//! ```
//!
//! (safetensors metadata values are strings). The file is exactly `8 + N + payload_len`
//! bytes long: anything else is a torn or truncated file.
//!
//! Versions: `"2"` holds the engine's whole key, 1..=256 bytes as 2..=512 hex digits, and is
//! written for every key that is not 16 bytes long; `"1"` holds a 16-byte key as 32 hex
//! digits, and is still written for 16-byte keys, byte for byte as before version 2 (so
//! existing files stay valid and a kvr that reads only version 1 still reads every block of
//! a 16-byte key). The layout is otherwise the same. The checksum is the xxh3-64 of the payload, which a vectored store or load streams
//! over its segments ([`checksum_segments`]).
//!
//! This module is the block codec every tier that keeps block files uses (the fs store, an
//! object store): [`encode_header`], [`decode_header`], [`checksum_segments`].

use super::path::Key;
use crate::io::IO_ALIGN;
use crate::key::{hex_into, MAX_KEY_LEN};
use crate::tensors::codec::{Decimal, FieldOrder, HeaderWriter, RawHeader};
use crate::tensors::Dtype;
pub use crate::tensors::TensorSpec;
use crate::{err, Result};

/// `__metadata__.format` of every block file.
pub const FORMAT_NAME: &str = "kvr.block";
/// `__metadata__.version` of blocks whose key is not 16 bytes (whole engine keys).
pub const FORMAT_VERSION: &str = "2";
/// `__metadata__.version` of the first format (16-byte keys), still written for them.
pub const FORMAT_VERSION_V1: &str = "1";
/// `__metadata__` field naming the writer of a block written under its final name.
pub const WRITER_FIELD: &str = "writer";
/// Name of the single tensor in a block file.
pub const TENSOR_NAME: &str = "block";
/// Largest header (8-byte length + JSON) accepted when decoding.
pub const MAX_HEADER: usize = 1 << 20;

/// What a block header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Offset of the payload in the file (`8 + N`, a multiple of 4096).
    pub data_offset: usize,
    /// The whole key recorded in the file (16 bytes in a version-1 file).
    pub key: Vec<u8>,
    /// The format version (1 or 2).
    pub version: u8,
    /// Payload bytes.
    pub payload_len: u64,
    /// xxh3-64 of the payload.
    pub checksum: u64,
    /// The tensor's dtype and shape.
    pub tensor: TensorSpec,
    /// The id of the writer's lock file, recorded by a writer that writes a block under its
    /// final name (`WriteMode::InPlace` of the fs store); `None` otherwise.
    pub writer: Option<u64>,
}

/// xxh3-64 of a payload, as stored in the header.
pub fn checksum(payload: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(payload)
}

/// xxh3-64 of the concatenation of `segments`, equal to [`checksum`] of the joined bytes.
pub fn checksum_segments(segments: &[&[u8]]) -> u64 {
    match segments {
        [one] => checksum(one),
        _ => {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            for s in segments {
                h.update(s);
            }
            h.digest()
        }
    }
}

/// Encodes the header (length prefix, JSON, space padding) for a payload under the whole
/// engine `key` (1..=256 bytes, checked by the caller): version 1 for a 16-byte key, else
/// version 2. The result's length is the payload offset, a multiple of 4096.
pub fn encode_header(key: &[u8], payload_len: u64, sum: u64, tensor: &TensorSpec) -> Vec<u8> {
    encode_header_by(key, payload_len, sum, tensor, None)
}

/// [`encode_header`], also naming the writer (`__metadata__.writer`, 16 hex digits: the id
/// of its lock file) where a block is written under its final name (`WriteMode::InPlace`
/// of the fs store), so that a cleaner can tell a dead writer's unpublished file.
pub fn encode_header_by(
    key: &[u8],
    payload_len: u64,
    sum: u64,
    tensor: &TensorSpec,
    writer: Option<u64>,
) -> Vec<u8> {
    debug_assert!(!key.is_empty() && key.len() <= MAX_KEY_LEN);
    if let Ok(k) = <[u8; 16]>::try_from(key) {
        let v1 = FORMAT_VERSION_V1;
        return encode_any(&Key(k).hex(), v1, payload_len, sum, tensor, writer);
    }
    let mut key_hex = [0u8; 2 * MAX_KEY_LEN];
    let key_hex = &mut key_hex[..2 * key.len()];
    hex_into(key, key_hex);
    encode_any(key_hex, FORMAT_VERSION, payload_len, sum, tensor, writer)
}

/// Encodes a header of the first version (16-byte key).
pub fn encode_header_v1(key: &Key, payload_len: u64, sum: u64, tensor: &TensorSpec) -> Vec<u8> {
    encode_any(
        &key.hex(),
        FORMAT_VERSION_V1,
        payload_len,
        sum,
        tensor,
        None,
    )
}

fn encode_any(
    key_hex: &[u8],
    version: &str,
    payload_len: u64,
    sum: u64,
    tensor: &TensorSpec,
    writer: Option<u64>,
) -> Vec<u8> {
    let mut sum_hex = [0u8; 16];
    hex_into(&sum.to_be_bytes(), &mut sum_hex);
    fn ascii(digits: &[u8]) -> &str {
        std::str::from_utf8(digits).expect("hex digits are ASCII")
    }
    let len = Decimal::new(payload_len);
    let mut writer_hex = [0u8; 16];
    if let Some(w) = writer {
        hex_into(&w.to_be_bytes(), &mut writer_hex);
    }
    let writer_entry = writer.map(|_| (WRITER_FIELD, ascii(&writer_hex)));
    // One page holds the header of any payload with a shape of up to a few hundred dimensions.
    let mut w = HeaderWriter::with_capacity(IO_ALIGN);
    // Keys in sorted order, as block files have always been written.
    w.metadata(
        [
            ("format", FORMAT_NAME),
            ("key", ascii(key_hex)),
            ("payload_len", len.as_str()),
            ("version", version),
        ]
        .into_iter()
        .chain(writer_entry)
        .chain([("xxh3_64", ascii(&sum_hex))]),
    );
    let (dtype, shape) = (tensor.dtype, &tensor.shape);
    w.tensor(
        TENSOR_NAME,
        dtype,
        shape,
        [0, payload_len],
        FieldOrder::Sorted,
    );
    w.finish(IO_ALIGN as u64)
}

/// The header length (`8 + N`) a file announces in its first 8 bytes; validates the bounds.
pub fn header_len(prefix: &[u8; 8]) -> Result<usize> {
    let n = u64::from_le_bytes(*prefix);
    if n == 0 || n > (MAX_HEADER - 8) as u64 {
        return Err(err!(Corrupt, "header length {n} is out of range"));
    }
    let total = 8 + n as usize;
    if total % IO_ALIGN != 0 {
        return Err(err!(
            Corrupt,
            "payload offset {total} is not a multiple of {IO_ALIGN}"
        ));
    }
    Ok(total)
}

/// Decodes and validates a full header (`bytes` holds at least `header_len` bytes).
pub fn decode_header(bytes: &[u8]) -> Result<Header> {
    let prefix: &[u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| err!(Corrupt, "file is shorter than the 8-byte header length"))?;
    let total = header_len(prefix)?;
    let json = bytes.get(8..total).ok_or_else(|| {
        err!(
            Corrupt,
            "header is {total} bytes but only {} were read",
            bytes.len()
        )
    })?;
    let mut raw = RawHeader::parse(json)
        .map_err(|e| err!(Corrupt, "header is not valid safetensors JSON: {e}"))?;
    if raw.metadata.is_none() {
        return Err(err!(Corrupt, "header has no __metadata__"));
    }
    let field = |name: &str| -> Result<&str> {
        raw.metadata_value(name)
            .ok_or_else(|| err!(Corrupt, "__metadata__.{name} is missing"))
    };
    let format = field("format")?;
    if format != FORMAT_NAME {
        return Err(err!(Corrupt, "not a kvr block (format {format:?})"));
    }
    let version = match field("version")? {
        FORMAT_VERSION => 2,
        FORMAT_VERSION_V1 => 1,
        v => {
            return Err(err!(
                Corrupt,
                "unsupported block format version {v:?} (this library reads \
                 {FORMAT_VERSION_V1} and {FORMAT_VERSION})"
            ))
        }
    };
    let key_text = field("key")?;
    let key = if version == 1 {
        Key::from_hex(key_text)
            .map(|k| k.0.to_vec())
            .ok_or_else(|| err!(Corrupt, "__metadata__.key is not 32 hex digits"))?
    } else {
        parse_key_hex(key_text).ok_or_else(|| {
            err!(
                Corrupt,
                "__metadata__.key is not 2..={} hex digits",
                2 * MAX_KEY_LEN
            )
        })?
    };
    let payload_len: u64 = field("payload_len")?
        .parse()
        .map_err(|_| err!(Corrupt, "__metadata__.payload_len is not a number"))?;
    let sum_text = field("xxh3_64")?;
    let checksum = (sum_text.len() == 16)
        .then(|| u64::from_str_radix(sum_text, 16).ok())
        .flatten()
        .ok_or_else(|| err!(Corrupt, "__metadata__.xxh3_64 is not 16 hex digits"))?;
    // Only a block written under its final name says who wrote it; anything unreadable there
    // is no writer (the cleaner then goes by the file's age).
    let writer = raw
        .metadata_value(WRITER_FIELD)
        .filter(|w| w.len() == 16)
        .and_then(super::path::parse_writer_id);
    let info = raw
        .take_tensor(TENSOR_NAME)
        .ok_or_else(|| err!(Corrupt, "header has no tensor {TENSOR_NAME:?}"))?;
    let (start, end) = info.data_offsets;
    if (start as u64, end as u64) != (0, payload_len) {
        return Err(err!(
            Corrupt,
            "tensor data_offsets [{start}, {end}] disagree with payload_len {payload_len}"
        ));
    }
    let tensor = TensorSpec {
        dtype: Dtype::from_st(info.dtype).map_err(|e| err!(Corrupt, "tensor dtype: {e}"))?,
        // On 64-bit targets this reuses the shape's buffer.
        shape: info.shape.into_iter().map(|d| d as u64).collect(),
    };
    tensor
        .check(payload_len)
        .map_err(|e| err!(Corrupt, "tensor does not match the payload: {e}"))?;
    Ok(Header {
        data_offset: total,
        key,
        version,
        payload_len,
        checksum,
        tensor,
        writer,
    })
}

/// Parses the hex of a 1..=256-byte key (lowercase, as written).
fn parse_key_hex(text: &str) -> Option<Vec<u8>> {
    let b = text.as_bytes();
    if b.is_empty() || b.len() % 2 != 0 || b.len() > 2 * MAX_KEY_LEN {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    b.chunks_exact(2)
        .map(|p| Some((nib(p[0])? << 4) | nib(p[1])?))
        .collect()
}

#[cfg(test)]
mod v2_tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn whole_keys_round_trip() {
        for len in [1usize, 15, 16, 17, 36, 64, 255, 256] {
            let key: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let h = encode_header(&key, 4096, 9, &TensorSpec::bytes(4096));
            assert_eq!(h.len(), 4096, "a 256-byte key still fits one page");
            let d = decode_header(&h).unwrap();
            let version = if len == 16 { 1 } else { 2 };
            assert_eq!(
                (d.key, d.version, d.payload_len, d.checksum),
                (key, version, 4096, 9)
            );
        }
        let v1 = encode_header_v1(&Key([3; 16]), 10, 1, &TensorSpec::bytes(10));
        let d = decode_header(&v1).unwrap();
        assert_eq!((d.key, d.version), (vec![3u8; 16], 1));
    }

    #[test]
    fn pinned_v2_bytes_and_bad_keys() {
        let got = encode_header(b"vllm:0", 4096, 0xff, &TensorSpec::bytes(4096));
        let json = concat!(
            r#"{"__metadata__":{"format":"kvr.block","key":"766c6c6d3a30","#,
            r#""payload_len":"4096","version":"2","xxh3_64":"00000000000000ff"},"#,
            r#""block":{"data_offsets":[0,4096],"dtype":"U8","shape":[4096]}}"#
        );
        let mut want = 4088u64.to_le_bytes().to_vec();
        want.extend_from_slice(json.as_bytes());
        want.resize(4096, b' ');
        assert!(got == want, "{}", String::from_utf8_lossy(&got[8..]));
        let text = String::from_utf8(got[8..].to_vec()).unwrap();
        for bad in [
            "\"key\":\"\"",
            "\"key\":\"766\"",
            "\"key\":\"766C6c6d3a30\"",
        ] {
            let mut b = got[..8].to_vec();
            b.extend_from_slice(text.replacen("\"key\":\"766c6c6d3a30\"", bad, 1).as_bytes());
            b.resize(4096, b' ');
            assert_eq!(
                decode_header(&b).unwrap_err().kind(),
                ErrorKind::Corrupt,
                "{bad}"
            );
        }
        let long = "ab".repeat(257);
        let mut b = got[..8].to_vec();
        b.extend_from_slice(text.replacen("766c6c6d3a30", &long, 1).as_bytes());
        b.resize(8192, b' ');
        b[..8].copy_from_slice(&8184u64.to_le_bytes());
        assert_eq!(decode_header(&b).unwrap_err().kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn segment_checksums_stream() {
        let data: Vec<u8> = (0..100_000).map(|i| (i % 253) as u8).collect();
        let (a, b) = data.split_at(33_333);
        assert_eq!(checksum_segments(&[a, b]), checksum(&data));
        assert_eq!(checksum_segments(&[&data]), checksum(&data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    // These tests pin version 1, the format of every file written before version 2.
    use super::{encode_header_v1 as encode_header, FORMAT_VERSION_V1 as FORMAT_VERSION};

    fn key() -> Key {
        Key(*b"0123456789abcdef")
    }

    #[test]
    fn header_round_trips_and_is_aligned() {
        for len in [
            1u64,
            4095,
            4096,
            4097,
            65536,
            2 * 1024 * 1024 + 1,
            u64::MAX / 2,
        ] {
            let sum = checksum(b"abc");
            let h = encode_header(&key(), len, sum, &TensorSpec::bytes(len));
            assert_eq!(h.len() % 4096, 0);
            assert_eq!(h.len(), 4096);
            assert_eq!(*h.last().unwrap(), b' ');
            let d = decode_header(&h).unwrap();
            assert_eq!(d.data_offset, 4096);
            assert_eq!(d.key, key().0);
            assert_eq!(d.payload_len, len);
            assert_eq!(d.checksum, sum);
            assert_eq!(d.tensor, TensorSpec::bytes(len));
        }
    }

    #[test]
    fn big_headers_span_pages() {
        let shape = vec![1u64; 2000];
        let t = TensorSpec {
            dtype: Dtype::U8,
            shape,
        };
        let h = encode_header(&key(), 1, 0, &t);
        assert_eq!(h.len(), 8192);
        assert_eq!(decode_header(&h).unwrap().tensor, t);
    }

    #[test]
    fn tensor_specs() {
        let t = TensorSpec {
            dtype: Dtype::BF16,
            shape: vec![2, 8, 128],
        };
        t.check(4096).unwrap();
        assert!(t.check(4095).is_err());
        // An unknown dtype name (the C API's string) and a packed sub-byte one are refused.
        let bad = Dtype::from_name("Q4");
        assert_eq!(bad.unwrap_err().kind(), ErrorKind::InvalidArgument);
        let packed = TensorSpec {
            dtype: Dtype::F4,
            shape: vec![2],
        };
        assert_eq!(
            packed.check(1).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let huge = TensorSpec {
            dtype: Dtype::F64,
            shape: vec![u64::MAX, 2],
        };
        assert!(huge.check(0).is_err());
        let dtype_size = |name: &str| Dtype::from_name(name).ok().and_then(Dtype::byte_size);
        assert_eq!(dtype_size("F8_E4M3"), Some(1));
        assert_eq!(dtype_size("I64"), Some(8));
        assert_eq!(dtype_size("BF16"), Some(2));
        assert_eq!(dtype_size("F4"), None);
        assert_eq!(dtype_size("bf16"), None);
    }

    #[test]
    fn rejects_damaged_headers() {
        let good = encode_header(&key(), 10, 5, &TensorSpec::bytes(10));
        let expect_corrupt = |b: &[u8]| {
            assert_eq!(decode_header(b).unwrap_err().kind(), ErrorKind::Corrupt);
        };
        expect_corrupt(&good[..4]);
        expect_corrupt(&good[..100]);
        let mut b = good.clone();
        b[0] = 0; // length no longer aligned
        expect_corrupt(&b);
        let mut b = good.clone();
        b[..8].copy_from_slice(&0u64.to_le_bytes());
        expect_corrupt(&b);
        let mut b = good.clone();
        b[9] = b'X'; // broken JSON
        expect_corrupt(&b);
        let text = String::from_utf8(good[8..].to_vec()).unwrap();
        for (from, to) in [
            ("kvr.block", "xyz.block"),
            ("\"version\":\"1\"", "\"version\":\"9\""),
            ("\"payload_len\":\"10\"", "\"payload_len\":\"11\""),
            ("\"data_offsets\":[0,10]", "\"data_offsets\":[1,10]"),
            ("\"dtype\":\"U8\"", "\"dtype\":\"F32\""),
            ("\"xxh3_64\":\"0000000000000005\"", "\"xxh3_64\":\"05\""),
        ] {
            assert!(text.contains(from), "{from} in {text}");
            let mut b = good[..8].to_vec();
            b.extend_from_slice(text.replacen(from, to, 1).as_bytes());
            b.resize(good.len(), b' ');
            expect_corrupt(&b);
        }
    }

    /// The exact bytes of block headers as the first version of the format wrote them (keys
    /// sorted, no whitespace, space padding to 4096): existing files stay readable and new
    /// ones stay byte-identical.
    #[test]
    fn headers_are_byte_identical_to_the_pinned_format() {
        let cases = [
            (
                Key(*b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"),
                65536u64,
                0x0123_4567_89ab_cdefu64,
                TensorSpec::bytes(65536),
                concat!(
                    r#"{"__metadata__":{"format":"kvr.block","key":"000102030405060708090a0b0c0d0e0f","#,
                    r#""payload_len":"65536","version":"1","xxh3_64":"0123456789abcdef"},"#,
                    r#""block":{"data_offsets":[0,65536],"dtype":"U8","shape":[65536]}}"#
                ),
            ),
            (
                Key([0xab; 16]),
                4096,
                0xff,
                TensorSpec {
                    dtype: Dtype::BF16,
                    shape: vec![2, 8, 128],
                },
                concat!(
                    r#"{"__metadata__":{"format":"kvr.block","key":"abababababababababababababababab","#,
                    r#""payload_len":"4096","version":"1","xxh3_64":"00000000000000ff"},"#,
                    r#""block":{"data_offsets":[0,4096],"dtype":"BF16","shape":[2,8,128]}}"#
                ),
            ),
            (
                Key([0; 16]),
                0,
                0x2d06_8005_38d3_94c2,
                TensorSpec {
                    dtype: Dtype::F8E4M3,
                    shape: vec![0, 3],
                },
                concat!(
                    r#"{"__metadata__":{"format":"kvr.block","key":"00000000000000000000000000000000","#,
                    r#""payload_len":"0","version":"1","xxh3_64":"2d06800538d394c2"},"#,
                    r#""block":{"data_offsets":[0,0],"dtype":"F8_E4M3","shape":[0,3]}}"#
                ),
            ),
        ];
        for (key, len, sum, tensor, json) in cases {
            let mut want = 4088u64.to_le_bytes().to_vec();
            want.extend_from_slice(json.as_bytes());
            want.resize(4096, b' ');
            let got = encode_header(&key, len, sum, &tensor);
            assert!(got == want, "{}", String::from_utf8_lossy(&got[8..]));
            let back = decode_header(&want).unwrap();
            assert_eq!(
                (back.key, back.payload_len, back.checksum),
                (key.0.to_vec(), len, sum)
            );
            assert_eq!(back.tensor, tensor);
        }
        // A header longer than a page: the prefix counts the JSON and its padding to 8192.
        let many = TensorSpec {
            dtype: Dtype::U8,
            shape: vec![1; 2100],
        };
        let got = encode_header(&Key([7; 16]), 1, 1, &many);
        let dims = vec!["1"; 2100].join(",");
        let json = format!(
            concat!(
                r#"{{"__metadata__":{{"format":"kvr.block","key":"07070707070707070707070707070707","#,
                r#""payload_len":"1","version":"1","xxh3_64":"0000000000000001"}},"#,
                r#""block":{{"data_offsets":[0,1],"dtype":"U8","shape":[{}]}}}}"#
            ),
            dims
        );
        let mut want = 8184u64.to_le_bytes().to_vec();
        want.extend_from_slice(json.as_bytes());
        want.resize(8192, b' ');
        assert!(got == want, "{}", String::from_utf8_lossy(&got[8..]));
    }

    /// The first encoder of the format (a serde_json value, whose maps sort their keys),
    /// kept as the reference the codec must match byte for byte.
    fn reference_header(key: &Key, payload_len: u64, sum: u64, tensor: &TensorSpec) -> Vec<u8> {
        let value = serde_json::json!({
            "__metadata__": {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "key": key.to_hex(),
                "payload_len": payload_len.to_string(),
                "xxh3_64": format!("{sum:016x}"),
            },
            TENSOR_NAME: {
                "dtype": tensor.dtype.name(),
                "shape": tensor.shape,
                "data_offsets": [0, payload_len],
            }
        });
        let text = serde_json::to_vec(&value).unwrap();
        let total = (8 + text.len()).div_ceil(IO_ALIGN) * IO_ALIGN;
        let mut out = ((total - 8) as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&text);
        out.resize(total, b' ');
        out
    }

    #[test]
    fn headers_match_the_reference_encoder() {
        let dtypes = crate::tensors::ALL_DTYPES
            .iter()
            .filter(|d| d.byte_size().is_some());
        let mut cases = 0;
        for (i, &dtype) in dtypes.enumerate() {
            let size = dtype.byte_size().unwrap() as u64;
            for (j, shape) in [
                vec![],
                vec![0],
                vec![16384],
                vec![2, 8, 128],
                vec![u32::MAX as u64, 3],
                vec![1; 700],
            ]
            .into_iter()
            .enumerate()
            {
                let len = shape.iter().product::<u64>() * size;
                let tensor = TensorSpec { dtype, shape };
                let key = Key([(i * 16 + j) as u8; 16]);
                let sum = checksum(&len.to_le_bytes()) >> (i + j);
                let got = encode_header(&key, len, sum, &tensor);
                assert!(
                    got == reference_header(&key, len, sum, &tensor),
                    "{dtype} {j}"
                );
                assert_eq!(decode_header(&got).unwrap().tensor, tensor);
                cases += 1;
            }
        }
        assert_eq!(cases, 19 * 6);
    }

    #[test]
    fn checksum_is_xxh3_64() {
        assert_eq!(checksum(b""), 0x2d06800538d394c2);
    }
}
