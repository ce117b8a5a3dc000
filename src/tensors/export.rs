//! Export and import of region blocks as one tensor file.
//!
//! A scheduler handle exports whole rows (every worker's slice of each chosen block); a rank
//! handle exports only its own slices. The file holds three tensors, in this order:
//! `block_ids` (U64 `[n]`), `blocks` (U8 `[n, bytes_per_block]`) and `checksums` (U64 `[n]`),
//! and records the layout in `__metadata__`: `kvr.kind = "region_blocks"`, `kvr.format = "2"`,
//! `kvr.num_blocks`, `kvr.cpu_page_size`, `kvr.num_workers`, `kvr.rank` (a number or
//! `"scheduler"`).
//!
//! Checksums of format 2 are bound to the block's id and to the layout: `checksums[i]` is the
//! xxh3-64 of block `i`'s bytes seeded with the xxh3-64 of the layout, the role and
//! `block_ids[i]` (see `checksum_seed`), so a changed id, which would put correct bytes into the wrong
//! row, fails its checksum like changed bytes do. Format 1 files (written before format 2)
//! stay importable: their checksums are the unseeded xxh3-64 of the bytes alone, so a changed
//! id is caught only when it is out of range or repeated.
//!
//! Import accepts only a file whose layout and role equal the region's, rejects out-of-range
//! and repeated ids and verifies every checksum before copying anything, then copies the
//! blocks into their rows.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::Path;

use super::file::TensorFile;
use super::header::NamedTensor;
use super::write::{write_sources, Source, WriteOptions};
use super::Dtype;
use super::TensorSpec;
use crate::region::{Layout, Region, Role};
use crate::{err, Error, Result};

/// Value of `kvr.kind` in exported files.
pub const KIND: &str = "region_blocks";

/// Value of `kvr.format` in files written now: checksums bound to ids and layout.
const FORMAT: &str = "2";
/// Format of files written before ids were bound: checksums of the bytes alone.
const FORMAT_BYTES_ONLY: &str = "1";

/// Seed of the checksum of block `id` in format 2: the xxh3-64 of a tag, the layout
/// (`num_blocks`, `cpu_page_size`, `num_workers`), the role (rank, or `u64::MAX` for the
/// scheduler) and the id, each a little-endian u64.
fn checksum_seed(layout: &Layout, role: Role, id: u64) -> u64 {
    let rank = match role {
        Role::Rank(r) => r as u64,
        Role::Scheduler => u64::MAX,
    };
    let mut bound = Vec::with_capacity(64);
    bound.extend_from_slice(b"kvr.region_blocks.2\0");
    for v in [
        layout.num_blocks,
        layout.cpu_page_size,
        layout.num_workers as u64,
        rank,
        id,
    ] {
        bound.extend_from_slice(&v.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bound)
}

fn role_str(role: Role) -> String {
    match role {
        Role::Rank(r) => r.to_string(),
        Role::Scheduler => "scheduler".into(),
    }
}

/// (offset of the exported part inside a row, bytes per block) for a role.
fn part(layout: &Layout, role: Role) -> (u64, u64) {
    match role {
        Role::Scheduler => (0, layout.row_stride()),
        Role::Rank(r) => (r as u64 * layout.cpu_page_size, layout.cpu_page_size),
    }
}

/// Writes blocks `block_ids` of `region` (rows for a scheduler handle, this rank's slices for
/// a rank handle) to `path`. Returns the file size.
pub fn export_blocks(
    region: &Region,
    block_ids: &[u64],
    path: &Path,
    opts: WriteOptions,
) -> Result<u64> {
    let layout = region.layout();
    let role = region.info().role;
    let ctx = |e: Error| e.context(format!("exporting {} blocks", block_ids.len()));
    if block_ids.is_empty() {
        return Err(ctx(Error::invalid("no block ids given")));
    }
    let mut seen = HashSet::new();
    for &b in block_ids {
        if b >= layout.num_blocks {
            return Err(ctx(err!(
                InvalidArgument,
                "block {b} out of range (num_blocks {})",
                layout.num_blocks
            )));
        }
        if !seen.insert(b) {
            return Err(ctx(err!(InvalidArgument, "block {b} listed twice")));
        }
    }
    let (in_row, bytes) = part(&layout, role);
    let base = region.data_ptr();
    let ptrs = block_ids
        .iter()
        // SAFETY: b < num_blocks and in_row + bytes <= row_stride, so the row part lies inside
        // the region's data area, which stays mapped while `region` is borrowed.
        .map(|&b| unsafe { base.add((b * layout.row_stride() + in_row) as usize) } as *const u8)
        .collect();
    let ids: Vec<u8> = block_ids.iter().flat_map(|b| b.to_le_bytes()).collect();
    let seeds: Vec<u64> = block_ids
        .iter()
        .map(|&b| checksum_seed(&layout, role, b))
        .collect();
    let hashes = RefCell::new(Vec::with_capacity(block_ids.len()));
    let n = block_ids.len() as u64;
    let specs = [
        NamedTensor {
            name: "block_ids".into(),
            spec: TensorSpec {
                dtype: Dtype::U64,
                shape: vec![n],
            },
        },
        NamedTensor {
            name: "blocks".into(),
            spec: TensorSpec {
                dtype: Dtype::U8,
                shape: vec![n, bytes],
            },
        },
        NamedTensor {
            name: "checksums".into(),
            spec: TensorSpec {
                dtype: Dtype::U64,
                shape: vec![n],
            },
        },
    ];
    // The checksums are computed while the blocks stream out and written after them.
    let sources = [
        Source::Bytes(&ids),
        Source::Rows {
            ptrs,
            len: bytes as usize,
            hashes: Some(&hashes),
            hash_seeds: &seeds,
        },
        Source::Hashes(&hashes),
    ];
    let meta = [
        ("kvr.kind", KIND.to_string()),
        ("kvr.format", FORMAT.to_string()),
        ("kvr.num_blocks", layout.num_blocks.to_string()),
        ("kvr.cpu_page_size", layout.cpu_page_size.to_string()),
        ("kvr.num_workers", layout.num_workers.to_string()),
        ("kvr.rank", role_str(role)),
    ];
    let meta: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (*k, v.as_str())).collect();
    write_sources(path, &specs, &sources, &meta, opts).map_err(ctx)
}

fn meta_u64(f: &TensorFile, key: &str) -> Result<u64> {
    let v = f
        .metadata_get(key)
        .ok_or_else(|| err!(Corrupt, "metadata '{key}' is missing"))?;
    v.parse()
        .map_err(|_| err!(Corrupt, "metadata '{key}' = '{v}' is not a number"))
}

/// Loads the blocks of a file written by [`export_blocks`] into `region`, which must have the
/// same layout and role (`LayoutMismatch` otherwise). Returns the block ids loaded.
pub fn import_blocks(region: &Region, path: &Path) -> Result<Vec<u64>> {
    let ctx = |e: Error| e.context(format!("importing blocks from {}", path.display()));
    let f = TensorFile::open(path).map_err(ctx)?;
    if f.metadata_get("kvr.kind") != Some(KIND) {
        return Err(ctx(err!(
            InvalidArgument,
            "not a kvr region export (metadata kvr.kind is {:?}, expected '{KIND}')",
            f.metadata_get("kvr.kind")
        )));
    }
    let ids_bound = match f.metadata_get("kvr.format") {
        Some(FORMAT) => true,
        Some(FORMAT_BYTES_ONLY) => false,
        other => {
            return Err(ctx(err!(
                Unsupported,
                "region export format {other:?} is not supported (expected {FORMAT_BYTES_ONLY} or {FORMAT})"
            )))
        }
    };
    let file_layout = Layout {
        num_blocks: meta_u64(&f, "kvr.num_blocks").map_err(ctx)?,
        cpu_page_size: meta_u64(&f, "kvr.cpu_page_size").map_err(ctx)?,
        num_workers: meta_u64(&f, "kvr.num_workers")
            .map_err(ctx)?
            .try_into()
            .map_err(|_| ctx(err!(Corrupt, "kvr.num_workers out of range")))?,
    };
    let file_role = f.metadata_get("kvr.rank").unwrap_or("?");
    let layout = region.layout();
    let role = region.info().role;
    if file_layout != layout || file_role != role_str(role) {
        return Err(ctx(err!(
            LayoutMismatch,
            "file holds {file_layout} exported by rank '{file_role}', region is {layout} opened as rank '{}'",
            role_str(role)
        )));
    }
    let (in_row, bytes) = part(&layout, role);
    let ids = f.get(Some("block_ids")).map_err(ctx)?;
    let blocks = f.get(Some("blocks")).map_err(ctx)?;
    let sums = f.get(Some("checksums")).map_err(ctx)?;
    let n = ids.entry.shape.first().copied().unwrap_or(0);
    let shapes_ok = ids.entry.dtype == Dtype::U64
        && ids.entry.shape == [n]
        && sums.entry.dtype == Dtype::U64
        && sums.entry.shape == [n]
        && blocks.entry.dtype == Dtype::U8
        && blocks.entry.shape == [n, bytes];
    if !shapes_ok {
        return Err(ctx(err!(
            Corrupt,
            "tensors block_ids {:?}, blocks {:?}, checksums {:?} do not describe {n} blocks of {bytes} bytes",
            ids.entry.shape,
            blocks.entry.shape,
            sums.entry.shape
        )));
    }
    let u64s = |b: &[u8]| -> Vec<u64> {
        b.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    };
    let block_ids = u64s(ids.data);
    let checksums = u64s(sums.data);
    let mut seen = HashSet::new();
    for (i, &b) in block_ids.iter().enumerate() {
        if b >= layout.num_blocks || !seen.insert(b) {
            return Err(ctx(err!(
                Corrupt,
                "block id {b} at index {i} is out of range or repeated; nothing was imported"
            )));
        }
    }
    for (i, (&b, &sum)) in block_ids.iter().zip(&checksums).enumerate() {
        let data = &blocks.data[i * bytes as usize..(i + 1) * bytes as usize];
        let seed = if ids_bound {
            checksum_seed(&layout, role, b)
        } else {
            0
        };
        let got = xxhash_rust::xxh3::xxh3_64_with_seed(data, seed);
        if got != sum {
            return Err(ctx(err!(
                Corrupt,
                "block {b} fails its checksum (stored {sum:#018x}, computed {got:#018x}: {} changed); nothing was imported",
                if ids_bound { "its bytes, its id or the layout" } else { "its bytes" }
            )));
        }
    }
    let base = region.data_ptr();
    for (i, &b) in block_ids.iter().enumerate() {
        let src = &blocks.data[i * bytes as usize..(i + 1) * bytes as usize];
        // SAFETY: b < num_blocks (checked), so the row part is inside the mapped data area;
        // `src` lies in the file's private read-only mapping, which cannot overlap it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                base.add((b * layout.row_stride() + in_row) as usize),
                bytes as usize,
            )
        };
    }
    Ok(block_ids)
}
