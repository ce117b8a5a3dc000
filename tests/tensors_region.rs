//! Export/import of region blocks through tensor files.

use std::path::Path;

use kvr::tensors::{export_blocks, import_blocks, TensorFile, WriteOptions};
use kvr::{ErrorKind, Layout, Region, RegionConfig, Role};

fn region(dir: &Path, name: &str, layout: Layout, role: Role) -> Region {
    let mut cfg = RegionConfig::new(name, layout, role);
    cfg.dir = dir.to_path_buf();
    cfg.populate = false;
    Region::open(&cfg).unwrap()
}

fn fill(r: &Region, seed: u8) {
    let v = r.row_view();
    for b in 0..v.num_blocks() {
        let row: Vec<u8> = (0..v.bytes_per_block())
            .map(|i| (i as u8).wrapping_mul(7) ^ (b as u8) ^ seed)
            .collect();
        v.write_block(b, &row).unwrap();
    }
}

fn row(r: &Region, b: u64) -> Vec<u8> {
    let v = r.row_view();
    let mut out = vec![0u8; v.bytes_per_block() as usize];
    v.read_block(b, &mut out).unwrap();
    out
}

#[test]
fn scheduler_rows_round_trip_and_layout_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(8, 4096, 2).unwrap();
    let src = region(dir.path(), "src", layout, Role::Scheduler);
    fill(&src, 0x5a);
    let file = dir.path().join("blocks.safetensors");
    let opts = WriteOptions {
        align_4k: true,
        sync: false,
    };
    export_blocks(&src, &[6, 1, 3], &file, opts).unwrap();
    // The file is plain safetensors with the layout in its metadata.
    let f = TensorFile::open(&file).unwrap();
    assert_eq!(f.metadata_get("kvr.kind"), Some("region_blocks"));
    assert_eq!(f.metadata_get("kvr.num_workers"), Some("2"));
    assert_eq!(f.metadata_get("kvr.rank"), Some("scheduler"));
    let blocks = f.get(Some("blocks")).unwrap();
    assert_eq!(blocks.entry.shape, [3, 8192]);
    assert_eq!(blocks.entry.offset % 4096, 0);
    let bytes = std::fs::read(&file).unwrap();
    safetensors::SafeTensors::deserialize(&bytes).unwrap();

    let dst = region(dir.path(), "dst", layout, Role::Scheduler);
    assert_eq!(import_blocks(&dst, &file).unwrap(), vec![6, 1, 3]);
    for b in 0..8 {
        if [6, 1, 3].contains(&b) {
            assert_eq!(row(&dst, b), row(&src, b), "block {b}");
        } else {
            assert!(row(&dst, b).iter().all(|&x| x == 0), "block {b} untouched");
        }
    }
    // Different layout or role: rejected, naming both.
    let other = region(
        dir.path(),
        "other",
        Layout::new(8, 2048, 4).unwrap(),
        Role::Scheduler,
    );
    let e = import_blocks(&other, &file).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LayoutMismatch, "{e}");
    assert!(
        e.to_string()
            .contains("8 blocks x 2 workers x 4096 B/slice"),
        "{e}"
    );
    let ranked = region(dir.path(), "ranked", layout, Role::Rank(0));
    assert_eq!(
        import_blocks(&ranked, &file).unwrap_err().kind(),
        ErrorKind::LayoutMismatch
    );
    // Bad arguments.
    assert!(export_blocks(&src, &[], &file, opts).is_err());
    assert!(export_blocks(&src, &[8], &file, opts).is_err());
    assert!(export_blocks(&src, &[1, 1], &file, opts).is_err());
}

#[test]
fn rank_slices_round_trip_and_damage_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(4, 1000, 3).unwrap();
    let src = region(dir.path(), "rsrc", layout, Role::Rank(1));
    fill(&src, 0x11);
    let file = dir.path().join("rank1.safetensors");
    export_blocks(&src, &[0, 2, 3], &file, WriteOptions::default()).unwrap();
    let dst = region(dir.path(), "rdst", layout, Role::Rank(1));
    import_blocks(&dst, &file).unwrap();
    for b in 0..4u64 {
        let (s, d) = (row(&src, b), row(&dst, b));
        let rank1 = 1000..2000;
        if b == 1 {
            assert!(d.iter().all(|&x| x == 0));
        } else {
            assert_eq!(d[rank1.clone()], s[rank1], "block {b}");
            assert!(
                d[..1000].iter().chain(&d[2000..]).all(|&x| x == 0),
                "other ranks untouched"
            );
        }
    }
    // A rank-2 handle gets a mismatch.
    let r2 = region(dir.path(), "r2", layout, Role::Rank(2));
    assert_eq!(
        import_blocks(&r2, &file).unwrap_err().kind(),
        ErrorKind::LayoutMismatch
    );
    // Flip one data byte: the checksum catches it and nothing is imported.
    let f = TensorFile::open(&file).unwrap();
    let off = f.get(Some("blocks")).unwrap().entry.offset + 1500;
    drop(f);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[off as usize] ^= 0x80;
    std::fs::write(&file, &bytes).unwrap();
    let fresh = region(dir.path(), "fresh", layout, Role::Rank(1));
    let e = import_blocks(&fresh, &file).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("block 2 fails its checksum"), "{e}");
    for b in 0..4 {
        assert!(row(&fresh, b).iter().all(|&x| x == 0), "nothing imported");
    }
}
