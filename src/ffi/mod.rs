//! The C ABI: thin wrappers over the safe Rust API, one file per handle type.
//!
//! Conventions (see README "C API"): every fallible call returns `kvr_status`; outputs are
//! written only on success; pointers and sizes are checked before any work; every body runs
//! inside `status::guard`, so a panic becomes `KVR_ERR_INTERNAL` instead of unwinding into C.

#![allow(non_camel_case_types)]
// C names: kvr_ prefix, snake_case, as the header shows them
// Entry points are called from C, where `unsafe` means nothing; each checks its pointers and
// documents its contract in the header, as rustls-ffi does.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod cuda;
pub mod disk;
pub mod export;
pub mod fs;
mod handle;
pub mod items;
pub mod job;
pub mod log;
pub mod metrics;
pub mod namespace;
pub mod obj;
pub mod region;
pub mod status;
pub mod tensor_dir;
pub mod tensors;
mod tier;

use std::ffi::{c_char, CStr};
use std::path::PathBuf;

use crate::io::DirectIo;
use crate::{Error, Result};
use handle::BoxedHandle;
pub use status::kvr_status;

/// A 16-byte block key chosen by the engine (usually its block hash); the fs store and the
/// disk slot file take the same keys, so one hash addresses a block in every tier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct kvr_block_key {
    /// The key bytes.
    pub bytes: [u8; 16],
}

/// A whole engine key: `len` (1..=`KVR_MAX_KEY_LEN`) bytes at `bytes`, stored in full in the
/// block and compared on every load. A 16-byte key is the same block as the
/// `kvr_block_key` of those bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_key {
    /// The key's bytes.
    pub bytes: *const u8,
    /// Its length in bytes.
    pub len: usize,
}

/// Longest `kvr_key`, in bytes.
pub const KVR_MAX_KEY_LEN: u32 = 256;
const _: () = assert!(KVR_MAX_KEY_LEN as usize == crate::key::MAX_KEY_LEN);

/// One buffer of a block: `len` bytes at `ptr`. A block is an ordered list of segments,
/// gathered on store and scattered on load (zero-copy with O_DIRECT when every segment is
/// 4096-aligned in address and length).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_segment {
    /// Start of the buffer.
    pub ptr: *mut std::ffi::c_void,
    /// Its bytes (non-zero).
    pub len: usize,
}

/// Borrows a `kvr_key` argument: NULL bytes, a zero or over-long length are
/// `InvalidArgument`.
///
/// # Safety
/// Non-null `key.bytes` must be valid for reads of `key.len` bytes for `'a`.
pub(crate) unsafe fn arg_whole_key<'a>(key: &kvr_key, name: &str) -> Result<&'a [u8]> {
    if key.len == 0 || key.len > crate::key::MAX_KEY_LEN {
        return Err(Error::invalid(format!(
            "{name} must be 1..={} bytes, got {}",
            crate::key::MAX_KEY_LEN,
            key.len
        )));
    }
    // SAFETY: the caller's contract; NULL and the length are checked by `arg_bytes`.
    unsafe { arg_bytes(key.bytes, key.len, name, false) }
}

/// Reads a segment list argument: `n` (>= 1) segments, none NULL or empty, whose lengths sum
/// without overflow.
///
/// # Safety
/// A non-null `segments` must point to `n` valid segments.
pub(crate) unsafe fn arg_segments(
    segments: *const kvr_segment,
    n: usize,
    name: &str,
) -> Result<Vec<crate::io::vectored::RawSegment>> {
    // SAFETY: the caller's contract.
    let list = unsafe { arg_slice(segments, n, name, false) }?;
    let mut total: usize = 0;
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            if s.ptr.is_null() || s.len == 0 {
                return Err(Error::invalid(format!(
                    "{name}[{i}] is NULL or empty (length {})",
                    s.len
                )));
            }
            total = total
                .checked_add(s.len)
                .filter(|&t| t <= isize::MAX as usize)
                .ok_or_else(|| Error::invalid(format!("{name}: the lengths overflow")))?;
            Ok(crate::io::vectored::RawSegment {
                ptr: s.ptr.cast(),
                len: s.len,
            })
        })
        .collect()
}

/// Reads the `n` keys of a lookup (each checked as `arg_whole_key` would, but a bad key is
/// reported absent rather than failing the batch: an empty slice stands for it).
///
/// # Safety
/// A non-null `keys` must point to `n` valid keys whose bytes live for `'a`.
pub(crate) unsafe fn arg_lookup_keys<'a>(keys: *const kvr_key, n: usize) -> Result<Vec<&'a [u8]>> {
    // SAFETY: the caller's contract.
    let ks = unsafe { arg_slice(keys, n, "keys", true) }?;
    Ok(ks
        .iter()
        // SAFETY: as above.
        .map(|k| unsafe { arg_whole_key(k, "key") }.unwrap_or(&[]))
        .collect())
}

// The one conversion of a C key into the crate's key.
impl From<kvr_block_key> for crate::Key {
    fn from(key: kvr_block_key) -> Self {
        crate::Key(key.bytes)
    }
}

/// Version of the C ABI in this header; bumped on any incompatible change.
pub const KVR_ABI_VERSION: u32 = 1;

/// The library version as a static NUL-terminated string (the `kvr` CMake package's version).
#[no_mangle]
pub extern "C" fn kvr_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The C ABI version the library was built with; compare with `KVR_ABI_VERSION`.
#[no_mangle]
pub extern "C" fn kvr_abi_version() -> u32 {
    KVR_ABI_VERSION
}

/// `direct_io` of the fs store and slot file configs: use O_DIRECT if the file system
/// accepts it, else buffered I/O (one log line).
pub const KVR_DIRECT_IO_AUTO: u32 = 0;
/// `direct_io`: require O_DIRECT; opening fails with `KVR_ERR_UNSUPPORTED` without it.
pub const KVR_DIRECT_IO_ON: u32 = 1;
/// `direct_io`: always buffered I/O.
pub const KVR_DIRECT_IO_OFF: u32 = 2;

/// A config's `direct_io` value (shared by the fs store and the slot file).
pub(crate) fn direct_io_from_c(v: u32) -> Result<DirectIo> {
    match v {
        KVR_DIRECT_IO_AUTO => Ok(DirectIo::Auto),
        KVR_DIRECT_IO_ON => Ok(DirectIo::On),
        KVR_DIRECT_IO_OFF => Ok(DirectIo::Off),
        v => Err(Error::invalid(format!(
            "config.direct_io {v} is not a KVR_DIRECT_IO_* value"
        ))),
    }
}

/// Reads a `const kvr_block_key *key` argument; NULL is an `InvalidArgument` error.
pub(crate) fn arg_key(key: *const kvr_block_key) -> Result<crate::Key> {
    // SAFETY: every entry point taking a key documents that a non-null `key` points to a
    // readable `kvr_block_key` (plain bytes, any value valid, copied out at once).
    unsafe { key.as_ref() }
        .map(|&k| crate::Key::from(k))
        .ok_or_else(|| Error::invalid("key is NULL"))
}

/// Borrows `len` bytes at `ptr`; rejects NULL and zero lengths unless `allow_empty`.
///
/// # Safety
/// A non-null `ptr` must be valid for reads of `len` bytes for `'a`.
pub(crate) unsafe fn arg_bytes<'a>(
    ptr: *const u8,
    len: usize,
    name: &str,
    allow_empty: bool,
) -> Result<&'a [u8]> {
    if len == 0 {
        return if allow_empty {
            Ok(&[])
        } else {
            Err(Error::invalid(format!("{name} length is 0")))
        };
    }
    if ptr.is_null() {
        return Err(Error::invalid(format!("{name} is NULL (length {len})")));
    }
    if len > isize::MAX as usize {
        return Err(Error::invalid(format!("{name} length {len} overflows")));
    }
    // SAFETY: non-null, length checked against isize::MAX; validity is the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Borrows `len` writable bytes at `ptr`; rejects NULL and zero lengths.
///
/// # Safety
/// A non-null `ptr` must be valid for writes of `len` bytes for `'a` and not aliased.
pub(crate) unsafe fn arg_bytes_mut<'a>(
    ptr: *mut u8,
    len: usize,
    name: &str,
) -> Result<&'a mut [u8]> {
    if len == 0 {
        return Err(Error::invalid(format!("{name} length is 0")));
    }
    if ptr.is_null() {
        return Err(Error::invalid(format!("{name} is NULL (length {len})")));
    }
    if len > isize::MAX as usize {
        return Err(Error::invalid(format!("{name} length {len} overflows")));
    }
    // SAFETY: non-null, length checked against isize::MAX; validity is the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// Checks a C array argument of `n` elements: non-NULL (unless empty and allowed), non-zero
/// unless `allow_empty`, and `n * sizeof(T)` addressable.
pub(crate) fn check_array<T>(ptr: *const T, n: usize, name: &str, allow_empty: bool) -> Result<()> {
    if n == 0 {
        return if allow_empty {
            Ok(())
        } else {
            Err(Error::invalid(format!("{name} is empty (n = 0)")))
        };
    }
    if ptr.is_null() {
        return Err(Error::invalid(format!("{name} is NULL (n = {n})")));
    }
    if n.checked_mul(std::mem::size_of::<T>())
        .map_or(true, |b| b > isize::MAX as usize)
    {
        return Err(Error::invalid(format!("{name}: n = {n} overflows")));
    }
    Ok(())
}

/// Borrows a C array of `n` elements after [`check_array`].
///
/// # Safety
/// A non-null `ptr` must point to `n` valid elements that live for `'a`.
pub(crate) unsafe fn arg_slice<'a, T>(
    ptr: *const T,
    n: usize,
    name: &str,
    allow_empty: bool,
) -> Result<&'a [T]> {
    check_array(ptr, n, name, allow_empty)?;
    if n == 0 {
        return Ok(&[]);
    }
    // SAFETY: non-null and size checked above; element validity is the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
}

/// Reads a NUL-terminated UTF-8 string argument.
///
/// # Safety
/// A non-null `ptr` must point to a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn arg_str<'a>(ptr: *const c_char, name: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::invalid(format!("{name} is NULL")));
    }
    // SAFETY: non-null and NUL-terminated per the caller's contract.
    let cstr = unsafe { CStr::from_ptr(ptr) };
    cstr.to_str()
        .map_err(|_| Error::invalid(format!("{name} is not valid UTF-8")))
}

/// Reads an optional path argument: NULL or "" means "use the default".
///
/// # Safety
/// As [`arg_str`].
pub(crate) unsafe fn arg_opt_path(ptr: *const c_char, name: &str) -> Result<Option<PathBuf>> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded contract.
    let s = unsafe { arg_str(ptr, name) }?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

/// Config structs begin with `uint32_t struct_size`. Reads one written by a caller compiled
/// against this or another header version: fields the caller's struct has are taken from it,
/// newer fields keep `defaults`. A size smaller than the first version's struct is rejected.
///
/// # Safety
/// A non-null `ptr` must point to at least `struct_size` readable bytes, where `struct_size`
/// is the first field; `T` must be a `repr(C)` plain-data struct beginning with a `u32`.
pub(crate) unsafe fn read_config<T: Copy>(
    ptr: *const T,
    defaults: T,
    min_size: usize,
    name: &str,
) -> Result<T> {
    if ptr.is_null() {
        return Err(Error::invalid(format!("{name} is NULL")));
    }
    // SAFETY: every config struct begins with a u32 `struct_size`.
    let declared = unsafe { ptr.cast::<u32>().read_unaligned() } as usize;
    if declared < min_size {
        return Err(Error::invalid(format!(
            "{name}.struct_size is {declared}, expected at least {min_size} (set it to sizeof(the struct))"
        )));
    }
    let mut out = defaults;
    let n = declared.min(std::mem::size_of::<T>());
    // SAFETY: the caller's struct has at least `declared` readable bytes and `out` has
    // size_of::<T>() writable bytes; we copy the smaller. T is plain data (Copy, repr(C)).
    unsafe {
        std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), (&mut out as *mut T).cast::<u8>(), n)
    };
    // Record our own size so the struct is self-consistent if handed back.
    // SAFETY: T begins with a u32 (see above).
    unsafe {
        (&mut out as *mut T)
            .cast::<u32>()
            .write(std::mem::size_of::<T>() as u32)
    };
    Ok(out)
}

/// Writes an output struct that begins with `uint32_t struct_size`, which the caller sets to
/// the size it was compiled with: copies the first `min(struct_size, sizeof(T))` bytes of
/// `value`, so an older caller's smaller struct is never overrun and a newer caller's extra
/// fields are left alone. Rejects NULL and an unset (< 4) `struct_size`.
///
/// # Safety
/// A non-null `out` must point to at least `out->struct_size` writable bytes.
pub(crate) unsafe fn write_sized_out<T: Copy>(out: *mut T, value: T, name: &str) -> Result<()> {
    if out.is_null() {
        return Err(Error::invalid(format!("{name} is NULL")));
    }
    // SAFETY: every sized output struct begins with a u32 the caller has set.
    let declared = unsafe { out.cast::<u32>().read_unaligned() } as usize;
    if declared < std::mem::size_of::<u32>() {
        return Err(Error::invalid(format!(
            "{name}->struct_size is {declared}: set it to sizeof the struct before the call"
        )));
    }
    let n = declared.min(std::mem::size_of::<T>());
    // SAFETY: `out` has `declared >= n` writable bytes (caller's contract); `value` has
    // size_of::<T>() >= n readable bytes; they cannot overlap (`value` is a local).
    unsafe {
        std::ptr::copy_nonoverlapping((&value as *const T).cast::<u8>(), out.cast::<u8>(), n)
    };
    Ok(())
}

/// Body of every `*_open` that takes a versioned config: checks `out`, reads the config
/// (`struct_size` first, newer fields defaulted), builds the Rust object with `open` and hands
/// C its handle. Nothing is allocated on failure.
///
/// # Safety
/// `config` must be NULL or point to `config->struct_size` readable bytes; `out` NULL or
/// writable.
pub(crate) unsafe fn open_handle<C: Copy + Default, H: BoxedHandle>(
    config: *const C,
    out: *mut *mut H,
    open: impl FnOnce(&C) -> Result<H::Rust>,
) -> Result<()> {
    if out.is_null() {
        return Err(Error::invalid("out is NULL"));
    }
    let min = std::mem::size_of::<C>();
    // SAFETY: forwarded contract (read_config checks NULL and struct_size).
    let c = unsafe { read_config(config, C::default(), min, "config") }?;
    // SAFETY: forwarded contract for `out`.
    unsafe { hand_out(out, || open(&c)) }
}

/// Body of every call that creates a handle: checks `out` before any work, builds the Rust
/// object with `make` and writes its new handle to `*out`. Nothing is allocated on failure.
///
/// # Safety
/// `out` must be NULL (rejected) or writable.
pub(crate) unsafe fn hand_out<H: BoxedHandle>(
    out: *mut *mut H,
    make: impl FnOnce() -> Result<H::Rust>,
) -> Result<()> {
    if out.is_null() {
        return Err(Error::invalid("out is NULL"));
    }
    let handle = H::into_c(make()?);
    // SAFETY: `out` is non-null (checked above) and writable per the contract.
    unsafe { write_out(out, handle, "out") }
}

/// Writes an optional output: a NULL `ptr` means the caller did not ask for it.
///
/// # Safety
/// `ptr` must be NULL or valid for a write of `T`.
pub(crate) unsafe fn write_opt<T>(ptr: *mut T, value: T) {
    if !ptr.is_null() {
        // SAFETY: non-null and valid for writes per the caller's contract.
        unsafe { ptr.write(value) };
    }
}

/// Writes an output value; outputs are only written on success.
///
/// # Safety
/// `ptr` must be NULL (rejected) or valid for a write of `T`.
pub(crate) unsafe fn write_out<T>(ptr: *mut T, value: T, name: &str) -> Result<()> {
    if ptr.is_null() {
        return Err(Error::invalid(format!("{name} is NULL")));
    }
    // SAFETY: non-null and valid for writes per the caller's contract.
    unsafe { ptr.write(value) };
    Ok(())
}
