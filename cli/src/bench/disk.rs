//! Disk slot file benchmark: writes and reads of `--block-size` entries on `--threads` threads,
//! O_DIRECT, checksums on (computed on write, verified on read), next to fio on the same
//! preallocated file with the same block size, `--numjobs=threads --direct=1`, in the same run.
//!
//! Per block size: a slot file of `--bytes / block` slots is created in `--dir` and filled once
//! (so every extent has been written, as in steady state). Each run then writes a pass of new
//! keys (each evicts the least recently used entry: invalidation, header page + payload in
//! one positioned write, table entry) and reads every entry back in a random order, each into
//! its own place in one destination buffer (as a reload fills distinct blocks); then fio
//! does random writes and random reads of the same volume over the same file. Each entry
//! carries 8 bytes of metadata (engines keep token ids there). Finally the file is reopened
//! and the recovery scan of its header table is timed.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use kvr::disk::{Geometry, Key};
use kvr::io::{AlignedBuf, DirectIo};
use kvr::{DiskConfig, SlotFile};

use super::{progress, BenchArgs};
use crate::fio::{self, FioJob, FioTarget};
use crate::report::{human_bytes, Row};

fn key(round: u64, i: u64) -> Key {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&round.to_le_bytes());
    k[8..].copy_from_slice(&i.to_le_bytes());
    Key(k)
}

/// Runs `f(thread, item)` for items `0..n` on `threads` threads; returns seconds or the first
/// error.
fn parallel(
    threads: usize,
    n: u64,
    bs: usize,
    f: impl Fn(&mut AlignedBuf, u64) -> kvr::Result<()> + Sync,
) -> kvr::Result<f64> {
    let next = AtomicU64::new(0);
    let bufs: Vec<AlignedBuf> = (0..threads)
        .map(|t| {
            let mut b = AlignedBuf::new(bs)?;
            for (j, v) in b.as_mut_slice().iter_mut().enumerate() {
                *v = (j as u64 * 31 + t as u64) as u8;
            }
            Ok(b)
        })
        .collect::<kvr::Result<_>>()?;
    let t0 = Instant::now();
    let results: Vec<kvr::Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = bufs
            .into_iter()
            .map(|mut buf| {
                let (next, f) = (&next, &f);
                s.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok(());
                    }
                    if let Err(e) = f(&mut buf, i) {
                        next.store(n, Ordering::Relaxed);
                        return Err(e);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(kvr::err!(Internal, "benchmark thread panicked")))
            })
            .collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    results.into_iter().collect::<kvr::Result<()>>()?;
    Ok(secs)
}

fn write_pass(d: &SlotFile, threads: usize, round: u64, n: u64, bs: usize) -> kvr::Result<f64> {
    parallel(threads, n, bs, |buf, i| {
        buf.as_mut_slice()[..8].copy_from_slice(&i.to_le_bytes());
        d.write(&key(round, i), &buf.as_slice()[..bs], &i.to_le_bytes())
    })
}

/// Reads every entry back, in a random order, each into its own place in `dst` (`n * bs`
/// bytes), as an engine reloads blocks into distinct buffers. Reading every entry into one
/// reused buffer per thread instead makes each checksum pass leave that buffer in the CPU
/// cache just before the next DMA into it, which on this VM's virtual disk costs ~20% of read
/// throughput (fio never touches its buffer).
fn read_pass(
    d: &SlotFile,
    threads: usize,
    round: u64,
    n: u64,
    bs: usize,
    dst: &mut AlignedBuf,
) -> kvr::Result<f64> {
    let mut order: Vec<u64> = (0..n).collect();
    let mut x = 0x2545_f491_4f6c_dd1du64 ^ round;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let base = DstBase(dst.as_mut_slice()[..n as usize * bs].as_mut_ptr());
    parallel(threads, n, bs, |_, i| {
        let base = &base;
        let k = order[i as usize];
        // SAFETY: `dst` holds n*bs bytes and outlives `parallel`; item `i` (each claimed by
        // exactly one thread) uses only bytes [k*bs, (k+1)*bs), and `order` is a permutation,
        // so no two items share bytes.
        let out = unsafe { std::slice::from_raw_parts_mut(base.0.add(k as usize * bs), bs) };
        let mut meta = [0u8; 8];
        let got = d.read(&key(round, k), out, &mut meta)?;
        if got.len as usize != bs || u64::from_le_bytes(meta) != k || out[..8] != k.to_le_bytes() {
            return Err(kvr::err!(Internal, "entry {k} read back wrong"));
        }
        Ok(())
    })
}

/// The read destination's start, shared by the reader threads (each writes its own bytes).
struct DstBase(*mut u8);
// SAFETY: only used to derive disjoint per-item slices (see `read_pass`).
unsafe impl Sync for DstBase {}

/// fio over the slots area of the file (the file header and header table stay intact, so the
/// file can be reopened afterwards).
fn fio_gbps(
    path: &Path,
    rw: &str,
    bs: u64,
    threads: usize,
    g: Geometry,
    total: u64,
) -> kvr::Result<f64> {
    fio::run_shared_file(
        &FioJob {
            rw,
            block_size: bs,
            numjobs: threads,
            direct: true,
            size_per_job: total / threads as u64,
            target: FioTarget::File(path),
            new_file_per_block: false,
        },
        g.slots_start(),
        g.file_len() - g.slots_start(),
    )
}

/// Removes the benchmark file when dropped (also on errors).
struct Cleanup<'a>(&'a Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

pub fn bench(args: &BenchArgs, notes: &mut Vec<String>) -> kvr::Result<Vec<Row>> {
    fio::require()?;
    let threads = args.threads;
    let mut rows = Vec::new();
    let pb = progress((args.block_size.len() * (args.runs + 1)) as u64, "disk");
    for &bs in &args.block_size {
        if bs % 4096 != 0 {
            return Err(kvr::err!(
                InvalidArgument,
                "disk tier: block size {bs} is not a multiple of 4096 (O_DIRECT)"
            ));
        }
        let n = (args.bytes / bs).max(threads as u64);
        let path = args
            .dir
            .join(format!("kvr_bench_disk_{}.slots", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let _cleanup = Cleanup(&path);
        let mut cfg = DiskConfig::new(&path, bs, n);
        cfg.direct_io = DirectIo::On;
        cfg.verify = true;
        cfg.io_threads = threads;
        let d = SlotFile::open(&cfg)?;
        let g = d.geometry();
        let total = n * bs;
        let mut dst = AlignedBuf::new(total as usize)?;
        write_pass(&d, threads, 0, n, bs as usize)?;
        pb.inc(1);
        let (mut kw, mut kr, mut fw, mut fr) = (vec![], vec![], vec![], vec![]);
        for run in 1..=args.runs as u64 {
            kw.push(total as f64 / write_pass(&d, threads, run, n, bs as usize)? / 1e9);
            kr.push(total as f64 / read_pass(&d, threads, run, n, bs as usize, &mut dst)? / 1e9);
            fw.push(fio_gbps(&path, "randwrite", bs, threads, g, total)?);
            fr.push(fio_gbps(&path, "randread", bs, threads, g, total)?);
            pb.inc(1);
        }
        let st = d.stats();
        if st.corrupt_dropped != 0 || !st.direct {
            return Err(kvr::err!(
                Internal,
                "disk benchmark: {} entries dropped as corrupt, direct I/O {}",
                st.corrupt_dropped,
                st.direct
            ));
        }
        drop(d);
        // Recovery: reopen the full file and time the scan of its header table.
        let d = SlotFile::open(&cfg)?;
        let st = d.stats();
        notes.push(format!(
            "disk: recovery of {} slots ({} each, {} entries): {:.1} ms wall, {:.1} ms CPU",
            n,
            human_bytes(bs),
            st.recovered_entries,
            st.recovery_ns as f64 / 1e6,
            st.recovery_cpu_ns as f64 / 1e6
        ));
        drop(d);
        let limit = format!("fio rand psync numjobs={threads} direct=1, same file");
        rows.push(Row::new("disk", "write", bs, threads, &kw, &fw, &limit));
        rows.push(Row::new("disk", "read", bs, threads, &kr, &fr, &limit));
    }
    pb.finish_and_clear();
    Ok(rows)
}
