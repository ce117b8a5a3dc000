//! C ABI of logging: the engine's callback receives kvr's log records.

use std::ffi::{c_char, c_void, CString};
use std::sync::Arc;

use log::{Level, LevelFilter};

pub use super::kvr_status;
use super::status::guard;
use crate::{err, logging};

/// Log level: no records.
pub const KVR_LOG_OFF: u32 = 0;
/// Log level: errors.
pub const KVR_LOG_ERROR: u32 = 1;
/// Log level: warnings (and errors).
pub const KVR_LOG_WARN: u32 = 2;
/// Log level: what an operator wants to know (I/O mode chosen at open, stale files removed).
pub const KVR_LOG_INFO: u32 = 3;
/// Log level: details.
pub const KVR_LOG_DEBUG: u32 = 4;
/// Log level: everything.
pub const KVR_LOG_TRACE: u32 = 5;

/// A log callback: `level` is a `KVR_LOG_*` value, `target` the kvr module ("kvr::fs"),
/// `message` the text; both strings are NUL-terminated and valid only during the call.
/// Called from any kvr thread, possibly concurrently; never with a kvr lock held, so it
/// may call kvr functions. It must not throw (a C++ callback should be `noexcept`).
pub type kvr_log_fn = Option<
    unsafe extern "C" fn(
        level: u32,
        target: *const c_char,
        message: *const c_char,
        user_data: *mut c_void,
    ),
>;

/// The callback and its user data, callable from any thread.
struct CCallback {
    f: unsafe extern "C" fn(u32, *const c_char, *const c_char, *mut c_void),
    user_data: *mut c_void,
}

// SAFETY: the caller of `kvr_set_log_callback` promises that the callback may be called with
// `user_data` from any thread, concurrently (documented there); kvr only passes the pointer on.
unsafe impl Send for CCallback {}
// SAFETY: as above.
unsafe impl Sync for CCallback {}

impl CCallback {
    fn call(&self, level: Level, target: &str, message: &str) {
        let (t, m) = (c_text(target), c_text(message));
        // SAFETY: the caller installed `f` for exactly this signature; the strings live
        // until it returns.
        unsafe { (self.f)(level_to_c(level), t.as_ptr(), m.as_ptr(), self.user_data) }
    }
}

fn level_to_c(l: Level) -> u32 {
    match l {
        Level::Error => KVR_LOG_ERROR,
        Level::Warn => KVR_LOG_WARN,
        Level::Info => KVR_LOG_INFO,
        Level::Debug => KVR_LOG_DEBUG,
        Level::Trace => KVR_LOG_TRACE,
    }
}

fn c_text(s: &str) -> CString {
    CString::new(s.replace('\0', "\u{FFFD}")).expect("NULs replaced")
}

/// Sends kvr's log records at or above `min_level` (`KVR_LOG_*`) to `fn(level, target,
/// message, user_data)`. `fn` NULL restores the default: warnings and errors to stderr,
/// each distinct message once. Returns once no call of the previous callback is still
/// running on another thread, so its `user_data` may then be freed. Errors:
/// `KVR_ERR_INVALID_ARGUMENT` (`min_level` above `KVR_LOG_TRACE`).
#[no_mangle]
pub extern "C" fn kvr_set_log_callback(
    min_level: u32,
    callback: kvr_log_fn,
    user_data: *mut c_void,
) -> kvr_status {
    guard(|| {
        let filter = match min_level {
            KVR_LOG_OFF => LevelFilter::Off,
            KVR_LOG_ERROR => LevelFilter::Error,
            KVR_LOG_WARN => LevelFilter::Warn,
            KVR_LOG_INFO => LevelFilter::Info,
            KVR_LOG_DEBUG => LevelFilter::Debug,
            KVR_LOG_TRACE => LevelFilter::Trace,
            v => {
                return Err(err!(
                    InvalidArgument,
                    "min_level {v} is not a KVR_LOG_* value (0..=5)"
                ))
            }
        };
        let sink = callback.map(|f| {
            let cb = CCallback { f, user_data };
            let sink: logging::Sink =
                Arc::new(move |level, target, message| cb.call(level, target, message));
            (filter, sink)
        });
        logging::set_sink(sink);
        Ok(())
    })
}
