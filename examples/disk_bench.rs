//! Recovery time of a full slot file (throughput next to fio: `kvr bench --tier disk`).
//!
//! ```text
//! cargo run --release --example disk_bench -- recovery [DIR] [SLOTS] [SLOT_BYTES] [RUNS]
//! ```
//!
//! `recovery`: writes every slot of a SLOTS-slot file (default 100 000 slots of 65536 bytes),
//! then reopens it RUNS times and prints the scan's wall and CPU time.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use kvr::disk::Key;
use kvr::io::{AlignedBuf, DirectIo};
use kvr::{DiskConfig, SlotFile};

const THREADS: usize = 8;

fn key(run: u64, i: u64) -> Key {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&run.to_le_bytes());
    k[8..].copy_from_slice(&i.to_le_bytes());
    Key(k)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Writes keys `(round, 0..n)` with 8 threads; returns seconds.
fn write_pass(d: &SlotFile, round: u64, n: u64, bs: usize) -> f64 {
    let next = AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let next = &next;
            s.spawn(move || {
                let mut buf = AlignedBuf::new(bs).unwrap();
                for (j, b) in buf.as_mut_slice().iter_mut().enumerate() {
                    *b = (j as u64 * 31 + t as u64) as u8;
                }
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    buf.as_mut_slice()[..8].copy_from_slice(&i.to_le_bytes());
                    d.write(&key(round, i), &buf.as_slice()[..bs], &i.to_le_bytes())
                        .unwrap();
                }
            });
        }
    });
    t0.elapsed().as_secs_f64()
}

/// Evicts the file from the page cache, so the recovery scan reads from the device.
fn drop_cache(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: valid fd; advice only.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}

fn recovery(dir: &Path, slots: u64, slot_size: u64, runs: usize) {
    let path = dir.join("kvr_disk_recovery.slots");
    let _ = std::fs::remove_file(&path);
    let mut cfg = DiskConfig::new(&path, slot_size, slots);
    cfg.direct_io = DirectIo::Auto;
    cfg.io_threads = THREADS;
    {
        let d = SlotFile::open(&cfg).unwrap();
        let bs = 4096.min(slot_size as usize);
        let t = write_pass(&d, 7, slots, bs);
        let s = d.stats();
        assert_eq!((s.entries, s.free_slots), (slots, 0));
        eprintln!("filled {slots} slots in {t:.2} s (direct {})", s.direct);
    }
    let (mut wall, mut cpu) = (vec![], vec![]);
    for _ in 0..runs {
        drop_cache(&path);
        let d = SlotFile::open(&cfg).unwrap();
        let s = d.stats();
        assert_eq!(s.recovered_entries, slots);
        wall.push(s.recovery_ns as f64 / 1e6);
        cpu.push(s.recovery_cpu_ns as f64 / 1e6);
        eprintln!(
            "  recovery: {:.1} ms wall, {:.1} ms CPU",
            wall.last().unwrap(),
            cpu.last().unwrap()
        );
    }
    let _ = std::fs::remove_file(&path);
    println!(
        "recovery of a full {slots}-slot file ({slot_size}-byte slots, {:.2} GB): median {:.1} ms wall, {:.1} ms CPU ({runs} runs)",
        (4096 + slots * (slot_size.div_ceil(4096) * 4096 + 4096)) as f64 / 1e9,
        median(&mut wall),
        median(&mut cpu)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("recovery");
    let dir = PathBuf::from(args.get(2).map(String::as_str).unwrap_or("."));
    match mode {
        "recovery" => recovery(
            &dir,
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100_000),
            args.get(4).and_then(|s| s.parse().ok()).unwrap_or(65536),
            args.get(5).and_then(|s| s.parse().ok()).unwrap_or(3),
        ),
        m => panic!("unknown mode {m}: recovery (throughput moved to `kvr bench --tier disk`)"),
    }
}
