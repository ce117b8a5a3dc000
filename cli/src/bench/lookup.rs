//! Batched per-key lookups (`kvr_fs_lookup`, `kvr_disk_lookup`): the time to answer 1,000
//! 32-byte keys.
//!
//! - fs, in-memory index: a handle asks about 1,000 blocks it stored itself (no I/O).
//! - fs, file system: a handle opened before another handle stored the blocks (as another
//!   process or host would) asks about them: one `stat` per key. Each run uses a fresh
//!   namespace, since a found block joins the asking handle's index.
//! - fs, misses: 1,000 absent keys (a miss may be another host's block: one `stat` each).
//! - slot file: the owner's index (complete, no I/O), half of the keys present.

use std::time::Instant;

use kvr::{DiskConfig, FsConfig, FsStore, SlotFile};

use super::fs::Cleanup;
use super::BenchArgs;
use crate::report::Timing;

const KEYS: usize = 1000;

fn keys(run: usize) -> Vec<Vec<u8>> {
    (0..KEYS)
        .map(|i| {
            let mut k = format!("lookup-{run}-{i}").into_bytes();
            k.resize(32, b'.');
            k
        })
        .collect()
}

/// Microseconds of one lookup of `keys`, checking that keys `0, step, 2*step...` and no
/// others are present (`step` 0: none are).
fn timed_lookup(
    lookup: impl Fn(&[&[u8]], &mut [u8]) -> kvr::Result<usize>,
    keys: &[&[u8]],
    step: usize,
) -> kvr::Result<f64> {
    let mut present = vec![0u8; keys.len()];
    let t = Instant::now();
    let hits = lookup(keys, &mut present)?;
    let us = t.elapsed().as_secs_f64() * 1e6;
    let want = if step == 0 {
        0
    } else {
        keys.len().div_ceil(step)
    };
    let right = (0..keys.len()).all(|i| present[i] == (step != 0 && i % step == 0) as u8);
    if hits != want || !right {
        return Err(kvr::err!(
            Internal,
            "lookup bench: {hits} hits, expected {want}"
        ));
    }
    Ok(us)
}

pub fn bench(args: &BenchArgs) -> kvr::Result<Vec<Timing>> {
    let base = args
        .dir
        .join(format!("kvr-bench-lookup-{}", std::process::id()));
    let _cleanup = Cleanup(vec![base.clone()]);
    std::fs::create_dir_all(&base)
        .map_err(|e| kvr::Error::io(format!("creating {}", base.display()), e))?;
    let block = vec![7u8; 4096];
    let (mut mem, mut stat, mut miss, mut disk) = (vec![], vec![], vec![], vec![]);
    for run in 0..args.runs {
        let all = keys(run);
        let asked: Vec<&[u8]> = all.iter().map(|k| &k[..]).collect();
        let absent = keys(run + args.runs);
        let absent: Vec<&[u8]> = absent.iter().map(|k| &k[..]).collect();
        let c = FsConfig::new(base.join("fs"), format!("lookup-{run}"));
        let reader = FsStore::open(&c)?;
        let writer = FsStore::open(&c)?;
        for k in &asked {
            writer.store_segments(k, &[&block], None)?;
        }
        stat.push(timed_lookup(|k, p| reader.lookup(k, p), &asked, 1)?);
        mem.push(timed_lookup(|k, p| writer.lookup(k, p), &asked, 1)?);
        miss.push(timed_lookup(|k, p| writer.lookup(k, p), &absent, 0)?);
        // Every other key is stored in the slot file; the rest are misses.
        let stored: Vec<&[u8]> = asked.iter().step_by(2).copied().collect();
        let path = base.join(format!("slots-{run}"));
        let d = SlotFile::open(&DiskConfig::new(&path, 4096, KEYS as u64))?;
        for k in &stored {
            d.write_segments(k, &[&block], &[])?;
        }
        disk.push(timed_lookup(|k, p| d.lookup(k, p), &asked, 2)?);
        drop(d);
        let _ = std::fs::remove_file(&path);
    }
    Ok(vec![
        Timing::new("fs", "lookup 1000 keys, in-memory index", &mem),
        Timing::new("fs", "lookup 1000 keys, file system (stat)", &stat),
        Timing::new("fs", "lookup 1000 absent keys (stat)", &miss),
        Timing::new("disk", "lookup 1000 keys (500 present), index", &disk),
    ])
}
