//! Tensor files: round trips for every dtype, strided inputs equal to their contiguous
//! copies byte for byte, interoperability with the `safetensors` crate, lazy reading.

mod common;

use std::collections::HashMap;
use std::path::Path;

use kvr::tensors::{nbytes, Dtype, TensorFile, TensorIn, WriteOptions, ALL_DTYPES};
use kvr::ErrorKind;

use common::Rng;

fn no_sync() -> WriteOptions {
    WriteOptions {
        align_4k: false,
        sync: false,
    }
}

/// The bytes of a strided view in C order, computed the obvious way.
fn materialize(shape: &[u64], strides: &[i64], elem: usize, data: &[u8], offset: usize) -> Vec<u8> {
    let n: u64 = shape.iter().product();
    let mut out = Vec::with_capacity(n as usize * elem);
    let mut idx = vec![0u64; shape.len()];
    for _ in 0..n {
        let off: i64 = offset as i64
            + idx
                .iter()
                .zip(strides)
                .map(|(&i, &s)| i as i64 * s * elem as i64)
                .sum::<i64>();
        out.extend_from_slice(&data[off as usize..off as usize + elem]);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

fn contiguous_strides(shape: &[u64]) -> Vec<i64> {
    let mut s = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1] as i64;
    }
    s
}

#[test]
fn every_dtype_round_trips_through_kvr_and_the_crate() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let shapes: Vec<Vec<u64>> = ALL_DTYPES
        .iter()
        .map(|d| match d.byte_size() {
            Some(_) => vec![3, 5],
            None => vec![4, 6], // packed: 24 elements, whole bytes for 4 and 6 bits
        })
        .collect();
    let datas: Vec<Vec<u8>> = ALL_DTYPES
        .iter()
        .zip(&shapes)
        .map(|(d, s)| rng.bytes(nbytes(*d, s).unwrap() as usize))
        .collect();
    let names: Vec<String> = ALL_DTYPES
        .iter()
        .map(|d| format!("t_{}", d.name()))
        .collect();
    let tensors: Vec<TensorIn> = ALL_DTYPES
        .iter()
        .enumerate()
        .map(|(i, d)| TensorIn::contiguous(&names[i], *d, &shapes[i], &datas[i]))
        .collect();
    for align in [false, true] {
        let path = dir.path().join(format!("all-{align}.safetensors"));
        let opts = WriteOptions {
            align_4k: align,
            sync: true,
        };
        kvr::tensors::write(&path, &tensors, &[("source", "kvr test")], opts).unwrap();
        let f = TensorFile::open(&path).unwrap();
        assert_eq!(f.len(), ALL_DTYPES.len());
        for (i, d) in ALL_DTYPES.iter().enumerate() {
            let t = f.get(Some(&names[i])).unwrap();
            assert_eq!(t.entry.dtype, *d);
            assert_eq!(t.entry.shape, shapes[i]);
            assert_eq!(t.data, &datas[i][..]);
            assert_eq!(f.tensors()[i].name, names[i], "file order is write order");
            if align {
                assert_eq!(t.entry.offset % 4096, 0, "{} not aligned", names[i]);
                assert_eq!(t.data.as_ptr() as usize % 4096, 0);
            }
            let mut buf = vec![0u8; datas[i].len() + 3];
            assert_eq!(
                f.read_into(Some(&names[i]), &mut buf).unwrap(),
                datas[i].len()
            );
            assert_eq!(&buf[..datas[i].len()], &datas[i][..]);
        }
        assert_eq!(f.metadata_get("source"), Some("kvr test"));
        // The reference parser reads the same.
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (i, d) in ALL_DTYPES.iter().enumerate() {
            let v = st.tensor(&names[i]).unwrap();
            assert_eq!(v.dtype(), d.to_st());
            assert_eq!(
                v.shape(),
                shapes[i].iter().map(|&x| x as usize).collect::<Vec<_>>()
            );
            assert_eq!(v.data(), &datas[i][..]);
        }
    }
    // Nothing but the two files is left in the directory (no temp files).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn crate_written_files_open_in_kvr() {
    let dir = tempfile::tempdir().unwrap();
    let a: Vec<u8> = (0..24u8).collect();
    let b: Vec<u8> = (0..6u8).rev().collect();
    let va = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3], &a).unwrap();
    let vb = safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![3], &b).unwrap();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.path().join("crate.safetensors");
    safetensors::serialize_to_file([("w", va), ("b", vb)], Some(meta), &path).unwrap();
    let f = TensorFile::open(&path).unwrap();
    assert_eq!(f.len(), 2);
    let w = f.get(Some("w")).unwrap();
    assert_eq!(
        (w.entry.dtype, &w.entry.shape[..], w.data),
        (Dtype::F32, &[2u64, 3][..], &a[..])
    );
    assert_eq!(f.get(Some("b")).unwrap().data, &b[..]);
    assert_eq!(f.metadata_get("format"), Some("pt"));
}

/// Writes `t` and the contiguous copy of it; the two files must be identical.
fn assert_same_file_as_contiguous(dir: &Path, t: TensorIn<'_>, case: &str) {
    let elem = t.dtype.byte_size().unwrap();
    let strides = t.strides.unwrap();
    let copy = materialize(t.shape, strides, elem, t.data, t.offset);
    let a = dir.join("strided.safetensors");
    let b = dir.join("contig.safetensors");
    for align in [false, true] {
        let opts = WriteOptions {
            align_4k: align,
            sync: false,
        };
        kvr::tensors::write(&a, &[t], &[("k", "v")], opts).unwrap();
        let c = TensorIn::contiguous(t.name, t.dtype, t.shape, &copy);
        kvr::tensors::write(&b, &[c], &[("k", "v")], opts).unwrap();
        let (fa, fb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(
            fa == fb,
            "case {case}: strided file differs from contiguous copy"
        );
        let f = TensorFile::open(&a).unwrap();
        assert_eq!(f.get(None).unwrap().data, &copy[..], "case {case}");
    }
}

#[test]
fn strided_inputs_write_the_same_file_as_their_contiguous_copies() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(12345);
    // Named cases first.
    let base: Vec<u8> = rng.bytes(8 * 10 * 4);
    // Transpose of a 8x10 F32 matrix.
    assert_same_file_as_contiguous(
        dir.path(),
        TensorIn {
            name: "t",
            dtype: Dtype::F32,
            shape: &[10, 8],
            strides: Some(&[1, 10]),
            data: &base,
            offset: 0,
        },
        "transpose",
    );
    // Rows 1,3,5 and columns 9,6,3,0 (negative step).
    assert_same_file_as_contiguous(
        dir.path(),
        TensorIn {
            name: "t",
            dtype: Dtype::F32,
            shape: &[3, 4],
            strides: Some(&[20, -3]),
            data: &base,
            offset: (10 + 9) * 4,
        },
        "slice with steps",
    );
    // A row slice (contiguous rows with a gap), as a KV block range of a bigger cache.
    assert_same_file_as_contiguous(
        dir.path(),
        TensorIn {
            name: "t",
            dtype: Dtype::BF16,
            shape: &[4, 6],
            strides: Some(&[20, 1]),
            data: &base,
            offset: 6,
        },
        "row slice",
    );
    // Random permutes, slices and steps over random dtypes.
    let byte_dtypes: Vec<Dtype> = ALL_DTYPES
        .iter()
        .copied()
        .filter(|d| d.byte_size().is_some())
        .collect();
    for case in 0..60 {
        let dtype = byte_dtypes[rng.below(byte_dtypes.len() as u64) as usize];
        let elem = dtype.byte_size().unwrap();
        let rank = 1 + rng.below(4) as usize;
        let full: Vec<u64> = (0..rank).map(|_| 1 + rng.below(7)).collect();
        let full_strides = contiguous_strides(&full);
        let n: u64 = full.iter().product();
        let data = rng.bytes(n as usize * elem);
        // Slice each dim: start, step (possibly negative), count.
        let mut shape = Vec::new();
        let mut strides = Vec::new();
        let mut offset = 0i64;
        for d in 0..rank {
            let step = [1i64, 2, 3, -1, -2][rng.below(5) as usize];
            let start = rng.below(full[d]) as i64;
            let room = if step > 0 {
                (full[d] as i64 - 1 - start) / step + 1
            } else {
                start / (-step) + 1
            };
            let count = 1 + rng.below(room as u64) as i64;
            shape.push(count as u64);
            strides.push(full_strides[d] * step);
            offset += start * full_strides[d];
        }
        // Permute the dims.
        let mut perm: Vec<usize> = (0..rank).collect();
        for i in (1..rank).rev() {
            perm.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let shape: Vec<u64> = perm.iter().map(|&p| shape[p]).collect();
        let strides: Vec<i64> = perm.iter().map(|&p| strides[p]).collect();
        assert_same_file_as_contiguous(
            dir.path(),
            TensorIn {
                name: "x",
                dtype,
                shape: &shape,
                strides: Some(&strides),
                data: &data,
                offset: offset as usize * elem,
            },
            &format!("random {case}: {dtype} shape {shape:?} strides {strides:?}"),
        );
    }
}

#[test]
fn large_strided_tensor_crosses_gather_chunks() {
    // A transposed 1500x1024 F32 matrix (6 MiB) crosses the 4 MiB gather buffer and ends
    // with a partial tile (1500 = 23 x 64 + 28).
    let dir = tempfile::tempdir().unwrap();
    let (r, c) = (1024u64, 1500u64);
    let data: Vec<u8> = (0..r * c).flat_map(|i| (i as u32).to_le_bytes()).collect();
    let t = TensorIn {
        name: "big",
        dtype: Dtype::F32,
        shape: &[c, r],
        strides: Some(&[1, c as i64]),
        data: &data,
        offset: 0,
    };
    let path = dir.path().join("big.safetensors");
    kvr::tensors::write(&path, &[t], &[], no_sync()).unwrap();
    let f = TensorFile::open(&path).unwrap();
    let v = f.get(None).unwrap();
    for (k, chunk) in v.data.chunks_exact(4).enumerate() {
        let (i, j) = (k as u64 / r, k as u64 % r);
        assert_eq!(
            u32::from_le_bytes(chunk.try_into().unwrap()) as u64,
            j * c + i
        );
    }
}

/// Files over two gather buffers are written by a background thread while the next buffer
/// is gathered: transposed, large contiguous and small tensors mixed give the same bytes
/// as writing their contiguous copies.
#[test]
fn files_over_two_gather_buffers_match_their_contiguous_copies() {
    let dir = tempfile::tempdir().unwrap();
    let (r, c) = (1024u64, 2500u64); // 10 MiB of F32, transposed
    let t_data: Vec<u8> = (0..r * c).flat_map(|i| (i as u32).to_le_bytes()).collect();
    let big: Vec<u8> = (0..5u32 << 20).map(|i| (i % 253) as u8).collect();
    let small: Vec<u8> = (0..3000u32).map(|i| (i % 7) as u8).collect();
    let (t_shape, t_strides, big_shape) = ([c, r], [1i64, c as i64], [5u64 << 20]);
    let tensors = [
        TensorIn::contiguous("small0", Dtype::U8, &[3000], &small),
        TensorIn {
            name: "transposed",
            dtype: Dtype::F32,
            shape: &t_shape,
            strides: Some(&t_strides),
            data: &t_data,
            offset: 0,
        },
        TensorIn::contiguous("big", Dtype::U8, &big_shape, &big),
        TensorIn::contiguous("small1", Dtype::U8, &[3000], &small),
    ];
    let t_copy = materialize(&t_shape, &t_strides, 4, &t_data, 0);
    let copies = [
        tensors[0],
        TensorIn::contiguous("transposed", Dtype::F32, &t_shape, &t_copy),
        tensors[2],
        tensors[3],
    ];
    for align in [false, true] {
        let opts = WriteOptions {
            align_4k: align,
            sync: true,
        };
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let len = kvr::tensors::write(&a, &tensors, &[("k", "v")], opts).unwrap();
        assert!(
            len > 8 << 20,
            "the background writer takes files over 8 MiB"
        );
        kvr::tensors::write(&b, &copies, &[("k", "v")], opts).unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
        let f = TensorFile::open(&a).unwrap();
        assert_eq!(f.get(Some("transposed")).unwrap().data, &t_copy[..]);
        assert_eq!(f.get(Some("big")).unwrap().data, &big[..]);
    }
}

#[test]
fn bad_writes_fail_clearly_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let d = [0u8; 64];
    let cases: Vec<(Vec<TensorIn>, &str, ErrorKind)> = vec![
        (
            vec![
                TensorIn::contiguous("a", Dtype::U8, &[4], &d[..4]),
                TensorIn::contiguous("a", Dtype::U8, &[4], &d[..4]),
            ],
            "duplicate tensor name 'a'",
            ErrorKind::InvalidArgument,
        ),
        (
            vec![TensorIn::contiguous(
                "big",
                Dtype::F32,
                &[u64::MAX / 2, 4],
                &d,
            )],
            "overflows",
            ErrorKind::InvalidArgument,
        ),
        (
            vec![TensorIn::contiguous("short", Dtype::F32, &[17], &d)],
            "64-byte buffer",
            ErrorKind::InvalidArgument,
        ),
        (
            vec![TensorIn {
                name: "neg",
                dtype: Dtype::U16,
                shape: &[4],
                strides: Some(&[-1]),
                data: &d,
                offset: 2,
            }],
            "reaches bytes [-4",
            ErrorKind::InvalidArgument,
        ),
        (
            vec![TensorIn {
                name: "packed",
                dtype: Dtype::F4,
                shape: &[4, 2],
                strides: Some(&[1, 4]),
                data: &d,
                offset: 0,
            }],
            "packed sub-byte",
            ErrorKind::InvalidArgument,
        ),
    ];
    for (tensors, msg, kind) in cases {
        let e = kvr::tensors::write(&path, &tensors, &[], no_sync()).unwrap_err();
        assert_eq!(e.kind(), kind, "{e}");
        assert!(e.to_string().contains(msg), "expected '{msg}' in: {e}");
        assert!(e.to_string().contains("bad.safetensors"), "{e}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "left a file: {e}"
        );
    }
    // Writing into a missing directory: clear I/O error, nothing created.
    let e = kvr::tensors::write(
        &dir.path().join("missing/x.safetensors"),
        &[TensorIn::contiguous("a", Dtype::U8, &[1], &d[..1])],
        &[],
        no_sync(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[test]
fn name_fallback_and_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.safetensors");
    let two = dir.path().join("two.safetensors");
    let d = [7u8; 8];
    kvr::tensors::write(
        &one,
        &[TensorIn::contiguous("only", Dtype::U8, &[8], &d)],
        &[],
        no_sync(),
    )
    .unwrap();
    kvr::tensors::write(
        &two,
        &[
            TensorIn::contiguous("k", Dtype::U8, &[4], &d[..4]),
            TensorIn::contiguous("v", Dtype::U8, &[4], &d[4..]),
        ],
        &[],
        no_sync(),
    )
    .unwrap();
    let f1 = TensorFile::open(&one).unwrap();
    assert_eq!(f1.get(None).unwrap().entry.name, "only");
    let f2 = TensorFile::open(&two).unwrap();
    let e = f2.get(None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("'k', 'v'"), "{e}");
    let e = f2.get(Some("x")).unwrap_err();
    assert!(
        e.to_string().contains("no tensor named 'x'") && e.to_string().contains("'k', 'v'"),
        "{e}"
    );
    let mut small = [0u8; 3];
    let e = f2.read_into(Some("k"), &mut small).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooSmall);
    assert!(e.to_string().contains("4 bytes"), "{e}");
    // Device copies report that CUDA is missing here (or succeed where it exists).
    // SAFETY: with CUDA absent nothing is dereferenced; where CUDA exists this is not reached.
    if kvr::cuda::available().is_err() {
        let e = unsafe { f2.read_into_device(Some("k"), 0x1000, 4, 0) }.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CudaUnavailable);
        eprintln!("skipped: device copy (no CUDA here): {e}");
    }
}

#[test]
fn read_into_direct_matches_the_mapping_for_every_size_and_destination() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(99);
    let sizes = [3 * 4096usize, 5000, 6, 0, 4096, 8191];
    let datas: Vec<Vec<u8>> = sizes.iter().map(|&n| rng.bytes(n)).collect();
    let names: Vec<String> = (0..sizes.len()).map(|i| format!("t{i}")).collect();
    let shapes: Vec<[u64; 1]> = sizes.iter().map(|&n| [n as u64]).collect();
    for align_4k in [true, false] {
        let p = dir.path().join(format!("d{align_4k}.safetensors"));
        let tensors: Vec<TensorIn> = (0..sizes.len())
            .map(|i| TensorIn::contiguous(&names[i], Dtype::U8, &shapes[i], &datas[i]))
            .collect();
        let opts = WriteOptions {
            align_4k,
            sync: false,
        };
        kvr::tensors::write(&p, &tensors, &[], opts).unwrap();
        let f = TensorFile::open(&p).unwrap();
        let mut aligned = kvr::io::AlignedBuf::new(4 * 4096).unwrap();
        let mut plain = vec![0u8; 4 * 4096 + 1];
        for (i, name) in names.iter().enumerate() {
            let n = f
                .read_into_direct(Some(name), aligned.as_mut_slice())
                .unwrap();
            assert_eq!(&aligned.as_slice()[..n], &datas[i][..], "{name} aligned");
            let n = f.read_into_direct(Some(name), &mut plain[1..]).unwrap();
            assert_eq!(&plain[1..1 + n], &datas[i][..], "{name} unaligned");
        }
        let e = f
            .read_into_direct(Some("t0"), &mut plain[..100])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooSmall);
        assert_eq!(
            f.read_into_direct(Some("nope"), &mut plain)
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
    }
}

#[test]
fn transposes_of_2_and_4_byte_elements_take_every_edge_of_the_register_blocks() {
    // Sizes around the 8x8 (2-byte) and 4x4 (4-byte) register blocks and the 64-row tile,
    // flipped (negative strides) or not, from an offset inside a bigger buffer.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(777);
    for dtype in [Dtype::F16, Dtype::F32] {
        let elem = dtype.byte_size().unwrap();
        for (r, c) in [
            (8u64, 8u64),
            (9, 17),
            (37, 83),
            (64, 130),
            (130, 9),
            (3, 70),
        ] {
            let data = rng.bytes((r * c) as usize * elem + 64);
            for flip in [false, true] {
                // The transpose of an r x c matrix at byte 64: shape [c, r].
                let (strides, offset) = if flip {
                    // Rows in reverse order: element [i, j] at (r-1-j)*c + i.
                    (vec![1i64, -(c as i64)], 64 + ((r - 1) * c) as usize * elem)
                } else {
                    (vec![1i64, c as i64], 64)
                };
                assert_same_file_as_contiguous(
                    dir.path(),
                    TensorIn {
                        name: "t",
                        dtype,
                        shape: &[c, r],
                        strides: Some(&strides),
                        data: &data,
                        offset,
                    },
                    &format!("{dtype} transpose of {r}x{c}, flipped {flip}"),
                );
            }
        }
    }
}

#[test]
fn lookups_agree_before_and_after_the_name_index_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("n.safetensors");
    let data: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 4]).collect();
    let names = ["e", "d", "c", "b", "a"];
    let tensors: Vec<TensorIn> = names
        .iter()
        .zip(&data)
        .map(|(n, d)| TensorIn::contiguous(n, Dtype::U8, &[4], d))
        .collect();
    kvr::tensors::write(&p, &tensors, &[], no_sync()).unwrap();
    let f = TensorFile::open(&p).unwrap();
    for round in 0..3 {
        for (i, n) in names.iter().enumerate() {
            assert_eq!(f.get(Some(n)).unwrap().data, &data[i][..], "{round} {n}");
        }
        assert_eq!(f.get(Some("zz")).unwrap_err().kind(), ErrorKind::NotFound);
    }
}

#[test]
fn headers_longer_than_the_first_read_open() {
    // ~3000 entries of ~60 header bytes each: a header well past the 64 KiB first read.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big_header.safetensors");
    let n = 3000usize;
    let names: Vec<String> = (0..n)
        .map(|i| format!("layer.{i}.attention.weight"))
        .collect();
    let data: Vec<[u8; 4]> = (0..n).map(|i| (i as u32).to_le_bytes()).collect();
    let tensors: Vec<TensorIn> = names
        .iter()
        .zip(&data)
        .map(|(nm, d)| TensorIn::contiguous(nm, Dtype::U32, &[1], d))
        .collect();
    kvr::tensors::write(&p, &tensors, &[("k", "v")], no_sync()).unwrap();
    let f = TensorFile::open(&p).unwrap();
    assert!(
        f.data_start() > 64 << 10,
        "header of {} bytes",
        f.data_start()
    );
    assert_eq!(f.len(), n);
    assert_eq!(f.metadata_get("k"), Some("v"));
    let mut dst = [0u8; 4];
    for i in [0, 1, n / 2, n - 1] {
        assert_eq!(f.read_into(Some(&names[i]), &mut dst).unwrap(), 4);
        assert_eq!(dst, data[i]);
        assert_eq!(f.get(Some(&names[i])).unwrap().data, &data[i][..]);
    }
    // Truncated inside the header: a clear Corrupt error, not a short read.
    let bytes = std::fs::read(&p).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..70_000]).unwrap();
    let e = TensorFile::open(&cut).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
}
