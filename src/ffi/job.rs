//! C ABI of async batch jobs (returned by the `*_submit_*` calls of the storage tiers).

use std::time::Duration;

use super::close_handle;
use super::status::{guard, kvr_status};
use super::{arg_ref, write_out};
use crate::io::Job;

/// Opaque handle of a submitted batch. Free with `kvr_job_free` (which waits for it).
pub struct kvr_job {
    pub(crate) inner: Job,
}

/// Progress of a job.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvr_job_progress {
    /// Items submitted.
    pub total: usize,
    /// Items finished, successfully or not.
    pub done: usize,
    /// Items that failed (see `kvr_job_item_status`).
    pub failed: usize,
}

impl kvr_job {
    /// Boxes a job for C.
    pub(crate) fn into_raw(job: Job) -> *mut kvr_job {
        Box::into_raw(Box::new(kvr_job { inner: job }))
    }
}

/// Reports progress without blocking.
#[no_mangle]
pub extern "C" fn kvr_job_poll(job: *const kvr_job, out: *mut kvr_job_progress) -> kvr_status {
    guard(|| {
        // SAFETY: `job` is NULL or a live handle from a submit call.
        let j = unsafe { arg_ref(job, "job") }?;
        let p = j.inner.poll();
        let v = kvr_job_progress {
            total: p.total,
            done: p.done,
            failed: p.failed,
        };
        // SAFETY: `out` is NULL (rejected) or writable.
        unsafe { write_out(out, v, "out") }
    })
}

/// Waits until every item finished: `KVR_OK` then (check items for failures), or
/// `KVR_ERR_TIMEOUT` after `timeout_ms` (negative waits without bound).
#[no_mangle]
pub extern "C" fn kvr_job_wait(job: *const kvr_job, timeout_ms: i64) -> kvr_status {
    guard(|| {
        // SAFETY: `job` is NULL or a live handle.
        let j = unsafe { arg_ref(job, "job") }?;
        let t = (timeout_ms >= 0).then(|| Duration::from_millis(timeout_ms as u64));
        j.inner.wait(t).map(|_| ())
    })
}

/// The status of item `index`: `KVR_OK` with the bytes it moved in `*bytes` (may be NULL),
/// its error (message in `kvr_last_error_message()`), or `KVR_ERR_TIMEOUT` while it runs.
#[no_mangle]
pub extern "C" fn kvr_job_item_status(
    job: *const kvr_job,
    index: usize,
    bytes: *mut u64,
) -> kvr_status {
    guard(|| {
        // SAFETY: `job` is NULL or a live handle.
        let j = unsafe { arg_ref(job, "job") }?;
        let n = j.inner.item(index)?;
        if !bytes.is_null() {
            // SAFETY: non-null and writable per the contract.
            unsafe { bytes.write(n) };
        }
        Ok(())
    })
}

/// Frees a job, first waiting for any items still running (their buffers stay in use until
/// then). `kvr_job_free(NULL)` is a no-op.
#[no_mangle]
pub extern "C" fn kvr_job_free(job: *mut kvr_job) {
    // SAFETY: `job` is NULL or a live handle freed once (caller's contract).
    unsafe { close_handle(job) }
}
