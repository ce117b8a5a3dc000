//! Export and import of region blocks as one tensor file.
//!
//! A scheduler handle exports whole rows (every worker's slice of each chosen block); a rank
//! handle exports only its own slices. The file holds three tensors, in this order:
//! `block_ids` (U64 `[n]`), `blocks` (U8 `[n, bytes_per_block]`) and `checksums` (U64 `[n]`,
//! xxh3-64 of each block's bytes), and records the layout in `__metadata__`:
//! `kvr.kind = "region_blocks"`, `kvr.format = "1"`, `kvr.num_blocks`, `kvr.cpu_page_size`,
//! `kvr.num_workers`, `kvr.rank` (a number or `"scheduler"`). Import accepts only a file whose
//! layout and role equal the region's, verifies every checksum before copying anything, then
//! copies the blocks into their rows.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::Path;

use super::file::TensorFile;
use super::header::TensorSpec;
use super::write::{write_sources, Source, WriteOptions};
use super::Dtype;
use crate::region::{Layout, Region, Role};
use crate::{err, Error, Result};

/// Value of `kvr.kind` in exported files.
pub const KIND: &str = "region_blocks";

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
    let hashes = RefCell::new(Vec::with_capacity(block_ids.len()));
    let n = block_ids.len() as u64;
    let specs = [
        TensorSpec {
            name: "block_ids".into(),
            dtype: Dtype::U64,
            shape: vec![n],
        },
        TensorSpec {
            name: "blocks".into(),
            dtype: Dtype::U8,
            shape: vec![n, bytes],
        },
        TensorSpec {
            name: "checksums".into(),
            dtype: Dtype::U64,
            shape: vec![n],
        },
    ];
    // The checksums are computed while the blocks stream out and written after them.
    let sources = [
        Source::Bytes(&ids),
        Source::Rows {
            ptrs,
            len: bytes as usize,
            hashes: Some(&hashes),
        },
        Source::Hashes(&hashes),
    ];
    let meta = [
        ("kvr.kind", KIND.to_string()),
        ("kvr.format", "1".to_string()),
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
    if f.metadata_get("kvr.format") != Some("1") {
        return Err(ctx(err!(
            Unsupported,
            "region export format {:?} is not supported (expected 1)",
            f.metadata_get("kvr.format")
        )));
    }
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
    for (i, (&b, &sum)) in block_ids.iter().zip(&checksums).enumerate() {
        if b >= layout.num_blocks || !seen.insert(b) {
            return Err(ctx(err!(
                Corrupt,
                "block id {b} at index {i} is out of range or repeated"
            )));
        }
        let data = &blocks.data[i * bytes as usize..(i + 1) * bytes as usize];
        let got = xxhash_rust::xxh3::xxh3_64(data);
        if got != sum {
            return Err(ctx(err!(
                Corrupt,
                "block {b} fails its checksum (stored {sum:#018x}, computed {got:#018x}); nothing was imported"
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
