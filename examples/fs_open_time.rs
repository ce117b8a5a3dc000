//! How long `FsStore::open` takes on a store of N blocks, and how long its background scan
//! takes to index them: `cargo run --release --example fs_open_time -- 10000 100000 1000000`.
//!
//! The stores (tiny 16-byte blocks: the cost is per file, not per byte) are created once
//! under `${KVR_CACHE_DIR:-$HOME/.cache/kvr}/open-bench/<N>` and reused by later runs.
//! "cold" drops the page, dentry and inode caches first (`/proc/sys/vm/drop_caches`; root
//! only, else the row says "n/a").

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvr::io::DirectIo;
use kvr::{FsConfig, FsStore, Key, StoreRequest};

fn cache_dir() -> PathBuf {
    match std::env::var_os("KVR_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".cache/kvr"),
    }
    .join("open-bench")
}

fn key(i: u64) -> Key {
    Key(xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes()).to_le_bytes())
}

fn config(root: &Path) -> FsConfig {
    let mut c = FsConfig::new(root, "open-bench");
    c.direct_io = DirectIo::Off;
    c
}

/// Creates the store of `n` blocks unless a previous run finished it.
fn ensure_store(root: &Path, n: u64) -> kvr::Result<()> {
    let done = root.join("complete");
    if done.exists() {
        return Ok(());
    }
    eprintln!("creating {n} blocks under {} (once)", root.display());
    let s = FsStore::open(&config(root))?;
    let payload = [7u8; 16];
    let batch = 8192;
    for start in (0..n).step_by(batch) {
        let reqs: Vec<StoreRequest> = (start..(start + batch as u64).min(n))
            .map(|i| StoreRequest {
                key: key(i),
                src: payload.as_ptr(),
                len: payload.len(),
            })
            .collect();
        // SAFETY: `payload` outlives the job, which is waited for here.
        let job = unsafe { s.submit_store(&reqs) };
        job.wait(None)?;
    }
    std::fs::write(&done, b"").map_err(|e| kvr::Error::io("marking the store complete", e))
}

fn drop_caches() -> bool {
    // SAFETY: sync(2) has no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n").is_ok()
}

/// (open, open until the scan is complete, blocks indexed).
fn measure(root: &Path) -> kvr::Result<(Duration, Duration, u64)> {
    let t = Instant::now();
    let s = FsStore::open(&config(root))?;
    let opened = t.elapsed();
    s.wait_for_scan(None);
    let scanned = t.elapsed();
    Ok((opened, scanned, s.stats().blocks))
}

fn main() -> kvr::Result<()> {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("block counts"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 100_000]
    } else {
        sizes
    };
    println!("| blocks | open, warm | scan done, warm | open, cold | scan done, cold |");
    println!("|---:|---:|---:|---:|---:|");
    for n in sizes {
        let root = cache_dir().join(n.to_string());
        ensure_store(&root, n)?;
        let (mut warm_open, mut warm_scan) = (Duration::MAX, Duration::MAX);
        for _ in 0..3 {
            let (o, sc, blocks) = measure(&root)?;
            assert_eq!(blocks, n, "the scan indexes every block");
            warm_open = warm_open.min(o);
            warm_scan = warm_scan.min(sc);
        }
        let cold = if drop_caches() {
            let (o, sc, _) = measure(&root)?;
            (
                format!("{:.1} ms", o.as_secs_f64() * 1e3),
                format!("{:.0} ms", sc.as_secs_f64() * 1e3),
            )
        } else {
            ("n/a".into(), "n/a".into())
        };
        println!(
            "| {n} | {:.1} ms | {:.0} ms | {} | {} |",
            warm_open.as_secs_f64() * 1e3,
            warm_scan.as_secs_f64() * 1e3,
            cold.0,
            cold.1
        );
    }
    Ok(())
}
