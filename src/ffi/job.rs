//! C ABI of async batch jobs (returned by the `*_submit_*` calls of the storage tiers), and
//! the one body those submit calls share.

use std::time::Duration;

use super::handle::BoxedHandle;
use super::status::{guard, kvr_status};
use super::{check_array, write_opt, write_out};
use crate::io::Job;
use crate::{Error, Result};

/// Opaque handle of a submitted batch. Free with `kvr_job_free` (which waits for it).
pub struct kvr_job {
    _opaque: [u8; 0],
}

impl BoxedHandle for kvr_job {
    type Rust = Job;
    const ARG: &'static str = "job";
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

/// Body of every `*_submit_*` call: checks the tier handle, `out` and the array of `n` items,
/// turns item `i` into a request with `request(i, &items[i])` (which also checks it; one bad
/// item rejects the whole batch before anything is queued), queues them with `submit` and
/// hands C the job.
///
/// `items` is read one element at a time rather than as a slice because read batches are
/// also outputs: their jobs later write through pointers the requests took from `items`.
///
/// # Safety
/// `items` must be NULL or point to `n` valid items; `out` NULL or writable.
pub(crate) unsafe fn submit_batch<H: BoxedHandle, I, R>(
    tier: *const H,
    items: *const I,
    n: usize,
    out: *mut *mut kvr_job,
    mut request: impl FnMut(usize, &I) -> Result<R>,
    submit: impl FnOnce(&H::Rust, &[R]) -> Job,
) -> Result<()> {
    let tier = H::try_ref(tier)?;
    if out.is_null() {
        return Err(Error::invalid("out is NULL"));
    }
    check_array(items, n, "items", false)?;
    let requests = (0..n)
        .map(|i| {
            // SAFETY: `i < n`, and `items` points to `n` valid items (checked non-null and
            // addressable above; validity is the caller's contract).
            let item = unsafe { &*items.add(i) };
            request(i, item)
        })
        .collect::<Result<Vec<R>>>()?;
    let job = kvr_job::into_c(submit(tier, &requests));
    // SAFETY: `out` is non-null (checked above) and writable per the contract.
    unsafe { write_out(out, job, "out") }
}

/// Reports progress without blocking.
#[no_mangle]
pub extern "C" fn kvr_job_poll(job: *const kvr_job, out: *mut kvr_job_progress) -> kvr_status {
    guard(|| {
        let p = kvr_job::try_ref(job)?.poll();
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
        let j = kvr_job::try_ref(job)?;
        let t = (timeout_ms >= 0).then(|| Duration::from_millis(timeout_ms as u64));
        j.wait(t).map(|_| ())
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
        let n = kvr_job::try_ref(job)?.item(index)?;
        // SAFETY: `bytes` is NULL or writable per the contract.
        unsafe { write_opt(bytes, n) };
        Ok(())
    })
}

/// Frees a job, first waiting for any items still running (their buffers stay in use until
/// then). `kvr_job_free(NULL)` is a no-op.
#[no_mangle]
pub extern "C" fn kvr_job_free(job: *mut kvr_job) {
    kvr_job::free(job)
}
