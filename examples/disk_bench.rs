//! Slot file throughput next to fio, and recovery time of a full file.
//!
//! ```text
//! cargo run --release --example disk_bench -- throughput [DIR] [RUNS]
//! cargo run --release --example disk_bench -- recovery   [DIR] [SLOTS] [SLOT_BYTES] [RUNS]
//! ```
//!
//! `throughput`: for 2 MiB and 64 KiB entries, 8 threads, O_DIRECT, checksums on (write and
//! verify): fills a slot file once (so every extent is written, as in steady state), then
//! measures a pass of writes of new keys (each evicts the least recently used entry: header
//! invalidation + payload in one `pwritev`, then the header) and a pass of reads of every
//! entry in random order; then runs fio on *the same preallocated file* with the same block
//! size, `--numjobs=8 --direct=1 --ioengine=psync`, random writes and reads of the same
//! volume. Repeats RUNS times (default 3) and prints medians. Needs `fio` on PATH.
//!
//! `recovery`: writes every slot of a SLOTS-slot file (default 100 000 slots of 65536 bytes),
//! then reopens it RUNS times and prints the scan's wall and CPU time.

use std::path::{Path, PathBuf};
use std::process::Command;
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
    k
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
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

/// Reads keys `(round, 0..n)` in a random order with 8 threads; returns seconds.
fn read_pass(d: &SlotFile, round: u64, n: u64, bs: usize) -> f64 {
    let mut order: Vec<u64> = (0..n).collect();
    let mut x = 0x2545_f491_4f6c_dd1du64 ^ round;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let next = AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let (next, order) = (&next, &order);
            s.spawn(move || {
                let mut buf = AlignedBuf::new(bs).unwrap();
                let mut meta = [0u8; 8];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let k = order[i as usize];
                    let got = d
                        .read(&key(round, k), buf.as_mut_slice(), &mut meta)
                        .unwrap();
                    assert_eq!(got.len as usize, bs);
                    assert_eq!(u64::from_le_bytes(meta), k);
                }
            });
        }
    });
    t0.elapsed().as_secs_f64()
}

/// Runs fio on `file`; returns GB/s.
fn fio(file: &Path, rw: &str, bs: usize, file_len: u64, total: u64) -> f64 {
    let out = Command::new("fio")
        .args([
            "--name=kvr",
            &format!("--filename={}", file.display()),
            &format!("--bs={bs}"),
            &format!("--rw={rw}"),
            "--numjobs=8",
            "--direct=1",
            "--ioengine=psync",
            &format!("--size={file_len}"),
            &format!("--io_size={}", total / THREADS as u64),
            "--fallocate=none",
            "--group_reporting",
            "--minimal",
        ])
        .output()
        .expect("running fio (apt-get install -y fio)");
    assert!(
        out.status.success(),
        "fio failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().expect("fio printed a result line");
    let f: Vec<&str> = line.split(';').collect();
    // Terse v3: read KiB at 5, read runtime ms at 8; write KiB at 46, runtime ms at 49.
    let (kib, ms) = if rw.contains("read") {
        (f[5], f[8])
    } else {
        (f[46], f[49])
    };
    let kib: f64 = kib.parse().unwrap();
    let ms: f64 = ms.parse().unwrap();
    kib * 1024.0 / (ms / 1000.0) / 1e9
}

fn throughput(dir: &Path, runs: usize) {
    println!("disk_bench throughput: {THREADS} threads, O_DIRECT, checksums on; fio psync numjobs=8 direct=1 on the same file; medians of {runs} runs");
    println!("| entry | kvr write GB/s | fio write GB/s | ratio | kvr read GB/s | fio read GB/s | ratio |");
    println!("|---|---|---|---|---|---|---|");
    let only: Option<usize> = std::env::var("KVR_BENCH_BS")
        .ok()
        .and_then(|v| v.parse().ok());
    for (bs, volume) in [(2usize << 20, 2u64 << 30), (64 << 10, 1 << 30)] {
        if only.is_some_and(|o| o != bs) {
            continue;
        }
        let n = volume / bs as u64;
        let path = dir.join("kvr_disk_bench.slots");
        let _ = std::fs::remove_file(&path);
        let mut cfg = DiskConfig::new(&path, bs as u64, n);
        cfg.direct_io = DirectIo::On;
        cfg.verify = true;
        let d = SlotFile::open(&cfg).unwrap();
        let file_len = d.geometry().file_len();
        write_pass(&d, 0, n, bs); // fill: every extent written once
        let (mut kw, mut kr, mut fw, mut fr) = (vec![], vec![], vec![], vec![]);
        for run in 1..=runs as u64 {
            let s = write_pass(&d, run, n, bs);
            kw.push(gbps(n * bs as u64, s));
            let s = read_pass(&d, run, n, bs);
            kr.push(gbps(n * bs as u64, s));
            fw.push(fio(&path, "randwrite", bs, file_len, n * bs as u64));
            fr.push(fio(&path, "randread", bs, file_len, n * bs as u64));
            eprintln!(
                "  {} KiB run {run}: kvr write {:.3} read {:.3} | fio write {:.3} read {:.3} GB/s",
                bs >> 10,
                kw.last().unwrap(),
                kr.last().unwrap(),
                fw.last().unwrap(),
                fr.last().unwrap()
            );
            // fio overwrote slots: the next kvr pass writes new keys over them anyway, and
            // reads only what it wrote.
        }
        let st = d.stats();
        assert_eq!(st.corrupt_dropped, 0);
        assert!(st.direct);
        drop(d);
        let _ = std::fs::remove_file(&path);
        let (kw, fw, kr, fr) = (
            median(&mut kw),
            median(&mut fw),
            median(&mut kr),
            median(&mut fr),
        );
        println!(
            "| {} | {kw:.3} | {fw:.3} | {:.2}x | {kr:.3} | {fr:.3} | {:.2}x |",
            if bs >= 1 << 20 {
                format!("{} MiB", bs >> 20)
            } else {
                format!("{} KiB", bs >> 10)
            },
            kw / fw,
            kr / fr
        );
    }
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
    let mode = args.get(1).map(String::as_str).unwrap_or("throughput");
    let dir = PathBuf::from(args.get(2).map(String::as_str).unwrap_or("."));
    match mode {
        "throughput" => throughput(&dir, args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3)),
        "recovery" => recovery(
            &dir,
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100_000),
            args.get(4).and_then(|s| s.parse().ok()).unwrap_or(65536),
            args.get(5).and_then(|s| s.parse().ok()).unwrap_or(3),
        ),
        m => panic!("unknown mode {m}: throughput or recovery"),
    }
}
