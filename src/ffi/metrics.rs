//! C ABI of metrics: every open handle's counters and latencies as Prometheus text.

use std::ffi::c_char;

pub use super::kvr_status;
use super::namespace::copy_out_str;
use super::status::guard;

/// Writes the metrics of every open handle (fs stores, slot files, regions) in the
/// Prometheus text exposition format (version 0.0.4), NUL-terminated, into `buf` of `cap`
/// bytes, for the engine to serve from its `/metrics`: counters (`kvr_hits_total`,
/// `kvr_misses_total`, `kvr_corrupt_dropped_total`, `kvr_read_bytes_total`,
/// `kvr_written_bytes_total`, `kvr_stores_total`, `kvr_dedups_total`, `kvr_evictions_total`),
/// gauges (`kvr_blocks`, `kvr_held_bytes`, `kvr_direct_io`, `kvr_region_pinned`) and the
/// histogram `kvr_op_latency_seconds` (`op` = store, load, lookup), labelled by `tier`,
/// `namespace` and `path`. `*needed` (may be NULL) receives the size including the NUL;
/// `KVR_ERR_TOO_SMALL` if `cap` is smaller (call again with a bigger buffer: the text
/// changes between calls). Safe to call while other threads open and close handles.
#[no_mangle]
pub extern "C" fn kvr_metrics_text(buf: *mut c_char, cap: usize, needed: *mut usize) -> kvr_status {
    guard(|| {
        let text = crate::metrics::render();
        // SAFETY: `buf`/`needed` per the contract.
        unsafe { copy_out_str(&text, buf, cap, needed) }
    })
}
