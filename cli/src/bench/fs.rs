//! fs block store benchmark: async store and load batches (direct I/O, checksums on) next to
//! fio on the same directory with the same block size, `--numjobs=threads`, `--direct=1`.
//!
//! Per block size and run: a fresh namespace receives `bytes / block` distinct blocks in one
//! `submit_store` batch on `threads` write threads; one `submit_load` batch reads them back
//! (checksums verified) and the bytes are compared. Then, in `DIR/kvr-bench-fio`:
//! - `fio --rw=write --bs=B --numjobs=T --direct=1 --size=bytes/T --ioengine=psync`
//!   (sequential writes into one preallocated file per job: the strict disk limit),
//! - the same with `--nrfiles=bytes/T/B --filesize=B --create_on_open=1` (one new file per
//!   block, as the store does: the file-creation limit),
//! - `fio --rw=read` of the first job's files (one per job),
//! - `fio --rw=read` of the second job's files with `--openfiles=1` (open, read and close a
//!   file per block, as the store's loads do),
//! - the last two again with files of the block file's size (`B` plus the header page, read
//!   from the first block the store wrote), their GB/s counted in payload bytes (files/s x
//!   `B`): the same files and bytes the store moves. Where that size crosses a threshold of
//!   the file system's, the two pairs part: GlusterFS's quick-read caches the content of
//!   files up to 64 KiB at `LOOKUP`, so fio's 64 KiB files can be served from the client
//!   while the store's 68 KiB block files never are.
//!
//! Every fio job writes into its own fresh directory. Everything is removed only at the end
//! (deleting thousands of files right
//! before creating thousands more makes ext4's inode allocator skip the recently freed inodes,
//! which would measure the benchmark's own cleanup).

use std::path::{Path, PathBuf};
use std::time::Instant;

use kvr::fs::path::{block_path, store_dir};
use kvr::io::{AlignedBuf, DirectIo};
use kvr::{FsConfig, FsStore, Key, LoadRequest, StoreRequest};

use super::{progress, BenchArgs};
use crate::fio::{self, FioJob, FioTarget};
use crate::report::{human_bytes, Row};

/// Removes the benchmark's directories on drop, also on errors.
pub(super) struct Cleanup(pub(super) Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Keys spread like an engine's block hashes (xxh3-128 of block size, run and index).
fn key(block: u64, run: usize, i: usize) -> Key {
    let mut seed = [0u8; 24];
    seed[..8].copy_from_slice(&block.to_le_bytes());
    seed[8..16].copy_from_slice(&(run as u64).to_le_bytes());
    seed[16..].copy_from_slice(&(i as u64).to_le_bytes());
    Key(xxhash_rust::xxh3::xxh3_128(&seed).to_le_bytes())
}

/// The namespace of run `run` at block size `block`.
fn namespace(block: usize, run: usize) -> String {
    format!("bench-{block}-{run}")
}

/// The size of the file the store wrote for the first block of the first run (header page
/// included).
fn block_file_len(root: &Path, block: usize) -> kvr::Result<u64> {
    let p = block_path(
        &store_dir(root, &namespace(block, 0), None)?,
        &key(block as u64, 0, 0),
    );
    std::fs::metadata(&p)
        .map(|m| m.len())
        .map_err(|e| kvr::Error::io(format!("reading the size of {}", p.display()), e))
}

/// One kvr run: (store GB/s, load GB/s).
fn kvr_run(
    root: &Path,
    args: &BenchArgs,
    block: usize,
    n: usize,
    run: usize,
    src: &AlignedBuf,
    dst: &mut AlignedBuf,
) -> kvr::Result<(f64, f64)> {
    let mut c = FsConfig::new(root, namespace(block, run));
    c.direct_io = DirectIo::On;
    c.read_threads = args.threads;
    c.write_threads = args.threads;
    c.verify = true;
    c.write_mode = args.fs_write_mode.into();
    let s = FsStore::open(&c)?;
    if run == 0 {
        eprintln!(
            "fs bench, {block}-byte blocks: written {:?}, direct I/O {}",
            s.write_mode(),
            s.direct_io()
        );
    }
    let stores: Vec<StoreRequest> = (0..n)
        .map(|i| StoreRequest {
            key: key(block as u64, run, i),
            src: src.as_slice()[i * block..].as_ptr(),
            len: block,
        })
        .collect();
    let t = Instant::now();
    // SAFETY: `src` outlives the job, which is waited for and dropped in this function.
    let job = unsafe { s.submit_store(&stores) };
    job.wait(None)?;
    let store_s = t.elapsed().as_secs_f64();
    for i in 0..n {
        job.item(i).map_err(|e| e.context("fs bench store"))?;
    }
    drop(job);
    let base = dst.as_mut_slice().as_mut_ptr();
    let loads: Vec<LoadRequest> = (0..n)
        .map(|i| LoadRequest {
            key: key(block as u64, run, i),
            // SAFETY: i * block < n * block <= dst's length.
            dst: unsafe { base.add(i * block) },
            len: block,
        })
        .collect();
    let t = Instant::now();
    // SAFETY: `dst` outlives the job and is not touched until it completes.
    let job = unsafe { s.submit_load(&loads) };
    job.wait(None)?;
    let load_s = t.elapsed().as_secs_f64();
    for i in 0..n {
        job.item(i).map_err(|e| e.context("fs bench load"))?;
    }
    drop(job);
    if dst.as_slice()[..n * block] != src.as_slice()[..n * block] {
        return Err(kvr::err!(
            Internal,
            "fs bench: loaded bytes differ from stored"
        ));
    }
    let bytes = (n * block) as f64;
    Ok((bytes / store_s / 1e9, bytes / load_s / 1e9))
}

pub fn bench(args: &BenchArgs) -> kvr::Result<Vec<Row>> {
    fio::require()?;
    let base = args
        .dir
        .join(format!("kvr-bench-fs-{}", std::process::id()));
    let root = base.join("kvr");
    let fio_dir = base.join("fio");
    let _cleanup = Cleanup(vec![base.clone()]);
    std::fs::create_dir_all(&root)
        .map_err(|e| kvr::Error::io(format!("creating {}", root.display()), e))?;
    let max_block = *args.block_size.iter().max().expect("clap gives one size");
    let total = args.bytes.max(max_block) as usize;
    let mut src = AlignedBuf::new(total)?;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for c in src.as_mut_slice().chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let mut dst = AlignedBuf::new(total)?;
    let pb = progress((args.block_size.len() * args.runs) as u64, "fs");
    let mut rows = Vec::new();
    for &block in &args.block_size {
        let n = (total / block as usize).max(1);
        // fio moves the same volume, split over its jobs (whole blocks per job).
        let blocks_per_job = (n / args.threads).max(1) as u64;
        let (mut ks, mut kl, mut fw, mut fnew, mut fr, mut frnew) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut fsize, mut frsize) = (vec![], vec![]);
        let mut file_len = block;
        for run in 0..args.runs {
            let (s, l) = kvr_run(&root, args, block as usize, n, run, &src, &mut dst)?;
            ks.push(s);
            kl.push(l);
            if run == 0 {
                file_len = block_file_len(&root, block as usize)?;
            }
            let sized = |bs: u64| {
                move |rw, target, new_files| FioJob {
                    rw,
                    block_size: bs,
                    numjobs: args.threads,
                    direct: true,
                    size_per_job: blocks_per_job * bs,
                    target,
                    new_file_per_block: new_files,
                }
            };
            let job = sized(block);
            // Each fio job gets its own directory, all kept until the end: deleting thousands
            // of files right before the next run's creations would make ext4's inode
            // allocator crawl over the recently freed inodes (`recently_deleted`).
            let dir = |what: &str| -> kvr::Result<PathBuf> {
                let d = fio_dir.join(format!("{what}-{block}-{run}"));
                std::fs::create_dir_all(&d)
                    .map_err(|e| kvr::Error::io(format!("creating {}", d.display()), e))?;
                Ok(d)
            };
            let seq = dir("seq")?;
            fw.push(fio::run(&job("write", FioTarget::Directory(&seq), false))?);
            fr.push(fio::run(&job("read", FioTarget::Directory(&seq), false))?);
            let new = dir("new")?;
            fnew.push(fio::run(&job("write", FioTarget::Directory(&new), true))?);
            frnew.push(fio::run(&job("read", FioTarget::Directory(&new), true))?);
            // Files of the block file's size; GB/s of payload (files/s x block).
            let as_payload = block as f64 / file_len as f64;
            let job = sized(file_len);
            let new = dir("sized")?;
            fsize.push(fio::run(&job("write", FioTarget::Directory(&new), true))? * as_payload);
            frsize.push(fio::run(&job("read", FioTarget::Directory(&new), true))? * as_payload);
            pb.inc(1);
        }
        // The per-block fio rows again on files of the block file's size, named after them.
        let new_file = "fio write --direct=1, new file per block";
        let open_read_close = "fio read --direct=1, open+read+close a file per block";
        let of_block_file_size = |label: &str| {
            format!(
                "{label} of the block file's size ({} + {} header), payload GB/s",
                human_bytes(block),
                human_bytes(file_len - block)
            )
        };
        let limits = [
            (
                "store",
                &ks,
                &fw,
                "fio write --direct=1, 1 file per job".to_string(),
            ),
            ("store", &ks, &fnew, new_file.to_string()),
            ("store", &ks, &fsize, of_block_file_size(new_file)),
            (
                "load",
                &kl,
                &fr,
                "fio read --direct=1, 1 file per job".to_string(),
            ),
            ("load", &kl, &frnew, open_read_close.to_string()),
            ("load", &kl, &frsize, of_block_file_size(open_read_close)),
        ];
        for (op, kvr, limit, name) in limits {
            rows.push(Row::new("fs", op, block, args.threads, kvr, limit, &name));
        }
    }
    pb.finish_and_clear();
    Ok(rows)
}
