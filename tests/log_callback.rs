//! `kvr_set_log_callback`: records reach the C callback, which may call back into kvr (here:
//! open and close an fs store from inside the callback) without deadlocking. One test: the
//! callback is process-wide.

use std::cell::Cell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::Mutex;

use kvr::ffi::fs::{kvr_fs_close, kvr_fs_config, kvr_fs_config_default, kvr_fs_open};
use kvr::ffi::log::{kvr_set_log_callback, KVR_LOG_INFO, KVR_LOG_TRACE, KVR_LOG_WARN};
use kvr::ffi::{kvr_status, KVR_DIRECT_IO_OFF};

static SEEN: Mutex<Vec<(u32, String, String)>> = Mutex::new(Vec::new());

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

fn open_close(root: &CStr, ns: &CStr) -> kvr_status {
    // SAFETY: plain data (pointers and numbers); zeroes are valid, and the default fills it.
    let mut c: kvr_fs_config = unsafe { std::mem::zeroed() };
    assert_eq!(kvr_fs_config_default(&mut c), kvr_status::KVR_OK);
    c.root = root.as_ptr();
    c.namespace_name = ns.as_ptr();
    c.direct_io = KVR_DIRECT_IO_OFF;
    c.read_threads = 1;
    c.write_threads = 1;
    let mut fs = std::ptr::null_mut();
    let st = kvr_fs_open(&c, &mut fs);
    kvr_fs_close(fs);
    st
}

unsafe extern "C" fn callback(
    level: u32,
    target: *const c_char,
    message: *const c_char,
    user_data: *mut c_void,
) {
    // SAFETY: kvr passes NUL-terminated strings valid during the call.
    let (t, m) = unsafe { (CStr::from_ptr(target), CStr::from_ptr(message)) };
    SEEN.lock().unwrap().push((
        level,
        t.to_string_lossy().into(),
        m.to_string_lossy().into(),
    ));
    if DEPTH.get() == 0 {
        DEPTH.set(1);
        // SAFETY: the test passes the root directory's C string as user data.
        let root = unsafe { CStr::from_ptr(user_data as *const c_char) };
        assert_eq!(open_close(root, c"inner"), kvr_status::KVR_OK);
        DEPTH.set(0);
    }
}

#[test]
fn callback_gets_records_and_may_reenter_kvr() {
    let d = tempfile::tempdir().unwrap();
    let root = CString::new(d.path().to_str().unwrap()).unwrap();
    let st = kvr_set_log_callback(KVR_LOG_TRACE + 1, Some(callback), std::ptr::null_mut());
    assert_eq!(st, kvr_status::KVR_ERR_INVALID_ARGUMENT);
    let user = root.as_ptr() as *mut c_void;
    assert_eq!(
        kvr_set_log_callback(KVR_LOG_INFO, Some(callback), user),
        kvr_status::KVR_OK
    );
    assert_eq!(open_close(&root, c"outer"), kvr_status::KVR_OK);
    let seen = SEEN.lock().unwrap().clone();
    let about = |ns: &str| {
        seen.iter().any(|(l, t, m)| {
            *l == KVR_LOG_INFO && t == "kvr::io" && m.contains(ns) && m.contains("buffered I/O")
        })
    };
    assert!(about("outer"), "{seen:?}");
    assert!(about("inner"), "the re-entrant open logged too: {seen:?}");
    assert!(
        seen.iter().any(|(_, t, m)| t == "kvr::fs"
            && m.contains("blocks are written into unnamed O_TMPFILE files")),
        "{seen:?}"
    );

    // Above the level: nothing.
    assert_eq!(
        kvr_set_log_callback(KVR_LOG_WARN, Some(callback), user),
        kvr_status::KVR_OK
    );
    let before = SEEN.lock().unwrap().len();
    assert_eq!(open_close(&root, c"quiet"), kvr_status::KVR_OK);
    assert_eq!(SEEN.lock().unwrap().len(), before);

    // Back to stderr: the callback is never called again.
    assert_eq!(
        kvr_set_log_callback(KVR_LOG_INFO, None, std::ptr::null_mut()),
        kvr_status::KVR_OK
    );
    assert_eq!(open_close(&root, c"after"), kvr_status::KVR_OK);
    assert_eq!(SEEN.lock().unwrap().len(), before);
}
