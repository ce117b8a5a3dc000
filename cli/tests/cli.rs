//! End-to-end tests of the `kvr` binary.

use std::process::{Command, Output};

use kvr::{Layout, Region, RegionConfig, Role};

fn kvr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvr"))
        .args(args)
        .output()
        .expect("run kvr")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

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
    assert_eq!(t.len(), 2);
    assert!(t[0]["micros"]["median"].as_f64().unwrap() > 0.0);
    // Nothing left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
