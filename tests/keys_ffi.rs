//! The whole-key, segmented and lookup C entry points of the fs store and the slot file,
//! called from Rust: round trips and every bad input (NULL, zero and over-long keys, NULL or
//! empty segments, overflowing totals).

use std::ffi::{c_void, CString};
use std::ptr::{null, null_mut};

use kvr::ffi::disk::*;
use kvr::ffi::fs::*;
use kvr::ffi::items::*;
use kvr::ffi::job::*;
use kvr::ffi::kvr_status::{self, *};
use kvr::ffi::{kvr_key, kvr_segment};

fn key(bytes: &[u8]) -> kvr_key {
    kvr_key {
        bytes: bytes.as_ptr(),
        len: bytes.len(),
    }
}

fn seg(b: &mut [u8]) -> kvr_segment {
    kvr_segment {
        ptr: b.as_mut_ptr().cast::<c_void>(),
        len: b.len(),
    }
}

fn open_fs(root: &CString) -> *mut kvr_fs {
    let ns = CString::new("ns").unwrap();
    let c = kvr_fs_config {
        root: root.as_ptr(),
        namespace_name: ns.as_ptr(),
        read_threads: 2,
        write_threads: 2,
        ..Default::default()
    };
    let mut fs = null_mut();
    assert_eq!(kvr_fs_open(&c, &mut fs), KVR_OK);
    fs
}

fn open_disk(path: &CString) -> *mut kvr_disk {
    let c = kvr_disk_config {
        path: path.as_ptr(),
        slot_size: 65536,
        num_slots: 4,
        io_threads: 2,
        ..Default::default()
    };
    let mut d = null_mut();
    assert_eq!(kvr_disk_open(&c, &mut d), KVR_OK);
    d
}

/// Every bad key and segment list, for a call taking (key, segments, n).
fn bad_inputs(call: &dyn Fn(kvr_key, *const kvr_segment, usize) -> kvr_status) {
    let mut buf = [1u8; 8];
    let good = [seg(&mut buf)];
    let long = [0u8; 257];
    for k in [
        kvr_key {
            bytes: null(),
            len: 4,
        },
        key(b""),
        key(&long),
    ] {
        assert_eq!(call(k, good.as_ptr(), 1), KVR_ERR_INVALID_ARGUMENT);
    }
    let k = key(b"a key");
    assert_eq!(call(k, null(), 1), KVR_ERR_INVALID_ARGUMENT);
    assert_eq!(call(k, good.as_ptr(), 0), KVR_ERR_INVALID_ARGUMENT);
    let null_seg = [
        good[0],
        kvr_segment {
            ptr: null_mut(),
            len: 4,
        },
    ];
    assert_eq!(call(k, null_seg.as_ptr(), 2), KVR_ERR_INVALID_ARGUMENT);
    let empty_seg = [
        good[0],
        kvr_segment {
            ptr: good[0].ptr,
            len: 0,
        },
    ];
    assert_eq!(call(k, empty_seg.as_ptr(), 2), KVR_ERR_INVALID_ARGUMENT);
    let huge = [
        kvr_segment {
            ptr: good[0].ptr,
            len: usize::MAX / 2,
        },
        kvr_segment {
            ptr: good[0].ptr,
            len: usize::MAX / 2 + 2,
        },
    ];
    assert_eq!(call(k, huge.as_ptr(), 2), KVR_ERR_INVALID_ARGUMENT);
}

#[test]
fn fs_whole_keys_segments_and_lookup_through_the_c_abi() {
    let d = tempfile::tempdir().unwrap();
    let root = CString::new(d.path().to_str().unwrap()).unwrap();
    let fs = open_fs(&root);
    let long_key = vec![7u8; 200];
    let (mut a, mut b) = (vec![1u8; 5000], vec![2u8; 3000]);
    let segs = [seg(&mut a), seg(&mut b)];
    assert_eq!(kvr_fs_store(fs, key(&long_key), segs.as_ptr(), 2), KVR_OK);
    let mut out = vec![0u8; 8000];
    let (x, y) = out.split_at_mut(100);
    let outs = [seg(x), seg(y)];
    assert_eq!(kvr_fs_load(fs, key(&long_key), outs.as_ptr(), 2), KVR_OK);
    assert!(out[..5000].iter().all(|&v| v == 1) && out[5000..].iter().all(|&v| v == 2));
    let mut short = vec![0u8; 7999];
    let one = [seg(&mut short)];
    assert_eq!(
        kvr_fs_load(fs, key(&long_key), one.as_ptr(), 1),
        KVR_ERR_LAYOUT_MISMATCH
    );
    assert_eq!(
        kvr_fs_load(fs, key(b"absent"), one.as_ptr(), 1),
        KVR_ERR_NOT_FOUND
    );
    bad_inputs(&|k, s, n| kvr_fs_store(fs, k, s, n));
    bad_inputs(&|k, s, n| kvr_fs_load(fs, k, s, n));
    assert_eq!(
        kvr_fs_store(null(), key(b"k"), segs.as_ptr(), 2),
        KVR_ERR_INVALID_ARGUMENT
    );

    // Lookup: one byte per key; bad keys are absent.
    let keys = [
        key(&long_key),
        key(b"absent"),
        key(b""),
        kvr_key {
            bytes: null(),
            len: 3,
        },
    ];
    let mut present = [9u8; 4];
    let mut hits = 0usize;
    assert_eq!(
        kvr_fs_lookup(fs, keys.as_ptr(), 4, present.as_mut_ptr(), &mut hits),
        KVR_OK
    );
    assert_eq!((present, hits), ([1, 0, 0, 0], 1));
    assert_eq!(kvr_fs_lookup(fs, null(), 0, null_mut(), null_mut()), KVR_OK);
    assert_eq!(
        kvr_fs_lookup(fs, null(), 2, present.as_mut_ptr(), null_mut()),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_fs_lookup(fs, keys.as_ptr(), 2, null_mut(), null_mut()),
        KVR_ERR_INVALID_ARGUMENT
    );

    // Async items.
    let k2 = b"async key".to_vec();
    let store = [kvr_fs_store_segments_item {
        struct_size: std::mem::size_of::<kvr_fs_store_segments_item>() as u32,
        key: key(&k2),
        segments: segs.as_ptr(),
        num_segments: 2,
    }];
    let mut job = null_mut();
    assert_eq!(
        kvr_fs_submit_store_items(fs, store.as_ptr(), 1, &mut job),
        KVR_OK
    );
    assert_eq!(kvr_job_wait(job, -1), KVR_OK);
    let mut bytes = 0u64;
    assert_eq!(kvr_job_item_status(job, 0, &mut bytes), KVR_OK);
    assert_eq!(bytes, 8000);
    kvr_job_free(job);
    out.fill(0);
    let (x, y) = out.split_at_mut(4096);
    let outs = [seg(x), seg(y)];
    let load = [kvr_fs_load_segments_item {
        struct_size: std::mem::size_of::<kvr_fs_load_segments_item>() as u32,
        key: key(&k2),
        segments: outs.as_ptr(),
        num_segments: 2,
    }];
    let mut job = null_mut();
    assert_eq!(
        kvr_fs_submit_load_items(fs, load.as_ptr(), 1, &mut job),
        KVR_OK
    );
    assert_eq!(kvr_job_wait(job, -1), KVR_OK);
    assert_eq!(kvr_job_item_status(job, 0, null_mut()), KVR_OK);
    kvr_job_free(job);
    assert!(out[..5000].iter().all(|&v| v == 1) && out[5000..].iter().all(|&v| v == 2));
    let mut bad = store;
    bad[0].struct_size = 4;
    assert_eq!(
        kvr_fs_submit_store_items(fs, bad.as_ptr(), 1, &mut job),
        KVR_ERR_INVALID_ARGUMENT
    );
    let mut bad = store;
    bad[0].key = key(b"");
    assert_eq!(
        kvr_fs_submit_store_items(fs, bad.as_ptr(), 1, &mut job),
        KVR_ERR_INVALID_ARGUMENT
    );
    let mut bad = store;
    bad[0].num_segments = 0;
    assert_eq!(
        kvr_fs_submit_store_items(fs, bad.as_ptr(), 1, &mut job),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(kvr_fs_remove_key(fs, key(&k2)), KVR_OK);
    assert_eq!(kvr_fs_remove_key(fs, key(&k2)), KVR_ERR_NOT_FOUND);
    assert_eq!(kvr_fs_remove_key(fs, key(b"")), KVR_ERR_INVALID_ARGUMENT);
    kvr_fs_close(fs);
}

#[test]
fn disk_whole_keys_segments_and_lookup_through_the_c_abi() {
    let d = tempfile::tempdir().unwrap();
    let path = CString::new(d.path().join("slots").to_str().unwrap()).unwrap();
    let disk = open_disk(&path);
    let k = b"sglang:5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e".to_vec();
    let (mut a, mut b) = (vec![3u8; 4096], vec![4u8; 100]);
    let segs = [seg(&mut a), seg(&mut b)];
    assert_eq!(
        kvr_disk_write_segments(disk, key(&k), segs.as_ptr(), 2, b"md".as_ptr(), 2),
        KVR_OK
    );
    let mut out = vec![0u8; 4196];
    let (x, y) = out.split_at_mut(4000);
    let outs = [seg(x), seg(y)];
    let (mut meta, mut meta_len) = ([0u8; 8], 0u64);
    assert_eq!(
        kvr_disk_read_segments(
            disk,
            key(&k),
            outs.as_ptr(),
            2,
            meta.as_mut_ptr(),
            8,
            &mut meta_len
        ),
        KVR_OK
    );
    assert_eq!((meta_len, &meta[..2]), (2, &b"md"[..]));
    assert!(out[..4096].iter().all(|&v| v == 3) && out[4096..].iter().all(|&v| v == 4));
    assert_eq!(
        kvr_disk_read_segments(
            disk,
            key(&k),
            outs.as_ptr(),
            2,
            meta.as_mut_ptr(),
            1,
            &mut meta_len
        ),
        KVR_ERR_TOO_SMALL
    );
    assert_eq!(meta_len, 2);
    let one = [outs[0]];
    assert_eq!(
        kvr_disk_read_segments(disk, key(&k), one.as_ptr(), 1, null_mut(), 0, null_mut()),
        KVR_ERR_LAYOUT_MISMATCH
    );
    bad_inputs(&|kk, s, n| kvr_disk_write_segments(disk, kk, s, n, null(), 0));
    bad_inputs(&|kk, s, n| kvr_disk_read_segments(disk, kk, s, n, null_mut(), 0, null_mut()));
    // Metadata limit: KVR_DISK_MAX_META less the key's length.
    let big = vec![0u8; KVR_DISK_MAX_META as usize - k.len() + 1];
    assert_eq!(
        kvr_disk_write_segments(
            disk,
            key(&k),
            segs.as_ptr(),
            2,
            big.as_ptr(),
            big.len() as u64
        ),
        KVR_ERR_TOO_LARGE
    );
    let keys = [key(&k), key(b"nope"), key(&[0u8; 300])];
    let mut present = [9u8; 3];
    let mut hits = 0usize;
    assert_eq!(
        kvr_disk_lookup(disk, keys.as_ptr(), 3, present.as_mut_ptr(), &mut hits),
        KVR_OK
    );
    assert_eq!((present, hits), ([1, 0, 0], 1));
    assert_eq!(
        kvr_disk_lookup(disk, null(), 0, null_mut(), null_mut()),
        KVR_OK
    );
    assert_eq!(
        kvr_disk_lookup(null(), keys.as_ptr(), 1, present.as_mut_ptr(), null_mut()),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(kvr_disk_remove_key(disk, key(&k)), KVR_OK);
    assert_eq!(kvr_disk_remove_key(disk, key(&k)), KVR_ERR_NOT_FOUND);
    kvr_disk_close(disk);
}

#[test]
fn disk_item_batches_through_the_c_abi() {
    let d = tempfile::tempdir().unwrap();
    let path = CString::new(d.path().join("slots").to_str().unwrap()).unwrap();
    let disk = open_disk(&path);
    let k = vec![5u8; 40];
    let (mut a, mut b) = (vec![6u8; 4096], vec![7u8; 904]);
    let segs = [seg(&mut a), seg(&mut b)];
    let write = [kvr_disk_write_segments_item {
        struct_size: std::mem::size_of::<kvr_disk_write_segments_item>() as u32,
        key: key(&k),
        segments: segs.as_ptr(),
        num_segments: 2,
        meta: b"meta".as_ptr(),
        meta_len: 4,
    }];
    let mut job = null_mut();
    assert_eq!(
        kvr_disk_submit_write_items(disk, write.as_ptr(), 1, &mut job),
        KVR_OK
    );
    assert_eq!(kvr_job_wait(job, -1), KVR_OK);
    let mut bytes = 0u64;
    assert_eq!(kvr_job_item_status(job, 0, &mut bytes), KVR_OK);
    assert_eq!(bytes, 5000);
    kvr_job_free(job);

    let mut out = vec![0u8; 5000];
    let (x, y) = out.split_at_mut(1000);
    let outs = [seg(x), seg(y)];
    let mut meta = [0u8; 8];
    let mut read = [kvr_disk_read_segments_item {
        struct_size: std::mem::size_of::<kvr_disk_read_segments_item>() as u32,
        key: key(&k),
        segments: outs.as_ptr(),
        num_segments: 2,
        meta_dst: meta.as_mut_ptr(),
        meta_cap: 8,
        meta_len: 0,
    }];
    let mut job = null_mut();
    assert_eq!(
        kvr_disk_submit_read_items(disk, read.as_mut_ptr(), 1, &mut job),
        KVR_OK
    );
    assert_eq!(kvr_job_wait(job, -1), KVR_OK);
    assert_eq!(kvr_job_item_status(job, 0, &mut bytes), KVR_OK);
    kvr_job_free(job);
    assert_eq!(
        (bytes, read[0].meta_len, &meta[..4]),
        (5000, 4, &b"meta"[..])
    );
    assert!(out[..4096].iter().all(|&v| v == 6) && out[4096..].iter().all(|&v| v == 7));

    // A wrong total fails its item, not the batch.
    let one = [outs[0]];
    read[0].segments = one.as_ptr();
    read[0].num_segments = 1;
    assert_eq!(
        kvr_disk_submit_read_items(disk, read.as_mut_ptr(), 1, &mut job),
        KVR_OK
    );
    assert_eq!(kvr_job_wait(job, -1), KVR_OK);
    assert_eq!(
        kvr_job_item_status(job, 0, null_mut()),
        KVR_ERR_LAYOUT_MISMATCH
    );
    kvr_job_free(job);

    // Bad items reject the whole batch before anything is queued.
    let long = [0u8; 257];
    let null_seg = [kvr_segment {
        ptr: null_mut(),
        len: 4,
    }];
    let mut bads = Vec::new();
    for f in [
        &(|w: &mut kvr_disk_write_segments_item| w.struct_size = 4)
            as &dyn Fn(&mut kvr_disk_write_segments_item),
        &|w| w.key = key(b""),
        &|w| w.key = key(&long),
        &|w| {
            w.key = kvr_key {
                bytes: null(),
                len: 3,
            }
        },
        &|w| w.num_segments = 0,
        &|w| w.segments = null(),
        &|w| {
            w.segments = null_seg.as_ptr();
            w.num_segments = 1
        },
        &|w| w.meta = null(),
    ] {
        let mut w = write;
        f(&mut w[0]);
        bads.push(w);
    }
    for w in &bads {
        let mut job = null_mut();
        assert_eq!(
            kvr_disk_submit_write_items(disk, w.as_ptr(), 1, &mut job),
            KVR_ERR_INVALID_ARGUMENT
        );
        assert!(job.is_null());
    }
    let mut bad = read;
    bad[0].meta_dst = null_mut();
    assert_eq!(
        kvr_disk_submit_read_items(disk, bad.as_mut_ptr(), 1, &mut job),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_disk_submit_write_items(disk, null(), 1, &mut job),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_disk_submit_write_items(null(), write.as_ptr(), 1, &mut job),
        KVR_ERR_INVALID_ARGUMENT
    );
    kvr_disk_close(disk);
}
