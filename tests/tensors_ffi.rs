//! The tensor C ABI, called as C would: bad inputs, outputs only on success, name fallback,
//! strided writes, the lazy directory, and the device copy reporting missing CUDA.

mod common;

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::{null, null_mut};

use kvr::ffi::export::*;
use kvr::ffi::kvr_status::{self, *};
use kvr::ffi::tensor_dir::*;
use kvr::ffi::tensors::*;

use common::last_error;

fn cs(s: &str) -> CString {
    CString::new(s).unwrap()
}

#[test]
fn dtype_codes_match_the_rust_api() {
    let c = [
        KVR_DTYPE_BOOL,
        KVR_DTYPE_U8,
        KVR_DTYPE_I8,
        KVR_DTYPE_U16,
        KVR_DTYPE_I16,
        KVR_DTYPE_U32,
        KVR_DTYPE_I32,
        KVR_DTYPE_U64,
        KVR_DTYPE_I64,
        KVR_DTYPE_F16,
        KVR_DTYPE_BF16,
        KVR_DTYPE_F32,
        KVR_DTYPE_F64,
        KVR_DTYPE_F8_E4M3,
        KVR_DTYPE_F8_E5M2,
        KVR_DTYPE_F8_E8M0,
        KVR_DTYPE_F8_E4M3FNUZ,
        KVR_DTYPE_F8_E5M2FNUZ,
        KVR_DTYPE_C64,
        KVR_DTYPE_F4,
        KVR_DTYPE_F6_E2M3,
        KVR_DTYPE_F6_E3M2,
    ];
    for (code, d) in c.iter().zip(kvr::tensors::ALL_DTYPES) {
        assert_eq!(*code, d.code(), "{d}");
    }
}

struct Files {
    _dir: tempfile::TempDir,
    two: CString,
    one: CString,
}

/// Writes a two-tensor file (a transposed 3x4 F32 and a scalar) and a one-tensor file.
fn write_files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let two = cs(dir.path().join("two.safetensors").to_str().unwrap());
    let one = cs(dir.path().join("one.safetensors").to_str().unwrap());
    let m: Vec<f32> = (0..12).map(|i| i as f32).collect(); // 4x3 row-major
    let shape_t = [3u64, 4];
    let strides_t = [1i64, 3]; // its transpose
    let scalar = 7i64;
    let (n_t, n_s) = (cs("t"), cs("s"));
    let tensors = [
        kvr_tensor {
            name: n_t.as_ptr(),
            dtype: KVR_DTYPE_F32,
            rank: 2,
            shape: shape_t.as_ptr(),
            strides: strides_t.as_ptr(),
            data: m.as_ptr().cast(),
        },
        kvr_tensor {
            name: n_s.as_ptr(),
            dtype: KVR_DTYPE_I64,
            rank: 0,
            shape: null(),
            strides: null(),
            data: (&scalar as *const i64).cast(),
        },
    ];
    let (k, v) = (cs("model"), cs("kvr"));
    let md = [kvr_kv {
        key: k.as_ptr(),
        value: v.as_ptr(),
    }];
    assert_eq!(
        kvr_tensors_write(
            two.as_ptr(),
            tensors.as_ptr(),
            2,
            md.as_ptr(),
            1,
            KVR_TENSORS_ALIGN_4K
        ),
        KVR_OK,
        "{}",
        last_error()
    );
    assert_eq!(
        kvr_tensors_write(
            one.as_ptr(),
            tensors[1..].as_ptr(),
            1,
            null(),
            0,
            KVR_TENSORS_NO_SYNC
        ),
        KVR_OK,
        "{}",
        last_error()
    );
    Files {
        _dir: dir,
        two,
        one,
    }
}

fn open(path: &CString) -> *mut kvr_tensor_file {
    let mut f = null_mut();
    assert_eq!(
        kvr_tensors_open(path.as_ptr(), &mut f),
        KVR_OK,
        "{}",
        last_error()
    );
    f
}

#[test]
fn write_open_get_read_and_bad_inputs() {
    let files = write_files();
    let f = open(&files.two);
    let mut count = 0usize;
    assert_eq!(kvr_tensors_count(f, &mut count), KVR_OK);
    assert_eq!(count, 2);
    let mut name: *const c_char = null();
    assert_eq!(kvr_tensors_name_at(f, 1, &mut name), KVR_OK);
    // SAFETY: valid until close.
    assert_eq!(unsafe { CStr::from_ptr(name) }.to_str().unwrap(), "s");
    let before = name;
    assert_eq!(kvr_tensors_name_at(f, 2, &mut name), KVR_ERR_NOT_FOUND);
    assert_eq!(name, before, "outputs untouched on failure");
    let mut val: *const c_char = null();
    assert_eq!(
        kvr_tensors_metadata_get(f, cs("model").as_ptr(), &mut val),
        KVR_OK
    );
    // SAFETY: valid until close.
    assert_eq!(unsafe { CStr::from_ptr(val) }.to_str().unwrap(), "kvr");
    assert_eq!(
        kvr_tensors_metadata_get(f, cs("nope").as_ptr(), &mut val),
        KVR_ERR_NOT_FOUND
    );

    // Zero-copy get of the transposed tensor: the file holds its contiguous copy.
    // SAFETY: a plain C struct of integers and pointers; all zeroes is valid.
    let mut r: kvr_tensor_ref = unsafe { std::mem::zeroed() };
    assert_eq!(
        kvr_tensors_get(f, cs("t").as_ptr(), &mut r),
        KVR_OK,
        "{}",
        last_error()
    );
    assert_eq!((r.dtype, r.rank, r.nbytes), (KVR_DTYPE_F32, 2, 48));
    assert_eq!(r.data as usize % 4096, 0, "aligned file");
    // SAFETY: valid until close.
    let (shape, data) = unsafe {
        (
            std::slice::from_raw_parts(r.shape, 2),
            std::slice::from_raw_parts(r.data.cast::<f32>(), 12),
        )
    };
    assert_eq!(shape, [3, 4]);
    let expect: Vec<f32> = (0..3)
        .flat_map(|i| (0..4).map(move |j| (j * 3 + i) as f32))
        .collect();
    assert_eq!(data, &expect[..]);
    // NULL name with two tensors: NOT_FOUND listing them.
    assert_eq!(kvr_tensors_get(f, null(), &mut r), KVR_ERR_NOT_FOUND);
    assert!(last_error().contains("'t', 's'"), "{}", last_error());
    assert_eq!(
        kvr_tensors_get(f, cs("zz").as_ptr(), &mut r),
        KVR_ERR_NOT_FOUND
    );

    // read_into: exact, too small (needed size reported), NULL buffer.
    let mut buf = [0f32; 12];
    let mut n = 0usize;
    let st = kvr_tensors_read_into(f, cs("t").as_ptr(), buf.as_mut_ptr().cast(), 48, &mut n);
    assert_eq!((st, n), (KVR_OK, 48));
    assert_eq!(buf, &expect[..]);
    let st = kvr_tensors_read_into(f, cs("t").as_ptr(), buf.as_mut_ptr().cast(), 47, &mut n);
    assert_eq!((st, n), (KVR_ERR_TOO_SMALL, 48));
    assert_eq!(
        kvr_tensors_read_into(f, cs("t").as_ptr(), null_mut(), 48, &mut n),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_tensors_read_into(null(), null(), buf.as_mut_ptr().cast(), 48, null_mut()),
        KVR_ERR_INVALID_ARGUMENT
    );

    // The device copy respects the destination: no CUDA here means a clear status.
    let st = kvr_tensors_read_into_device(f, cs("t").as_ptr(), 0x7000_0000, 48, 0, &mut n);
    if kvr::cuda::available().is_err() {
        assert_eq!(st, KVR_ERR_CUDA_UNAVAILABLE, "{}", last_error());
        eprintln!(
            "skipped: kvr_tensors_read_into_device (no CUDA): {}",
            last_error()
        );
    }
    assert_eq!(
        kvr_tensors_read_into_device(f, null(), 0, 48, 0, &mut n),
        KVR_ERR_INVALID_ARGUMENT
    );

    // NULL handles and outputs.
    assert_eq!(
        kvr_tensors_count(null(), &mut count),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(kvr_tensors_count(f, null_mut()), KVR_ERR_INVALID_ARGUMENT);
    assert_eq!(
        kvr_tensors_get(f, cs("t").as_ptr(), null_mut()),
        KVR_ERR_INVALID_ARGUMENT
    );
    kvr_tensors_close(f);
    kvr_tensors_close(null_mut());

    // The one-tensor file: NULL name picks it.
    let f = open(&files.one);
    assert_eq!(kvr_tensors_get(f, null(), &mut r), KVR_OK);
    // SAFETY: valid until close.
    assert_eq!(unsafe { *r.data.cast::<i64>() }, 7);
    assert_eq!(r.rank, 0);
    kvr_tensors_close(f);

    // open: bad inputs.
    let mut h = null_mut();
    assert_eq!(kvr_tensors_open(null(), &mut h), KVR_ERR_INVALID_ARGUMENT);
    assert_eq!(
        kvr_tensors_open(files.one.as_ptr(), null_mut()),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_tensors_open(cs("/nonexistent/x").as_ptr(), &mut h),
        KVR_ERR_NOT_FOUND
    );
    assert!(h.is_null());
}

#[test]
fn write_rejects_bad_inputs_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = cs(dir.path().join("x.safetensors").to_str().unwrap());
    let data = [0u8; 16];
    let shape = [4u64];
    let name = cs("a");
    let good = kvr_tensor {
        name: name.as_ptr(),
        dtype: KVR_DTYPE_F32,
        rank: 1,
        shape: shape.as_ptr(),
        strides: null(),
        data: data.as_ptr().cast(),
    };
    let w = |t: &[kvr_tensor], flags: u32| -> kvr_status {
        kvr_tensors_write(p.as_ptr(), t.as_ptr(), t.len(), null(), 0, flags)
    };
    assert_eq!(w(&[good, good], 0), KVR_ERR_INVALID_ARGUMENT);
    assert!(
        last_error().contains("duplicate tensor name 'a'"),
        "{}",
        last_error()
    );
    assert_eq!(
        w(&[kvr_tensor { dtype: 99, ..good }], 0),
        KVR_ERR_UNSUPPORTED
    );
    assert!(last_error().contains("dtype code 99"), "{}", last_error());
    assert_eq!(
        w(
            &[kvr_tensor {
                name: null(),
                ..good
            }],
            0
        ),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        w(
            &[kvr_tensor {
                shape: null(),
                ..good
            }],
            0
        ),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        w(
            &[kvr_tensor {
                data: null(),
                ..good
            }],
            0
        ),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        w(&[kvr_tensor { rank: 65, ..good }], 0),
        KVR_ERR_INVALID_ARGUMENT
    );
    let huge = [u64::MAX, 8];
    assert_eq!(
        w(
            &[kvr_tensor {
                rank: 2,
                shape: huge.as_ptr(),
                ..good
            }],
            0
        ),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("overflow"), "{}", last_error());
    assert_eq!(w(&[good], 0x80), KVR_ERR_INVALID_ARGUMENT);
    assert_eq!(
        kvr_tensors_write(p.as_ptr(), null(), 1, null(), 0, 0),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_tensors_write(p.as_ptr(), &good, 1, null(), 1, 0),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_tensors_write(null(), &good, 1, null(), 0, 0),
        KVR_ERR_INVALID_ARGUMENT
    );
    let reserved = cs("__kvr_pad_0__");
    assert_eq!(
        w(
            &[kvr_tensor {
                name: reserved.as_ptr(),
                ..good
            }],
            0
        ),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // Negative strides through the C struct: reversed vector.
    let v: Vec<u16> = (0..4).collect();
    let neg = [-1i64];
    let rev = kvr_tensor {
        dtype: KVR_DTYPE_U16,
        strides: neg.as_ptr(),
        // SAFETY: points at the last element; the reach [data-6, data+2) is inside `v`.
        data: unsafe { v.as_ptr().add(3) }.cast(),
        ..good
    };
    assert_eq!(w(&[rev], 0), KVR_OK, "{}", last_error());
    let f = open(&p);
    let mut out = [0u16; 4];
    let st = kvr_tensors_read_into(f, null(), out.as_mut_ptr().cast(), 8, null_mut());
    assert_eq!(st, KVR_OK);
    assert_eq!(out, [3, 2, 1, 0]);
    kvr_tensors_close(f);
}

#[test]
fn lazy_directory_through_the_c_api() {
    let mut dir = null_mut();
    assert_eq!(
        kvr_tensor_dir_open(null(), &mut dir),
        KVR_OK,
        "{}",
        last_error()
    );
    let mut p: *const c_char = null();
    assert_eq!(kvr_tensor_dir_path(dir, &mut p), KVR_OK);
    // SAFETY: valid until the handle is closed.
    let path = std::path::PathBuf::from(unsafe { CStr::from_ptr(p) }.to_str().unwrap());
    assert!(path.is_dir());
    let data: Vec<u8> = (0..=255).collect();
    let shape = [256u64];
    let name = cs("w");
    let t = kvr_tensor {
        name: name.as_ptr(),
        dtype: KVR_DTYPE_U8,
        rank: 1,
        shape: shape.as_ptr(),
        strides: null(),
        data: data.as_ptr().cast(),
    };
    let id = cs("item-1");
    assert_eq!(
        kvr_tensor_dir_put(dir, id.as_ptr(), &t, 1, null(), 0, 0),
        KVR_OK,
        "{}",
        last_error()
    );
    assert_eq!(
        kvr_tensor_dir_put(dir, null(), &t, 1, null(), 0, 0),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_tensor_dir_put(null(), id.as_ptr(), &t, 1, null(), 0, 0),
        KVR_ERR_INVALID_ARGUMENT
    );
    let mut lazy = null_mut();
    assert_eq!(
        kvr_tensor_dir_get_ref(dir, id.as_ptr(), null(), &mut lazy),
        KVR_OK
    );
    let mut missing = null_mut();
    assert_eq!(
        kvr_tensor_dir_get_ref(dir, cs("nope").as_ptr(), null(), &mut missing),
        KVR_ERR_NOT_FOUND
    );
    assert!(missing.is_null());
    kvr_tensor_dir_close(dir); // the reference keeps the directory
    assert!(path.is_dir());

    let mut buf = [0u8; 256];
    let mut n = 0usize;
    assert_eq!(
        kvr_tensor_lazy_materialize(lazy, buf.as_mut_ptr().cast::<c_void>(), 256, &mut n),
        KVR_OK
    );
    assert_eq!((n, &buf[..]), (256, &data[..]));
    assert_eq!(
        kvr_tensor_lazy_materialize(lazy, buf.as_mut_ptr().cast(), 10, &mut n),
        KVR_ERR_TOO_SMALL
    );
    assert_eq!(n, 256);
    // SAFETY: a plain C struct of integers and pointers; all zeroes is valid.
    let mut r: kvr_tensor_ref = unsafe { std::mem::zeroed() };
    assert_eq!(kvr_tensor_lazy_view(lazy, &mut r), KVR_OK);
    assert_eq!(r.nbytes, 256);
    assert_eq!(
        kvr_tensor_lazy_view(lazy, null_mut()),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_tensor_lazy_materialize(null(), buf.as_mut_ptr().cast(), 256, &mut n),
        KVR_ERR_INVALID_ARGUMENT
    );
    kvr_tensor_lazy_free(lazy);
    kvr_tensor_lazy_free(null_mut());
    assert!(!path.exists(), "deleted with the last reference");

    // Cleanup while a reference exists: later materialize is CLOSED, not a crash.
    assert_eq!(kvr_tensor_dir_open(null(), &mut dir), KVR_OK);
    assert_eq!(
        kvr_tensor_dir_put(dir, id.as_ptr(), &t, 1, null(), 0, 0),
        KVR_OK
    );
    assert_eq!(
        kvr_tensor_dir_get_ref(dir, id.as_ptr(), name.as_ptr(), &mut lazy),
        KVR_OK
    );
    assert_eq!(kvr_tensor_dir_cleanup(dir), KVR_OK);
    assert_eq!(
        kvr_tensor_lazy_materialize(lazy, buf.as_mut_ptr().cast(), 256, &mut n),
        KVR_ERR_CLOSED
    );
    assert_eq!(kvr_tensor_lazy_view(lazy, &mut r), KVR_ERR_CLOSED);
    assert_eq!(
        kvr_tensor_dir_get_ref(dir, id.as_ptr(), null(), &mut missing),
        KVR_ERR_CLOSED
    );
    assert_eq!(kvr_tensor_dir_cleanup(null()), KVR_ERR_INVALID_ARGUMENT);
    kvr_tensor_lazy_free(lazy);
    kvr_tensor_dir_close(dir);
    kvr_tensor_dir_close(null_mut());
}

#[test]
fn region_export_import_through_the_c_api() {
    use kvr::ffi::region::*;
    let dir = tempfile::tempdir().unwrap();
    let d = cs(dir.path().to_str().unwrap());
    let open_region = |name: &CString, page: u64| {
        // SAFETY: a plain C struct of integers and pointers; all zeroes is valid.
        let mut cfg: kvr_region_config = unsafe { std::mem::zeroed() };
        cfg.struct_size = std::mem::size_of::<kvr_region_config>() as u32;
        assert_eq!(kvr_region_config_default(&mut cfg), KVR_OK);
        cfg.name = name.as_ptr();
        cfg.dir = d.as_ptr();
        cfg.num_blocks = 4;
        cfg.cpu_page_size = page;
        cfg.rank = KVR_RANK_SCHEDULER;
        let mut r = null_mut();
        assert_eq!(kvr_region_open(&cfg, &mut r), KVR_OK, "{}", last_error());
        r
    };
    let (a, b, c) = (cs("a"), cs("b"), cs("c"));
    let ra = open_region(&a, 4096);
    // SAFETY: a plain C struct of integers and pointers; all zeroes is valid.
    let mut v: kvr_view = unsafe { std::mem::zeroed() };
    assert_eq!(kvr_region_row_view(ra, &mut v), KVR_OK);
    // SAFETY: block 2 lies inside the region's mapping.
    unsafe { std::ptr::write_bytes(v.base.add(2 * v.row_stride as usize), 0xab, 4096) };
    let file = cs(dir.path().join("e.safetensors").to_str().unwrap());
    let ids = [2u64];
    assert_eq!(
        kvr_region_export(ra, ids.as_ptr(), 1, file.as_ptr(), 0),
        KVR_OK,
        "{}",
        last_error()
    );
    assert_eq!(
        kvr_region_export(ra, ids.as_ptr(), 0, file.as_ptr(), 0),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_region_export(ra, null(), 1, file.as_ptr(), 0),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_region_export(null(), ids.as_ptr(), 1, file.as_ptr(), 0),
        KVR_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        kvr_region_export(ra, [9u64].as_ptr(), 1, file.as_ptr(), 0),
        KVR_ERR_INVALID_ARGUMENT
    );
    let rb = open_region(&b, 4096);
    let mut count = 0usize;
    assert_eq!(
        kvr_region_import(rb, file.as_ptr(), &mut count),
        KVR_OK,
        "{}",
        last_error()
    );
    assert_eq!(count, 1);
    // SAFETY: a plain C struct of integers and pointers; all zeroes is valid.
    let mut vb: kvr_view = unsafe { std::mem::zeroed() };
    assert_eq!(kvr_region_row_view(rb, &mut vb), KVR_OK);
    // SAFETY: inside the mapping.
    assert_eq!(unsafe { *vb.base.add(2 * 4096 + 4095) }, 0xab);
    let rc = open_region(&c, 8192);
    assert_eq!(
        kvr_region_import(rc, file.as_ptr(), null_mut()),
        KVR_ERR_LAYOUT_MISMATCH
    );
    assert_eq!(
        kvr_region_import(rc, null(), null_mut()),
        KVR_ERR_INVALID_ARGUMENT
    );
    for r in [ra, rb, rc] {
        kvr_region_close(r);
    }
}
