//! End-to-end tests of the `kvr` binary.

mod common;

use kvr::{Layout, Region, RegionConfig, Role};

use common::{assert_rows_measured, bench_smoke, kvr, text};

#[test]
fn region_ls_and_rm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut cfg = RegionConfig::new("held", Layout::new(4, 4096, 2).unwrap(), Role::Scheduler);
    cfg.dir = dir.path().to_owned();
    let live = Region::open(&cfg).unwrap();
    std::fs::copy(live.path(), dir.path().join("kvr_left.mmap")).unwrap(); // stale copy

    let o = kvr(&["region", "ls", "--dir", d]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    let held = out.lines().find(|l| l.starts_with("held")).expect(&out);
    assert!(
        held.contains("live") && held.contains("4 blocks x 2 workers x 4096 B/slice"),
        "{held}"
    );
    let left = out.lines().find(|l| l.starts_with("left")).expect(&out);
    assert!(left.contains("stale"), "{left}");

    let o = kvr(&["region", "rm", "held", "--dir", d]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    assert!(err.contains("held by a live process"), "{err}");
    assert!(dir.path().join("kvr_held.mmap").exists());

    let o = kvr(&["region", "rm", "left", "--dir", d]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(!dir.path().join("kvr_left.mmap").exists());
    drop(live);
    let o = kvr(&["region", "ls", "--dir", d]);
    assert!(text(&o).0.contains("no kvr regions"));
}

#[test]
fn usage_errors_exit_2_and_help_exists() {
    assert_eq!(
        kvr(&["bench", "--block-size", "lots"]).status.code(),
        Some(2)
    );
    assert_eq!(kvr(&["nonsense"]).status.code(), Some(2));
    for sub in [
        &["--help"][..],
        &["bench", "--help"],
        &["region", "--help"],
        &["region", "ls", "--help"],
    ] {
        let o = kvr(sub);
        assert!(o.status.success(), "{sub:?}");
        assert!(text(&o).0.contains("Usage"), "{sub:?}");
    }
}

#[test]
fn bench_region_smoke_json() {
    let o = kvr(&[
        "bench",
        "--tier",
        "region",
        "--bytes",
        "64M",
        "--runs",
        "1",
        "--block-size",
        "2M",
        "--json",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for r in rows {
        assert!(r["kvr_gbps"]["median"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["limit_gbps"]["median"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["ratio"].as_f64().unwrap() > 0.0, "{r}");
    }
}

#[test]
fn bench_tensors_smoke_json() {
    let dir = tempfile::tempdir().unwrap();
    let o = kvr(&[
        "bench",
        "--tier",
        "tensors",
        "--bytes",
        "64M",
        "--runs",
        "1",
        "--block-size",
        "2M",
        "--dir",
        dir.path().to_str().unwrap(),
        "--json",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
    let rows = v["rows"].as_array().unwrap();
    let ops: Vec<&str> = rows.iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        [
            "write T",
            "write T+fsync",
            "read O_DIRECT",
            "read cold",
            "read warm"
        ]
    );
    for r in rows {
        assert_eq!(r["tier"], "tensors");
        assert_eq!(r["block_size"], 2 << 20);
        assert!(r["kvr_gbps"]["median"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["limit_gbps"]["median"].as_f64().unwrap() > 0.0, "{r}");
    }
    let t = v["timings"].as_array().unwrap();
    // open + get warm and cold, then one tensor read cold zero-copy and with read_into.
    assert_eq!(t.len(), 4);
    assert!(t[0]["micros"]["median"].as_f64().unwrap() > 0.0);
    for (i, what) in [(2, "read through the pointer"), (3, "read_into")] {
        assert!(
            t[i]["what"].as_str().unwrap_or_default().contains(what),
            "{}",
            t[i]
        );
        assert!(t[i]["micros"]["median"].as_f64().unwrap() > 0.0);
    }
    // Nothing left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A root with namespace `good` (4 blocks) and `mixed` rank 0 (3 good + 2 bad blocks).
fn fs_fixture() -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
    use kvr::{FsConfig, FsStore, Key};
    let dir = tempfile::tempdir().unwrap();
    let open = |ns: &str, rank| {
        let mut c = FsConfig::new(dir.path(), ns);
        c.rank = rank;
        c.read_threads = 1;
        c.write_threads = 1;
        FsStore::open(&c).unwrap()
    };
    let good = open("good", None);
    for i in 0..4u8 {
        good.store(&Key([i; 16]), &[i; 1000]).unwrap();
    }
    let mixed = open("mixed", Some(0));
    for i in 10..15u8 {
        mixed.store(&Key([i; 16]), &[i; 1000]).unwrap();
    }
    // Bad: a flipped payload byte, and a truncated file.
    let flipped = mixed.block_path(&Key([11; 16]));
    let mut b = std::fs::read(&flipped).unwrap();
    b[4096 + 7] ^= 1;
    std::fs::write(&flipped, b).unwrap();
    let truncated = mixed.block_path(&Key([13; 16]));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap();
    f.set_len(4096 + 10).unwrap();
    let mut bad = vec![flipped, truncated];
    bad.sort();
    (dir, bad)
}

#[test]
fn fs_inspect_verify_repair() {
    let (dir, bad) = fs_fixture();
    let d = dir.path().to_str().unwrap();

    let o = kvr(&["fs", "inspect", d, "--json"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let stores = v["stores"].as_array().unwrap();
    assert_eq!(stores.len(), 2, "{v}");
    assert_eq!(stores[0]["namespace"], "good");
    assert_eq!(stores[0]["rank"], serde_json::Value::Null);
    assert_eq!(stores[0]["blocks"], 4);
    assert_eq!(stores[0]["bytes"], 4 * (4096 + 1000));
    assert_eq!(
        (stores[1]["namespace"].as_str(), stores[1]["rank"].as_u64()),
        (Some("mixed"), Some(0))
    );
    assert_eq!(stores[1]["blocks"], 5);
    let o = kvr(&["fs", "inspect", d]);
    let (out, _) = text(&o);
    assert!(
        out.lines()
            .any(|l| l.starts_with("mixed/r0") && l.contains(" 5 ")),
        "{out}"
    );

    // Only the good namespace: clean.
    let o = kvr(&["fs", "verify", d, "--namespace", "good"]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));

    let o = kvr(&["fs", "verify", d, "--json", "--threads", "3"]);
    assert_eq!(o.status.code(), Some(3), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["checked"], 9);
    let found: Vec<std::path::PathBuf> = v["bad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["path"].as_str().unwrap().into())
        .collect();
    assert_eq!(found, bad);
    assert!(
        bad.iter().all(|p| p.exists()),
        "verify without --repair keeps files"
    );

    let o = kvr(&["fs", "verify", d, "--repair"]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert!(text(&o).0.contains("2 bad, 2 removed"), "{:?}", text(&o));
    assert!(bad.iter().all(|p| !p.exists()));
    assert_eq!(kvr(&["fs", "verify", d]).status.code(), Some(0));
}

#[test]
fn fs_gc_keeps_the_bound_and_errors_are_one_line() {
    let (dir, _) = fs_fixture();
    let d = dir.path().to_str().unwrap();
    let bound = 3 * (4096 + 1000);
    let o = kvr(&[
        "fs",
        "gc",
        d,
        "--namespace",
        "good",
        "--max-bytes",
        &bound.to_string(),
        "--json",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["removed_blocks"].as_u64(), v["bytes_after"].as_u64()),
        (Some(1), Some(bound))
    );
    let o = kvr(&["fs", "inspect", d, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["stores"][0]["blocks"], 3);
    assert_eq!(v["stores"][1]["blocks"], 5, "other namespaces untouched");

    let o = kvr(&["fs", "gc", d, "--max-bytes", "8K"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = kvr(&["fs", "inspect", d, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let total: u64 = v["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["bytes"].as_u64().unwrap())
        .sum();
    assert!(total <= 8192, "{v}");

    for args in [
        &["fs", "inspect", "/nonexistent/kvr-root"][..],
        &["fs", "verify", d, "--namespace", "nope"],
        &["fs", "gc", d, "--namespace", "../x", "--max-bytes", "1M"],
    ] {
        let o = kvr(args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    assert_eq!(
        kvr(&["fs", "gc", d]).status.code(),
        Some(2),
        "--max-bytes is required"
    );
    for sub in [
        &["fs", "--help"][..],
        &["fs", "inspect", "--help"],
        &["fs", "verify", "--help"],
        &["fs", "gc", "--help"],
    ] {
        assert!(text(&kvr(sub)).0.contains("Usage"), "{sub:?}");
    }
}

#[test]
fn bench_fs_smoke_json() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let o = bench_smoke("fs", dir.path());
    let (out, err) = text(&o);
    if err.contains("fio not found") {
        eprintln!("skipping: fio is not installed");
        return;
    }
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 12, "6 rows per block size (64K, 2M)");
    assert_rows_measured(rows, "fs");
    // Each block size: store against fio's one file per job, new file per block and new file
    // of the block file's size per block; load against fio's one file per job, open+read+close
    // of a file per block and the same of files of the block file's size.
    let ops: Vec<(&str, bool, bool)> = rows
        .iter()
        .map(|r| {
            let limit = r["limit"].as_str().unwrap();
            (
                r["op"].as_str().unwrap(),
                limit.contains("per block"),
                limit.contains("the block file's size"),
            )
        })
        .collect();
    let per_size = [
        ("store", false, false),
        ("store", true, false),
        ("store", true, true),
        ("load", false, false),
        ("load", true, false),
        ("load", true, true),
    ];
    // The block file is the payload plus its 4 KiB header page.
    for (r, header) in rows.iter().zip(
        ["64K + 4K header", "2M + 4K header"]
            .iter()
            .flat_map(|h| [*h; 6]),
    ) {
        let limit = r["limit"].as_str().unwrap();
        if limit.contains("the block file's size") {
            assert!(limit.contains(header), "{limit}");
        }
    }
    assert_eq!(ops, [per_size, per_size].concat(), "{rows:?}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "bench cleans up"
    );
}
