//! Optional CUDA support through the driver API, loaded with `dlopen` on first use (cudarc's
//! dynamic loading): kvr builds and runs on machines without CUDA and reports
//! `CudaUnavailable` there instead of failing to load.

use std::ffi::c_void;
use std::sync::OnceLock;

use cudarc::driver::sys;

use crate::{err, Result};

/// Whether a CUDA driver is loadable and reports at least one device. Cached after the first call.
pub fn available() -> Result<()> {
    static STATE: OnceLock<Result<(), String>> = OnceLock::new();
    STATE
        .get_or_init(probe)
        .clone()
        .map_err(|why| err!(CudaUnavailable, "CUDA unavailable: {why}"))
}

fn probe() -> Result<(), String> {
    // cudarc panics if libcuda cannot be loaded; ask first.
    // SAFETY: only tries to dlopen the driver library by its well-known names.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda.so) could be loaded".into());
    }
    // SAFETY: cuInit has no pointer arguments; the library is present (checked above).
    check(unsafe { sys::cuInit(0) }, "cuInit").map_err(|e| e.to_string())?;
    let mut count = 0;
    // SAFETY: `count` is a valid out-pointer.
    let rc = unsafe { sys::cuDeviceGetCount(&mut count) };
    check(rc, "cuDeviceGetCount").map_err(|e| e.to_string())?;
    if count <= 0 {
        return Err("the CUDA driver reports no devices".into());
    }
    Ok(())
}

fn check(rc: sys::CUresult, what: &str) -> Result<()> {
    if rc == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(err!(Cuda, "{what} failed: {rc:?}"))
    }
}

/// A retained primary context of one device, made current on the calling thread on demand.
struct PrimaryContext {
    device: sys::CUdevice,
    ctx: sys::CUcontext,
}

// SAFETY: a CUcontext handle may be used from any thread once made current there; we only
// pass it to cuCtxSetCurrent.
unsafe impl Send for PrimaryContext {}
// SAFETY: as above; no interior state is mutated through &self.
unsafe impl Sync for PrimaryContext {}

impl PrimaryContext {
    fn retain(ordinal: i32) -> Result<Self> {
        available()?;
        let mut device = 0;
        // SAFETY: valid out-pointer; driver initialised by `available`.
        let rc = unsafe { sys::cuDeviceGet(&mut device, ordinal) };
        check(rc, "cuDeviceGet")?;
        let mut ctx = std::ptr::null_mut();
        // SAFETY: valid out-pointer and device handle.
        let rc = unsafe { sys::cuDevicePrimaryCtxRetain(&mut ctx, device) };
        check(rc, "cuDevicePrimaryCtxRetain")?;
        Ok(PrimaryContext { device, ctx })
    }

    fn make_current(&self) -> Result<()> {
        // SAFETY: `ctx` is a retained, live primary context.
        check(unsafe { sys::cuCtxSetCurrent(self.ctx) }, "cuCtxSetCurrent")
    }
}

impl Drop for PrimaryContext {
    fn drop(&mut self) {
        // SAFETY: releases the reference taken in `retain`.
        unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.device) };
    }
}

/// Host memory registered with CUDA (page-locked for DMA) until dropped.
pub struct HostRegistration {
    ctx: PrimaryContext,
    chunks: Vec<*mut c_void>,
}

// SAFETY: the chunk pointers are only handed back to cuMemHostUnregister.
unsafe impl Send for HostRegistration {}
// SAFETY: no mutation through &self.
unsafe impl Sync for HostRegistration {}

/// Largest single registration; larger ranges are split (the driver limits one call).
pub const MAX_REGISTER_CHUNK: u64 = 64 << 30;

/// Splits `len` bytes into chunks of at most [`MAX_REGISTER_CHUNK`] that end on multiples of
/// `row_stride` (except a row larger than the limit, which is its own chunk).
pub fn register_chunks(len: u64, row_stride: u64) -> Vec<(u64, u64)> {
    let rows_per_chunk = (MAX_REGISTER_CHUNK / row_stride.max(1)).max(1);
    let chunk = rows_per_chunk * row_stride.max(1);
    let mut out = Vec::new();
    let mut off = 0;
    while off < len {
        let n = chunk.min(len - off);
        out.push((off, n));
        off += n;
    }
    out
}

impl HostRegistration {
    /// Page-locks `[ptr, ptr+len)` as portable pinned memory (visible to every context).
    ///
    /// # Safety
    /// The range must stay mapped until the returned value is dropped.
    pub unsafe fn register(ptr: *mut u8, len: u64, row_stride: u64) -> Result<Self> {
        let ctx = PrimaryContext::retain(0)?;
        ctx.make_current()?;
        let mut reg = HostRegistration {
            ctx,
            chunks: Vec::new(),
        };
        for (off, n) in register_chunks(len, row_stride) {
            // SAFETY: `off + n <= len`, inside the caller's mapped range.
            let p = unsafe { ptr.add(off as usize) }.cast::<c_void>();
            // SAFETY: the range is mapped (caller's contract); on failure `reg` unregisters
            // the chunks registered so far when dropped.
            let rc = unsafe {
                sys::cuMemHostRegister_v2(p, n as usize, sys::CU_MEMHOSTREGISTER_PORTABLE)
            };
            check(
                rc,
                &format!("cuMemHostRegister of {n} bytes at offset {off}"),
            )?;
            reg.chunks.push(p);
        }
        Ok(reg)
    }
}

impl Drop for HostRegistration {
    fn drop(&mut self) {
        if self.ctx.make_current().is_ok() {
            for &p in &self.chunks {
                // SAFETY: `p` was registered by us and the memory is still mapped.
                unsafe { sys::cuMemHostUnregister(p) };
            }
        }
    }
}

/// Copies host bytes to device memory at `dst` (a CUdeviceptr) synchronously.
///
/// # Safety
/// `dst` must be a device allocation of at least `src.len()` bytes in a context of device 0.
pub unsafe fn copy_to_device(dst: u64, src: &[u8]) -> Result<()> {
    // SAFETY: forwarded contract, device 0.
    unsafe { copy_to_device_on(0, dst, src) }
}

/// Copies host bytes to device memory at `dst` on device `ordinal` synchronously (through
/// the device's primary context). Large pageable copies are staged by the driver.
///
/// # Safety
/// `dst` must be a device allocation of at least `src.len()` bytes usable in device
/// `ordinal`'s primary context.
pub unsafe fn copy_to_device_on(ordinal: i32, dst: u64, src: &[u8]) -> Result<()> {
    if ordinal < 0 {
        return Err(crate::Error::invalid(format!(
            "CUDA device ordinal {ordinal} is negative"
        )));
    }
    let ctx = PrimaryContext::retain(ordinal)?;
    ctx.make_current()?;
    // SAFETY: caller guarantees the device range; `src` is a valid host slice.
    check(
        unsafe { sys::cuMemcpyHtoD_v2(dst, src.as_ptr().cast(), src.len()) },
        "cuMemcpyHtoD",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_end_on_row_boundaries_and_cover_everything() {
        let row = 3 << 20; // 3 MiB rows
        let len = 200u64 << 30;
        let chunks = register_chunks(len - len % row, row);
        let mut expect = 0;
        for &(off, n) in &chunks {
            assert_eq!(off, expect);
            assert!(n <= MAX_REGISTER_CHUNK);
            assert_eq!(n % row, 0);
            expect += n;
        }
        assert_eq!(expect, len - len % row);
        assert_eq!(register_chunks(10, 100), vec![(0, 10)]);
    }

    #[test]
    fn availability_is_reported_not_panicked() {
        match available() {
            Ok(()) => eprintln!("CUDA available"),
            Err(e) => {
                assert_eq!(e.kind(), crate::ErrorKind::CudaUnavailable);
                eprintln!("skipped: {e}");
            }
        }
    }
}
