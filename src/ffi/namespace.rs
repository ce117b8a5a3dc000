//! C ABI of namespace names (`kvr_namespace_*`).
//!
//! A config struct rather than a builder handle: a connector fills it from the engine's own
//! config in one place, there is nothing to free, and it versions like every other kvr
//! config (`struct_size` first, newer fields defaulted for older callers).

use std::ffi::c_char;

pub use super::kvr_status;
use super::status::guard;
use super::{arg_bytes, arg_bytes_mut, arg_str, read_config, write_opt, write_out};
use crate::namespace::Namespace;
use crate::{err, Error, Result};

/// What makes KV blocks compatible, and whose they are. Fill with
/// `kvr_namespace_config_default`, then set the fields; `kvr_namespace_name` turns it into
/// the canonical name (for `kvr_fs_config.namespace_name`, `kvr_disk_config.namespace_name`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_namespace_config {
    /// `sizeof(kvr_namespace_config)`; lets later versions add fields.
    pub struct_size: u32,
    /// Model id, e.g. "meta-llama/Llama-3.1-8B" (required, 1..=256 bytes).
    pub model_id: *const c_char,
    /// Model revision (commit or tag); NULL = "". At most 256 bytes.
    pub model_revision: *const c_char,
    /// KV cache dtype, e.g. "bf16"; NULL = "". At most 256 bytes.
    pub kv_dtype: *const c_char,
    /// Tokens per block. Default 0 (unknown).
    pub tokens_per_block: u32,
    /// Layers in a block. Default 0.
    pub num_layers: u32,
    /// KV heads in a block (this rank's). Default 0.
    pub num_kv_heads: u32,
    /// Head dimension. Default 0.
    pub head_dim: u32,
    /// Bytes of one block. Default 0.
    pub bytes_per_block: u64,
    /// Tensor-parallel size (>= 1). Default 1.
    pub tp_size: u32,
    /// Tensor-parallel rank (< `tp_size`). Default 0.
    pub tp_rank: u32,
    /// Pipeline-parallel rank. Default 0.
    pub pp_rank: u32,
    /// Context-parallel rank. Default 0.
    pub cp_rank: u32,
    /// Anything else that makes blocks incompatible (engine version, layout); NULL = "".
    /// At most 4096 bytes.
    pub engine_fingerprint: *const c_char,
    /// Tenant salt (any bytes; only its SHA-256 is recorded anywhere); NULL with length 0
    /// for none. At most 4096 bytes.
    pub tenant_salt: *const u8,
    /// Bytes of `tenant_salt`.
    pub tenant_salt_len: usize,
}

impl Default for kvr_namespace_config {
    fn default() -> Self {
        kvr_namespace_config {
            struct_size: std::mem::size_of::<Self>() as u32,
            model_id: std::ptr::null(),
            model_revision: std::ptr::null(),
            kv_dtype: std::ptr::null(),
            tokens_per_block: 0,
            num_layers: 0,
            num_kv_heads: 0,
            head_dim: 0,
            bytes_per_block: 0,
            tp_size: 1,
            tp_rank: 0,
            pp_rank: 0,
            cp_rank: 0,
            engine_fingerprint: std::ptr::null(),
            tenant_salt: std::ptr::null(),
            tenant_salt_len: 0,
        }
    }
}

/// Reads an optional string field: NULL is "".
///
/// # Safety
/// A non-null `p` must be a NUL-terminated string.
unsafe fn opt_str(p: *const c_char, name: &str) -> Result<String> {
    if p.is_null() {
        return Ok(String::new());
    }
    // SAFETY: forwarded contract.
    unsafe { arg_str(p, name) }.map(str::to_string)
}

/// The Rust namespace a C config describes (fields validated by `Namespace::name`).
///
/// # Safety
/// `config` must be NULL or point to `config->struct_size` readable bytes whose string
/// fields are NULL or NUL-terminated and whose salt is readable for its length.
pub(crate) unsafe fn namespace_from_c(config: *const kvr_namespace_config) -> Result<Namespace> {
    let min = std::mem::size_of::<kvr_namespace_config>();
    // SAFETY: forwarded contract (NULL and struct_size are checked).
    let c = unsafe { read_config(config, kvr_namespace_config::default(), min, "config") }?;
    if c.model_id.is_null() {
        return Err(Error::invalid("config.model_id is NULL"));
    }
    // SAFETY: the string fields are NULL or C strings (this function's contract).
    let (model_id, model_revision, kv_dtype, engine_fingerprint) = unsafe {
        (
            opt_str(c.model_id, "config.model_id")?,
            opt_str(c.model_revision, "config.model_revision")?,
            opt_str(c.kv_dtype, "config.kv_dtype")?,
            opt_str(c.engine_fingerprint, "config.engine_fingerprint")?,
        )
    };
    if c.tenant_salt_len > crate::namespace::MAX_BLOB_LEN {
        return Err(err!(
            InvalidArgument,
            "config.tenant_salt_len {} exceeds {} bytes",
            c.tenant_salt_len,
            crate::namespace::MAX_BLOB_LEN
        ));
    }
    // SAFETY: `tenant_salt` is readable for `tenant_salt_len` bytes (contract); an empty
    // salt may be NULL.
    let salt = unsafe { arg_bytes(c.tenant_salt, c.tenant_salt_len, "config.tenant_salt", true) }?;
    Ok(Namespace {
        model_id,
        model_revision,
        kv_dtype,
        tokens_per_block: c.tokens_per_block,
        num_layers: c.num_layers,
        num_kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
        bytes_per_block: c.bytes_per_block,
        tp_size: c.tp_size,
        tp_rank: c.tp_rank,
        pp_rank: c.pp_rank,
        cp_rank: c.cp_rank,
        engine_fingerprint,
        tenant_salt: salt.to_vec(),
    })
}

/// Copies `text` and a NUL into `buf` of `cap` bytes; `*needed` (may be NULL) receives the
/// size including the NUL, also when `cap` is too small (`TooSmall`, `buf` untouched).
///
/// # Safety
/// `needed` NULL or writable; a non-null `buf` writable for `cap` bytes.
pub(crate) unsafe fn copy_out_str(
    text: &str,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> Result<()> {
    let need = text.len() + 1;
    // SAFETY: `needed` is NULL or writable (contract).
    unsafe { write_opt(needed, need) };
    if cap < need {
        return Err(err!(
            TooSmall,
            "the text needs {need} bytes, the buffer has {cap}"
        ));
    }
    // SAFETY: `buf` is writable for `cap >= need` bytes (contract; NULL rejected).
    let out = unsafe { arg_bytes_mut(buf.cast(), cap, "buf") }?;
    out[..text.len()].copy_from_slice(text.as_bytes());
    out[text.len()] = 0;
    Ok(())
}

/// Fills `*config` with the defaults (strings NULL, TP size 1, numbers 0).
#[no_mangle]
pub extern "C" fn kvr_namespace_config_default(config: *mut kvr_namespace_config) -> kvr_status {
    guard(|| {
        // SAFETY: checked for NULL; the caller provides a writable config struct.
        unsafe { write_out(config, kvr_namespace_config::default(), "config") }
    })
}

/// Writes the canonical namespace name of `*config` (NUL-terminated, at most 200 bytes)
/// into `buf` of `cap` bytes: a readable prefix and a 128-bit digest of every field, the
/// same on every host; any field changed gives another name. `*needed` (may be NULL)
/// receives the size including the NUL. Errors: `KVR_ERR_INVALID_ARGUMENT` (NULL config or
/// model id, over-long fields, `tp_rank >= tp_size`), `KVR_ERR_TOO_SMALL` (only `*needed`
/// is written).
#[no_mangle]
pub extern "C" fn kvr_namespace_name(
    config: *const kvr_namespace_config,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> kvr_status {
    guard(|| {
        // SAFETY: `config` is NULL or a valid config per the contract.
        let name = unsafe { namespace_from_c(config) }?.name()?;
        // SAFETY: `buf`/`needed` per the contract.
        unsafe { copy_out_str(&name, buf, cap, needed) }
    })
}
