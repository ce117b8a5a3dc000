//! The fs store's C ABI called from Rust: happy path, async jobs, and bad inputs.

mod common;

use std::ffi::{CStr, CString};
use std::ptr::{null, null_mut};

use kvr::ffi::fs::*;
use kvr::ffi::job::*;
use kvr::ffi::kvr_status::{self, *};

use common::last_error;

fn k(i: u8) -> kvr_block_key {
    kvr_block_key { bytes: [i; 16] }
}

fn open(root: &CString, ns: &str) -> (kvr_status, *mut kvr_fs) {
    let ns = CString::new(ns).unwrap();
    let mut c = kvr_fs_config::default();
    assert_eq!(kvr_fs_config_default(&mut c), KVR_OK);
    c.root = root.as_ptr();
    c.namespace_name = ns.as_ptr();
    c.read_threads = 2;
    c.write_threads = 2;
    let mut fs = null_mut();
    let st = kvr_fs_open(&c, &mut fs);
    (st, fs)
}

#[test]
fn c_abi_round_trip_jobs_and_bad_inputs() {
    let d = tempfile::tempdir().unwrap();
    let root = CString::new(d.path().to_str().unwrap()).unwrap();
    for bad in ["", "a/b", "..", ".x"] {
        let (st, fs) = open(&root, bad);
        assert_eq!(st, KVR_ERR_INVALID_ARGUMENT, "{bad:?}");
        assert!(fs.is_null());
        assert!(last_error().contains("namespace"), "{}", last_error());
    }
    let mut fs = null_mut();
    assert_eq!(kvr_fs_open(null(), &mut fs), KVR_ERR_INVALID_ARGUMENT);
    let (st, fs) = open(&root, "ns");
    assert_eq!(st, KVR_OK, "{}", last_error());
    let data = vec![7u8; 5000];
    let src = data.as_ptr().cast();
    assert_eq!(kvr_store_block(fs, &k(1), src, data.len()), KVR_OK);
    assert_eq!(
        kvr_store_block(null(), &k(1), src, 1),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_store_block(fs, null(), src, 1),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_store_block(fs, &k(2), null(), 1),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(kvr_store_block(fs, &k(2), src, 0), KVR_ERR_INVALID_ARGUMENT);
    let mut out = vec![0u8; 5000];
    let dst = out.as_mut_ptr().cast();
    assert_eq!(kvr_load_block(fs, &k(1), dst, 5000), KVR_OK);
    assert_eq!(out, data);
    assert_eq!(
        kvr_load_block(fs, &k(1), dst, 4999),
        KVR_ERR_LAYOUT_MISMATCH
    );
    assert_eq!(kvr_load_block(fs, &k(1), dst, 0), KVR_ERR_INVALID_ARGUMENT);
    assert_eq!(
        kvr_load_block(fs, &k(1), null_mut(), 5),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(kvr_load_block(fs, &k(9), dst, 5000), KVR_ERR_NOT_FOUND);
    assert!(last_error().contains("not found"), "{}", last_error());

    let mut yes = false;
    assert_eq!(kvr_fs_contains(fs, &k(1), &mut yes), KVR_OK);
    assert!(yes);
    assert_eq!(
        kvr_fs_contains(fs, &k(1), null_mut()),
        KVR_ERR_INVALID_ARGUMENT
    );
    let keys = [k(1), k(9), k(1)];
    let mut hits = 99usize;
    assert_eq!(
        kvr_fs_lookup_prefix(fs, keys.as_ptr(), 3, &mut hits),
        KVR_OK
    );
    assert_eq!(hits, 1);
    assert_eq!(kvr_fs_lookup_prefix(fs, null(), 0, &mut hits), KVR_OK);
    assert_eq!(hits, 0);
    assert_eq!(
        kvr_fs_lookup_prefix(fs, null(), 2, &mut hits),
        KVR_ERR_INVALID_ARGUMENT
    );

    let shape = [2u64, 1250];
    let dtype = CString::new("F16").unwrap();
    let st = kvr_store_block_tensor(fs, &k(3), src, 5000, dtype.as_ptr(), shape.as_ptr(), 2);
    assert_eq!(st, KVR_OK, "{}", last_error());
    let st = kvr_store_block_tensor(fs, &k(4), src, 5000, dtype.as_ptr(), shape.as_ptr(), 1);
    assert_eq!(st, KVR_ERR_INVALID_ARGUMENT);

    let mut buf = [0 as std::ffi::c_char; 512];
    let mut need = 0usize;
    let st = kvr_fs_block_path(fs, &k(1), buf.as_mut_ptr(), 512, &mut need);
    assert_eq!(st, KVR_OK);
    // SAFETY: NUL-terminated on success.
    let p = unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(p.len() + 1, need);
    assert!(std::path::Path::new(&p).is_file());
    assert_eq!(
        kvr_fs_block_path(fs, &k(1), buf.as_mut_ptr(), 4, &mut need),
        KVR_ERR_TOO_SMALL
    );

    // Async batches.
    let blocks: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 9000]).collect();
    let items: Vec<kvr_fs_store_item> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| kvr_fs_store_item {
            key: k(100 + i as u8),
            src: b.as_ptr().cast(),
            len: b.len(),
        })
        .collect();
    let mut job = null_mut();
    assert_eq!(kvr_fs_submit_store(fs, items.as_ptr(), 8, &mut job), KVR_OK);
    assert_eq!(kvr_job_wait(job, -1), KVR_OK);
    let mut bytes = 0u64;
    assert_eq!(kvr_job_item_status(job, 7, &mut bytes), KVR_OK);
    assert_eq!(bytes, 9000);
    kvr_job_free(job);
    let mut back = vec![vec![0u8; 9000]; 8];
    let loads: Vec<kvr_fs_load_item> = back
        .iter_mut()
        .enumerate()
        .map(|(i, b)| kvr_fs_load_item {
            key: k(100 + i as u8),
            dst: b.as_mut_ptr().cast(),
            len: b.len(),
        })
        .collect();
    let mut job = null_mut();
    assert_eq!(kvr_fs_submit_load(fs, loads.as_ptr(), 8, &mut job), KVR_OK);
    let mut prog = kvr_job_progress::default();
    assert_eq!(kvr_job_wait(job, 10_000), KVR_OK);
    assert_eq!(kvr_job_poll(job, &mut prog), KVR_OK);
    assert_eq!((prog.done, prog.failed), (8, 0));
    kvr_job_free(job);
    assert_eq!(back, blocks);
    let mut job = null_mut();
    assert_eq!(
        kvr_fs_submit_load(fs, loads.as_ptr(), 0, &mut job),
        KVR_ERR_INVALID_ARGUMENT
    );
    let mut bad = loads.clone();
    bad[3].len = 0;
    assert_eq!(
        kvr_fs_submit_load(fs, bad.as_ptr(), 8, &mut job),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("items[3]"), "{}", last_error());
    assert!(job.is_null(), "no job on a rejected batch");
    assert_eq!(
        kvr_fs_submit_store(fs, items.as_ptr(), 8, null_mut()),
        KVR_ERR_INVALID_ARGUMENT
    );

    assert_eq!(kvr_fs_remove(fs, &k(1)), KVR_OK);
    assert_eq!(kvr_fs_remove(fs, &k(1)), KVR_ERR_NOT_FOUND);

    let mut st = kvr_fs_stats {
        struct_size: std::mem::size_of::<kvr_fs_stats>() as u32,
        ..Default::default()
    };
    assert_eq!(kvr_fs_get_stats(fs, &mut st), KVR_OK);
    assert_eq!(st.blocks, 9); // k(3) + 8 batch blocks
    assert_eq!(st.stores, 10);
    assert_eq!(st.hits, 9);
    assert!(st.misses >= 1);
    let mut unset = kvr_fs_stats::default();
    assert_eq!(kvr_fs_get_stats(fs, &mut unset), KVR_ERR_INVALID_ARGUMENT);
    kvr_fs_close(fs);
    kvr_fs_close(null_mut());

    let mut c = kvr_fs_config::default();
    let ns = CString::new("ns").unwrap();
    c.root = root.as_ptr();
    c.namespace_name = ns.as_ptr();
    for tweak in [
        |c: &mut kvr_fs_config| c.direct_io = 7,
        |c: &mut kvr_fs_config| c.durability = 3,
        |c: &mut kvr_fs_config| c.rank = -2,
        |c: &mut kvr_fs_config| c.read_threads = 0,
        |c: &mut kvr_fs_config| c.struct_size = 4,
    ] {
        let mut cc = c;
        tweak(&mut cc);
        let mut fs = null_mut();
        assert_eq!(kvr_fs_open(&cc, &mut fs), KVR_ERR_INVALID_ARGUMENT);
        assert!(fs.is_null());
    }
}
