//! The tensor file header, as pure functions on the safetensors header codec
//! (`tensors::codec`): planning a file (offsets, padding, header JSON) before any byte is
//! written, and parsing/validating one with the `safetensors` crate's rules.
//!
//! File layout (the safetensors format):
//! ```text
//! [u64 LE n][n bytes of JSON header, space-padded][data: tensors back to back]
//! ```
//! With 4 KiB alignment the header is space-padded so the data starts at a multiple of 4096,
//! and after every tensor whose size is not a multiple of 4096 a padding tensor
//! (`__kvr_pad_<k>__`, dtype U8, zeros) fills the gap. The safetensors format requires the
//! tensors' byte ranges to be contiguous and to cover the whole data area (the crate rejects
//! unaccounted gaps), so padding has to be expressed as tensors. kvr hides them when reading;
//! other readers list them. KV blocks are usually multiples of 4096 and then need no padding.

use std::collections::HashSet;

use safetensors::tensor::TensorInfo;

use super::codec::{FieldOrder, HeaderWriter, RawHeader};
use super::{Dtype, TensorSpec};
use crate::{err, Error, Result};

/// Alignment of tensor data with [`KVR_TENSORS_ALIGN_4K`](crate::ffi::tensors::KVR_TENSORS_ALIGN_4K).
pub const ALIGN: u64 = 4096;
/// Name prefix of padding tensors; user tensor names may not start with it.
pub const PAD_PREFIX: &str = "__kvr_pad_";
/// Metadata key kvr sets on aligned files (value "4096"); readers then hide padding tensors.
pub const ALIGN_KEY: &str = "kvr.align";
/// Largest header the `safetensors` crate accepts.
pub const MAX_HEADER: u64 = 100_000_000;

/// One tensor of a file to write: its name and spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedTensor {
    /// Unique, non-empty name.
    pub name: String,
    /// Element type and shape.
    pub spec: TensorSpec,
}

/// Bytes of a tensor of `dtype` and `shape`; rejects overflow and packed types that do not
/// end on a byte boundary.
pub fn nbytes(dtype: Dtype, shape: &[u64]) -> Result<u64> {
    let elems = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| err!(InvalidArgument, "shape {shape:?} overflows 64 bits"))?;
    let bits = elems
        .checked_mul(dtype.bits())
        .filter(|&b| b / 8 <= isize::MAX as u64)
        .ok_or_else(|| {
            err!(
                InvalidArgument,
                "{dtype} tensor of shape {shape:?} overflows"
            )
        })?;
    if bits % 8 != 0 {
        return Err(err!(
            InvalidArgument,
            "{dtype} tensor of shape {shape:?} is {bits} bits, not a whole number of bytes"
        ));
    }
    Ok(bits / 8)
}

/// One piece of the data area, in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Tensor `index` (into the specs) of `len` bytes.
    Tensor {
        /// Index into the planned specs.
        index: usize,
        /// Bytes.
        len: u64,
    },
    /// `len` zero bytes of a padding tensor.
    Pad {
        /// Bytes.
        len: u64,
    },
}

/// Everything needed to write a file, computed before writing.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The first bytes of the file: 8-byte length plus padded JSON.
    pub header: Vec<u8>,
    /// The data area, in order.
    pub pieces: Vec<Piece>,
    /// Total file size.
    pub file_len: u64,
}

/// Plans a file: validates names, metadata and sizes, lays out offsets (with 4 KiB padding
/// when `align`), and builds the header.
pub fn plan(tensors: &[NamedTensor], metadata: &[(&str, &str)], align: bool) -> Result<Plan> {
    let mut names = HashSet::new();
    for t in tensors {
        if t.name.is_empty() {
            return Err(Error::invalid("tensor name is empty"));
        }
        if t.name == "__metadata__" || t.name.starts_with(PAD_PREFIX) {
            return Err(err!(
                InvalidArgument,
                "tensor name '{}' is reserved (\"__metadata__\", \"{PAD_PREFIX}*\")",
                t.name
            ));
        }
        if t.name.contains('\0') {
            return Err(err!(
                InvalidArgument,
                "tensor name {:?} contains NUL",
                t.name
            ));
        }
        if !names.insert(t.name.as_str()) {
            return Err(err!(InvalidArgument, "duplicate tensor name '{}'", t.name));
        }
    }
    let mut keys = HashSet::new();
    for (k, _) in metadata {
        if !keys.insert(*k) {
            return Err(err!(InvalidArgument, "duplicate metadata key '{k}'"));
        }
        if align && *k == ALIGN_KEY {
            return Err(err!(
                InvalidArgument,
                "metadata key '{ALIGN_KEY}' is set by kvr on aligned files"
            ));
        }
    }

    let mut pieces = Vec::with_capacity(tensors.len());
    let mut at = 0u64;
    let overflow = || Error::invalid("total data size overflows 64 bits");
    for (i, t) in tensors.iter().enumerate() {
        let len = nbytes(t.spec.dtype, &t.spec.shape)
            .map_err(|e| e.context(format!("tensor '{}'", t.name)))?;
        let end = at.checked_add(len).ok_or_else(overflow)?;
        pieces.push(Piece::Tensor { index: i, len });
        at = end;
        if align && at % ALIGN != 0 && i + 1 < tensors.len() {
            let pad = ALIGN - at % ALIGN;
            pieces.push(Piece::Pad { len: pad });
            at += pad;
        }
    }

    let mut w = HeaderWriter::with_capacity(if align { ALIGN as usize } else { 256 });
    let align_entry = align.then_some((ALIGN_KEY, "4096"));
    w.metadata(metadata.iter().copied().chain(align_entry));
    let mut at = 0u64;
    let mut last_tensor = 0;
    for piece in &pieces {
        match *piece {
            Piece::Tensor { index, len } => {
                let t = &tensors[index];
                let (dtype, shape) = (t.spec.dtype, &t.spec.shape);
                w.tensor(&t.name, dtype, shape, [at, at + len], FieldOrder::Declared);
                last_tensor = index;
                at += len;
            }
            Piece::Pad { len } => {
                // Named after the tensor it follows.
                let name = format!("{PAD_PREFIX}{last_tensor}__");
                w.tensor(
                    &name,
                    Dtype::U8,
                    &[len],
                    [at, at + len],
                    FieldOrder::Declared,
                );
                at += len;
            }
        }
    }
    let header = w.finish(if align { ALIGN } else { 8 });
    let n = header.len() as u64 - 8;
    if n > MAX_HEADER {
        return Err(err!(
            TooLarge,
            "safetensors header of {n} bytes exceeds the format's limit of {MAX_HEADER}"
        ));
    }
    let data_start = 8 + n;
    let file_len = data_start.checked_add(at).ok_or_else(overflow)?;
    Ok(Plan {
        header,
        pieces,
        file_len,
    })
}

/// One tensor found in a file's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedTensor {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// File offset of the first byte.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

/// A validated header.
#[derive(Clone, Debug)]
pub struct Parsed {
    /// Tensors in file order, padding tensors of aligned kvr files left out.
    pub tensors: Vec<ParsedTensor>,
    /// The padding tensors of aligned kvr files (hidden from `tensors`), in file order.
    pub padding: Vec<ParsedTensor>,
    /// `__metadata__` entries, sorted by key.
    pub metadata: Vec<(String, String)>,
    /// File offset of the data area.
    pub data_start: u64,
}

/// Bytes at the start of a file of `file_len` bytes that [`parse_head`] needs, given its
/// first 8 bytes: 8 + the header length, or just 8 when that length is out of range (too
/// large, or past the end of the file), which [`parse_head`] then reports.
pub fn head_len(first8: [u8; 8], file_len: u64) -> u64 {
    let n = u64::from_le_bytes(first8);
    if n > MAX_HEADER || n > file_len.saturating_sub(8) {
        8
    } else {
        8 + n
    }
}

/// Parses and validates the header of a whole file image (`buf` is the full file, usually a
/// mapping; only the header bytes are read). The checks are the `safetensors` crate's
/// (`SafeTensors::read_metadata`): header length within the file and at most 100 MB, valid
/// UTF-8 JSON, known dtypes (the crate's `Dtype`/`TensorInfo` deserializers), offsets
/// contiguous in order so none overlap and sizes equal to dtype x shape (the crate's
/// `Metadata::new`), data ending exactly at the file's end. Only the walk over the JSON
/// object is kvr's (`RawHeader`), about 4x faster than the crate's; a test checks both
/// agree on good and malformed headers.
#[cfg(test)]
pub fn parse(buf: &[u8]) -> Result<Parsed> {
    parse_head(buf, buf.len() as u64)
}

/// Like [`parse`], from the first bytes of a file of `len` bytes: `buf` must hold the
/// 8-byte length and the whole header it announces when that length is valid ([`head_len`]
/// says how many bytes that is); nothing past the header is read.
pub fn parse_head(buf: &[u8], len: u64) -> Result<Parsed> {
    use safetensors::SafeTensorError as E;
    let Some(n) = buf.get(..8).filter(|_| len >= 8) else {
        return Err(err!(
            Corrupt,
            "file is {len} bytes, shorter than the 8-byte header length"
        ));
    };
    let n = u64::from_le_bytes(n.try_into().expect("8 bytes"));
    if n > len - 8 {
        return Err(err!(
            Corrupt,
            "header length {n} runs past the end of the {len}-byte file"
        ));
    }
    let bad = |e: E| err!(Corrupt, "invalid safetensors header: {}", describe(&e));
    if n > MAX_HEADER {
        return Err(bad(E::HeaderTooLarge));
    }
    if (buf.len() as u64) < 8 + n {
        return Err(err!(
            Internal,
            "{} bytes given of a {}-byte header",
            buf.len(),
            8 + n
        ));
    }
    let text =
        std::str::from_utf8(&buf[8..8 + n as usize]).map_err(|e| bad(E::InvalidHeader(e)))?;
    let raw =
        RawHeader::parse(text.as_bytes()).map_err(|e| bad(E::InvalidHeaderDeserialization(e)))?;
    let mut tensors: Vec<(String, TensorInfo)> = raw
        .tensors
        .into_iter()
        .map(|(name, info)| (name.0.into_owned(), info))
        .collect();
    // A repeated name keeps its last entry (as the crate's HashMap does); then file order.
    if tensors.len() > 1 {
        let mut seen = std::collections::HashMap::with_capacity(tensors.len());
        for (i, (name, _)) in tensors.iter().enumerate() {
            seen.insert(name.as_str(), i);
        }
        if seen.len() < tensors.len() {
            let keep: HashSet<usize> = seen.into_values().collect();
            let mut i = 0;
            tensors.retain(|_| {
                i += 1;
                keep.contains(&(i - 1))
            });
        }
    }
    tensors.sort_by(|(a, x), (b, y)| x.data_offsets.cmp(&y.data_offsets).then(a.cmp(b)));
    let data_start = 8 + n;
    // Sorted by key; a repeated key keeps its last value (as the crate's HashMap does).
    let mut entries = raw.metadata.unwrap_or_default();
    entries.reverse();
    entries.sort_by(|(a, _), (b, _)| a.cmp(b));
    entries.dedup_by(|(later, _), (kept, _)| later == kept);
    let metadata: Vec<(String, String)> = entries
        .into_iter()
        .map(|(k, v)| (k.0.into_owned(), v.0.into_owned()))
        .collect();
    let aligned = metadata.iter().any(|(k, _)| k == ALIGN_KEY);
    let mut out = Vec::with_capacity(tensors.len());
    let mut padding = Vec::new();
    for (name, info) in &tensors {
        let dtype =
            Dtype::from_st(info.dtype).map_err(|e| e.context(format!("tensor '{name}'")))?;
        let is_pad =
            aligned && name.starts_with(PAD_PREFIX) && dtype == Dtype::U8 && info.shape.len() == 1;
        let (s, e) = info.data_offsets;
        let t = ParsedTensor {
            name: name.clone(),
            dtype,
            shape: info.shape.iter().map(|&d| d as u64).collect(),
            offset: data_start + s as u64,
            len: (e as u64).wrapping_sub(s as u64),
        };
        if is_pad {
            padding.push(t);
        } else {
            out.push(t);
        }
    }
    // The crate's validation: contiguous offsets in order, sizes = dtype x shape.
    let meta = safetensors::tensor::Metadata::new(None, tensors).map_err(bad)?;
    if meta.data_len() as u64 != len - data_start {
        return Err(bad(E::MetadataIncompleteBuffer));
    }
    Ok(Parsed {
        tensors: out,
        padding,
        metadata,
        data_start,
    })
}

fn describe(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::InvalidOffset(name) => format!(
            "tensor '{name}' has data_offsets that are not contiguous with the previous tensor (overlap or gap)"
        ),
        E::TensorInvalidInfo => {
            "a tensor's data_offsets span differs from its dtype size x shape".into()
        }
        E::MetadataIncompleteBuffer => {
            "the tensors' data does not end exactly at the end of the file (truncated or trailing bytes)".into()
        }
        E::InvalidHeaderDeserialization(j) => format!("header is not valid safetensors JSON: {j}"),
        E::InvalidHeader(u) => format!("header is not UTF-8: {u}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Plan {
        /// File offset of each tensor's first byte (what a reader's header must say).
        fn offsets(&self) -> Vec<u64> {
            let mut at = self.header.len() as u64;
            let mut out = Vec::new();
            for piece in &self.pieces {
                match *piece {
                    Piece::Tensor { len, .. } => {
                        out.push(at);
                        at += len;
                    }
                    Piece::Pad { len } => at += len,
                }
            }
            out
        }
    }

    fn spec(name: &str, dtype: Dtype, shape: &[u64]) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            spec: TensorSpec {
                dtype,
                shape: shape.to_vec(),
            },
        }
    }

    fn image(plan: &Plan) -> Vec<u8> {
        let mut v = plan.header.clone();
        v.resize(plan.file_len as usize, 0);
        v
    }

    #[test]
    fn sizes_and_overflow() {
        assert_eq!(nbytes(Dtype::F32, &[2, 3]).unwrap(), 24);
        assert_eq!(nbytes(Dtype::F32, &[]).unwrap(), 4);
        assert_eq!(nbytes(Dtype::F32, &[0, 7]).unwrap(), 0);
        assert_eq!(nbytes(Dtype::F4, &[4]).unwrap(), 2);
        assert!(nbytes(Dtype::F4, &[3]).is_err());
        assert_eq!(nbytes(Dtype::F6E2M3, &[4]).unwrap(), 3);
        assert!(nbytes(Dtype::U8, &[u64::MAX, 2]).is_err());
        assert!(nbytes(Dtype::F64, &[1 << 62]).is_err());
    }

    #[test]
    fn plain_plan_parses_with_the_crate_and_back() {
        let specs = [
            spec("a", Dtype::F32, &[2, 3]),
            spec("b\"q", Dtype::BF16, &[5]),
            spec("s", Dtype::I64, &[]),
        ];
        let p = plan(&specs, &[("k", "v\n")], false).unwrap();
        assert_eq!(p.header.len() % 8, 0);
        assert_eq!(p.file_len, p.header.len() as u64 + 24 + 10 + 8);
        let img = image(&p);
        let parsed = parse(&img).unwrap();
        assert_eq!(parsed.metadata, vec![("k".into(), "v\n".into())]);
        let names: Vec<_> = parsed.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b\"q", "s"]);
        for (t, o) in parsed.tensors.iter().zip(&p.offsets()) {
            assert_eq!(t.offset, *o);
        }
        assert_eq!(parsed.tensors[2].shape, Vec::<u64>::new());
    }

    #[test]
    fn parse_head_reads_only_the_header() {
        let specs = [spec("a", Dtype::F32, &[2, 3]), spec("b", Dtype::U8, &[5])];
        let img = image(&plan(&specs, &[("k", "v")], true).unwrap());
        let len = img.len() as u64;
        let need = head_len(img[..8].try_into().unwrap(), len);
        let n = u64::from_le_bytes(img[..8].try_into().unwrap());
        assert_eq!(need, 8 + n);
        let whole = parse(&img).unwrap();
        let head = parse_head(&img[..need as usize], len).unwrap();
        assert_eq!(head.data_start, whole.data_start);
        assert_eq!(head.metadata, whole.metadata);
        let key = |p: &Parsed| -> Vec<(String, u64, u64)> {
            p.tensors
                .iter()
                .map(|t| (t.name.clone(), t.offset, t.len))
                .collect()
        };
        assert_eq!(key(&head), key(&whole));
        // Too few bytes for the announced header: the caller's bug, not corruption.
        let short = parse_head(&img[..need as usize - 1], len).unwrap_err();
        assert_eq!(short.kind(), crate::ErrorKind::Internal, "{short}");
        // The file length still bounds the data: one byte missing is corruption.
        let e = parse_head(&img[..need as usize], len - 1).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt, "{e}");
        // Out-of-range lengths need only the 8 bytes; parse_head reports them.
        let huge = (MAX_HEADER + 1).to_le_bytes();
        assert_eq!(head_len(huge, u64::MAX), 8);
        assert_eq!(head_len(100u64.to_le_bytes(), 50), 8);
        assert_eq!(head_len(100u64.to_le_bytes(), 108), 108);
        assert!(parse_head(&huge, u64::MAX).is_err());
        let e = parse_head(&100u64.to_le_bytes(), 50).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt, "{e}");
        // A length field but a file shorter than 8 bytes.
        let e = parse_head(&img[..8], 7).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt, "{e}");
    }

    #[test]
    fn aligned_plan_starts_every_tensor_on_4k_and_stays_valid() {
        let specs = [
            spec("x", Dtype::F16, &[3]),
            spec("empty", Dtype::F32, &[0]),
            spec("y", Dtype::U8, &[4096]),
            spec("z", Dtype::F64, &[513]),
            spec("w", Dtype::U8, &[1]),
        ];
        let p = plan(&specs, &[], true).unwrap();
        assert_eq!(p.header.len() as u64 % ALIGN, 0);
        let offsets = p.offsets();
        for o in &offsets {
            assert_eq!(o % ALIGN, 0, "{offsets:?}");
        }
        let pads = p
            .pieces
            .iter()
            .filter(|x| matches!(x, Piece::Pad { .. }))
            .count();
        assert_eq!(pads, 2); // after x and after z; y is a 4096 multiple, w is last
        let img = image(&p);
        // The crate accepts it, padding tensors and all.
        let st = safetensors::SafeTensors::deserialize(&img).unwrap();
        assert_eq!(st.len(), 7);
        // kvr hides the padding.
        let parsed = parse(&img).unwrap();
        assert_eq!(parsed.tensors.len(), 5);
        assert_eq!(parsed.padding.len(), 2);
        assert!(parsed
            .padding
            .iter()
            .all(|t| t.name.starts_with(PAD_PREFIX)));
        assert_eq!(parsed.metadata, vec![(ALIGN_KEY.into(), "4096".into())]);
        assert_eq!(parsed.data_start % ALIGN, 0);
    }

    #[test]
    fn bad_specs_are_rejected() {
        let e = plan(
            &[spec("a", Dtype::U8, &[1]), spec("a", Dtype::U8, &[1])],
            &[],
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("duplicate tensor name 'a'"), "{e}");
        assert!(plan(&[spec("", Dtype::U8, &[1])], &[], false).is_err());
        assert!(plan(&[spec("__metadata__", Dtype::U8, &[1])], &[], false).is_err());
        assert!(plan(&[spec("__kvr_pad_0__", Dtype::U8, &[1])], &[], false).is_err());
        assert!(plan(
            &[spec("a", Dtype::U8, &[1])],
            &[("k", "1"), ("k", "2")],
            false
        )
        .is_err());
        assert!(plan(&[spec("a", Dtype::U8, &[1])], &[(ALIGN_KEY, "1")], true).is_err());
        let e = plan(&[spec("big", Dtype::U8, &[u64::MAX, 3])], &[], false).unwrap_err();
        assert!(e.to_string().contains("tensor 'big'"), "{e}");
        let e = plan(
            &[
                spec("a", Dtype::U8, &[u64::MAX / 2]),
                spec("b", Dtype::U8, &[u64::MAX / 2 + 10]),
            ],
            &[],
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("overflow"), "{e}");
    }

    /// kvr's parse accepts exactly what the crate's `read_metadata` accepts, with the same
    /// tensors, on good headers and on many broken variants of them.
    #[test]
    fn parse_agrees_with_the_crate() {
        let specs = [
            spec("a", Dtype::F32, &[2, 3]),
            spec("z", Dtype::U8, &[0]),
            spec("b", Dtype::BF16, &[5]),
        ];
        let good = image(&plan(&specs, &[("k", "v")], true).unwrap());
        let json_end = 8 + good[8..].iter().position(|&c| c == b' ').unwrap();
        let data_start = parse(&good).unwrap().data_start as usize;
        let mut cases: Vec<Vec<u8>> = vec![good.clone()];
        let edits: [(&str, &str); 11] = [
            ("\"k\":\"v\"", "\"k\":\"w\",\"k\":\"v\""),
            ("\"F32\"", "\"F31\""),
            ("[2,3]", "[2,4]"),
            ("[2,3]", "[2,-3]"),
            ("\"data_offsets\":[0,24]", "\"data_offsets\":[0,20]"),
            ("\"data_offsets\":[0,24]", "\"data_offsets\":[8,32]"),
            ("\"__metadata__\":{\"k\":\"v\"", "\"__metadata__\":{\"k\":1"),
            ("\"b\":", "\"a\":"),
            ("\"z\":", "\"a\":"),
            ("{\"__metadata__\"", "[\"__metadata__\""),
            ("\"shape\"", "\"shapes\""),
        ];
        for (from, to) in edits {
            let text = std::str::from_utf8(&good[8..json_end]).unwrap();
            assert!(text.contains(from), "{from} in {text}");
            // Same header length (the JSON re-padded with spaces), same data.
            let mut v = good.clone();
            let mut h = text.replacen(from, to, 1).into_bytes();
            h.resize(data_start - 8, b' ');
            v[8..data_start].copy_from_slice(&h);
            cases.push(v);
        }
        let mut trailing = good.clone();
        trailing.push(0);
        cases.push(trailing);
        cases.push(good[..good.len() - 1].to_vec());
        let mut not_utf8 = good.clone();
        not_utf8[12] = 0xff;
        cases.push(not_utf8);
        let mut accepted = 0;
        for (i, c) in cases.iter().enumerate() {
            let ours = parse(c);
            accepted += usize::from(ours.is_ok());
            let theirs = safetensors::SafeTensors::read_metadata(c);
            assert_eq!(
                ours.is_ok(),
                theirs.is_ok(),
                "case {i}: {ours:?} vs {theirs:?}"
            );
            if let (Ok(p), Ok((_, m))) = (ours, theirs) {
                let mut names: Vec<String> = p
                    .tensors
                    .iter()
                    .chain(&p.padding)
                    .map(|t| t.name.clone())
                    .collect();
                names.sort();
                let mut want: Vec<String> = m.tensors().into_keys().collect();
                want.sort();
                assert_eq!(names, want, "case {i}");
                for t in p.tensors.iter().chain(&p.padding) {
                    let info = m.info(&t.name).unwrap();
                    assert_eq!(t.offset - p.data_start, info.data_offsets.0 as u64);
                    assert_eq!(
                        t.shape,
                        info.shape.iter().map(|&d| d as u64).collect::<Vec<_>>()
                    );
                }
            }
        }
        // The good file and the repeated metadata value pass; the broken ones do not.
        assert_eq!(accepted, 2, "{} cases", cases.len());
    }

    /// The exact header bytes of an aligned file with metadata and one padding tensor, as kvr
    /// has always written them (entries in order, fields dtype, shape, data_offsets).
    #[test]
    fn headers_are_byte_identical_to_the_pinned_format() {
        let specs = [spec("x", Dtype::F16, &[3]), spec("y\"", Dtype::U8, &[1])];
        let p = plan(&specs, &[("k", "v\n")], true).unwrap();
        let json = concat!(
            r#"{"__metadata__":{"k":"v\n","kvr.align":"4096"},"#,
            r#""x":{"dtype":"F16","shape":[3],"data_offsets":[0,6]},"#,
            r#""__kvr_pad_0__":{"dtype":"U8","shape":[4090],"data_offsets":[6,4096]},"#,
            r#""y\"":{"dtype":"U8","shape":[1],"data_offsets":[4096,4097]}}"#
        );
        let mut want = 4088u64.to_le_bytes().to_vec();
        want.extend_from_slice(json.as_bytes());
        want.resize(4096, b' ');
        assert!(
            p.header == want,
            "{}",
            String::from_utf8_lossy(&p.header[8..])
        );
        assert_eq!(p.file_len, 4096 + 4097);
        let unaligned = plan(&specs[..1], &[], false).unwrap();
        let json = r#"{"x":{"dtype":"F16","shape":[3],"data_offsets":[0,6]}}"#;
        let mut want = 56u64.to_le_bytes().to_vec();
        want.extend_from_slice(json.as_bytes());
        want.resize(64, b' ');
        assert!(
            unaligned.header == want,
            "{:?}",
            String::from_utf8_lossy(&unaligned.header)
        );
    }

    #[test]
    fn an_empty_file_is_valid() {
        let p = plan(&[], &[], false).unwrap();
        let parsed = parse(&image(&p)).unwrap();
        assert!(parsed.tensors.is_empty());
    }
}
