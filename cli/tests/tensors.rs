//! End-to-end tests of `kvr tensors ls`.

mod common;

use std::path::Path;

use kvr::tensors::{Dtype, TensorIn, WriteOptions};

use common::{kvr, text};

/// A safetensors file written by hand, as another tool would: no kvr metadata, names sorted.
fn foreign_file(path: &Path) {
    let json = r#"{"__metadata__":{"format":"pt"},"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}}"#;
    let mut v = (json.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(json.as_bytes());
    v.extend_from_slice(&[0u8; 22]);
    std::fs::write(path, v).unwrap();
}

#[test]
fn ls_lists_a_foreign_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    foreign_file(&p);
    let o = kvr(&["tensors", "ls", p.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("2 tensors"), "{out}");
    assert!(out.contains("format = pt"), "{out}");
    // Header: 8-byte length + the JSON; data follows.
    let data_start = std::fs::metadata(&p).unwrap().len() - 22;
    let a = out.lines().find(|l| l.starts_with("a.weight")).expect(&out);
    let cols: Vec<&str> = a.split_whitespace().collect();
    let want_a = data_start.to_string();
    assert_eq!(cols, ["a.weight", "F32", "[2,", "2]", &want_a, "16"], "{a}");
    let b = out.lines().find(|l| l.starts_with("b ")).expect(&out);
    let cols: Vec<&str> = b.split_whitespace().collect();
    let want_b = (data_start + 16).to_string();
    assert_eq!(cols, ["b", "BF16", "[3]", &want_b, "6"], "{b}");

    let o = kvr(&["tensors", "ls", "--json", p.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = v["tensors"].as_array().unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t[0]["name"], "a.weight");
    assert_eq!(t[0]["shape"], serde_json::json!([2, 2]));
    assert_eq!(t[1]["dtype"], "BF16");
    assert_eq!(t[1]["bytes"], 6);
    assert_eq!(
        t[0]["offset"].as_u64().unwrap(),
        v["data_start"].as_u64().unwrap()
    );
    assert_eq!(v["metadata"]["format"], "pt");
    assert_eq!(
        v["file_bytes"].as_u64().unwrap(),
        std::fs::metadata(&p).unwrap().len()
    );
}

#[test]
fn ls_hides_padding_of_aligned_files_unless_all() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("kv.safetensors");
    let data = vec![1u8; 3 * 2];
    let data2 = vec![2u8; 8192];
    let tensors = [
        TensorIn::contiguous("k", Dtype::F16, &[3], &data),
        TensorIn::contiguous("v", Dtype::U8, &[8192], &data2),
    ];
    let opts = WriteOptions {
        align_4k: true,
        sync: false,
    };
    kvr::tensors::write(&p, &tensors, &[("layers", "1")], opts).unwrap();
    let ps = p.to_str().unwrap();

    let o = kvr(&["tensors", "ls", "--json", ps]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = v["tensors"].as_array().unwrap();
    let names: Vec<&str> = t.iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["k", "v"]);
    assert_eq!(v["padding_hidden"], 1);
    for x in t {
        assert_eq!(x["offset"].as_u64().unwrap() % 4096, 0, "{x}");
    }
    assert_eq!(v["metadata"]["layers"], "1");
    assert_eq!(v["metadata"]["kvr.align"], "4096");

    let o = kvr(&["tensors", "ls", "--json", "--all", ps]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = v["tensors"].as_array().unwrap();
    let names: Vec<&str> = t.iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["k", "__kvr_pad_0__", "v"]);
    assert_eq!(t[1]["padding"], true);
    assert_eq!(t[1]["bytes"], 4096 - 6);

    let (out, _) = text(&kvr(&["tensors", "ls", ps]));
    assert!(out.contains("1 padding tensors hidden"), "{out}");
    assert!(!out.contains("__kvr_pad_"), "{out}");
    let (out, _) = text(&kvr(&["tensors", "ls", "--all", ps]));
    assert!(out.contains("__kvr_pad_0__"), "{out}");
}

#[test]
fn ls_of_a_bad_file_prints_one_line_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.safetensors");
    foreign_file(&p);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.truncate(bytes.len() - 1);
    std::fs::write(&p, &bytes).unwrap();
    let missing = dir.path().join("missing.safetensors");
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot json").unwrap();
    for (f, want) in [
        (&p, "does not end exactly at the end of the file"),
        (&missing, "No such file"),
        (&junk, "runs past the end"),
    ] {
        let o = kvr(&["tensors", "ls", f.to_str().unwrap()]);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(out.is_empty(), "{out}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("kvr: ") && err.contains(want), "{err}");
    }
}
