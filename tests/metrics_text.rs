//! `kvr_metrics_text` renders every open handle, parsed with a real Prometheus text parser
//! (Python's `prometheus_client.parser`, installed into a venv under the target directory
//! when missing), the object tier's on the S3 test server (skipped without one), and stays
//! sound while handles open and close during rendering.

mod obj_common;

use std::ffi::c_char;
use std::path::{Path, PathBuf};
use std::process::Command;

use kvr::ffi::kvr_status;
use kvr::ffi::metrics::kvr_metrics_text;
use kvr::io::DirectIo;
use kvr::SlotFile;
use kvr::{DiskConfig, FsConfig, FsStore, Key, Layout, ObjStore, Region, RegionConfig, Role};

fn metrics_text() -> String {
    let mut need = 0usize;
    let st = kvr_metrics_text(std::ptr::null_mut(), 0, &mut need);
    assert_eq!(st, kvr_status::KVR_ERR_TOO_SMALL);
    // Room for handles other tests open meanwhile.
    let mut buf = vec![0u8; need * 2 + 65536];
    let st = kvr_metrics_text(buf.as_mut_ptr().cast::<c_char>(), buf.len(), &mut need);
    assert_eq!(st, kvr_status::KVR_OK);
    assert_eq!(buf[need - 1], 0);
    String::from_utf8(buf[..need - 1].to_vec()).unwrap()
}

/// A Python with `prometheus_client`: the system's if it has it, else a venv under the
/// target directory (created once, `pip install prometheus-client` from the registry). The
/// tests run in parallel threads of this process: one of them makes the venv, the others wait.
fn python_with_parser() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(find_or_make_python).clone()
}

fn find_or_make_python() -> PathBuf {
    let sys = PathBuf::from("python3");
    let has = |py: &Path| {
        Command::new(py)
            .args(["-c", "import prometheus_client.parser"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has(&sys) {
        return sys;
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("prometheus-venv");
    let py = venv.join("bin/python3");
    if !has(&py) {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "python3 -m venv {} failed", venv.display());
        let ok = Command::new(&py)
            .args(["-m", "pip", "install", "--quiet", "prometheus-client"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pip install prometheus-client failed");
    }
    py
}

/// Parses `text` with `prometheus_client.parser`; returns one line per sample:
/// `name{sorted labels} value`.
fn parse(text: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("metrics.txt");
    std::fs::write(&f, text).unwrap();
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{fam.type} {s.name}{{{labels}}} {s.value}")
"#;
    let o = Command::new(python_with_parser())
        .args(["-c", script])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the parser rejected the text: {}\n{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn value(samples: &[String], prefix: &str) -> f64 {
    let hits: Vec<&String> = samples.iter().filter(|s| s.starts_with(prefix)).collect();
    assert_eq!(hits.len(), 1, "{prefix}: {hits:?}");
    hits[0].rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn every_open_handle_is_rendered_and_parses() {
    let d = tempfile::tempdir().unwrap();
    let mut fc = FsConfig::new(d.path(), "metrics-ns");
    fc.direct_io = DirectIo::Off;
    let fs = FsStore::open(&fc).unwrap();
    for i in 0..5u8 {
        fs.store(&Key([i; 16]), &[i; 4096]).unwrap();
    }
    fs.store(&Key([0; 16]), &[0; 4096]).unwrap(); // dedup
    let mut out = [0u8; 4096];
    fs.load(&Key([1; 16]), &mut out).unwrap();
    assert!(fs.load(&Key([9; 16]), &mut out).is_err());
    assert_eq!(fs.lookup_prefix(&[Key([0; 16]), Key([9; 16])]), 1);

    let mut dc = DiskConfig::new(d.path().join("slots.kvr"), 4096, 8);
    dc.direct_io = DirectIo::Off;
    dc.namespace = Some("disk-ns".into());
    let disk = SlotFile::open(&dc).unwrap();
    disk.write(&Key([7; 16]), &[7; 100], b"").unwrap();

    let name = format!("metrics_{}", std::process::id());
    let layout = Layout::new(4, 4096, 1).unwrap();
    let region = Region::open(&RegionConfig::new(&name, layout, Role::Rank(0))).unwrap();

    let text = metrics_text();
    let s = parse(&text);
    let fs_l = format!("namespace=metrics-ns,path={},tier=fs", fs.dir().display());
    let get = |n: &str, l: &str| value(&s, &format!("{n}{{{l}}} "));
    let fs_kind = |n: &str| format!("counter {n}");
    assert_eq!(get(&fs_kind("kvr_stores_total"), &fs_l), 5.0);
    assert_eq!(get(&fs_kind("kvr_dedups_total"), &fs_l), 1.0);
    assert_eq!(get(&fs_kind("kvr_hits_total"), &fs_l), 1.0);
    assert_eq!(get(&fs_kind("kvr_misses_total"), &fs_l), 1.0);
    assert_eq!(
        get(&fs_kind("kvr_written_bytes_total"), &fs_l),
        5.0 * 4096.0
    );
    assert_eq!(get("gauge kvr_blocks", &fs_l), 5.0);
    assert_eq!(get("gauge kvr_direct_io", &fs_l), 0.0);
    let h = |op: &str, suffix: &str, extra: &str| {
        get(
            &format!("histogram kvr_op_latency_seconds_{suffix}"),
            &format!(
                "{extra}namespace=metrics-ns,op={op},path={},tier=fs",
                fs.dir().display()
            ),
        )
    };
    assert_eq!(h("store", "count", ""), 6.0);
    assert_eq!(h("store", "bucket", "le=+Inf,"), 6.0);
    assert_eq!(h("load", "count", ""), 2.0);
    assert_eq!(h("lookup", "count", ""), 1.0);
    assert!(h("store", "sum", "") > 0.0);

    let disk_l = format!("namespace=disk-ns,path={},tier=disk", dc.path.display());
    assert_eq!(get("counter kvr_stores_total", &disk_l), 1.0);
    assert_eq!(get("gauge kvr_blocks", &disk_l), 1.0);
    let region_l = format!(
        "namespace={name},path={},tier=region",
        region.path().display()
    );
    assert_eq!(get("gauge kvr_blocks", &region_l), 4.0);
    assert_eq!(get("gauge kvr_region_pinned", &region_l), 0.0);

    // Closing unregisters.
    drop((fs, disk, region));
    let text = metrics_text();
    assert!(!text.contains("metrics-ns") && !text.contains("disk-ns") && !text.contains(&name));
}

#[test]
fn an_object_store_is_rendered() {
    let ep = endpoint_or_skip!();
    let s = ObjStore::open(&obj_common::config(
        &ep,
        &obj_common::unique_prefix("metrics"),
    ))
    .unwrap();
    s.store(&Key([1; 16]), &[1; 4096]).unwrap();
    s.store(&Key([1; 16]), &[1; 4096]).unwrap(); // dedup
    let mut out = [0u8; 4096];
    s.load(&Key([1; 16]), &mut out).unwrap();
    assert!(s.load(&Key([2; 16]), &mut out).is_err());
    s.remove(&Key([1; 16])).unwrap();

    let samples = parse(&metrics_text());
    let l = format!("namespace=ns,path={},tier=obj", s.url());
    let counter = |n: &str| value(&samples, &format!("counter {n}_total{{{l}}} "));
    assert_eq!(counter("kvr_stores"), 1.0);
    assert_eq!(counter("kvr_dedups"), 1.0);
    assert_eq!(counter("kvr_hits"), 1.0);
    assert_eq!(counter("kvr_misses"), 1.0);
    assert_eq!(counter("kvr_read_bytes"), 4096.0);
    assert_eq!(counter("kvr_written_bytes"), 4096.0);
    assert_eq!(counter("kvr_removes"), 1.0);
    assert_eq!(counter("kvr_corrupt"), 0.0);
    assert_eq!(counter("kvr_unavailable"), 0.0);
    let store_ops = format!(
        "histogram kvr_op_latency_seconds_count{{namespace=ns,op=store,path={},tier=obj}} ",
        s.url()
    );
    assert_eq!(value(&samples, &store_ops), 2.0);
}

#[test]
fn bad_buffers() {
    let mut need = 0usize;
    // NULL buffer with a non-zero capacity: rejected after `needed` is written.
    let st = kvr_metrics_text(std::ptr::null_mut(), 1 << 20, &mut need);
    assert_eq!(st, kvr_status::KVR_ERR_INVALID_ARGUMENT);
    assert!(need >= 1);
    let mut one = [0x55u8; 1];
    let st = kvr_metrics_text(one.as_mut_ptr().cast(), 0, std::ptr::null_mut());
    assert!(matches!(
        st,
        kvr_status::KVR_ERR_TOO_SMALL | kvr_status::KVR_OK
    ));
    assert_eq!(one[0], 0x55, "a too-small buffer is left alone");
}

#[test]
fn handles_closing_while_rendering_are_never_read_after_free() {
    let d = tempfile::tempdir().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..2 {
            let (d, stop) = (d.path(), &stop);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut c = FsConfig::new(d, format!("churn{t}-{i}"));
                    c.direct_io = DirectIo::Off;
                    c.read_threads = 1;
                    c.write_threads = 1;
                    let fs = FsStore::open(&c).unwrap();
                    fs.store(&Key([1; 16]), b"x").unwrap();
                    drop(fs);
                    i += 1;
                }
            });
        }
        for _ in 0..200 {
            let text = kvr::metrics::render();
            assert!(!text.contains("\0"));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(!kvr::metrics::render().contains("churn"));
}
