//! Store/load throughput of the fs block store next to fio on the same directory.
//!
//! ```text
//! cargo run --release --example fs_bench -- [--dir DIR] [--runs 3] [--threads 8]
//!     [--sizes 65536,2097152] [--total-mib 1024] [--no-fio] [--buffered]
//! ```
//!
//! For each block size and run: stores `total` bytes as distinct blocks through one async
//! batch on `threads` write threads (direct I/O, checksums on), loads them back through one
//! batch on `threads` read threads (verified), then runs `fio --direct=1 --numjobs=threads
//! --bs=<size>` sequential write and read of the same volume in `DIR/fio`. Prints medians and
//! the kvr/fio ratios. Everything written is removed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kvr::io::{AlignedBuf, DirectIo};
use kvr::{FsConfig, FsStore, Key, LoadRequest, StoreRequest};

struct Args {
    dir: PathBuf,
    runs: usize,
    threads: usize,
    sizes: Vec<usize>,
    total: usize,
    fio: bool,
    direct: bool,
}

fn parse() -> Args {
    let mut a = Args {
        dir: PathBuf::from("/work/kvr-fs-bench"),
        runs: 3,
        threads: 8,
        sizes: vec![64 * 1024, 2 * 1024 * 1024],
        total: 1024 << 20,
        fio: true,
        direct: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(val()),
            "--runs" => a.runs = val().parse().unwrap(),
            "--threads" => a.threads = val().parse().unwrap(),
            "--sizes" => a.sizes = val().split(',').map(|s| s.parse().unwrap()).collect(),
            "--total-mib" => a.total = val().parse::<usize>().unwrap() << 20,
            "--no-fio" => a.fio = false,
            "--buffered" => a.direct = false,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn key(size: usize, i: usize) -> Key {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&(i as u64).to_le_bytes());
    k[8..].copy_from_slice(&(size as u64).to_le_bytes());
    Key(k)
}

/// (store GB/s, load GB/s)
fn run_kvr(
    a: &Args,
    size: usize,
    run: usize,
    src: &AlignedBuf,
    dst: &mut AlignedBuf,
) -> (f64, f64) {
    // A fresh namespace per run, all removed at the end: deleting thousands of files right
    // before creating thousands more makes ext4's inode allocator skip the recently deleted
    // inodes one by one (`recently_deleted`), which would measure the benchmark's own cleanup.
    let root = a.dir.join("kvr");
    let mut c = FsConfig::new(&root, format!("bench-{size}-{run}"));
    c.direct_io = if a.direct {
        DirectIo::On
    } else {
        DirectIo::Off
    };
    c.read_threads = a.threads;
    c.write_threads = a.threads;
    c.verify = true;
    let s = FsStore::open(&c).unwrap();
    let n = a.total / size;
    let stores: Vec<StoreRequest> = (0..n)
        .map(|i| StoreRequest {
            key: key(size, i),
            src: src.as_slice()[i * size..].as_ptr(),
            len: size,
        })
        .collect();
    let t = Instant::now();
    // SAFETY: `src` outlives the job, which is waited for and dropped here.
    let job = unsafe { s.submit_store(&stores) };
    let p = job.wait(None).unwrap();
    let store_s = t.elapsed().as_secs_f64();
    assert_eq!(p.failed, 0, "{:?}", job.item(0));
    drop(job);
    let base = dst.as_mut_slice().as_mut_ptr();
    let loads: Vec<LoadRequest> = (0..n)
        .map(|i| LoadRequest {
            key: key(size, i),
            // SAFETY: i * size < n * size <= capacity of dst.
            dst: unsafe { base.add(i * size) },
            len: size,
        })
        .collect();
    let t = Instant::now();
    // SAFETY: `dst` outlives the job and is not touched until it completes.
    let job = unsafe { s.submit_load(&loads) };
    let p = job.wait(None).unwrap();
    let load_s = t.elapsed().as_secs_f64();
    assert_eq!(p.failed, 0, "{:?}", job.item(0));
    drop(job);
    assert!(dst.as_slice()[..n * size] == src.as_slice()[..n * size]);
    drop(s);
    let bytes = (n * size) as f64;
    (bytes / store_s / 1e9, bytes / load_s / 1e9)
}

fn fio(a: &Args, size: usize, rw: &str, dir: &Path) -> f64 {
    let out = Command::new("fio")
        .arg("--name=kvrbench")
        .arg(format!("--directory={}", dir.display()))
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={size}"))
        .arg(format!("--size={}", a.total / a.threads))
        .arg(format!("--numjobs={}", a.threads))
        .arg(format!("--direct={}", a.direct as u8))
        .args([
            "--ioengine=psync",
            "--group_reporting",
            "--output-format=json",
        ])
        .output()
        .expect("running fio (apt-get install -y fio)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("fio JSON");
    let key = if rw == "write" { "write" } else { "read" };
    v["jobs"][0][key]["bw_bytes"].as_f64().unwrap() / 1e9
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let a = parse();
    std::fs::create_dir_all(&a.dir).unwrap();
    println!(
        "kvr fs store vs fio: dir {}, {} threads, direct {}, {} MiB per run, {} runs",
        a.dir.display(),
        a.threads,
        a.direct,
        a.total >> 20,
        a.runs
    );
    let mut src = AlignedBuf::new(a.total).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for c in src.as_mut_slice().chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let mut dst = AlignedBuf::new(a.total).unwrap();
    for &size in &a.sizes {
        let (mut ks, mut kl, mut fw, mut fr) = (vec![], vec![], vec![], vec![]);
        for r in 0..a.runs {
            let (s, l) = run_kvr(&a, size, r, &src, &mut dst);
            ks.push(s);
            kl.push(l);
            let line =
                format!("  run {r}: bs {size:>8}  kvr store {s:6.2} GB/s  load {l:6.2} GB/s");
            if a.fio {
                let fdir = a.dir.join("fio");
                let _ = std::fs::remove_dir_all(&fdir);
                std::fs::create_dir_all(&fdir).unwrap();
                let w = fio(&a, size, "write", &fdir);
                let rd = fio(&a, size, "read", &fdir);
                let _ = std::fs::remove_dir_all(&fdir);
                fw.push(w);
                fr.push(rd);
                println!("{line}  | fio write {w:6.2} GB/s  read {rd:6.2} GB/s");
            } else {
                println!("{line}");
            }
        }
        // Per-run ratios (kvr and fio measured back to back) are steadier than ratios of
        // medians on a disk whose speed drifts.
        let mut rs: Vec<f64> = ks.iter().zip(&fw).map(|(k, f)| k / f).collect();
        let mut rl: Vec<f64> = kl.iter().zip(&fr).map(|(k, f)| k / f).collect();
        let (ms, ml) = (median(&mut ks), median(&mut kl));
        if a.fio {
            let (mw, mr) = (median(&mut fw), median(&mut fr));
            println!(
                "MEDIAN bs {size:>8}: store {ms:.2} GB/s vs fio write {mw:.2} GB/s ({:.2}x; median per-run ratio {:.2}x) | load {ml:.2} GB/s vs fio read {mr:.2} GB/s ({:.2}x; median per-run ratio {:.2}x)",
                ms / mw,
                median(&mut rs),
                ml / mr,
                median(&mut rl)
            );
        } else {
            println!("MEDIAN bs {size:>8}: store {ms:.2} GB/s | load {ml:.2} GB/s");
        }
    }
    let _ = std::fs::remove_dir_all(a.dir.join("kvr"));
    let _ = std::fs::remove_dir(&a.dir);
}
