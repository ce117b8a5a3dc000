//! The object tier's C ABI called from Rust: bad configs (no server needed), then against the
//! test server the round trip, async jobs, stats, and kvr's own threads, which exist only
//! while a store is open. One test: the thread check needs no other store open meanwhile.

mod common;
mod obj_common;

use std::ffi::CString;
use std::ptr::{null, null_mut};

use kvr::ffi::job::*;
use kvr::ffi::kvr_status::*;
use kvr::ffi::obj::*;

use common::last_error;

fn k(i: u8) -> kvr_block_key {
    kvr_block_key { bytes: [i; 16] }
}

/// Names of this process's threads that are kvr's object I/O threads.
fn obj_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with("kvr-obj-"))
        .collect()
}

struct Strings {
    url: CString,
    ns: CString,
    endpoint: CString,
}

fn open(
    s: &Strings,
    tweak: impl FnOnce(&mut kvr_obj_config),
) -> (kvr::ffi::kvr_status, *mut kvr_obj) {
    let mut c = kvr_obj_config::default();
    assert_eq!(kvr_obj_config_default(&mut c), KVR_OK);
    c.url = s.url.as_ptr();
    c.namespace_name = s.ns.as_ptr();
    c.endpoint = s.endpoint.as_ptr();
    c.request_timeout_ms = 10_000;
    tweak(&mut c);
    let mut obj = null_mut();
    let st = kvr_obj_open(&c, &mut obj);
    (st, obj)
}

#[test]
fn c_abi_round_trip_jobs_stats_and_threads() {
    let mut obj = null_mut();
    assert_eq!(kvr_obj_open(null(), &mut obj), KVR_ERR_INVALID_ARGUMENT);
    let offline = Strings {
        url: CString::new("s3://kvr-test/x").unwrap(),
        ns: CString::new("ns").unwrap(),
        endpoint: CString::new("http://127.0.0.1:9").unwrap(),
    };
    for (what, tweak) in [
        (
            "url",
            Box::new(|c: &mut kvr_obj_config| c.url = c"http://x".as_ptr())
                as Box<dyn Fn(&mut kvr_obj_config)>,
        ),
        (
            "namespace",
            Box::new(|c: &mut kvr_obj_config| c.namespace_name = c"a/b".as_ptr()),
        ),
        (
            "concurrency",
            Box::new(|c: &mut kvr_obj_config| c.concurrency = 0),
        ),
        (
            "timeouts",
            Box::new(|c: &mut kvr_obj_config| c.request_timeout_ms = 0),
        ),
        (
            "access_key_id",
            Box::new(|c: &mut kvr_obj_config| c.access_key_id = c"id".as_ptr()),
        ),
    ] {
        let (st, o) = open(&offline, tweak);
        assert_eq!(st, KVR_ERR_INVALID_ARGUMENT, "{what}: {}", last_error());
        assert!(o.is_null());
    }
    // https is spoken (TLS through rustls): nothing listens there either.
    let (st, _) = open(&offline, |c| c.endpoint = c"https://127.0.0.1:9".as_ptr());
    assert_eq!(st, KVR_ERR_UNAVAILABLE, "{}", last_error());
    assert!(
        last_error().contains("https://127.0.0.1:9"),
        "{}",
        last_error()
    );
    // A CA bundle that cannot be read, or holds no certificate, is the config's mistake.
    let (st, o) = open(&offline, |c| c.ca_bundle = c"/nonexistent/ca.pem".as_ptr());
    assert_eq!(st, KVR_ERR_INVALID_ARGUMENT, "{}", last_error());
    assert!(
        last_error().contains("/nonexistent/ca.pem"),
        "{}",
        last_error()
    );
    assert!(o.is_null());
    let (st, _) = open(&offline, |c| c.ca_bundle = c"/dev/null".as_ptr());
    assert_eq!(st, KVR_ERR_INVALID_ARGUMENT, "{}", last_error());
    // Nothing listens on port 9 (discard): refused at once, the message names the endpoint.
    let (st, _) = open(&offline, |_| {});
    assert_eq!(st, KVR_ERR_UNAVAILABLE, "{}", last_error());
    assert!(
        last_error().contains("http://127.0.0.1:9"),
        "{}",
        last_error()
    );
    assert!(obj_threads().is_empty(), "a failed open leaves no threads");

    let ep = endpoint_or_skip!();
    let s = Strings {
        url: CString::new(format!(
            "s3://kvr-test/{}",
            obj_common::unique_prefix("ffi")
        ))
        .unwrap(),
        ns: CString::new("ns").unwrap(),
        endpoint: CString::new(ep).unwrap(),
    };
    let (st, obj) = open(&s, |c| c.concurrency = 4);
    assert_eq!(st, KVR_OK, "{}", last_error());
    assert!(
        !obj_threads().is_empty(),
        "kvr's runtime threads are named kvr-obj-*"
    );
    let data = vec![7u8; 5000];
    let src = data.as_ptr().cast();
    assert_eq!(kvr_obj_store(obj, &k(1), src, data.len()), KVR_OK);
    assert_eq!(kvr_obj_store(obj, &k(1), src, data.len()), KVR_OK); // dedup
    assert_eq!(
        kvr_obj_store(null(), &k(1), src, 1),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(kvr_obj_store(obj, null(), src, 1), KVR_ERR_INVALID_ARGUMENT);
    assert_eq!(kvr_obj_store(obj, &k(2), src, 0), KVR_ERR_INVALID_ARGUMENT);
    let mut out = vec![0u8; 5000];
    assert_eq!(
        kvr_obj_load(obj, &k(1), out.as_mut_ptr().cast(), out.len()),
        KVR_OK
    );
    assert_eq!(out, data);
    assert_eq!(
        kvr_obj_load(obj, &k(2), out.as_mut_ptr().cast(), out.len()),
        KVR_ERR_NOT_FOUND
    );
    assert_eq!(
        kvr_obj_load(obj, &k(1), out.as_mut_ptr().cast(), 10),
        KVR_ERR_LAYOUT_MISMATCH
    );
    let mut present = false;
    assert_eq!(kvr_obj_contains(obj, &k(1), &mut present), KVR_OK);
    assert!(present);
    assert_eq!(
        kvr_obj_contains(obj, &k(1), null_mut()),
        KVR_ERR_INVALID_ARGUMENT
    );
    let keys = [k(1), k(2), k(1)];
    let mut hits = 99;
    assert_eq!(
        kvr_obj_lookup_prefix(obj, keys.as_ptr(), 3, &mut hits),
        KVR_OK
    );
    assert_eq!(hits, 1);
    assert_eq!(kvr_obj_lookup_prefix(obj, null(), 0, &mut hits), KVR_OK);
    assert_eq!(hits, 0);

    // Async batches through kvr_job.
    let blocks: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 65536]).collect();
    let items: Vec<kvr_obj_store_item> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| kvr_obj_store_item {
            key: k(100 + i as u8),
            src: b.as_ptr().cast(),
            len: b.len(),
        })
        .collect();
    let mut job = null_mut();
    assert_eq!(
        kvr_obj_submit_store(obj, items.as_ptr(), 16, &mut job),
        KVR_OK
    );
    assert_eq!(kvr_job_wait(job, 60_000), KVR_OK);
    let mut p = kvr_job_progress::default();
    assert_eq!(kvr_job_poll(job, &mut p), KVR_OK);
    assert_eq!((p.total, p.done, p.failed), (16, 16, 0));
    let mut bytes = 0;
    assert_eq!(kvr_job_item_status(job, 3, &mut bytes), KVR_OK);
    assert_eq!(bytes, 65536);
    kvr_job_free(job);
    let mut bad = items.clone();
    bad[5].src = null();
    assert_eq!(
        kvr_obj_submit_store(obj, bad.as_ptr(), 16, &mut job),
        KVR_ERR_INVALID_ARGUMENT
    );
    let mut outs: Vec<Vec<u8>> = (0..16).map(|_| vec![0u8; 65536]).collect();
    let loads: Vec<kvr_obj_load_item> = outs
        .iter_mut()
        .enumerate()
        .map(|(i, o)| kvr_obj_load_item {
            key: k(100 + i as u8),
            dst: o.as_mut_ptr().cast(),
            len: o.len(),
        })
        .collect();
    assert_eq!(
        kvr_obj_submit_load(obj, loads.as_ptr(), 16, &mut job),
        KVR_OK
    );
    assert_eq!(kvr_job_wait(job, -1), KVR_OK);
    kvr_job_free(job);
    assert_eq!(outs, blocks);

    assert_eq!(kvr_obj_remove(obj, &k(1)), KVR_OK);
    assert_eq!(kvr_obj_remove(obj, &k(1)), KVR_ERR_NOT_FOUND);
    let mut st = kvr_obj_stats {
        struct_size: std::mem::size_of::<kvr_obj_stats>() as u32,
        ..Default::default()
    };
    assert_eq!(kvr_obj_get_stats(obj, &mut st), KVR_OK);
    assert_eq!(
        (st.stores, st.dedup_hits, st.hits, st.misses),
        (17, 1, 17, 1)
    );
    assert_eq!((st.removes, st.corrupt, st.unavailable), (1, 0, 0));
    assert_eq!(st.bytes_written, 5000 + 16 * 65536);

    // A second store shares the runtime; the last close stops its threads.
    let (st2, obj2) = open(&s, |_| {});
    assert_eq!(st2, KVR_OK, "{}", last_error());
    kvr_obj_close(obj);
    assert!(
        !obj_threads().is_empty(),
        "the second store still holds the runtime"
    );
    kvr_obj_close(obj2);
    assert!(obj_threads().is_empty(), "left: {:?}", obj_threads());
    kvr_obj_close(null_mut());
}
