//! `kvr_status`, the thread-local error message and the panic boundary every entry point uses.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::{ErrorKind, Result};

/// Result of every fallible kvr call. `KVR_OK` is 0; error codes are grouped by area
/// (1xx arguments, 2xx storage, 3xx concurrency and lifecycle, 4xx layout and sizes,
/// 5xx CUDA, 9xx internal) and never reused.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum kvr_status {
    /// Success.
    KVR_OK = 0,
    /// A null pointer, zero or overflowing size, bad name, or bad flags.
    KVR_ERR_INVALID_ARGUMENT = 100,
    /// The request is valid but not supported on this system or build.
    KVR_ERR_UNSUPPORTED = 101,
    /// An I/O error (see the message for the path and the OS error).
    KVR_ERR_IO = 200,
    /// No space left in the file system or memory that backs the tier.
    KVR_ERR_NO_SPACE = 201,
    /// The key, tensor, region or file does not exist.
    KVR_ERR_NOT_FOUND = 202,
    /// Stored bytes failed validation; the bad copy was dropped and counted.
    KVR_ERR_CORRUPT = 203,
    /// Permission denied, or a symlink where none is allowed.
    KVR_ERR_PERMISSION = 204,
    /// A storage server (the object tier's S3 endpoint) is down, too slow or refusing: the
    /// message names the endpoint and the HTTP or OS error. The handle stays usable; retry.
    KVR_ERR_UNAVAILABLE = 205,
    /// A bounded wait ran out.
    KVR_ERR_TIMEOUT = 300,
    /// The resource is owned by another live process.
    KVR_ERR_BUSY = 301,
    /// The object was closed or cleaned up and can no longer be used.
    KVR_ERR_CLOSED = 302,
    /// An existing object's layout or geometry differs from the requested one.
    KVR_ERR_LAYOUT_MISMATCH = 400,
    /// The payload is larger than its container can hold.
    KVR_ERR_TOO_LARGE = 401,
    /// The caller's buffer is too small; the needed size was written out.
    KVR_ERR_TOO_SMALL = 402,
    /// No CUDA driver or device is available.
    KVR_ERR_CUDA_UNAVAILABLE = 500,
    /// The CUDA driver returned an error.
    KVR_ERR_CUDA = 501,
    /// A bug in kvr (including a caught panic); please report it with the message.
    KVR_ERR_INTERNAL = 900,
}

/// The one table of status codes beside the enum above (which stays hand-written so that
/// cbindgen, which does not expand macros, puts it and its docs into the header). Each code
/// is listed once, with the `ErrorKind` it reports; the generated matches are exhaustive, so
/// a code missing here or an `ErrorKind` without a code does not compile.
macro_rules! status_table {
    ($($status:ident $(<= $kind:ident)?,)*) => {
        impl From<ErrorKind> for kvr_status {
            fn from(kind: ErrorKind) -> Self {
                match kind {
                    $($(ErrorKind::$kind => kvr_status::$status,)?)*
                }
            }
        }

        impl kvr_status {
            /// Every status code, in the enum's order.
            const ALL: &'static [kvr_status] = &[$(kvr_status::$status),*];

            /// The code's name, NUL-terminated for C.
            fn name(self) -> &'static str {
                match self {
                    $(kvr_status::$status => concat!(stringify!($status), "\0"),)*
                }
            }
        }
    };
}

status_table! {
    KVR_OK,
    KVR_ERR_INVALID_ARGUMENT <= InvalidArgument,
    KVR_ERR_UNSUPPORTED <= Unsupported,
    KVR_ERR_IO <= Io,
    KVR_ERR_NO_SPACE <= NoSpace,
    KVR_ERR_NOT_FOUND <= NotFound,
    KVR_ERR_CORRUPT <= Corrupt,
    KVR_ERR_PERMISSION <= Permission,
    KVR_ERR_UNAVAILABLE <= Unavailable,
    KVR_ERR_TIMEOUT <= Timeout,
    KVR_ERR_BUSY <= Busy,
    KVR_ERR_CLOSED <= Closed,
    KVR_ERR_LAYOUT_MISMATCH <= LayoutMismatch,
    KVR_ERR_TOO_LARGE <= TooLarge,
    KVR_ERR_TOO_SMALL <= TooSmall,
    KVR_ERR_CUDA_UNAVAILABLE <= CudaUnavailable,
    KVR_ERR_CUDA <= Cuda,
    KVR_ERR_INTERNAL <= Internal,
}

impl kvr_status {
    /// The status with this numeric value, if it is one.
    pub fn from_raw(raw: i32) -> Option<kvr_status> {
        Self::ALL.iter().copied().find(|s| *s as i32 == raw)
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // Interior NULs cannot appear in a C string; replace rather than lose the message.
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = text);
}

/// Runs an entry point's body: converts `Err` and panics into a status code and records the
/// message for `kvr_last_error_message`. No panic ever unwinds into C.
pub(crate) fn guard(body: impl FnOnce() -> Result<()>) -> kvr_status {
    // A C caller gets kvr's logger (stderr or its callback); one atomic load after the first.
    crate::logging::install();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => kvr_status::KVR_OK,
        Ok(Err(err)) => {
            set_last_error(&err.to_string());
            err.kind().into()
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!(
                "internal error (panic caught at the C boundary): {what}"
            ));
            kvr_status::KVR_ERR_INTERNAL
        }
    }
}

/// Like [`guard`] for functions that return no status: a panic yields `fallback`.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// The name of a status code as a static NUL-terminated string ("KVR_ERR_NOT_FOUND").
/// Takes an `int` so that any value a C caller holds is safe to pass (a `kvr_status`
/// converts implicitly); unknown values give "KVR_ERR_UNKNOWN". Never returns NULL.
#[no_mangle]
pub extern "C" fn kvr_status_str(status: i32) -> *const c_char {
    guard_value(c"KVR_ERR_UNKNOWN".as_ptr(), || {
        kvr_status::from_raw(status)
            .map_or("KVR_ERR_UNKNOWN\0", kvr_status::name)
            .as_ptr()
            .cast()
    })
}

/// The message of the last failed kvr call on this thread: what failed and why (paths, OS
/// error text, expected vs actual sizes). Empty string if nothing failed yet. The pointer is
/// valid until the next kvr call on this thread. Never returns NULL.
#[no_mangle]
pub extern "C" fn kvr_last_error_message() -> *const c_char {
    guard_value(c"".as_ptr(), || {
        // The CString lives in thread-local storage until the next failure replaces it.
        LAST_ERROR.with(|slot| slot.borrow().as_ptr())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn text(p: *const c_char) -> String {
        // SAFETY: kvr returns static or thread-local NUL-terminated strings.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_becomes_internal_with_its_message() {
        let s = guard(|| panic!("boom {}", 42));
        assert_eq!(s, kvr_status::KVR_ERR_INTERNAL);
        assert!(text(kvr_last_error_message()).contains("boom 42"));
    }

    #[test]
    fn errors_set_the_message_and_codes_round_trip() {
        let s = guard(|| Err(crate::err!(NotFound, "no block 00ff")));
        assert_eq!(s, kvr_status::KVR_ERR_NOT_FOUND);
        assert_eq!(text(kvr_last_error_message()), "no block 00ff");
        for &st in kvr_status::ALL {
            assert_eq!(kvr_status::from_raw(st as i32), Some(st));
            assert_eq!(text(kvr_status_str(st as i32)), format!("{st:?}"));
        }
        assert_eq!(text(kvr_status_str(12345)), "KVR_ERR_UNKNOWN");
        assert_eq!(text(kvr_status_str(-1)), "KVR_ERR_UNKNOWN");
    }
}
