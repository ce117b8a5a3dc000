//! Whole engine keys, vectored (segmented) blocks and per-key lookups in the fs store and the
//! slot file, and the version-1 files written before whole keys.

use std::path::Path;
use std::time::Instant;

use kvr::disk::RawSegment;
use kvr::fs::{LoadItem, StoreItem};
use kvr::io::{AlignedBuf, DirectIo};
use kvr::{DiskConfig, ErrorKind, FsConfig, FsStore, Key, SlotFile};

fn fs_open(root: &Path, direct: DirectIo) -> FsStore {
    let mut c = FsConfig::new(root, "ns");
    c.direct_io = direct;
    c.read_threads = 2;
    c.write_threads = 2;
    FsStore::open(&c).unwrap()
}

fn disk_open(path: &Path, direct: DirectIo) -> SlotFile {
    let mut c = DiskConfig::new(path, 1 << 20, 8);
    c.direct_io = direct;
    c.io_threads = 2;
    SlotFile::open(&c).unwrap()
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| ((i * 7 + seed as usize * 13) % 251) as u8)
        .collect()
}

/// Engine keys of several shapes: vLLM (32-byte hash + group), SGLang (64 hex chars), short.
fn engine_keys() -> Vec<Vec<u8>> {
    let mut vllm = vec![0xabu8; 32];
    vllm.extend_from_slice(&3u32.to_le_bytes());
    vec![
        vllm,
        b"5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e".to_vec(),
        b"x".to_vec(),
        vec![0x11; 16],
        vec![0xfe; 256],
    ]
}

/// A layout of `n` bytes as segments of the given lengths inside one aligned buffer.
fn split<'a>(buf: &'a [u8], lens: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    for &l in lens {
        out.push(&buf[at..at + l]);
        at += l;
    }
    assert_eq!(at, buf.len());
    out
}

fn split_mut<'a>(buf: &'a mut [u8], lens: &[usize]) -> Vec<&'a mut [u8]> {
    let mut out = Vec::new();
    let mut rest = buf;
    for &l in lens {
        let (a, b) = rest.split_at_mut(l);
        out.push(a);
        rest = b;
    }
    assert!(rest.is_empty());
    out
}

const LAYOUTS: &[&[usize]] = &[
    &[65536],
    &[32768, 32768],
    &[4096; 16],
    &[100, 65436],
    &[4096, 5000, 56440],
    &[1; 7],
];

#[test]
fn fs_whole_keys_and_segments_round_trip() {
    for direct in [DirectIo::Off, DirectIo::Auto] {
        let d = tempfile::tempdir().unwrap();
        let s = fs_open(d.path(), direct);
        for (i, key) in engine_keys().iter().enumerate() {
            for (j, lens) in LAYOUTS.iter().enumerate() {
                let total: usize = lens.iter().sum();
                let mut src = AlignedBuf::new(total).unwrap();
                src.as_mut_slice()[..total].copy_from_slice(&pattern((i * 10 + j) as u8, total));
                // One block per layout: the key's last byte names the layout.
                let mut k = key.clone();
                *k.last_mut().unwrap() = j as u8;
                let src = &src.as_slice()[..total];
                s.store_segments(&k, &split(src, lens), None).unwrap();
                // Load with every layout of the same total: the bytes are the same.
                for out_lens in LAYOUTS.iter().filter(|l| l.iter().sum::<usize>() == total) {
                    let mut dst = AlignedBuf::new(total).unwrap();
                    let dst = &mut dst.as_mut_slice()[..total];
                    let mut segs = split_mut(dst, out_lens);
                    assert_eq!(s.load_segments(&k, &mut segs).unwrap(), total as u64);
                    assert!(dst == src, "key {i} layout {j} -> {out_lens:?}");
                }
                // A total of another length is a layout mismatch; the block stays.
                if total > 1 {
                    let mut small = vec![0u8; total - 1];
                    let e = s.load_segments(&k, &mut [&mut small]).unwrap_err();
                    assert_eq!(e.kind(), ErrorKind::LayoutMismatch);
                }
            }
        }
        // Bad inputs.
        let mut one = [0u8; 4];
        for bad in [&b""[..], &[0u8; 257][..]] {
            let e = s.store_segments(bad, &[b"abcd"], None).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            let e = s.load_segments(bad, &mut [&mut one]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        }
        let e = s.store_segments(b"k", &[b"ab", b""], None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let e = s.store_segments(b"k", &[], None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let e = s.load_segments(b"k", &mut []).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        // A 16-byte key is the same block as the `Key` API's.
        let k16 = [0x42u8; 16];
        s.store_segments(&k16, &[b"ab", b"cd"], None).unwrap();
        let mut out = [0u8; 4];
        s.load(&Key(k16), &mut out).unwrap();
        assert_eq!(&out, b"abcd");
        assert_eq!(s.block_path_of(&k16), s.block_path(&Key(k16)));
    }
}

#[test]
fn fs_async_items_with_segments() {
    let d = tempfile::tempdir().unwrap();
    let s = fs_open(d.path(), DirectIo::Auto);
    let keys = engine_keys();
    let data: Vec<Vec<u8>> = (0..keys.len())
        .map(|i| pattern(i as u8, 9000 + i))
        .collect();
    let segs: Vec<Vec<RawSegment>> = data
        .iter()
        .map(|d| {
            let (a, b) = d.split_at(1234);
            [a, b]
                .iter()
                .map(|p| RawSegment {
                    ptr: p.as_ptr().cast_mut(),
                    len: p.len(),
                })
                .collect()
        })
        .collect();
    let items: Vec<StoreItem> = keys
        .iter()
        .zip(&segs)
        .map(|(k, s)| StoreItem {
            key: k,
            segments: s,
        })
        .collect();
    // SAFETY: `data` outlives the job, waited on below.
    let job = unsafe { s.submit_store_items(&items) };
    let p = job.wait(None).unwrap();
    assert_eq!((p.done, p.failed), (keys.len(), 0));
    let mut outs: Vec<Vec<u8>> = data.iter().map(|d| vec![0u8; d.len()]).collect();
    let out_segs: Vec<Vec<RawSegment>> = outs
        .iter_mut()
        .map(|o| {
            let (a, b) = o.split_at_mut(4096);
            vec![
                RawSegment {
                    ptr: a.as_mut_ptr(),
                    len: a.len(),
                },
                RawSegment {
                    ptr: b.as_mut_ptr(),
                    len: b.len(),
                },
            ]
        })
        .collect();
    let loads: Vec<LoadItem> = keys
        .iter()
        .zip(&out_segs)
        .map(|(k, s)| LoadItem {
            key: k,
            segments: s,
        })
        .collect();
    // SAFETY: `outs` outlives the job and is untouched until it completes.
    let job = unsafe { s.submit_load_items(&loads) };
    let p = job.wait(None).unwrap();
    assert_eq!((p.done, p.failed), (keys.len(), 0));
    drop(job);
    assert_eq!(outs, data);
    // A NULL or empty segment fails its item only.
    let bad = [RawSegment {
        ptr: std::ptr::null_mut(),
        len: 4,
    }];
    let empty = [RawSegment {
        ptr: outs[0].as_mut_ptr(),
        len: 0,
    }];
    let items = [
        StoreItem {
            key: b"a",
            segments: &bad,
        },
        StoreItem {
            key: b"b",
            segments: &empty,
        },
        StoreItem {
            key: b"c",
            segments: &[],
        },
        StoreItem {
            key: &[],
            segments: &segs[0],
        },
    ];
    // SAFETY: nothing valid is read.
    let job = unsafe { s.submit_store_items(&items) };
    let p = job.wait(None).unwrap();
    assert_eq!(p.failed, 4);
    for i in 0..4 {
        assert_eq!(job.item(i).unwrap_err().kind(), ErrorKind::InvalidArgument);
    }
}

/// Two different long keys forced to the same file name or slot never load each other's
/// bytes. The name hook is process-wide; it gives every other key its natural name, so the
/// tests running alongside are unaffected.
#[test]
fn colliding_names_never_serve_another_keys_bytes() {
    fn same_name(ns: &[u8], key: &[u8]) -> Key {
        if key.starts_with(b"collide-") {
            Key([0xc0; 16])
        } else {
            kvr::key::natural_name(ns, key)
        }
    }
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (
        b"collide-aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        b"collide-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    );
    let fs = fs_open(&d.path().join("fs"), DirectIo::Off);
    let disk = disk_open(&d.path().join("slots"), DirectIo::Off);
    kvr::key::testing::set_name_hook(Some(same_name));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_eq!(fs.block_path_of(a), fs.block_path_of(b));
        fs.store_segments(a, &[b"bytes of a"], None).unwrap();
        // The name is taken: b is not stored (a cache miss later), a's bytes stay a's.
        fs.store_segments(b, &[b"bytes of b"], None).unwrap();
        let mut out = [0u8; 10];
        let e = fs.load_segments(b, &mut [&mut out]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert!(fs.block_path_of(a).exists(), "a colliding block is kept");
        fs.load_segments(a, &mut [&mut out]).unwrap();
        assert_eq!(&out, b"bytes of a");

        disk.write_segments(a, &[b"bytes of a"], b"ma").unwrap();
        let mut meta = [0u8; 8];
        let e = disk
            .read_segments(b, &mut [&mut out], &mut meta)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        // Writing b takes the slot of the name: a is gone, b reads b.
        disk.write_segments(b, &[b"bytes of b"], b"mb").unwrap();
        let e = disk
            .read_segments(a, &mut [&mut out], &mut meta)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        let n = disk.read_segments(b, &mut [&mut out], &mut meta).unwrap();
        assert_eq!(
            (&out, n.meta_len, &meta[..2]),
            (b"bytes of b", 2, &b"mb"[..])
        );
        assert_eq!(disk.stats().corrupt_dropped, 0);
    }));
    kvr::key::testing::set_name_hook(None);
    result.unwrap();
}

#[test]
fn disk_whole_keys_and_segments_round_trip() {
    for direct in [DirectIo::Off, DirectIo::Auto] {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("slots");
        let disk = disk_open(&path, direct);
        let keys = engine_keys();
        for (i, key) in keys.iter().enumerate() {
            let lens = LAYOUTS[i % LAYOUTS.len()];
            let total: usize = lens.iter().sum();
            let mut src = AlignedBuf::new(total).unwrap();
            src.as_mut_slice()[..total].copy_from_slice(&pattern(i as u8, total));
            let src = &src.as_slice()[..total];
            let meta = vec![i as u8; kvr::disk::max_meta(key.len())];
            disk.write_segments(key, &split(src, lens), &meta).unwrap();
            let too_much = vec![0u8; meta.len() + 1];
            let e = disk.write_segments(key, &[src], &too_much).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::TooLarge);
        }
        drop(disk);
        // Reopen: recovery finds every entry by name; reads compare the whole key.
        let disk = disk_open(&path, direct);
        assert_eq!(disk.stats().entries, keys.len() as u64);
        for (i, key) in keys.iter().enumerate() {
            let total: usize = LAYOUTS[i % LAYOUTS.len()].iter().sum();
            let mut dst = AlignedBuf::new(total).unwrap();
            let dst = &mut dst.as_mut_slice()[..total];
            let mut meta = vec![0u8; 4096];
            let n = disk
                .read_segments(
                    key,
                    &mut split_mut(dst, &[total / 2, total - total / 2]),
                    &mut meta,
                )
                .unwrap_or_else(|e| panic!("key {i}: {e}"));
            assert_eq!(n.len, total as u64);
            assert!(dst == &pattern(i as u8, total)[..], "key {i}");
            assert!(meta[..n.meta_len as usize].iter().all(|&b| b == i as u8));
            let mut wrong = vec![0u8; total + 1];
            let e = disk
                .read_segments(key, &mut [&mut wrong], &mut meta)
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::LayoutMismatch);
        }
        let report = kvr::disk::verify(&path, 2);
        assert!(report.is_err(), "verify refuses while owned");
        drop(disk);
        let report = kvr::disk::verify(&path, 2).unwrap();
        assert_eq!((report.checked, report.bad.len()), (keys.len() as u64, 0));
    }
}

#[test]
fn lookups_answer_per_key_and_find_other_processes_blocks() {
    let d = tempfile::tempdir().unwrap();
    let fs = fs_open(d.path(), DirectIo::Off);
    let keys: Vec<Vec<u8>> = (0..1000u32)
        .map(|i| format!("engine-key-{i:08}-{}", "p".repeat(20)).into_bytes())
        .collect();
    for k in keys.iter().step_by(2) {
        fs.store_segments(k, &[b"data"], None).unwrap();
    }
    let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    let mut present = vec![9u8; refs.len()];
    let t = Instant::now();
    let hits = fs.lookup(&refs, &mut present).unwrap();
    let first = t.elapsed();
    assert_eq!(hits, 500);
    for (i, p) in present.iter().enumerate() {
        assert_eq!(*p, (i % 2 == 0) as u8, "key {i}");
    }
    // Only index hits: every key present.
    let evens: Vec<&[u8]> = refs.iter().step_by(2).copied().collect();
    let mut p2 = vec![0u8; evens.len()];
    let t = Instant::now();
    assert_eq!(fs.lookup(&evens, &mut p2).unwrap(), 500);
    eprintln!(
        "fs lookup of 1000 keys (500 stat misses): {first:?}; 500 index hits: {:?}",
        t.elapsed()
    );
    // Another process's store is found by stat, then known.
    let other = fs_open(d.path(), DirectIo::Off);
    other
        .store_segments(b"from another process", &[b"x"], None)
        .unwrap();
    let mut p = [0u8; 2];
    assert_eq!(
        fs.lookup(&[b"from another process", b"absent"], &mut p)
            .unwrap(),
        1
    );
    assert_eq!(p, [1, 0]);
    // Bad keys are absent; mismatched lengths are refused.
    assert_eq!(fs.lookup(&[b"", &[0u8; 257]], &mut p).unwrap(), 0);
    assert!(fs.lookup(&[b"a"], &mut p).is_err());

    let disk = disk_open(&d.path().join("slots"), DirectIo::Off);
    for k in refs.iter().take(8) {
        disk.write_segments(k, &[b"data"], b"").unwrap();
    }
    let mut present = vec![0u8; refs.len()];
    let t = Instant::now();
    assert_eq!(disk.lookup(&refs, &mut present).unwrap(), 8);
    eprintln!("slot file lookup of 1000 keys: {:?}", t.elapsed());
    assert!(present[..8].iter().all(|&p| p == 1) && present[8..].iter().all(|&p| p == 0));
}

/// Files written by the version-1 code (tests/fixtures/v1, see its README) stay readable
/// where they are, and new stores next to them work.
#[test]
fn version_1_files_stay_readable() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    let d = tempfile::tempdir().unwrap();
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    };
    for rel in [
        "fs/ns/00/00112233445566778899aabbccddeeff.kvb",
        "fs/ns/ab/abababababababababababababababab.kvb",
        "slots.kvd",
    ] {
        copy(&fixtures.join(rel), &d.path().join(rel));
    }
    let fs = fs_open(&d.path().join("fs"), DirectIo::Off);
    assert_eq!(fs.stats().blocks, 2);
    let k1 = Key::from_hex("00112233445566778899aabbccddeeff").unwrap();
    let mut out = vec![0u8; 5000];
    fs.load(&k1, &mut out).unwrap();
    assert_eq!(out, pattern(1, 5000));
    // The same block through the whole-key API, in segments.
    let (a, b) = out.split_at_mut(77);
    fs.load_segments(&k1.0, &mut [a, b]).unwrap();
    assert_eq!(out, pattern(1, 5000));
    let mut out = vec![0u8; 8192];
    fs.load_segments(&[0xab; 16], &mut [&mut out]).unwrap();
    assert_eq!(out, pattern(2, 8192));
    let mut present = [0u8; 3];
    fs.lookup(&[&k1.0, &[0xab; 16], b"new"], &mut present)
        .unwrap();
    assert_eq!(present, [1, 1, 0]);
    fs.store_segments(b"new", &[b"v2 block"], None).unwrap();
    let report = kvr::fs::maintenance::verify(&d.path().join("fs"), None, 2, false).unwrap();
    assert_eq!(report.bad.len(), 0);

    let path = d.path().join("slots.kvd");
    let mut c = DiskConfig::new(&path, 4096, 4);
    c.direct_io = DirectIo::Off;
    let disk = SlotFile::open(&c).unwrap();
    assert_eq!(disk.stats().entries, 2);
    let mut out = vec![0u8; 3000];
    let mut meta = [0u8; 16];
    let n = disk.read(&k1, &mut out, &mut meta).unwrap();
    assert_eq!(
        (n.len, &meta[..n.meta_len as usize]),
        (3000, &b"meta-1"[..])
    );
    assert_eq!(out, pattern(3, 3000));
    let mut out = vec![0u8; 4096];
    disk.read_segments(&[0xcd; 16], &mut [&mut out], &mut [])
        .unwrap();
    assert_eq!(out, pattern(4, 4096));
    assert!(
        !disk.contains(&Key([0xee; 16])),
        "the removed entry stays removed"
    );
    // A version-2 entry next to them, and a reopen that keeps all three.
    disk.write_segments(b"a long engine key, not 16 bytes", &[b"v2"], b"m")
        .unwrap();
    drop(disk);
    let disk = SlotFile::open(&c).unwrap();
    assert_eq!(disk.stats().entries, 3);
    let mut v = [0u8; 2];
    disk.read_segments(b"a long engine key, not 16 bytes", &mut [&mut v], &mut meta)
        .unwrap();
    assert_eq!(&v, b"v2");
}
