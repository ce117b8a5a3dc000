//! The slot file's C ABI called from Rust: argument checks, status codes, outputs.

mod common;

use std::ffi::CString;
use std::ptr::{null, null_mut};

use kvr::ffi::disk::*;
use kvr::ffi::job::{kvr_job, kvr_job_free, kvr_job_item_status, kvr_job_wait};
use kvr::ffi::kvr_block_key;
use kvr::ffi::kvr_status::{self, *};
use kvr::ffi::{KVR_DIRECT_IO_AUTO, KVR_DIRECT_IO_OFF};

use common::last_error;

fn config(path: &CString, slot_size: u64, num_slots: u64) -> kvr_disk_config {
    let mut c = kvr_disk_config {
        struct_size: 0,
        path: null(),
        slot_size: 0,
        num_slots: 0,
        io_threads: 0,
        direct_io: 99,
        verify: false,
        sync: true,
        namespace_name: c"garbage".as_ptr(),
    };
    assert_eq!(kvr_disk_config_default(&mut c), KVR_OK);
    assert_eq!(
        c.struct_size as usize,
        std::mem::size_of::<kvr_disk_config>()
    );
    assert_eq!(
        (c.io_threads, c.direct_io, c.verify, c.sync),
        (4, KVR_DIRECT_IO_AUTO, true, false)
    );
    assert!(c.namespace_name.is_null(), "no namespace by default");
    c.path = path.as_ptr();
    c.slot_size = slot_size;
    c.num_slots = num_slots;
    c
}

fn open(c: &kvr_disk_config) -> Result<*mut kvr_disk, kvr_status> {
    let mut d = null_mut();
    match kvr_disk_open(c, &mut d) {
        KVR_OK => Ok(d),
        s => {
            assert!(d.is_null(), "output written on failure");
            Err(s)
        }
    }
}

#[test]
fn c_api_round_trip_and_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let path = CString::new(dir.path().join("slots").to_str().unwrap()).unwrap();
    let mut c = config(&path, 10_000, 4); // rounds to 12288
                                          // Bad configs.
    assert_eq!(
        kvr_disk_open(null(), &mut null_mut()),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(kvr_disk_open(&c, null_mut()), KVR_ERR_INVALID_ARGUMENT);
    for bad in [
        kvr_disk_config { path: null(), ..c },
        kvr_disk_config { slot_size: 0, ..c },
        kvr_disk_config { num_slots: 0, ..c },
        kvr_disk_config { direct_io: 7, ..c },
        kvr_disk_config {
            struct_size: 4,
            ..c
        },
    ] {
        assert_eq!(open(&bad).unwrap_err(), KVR_ERR_INVALID_ARGUMENT);
        assert!(!last_error().is_empty());
    }
    c.direct_io = KVR_DIRECT_IO_OFF;
    let d = open(&c).unwrap();
    assert_eq!(open(&c).unwrap_err(), KVR_ERR_BUSY);
    assert!(last_error().contains("owned"), "{}", last_error());

    let key = kvr_block_key { bytes: [3u8; 16] };
    let data = vec![9u8; 5000];
    let meta = b"tokens";
    // Writes: NULLs, zero sizes, too large.
    assert_eq!(
        kvr_disk_write(null(), &key, data.as_ptr(), 5000, null(), 0),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_disk_write(d, null(), data.as_ptr(), 5000, null(), 0),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_disk_write(d, &key, null(), 5000, null(), 0),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_disk_write(d, &key, data.as_ptr(), 0, null(), 0),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_disk_write(d, &key, data.as_ptr(), 5000, null(), 3),
        KVR_ERR_INVALID_ARGUMENT
    );
    let big = vec![0u8; 12289];
    assert_eq!(
        kvr_disk_write(d, &key, big.as_ptr(), 12289, null(), 0),
        KVR_ERR_TOO_LARGE
    );
    let msg = last_error();
    assert!(msg.contains("12289") && msg.contains("12288"), "{msg}");
    assert_eq!(
        kvr_disk_write(
            d,
            &key,
            data.as_ptr(),
            5000,
            meta.as_ptr(),
            meta.len() as u64
        ),
        KVR_OK
    );

    // Reads.
    let mut dst = vec![0u8; 12288];
    let mut mdst = [0u8; 16];
    let (mut len, mut mlen) = (77u64, 77u64);
    let read = |k: &kvr_block_key,
                dst: &mut [u8],
                cap: u64,
                m: &mut [u8],
                mcap: u64,
                len: &mut u64,
                mlen: &mut u64| {
        kvr_disk_read(d, k, dst.as_mut_ptr(), cap, len, m.as_mut_ptr(), mcap, mlen)
    };
    assert_eq!(
        read(&key, &mut dst, 12288, &mut mdst, 16, &mut len, &mut mlen),
        KVR_OK
    );
    assert_eq!((len, mlen), (5000, 6));
    assert_eq!(&dst[..5000], &data[..]);
    assert_eq!(&mdst[..6], meta);
    // Too small: the needed sizes are written out.
    let (mut len, mut mlen) = (0u64, 0u64);
    assert_eq!(
        read(&key, &mut dst, 4999, &mut mdst, 16, &mut len, &mut mlen),
        KVR_ERR_TOO_SMALL
    );
    assert_eq!((len, mlen), (5000, 6));
    let (mut len, mut mlen) = (0u64, 0u64);
    assert_eq!(
        read(&key, &mut dst, 5000, &mut mdst, 5, &mut len, &mut mlen),
        KVR_ERR_TOO_SMALL
    );
    assert_eq!((len, mlen), (5000, 6));
    // Meta buffer NULL/0 is fine for entries without metadata, too small otherwise.
    assert_eq!(
        kvr_disk_read(
            d,
            &key,
            dst.as_mut_ptr(),
            12288,
            &mut len,
            null_mut(),
            0,
            &mut mlen
        ),
        KVR_ERR_TOO_SMALL
    );
    // Each NULL or empty argument is rejected.
    let (dp, mp) = (dst.as_mut_ptr(), mdst.as_mut_ptr());
    let (lp, mlp): (*mut u64, *mut u64) = (&mut len, &mut mlen);
    let kp: *const kvr_block_key = &key;
    for (what, kp, dp, cap, lp, mp, mcap, mlp) in [
        ("dst NULL", kp, null_mut(), 12288, lp, null_mut(), 0, mlp),
        ("dst_cap 0", kp, dp, 0, lp, null_mut(), 0, mlp),
        ("len NULL", kp, dp, 12288, null_mut(), null_mut(), 0, mlp),
        ("meta_len NULL", kp, dp, 12288, lp, mp, 16, null_mut()),
        ("key NULL", null(), dp, 12288, lp, mp, 16, mlp),
    ] {
        assert_eq!(
            kvr_disk_read(d, kp, dp, cap, lp, mp, mcap, mlp),
            KVR_ERR_INVALID_ARGUMENT,
            "{what}"
        );
    }
    let other = kvr_block_key { bytes: [4u8; 16] };
    assert_eq!(
        read(&other, &mut dst, 12288, &mut mdst, 16, &mut len, &mut mlen),
        KVR_ERR_NOT_FOUND
    );

    // Contains, remove, stats.
    let mut has = false;
    assert_eq!(kvr_disk_contains(d, &key, &mut has), KVR_OK);
    assert!(has);
    assert_eq!(
        kvr_disk_contains(d, &key, null_mut()),
        KVR_ERR_INVALID_ARGUMENT
    );
    let mut st = kvr_disk_stats::default();
    assert_eq!(kvr_disk_get_stats(d, &mut st), KVR_ERR_INVALID_ARGUMENT); // struct_size unset
    st.struct_size = std::mem::size_of::<kvr_disk_stats>() as u32;
    assert_eq!(kvr_disk_get_stats(d, &mut st), KVR_OK);
    assert_eq!(
        (st.entries, st.free_slots, st.hits, st.misses, st.writes),
        (1, 3, 1, 1, 1)
    );
    assert_eq!(
        (st.slot_size, st.num_slots, st.direct_io, st.created),
        (12288, 4, false, true)
    );
    assert_eq!(kvr_disk_remove(d, &key), KVR_OK);
    assert_eq!(kvr_disk_remove(d, &key), KVR_ERR_NOT_FOUND);
    assert_eq!(kvr_disk_contains(d, &key, &mut has), KVR_OK);
    assert!(!has);

    // Batches.
    let wops: Vec<kvr_disk_write_item> = (0..4u8)
        .map(|i| kvr_disk_write_item {
            key: kvr_block_key { bytes: [i; 16] },
            src: data.as_ptr(),
            len: 1000 + i as u64,
            meta: meta.as_ptr(),
            meta_len: i as u64,
        })
        .collect();
    let mut job: *mut kvr_job = null_mut();
    assert_eq!(
        kvr_disk_submit_write(d, wops.as_ptr(), 0, &mut job),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_disk_submit_write(d, null(), 4, &mut job),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_disk_submit_write(d, wops.as_ptr(), 4, null_mut()),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(kvr_disk_submit_write(d, wops.as_ptr(), 4, &mut job), KVR_OK);
    assert_eq!(kvr_job_wait(job, -1), KVR_OK);
    let mut bytes = 0u64;
    assert_eq!(kvr_job_item_status(job, 3, &mut bytes), KVR_OK);
    assert_eq!(bytes, 1003);
    kvr_job_free(job);
    let mut bufs = vec![vec![0u8; 2000]; 4];
    let mut metas = [[0u8; 8]; 4];
    let mut rops: Vec<kvr_disk_read_item> = bufs
        .iter_mut()
        .zip(metas.iter_mut())
        .enumerate()
        .map(|(i, (b, m))| kvr_disk_read_item {
            key: kvr_block_key {
                bytes: [i as u8; 16],
            },
            dst: b.as_mut_ptr(),
            dst_cap: if i == 3 { 1000 } else { 2000 },
            meta_dst: m.as_mut_ptr(),
            meta_cap: 8,
            len: 0,
            meta_len: 0,
        })
        .collect();
    let mut job: *mut kvr_job = null_mut();
    assert_eq!(
        kvr_disk_submit_read(d, rops.as_mut_ptr(), 4, &mut job),
        KVR_OK
    );
    assert_eq!(kvr_job_wait(job, 10_000), KVR_OK);
    assert_eq!(kvr_job_item_status(job, 1, &mut bytes), KVR_OK);
    assert_eq!(bytes, 1001);
    assert_eq!(kvr_job_item_status(job, 3, null_mut()), KVR_ERR_TOO_SMALL);
    kvr_job_free(job);
    assert_eq!((rops[1].len, rops[1].meta_len), (1001, 1));
    assert_eq!((rops[3].len, rops[3].meta_len), (1003, 3));
    assert_eq!(&bufs[2][..1002], &data[..1002]);
    assert_eq!(&metas[2][..2], &meta[..2]);

    kvr_disk_close(d);
    kvr_disk_close(null_mut());
    // Geometry mismatch through the C API.
    let c2 = kvr_disk_config { num_slots: 5, ..c };
    assert_eq!(open(&c2).unwrap_err(), KVR_ERR_LAYOUT_MISMATCH);
    let d = open(&c).unwrap();
    let mut st = kvr_disk_stats {
        struct_size: 16,
        ..Default::default()
    };
    assert_eq!(kvr_disk_get_stats(d, &mut st), KVR_OK);
    assert_eq!(st.num_slots, 4); // only the declared prefix is written
    assert_eq!(st.entries, 0);
    kvr_disk_close(d);
}
