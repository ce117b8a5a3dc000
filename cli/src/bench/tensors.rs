//! Tensor file benchmark, one file of `--bytes` per block size holding tensors of
//! `--block-size` bytes each (4 KiB-aligned, as kvr writes them for O_DIRECT):
//!
//! - `read_into` of every tensor in file order, one thread, into one 4096-aligned tensor
//!   buffer (fio also reuses one buffer), opening the file each pass (fio does too), against
//!   `fio --rw=read --ioengine=psync` of the same file with
//!   `--bs` = the tensor size and `--numjobs=1`:
//!   - `read O_DIRECT`: [`TensorFile::read_into_direct`] vs fio `--direct=1`;
//!   - `read cold`: buffered `read_into` after `POSIX_FADV_DONTNEED` of the file vs fio
//!     `--direct=0` (fio drops the file's cache itself before it starts, `invalidate=1`);
//!   - both timed in the order kvr, fio, fio, kvr each run after one untimed read of the
//!     file (the virtual disk caches below the page cache, so the first read after a while
//!     is slower whoever does it), each side scored over both of its passes;
//! - `read warm`: buffered `read_into` with the file in the page cache vs memcpy of the same
//!   bytes from a pre-faulted anonymous buffer of the file's size;
//! - `write T`: the same tensors written from transposed F16 views (element-wise gather)
//!   vs written from contiguous memory; without fsync (the gather against the page cache)
//!   and with fsync (what a caller waits for).
//!
//! Also times open + get of one tensor of a 1000-tensor file of `--bytes` (header parse only),
//! and reading that one tensor cold through the mapping (open + get + a load per page)
//! against `read_into` of it.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kvr::io::AlignedBuf;
use kvr::tensors::{Dtype, TensorFile, TensorIn, WriteOptions};

use super::{progress, BenchArgs};
use crate::fio::{self, FioJob, FioTarget};
use crate::report::{Row, Timing};

/// Removes the file on drop.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn evict(path: &Path) -> kvr::Result<()> {
    let f = std::fs::File::open(path).map_err(|e| kvr::Error::io("opening for fadvise", e))?;
    // SAFETY: fadvise on a valid descriptor; it only drops clean cached pages.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(kvr::Error::io(
            format!("posix_fadvise(DONTNEED) on {}", path.display()),
            std::io::Error::from_raw_os_error(rc),
        ));
    }
    Ok(())
}

/// Rows x cols of an F16 matrix of `bytes` bytes, as square as powers of two allow.
fn matrix(bytes: u64) -> (u64, u64) {
    let elems = bytes / 2;
    let mut r = 1u64;
    while r * r * 4 <= elems && elems.is_multiple_of(r * 2) {
        r *= 2;
    }
    (r, elems / r)
}

fn names(n: u64) -> Vec<String> {
    (0..n).map(|i| format!("t{i}")).collect()
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

/// Writes `n` tensors of `block` bytes from `src` (n*block bytes): contiguous, or each one
/// the transpose of its slice. Returns seconds.
fn write_file(
    path: &Path,
    src: &[u8],
    n: u64,
    block: u64,
    transpose: bool,
    sync: bool,
) -> kvr::Result<f64> {
    let (r, c) = matrix(block);
    let names = names(n);
    let shape = [r, c];
    let tshape = [c, r];
    let tstrides = [1i64, c as i64];
    let tensors: Vec<TensorIn> = names
        .iter()
        .enumerate()
        .map(|(i, name)| TensorIn {
            name,
            dtype: Dtype::F16,
            shape: if transpose { &tshape } else { &shape },
            strides: transpose.then_some(&tstrides[..]),
            data: src,
            offset: i * block as usize,
        })
        .collect();
    let opts = WriteOptions {
        align_4k: true,
        sync,
    };
    let t0 = Instant::now();
    kvr::tensors::write(path, &tensors, &[("kvr.bench", "1")], opts)?;
    Ok(t0.elapsed().as_secs_f64())
}

pub fn bench(args: &BenchArgs) -> kvr::Result<(Vec<Row>, Vec<Timing>)> {
    fio::require()?;
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| kvr::Error::io(format!("creating {}", args.dir.display()), e))?;
    let (mut rows, mut timings) = (Vec::new(), Vec::new());
    let pb = progress(
        (args.block_size.len() * args.runs * 7 + 1) as u64,
        "tensors",
    );
    let scratch = Scratch(args.dir.join(format!(
        "kvr_bench_tensors_{}.safetensors",
        std::process::id()
    )));
    let path = scratch.0.as_path();
    for &block in &args.block_size {
        if !block.is_multiple_of(4096) {
            return Err(kvr::err!(
                InvalidArgument,
                "the tensors tier needs block sizes that are multiples of 4096 (got {block})"
            ));
        }
        let n = (args.bytes / block).max(1);
        let total = n * block;
        let src: Vec<u8> = (0..total as usize).map(|i| (i % 251) as u8).collect();

        // Writes: transposed vs contiguous, without and with fsync.
        for sync in [false, true] {
            let (mut strided, mut contiguous) = (vec![], vec![]);
            for _ in 0..args.runs {
                contiguous.push(gbps(total, write_file(path, &src, n, block, false, sync)?));
                strided.push(gbps(total, write_file(path, &src, n, block, true, sync)?));
                pb.inc(1);
            }
            let op = if sync { "write T+fsync" } else { "write T" };
            rows.push(Row::new(
                "tensors",
                op,
                block,
                1,
                &strided,
                &contiguous,
                "contiguous write",
            ));
        }
        drop(src);

        // The read file: the last write (contiguous, fsynced) left tensors t0..t{n-1}.
        write_file(path, &vec![3u8; total as usize], n, block, false, true)?;
        let file_len = std::fs::metadata(path)
            .map_err(|e| kvr::Error::io("stat", e))?
            .len();
        let names = names(n);
        let mut dst = AlignedBuf::new(block as usize)?;
        // Like fio, each pass opens the file (so its time counts) and reads it front to back.
        let read_all = |dst: &mut AlignedBuf, direct: bool| -> kvr::Result<f64> {
            let t0 = Instant::now();
            let f = TensorFile::open(path)?;
            for name in &names {
                if direct {
                    f.read_into_direct(Some(name), dst.as_mut_slice())?;
                } else {
                    f.read_into(Some(name), dst.as_mut_slice())?;
                }
            }
            Ok(gbps(total, t0.elapsed().as_secs_f64()))
        };
        let fio_read = |direct: bool| {
            fio::run(&FioJob {
                rw: "read",
                block_size: block,
                numjobs: 1,
                direct,
                size_per_job: file_len,
                target: FioTarget::File(path),
                new_file_per_block: false,
            })
        };
        // The disk below the page cache caches too (a virtio disk: the host's cache): with
        // the guest's cache dropped, the first buffered read of the file after a while runs
        // at about half the speed of the next one (measured with fio alone: fio after
        // O_DIRECT passes 0.8-1.0 GB/s, fio or kvr right after it 1.8-2.1 GB/s at 64K), and
        // O_DIRECT reads do not warm it. Timing kvr first and fio second each run gave fio
        // the warm device every time. So each run first reads the file once untimed (the
        // device warm for everyone; the guest cannot evict the host's cache, so "cold" here
        // means the guest's page cache dropped), then times kvr, fio, fio, kvr (ABBA), each
        // after dropping the guest cache, and scores each side by its bytes over its time in
        // both positions.
        let mut abba = |direct: bool| -> kvr::Result<(f64, f64)> {
            evict(path)?;
            read_all(&mut dst, false)?;
            evict(path)?;
            let k1 = read_all(&mut dst, direct)?;
            evict(path)?;
            let f1 = fio_read(direct)?;
            evict(path)?;
            let f2 = fio_read(direct)?;
            evict(path)?;
            let k2 = read_all(&mut dst, direct)?;
            let both = |a: f64, b: f64| 2.0 / (1.0 / a + 1.0 / b);
            Ok((both(k1, k2), both(f1, f2)))
        };
        let (mut d, mut dl, mut c, mut cl) = (vec![], vec![], vec![], vec![]);
        for _ in 0..args.runs {
            let (k, f) = abba(true)?;
            d.push(k);
            dl.push(f);
            pb.inc(1);
            let (k, f) = abba(false)?;
            c.push(k);
            cl.push(f);
            pb.inc(1);
        }
        rows.push(Row::new(
            "tensors",
            "read O_DIRECT",
            block,
            1,
            &d,
            &dl,
            "fio read --direct=1",
        ));
        rows.push(Row::new(
            "tensors",
            "read cold",
            block,
            1,
            &c,
            &cl,
            "fio read --direct=0, cache dropped",
        ));

        // Warm: the file is in the page cache; the limit is memcpy of as many bytes.
        read_all(&mut dst, false)?;
        let mem = memmap2::MmapOptions::new()
            .len(total as usize)
            .populate()
            .map_anon()
            .map_err(|e| kvr::Error::io("mapping the memcpy reference buffer", e))?;
        let (mut w, mut wl) = (vec![], vec![]);
        for _ in 0..args.runs {
            w.push(read_all(&mut dst, false)?);
            let t0 = Instant::now();
            for chunk in mem.chunks(block as usize) {
                dst.as_mut_slice()[..chunk.len()].copy_from_slice(chunk);
                std::hint::black_box(dst.as_slice().as_ptr());
            }
            wl.push(gbps(total, t0.elapsed().as_secs_f64()));
            pb.inc(1);
        }
        rows.push(Row::new(
            "tensors",
            "read warm",
            block,
            1,
            &w,
            &wl,
            "memcpy",
        ));
    }

    // Open + get of one of 1000 tensors: the header parse, not a read of the file.
    const N: u64 = 1000;
    let block = (args.bytes / N).div_ceil(4096).max(1) * 4096;
    let one = vec![5u8; block as usize];
    let names = names(N);
    let shape = [block];
    let tensors: Vec<TensorIn> = names
        .iter()
        .map(|nm| TensorIn::contiguous(nm, Dtype::U8, &shape, &one))
        .collect();
    let opts = WriteOptions {
        align_4k: true,
        sync: false,
    };
    let len = kvr::tensors::write(path, &tensors, &[], opts)?;
    for cold in [false, true] {
        let mut us = Vec::new();
        for i in 0..31 {
            if cold {
                evict(path)?;
            }
            let t0 = Instant::now();
            let f = TensorFile::open(path)?;
            let r = f.get(Some(&names[(i * 37) % N as usize]))?;
            std::hint::black_box(r.data.as_ptr());
            us.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        timings.push(Timing::new(
            "tensors",
            &format!(
                "open + get 1 of {N} tensors, {} file, {}",
                crate::report::human_bytes(len),
                if cold { "cache dropped" } else { "warm" }
            ),
            &us,
        ));
    }
    // One tensor read cold, zero-copy (open + get + every byte read through the pointer)
    // against a copy (open + read_into): the zero-copy path must be no slower.
    let mut buf = AlignedBuf::new(block as usize)?;
    for zero_copy in [true, false] {
        let mut us = Vec::new();
        for i in 0..31 {
            evict(path)?;
            let name = &names[(i * 37) % N as usize];
            let t0 = Instant::now();
            let f = TensorFile::open(path)?;
            if zero_copy {
                let r = f.get(Some(name))?;
                // One load per page faults every page in, as a consumer's read would.
                let sum: u64 = r.data.iter().step_by(4096).map(|&b| b as u64).sum();
                std::hint::black_box(sum);
            } else {
                f.read_into(Some(name), buf.as_mut_slice())?;
                std::hint::black_box(buf.as_slice()[0]);
            }
            us.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        timings.push(Timing::new(
            "tensors",
            &format!(
                "{} 1 of {N} tensors ({}), {} file, cache dropped",
                if zero_copy {
                    "open + get + read through the pointer,"
                } else {
                    "open + read_into,"
                },
                crate::report::human_bytes(block),
                crate::report::human_bytes(len),
            ),
            &us,
        ));
    }
    pb.finish_and_clear();
    Ok((rows, timings))
}
