//! CPU cost of one stored 64 KiB block in the fs store, next to fio's per write, over a fixed
//! batch (CPU time is repeatable where wall time on a shared machine is not).
//!
//! ```text
//! cargo run --release --example fs_store_cpu -- [DIR] [BLOCKS] [THREADS] [RUNS]
//! ```
//!
//! Per run: one `submit_store` batch of BLOCKS distinct 64 KiB blocks (O_DIRECT, checksums
//! on) into a fresh namespace on THREADS write threads, timed with `getrusage` (user + system
//! CPU of the whole process, the batch only); then fio writing the same blocks as one new
//! file per block (`--nrfiles --filesize=64K --create_on_open=1 --direct=1`, THREADS jobs,
//! psync), and fio writing them sequentially into one file per job (the strict disk limit),
//! each timed with `getrusage(RUSAGE_CHILDREN)` (the whole fio process, its start-up
//! included). Prints microseconds of CPU per block for each, medians over RUNS. Runs write
//! into fresh directories, removed at the end; give ext4 a minute after a removal of many
//! files before measuring again (its inode allocator skips recently freed inodes).

use std::path::PathBuf;
use std::process::Command;

use kvr::io::{AlignedBuf, DirectIo};
use kvr::{FsConfig, FsStore, Key, StoreRequest};

const BLOCK: usize = 64 << 10;

/// (user, system) CPU seconds of `who`.
fn cpu(who: libc::c_int) -> (f64, f64) {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    unsafe { libc::getrusage(who, &mut ru) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    (s(ru.ru_utime), s(ru.ru_stime))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> kvr::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or(".", String::as_str)).join("kvr-fs-store-cpu");
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4096);
    let threads: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(4);
    let runs: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(3);
    let mut src = AlignedBuf::new(n * BLOCK)?;
    for (i, b) in src.as_mut_slice().iter_mut().enumerate() {
        *b = (i as u64).wrapping_mul(0x9e37_79b9) as u8;
    }
    let (mut kvr_us, mut kvr_user) = (vec![], vec![]);
    let mut fio_us = [vec![], vec![]];
    let mut fio_user = [vec![], vec![]];
    // Every run writes into fresh directories, all removed only at the end: files deleted
    // right before thousands are created make ext4's inode allocator crawl over the recently
    // freed inodes (`recently_deleted`), which would measure the cleanup, not the store.
    let _ = std::fs::remove_dir_all(&dir);
    for run in 0..runs {
        let mut c = FsConfig::new(dir.join(format!("kvr-{run}")), format!("cpu-{run}"));
        c.direct_io = DirectIo::On;
        c.write_threads = threads;
        let s = FsStore::open(&c)?;
        let reqs: Vec<StoreRequest> = (0..n)
            .map(|i| {
                let mut k = [0u8; 16];
                k[..8].copy_from_slice(&(i as u64).to_le_bytes());
                k[8..].copy_from_slice(&(run as u64 + 1).to_le_bytes());
                StoreRequest {
                    key: Key(xxhash_rust::xxh3::xxh3_128(&k).to_le_bytes()),
                    src: src.as_slice()[i * BLOCK..].as_ptr(),
                    len: BLOCK,
                }
            })
            .collect();
        let (u0, s0) = cpu(libc::RUSAGE_SELF);
        // SAFETY: `src` outlives the job, which is waited for right here.
        let job = unsafe { s.submit_store(&reqs) };
        job.wait(None)?;
        let (u1, s1) = cpu(libc::RUSAGE_SELF);
        for i in 0..n {
            job.item(i)?;
        }
        drop(job);
        drop(s);
        kvr_us.push((u1 - u0 + s1 - s0) * 1e6 / n as f64);
        kvr_user.push((u1 - u0) * 1e6 / n as f64);

        for (v, new_files) in [false, true].into_iter().enumerate() {
            let (total, user) =
                fio_cpu(&dir.join(format!("fio-{run}-{v}")), n, threads, new_files)?;
            fio_us[v].push(total);
            fio_user[v].push(user);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "64 KiB blocks, {n} per run, {threads} threads, median of {runs} runs (CPU us per block, user part in brackets):"
    );
    println!(
        "kvr fs store     {:7.1} us ({:.1} user)",
        median(&mut kvr_us),
        median(&mut kvr_user)
    );
    for (v, what) in ["fio 1 file/job", "fio new file/blk"].iter().enumerate() {
        println!(
            "{what:<16} {:7.1} us ({:.1} user)",
            median(&mut fio_us[v]),
            median(&mut fio_user[v])
        );
    }
    Ok(())
}

/// (total, user) CPU microseconds per write of one fio run of `n` 64 KiB writes.
fn fio_cpu(
    dir: &std::path::Path,
    n: usize,
    threads: usize,
    new_files: bool,
) -> kvr::Result<(f64, f64)> {
    std::fs::create_dir_all(dir).map_err(|e| kvr::Error::io("fio dir", e))?;
    let per_job = n / threads;
    let mut args = vec![
        "--name=cpu".to_string(),
        "--rw=write".into(),
        "--bs=64k".into(),
        format!("--numjobs={threads}"),
        "--direct=1".into(),
        format!("--size={}", per_job * BLOCK),
        "--ioengine=psync".into(),
        "--group_reporting".into(),
        format!("--directory={}", dir.display()),
        "--output-format=terse".into(),
    ];
    if new_files {
        args.extend([
            format!("--nrfiles={per_job}"),
            "--filesize=64k".into(),
            "--create_on_open=1".into(),
        ]);
    }
    let (u0, s0) = cpu(libc::RUSAGE_CHILDREN);
    let out = Command::new("fio")
        .args(&args)
        .output()
        .map_err(|e| kvr::Error::io("running fio", e))?;
    let (u1, s1) = cpu(libc::RUSAGE_CHILDREN);
    if !out.status.success() {
        return Err(kvr::err!(
            Io,
            "fio: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let writes = (per_job * threads) as f64;
    Ok(((u1 - u0 + s1 - s0) * 1e6 / writes, (u1 - u0) * 1e6 / writes))
}
