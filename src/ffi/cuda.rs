//! C ABI of the CUDA probe that pinned regions and device reads depend on.

use super::status::{guard, kvr_status};

/// `KVR_OK` if a CUDA driver and device are usable, else `KVR_ERR_CUDA_UNAVAILABLE` with the
/// reason in `kvr_last_error_message()`.
#[no_mangle]
pub extern "C" fn kvr_cuda_available() -> kvr_status {
    guard(crate::cuda::available)
}
