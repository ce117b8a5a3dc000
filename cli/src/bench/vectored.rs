//! Vectored blocks: a 2 MiB block handed as 64 segments of 32 KiB (one per layer, as vLLM's
//! and SGLang's `layer_first` layouts hand it) against the same bytes as one buffer, in the
//! same run, for the fs store and the slot file, store and load (O_DIRECT, checksums on).
//!
//! Per run: `--bytes / 2 MiB` blocks go out in one async batch as single buffers and in one
//! batch as segment lists (different keys, so both write new blocks), then both are loaded
//! back, scattered over the same layouts, and compared. The order of the two alternates
//! between runs, so neither always meets a warmer cache or a fuller disk. The segments are
//! 4096-aligned in address and length, so both shapes take the zero-copy path.

use std::path::Path;
use std::time::Instant;

use kvr::disk::{ReadItem, WriteItem};
use kvr::fs::{LoadItem, StoreItem};
use kvr::io::RawSegment;
use kvr::io::{AlignedBuf, DirectIo, Job};
use kvr::{DiskConfig, FsConfig, FsStore, SlotFile};

use super::fs::Cleanup;
use super::{progress, BenchArgs};
use crate::report::Row;

/// The block: 64 layers of 32 KiB.
const LAYERS: usize = 64;
const LAYER: usize = 32 << 10;
const BLOCK: usize = LAYERS * LAYER;

/// A 32-byte key, as vLLM's block hashes are (stored whole, named by xxh3-128).
fn key(shape: &str, run: usize, i: usize) -> Vec<u8> {
    let mut k = format!("{shape}-{run}-{i}").into_bytes();
    k.resize(32, b'.');
    k
}

/// Block `i` of `buf` as one segment or as its 64 layers.
fn segments(buf: *mut u8, i: usize, layered: bool) -> Vec<RawSegment> {
    let parts = if layered { LAYERS } else { 1 };
    let len = BLOCK / parts;
    (0..parts)
        .map(|p| RawSegment {
            // SAFETY: in bounds: (i * BLOCK + p * len) < n * BLOCK, the buffer's length.
            ptr: unsafe { buf.add(i * BLOCK + p * len) },
            len,
        })
        .collect()
}

/// The shapes of one run, in this run's order: (name, layered).
fn shapes(run: usize) -> [(&'static str, bool); 2] {
    if run.is_multiple_of(2) {
        [("one", false), ("layers", true)]
    } else {
        [("layers", true), ("one", false)]
    }
}

fn finish(job: Job, n: usize, what: &str) -> kvr::Result<()> {
    job.wait(None)?;
    for i in 0..n {
        job.item(i).map_err(|e| e.context(what.to_string()))?;
    }
    Ok(())
}

fn timed(f: impl FnOnce() -> kvr::Result<()>) -> kvr::Result<f64> {
    let t = Instant::now();
    f()?;
    Ok((t.elapsed().as_secs_f64()).max(1e-9))
}

/// The batch calls of a tier under test: whole-key, segmented stores and loads.
trait SegmentedTier {
    /// What its store and load are called in errors ("vectored fs store", ...).
    const OPS: [&'static str; 2];
    /// Queues block `i` of `segments` as a store under `keys[i]`.
    ///
    /// # Safety
    /// The segments must stay valid for reads until the job has finished.
    unsafe fn store(&self, keys: &[Vec<u8>], segments: &[Vec<RawSegment>]) -> Job;
    /// Queues the load of `keys[i]` into block `i` of `segments`.
    ///
    /// # Safety
    /// The segments must stay valid and untouched until the job has finished.
    unsafe fn load(&self, keys: &[Vec<u8>], segments: &[Vec<RawSegment>]) -> Job;
}

/// One batch item per block: `item(key, segments)` of each key and its segments.
fn per_block<'a, T>(
    keys: &'a [Vec<u8>],
    segments: &'a [Vec<RawSegment>],
    item: impl Fn(&'a [u8], &'a [RawSegment]) -> T,
) -> Vec<T> {
    keys.iter().zip(segments).map(|(k, s)| item(k, s)).collect()
}

impl SegmentedTier for FsStore {
    const OPS: [&'static str; 2] = ["vectored fs store", "vectored fs load"];
    unsafe fn store(&self, keys: &[Vec<u8>], segments: &[Vec<RawSegment>]) -> Job {
        let items = per_block(keys, segments, |key, segments| StoreItem { key, segments });
        // SAFETY: this function's contract.
        unsafe { self.submit_store_items(&items) }
    }
    unsafe fn load(&self, keys: &[Vec<u8>], segments: &[Vec<RawSegment>]) -> Job {
        let items = per_block(keys, segments, |key, segments| LoadItem { key, segments });
        // SAFETY: this function's contract.
        unsafe { self.submit_load_items(&items) }
    }
}

/// No metadata: the bench moves payloads only.
const NO_META: RawSegment = RawSegment {
    ptr: std::ptr::null_mut(),
    len: 0,
};

impl SegmentedTier for SlotFile {
    const OPS: [&'static str; 2] = ["vectored disk write", "vectored disk read"];
    unsafe fn store(&self, keys: &[Vec<u8>], segments: &[Vec<RawSegment>]) -> Job {
        let items = per_block(keys, segments, |key, segments| WriteItem {
            key,
            segments,
            meta: NO_META,
        });
        // SAFETY: this function's contract.
        unsafe { self.submit_write_items(&items) }
    }
    unsafe fn load(&self, keys: &[Vec<u8>], segments: &[Vec<RawSegment>]) -> Job {
        let items = per_block(keys, segments, |key, segments| ReadItem {
            key,
            segments,
            meta_dst: NO_META,
            meta_len_out: std::ptr::null_mut(),
        });
        // SAFETY: this function's contract.
        unsafe { self.submit_read_items(&items) }
    }
}

/// Per shape (one buffer, layers): store and load GB/s of one run on `tier`.
fn run_shapes<T: SegmentedTier>(
    tier: &T,
    n: usize,
    run: usize,
    src: &AlignedBuf,
    dst: &mut AlignedBuf,
) -> kvr::Result<[[f64; 2]; 2]> {
    let mut out = [[0.0; 2]; 2];
    let gb = (n * BLOCK) as f64 / 1e9;
    let src_ptr = src.as_slice().as_ptr().cast_mut();
    let dst_ptr = dst.as_mut_slice().as_mut_ptr();
    let [store_op, load_op] = T::OPS;
    for (shape, layered) in shapes(run) {
        let col = layered as usize;
        let keys: Vec<Vec<u8>> = (0..n).map(|i| key(shape, run, i)).collect();
        let segs: Vec<Vec<RawSegment>> = (0..n).map(|i| segments(src_ptr, i, layered)).collect();
        out[col][0] = gb
            / timed(|| {
                // SAFETY: `src` outlives the job, which is finished before this closure returns.
                let job = unsafe { tier.store(&keys, &segs) };
                finish(job, n, store_op)
            })?;
        let segs: Vec<Vec<RawSegment>> = (0..n).map(|i| segments(dst_ptr, i, layered)).collect();
        out[col][1] = gb
            / timed(|| {
                // SAFETY: `dst` outlives the job and is not touched until it finished.
                let job = unsafe { tier.load(&keys, &segs) };
                finish(job, n, load_op)
            })?;
        check_same(src, dst, n, shape)?;
    }
    Ok(out)
}

/// Per shape (one buffer, layers): store and load GB/s of one fs run.
fn fs_run(
    root: &Path,
    args: &BenchArgs,
    n: usize,
    run: usize,
    src: &AlignedBuf,
    dst: &mut AlignedBuf,
) -> kvr::Result<[[f64; 2]; 2]> {
    let mut c = FsConfig::new(root, format!("bench-vectored-{run}"));
    c.direct_io = DirectIo::On;
    c.read_threads = args.threads;
    c.write_threads = args.threads;
    run_shapes(&FsStore::open(&c)?, n, run, src, dst)
}

/// Per shape (one buffer, layers): write and read GB/s of one slot file run.
fn disk_run(
    path: &Path,
    args: &BenchArgs,
    n: usize,
    run: usize,
    src: &AlignedBuf,
    dst: &mut AlignedBuf,
) -> kvr::Result<[[f64; 2]; 2]> {
    let mut c = DiskConfig::new(path, BLOCK as u64, 2 * n as u64);
    c.direct_io = DirectIo::On;
    c.io_threads = args.threads;
    run_shapes(&SlotFile::open(&c)?, n, run, src, dst)
}

fn check_same(src: &AlignedBuf, dst: &mut AlignedBuf, n: usize, shape: &str) -> kvr::Result<()> {
    if dst.as_slice()[..n * BLOCK] != src.as_slice()[..n * BLOCK] {
        return Err(kvr::err!(
            Internal,
            "vectored bench ({shape}): loaded bytes differ"
        ));
    }
    dst.as_mut_slice()[..n * BLOCK].fill(0);
    Ok(())
}

pub fn bench(args: &BenchArgs) -> kvr::Result<Vec<Row>> {
    let base = args
        .dir
        .join(format!("kvr-bench-vectored-{}", std::process::id()));
    let _cleanup = Cleanup(vec![base.clone()]);
    std::fs::create_dir_all(&base)
        .map_err(|e| kvr::Error::io(format!("creating {}", base.display()), e))?;
    let n = (args.bytes as usize / BLOCK).max(1);
    let mut src = AlignedBuf::new(n * BLOCK)?;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for c in src.as_mut_slice().chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let mut dst = AlignedBuf::new(n * BLOCK)?;
    let pb = progress((2 * args.runs) as u64, "vectored");
    // [tier][shape][op] -> GB/s per run.
    let mut v = vec![[[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]]; 2];
    for run in 0..args.runs {
        let r = fs_run(&base.join("fs"), args, n, run, &src, &mut dst)?;
        pb.inc(1);
        let slots = base.join(format!("slots-{run}"));
        let d = disk_run(&slots, args, n, run, &src, &mut dst)?;
        let _ = std::fs::remove_file(&slots);
        pb.inc(1);
        for (tier, res) in [r, d].iter().enumerate() {
            for shape in 0..2 {
                for op in 0..2 {
                    v[tier][shape][op].push(res[shape][op]);
                }
            }
        }
    }
    pb.finish_and_clear();
    let t = args.threads;
    let name = "same bytes as 1 buffer";
    let mut rows = Vec::new();
    for (tier, (tier_name, ops)) in [("fs", ["store", "load"]), ("disk", ["write", "read"])]
        .iter()
        .enumerate()
    {
        for (op, op_name) in ops.iter().enumerate() {
            rows.push(Row::new(
                tier_name,
                &format!("{op_name} {LAYERS}x32K"),
                BLOCK as u64,
                t,
                &v[tier][1][op],
                &v[tier][0][op],
                name,
            ));
        }
    }
    Ok(rows)
}
