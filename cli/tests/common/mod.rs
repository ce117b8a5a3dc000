//! Helpers shared by the CLI's end-to-end tests (`mod common;` in each test file).

// Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// The crate's file helpers, shared by path rather than copied.
#[path = "../../../tests/common/files.rs"]
pub mod files;

/// The crate's helpers for bounded runs, shared by path rather than copied.
#[path = "../../../tests/common/bounded.rs"]
pub mod bounded;

/// Runs the `kvr` binary with `args`.
pub fn kvr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvr"))
        .args(args)
        .output()
        .expect("run kvr")
}

/// A run's stdout and stderr as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A run's stderr as text.
pub fn stderr(o: &Output) -> String {
    text(o).1
}

/// A run's stdout parsed as JSON.
pub fn json(o: &Output) -> serde_json::Value {
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `kvr bench --tier <tier>` at its smallest (64M, one run) with JSON output, in `dir`.
pub fn bench_smoke(tier: &str, dir: &Path) -> Output {
    kvr(&[
        "bench",
        "--tier",
        tier,
        "--bytes",
        "64M",
        "--runs",
        "1",
        "--json",
        "--dir",
        dir.to_str().unwrap(),
    ])
}

/// Every row of a bench report belongs to `tier` and measured both kvr and its limit.
pub fn assert_rows_measured(rows: &[serde_json::Value], tier: &str) {
    for r in rows {
        assert_eq!(r["tier"], tier);
        assert!(r["kvr_gbps"]["median"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["limit_gbps"]["median"].as_f64().unwrap() > 0.0, "{r}");
    }
}
