//! Region benchmark: open+populate with rank processes vs plain `mmap` + `MADV_POPULATE_WRITE`,
//! and memcpy into/out of views vs plain memcpy of the same bytes.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use kvr::{Layout, Region, RegionConfig, Role};

use super::{progress, BenchArgs};
use crate::report::Row;

const RANKS: u32 = 2;

fn layout(bytes: u64, block: u64) -> kvr::Result<Layout> {
    let blocks = (bytes / (block * RANKS as u64)).max(1);
    Layout::new(blocks, block, RANKS)
}

/// The physical reference: a fresh /dev/shm file of `len` bytes mapped and populated for writing.
fn plain_populate_secs(len: usize) -> kvr::Result<f64> {
    let path = format!("/dev/shm/kvr_bench_plain_{}", std::process::id());
    let t0 = Instant::now();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| kvr::Error::io(format!("creating {path}"), e))?;
    f.set_len(len as u64)
        .map_err(|e| kvr::Error::io(format!("sizing {path}"), e))?;
    let map = memmap2::MmapOptions::new()
        .len(len)
        .map_raw(&f)
        .map_err(|e| kvr::Error::io("mmap", e))?;
    // SAFETY: the mapping is `len` bytes and lives until `map` drops below.
    let rc = unsafe { libc::madvise(map.as_mut_ptr().cast(), len, libc::MADV_POPULATE_WRITE) };
    let secs = t0.elapsed().as_secs_f64();
    drop(map);
    let _ = std::fs::remove_file(&path);
    if rc != 0 {
        return Err(kvr::Error::last_os("MADV_POPULATE_WRITE"));
    }
    Ok(secs)
}

/// kvr: a scheduler creates the region; RANKS processes attach and pre-fault their slices.
fn kvr_open_populate_secs(layout: Layout) -> kvr::Result<f64> {
    let name = format!("bench_{}", std::process::id());
    let exe = std::env::current_exe().map_err(|e| kvr::Error::io("locating the kvr binary", e))?;
    let t0 = Instant::now();
    let sched = Region::open(&RegionConfig::new(&name, layout, Role::Scheduler))?;
    let kids: Vec<_> = (0..RANKS)
        .map(|r| {
            Command::new(&exe)
                .args(["__bench-rank", "/dev/shm", &name])
                .args([layout.num_blocks, layout.cpu_page_size].map(|v| v.to_string()))
                .args([RANKS, r].map(|v| v.to_string()))
                .spawn()
        })
        .collect::<Result<_, _>>()
        .map_err(|e| kvr::Error::io("starting a rank process", e))?;
    for mut k in kids {
        let ok = k.wait().map(|s| s.success()).unwrap_or(false);
        if !ok {
            return Err(kvr::err!(Internal, "a benchmark rank process failed"));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(sched);
    Ok(secs)
}

/// Body of one rank process (`kvr __bench-rank`).
pub fn rank_process(
    dir: &Path,
    name: &str,
    blocks: u64,
    page: u64,
    ranks: u32,
    rank: u32,
) -> kvr::Result<()> {
    let mut cfg = RegionConfig::new(name, Layout::new(blocks, page, ranks)?, Role::Rank(rank));
    cfg.dir = dir.to_owned();
    cfg.create = false;
    Region::open(&cfg).map(drop)
}

/// GB/s of copying `block` bytes `blocks` times between `buf` and `base + b*stride`.
fn copy_gbps(buf: &mut [u8], base: *mut u8, blocks: u64, stride: u64, into: bool) -> f64 {
    let t0 = Instant::now();
    for b in 0..blocks {
        // SAFETY: callers pass `blocks` blocks of buf.len() bytes at `stride` inside a live mapping.
        unsafe {
            let p = base.add((b * stride) as usize);
            if into {
                std::ptr::copy_nonoverlapping(buf.as_ptr(), p, buf.len());
            } else {
                std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len());
            }
        }
    }
    (blocks * buf.len() as u64) as f64 / t0.elapsed().as_secs_f64() / 1e9
}

pub fn bench(args: &BenchArgs) -> kvr::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let pb = progress((args.block_size.len() * args.runs * 2) as u64, "region");
    for &block in &args.block_size {
        let layout = layout(args.bytes, block)?;
        let len = layout.data_len();
        let (mut plain, mut ours) = (vec![], vec![]);
        for _ in 0..args.runs {
            plain.push(len as f64 / plain_populate_secs(len as usize)? / 1e9);
            ours.push(len as f64 / kvr_open_populate_secs(layout)? / 1e9);
            pb.inc(1);
        }
        rows.push(Row::new(
            "region",
            "open+populate",
            block,
            RANKS as usize,
            &ours,
            &plain,
            "mmap+MADV_POPULATE_WRITE",
        ));

        // Copies of one rank's view vs a plain pre-faulted buffer of the same size.
        let name = format!("bench_copy_{}", std::process::id());
        let region = Region::open(&RegionConfig::new(&name, layout, Role::Rank(0)))?;
        let view = region.create_view(block)?;
        let plain_buf = memmap2::MmapOptions::new()
            .len((view.num_blocks() * block) as usize)
            .populate()
            .map_anon()
            .map_err(|e| kvr::Error::io("mapping the memcpy reference buffer", e))?;
        let mut buf = vec![7u8; block as usize];
        let plain = plain_buf.as_ptr() as *mut u8;
        let (n, stride) = (view.num_blocks(), view.row_stride());
        // One untimed pass over both, then alternate which goes first, so neither side is
        // favoured by cache or page-table warmth.
        copy_gbps(&mut buf, view.as_ptr(), n, stride, true);
        copy_gbps(&mut buf, plain, n, block, true);
        let (mut w, mut wp, mut r, mut rp) = (vec![], vec![], vec![], vec![]);
        for run in 0..args.runs {
            for side in [run % 2, 1 - run % 2] {
                if side == 0 {
                    w.push(copy_gbps(&mut buf, view.as_ptr(), n, stride, true));
                    r.push(copy_gbps(&mut buf, view.as_ptr(), n, stride, false));
                } else {
                    wp.push(copy_gbps(&mut buf, plain, n, block, true));
                    rp.push(copy_gbps(&mut buf, plain, n, block, false));
                }
            }
            pb.inc(1);
        }
        rows.push(Row::new(
            "region",
            "write (memcpy)",
            block,
            1,
            &w,
            &wp,
            "memcpy",
        ));
        rows.push(Row::new(
            "region",
            "read (memcpy)",
            block,
            1,
            &r,
            &rp,
            "memcpy",
        ));
    }
    pb.finish_and_clear();
    Ok(rows)
}
