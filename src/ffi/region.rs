//! C ABI of the shared host region.

use std::ffi::c_char;
use std::time::Duration;

use super::handle::BoxedHandle;
use super::status::{guard, kvr_status};
use super::{arg_opt_path, arg_str, open_handle, write_out, write_sized_out};
use crate::region::{Layout, Pinning, Region, RegionConfig, Role};
use crate::Error;

/// Opaque handle to an open shared region (`kvr_region_open` / `kvr_region_close`).
pub struct kvr_region {
    _opaque: [u8; 0],
}

impl BoxedHandle for kvr_region {
    type Rust = Region;
    const ARG: &'static str = "region";
}

/// `rank` value of a scheduler-side handle: no rank, whole-row access, populates nothing.
pub const KVR_RANK_SCHEDULER: i32 = -1;

/// Flag: this process may create the region, or replace one left by dead processes.
/// Without it the open only attaches, waiting up to `attach_timeout_ms` for a creator.
pub const KVR_REGION_CREATE: u32 = 1 << 0;
/// Flag: register the mapping with CUDA (page-locked, portable); fails with
/// `KVR_ERR_CUDA_UNAVAILABLE` when there is no CUDA driver or device.
pub const KVR_REGION_PIN: u32 = 1 << 1;
/// Flag: pin if CUDA is available, otherwise continue unpinned (see `kvr_region_info.pinned`).
pub const KVR_REGION_PIN_IF_AVAILABLE: u32 = 1 << 2;
/// Flag: do not pre-fault this rank's slices at open.
pub const KVR_REGION_NO_POPULATE: u32 = 1 << 3;

const KNOWN_REGION_FLAGS: u32 =
    KVR_REGION_CREATE | KVR_REGION_PIN | KVR_REGION_PIN_IF_AVAILABLE | KVR_REGION_NO_POPULATE;

/// How to open a region. Fill with `kvr_region_config_default`, then set the fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_region_config {
    /// `sizeof(kvr_region_config)`; lets later versions add fields.
    pub struct_size: u32,
    /// Region name (required): the file is `<dir>/kvr_<name>.mmap`. No `/`, `..`.
    pub name: *const c_char,
    /// Directory of the file; NULL or "" means `/dev/shm`.
    pub dir: *const c_char,
    /// Number of rows (KV blocks). Required, non-zero.
    pub num_blocks: u64,
    /// Bytes of one worker's slice of one block. Required, non-zero.
    pub cpu_page_size: u64,
    /// Number of TP workers sharing the region. Default 1.
    pub num_workers: u32,
    /// This process's rank in `[0, num_workers)`, or `KVR_RANK_SCHEDULER`. Default 0.
    pub rank: i32,
    /// `KVR_REGION_*` flags. Default `KVR_REGION_CREATE`.
    pub flags: u32,
    /// Upper bound on waiting for a creator or a concurrent replacement. Default 10000.
    pub attach_timeout_ms: u32,
}

impl Default for kvr_region_config {
    fn default() -> Self {
        kvr_region_config {
            struct_size: std::mem::size_of::<Self>() as u32,
            name: std::ptr::null(),
            dir: std::ptr::null(),
            num_blocks: 0,
            cpu_page_size: 0,
            num_workers: 1,
            rank: 0,
            flags: KVR_REGION_CREATE,
            attach_timeout_ms: 10_000,
        }
    }
}

/// What an open region is (filled by `kvr_region_info`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_region_info {
    /// Set to `sizeof(kvr_region_info)` before the call.
    pub struct_size: u32,
    /// Rows (KV blocks).
    pub num_blocks: u64,
    /// Bytes of one worker's slice of one block.
    pub cpu_page_size: u64,
    /// TP workers.
    pub num_workers: u32,
    /// This handle's rank, or `KVR_RANK_SCHEDULER`.
    pub rank: i32,
    /// Bytes between rows: `cpu_page_size * num_workers`.
    pub row_stride: u64,
    /// Bytes of data (all rows).
    pub data_bytes: u64,
    /// Start of row 0 in this process's mapping.
    pub data: *mut u8,
    /// True if this handle created the file, false if it attached.
    pub created: bool,
    /// True if the mapping is registered with CUDA.
    pub pinned: bool,
    /// Nanoseconds spent creating/attaching and mapping.
    pub attach_ns: u64,
    /// Nanoseconds spent pre-faulting this rank's slices.
    pub populate_ns: u64,
    /// Nanoseconds spent registering with CUDA.
    pub pin_ns: u64,
}

/// One tensor's strided view: block `b` is at `base + b*row_stride`, `bytes_per_block` long.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvr_view {
    /// Address of block 0 of this tensor in this process.
    pub base: *mut u8,
    /// Number of blocks.
    pub num_blocks: u64,
    /// Bytes of this tensor in one block.
    pub bytes_per_block: u64,
    /// Bytes from one block to the next.
    pub row_stride: u64,
}

impl From<crate::View<'_>> for kvr_view {
    fn from(v: crate::View<'_>) -> Self {
        kvr_view {
            base: v.as_ptr(),
            num_blocks: v.num_blocks(),
            bytes_per_block: v.bytes_per_block(),
            row_stride: v.row_stride(),
        }
    }
}

/// Fills `*config` with the documented defaults (fields required by `kvr_region_open` are
/// left zero/NULL).
#[no_mangle]
pub extern "C" fn kvr_region_config_default(config: *mut kvr_region_config) -> kvr_status {
    guard(|| {
        // SAFETY: checked for NULL; the caller provides a writable config struct.
        unsafe { write_out(config, kvr_region_config::default(), "config") }
    })
}

fn to_rust_config(c: &kvr_region_config) -> crate::Result<RegionConfig> {
    // SAFETY: `name` is a C string per the config contract (checked for NULL).
    let name = unsafe { arg_str(c.name, "config.name") }?;
    // SAFETY: `dir` is NULL or a C string per the config contract.
    let dir = unsafe { arg_opt_path(c.dir, "config.dir") }?;
    if c.flags & !KNOWN_REGION_FLAGS != 0 {
        return Err(Error::invalid(format!(
            "unknown region flags {:#x}",
            c.flags & !KNOWN_REGION_FLAGS
        )));
    }
    if c.flags & KVR_REGION_PIN != 0 && c.flags & KVR_REGION_PIN_IF_AVAILABLE != 0 {
        return Err(Error::invalid(
            "KVR_REGION_PIN and KVR_REGION_PIN_IF_AVAILABLE are exclusive",
        ));
    }
    let role = match c.rank {
        KVR_RANK_SCHEDULER => Role::Scheduler,
        r if r >= 0 => Role::Rank(r as u32),
        r => {
            return Err(Error::invalid(format!(
                "rank {r} is negative and not KVR_RANK_SCHEDULER"
            )))
        }
    };
    let layout = Layout::new(c.num_blocks, c.cpu_page_size, c.num_workers)?;
    let mut cfg = RegionConfig::new(name, layout, role);
    if let Some(dir) = dir {
        cfg.dir = dir;
    }
    cfg.create = c.flags & KVR_REGION_CREATE != 0;
    cfg.populate = c.flags & KVR_REGION_NO_POPULATE == 0;
    cfg.pinning = if c.flags & KVR_REGION_PIN != 0 {
        Pinning::Required
    } else if c.flags & KVR_REGION_PIN_IF_AVAILABLE != 0 {
        Pinning::IfAvailable
    } else {
        Pinning::Off
    };
    cfg.attach_timeout = Duration::from_millis(c.attach_timeout_ms as u64);
    Ok(cfg)
}

/// Opens (creating, attaching to, or replacing a stale) shared region.
/// On success `*out` owns the handle; close it with `kvr_region_close`.
/// Errors: `KVR_ERR_INVALID_ARGUMENT`, `KVR_ERR_NO_SPACE` (with the numbers),
/// `KVR_ERR_LAYOUT_MISMATCH` (naming both layouts), `KVR_ERR_TIMEOUT`,
/// `KVR_ERR_CUDA_UNAVAILABLE`, `KVR_ERR_PERMISSION` (symlink), `KVR_ERR_IO`.
#[no_mangle]
pub extern "C" fn kvr_region_open(
    config: *const kvr_region_config,
    out: *mut *mut kvr_region,
) -> kvr_status {
    guard(|| {
        // SAFETY: `config` is NULL or a config of `struct_size` bytes; `out` NULL or writable.
        unsafe { open_handle(config, out, |c| Region::open(&to_rust_config(c)?)) }
    })
}

/// Closes a region: views become invalid; the last process to close removes the file.
/// `kvr_region_close(NULL)` is a no-op.
#[no_mangle]
pub extern "C" fn kvr_region_close(region: *mut kvr_region) {
    kvr_region::free(region)
}

/// Hands out the next tensor's view for this rank: successive calls pack tensors of
/// `tensor_page_size` bytes per block inside the rank's slice. Fails with
/// `KVR_ERR_TOO_LARGE` when the slice would overflow and `KVR_ERR_INVALID_ARGUMENT` on a
/// scheduler handle.
#[no_mangle]
pub extern "C" fn kvr_create_view(
    region: *mut kvr_region,
    tensor_page_size: u64,
    out: *mut kvr_view,
) -> kvr_status {
    guard(|| {
        let r = kvr_region::try_ref(region)?;
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        let view = r.create_view(tensor_page_size)?;
        // SAFETY: checked non-null above.
        unsafe { write_out(out, view.into(), "out") }
    })
}

/// The whole-row view (`num_blocks` rows of `row_stride` bytes) a scheduler-side tier
/// stores from and loads into.
#[no_mangle]
pub extern "C" fn kvr_region_row_view(region: *const kvr_region, out: *mut kvr_view) -> kvr_status {
    guard(|| {
        let r = kvr_region::try_ref(region)?;
        // SAFETY: `out` is NULL (rejected) or writable.
        unsafe { write_out(out, r.row_view().into(), "out") }
    })
}

/// Describes an open region. Set `out->struct_size = sizeof(kvr_region_info)` first.
#[no_mangle]
pub extern "C" fn kvr_region_get_info(
    region: *const kvr_region,
    out: *mut kvr_region_info,
) -> kvr_status {
    guard(|| {
        let r = kvr_region::try_ref(region)?;
        let i = r.info();
        let full = kvr_region_info {
            struct_size: std::mem::size_of::<kvr_region_info>() as u32,
            num_blocks: i.layout.num_blocks,
            cpu_page_size: i.layout.cpu_page_size,
            num_workers: i.layout.num_workers,
            rank: match i.role {
                Role::Rank(r) => r as i32,
                Role::Scheduler => KVR_RANK_SCHEDULER,
            },
            row_stride: i.layout.row_stride(),
            data_bytes: i.layout.data_len(),
            data: r.data_ptr(),
            created: i.created,
            pinned: i.pinned,
            attach_ns: i.attach_time.as_nanos() as u64,
            populate_ns: i.populate_time.as_nanos() as u64,
            pin_ns: i.pin_time.as_nanos() as u64,
        };
        // SAFETY: `out` is NULL or points to at least `out->struct_size` writable bytes.
        unsafe { write_sized_out(out, full, "out") }
    })
}
