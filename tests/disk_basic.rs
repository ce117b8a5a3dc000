//! Slot file behaviour through the Rust API: round trips, LRU eviction and stats, corruption,
//! ownership, geometry, size limits, concurrency and batched submits.

mod common;

use std::path::Path;

use kvr::disk::{Key, RawRead, RawWrite, MAX_META};
use kvr::io::{AlignedBuf, DirectIo};
use kvr::{DiskConfig, ErrorKind, SlotFile};

use common::files::flip_byte;
use common::Rng;

const SLOT: u64 = 256 * 1024;
const PAGE: u64 = 4096;

/// The shared test key of `i` (the tests here count in `u32`).
fn key(i: u32) -> Key {
    common::key(i.into())
}

/// Deterministic bytes for (seed, n).
fn pattern(seed: u64, n: usize) -> Vec<u8> {
    Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1).bytes(n)
}

fn cfg(path: &Path, slots: u64, direct: DirectIo) -> DiskConfig {
    let mut c = DiskConfig::new(path, SLOT, slots);
    c.direct_io = direct;
    c.io_threads = 2;
    c
}

/// Offsets for files of at most 32 slots (one header table page).
fn slot_offset(slot: u64) -> u64 {
    2 * PAGE + slot * (SLOT + PAGE)
}

fn table_entry_offset(slot: u64) -> u64 {
    PAGE + slot * 128
}

fn round_trips(direct: DirectIo) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slots");
    let d = SlotFile::open(&cfg(&path, 8, direct)).unwrap();
    assert_eq!(d.stats().direct, direct == DirectIo::On);
    let sizes = [
        1usize,
        100,
        4095,
        4096,
        4097,
        65536,
        65536 + 13,
        SLOT as usize - 1,
        SLOT as usize,
    ];
    let metas = [0usize, 1, 100, MAX_META];
    let mut n = 0u32;
    for &size in &sizes {
        for &m in &metas {
            for aligned in [true, false] {
                n += 1;
                let k = key(n);
                let data = pattern(n as u64, size);
                let meta = pattern(n as u64 + 1_000_000, m);
                // Aligned and deliberately misaligned caller buffers (bounce path).
                let mut src = AlignedBuf::new(size + 1).unwrap();
                let off = usize::from(!aligned);
                src.as_mut_slice()[off..off + size].copy_from_slice(&data);
                d.write(&k, &src.as_slice()[off..off + size], &meta)
                    .unwrap();
                let mut dst = AlignedBuf::new(SLOT as usize + 1).unwrap();
                let mut mdst = vec![0u8; MAX_META];
                let got = d
                    .read(&k, &mut dst.as_mut_slice()[off..], &mut mdst)
                    .unwrap();
                assert_eq!((got.len, got.meta_len), (size as u64, m as u64));
                assert!(
                    dst.as_slice()[off..off + size] == data[..],
                    "size {size} meta {m} aligned {aligned} {direct:?}"
                );
                assert_eq!(&mdst[..m], &meta[..]);
            }
        }
    }
    let s = d.stats();
    assert_eq!(s.writes, n as u64);
    assert_eq!(s.hits, n as u64);
    assert_eq!(s.entries, 8);
    assert_eq!(s.evictions, n as u64 - 8);
    // The last 8 entries survive a reopen.
    drop(d);
    let d = SlotFile::open(&cfg(&path, 8, direct)).unwrap();
    let s = d.stats();
    assert!(!s.created);
    assert_eq!(s.recovered_entries, 8);
    for i in n - 7..=n {
        let mut dst = vec![0u8; SLOT as usize];
        let mut mdst = vec![0u8; MAX_META];
        let got = d.read(&key(i), &mut dst, &mut mdst).unwrap();
        assert_eq!(
            &dst[..got.len as usize],
            &pattern(i as u64, got.len as usize)[..]
        );
    }
    // Recency after recovery follows write order.
    let expect: Vec<Key> = (n - 7..=n).map(key).collect();
    assert_eq!(d.lru_keys(), expect);
}

#[test]
fn round_trips_every_size_class_direct() {
    if !kvr::io::probe(&std::env::temp_dir()) {
        eprintln!("skipping: no O_DIRECT in the temp dir");
        return;
    }
    round_trips(DirectIo::On);
}

#[test]
fn round_trips_every_size_class_buffered() {
    round_trips(DirectIo::Off);
}

#[test]
fn eviction_is_lru_under_a_mixed_trace_and_stats_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slots");
    let n_slots = 6usize;
    let d = SlotFile::open(&cfg(&path, n_slots as u64, DirectIo::Auto)).unwrap();
    // Model: keys in LRU order (front = least recent).
    let mut model: Vec<u32> = Vec::new();
    let (mut hits, mut misses, mut evictions, mut writes, mut wbytes, mut rbytes) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut x = 0x1234_5678u64;
    let mut buf = vec![0u8; SLOT as usize];
    for step in 0..600u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = (x % 10) as u32;
        let len = 1 + (x >> 20) as usize % 9000;
        if (x >> 40) % 5 < 2 {
            d.write(&key(k), &pattern(step, len), &[]).unwrap();
            writes += 1;
            wbytes += len as u64;
            if let Some(p) = model.iter().position(|&m| m == k) {
                model.remove(p);
            } else if model.len() == n_slots {
                model.remove(0);
                evictions += 1;
            }
            model.push(k);
        } else {
            match d.read(&key(k), &mut buf, &mut []) {
                Ok(n) => {
                    assert!(model.contains(&k), "step {step}: key {k} should be absent");
                    hits += 1;
                    rbytes += n.len;
                    model.retain(|&m| m != k);
                    model.push(k);
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
                    assert!(
                        !model.contains(&k),
                        "step {step}: key {k} should be present"
                    );
                    misses += 1;
                }
            }
        }
        let expect: Vec<Key> = model.iter().map(|&m| key(m)).collect();
        assert_eq!(d.lru_keys(), expect, "step {step}");
    }
    let s = d.stats();
    assert_eq!(
        (s.hits, s.misses, s.evictions, s.writes),
        (hits, misses, evictions, writes)
    );
    assert_eq!((s.bytes_written, s.bytes_read), (wbytes, rbytes));
    assert_eq!(s.entries, model.len() as u64);
    assert_eq!(s.entries + s.free_slots, n_slots as u64);
    assert!(evictions > 10 && hits > 10 && misses > 10);
    // contains() and remove() do not change recency; remove frees the slot durably.
    let victim = model[model.len() / 2];
    assert!(d.contains(&key(victim)));
    assert!(d.remove(&key(victim)));
    assert!(!d.remove(&key(victim)));
    assert!(!d.contains(&key(victim)));
    model.retain(|&m| m != victim);
    let expect: Vec<Key> = model.iter().map(|&m| key(m)).collect();
    assert_eq!(d.lru_keys(), expect);
    assert_eq!(d.stats().free_slots, n_slots as u64 - model.len() as u64);
    drop(d);
    let d = SlotFile::open(&cfg(&path, n_slots as u64, DirectIo::Auto)).unwrap();
    assert!(!d.contains(&key(victim)), "a removed entry came back");
    assert_eq!(d.stats().entries, model.len() as u64);
}

#[test]
fn bit_flips_give_corrupt_then_not_found_and_the_slot_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slots");
    let c = cfg(&path, 4, DirectIo::Auto);
    let d = SlotFile::open(&c).unwrap();
    // A fresh file hands out slots 0, 1, 2, 3 in order.
    for i in 0..4 {
        d.write(&key(i), &pattern(i as u64, 10_000), b"meta")
            .unwrap();
    }
    let mut buf = vec![0u8; SLOT as usize];
    let mut meta = [0u8; 16];
    let expect_corrupt_then_gone = |d: &SlotFile, k: u32, buf: &mut [u8], meta: &mut [u8]| {
        let e = d.read(&key(k), buf, meta).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        let e = d.read(&key(k), buf, meta).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    };
    // Header byte flipped under a live handle.
    flip_byte(&path, slot_offset(0) + 40);
    expect_corrupt_then_gone(&d, 0, &mut buf, &mut meta);
    // Metadata byte (covered by the data checksum).
    flip_byte(&path, slot_offset(1) + 128 + 2);
    expect_corrupt_then_gone(&d, 1, &mut buf, &mut meta);
    let s = d.stats();
    assert_eq!((s.corrupt_dropped, s.free_slots, s.entries), (2, 2, 2));
    // The freed slots are reused before anything is evicted.
    d.write(&key(10), &pattern(10, 5000), &[]).unwrap();
    d.write(&key(11), &pattern(11, 5000), &[]).unwrap();
    assert_eq!(d.stats().evictions, 0);
    assert_eq!(d.read(&key(10), &mut buf, &mut []).unwrap().len, 5000);
    assert_eq!(&buf[..5000], &pattern(10, 5000)[..]);
    drop(d);
    // Payload byte flipped while closed: caught on read after the reopen.
    flip_byte(&path, slot_offset(2) + PAGE + 9999);
    // Table entry flipped while closed: the recovery scan treats the slot as free.
    flip_byte(&path, table_entry_offset(3) + 20);
    let d = SlotFile::open(&c).unwrap();
    let s = d.stats();
    assert_eq!((s.recovered_entries, s.free_slots), (3, 1));
    assert_eq!(
        d.read(&key(3), &mut buf, &mut meta).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    expect_corrupt_then_gone(&d, 2, &mut buf, &mut meta);
    assert_eq!(d.stats().free_slots, 2);
    d.write(&key(12), &pattern(12, 7), &[]).unwrap();
    d.write(&key(13), &pattern(13, 7), &[]).unwrap();
    assert_eq!(d.stats().evictions, 0);
    assert_eq!(d.stats().entries, 4);
}

#[test]
fn verify_off_skips_the_payload_checksum_but_not_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slots");
    let mut c = cfg(&path, 2, DirectIo::Off);
    c.verify = false;
    let d = SlotFile::open(&c).unwrap();
    d.write(&key(0), &pattern(0, 100), &[]).unwrap();
    d.write(&key(1), &pattern(1, 100), &[]).unwrap();
    flip_byte(&path, slot_offset(0) + PAGE + 5);
    flip_byte(&path, slot_offset(1) + 33);
    let mut buf = vec![0u8; 100];
    d.read(&key(0), &mut buf, &mut []).unwrap();
    assert_ne!(buf, pattern(0, 100));
    let e = d.read(&key(1), &mut buf, &mut []).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
}

#[test]
fn sizes_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slots");
    let d = SlotFile::open(&cfg(&path, 2, DirectIo::Auto)).unwrap();
    let big = vec![1u8; SLOT as usize + 1];
    let e = d.write(&key(1), &big, &[]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge);
    let msg = e.to_string();
    assert!(
        msg.contains(&(SLOT + 1).to_string()) && msg.contains(&SLOT.to_string()),
        "{msg}"
    );
    let e = d.write(&key(1), &[1], &vec![0; MAX_META + 1]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge);
    assert_eq!(
        d.write(&key(1), &[], &[]).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    d.write(&key(1), &[7; 5000], b"abc").unwrap();
    let mut small = vec![0u8; 4999];
    let mut meta = [0u8; 3];
    let need = d
        .read_sized(&key(1), &mut small, &mut meta)
        .unwrap()
        .unwrap_err();
    assert_eq!((need.len, need.meta_len), (5000, 3));
    let mut ok = vec![0u8; 5000];
    let e = d.read(&key(1), &mut ok, &mut [0u8; 2]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooSmall);
    assert!(e.to_string().contains("5000"), "{e}");
    let got = d.read(&key(1), &mut ok, &mut meta).unwrap();
    assert_eq!((got.len, got.meta_len, &meta), (5000, 3, b"abc"));
    assert_eq!(d.stats().hits, 1);
}

#[test]
fn one_owner_and_geometry_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slots");
    let c = cfg(&path, 3, DirectIo::Auto);
    let d = SlotFile::open(&c).unwrap();
    d.write(&key(1), b"x", &[]).unwrap();
    assert_eq!(SlotFile::open(&c).unwrap_err().kind(), ErrorKind::Busy);
    drop(d);
    // Other geometry: slot size, then slot count. 256 KiB + 1 rounds to another size.
    let mut other = c.clone();
    other.slot_size = SLOT + 1;
    let e = SlotFile::open(&other).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LayoutMismatch, "{e}");
    let mut other = c.clone();
    other.num_slots = 4;
    assert_eq!(
        SlotFile::open(&other).unwrap_err().kind(),
        ErrorKind::LayoutMismatch
    );
    // A slot size that rounds to the same geometry is the same file.
    let mut same = c.clone();
    same.slot_size = SLOT - 100;
    let d = SlotFile::open(&same).unwrap();
    assert!(d.contains(&key(1)));
    drop(d);
    // Not a slot file.
    let foreign = dir.path().join("foreign");
    std::fs::write(&foreign, vec![0u8; 8192]).unwrap();
    let e = SlotFile::open(&cfg(&foreign, 3, DirectIo::Off)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LayoutMismatch);
    // Zero geometry.
    assert_eq!(
        SlotFile::open(&cfg(&dir.path().join("z"), 0, DirectIo::Off))
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn a_file_larger_than_the_disk_fails_at_open_with_no_space() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge");
    // 1 GiB slots x 4 million = 4 PiB: no test machine has that.
    let mut c = DiskConfig::new(&path, 1 << 30, 4 << 20);
    c.direct_io = DirectIo::Off;
    let e = SlotFile::open(&c).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    assert!(!path.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temp left"
    );
}

#[test]
fn many_threads_read_and_write_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slots");
    let d = SlotFile::open(&cfg(&path, 16, DirectIo::Auto)).unwrap();
    // Values are self-describing: (key, version) in the metadata, payload = pattern of both.
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let d = &d;
            s.spawn(move || {
                let mut x = 0x9999 + t;
                let mut buf = vec![0u8; SLOT as usize];
                let mut meta = [0u8; 16];
                for i in 0..300u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = ((x >> 8) % 24) as u32;
                    if (x >> 40) % 3 == 0 {
                        let version = t << 32 | i;
                        let len = 1 + (version as usize * 7919) % 20_000;
                        let mut m = [0u8; 16];
                        m[..4].copy_from_slice(&k.to_le_bytes());
                        m[8..].copy_from_slice(&version.to_le_bytes());
                        d.write(&key(k), &pattern(version ^ k as u64, len), &m)
                            .unwrap();
                    } else {
                        match d.read(&key(k), &mut buf, &mut meta) {
                            Ok(n) => {
                                assert_eq!(n.meta_len, 16);
                                assert_eq!(&meta[..4], &k.to_le_bytes());
                                let version = u64::from_le_bytes(meta[8..].try_into().unwrap());
                                let want = pattern(version ^ k as u64, n.len as usize);
                                assert!(buf[..n.len as usize] == want[..], "torn read");
                            }
                            Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "{e}"),
                        }
                    }
                }
            });
        }
    });
    let s = d.stats();
    assert_eq!(s.corrupt_dropped, 0);
    assert_eq!(s.entries + s.free_slots, 16);
    assert!(s.hits > 0 && s.writes > 0);
}

#[test]
fn batched_submits_through_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slots");
    let d = SlotFile::open(&cfg(&path, 8, DirectIo::Auto)).unwrap();
    let bufs: Vec<Vec<u8>> = (0..6)
        .map(|i| pattern(i, 3000 + i as usize * 1000))
        .collect();
    let metas: Vec<Vec<u8>> = (0..6).map(|i| vec![i as u8; i as usize]).collect();
    let ops: Vec<RawWrite> = (0..6)
        .map(|i| RawWrite {
            key: key(i as u32),
            src: bufs[i].as_ptr(),
            len: bufs[i].len(),
            meta: metas[i].as_ptr(),
            meta_len: metas[i].len(),
        })
        .collect();
    let big = vec![0u8; SLOT as usize + 1];
    let mut ops = ops;
    ops.push(RawWrite {
        key: key(99),
        src: big.as_ptr(),
        len: big.len(),
        meta: std::ptr::null(),
        meta_len: 0,
    });
    // SAFETY: all buffers outlive the job (it is waited on and dropped in this scope).
    let job = unsafe { d.submit_write(&ops) };
    let p = job.wait(None).unwrap();
    assert_eq!((p.total, p.done, p.failed), (7, 7, 1));
    assert_eq!(job.item(2).unwrap(), 5000);
    assert_eq!(job.item(6).unwrap_err().kind(), ErrorKind::TooLarge);
    drop(job);

    let mut dsts: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; 10_000]).collect();
    let mut mdst: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; 8]).collect();
    let mut lens = [0u64; 8];
    let mut mlens = [0u64; 8];
    let reads: Vec<RawRead> = (0..8)
        .map(|i| RawRead {
            key: key(i as u32), // 6 and 7 are absent
            dst: dsts[i].as_mut_ptr(),
            dst_cap: if i == 5 { 100 } else { 10_000 },
            meta_dst: mdst[i].as_mut_ptr(),
            meta_cap: 8,
            len_out: &mut lens[i],
            meta_len_out: &mut mlens[i],
        })
        .collect();
    // SAFETY: buffers and outputs outlive the job.
    let job = unsafe { d.submit_read(&reads) };
    let p = job.wait(None).unwrap();
    assert_eq!((p.done, p.failed), (8, 3));
    for (i, b) in bufs.iter().enumerate().take(5) {
        assert_eq!(job.item(i).unwrap(), b.len() as u64);
    }
    assert_eq!(job.item(5).unwrap_err().kind(), ErrorKind::TooSmall);
    assert_eq!(job.item(6).unwrap_err().kind(), ErrorKind::NotFound);
    drop(job);
    #[allow(clippy::needless_range_loop)] // four parallel arrays
    for i in 0..5 {
        assert_eq!(lens[i], bufs[i].len() as u64);
        assert_eq!(mlens[i], i as u64);
        assert_eq!(&dsts[i][..bufs[i].len()], &bufs[i][..]);
        assert_eq!(&mdst[i][..i], &metas[i][..]);
    }
    assert_eq!((lens[5], mlens[5]), (8000, 5));
}

#[test]
fn sync_mode_round_trips_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slots");
    let mut c = cfg(&path, 3, DirectIo::Auto);
    c.sync = true;
    let d = SlotFile::open(&c).unwrap();
    for i in 0..5 {
        d.write(&key(i % 4), &pattern(i as u64, 9000), b"s")
            .unwrap();
    }
    drop(d);
    let d = SlotFile::open(&c).unwrap();
    let mut buf = vec![0u8; 9000];
    let mut meta = [0u8; 1];
    // Last three writes: keys 2, 3, 0 (version 4).
    for (k, v) in [(2u32, 2u64), (3, 3), (0, 4)] {
        d.read(&key(k), &mut buf, &mut meta).unwrap();
        assert_eq!(buf, pattern(v, 9000));
    }
    assert!(!d.contains(&key(1)));
}
