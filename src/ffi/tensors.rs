//! C ABI of tensor files: writing from strided tensors and lazy zero-copy reading (the lazy
//! tensor directory is in `tensor_dir.rs`, region export/import in `export.rs`).

use std::ffi::{c_char, c_void};

use super::handle::BoxedHandle;
use super::obj::{kvr_obj_config, to_rust_config};
use super::status::{guard, kvr_status};
use super::{arg_bytes_mut, arg_str, hand_out, read_config, write_opt, write_out};
use crate::obj::ObjConfig;
use crate::tensors::header::nbytes;
use crate::tensors::write::extent;
use crate::tensors::{Dtype, TensorEntry, TensorFile, TensorIn, WriteOptions};
use crate::{err, Error, Result};

/// Dtype code: boolean (1 byte).
pub const KVR_DTYPE_BOOL: u32 = 1;
/// Dtype code: uint8.
pub const KVR_DTYPE_U8: u32 = 2;
/// Dtype code: int8.
pub const KVR_DTYPE_I8: u32 = 3;
/// Dtype code: uint16.
pub const KVR_DTYPE_U16: u32 = 4;
/// Dtype code: int16.
pub const KVR_DTYPE_I16: u32 = 5;
/// Dtype code: uint32.
pub const KVR_DTYPE_U32: u32 = 6;
/// Dtype code: int32.
pub const KVR_DTYPE_I32: u32 = 7;
/// Dtype code: uint64.
pub const KVR_DTYPE_U64: u32 = 8;
/// Dtype code: int64.
pub const KVR_DTYPE_I64: u32 = 9;
/// Dtype code: IEEE half.
pub const KVR_DTYPE_F16: u32 = 10;
/// Dtype code: bfloat16.
pub const KVR_DTYPE_BF16: u32 = 11;
/// Dtype code: float.
pub const KVR_DTYPE_F32: u32 = 12;
/// Dtype code: double.
pub const KVR_DTYPE_F64: u32 = 13;
/// Dtype code: FP8 E4M3 ("F8_E4M3").
pub const KVR_DTYPE_F8_E4M3: u32 = 14;
/// Dtype code: FP8 E5M2 ("F8_E5M2").
pub const KVR_DTYPE_F8_E5M2: u32 = 15;
/// Dtype code: FP8 E8M0 ("F8_E8M0").
pub const KVR_DTYPE_F8_E8M0: u32 = 16;
/// Dtype code: FP8 E4M3 FNUZ ("F8_E4M3FNUZ").
pub const KVR_DTYPE_F8_E4M3FNUZ: u32 = 17;
/// Dtype code: FP8 E5M2 FNUZ ("F8_E5M2FNUZ").
pub const KVR_DTYPE_F8_E5M2FNUZ: u32 = 18;
/// Dtype code: complex64 ("C64").
pub const KVR_DTYPE_C64: u32 = 19;
/// Dtype code: MX FP4, packed two per byte ("F4"; contiguous only).
pub const KVR_DTYPE_F4: u32 = 20;
/// Dtype code: MX FP6 E2M3, packed ("F6_E2M3"; contiguous only).
pub const KVR_DTYPE_F6_E2M3: u32 = 21;
/// Dtype code: MX FP6 E3M2, packed ("F6_E3M2"; contiguous only).
pub const KVR_DTYPE_F6_E3M2: u32 = 22;

/// Write flag: start every tensor's data at a 4096-aligned file offset. The header is
/// space-padded and, after a tensor whose size is not a multiple of 4096, a zero-filled U8
/// padding tensor `__kvr_pad_<i>__` is inserted (safetensors requires contiguous offsets);
/// kvr hides padding tensors when reading, other readers list them.
pub const KVR_TENSORS_ALIGN_4K: u32 = 1 << 0;
/// Write flag: skip the fsync of the file and its directory (faster, not crash-durable; the
/// rename is still atomic).
pub const KVR_TENSORS_NO_SYNC: u32 = 1 << 1;

const KNOWN_WRITE_FLAGS: u32 = KVR_TENSORS_ALIGN_4K | KVR_TENSORS_NO_SYNC;

/// Largest rank accepted.
pub const KVR_TENSORS_MAX_RANK: u32 = 64;

/// A tensor to write: element `[i0, i1, ...]` is at
/// `data + (i0*strides[0] + i1*strides[1] + ...) * element_size` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_tensor {
    /// Unique name (NUL-terminated UTF-8).
    pub name: *const c_char,
    /// `KVR_DTYPE_*`.
    pub dtype: u32,
    /// Number of dimensions (0 for a scalar, at most `KVR_TENSORS_MAX_RANK`).
    pub rank: u32,
    /// `rank` dimensions (may be NULL when rank is 0).
    pub shape: *const u64,
    /// `rank` strides in elements (negative and zero allowed), or NULL for C-contiguous.
    /// Transposed, sliced and permuted views are gathered while writing.
    pub strides: *const i64,
    /// Address of element `[0, 0, ...]`; may be NULL only for a tensor with no elements.
    pub data: *const c_void,
}

/// A metadata entry (`__metadata__` of the safetensors header).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_kv {
    /// Key (NUL-terminated UTF-8, unique).
    pub key: *const c_char,
    /// Value (NUL-terminated UTF-8).
    pub value: *const c_char,
}

/// A zero-copy view of a stored tensor (C-contiguous, little-endian).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_tensor_ref {
    /// Name.
    pub name: *const c_char,
    /// `KVR_DTYPE_*`.
    pub dtype: u32,
    /// Number of dimensions.
    pub rank: u32,
    /// `rank` dimensions.
    pub shape: *const u64,
    /// The tensor's bytes in the read-only mapping (never write through it).
    pub data: *const c_void,
    /// Bytes at `data`.
    pub nbytes: u64,
}

impl kvr_tensor_ref {
    pub(super) fn new(e: &TensorEntry, data: &[u8]) -> Self {
        kvr_tensor_ref {
            name: e.name_c().as_ptr(),
            dtype: e.dtype.code(),
            rank: e.shape.len() as u32,
            shape: e.shape.as_ptr(),
            data: data.as_ptr().cast(),
            nbytes: e.len,
        }
    }
}

/// Opaque handle of an open tensor file (`kvr_tensors_open` / `kvr_tensors_close`).
pub struct kvr_tensor_file {
    _opaque: [u8; 0],
}

impl BoxedHandle for kvr_tensor_file {
    type Rust = TensorFile;
    const ARG: &'static str = "file";
}

/// Borrows the caller's tensor descriptions as [`TensorIn`]s.
///
/// # Safety
/// `tensors` must be NULL or point to `n` descriptors whose pointers are valid as documented
/// on [`kvr_tensor`] for `'a`.
unsafe fn tensors_in<'a>(tensors: *const kvr_tensor, n: usize) -> Result<Vec<TensorIn<'a>>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if tensors.is_null() {
        return Err(Error::invalid(format!("tensors is NULL (n = {n})")));
    }
    // SAFETY: non-null, `n` descriptors per the contract.
    let descs = unsafe { std::slice::from_raw_parts(tensors, n) };
    let mut out = Vec::with_capacity(n);
    for (i, t) in descs.iter().enumerate() {
        let what = |e: Error| e.context(format!("tensors[{i}]"));
        // SAFETY: NUL-terminated per the contract (NULL rejected).
        let name = unsafe { arg_str(t.name, "name") }.map_err(what)?;
        let dtype = Dtype::from_code(t.dtype).map_err(|e| what(e.context(format!("'{name}'"))))?;
        if t.rank > KVR_TENSORS_MAX_RANK {
            return Err(what(err!(
                InvalidArgument,
                "'{name}' has rank {}, more than {KVR_TENSORS_MAX_RANK}",
                t.rank
            )));
        }
        let rank = t.rank as usize;
        let shape: &[u64] = if rank == 0 {
            &[]
        } else if t.shape.is_null() {
            return Err(what(err!(
                InvalidArgument,
                "'{name}': shape is NULL with rank {rank}"
            )));
        } else {
            // SAFETY: non-null, `rank` entries per the contract.
            unsafe { std::slice::from_raw_parts(t.shape, rank) }
        };
        let strides: Option<&[i64]> = if t.strides.is_null() || rank == 0 {
            None
        } else {
            // SAFETY: non-null, `rank` entries per the contract.
            Some(unsafe { std::slice::from_raw_parts(t.strides, rank) })
        };
        let size = nbytes(dtype, shape).map_err(|e| what(e.context(format!("'{name}'"))))?;
        // The byte range the tensor reaches around `data`.
        let (lo, hi) = match (strides, dtype.byte_size()) {
            (Some(s), Some(elem)) => extent(shape, s, elem as u64).unwrap_or((0, 0)),
            _ => (0, size as i128),
        };
        if hi == lo {
            out.push(TensorIn {
                name,
                dtype,
                shape,
                strides,
                data: &[],
                offset: 0,
            });
            continue;
        }
        if t.data.is_null() {
            return Err(what(err!(InvalidArgument, "'{name}': data is NULL")));
        }
        let span = hi - lo;
        let start = t.data as usize as i128 + lo;
        if span > isize::MAX as i128 || start < 0 || start + span > usize::MAX as i128 {
            return Err(what(err!(
                InvalidArgument,
                "'{name}': strides {strides:?} reach outside the address space"
            )));
        }
        // SAFETY: the caller guarantees every element the shape and strides reach is
        // readable; [start, start+span) is exactly that range (computed by `extent`).
        let data =
            unsafe { std::slice::from_raw_parts(start as usize as *const u8, span as usize) };
        out.push(TensorIn {
            name,
            dtype,
            shape,
            strides,
            data,
            offset: (-lo) as usize,
        });
    }
    Ok(out)
}

/// Borrows the caller's metadata entries.
///
/// # Safety
/// `kv` must be NULL or point to `m` entries of NUL-terminated strings valid for `'a`.
unsafe fn metadata_in<'a>(kv: *const kvr_kv, m: usize) -> Result<Vec<(&'a str, &'a str)>> {
    if m == 0 {
        return Ok(Vec::new());
    }
    if kv.is_null() {
        return Err(Error::invalid(format!("metadata is NULL (m = {m})")));
    }
    // SAFETY: non-null, `m` entries per the contract.
    let entries = unsafe { std::slice::from_raw_parts(kv, m) };
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            // SAFETY: NUL-terminated per the contract (NULL rejected).
            let k = unsafe { arg_str(e.key, &format!("metadata[{i}].key")) }?;
            // SAFETY: as above.
            let v = unsafe { arg_str(e.value, &format!("metadata[{i}].value")) }?;
            Ok((k, v))
        })
        .collect()
}

/// Tensors, metadata entries and options of a write, borrowed from the caller.
type WriteArgs<'a> = (Vec<TensorIn<'a>>, Vec<(&'a str, &'a str)>, WriteOptions);

/// Reads the arguments `kvr_tensors_write` and `kvr_tensor_dir_put` share, flags first.
///
/// # Safety
/// As [`tensors_in`] for `tensors`/`n` and [`metadata_in`] for `metadata`/`m`.
pub(super) unsafe fn write_args<'a>(
    tensors: *const kvr_tensor,
    n: usize,
    metadata: *const kvr_kv,
    m: usize,
    flags: u32,
) -> Result<WriteArgs<'a>> {
    let opts = write_options(flags)?;
    // SAFETY: forwarded contract.
    let t = unsafe { tensors_in(tensors, n) }?;
    // SAFETY: forwarded contract.
    let md = unsafe { metadata_in(metadata, m) }?;
    Ok((t, md, opts))
}

pub(super) fn write_options(flags: u32) -> Result<WriteOptions> {
    if flags & !KNOWN_WRITE_FLAGS != 0 {
        return Err(err!(
            InvalidArgument,
            "unknown tensor write flags {:#x}",
            flags & !KNOWN_WRITE_FLAGS
        ));
    }
    Ok(WriteOptions {
        align_4k: flags & KVR_TENSORS_ALIGN_4K != 0,
        sync: flags & KVR_TENSORS_NO_SYNC == 0,
    })
}

/// Optional tensor name: NULL means "the only tensor".
///
/// # Safety
/// As [`arg_str`].
pub(super) unsafe fn opt_name<'a>(name: *const c_char) -> Result<Option<&'a str>> {
    if name.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded contract.
        unsafe { arg_str(name, "name") }.map(Some)
    }
}

/// The S3 settings of a URL open or write: `config` NULL means the `AWS_*` environment
/// variables (as `kvr_obj_config_default` + NULL strings would); its `url` and
/// `namespace_name` are not used and may be NULL.
///
/// # Safety
/// `config` is NULL or points to a config of at least `struct_size` bytes.
unsafe fn url_config(config: *const kvr_obj_config) -> Result<Option<ObjConfig>> {
    if config.is_null() {
        return Ok(None);
    }
    let min = std::mem::size_of::<kvr_obj_config>();
    // SAFETY: forwarded contract (NULL handled above, struct_size checked inside).
    let mut c = unsafe { read_config(config, kvr_obj_config::default(), min, "config") }?;
    // The object tier's conversion wants a store URL and namespace, which a tensor file has
    // no use for: give it placeholders (the file's own URL replaces them).
    c.url = c"s3://kvr-tensor-file".as_ptr();
    c.namespace_name = c"unused".as_ptr();
    to_rust_config(&c).map(Some)
}

/// Writes `n` tensors and `m` metadata entries as a safetensors file at `path`: streaming
/// (strided tensors gathered through a bounded buffer), atomically (temp file + rename; on
/// error no file is left). `flags`: `KVR_TENSORS_ALIGN_4K`, `KVR_TENSORS_NO_SYNC`.
///
/// `path` may also be a URL: `file:///abs/path` (exactly the local path), or
/// `s3://bucket/key` with the S3 settings of the `AWS_*` environment variables (see
/// `kvr_tensors_write_url`). Errors: `KVR_ERR_INVALID_ARGUMENT` (NULLs, duplicate or reserved
/// names, overflowing shapes, strides out of range, a malformed URL), `KVR_ERR_UNSUPPORTED`
/// (unknown dtype code, a URL scheme other than file:// and s3://), `KVR_ERR_NO_SPACE`,
/// `KVR_ERR_IO`, and for s3:// `KVR_ERR_UNAVAILABLE` / `KVR_ERR_PERMISSION`.
#[no_mangle]
pub extern "C" fn kvr_tensors_write(
    path: *const c_char,
    tensors: *const kvr_tensor,
    n: usize,
    metadata: *const kvr_kv,
    m: usize,
    flags: u32,
) -> kvr_status {
    guard(|| {
        // SAFETY: NULL or a C string (caller's contract).
        let path = unsafe { arg_str(path, "path") }?;
        // SAFETY: `n` descriptors and `m` entries per the contract.
        let (t, md, opts) = unsafe { write_args(tensors, n, metadata, m, flags) }?;
        crate::tensors::write_to(path, None, &t, &md, opts).map(|_| ())
    })
}

/// `kvr_tensors_write` to a path or URL with explicit S3 settings: `config` (filled with
/// `kvr_obj_config_default`; its `url` and `namespace_name` are not used) gives endpoint,
/// region, credentials, concurrency and timeouts; NULL string fields and a NULL `config`
/// take the `AWS_*` environment variables. An `s3://bucket/key` file is streamed as a
/// multipart upload (parts of 8 MiB or more, a few in flight: memory stays bounded whatever
/// the file size) and appears only once complete: after any error no new object is visible
/// (an existing one is unchanged). `KVR_TENSORS_NO_SYNC` does not apply to objects.
#[no_mangle]
pub extern "C" fn kvr_tensors_write_url(
    url: *const c_char,
    config: *const kvr_obj_config,
    tensors: *const kvr_tensor,
    n: usize,
    metadata: *const kvr_kv,
    m: usize,
    flags: u32,
) -> kvr_status {
    guard(|| {
        // SAFETY: NULL or a C string (caller's contract).
        let url = unsafe { arg_str(url, "url") }?;
        // SAFETY: NULL or a config of `struct_size` bytes.
        let cfg = unsafe { url_config(config) }?;
        // SAFETY: `n` descriptors and `m` entries per the contract.
        let (t, md, opts) = unsafe { write_args(tensors, n, metadata, m, flags) }?;
        crate::tensors::write_to(url, cfg.as_ref(), &t, &md, opts).map(|_| ())
    })
}

/// Opens a tensor file: maps it read-only and validates the header only (offsets in bounds,
/// contiguous and non-overlapping, sizes equal to dtype x shape). No tensor data is read.
/// `path` may also be a URL: `file:///abs/path` (exactly the local path, mapped), or
/// `s3://bucket/key` with the S3 settings of the `AWS_*` environment variables (see
/// `kvr_tensors_open_url`). Errors: `KVR_ERR_NOT_FOUND`, `KVR_ERR_CORRUPT` (with what is
/// wrong), `KVR_ERR_UNSUPPORTED` (also: a URL scheme other than file:// and s3://),
/// `KVR_ERR_INVALID_ARGUMENT` (a malformed URL), and for s3:// `KVR_ERR_UNAVAILABLE` /
/// `KVR_ERR_PERMISSION`.
#[no_mangle]
pub extern "C" fn kvr_tensors_open(
    path: *const c_char,
    out: *mut *mut kvr_tensor_file,
) -> kvr_status {
    guard(|| {
        // SAFETY: NULL or a C string.
        let path = unsafe { arg_str(path, "path") }?;
        // SAFETY: `out` is NULL (rejected) or writable per the contract.
        unsafe { hand_out(out, || TensorFile::open_location(path, None)) }
    })
}

/// Opens a tensor file at a path or URL with explicit S3 settings (`config` as for
/// `kvr_tensors_write_url`; NULL: the `AWS_*` environment). An `s3://bucket/key` file is
/// opened with one HEAD and ranged GETs of its header only (the first 64 KiB, then the rest
/// of a longer header), validated exactly as a local file's. On such a file:
/// `kvr_tensors_read_into` and `kvr_tensors_read_into_direct` fetch exactly the tensor's
/// byte range (ranged GETs straight into `dst`; there is no page cache to bypass);
/// `kvr_tensors_get` fetches the tensor on its first call into 4096-aligned memory owned by
/// the handle (later calls return the same pointer; valid until close);
/// `kvr_tensors_read_into_device` fetches into a temporary host buffer, then copies.
/// Requests are bounded by the config's timeouts: a server that is down or silent gives
/// `KVR_ERR_UNAVAILABLE` naming the endpoint.
#[no_mangle]
pub extern "C" fn kvr_tensors_open_url(
    url: *const c_char,
    config: *const kvr_obj_config,
    out: *mut *mut kvr_tensor_file,
) -> kvr_status {
    guard(|| {
        // SAFETY: NULL or a C string.
        let url = unsafe { arg_str(url, "url") }?;
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        // SAFETY: NULL or a config of `struct_size` bytes.
        let cfg = unsafe { url_config(config) }?;
        // SAFETY: `out` is non-NULL and writable per the contract.
        unsafe { hand_out(out, || TensorFile::open_location(url, cfg.as_ref())) }
    })
}

/// Closes a tensor file; every pointer obtained from it becomes invalid. NULL is a no-op.
#[no_mangle]
pub extern "C" fn kvr_tensors_close(file: *mut kvr_tensor_file) {
    kvr_tensor_file::free(file)
}

/// Number of tensors in the file (padding tensors excluded).
#[no_mangle]
pub extern "C" fn kvr_tensors_count(file: *const kvr_tensor_file, out: *mut usize) -> kvr_status {
    guard(|| {
        let f = kvr_tensor_file::try_ref(file)?;
        // SAFETY: NULL (rejected) or writable.
        unsafe { write_out(out, f.len(), "out") }
    })
}

/// Name of tensor `index` (file order); the string is valid until close.
/// `KVR_ERR_NOT_FOUND` when `index >= count`.
#[no_mangle]
pub extern "C" fn kvr_tensors_name_at(
    file: *const kvr_tensor_file,
    index: usize,
    out: *mut *const c_char,
) -> kvr_status {
    guard(|| {
        let f = kvr_tensor_file::try_ref(file)?;
        let t = f.tensors().get(index).ok_or_else(|| {
            err!(
                NotFound,
                "tensor index {index} out of range ({} tensors)",
                f.len()
            )
        })?;
        // SAFETY: NULL (rejected) or writable.
        unsafe { write_out(out, t.name_c().as_ptr(), "out") }
    })
}

/// Value of metadata `key`; the string is valid until close. `KVR_ERR_NOT_FOUND` if absent.
#[no_mangle]
pub extern "C" fn kvr_tensors_metadata_get(
    file: *const kvr_tensor_file,
    key: *const c_char,
    out: *mut *const c_char,
) -> kvr_status {
    guard(|| {
        let f = kvr_tensor_file::try_ref(file)?;
        // SAFETY: NULL or a C string.
        let key = unsafe { arg_str(key, "key") }?;
        let v = f.metadata_get_c(key).ok_or_else(|| {
            err!(
                NotFound,
                "no metadata key '{key}' in {}",
                f.path().display()
            )
        })?;
        // SAFETY: NULL (rejected) or writable.
        unsafe { write_out(out, v.as_ptr(), "out") }
    })
}

/// Zero-copy view of tensor `name` (pointer into the mapping, valid until close). A NULL
/// name succeeds only when the file holds exactly one tensor; otherwise `KVR_ERR_NOT_FOUND`
/// with the available names in the message. On an `s3://` file the first call for a tensor
/// fetches it into memory the handle owns (4096-aligned, valid until close).
#[no_mangle]
pub extern "C" fn kvr_tensors_get(
    file: *const kvr_tensor_file,
    name: *const c_char,
    out: *mut kvr_tensor_ref,
) -> kvr_status {
    guard(|| {
        let f = kvr_tensor_file::try_ref(file)?;
        // SAFETY: NULL or a C string.
        let name = unsafe { opt_name(name) }?;
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        let t = f.get(name)?;
        // SAFETY: checked non-null; writable.
        unsafe { write_out(out, kvr_tensor_ref::new(t.entry, t.data), "out") }
    })
}

/// Copies tensor `name` (NULL: the only tensor) into `dst` of `cap` bytes, reading only that
/// tensor's bytes through the page cache (the fast path for files read repeatedly).
/// `*out_len` (may be NULL) receives the bytes copied, or on `KVR_ERR_TOO_SMALL` the size needed.
#[no_mangle]
pub extern "C" fn kvr_tensors_read_into(
    file: *const kvr_tensor_file,
    name: *const c_char,
    dst: *mut c_void,
    cap: usize,
    out_len: *mut usize,
) -> kvr_status {
    guard(|| read_into(file, name, dst, cap, out_len, false))
}

/// Like `kvr_tensors_read_into`, but reads with O_DIRECT, bypassing the page cache (the fast
/// path for a file read once, e.g. a checkpoint loaded into a pinned region): straight into
/// `dst` when it and the tensor's offset are 4096-aligned (files written with
/// `KVR_TENSORS_ALIGN_4K`), else through aligned bounce buffers; falls back to
/// `kvr_tensors_read_into` where the file system refuses O_DIRECT.
#[no_mangle]
pub extern "C" fn kvr_tensors_read_into_direct(
    file: *const kvr_tensor_file,
    name: *const c_char,
    dst: *mut c_void,
    cap: usize,
    out_len: *mut usize,
) -> kvr_status {
    guard(|| read_into(file, name, dst, cap, out_len, true))
}

fn read_into(
    file: *const kvr_tensor_file,
    name: *const c_char,
    dst: *mut c_void,
    cap: usize,
    out_len: *mut usize,
    direct: bool,
) -> crate::Result<()> {
    let f = kvr_tensor_file::try_ref(file)?;
    // SAFETY: NULL or a C string.
    let name = unsafe { opt_name(name) }?;
    // SAFETY: forwarded from the caller's contract for `dst`, `cap` and `out_len`.
    unsafe { copy_tensor_out(f, name, dst, cap, out_len, direct) }
}

/// Copies tensor `name` of `file` into `dst` (`cap` bytes), buffered or with O_DIRECT;
/// `*out_len` (may be NULL) gets the bytes copied, or on `TooSmall` the size needed.
///
/// # Safety
/// `dst` is NULL or writable for `cap` bytes; `out_len` is NULL or writable.
pub(super) unsafe fn copy_tensor_out(
    file: &TensorFile,
    name: Option<&str>,
    dst: *mut c_void,
    cap: usize,
    out_len: *mut usize,
    direct: bool,
) -> crate::Result<()> {
    let need = file.find(name)?.len as usize;
    if cap < need {
        // SAFETY: `out_len` is NULL or writable per the contract.
        unsafe { write_opt(out_len, need) };
        return Err(err!(
            TooSmall,
            "tensor needs {need} bytes, the buffer holds {cap}"
        ));
    }
    let n = if need == 0 {
        0
    } else {
        // SAFETY: `dst` is writable for `cap` bytes per the contract (NULL/0 rejected).
        let buf = unsafe { arg_bytes_mut(dst.cast(), cap, "dst") }?;
        if direct {
            file.read_into_direct(name, buf)?
        } else {
            file.read_into(name, buf)?
        }
    };
    // SAFETY: `out_len` is NULL or writable per the contract.
    unsafe { write_opt(out_len, n) };
    Ok(())
}

/// Copies tensor `name` into device memory `dst` (a `CUdeviceptr` of `cap` bytes on CUDA
/// device `device`) through the CUDA driver. `KVR_ERR_CUDA_UNAVAILABLE` without a CUDA
/// driver or device. `*out_len` (may be NULL) receives the bytes copied.
#[no_mangle]
pub extern "C" fn kvr_tensors_read_into_device(
    file: *const kvr_tensor_file,
    name: *const c_char,
    dst: u64,
    cap: usize,
    device: i32,
    out_len: *mut usize,
) -> kvr_status {
    guard(|| {
        let f = kvr_tensor_file::try_ref(file)?;
        // SAFETY: NULL or a C string.
        let name = unsafe { opt_name(name) }?;
        if dst == 0 {
            return Err(Error::invalid("dst is a NULL device pointer"));
        }
        // SAFETY: the caller passes a device allocation of `cap` bytes on `device`.
        let n = unsafe { f.read_into_device(name, dst, cap, device) }?;
        // SAFETY: `out_len` is NULL or writable per the contract.
        unsafe { write_opt(out_len, n) };
        Ok(())
    })
}
