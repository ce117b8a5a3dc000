//! Region import never writes correct bytes into the wrong rows (issue 11, item 2): a changed
//! block id, a repeated or out-of-range id, or a changed layout in the metadata is
//! `KVR_ERR_CORRUPT` and the region stays untouched. Files in the first export format (whose
//! checksums cover the bytes alone) still import, with the id checks. Through the C ABI.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::path::Path;
use std::ptr::null_mut;

use kvr::ffi::export::{kvr_region_export, kvr_region_import};
use kvr::ffi::kvr_status::{self, *};
use kvr::ffi::region::*;
use kvr::ffi::status::kvr_last_error_message;

const BLOCKS: u64 = 8;
const PAGE: u64 = 4096;
const EXPORTED: [u64; 3] = [4, 1, 6];

fn msg() -> String {
    // SAFETY: kvr_last_error_message never returns NULL.
    unsafe { CStr::from_ptr(kvr_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

fn cs(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// An open region of `blocks` rows of one `PAGE`-byte slice, as a scheduler handle.
struct TestRegion {
    handle: *mut kvr_region,
    rows: kvr_view,
}

impl TestRegion {
    fn open(dir: &Path, name: &str, blocks: u64) -> TestRegion {
        let (name, dir) = (cs(name), cs(dir.to_str().unwrap()));
        // SAFETY: a plain C struct of integers and pointers; all zeroes is valid.
        let mut cfg: kvr_region_config = unsafe { std::mem::zeroed() };
        cfg.struct_size = std::mem::size_of::<kvr_region_config>() as u32;
        assert_eq!(kvr_region_config_default(&mut cfg), KVR_OK);
        cfg.name = name.as_ptr();
        cfg.dir = dir.as_ptr();
        cfg.num_blocks = blocks;
        cfg.cpu_page_size = PAGE;
        cfg.rank = KVR_RANK_SCHEDULER;
        let mut handle = null_mut();
        assert_eq!(kvr_region_open(&cfg, &mut handle), KVR_OK, "{}", msg());
        // SAFETY: a plain C struct of integers and pointers; all zeroes is valid.
        let mut rows: kvr_view = unsafe { std::mem::zeroed() };
        assert_eq!(kvr_region_row_view(handle, &mut rows), KVR_OK);
        TestRegion { handle, rows }
    }

    fn row_ptr(&self, b: u64) -> *mut u8 {
        assert!(b < self.rows.num_blocks);
        // SAFETY: row `b` starts inside the region's mapping (b < num_blocks).
        unsafe { self.rows.base.add((b * self.rows.row_stride) as usize) }
    }

    fn row(&self, b: u64) -> &[u8] {
        // SAFETY: the row lies inside the region's mapping, which lives as long as `self`;
        // nothing writes it while the slice is in use (the tests are single-threaded).
        unsafe { std::slice::from_raw_parts(self.row_ptr(b), self.rows.bytes_per_block as usize) }
    }

    fn set_row(&self, b: u64, bytes: &[u8]) {
        assert_eq!(bytes.len() as u64, self.rows.bytes_per_block);
        // SAFETY: the row lies inside the mapping and holds `bytes.len()` bytes; `bytes` is
        // a separate allocation.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.row_ptr(b), bytes.len()) };
    }

    fn import(&self, file: &Path) -> (kvr_status, usize) {
        let path = cs(file.to_str().unwrap());
        let mut count = 0usize;
        let s = kvr_region_import(self.handle, path.as_ptr(), &mut count);
        (s, count)
    }

    fn assert_untouched(&self, what: &str) {
        for b in 0..self.rows.num_blocks {
            assert!(
                self.row(b).iter().all(|&x| x == 0),
                "{what}: row {b} written"
            );
        }
    }
}

impl Drop for TestRegion {
    fn drop(&mut self) {
        kvr_region_close(self.handle);
    }
}

fn pattern(b: u64) -> Vec<u8> {
    (0..PAGE)
        .map(|i| (i as u8).wrapping_mul(13) ^ (b as u8 + 1))
        .collect()
}

fn source(dir: &Path) -> TestRegion {
    let r = TestRegion::open(dir, "src", BLOCKS);
    for b in 0..BLOCKS {
        r.set_row(b, &pattern(b));
    }
    r
}

/// Byte range of tensor `name`'s data in a safetensors file.
fn tensor_range(bytes: &[u8], name: &str) -> std::ops::Range<usize> {
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let (start, end) = meta.info(name).unwrap().data_offsets;
    8 + header_len + start..8 + header_len + end
}

/// Rewrites entry `i` of the file's `block_ids` tensor.
fn set_id(file: &Path, i: usize, id: u64) {
    let mut bytes = std::fs::read(file).unwrap();
    let ids = tensor_range(&bytes, "block_ids");
    bytes[ids.start + 8 * i..ids.start + 8 * i + 8].copy_from_slice(&id.to_le_bytes());
    std::fs::write(file, bytes).unwrap();
}

fn assert_imported(dst: &TestRegion, ids: &[u64]) {
    for b in 0..BLOCKS {
        if ids.contains(&b) {
            assert!(dst.row(b) == pattern(b), "row {b}");
        } else {
            assert!(dst.row(b).iter().all(|&x| x == 0), "row {b} untouched");
        }
    }
}

#[test]
fn changed_repeated_or_out_of_range_ids_are_corrupt_and_nothing_is_imported() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let file = dir.path().join("blocks.safetensors");
    let path = cs(file.to_str().unwrap());
    assert_eq!(
        kvr_region_export(
            src.handle,
            EXPORTED.as_ptr(),
            EXPORTED.len(),
            path.as_ptr(),
            0
        ),
        KVR_OK,
        "{}",
        msg()
    );
    let clean = std::fs::read(&file).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&clean).unwrap();
    let format = header.metadata().as_ref().unwrap()["kvr.format"].clone();
    assert_eq!(format, "2", "files are written in the id-bound format");
    let ok = TestRegion::open(dir.path(), "ok", BLOCKS);
    assert_eq!(ok.import(&file), (KVR_OK, 3));
    assert_imported(&ok, &EXPORTED);

    // One flipped bit: block 4 becomes block 5, whose row exists and is not in the file.
    for (what, i, id) in [
        ("flipped id 4 -> 5", 0, 5),
        ("repeated id", 0, 1),
        ("out-of-range id", 2, BLOCKS),
        ("huge id", 2, u64::MAX),
    ] {
        std::fs::write(&file, &clean).unwrap();
        set_id(&file, i, id);
        let dst = TestRegion::open(dir.path(), "dst", BLOCKS);
        let (status, _) = dst.import(&file);
        assert_eq!(status, KVR_ERR_CORRUPT, "{what}: {}", msg());
        dst.assert_untouched(what);
    }
    // Swapping two entries of block_ids (each row then carries the other's id).
    std::fs::write(&file, &clean).unwrap();
    set_id(&file, 0, 1);
    set_id(&file, 1, 4);
    let dst = TestRegion::open(dir.path(), "swap", BLOCKS);
    assert_eq!(dst.import(&file).0, KVR_ERR_CORRUPT, "{}", msg());
    assert!(msg().contains("fails its checksum"), "{}", msg());
    dst.assert_untouched("swapped ids");
}

#[test]
fn a_changed_layout_in_the_metadata_fails_the_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let file = dir.path().join("blocks.safetensors");
    let path = cs(file.to_str().unwrap());
    assert_eq!(
        kvr_region_export(
            src.handle,
            EXPORTED.as_ptr(),
            EXPORTED.len(),
            path.as_ptr(),
            0
        ),
        KVR_OK
    );
    // kvr.num_blocks "8" -> "9" (same length): the file now claims the layout of a 9-block
    // region, which an import into one accepts as a layout, but not as checksums.
    let mut bytes = std::fs::read(&file).unwrap();
    let find = |bytes: &[u8], what: &[u8], from: usize| {
        from + bytes[from..]
            .windows(what.len())
            .position(|w| w == what)
            .expect("in the header")
    };
    let key = find(&bytes, b"\"kvr.num_blocks\"", 0);
    let value = find(&bytes, b"\"8\"", key + 16);
    assert!(value < key + 20, "num_blocks value follows its key");
    bytes[value + 1] = b'9';
    std::fs::write(&file, bytes).unwrap();
    let nine = TestRegion::open(dir.path(), "nine", 9);
    assert_eq!(nine.import(&file).0, KVR_ERR_CORRUPT, "{}", msg());
    nine.assert_untouched("changed num_blocks");
}

/// A file as the first export format wrote it: `kvr.format = "1"`, checksums of the bytes
/// alone (unseeded xxh3-64).
fn write_format1(file: &Path, src: &TestRegion, ids: &[u64]) {
    let id_bytes: Vec<u8> = ids.iter().flat_map(|b| b.to_le_bytes()).collect();
    let blocks: Vec<u8> = ids.iter().flat_map(|&b| src.row(b).to_vec()).collect();
    let sums: Vec<u8> = ids
        .iter()
        .flat_map(|&b| xxhash_rust::xxh3::xxh3_64(src.row(b)).to_le_bytes())
        .collect();
    let n = ids.len();
    let view = |dtype, shape, data| safetensors::tensor::TensorView::new(dtype, shape, data);
    let tensors = [
        (
            "block_ids",
            view(safetensors::Dtype::U64, vec![n], &id_bytes).unwrap(),
        ),
        (
            "blocks",
            view(safetensors::Dtype::U8, vec![n, PAGE as usize], &blocks).unwrap(),
        ),
        (
            "checksums",
            view(safetensors::Dtype::U64, vec![n], &sums).unwrap(),
        ),
    ];
    let meta: HashMap<String, String> = [
        ("kvr.kind", "region_blocks"),
        ("kvr.format", "1"),
        ("kvr.num_blocks", "8"),
        ("kvr.cpu_page_size", "4096"),
        ("kvr.num_workers", "1"),
        ("kvr.rank", "scheduler"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let bytes = safetensors::serialize(tensors, Some(meta)).unwrap();
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn first_format_files_still_import_and_their_ids_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let file = dir.path().join("v1.safetensors");
    write_format1(&file, &src, &EXPORTED);
    let dst = TestRegion::open(dir.path(), "dst", BLOCKS);
    assert_eq!(dst.import(&file), (KVR_OK, 3), "{}", msg());
    assert_imported(&dst, &EXPORTED);
    drop(dst);
    for (what, ids) in [
        ("repeated id", [4, 1, 4]),
        ("out-of-range id", [4, 1, BLOCKS]),
    ] {
        // Rows of the source for in-range ids; an out-of-range one borrows row 0's bytes.
        let rows: Vec<u64> = ids.iter().map(|&b| b.min(BLOCKS - 1)).collect();
        write_format1(&file, &src, &rows);
        set_id(&file, 2, ids[2]);
        let dst = TestRegion::open(dir.path(), "bad", BLOCKS);
        assert_eq!(dst.import(&file).0, KVR_ERR_CORRUPT, "{what}: {}", msg());
        dst.assert_untouched(what);
    }
    // A damaged byte is still caught by the bytes-only checksum.
    write_format1(&file, &src, &EXPORTED);
    let mut bytes = std::fs::read(&file).unwrap();
    let blocks = tensor_range(&bytes, "blocks");
    bytes[blocks.start + 100] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let dst = TestRegion::open(dir.path(), "flip", BLOCKS);
    assert_eq!(dst.import(&file).0, KVR_ERR_CORRUPT, "{}", msg());
    dst.assert_untouched("flipped byte");
}
