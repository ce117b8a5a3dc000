//! Interop of tensor files at s3:// URLs with Python's `safetensors` (the reference reader
//! and writer), on the SeaweedFS test server (skipped with a message without one): a file
//! kvr wrote to S3, downloaded with a plain HTTP GET, is read by `safetensors.safe_open`;
//! a file `safetensors.numpy.save_file` wrote, uploaded with a plain HTTP PUT, is opened by
//! kvr through s3:// and its tensors and metadata match.
//!
//! Python, `safetensors` and `numpy` come from a venv in the cache directory
//! (`${KVR_CACHE_DIR:-$HOME/.cache/kvr}/py-safetensors-<version>`), made on first use.

mod obj_common;

use std::path::PathBuf;
use std::process::Command;

use kvr::tensors::{Dtype, TensorFile, TensorIn, WriteOptions};

use obj_common::{unique_prefix, BUCKET};

const SAFETENSORS: &str = "0.8.0";
const NUMPY: &str = "2.4.6";

/// The venv's python, created (once per cache) if missing. Built under a temporary name and
/// renamed into place, so concurrent tests never see a half-installed venv.
fn python() -> PathBuf {
    let cache = std::env::var_os("KVR_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/kvr"));
    let venv = cache.join(format!("py-safetensors-{SAFETENSORS}"));
    let py = venv.join("bin/python");
    if py.exists() {
        return py;
    }
    std::fs::create_dir_all(&cache).unwrap();
    let tmp = cache.join(format!(
        "py-safetensors-{SAFETENSORS}.tmp-{}-{}",
        std::process::id(),
        unique_prefix("venv")
    ));
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&tmp),
        "python3 -m venv",
    );
    run(
        Command::new(tmp.join("bin/python")).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            &format!("safetensors=={SAFETENSORS}"),
            &format!("numpy=={NUMPY}"),
        ]),
        "pip install safetensors numpy",
    );
    // A venv finds its packages relative to its python (pyvenv.cfg): it survives the rename.
    if std::fs::rename(&tmp, &venv).is_err() {
        // Another test made it first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(py.exists(), "no python in {}", venv.display());
    py
}

/// Runs a Python snippet with `args` as `sys.argv[1:]`; its stdout.
fn run_python(code: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Python's view of a file: `name dtype shape hex` per tensor, then `meta key value` lines.
const DESCRIBE: &str = r#"
import sys
from safetensors import safe_open
with safe_open(sys.argv[1], framework="np") as f:
    for k in sorted(f.keys()):
        t = f.get_tensor(k)
        print(k, t.dtype.str, ",".join(map(str, t.shape)), t.tobytes().hex())
    for k, v in sorted((f.metadata() or {}).items()):
        print("meta", k, v)
"#;

#[test]
fn python_reads_what_kvr_wrote_to_s3() {
    let endpoint = endpoint_or_skip!();
    let prefix = unique_prefix("tensors-url-py");
    let c = obj_common::config(&endpoint, "unused");
    let f32s: Vec<u8> = (0..12)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let i64s: Vec<u8> = (0..5i64).flat_map(|i| (i - 2).to_le_bytes()).collect();
    let u8s: Vec<u8> = (0..6).collect(); // [2, 3] written as its transpose [3, 2]
    let t_strides = [1i64, 3];
    let tensors = [
        TensorIn::contiguous("w", Dtype::F32, &[3, 4], &f32s),
        TensorIn::contiguous("idx", Dtype::I64, &[5], &i64s),
        TensorIn {
            name: "t",
            dtype: Dtype::U8,
            shape: &[3, 2],
            strides: Some(&t_strides),
            data: &u8s,
            offset: 0,
        },
    ];
    for align in [false, true] {
        let key = format!("{prefix}/kvr{}.safetensors", align as u8);
        let url = format!("s3://{BUCKET}/{key}");
        let opts = WriteOptions {
            align_4k: align,
            sync: false,
        };
        kvr::tensors::write_to(&url, Some(&c), &tensors, &[("who", "kvr")], opts).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("download.safetensors");
        // A plain HTTP GET of the object, then Python's own reader.
        let got = run_python(
            &format!(
                "import sys, urllib.request\n\
                 open(sys.argv[2], 'wb').write(urllib.request.urlopen(sys.argv[1]).read())\n{DESCRIBE}"
            )
            .replace("sys.argv[1], framework", "sys.argv[2], framework"),
            &[&format!("{endpoint}/{BUCKET}/{key}"), local.to_str().unwrap()],
        );
        let lines: Vec<&str> = got
            .lines()
            // Aligned files also hold padding tensors and kvr's alignment note.
            .filter(|l| !l.starts_with("__kvr_pad_") && !l.starts_with("meta kvr."))
            .collect();
        assert_eq!(
            lines,
            [
                format!("idx <i8 5 {}", hex(&i64s)),
                format!("t |u1 3,2 {}", hex(&[0, 3, 1, 4, 2, 5])),
                format!("w <f4 3,4 {}", hex(&f32s)),
                "meta who kvr".to_string(),
            ],
            "align {align}"
        );
    }
}

#[test]
fn kvr_reads_what_python_uploaded() {
    let endpoint = endpoint_or_skip!();
    let prefix = unique_prefix("tensors-url-py-up");
    let key = format!("{prefix}/py.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("py.safetensors");
    // Python writes the file, describes it, and uploads it with a plain HTTP PUT.
    let described = run_python(
        &format!(
            "{}\n{DESCRIBE}",
            r#"
import sys, urllib.request
import numpy as np
from safetensors.numpy import save_file
save_file({
    "emb": np.arange(24, dtype=np.float16).reshape(2, 3, 4),
    "bias": np.linspace(-1, 1, 7, dtype=np.float64),
    "mask": np.array([[True, False], [False, True]]),
    "big": np.arange(300_000, dtype=np.int32),
}, sys.argv[1], metadata={"format": "np", "source": "python"})
req = urllib.request.Request(sys.argv[2], data=open(sys.argv[1], "rb").read(), method="PUT")
assert urllib.request.urlopen(req).status == 200
"#
        ),
        &[
            local.to_str().unwrap(),
            &format!("{endpoint}/{BUCKET}/{key}"),
        ],
    );
    let c = obj_common::config(&endpoint, "unused");
    let f = TensorFile::open_location(&format!("s3://{BUCKET}/{key}"), Some(&c)).unwrap();
    let mut names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    names.sort();
    let mut lines = Vec::new();
    for name in names {
        let e = f.find(Some(name)).unwrap();
        let mut buf = vec![0u8; e.len as usize];
        f.read_into(Some(name), &mut buf).unwrap();
        let np = match e.dtype {
            Dtype::F16 => "<f2",
            Dtype::F64 => "<f8",
            Dtype::Bool => "|b1",
            Dtype::I32 => "<i4",
            d => panic!("unexpected dtype {d}"),
        };
        let shape: Vec<String> = e.shape.iter().map(u64::to_string).collect();
        lines.push(format!("{name} {np} {} {}", shape.join(","), hex(&buf)));
    }
    for (k, v) in f.metadata() {
        lines.push(format!("meta {k} {v}"));
    }
    let want: Vec<&str> = described.lines().collect();
    assert_eq!(lines, want);
    // The whole file went through ranged GETs of the header and each tensor, no more.
    let fetched = f.fetched().unwrap();
    let payload: u64 = f.tensors().iter().map(|t| t.len).sum();
    assert!(
        fetched.bytes <= (64 << 10).min(f.file_len()) + payload,
        "{fetched:?}"
    );
}
