//! Opaque C handles and the one place that turns their pointers into Rust values.
//!
//! Each handle type C sees (`kvr_fs`, `kvr_disk`, ...) is an empty struct that stands for a
//! boxed Rust value: [`BoxedHandle`] names that value's type, so a `*const kvr_fs` can only
//! become a `&FsStore`, never anything else, and the casts and their one safety argument live
//! here instead of beside every entry point (the idea of rustls-ffi's `Castable`).

use super::status;
use crate::{Error, Result};

/// A C handle type owning a `Box<Self::Rust>` that kvr allocated: handed to C by
/// [`into_c`](Self::into_c), borrowed by every call through [`try_ref`](Self::try_ref),
/// released once by [`free`](Self::free).
///
/// The contract C keeps (stated on every entry point in the header): a handle pointer is
/// NULL or a value kvr returned and that was not freed yet, and a handle is freed by one
/// thread while no other call uses it.
pub(crate) trait BoxedHandle: Sized {
    /// The Rust value behind the handle.
    type Rust;
    /// The argument's name in error messages ("fs is NULL").
    const ARG: &'static str;

    /// Boxes `value` and gives C its handle.
    fn into_c(value: Self::Rust) -> *mut Self {
        Box::into_raw(Box::new(value)).cast()
    }

    /// Borrows the value behind `handle`; NULL is an `InvalidArgument` error.
    fn try_ref<'a>(handle: *const Self) -> Result<&'a Self::Rust> {
        // SAFETY: by the handle contract a non-null `handle` came from `into_c`, so it points
        // to a live `Self::Rust` (the cast undoes the one in `into_c`), and nothing frees it
        // while a call borrows it; only shared borrows are ever made.
        unsafe { handle.cast::<Self::Rust>().as_ref() }
            .ok_or_else(|| Error::invalid(format!("{} is NULL", Self::ARG)))
    }

    /// Drops the value behind `handle`; NULL is a no-op. A panic in the destructor is caught
    /// (and recorded for `kvr_last_error_message`) instead of unwinding into C.
    fn free(handle: *mut Self) {
        let _ = status::guard(|| {
            if !handle.is_null() {
                // SAFETY: by the handle contract a non-null `handle` came from `into_c` (a
                // `Box<Self::Rust>` turned raw) and is freed exactly once, with no other call
                // using it.
                drop(unsafe { Box::from_raw(handle.cast::<Self::Rust>()) });
            }
            Ok(())
        });
    }
}
