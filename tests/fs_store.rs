//! fs block store: round trips, file format, corruption, capacity, async batches, C ABI.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use kvr::io::{probe, AlignedBuf, DirectIo};
use kvr::{
    Dtype, ErrorKind, FsConfig, FsStore, Key, LoadRequest, StoreRequest, Stored, TensorSpec,
    WriteMode,
};

use common::files::walk;
use common::{fill_content, key};

const LENGTHS: [usize; 6] = [1, 4095, 4096, 4097, 64 * 1024, 2 * 1024 * 1024 + 1];

fn open(dir: &Path, mode: DirectIo) -> FsStore {
    let mut c = FsConfig::new(dir, "model-x_tp1");
    c.direct_io = mode;
    c.read_threads = 4;
    c.write_threads = 4;
    FsStore::open(&c).unwrap()
}

fn modes(dir: &Path) -> Vec<DirectIo> {
    let mut m = vec![DirectIo::Off];
    if probe(dir) {
        m.push(DirectIo::On);
    } else {
        println!(
            "skipping direct-I/O round trips: {} refuses O_DIRECT",
            dir.display()
        );
    }
    m
}

/// A buffer of `len` bytes whose start is 4096-aligned (`aligned`) or 1 byte past it.
struct TestBuf {
    buf: AlignedBuf,
    off: usize,
    len: usize,
}

impl TestBuf {
    fn new(len: usize, aligned: bool) -> Self {
        let off = if aligned { 0 } else { 1 };
        TestBuf {
            buf: AlignedBuf::new(len + off).unwrap(),
            off,
            len,
        }
    }
    fn get(&self) -> &[u8] {
        &self.buf.as_slice()[self.off..self.off + self.len]
    }
    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut_slice()[self.off..self.off + self.len]
    }
}

#[test]
fn round_trips_all_lengths_alignments_and_modes() {
    let d = tempfile::tempdir().unwrap();
    let mut i = 0;
    for mode in modes(d.path()) {
        let s = open(d.path(), mode);
        assert_eq!(s.direct_io(), mode == DirectIo::On);
        for len in LENGTHS {
            for src_aligned in [true, false] {
                for dst_aligned in [true, false] {
                    i += 1;
                    let k = key(i);
                    let mut src = TestBuf::new(len, src_aligned);
                    fill_content(&k, src.get_mut());
                    assert_eq!(s.store(&k, src.get()).unwrap(), Stored::Written);
                    let size = std::fs::metadata(s.block_path(&k)).unwrap().len();
                    assert_eq!(size, 4096 + len as u64, "file of {len} bytes, exact size");
                    let mut dst = TestBuf::new(len, dst_aligned);
                    dst.get_mut().fill(0xee);
                    assert_eq!(s.load(&k, dst.get_mut()).unwrap(), len as u64);
                    assert!(
                        dst.get() == src.get(),
                        "{mode:?} len {len} src_aligned {src_aligned} dst_aligned {dst_aligned}"
                    );
                }
            }
        }
        let st = s.stats();
        assert_eq!(st.corrupt_dropped, 0);
        assert_eq!(st.hits, st.stores);
    }
    // Blocks written in one mode read back in the other.
    let a = open(d.path(), DirectIo::Off);
    let st = a.stats();
    assert_eq!(st.blocks, i);
    let k = key(i);
    let len = *LENGTHS.last().unwrap();
    let mut want = vec![0u8; len];
    fill_content(&k, &mut want);
    let mut got = vec![0u8; len];
    a.load(&k, &mut got).unwrap();
    assert!(got == want);
}

#[test]
fn block_files_are_valid_safetensors() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path(), DirectIo::Auto);
    let k = key(7);
    let mut data = vec![0u8; 4097];
    fill_content(&k, &mut data);
    s.store(&k, &data).unwrap();
    let bytes = std::fs::read(s.block_path(&k)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("block").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::U8);
    assert_eq!(t.shape(), &[4097]);
    assert_eq!(t.data(), &data[..]);
    let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!((8 + n) % 4096, 0, "data starts page-aligned");
    let m = meta.metadata().as_ref().unwrap();
    assert_eq!(m["format"], "kvr.block");
    assert_eq!(m["version"], "1");
    assert_eq!(m["key"], k.to_hex());
    assert_eq!(m["payload_len"], "4097");
    assert_eq!(
        m["xxh3_64"],
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&data))
    );

    // Caller dtype and shape.
    let k2 = key(8);
    let data = vec![3u8; 2 * 8 * 128 * 2];
    let spec = TensorSpec {
        dtype: Dtype::BF16,
        shape: vec![2, 8, 128],
    };
    s.store_tensor(&k2, &data, &spec).unwrap();
    let bytes = std::fs::read(s.block_path(&k2)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("block").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::BF16);
    assert_eq!(t.shape(), &[2, 8, 128]);
    assert_eq!(t.data(), &data[..]);
    let mut back = vec![0u8; data.len()];
    s.load(&k2, &mut back).unwrap();
    assert_eq!(back, data);
    let bad = TensorSpec {
        dtype: Dtype::F32,
        shape: vec![3],
    };
    let e = s.store_tensor(&key(9), &data, &bad).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(!s.contains(&key(9)));
}

#[test]
fn paths_namespaces_and_ranks() {
    let d = tempfile::tempdir().unwrap();
    let mut c = FsConfig::new(d.path(), "ns");
    c.rank = Some(3);
    let s = FsStore::open(&c).unwrap();
    // Open creates all 256 fan-out directories (00..ff), so stores never mkdir under load.
    let fanout: Vec<String> = std::fs::read_dir(s.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(fanout.len(), 256);
    assert!(fanout
        .iter()
        .all(|n| n.len() == 2 && u8::from_str_radix(n, 16).is_ok()));
    let k = Key::from_hex("abcdef00112233445566778899aabbcc").unwrap();
    s.store(&k, b"r3").unwrap();
    assert!(d
        .path()
        .join("ns/r3/ab/abcdef00112233445566778899aabbcc.kvb")
        .is_file());
    c.rank = Some(4);
    let other = FsStore::open(&c).unwrap();
    assert!(!other.contains(&k), "ranks never collide");
    for bad in ["", "a/b", "..", "x/../y", ".hidden"] {
        let c = FsConfig::new(d.path(), bad);
        let e = FsStore::open(&c).err().expect("bad namespace rejected");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
    }
}

fn expect_corrupt(s: &FsStore, k: &Key, len: usize, what: &str) {
    let before = s.stats().corrupt_dropped;
    let p = s.block_path(k);
    let mut out = vec![0u8; len];
    let e = s.load(k, &mut out).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{what}: {e}");
    assert!(
        e.to_string().contains(&p.display().to_string()),
        "{what}: path in {e}"
    );
    assert!(!p.exists(), "{what}: the bad file is removed");
    assert_eq!(s.stats().corrupt_dropped, before + 1, "{what}: counted");
    assert_eq!(s.load(k, &mut out).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn corruption_is_detected_dropped_and_counted() {
    let d = tempfile::tempdir().unwrap();
    for mode in modes(d.path()) {
        let s = open(d.path(), mode);
        let len = 64 * 1024 + 5;
        let mut data = vec![0u8; len];
        let base = if mode == DirectIo::On { 1000 } else { 0 };
        let mut store = |i: u64| {
            let k = key(base + i);
            fill_content(&k, &mut data);
            s.store(&k, &data).unwrap();
            k
        };
        // Flip one payload byte.
        let k = store(1);
        let p = s.block_path(&k);
        let mut b = std::fs::read(&p).unwrap();
        b[4096 + 1234] ^= 1;
        std::fs::write(&p, &b).unwrap();
        expect_corrupt(&s, &k, len, "flipped byte");
        // Flip the last byte (the tail page).
        let k = store(2);
        let p = s.block_path(&k);
        let mut b = std::fs::read(&p).unwrap();
        *b.last_mut().unwrap() ^= 0x80;
        std::fs::write(&p, &b).unwrap();
        expect_corrupt(&s, &k, len, "flipped tail byte");
        // Truncate.
        for cut in [4096 + 100, 4096, 100, 0] {
            let k = store(10 + cut as u64);
            let p = s.block_path(&k);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(cut as u64)
                .unwrap();
            expect_corrupt(&s, &k, len, &format!("truncated to {cut}"));
        }
        // Swap two files' names: each header names the other key.
        let (k1, k2) = (store(3), store(4));
        let (p1, p2) = (s.block_path(&k1), s.block_path(&k2));
        let tmp = p1.with_extension("swap");
        std::fs::rename(&p1, &tmp).unwrap();
        std::fs::rename(&p2, &p1).unwrap();
        std::fs::rename(&tmp, &p2).unwrap();
        expect_corrupt(&s, &k1, len, "swapped names (1)");
        expect_corrupt(&s, &k2, len, "swapped names (2)");
        // A file written for the wrong key (same length, valid format otherwise).
        let (k5, k6) = (store(5), key(base + 6));
        std::fs::create_dir_all(s.block_path(&k6).parent().unwrap()).unwrap();
        std::fs::copy(s.block_path(&k5), s.block_path(&k6)).unwrap();
        expect_corrupt(&s, &k6, len, "wrong key");
        // Garbage that is not a block at all, of the expected size.
        let k7 = key(base + 7);
        std::fs::create_dir_all(s.block_path(&k7).parent().unwrap()).unwrap();
        std::fs::write(s.block_path(&k7), vec![b'x'; 4096 + len]).unwrap();
        expect_corrupt(&s, &k7, len, "garbage");
        // The untouched block is still fine; a wrong caller length keeps it.
        let mut out = vec![0u8; len];
        s.load(&k5, &mut out).unwrap();
        let mut short = vec![0u8; len - 1];
        assert_eq!(
            s.load(&k5, &mut short).unwrap_err().kind(),
            ErrorKind::LayoutMismatch
        );
        assert!(s.contains(&k5));
    }
}

#[test]
fn verify_off_skips_only_the_checksum() {
    let d = tempfile::tempdir().unwrap();
    let mut c = FsConfig::new(d.path(), "ns");
    c.verify = false;
    let s = FsStore::open(&c).unwrap();
    let k = key(1);
    s.store(&k, &[5u8; 10000]).unwrap();
    let p = s.block_path(&k);
    let mut b = std::fs::read(&p).unwrap();
    b[4096] ^= 1;
    std::fs::write(&p, &b).unwrap();
    let mut out = vec![0u8; 10000];
    s.load(&k, &mut out).unwrap(); // not verified: the caller asked for speed
    assert_eq!(out[0], 4);
    let k2 = key(2);
    std::fs::create_dir_all(s.block_path(&k2).parent().unwrap()).unwrap();
    std::fs::copy(&p, s.block_path(&k2)).unwrap();
    assert_eq!(
        s.load(&k2, &mut out).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
}

fn dir_bytes(dir: &Path) -> (u64, usize) {
    let mut total = (0, 0);
    for e in walk(dir) {
        total.0 += std::fs::metadata(&e).unwrap().len();
        total.1 += 1;
    }
    total
}

#[test]
fn capacity_bounds_bytes_with_lru_eviction() {
    let d = tempfile::tempdir().unwrap();
    let len = 16 * 1024;
    let file = (4096 + len) as u64;
    let cap = 20 * file + 100;
    let mut c = FsConfig::new(d.path(), "ns");
    c.capacity = cap;
    let s = FsStore::open(&c).unwrap();
    let mut data = vec![0u8; len];
    let mut out = vec![0u8; len];
    for i in 0..60u64 {
        let k = key(i);
        fill_content(&k, &mut data);
        s.store(&k, &data).unwrap();
        // Keep block 0 hot: it must survive as the least recently used ones go.
        if i % 5 == 0 {
            s.load(&key(0), &mut out).unwrap();
        }
        let (bytes, _) = dir_bytes(s.dir());
        assert!(
            bytes <= cap,
            "after block {i}: {bytes} bytes on disk > {cap}"
        );
    }
    let st = s.stats();
    assert_eq!(st.blocks, 20);
    assert!(st.bytes <= cap);
    assert_eq!(st.evictions, 40);
    assert!(s.contains(&key(0)), "recently used block kept");
    assert!(!s.contains(&key(1)), "least recently used block evicted");
    assert!(s.contains(&key(59)));
    drop(s);
    // A smaller capacity at reopen: the scan rebuilds the order and evicts the oldest.
    c.capacity = 5 * file;
    let s = FsStore::open(&c).unwrap();
    assert_eq!(s.stats().blocks, 5);
    assert!(dir_bytes(s.dir()).0 <= c.capacity);
    assert!(s.contains(&key(59)));
    // A block bigger than the whole capacity is refused.
    let e = s.store(&key(1000), &vec![0u8; 7 * len]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge);
}

#[test]
fn eviction_does_not_break_an_open_reader() {
    // POSIX unlink semantics: a reader with the file open keeps reading the old inode.
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path(), DirectIo::Off);
    let k = key(1);
    s.store(&k, &[9u8; 8192]).unwrap();
    let f = std::fs::File::open(s.block_path(&k)).unwrap();
    s.remove(&k).unwrap();
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 8192];
    f.read_exact_at(&mut b, 4096).unwrap();
    assert_eq!(b, [9u8; 8192]);
}

#[test]
fn async_batches_store_and_load() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path(), DirectIo::Auto);
    let len = 64 * 1024;
    let n = 32;
    let mut src = AlignedBuf::new(n * len).unwrap();
    for (i, chunk) in src.as_mut_slice().chunks_mut(len).enumerate() {
        fill_content(&key(i as u64), chunk);
    }
    let items: Vec<StoreRequest> = (0..n)
        .map(|i| StoreRequest {
            key: key(i as u64),
            src: src.as_slice()[i * len..].as_ptr(),
            len,
        })
        .collect();
    // SAFETY: `src` outlives the job (it is waited for and dropped below).
    let job = unsafe { s.submit_store(&items) };
    let p = job.wait(Some(Duration::from_secs(30))).unwrap();
    assert_eq!((p.total, p.done, p.failed), (n, n, 0));
    assert_eq!(job.item(0).unwrap(), len as u64);
    drop(job);
    // Storing again deduplicates: 0 bytes per item.
    // SAFETY: as above.
    let job = unsafe { s.submit_store(&items[..2]) };
    job.wait(None).unwrap();
    assert_eq!(job.item(1).unwrap(), 0);
    drop(job);
    let mut dst = vec![0u8; (n + 1) * len + 1];
    let mut loads: Vec<LoadRequest> = (0..n)
        .map(|i| LoadRequest {
            key: key(i as u64),
            dst: dst[1 + i * len..].as_mut_ptr(), // deliberately unaligned
            len,
        })
        .collect();
    loads.push(LoadRequest {
        key: key(999),
        dst: dst[1 + n * len..].as_mut_ptr(),
        len,
    });
    // SAFETY: `dst` outlives the job and is not touched until it completes.
    let job = unsafe { s.submit_load(&loads) };
    let p = job.wait(None).unwrap();
    assert_eq!((p.done, p.failed), (n + 1, 1));
    assert_eq!(job.item(n).unwrap_err().kind(), ErrorKind::NotFound);
    drop(job);
    assert!(dst[1..1 + n * len] == src.as_slice()[..n * len]);
}

/// One batch with duplicate keys (published by whichever writer finishes first), a NULL
/// item, unaligned and odd-length payloads, for both temp-file kinds and every I/O mode:
/// every item completes with its own result and nothing but block files is left.
#[test]
fn async_batch_with_duplicates_and_bad_items() {
    let d = tempfile::tempdir().unwrap();
    for (round, mode) in modes(d.path()).into_iter().enumerate() {
        for write_mode in [WriteMode::Auto, WriteMode::NamedTemp, WriteMode::InPlace] {
            let mut c = FsConfig::new(d.path(), format!("batch-{round}-{write_mode:?}"));
            c.direct_io = mode;
            c.write_threads = 3;
            c.write_mode = write_mode;
            let s = FsStore::open(&c).unwrap();
            let distinct = 30;
            let len = |i: usize| 4096 * (1 + i % 5) + (i % 3) * 1000;
            let bufs: Vec<TestBuf> = (0..distinct)
                .map(|i| {
                    let mut b = TestBuf::new(len(i), i % 4 != 0);
                    fill_content(&key(i as u64), b.get_mut());
                    b
                })
                .collect();
            // 41 items: keys 0..30 once and keys 0..=10 again, but item 17 is a NULL buffer
            // (key 500), so key 17 is never stored: 29 stores and 11 duplicates.
            let mut items: Vec<StoreRequest> = (0..41)
                .map(|j| {
                    let i = j % distinct;
                    StoreRequest {
                        key: key(i as u64),
                        src: bufs[i].get().as_ptr(),
                        len: len(i),
                    }
                })
                .collect();
            items[17] = StoreRequest {
                key: key(500),
                src: std::ptr::null(),
                len: 4096,
            };
            // SAFETY: `bufs` outlives the job, which is dropped in this iteration.
            let job = unsafe { s.submit_store(&items) };
            let p = job.wait(Some(Duration::from_secs(60))).unwrap();
            assert_eq!(
                (p.total, p.done, p.failed),
                (41, 41, 1),
                "{mode:?} {write_mode:?}"
            );
            assert_eq!(job.item(17).unwrap_err().kind(), ErrorKind::InvalidArgument);
            let mut written = vec![0u64; distinct];
            for (j, it) in items.iter().enumerate() {
                if j != 17 {
                    written[j % distinct] += job.item(j).unwrap();
                    assert_eq!(it.key, key((j % distinct) as u64));
                }
            }
            drop(job);
            // Each key's bytes were written exactly once, whichever of its items did it.
            for (i, w) in written.iter().enumerate() {
                let want = if i == 17 { 0 } else { len(i) as u64 };
                assert_eq!(*w, want, "key {i} ({mode:?}, {write_mode:?})");
            }
            let st = s.stats();
            assert_eq!((st.stores, st.dedup_hits), (29, 11), "{st:?}");
            assert!(!s.contains(&key(17)));
            for i in (0..distinct).filter(|&i| i != 17) {
                let mut out = vec![0u8; len(i)];
                let mut want = vec![0u8; len(i)];
                fill_content(&key(i as u64), &mut want);
                s.load(&key(i as u64), &mut out).unwrap();
                assert!(out == want, "key {i}");
            }
            // While open, a store writing named temp files holds its writer lock file.
            let writers = s.dir().join(".writers");
            let locks = walk(&writers).len();
            assert_eq!(locks, usize::from(!s.uses_unnamed_temp_files()));
            let dir = s.dir().to_path_buf();
            drop(s);
            for f in walk(&dir) {
                let name = f.file_name().unwrap().to_str().unwrap();
                assert!(name.ends_with(".kvb"), "left behind: {}", f.display());
                let bits = f.symlink_metadata().unwrap().permissions().mode() & 0o7777;
                assert_ne!(bits, 0, "unpublished: {}", f.display());
            }
        }
    }
}

#[test]
fn temp_files_of_dead_writers_are_cleaned_at_open() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path(), DirectIo::Off);
    let k = key(1);
    s.store(&k, b"x").unwrap();
    let dir = s.block_path(&k).parent().unwrap().to_path_buf();
    let stale = dir.join(format!(".{}.99999.1.tmp", key(2).to_hex()));
    std::fs::write(&stale, b"partial").unwrap();
    let live = dir.join(format!(".{}.99999.2.tmp", key(3).to_hex()));
    let held = std::fs::File::create(&live).unwrap();
    // SAFETY: plain flock on an open descriptor.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) },
        0
    );
    let other = dir.join("notes.txt");
    std::fs::write(&other, b"keep").unwrap();
    // Today's temp files name their writer's lock file under `.writers`: a writer whose lock
    // file is held lives; one whose lock file is free, or gone, is dead.
    let writers = s.dir().join(".writers");
    std::fs::create_dir_all(&writers).unwrap();
    let temp = |k: u64, writer: u64| {
        let p = dir.join(kvr::fs::path::temp_name(&key(k), writer, 1));
        std::fs::write(&p, b"partial").unwrap();
        p
    };
    let lock_file = |writer: u64| writers.join(format!("{writer:016x}"));
    let live_writer = std::fs::File::create(lock_file(0xa1)).unwrap();
    // SAFETY: plain flock on an open descriptor.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&live_writer), libc::LOCK_EX) },
        0
    );
    std::fs::write(lock_file(0xd1), b"").unwrap();
    let (live_new, dead_new, gone_new) = (temp(4, 0xa1), temp(5, 0xd1), temp(6, 0xd2));
    drop(s);
    let s = open(d.path(), DirectIo::Off);
    assert!(!stale.exists(), "stale temp removed");
    assert!(live.exists(), "a live writer's temp file is left alone");
    assert!(
        live_new.exists() && lock_file(0xa1).exists(),
        "a live writer's"
    );
    assert!(
        !dead_new.exists() && !gone_new.exists(),
        "dead writers' temps go"
    );
    assert!(!lock_file(0xd1).exists(), "and their lock files");
    assert!(other.exists());
    assert_eq!(s.stats().blocks, 1);
    drop(live_writer);
}

#[test]
fn big_headers_and_every_durability_mode_round_trip() {
    let d = tempfile::tempdir().unwrap();
    for (i, durability) in [
        kvr::Durability::None,
        kvr::Durability::Fdatasync,
        kvr::Durability::FdatasyncDir,
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = FsConfig::new(d.path(), format!("dur{i}"));
        c.durability = durability;
        let s = FsStore::open(&c).unwrap();
        // A shape with many dimensions makes the header span two pages (payload at 8192),
        // which loads through the general (bounce buffer) path.
        let len = 5000usize;
        let mut shape = vec![1u64; 3000];
        shape.push(len as u64);
        let spec = TensorSpec {
            dtype: Dtype::U8,
            shape,
        };
        let k = key(i as u64);
        let mut data = vec![0u8; len];
        fill_content(&k, &mut data);
        s.store_tensor(&k, &data, &spec).unwrap();
        let size = std::fs::metadata(s.block_path(&k)).unwrap().len();
        assert_eq!(size, 8192 + len as u64);
        for aligned in [true, false] {
            let mut out = TestBuf::new(len, aligned);
            s.load(&k, out.get_mut()).unwrap();
            assert!(out.get() == &data[..]);
        }
        let bytes = std::fs::read(s.block_path(&k)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("block").unwrap().data(), &data[..]);
    }
}
