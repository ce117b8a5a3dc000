//! `kvr obj inspect|verify|gc` end to end against the S3 test server (skipped without one).

mod common;
#[path = "../../tests/obj_common/mod.rs"]
mod obj_common;

use common::{json, kvr, text};
use kvr::{Key, ObjStore};

#[test]
fn obj_inspect_verify_repair_gc() {
    let ep = endpoint_or_skip!();
    let prefix = obj_common::unique_prefix("cli");
    let url = format!("s3://{}/{prefix}", obj_common::BUCKET);
    let open = |ns: &str| {
        let mut c = obj_common::config(&ep, &prefix);
        c.namespace = ns.into();
        ObjStore::open(&c).unwrap()
    };
    let (a, b) = (open("a"), open("b"));
    for i in 0..5u8 {
        a.store(&Key([i; 16]), &vec![i; 10_000]).unwrap();
    }
    for i in 0..2u8 {
        b.store(&Key([i + 50; 16]), &vec![i; 20_000]).unwrap();
    }
    // One damaged block and one object that is not a block.
    let name = a.object_path(&Key([3; 16]));
    let mut raw = obj_common::get_object(&ep, &prefix, &name).unwrap();
    *raw.last_mut().unwrap() ^= 1;
    obj_common::put_object(&ep, &prefix, &name, &raw);
    obj_common::put_object(&ep, &prefix, "a/notes.txt", b"hello");

    let args = |cmd: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["obj".into()];
        v.extend(cmd.iter().map(|s| s.to_string()));
        v.extend([url.clone(), "--endpoint".into(), ep.clone()]);
        v
    };
    let run = |cmd: &[&str]| {
        let a = args(cmd);
        kvr(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = run(&["inspect", "--json"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let v = json(&o);
    let ns = v["namespaces"].as_array().unwrap();
    assert_eq!(ns.len(), 2, "{v}");
    assert_eq!(
        (ns[0]["namespace"].as_str(), ns[0]["blocks"].as_u64()),
        (Some("a"), Some(5))
    );
    assert_eq!(ns[0]["other_objects"], 1);
    assert_eq!(ns[1]["blocks"], 2);
    assert_eq!(ns[1]["bytes"], 2 * (4096 + 20_000));
    let o = run(&["inspect"]);
    assert!(text(&o).0.contains("total"), "{:?}", text(&o));

    let o = run(&["verify"]);
    assert_eq!(o.status.code(), Some(3), "{:?}", text(&o));
    let (out, _) = text(&o);
    assert!(out.contains(&format!("BAD {name}: ")), "{out}");
    assert!(out.contains("checked 7 blocks"), "{out}");
    assert!(
        a.contains(&Key([3; 16])).unwrap(),
        "verify without --repair keeps it"
    );
    let o = run(&["verify", "--repair", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert_eq!(json(&o)["bad"][0]["removed"], true);
    assert!(!a.contains(&Key([3; 16])).unwrap());
    assert_eq!(run(&["verify"]).status.code(), Some(0));

    let o = run(&["gc", "--namespace", "b", "--max-bytes", "0", "--json"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let v = json(&o);
    assert_eq!(
        (v["removed_blocks"].as_u64(), v["bytes_after"].as_u64()),
        (Some(2), Some(0))
    );
    assert!(!b.contains(&Key([50; 16])).unwrap());
    assert!(
        a.contains(&Key([0; 16])).unwrap(),
        "gc of namespace b leaves a alone"
    );
    let o = run(&["gc", "--max-bytes", "20K"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let v = json(&run(&["inspect", "--json"]));
    assert!(
        v["namespaces"][0]["bytes"].as_u64().unwrap() <= 20 * 1024,
        "{v}"
    );

    // A server that is not there: one line on stderr naming it, exit 1.
    let o = kvr(&["obj", "inspect", &url, "--endpoint", "http://127.0.0.1:9"]);
    assert_eq!(o.status.code(), Some(1));
    let (_, err) = text(&o);
    assert!(
        err.contains("http://127.0.0.1:9") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn obj_inspect_and_verify_show_whole_keys() {
    let ep = endpoint_or_skip!();
    let prefix = obj_common::unique_prefix("cli-keys");
    let url = format!("s3://{}/{prefix}", obj_common::BUCKET);
    let s = ObjStore::open(&obj_common::config(&ep, &prefix)).unwrap();
    let long = b"a 64-character SGLang page hash, or any engine key of 1..=256 b";
    s.store_segments(long, &[&[1u8; 3000]], None).unwrap();
    s.store(&Key([0xab; 16]), &[2u8; 100]).unwrap();
    let long_hex: String = long.iter().map(|b| format!("{b:02x}")).collect();
    let run = |cmd: &[&str]| {
        let mut a = vec!["obj"];
        a.extend_from_slice(cmd);
        a.extend([url.as_str(), "--endpoint", ep.as_str()]);
        kvr(&a)
    };
    let o = run(&["inspect", "--keys", "--json"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let v = json(&o);
    let blocks = v["namespaces"][0]["block_list"].as_array().unwrap().clone();
    assert_eq!(blocks.len(), 2, "{v}");
    let by_version = |ver: u64| blocks.iter().find(|b| b["version"] == ver).unwrap().clone();
    assert_eq!(by_version(2)["key"], long_hex.as_str());
    assert_eq!(by_version(2)["key_len"], long.len());
    assert_eq!(by_version(2)["payload_len"], 3000);
    assert_eq!(by_version(1)["key"], "ab".repeat(16).as_str());
    let (out, _) = text(&run(&["inspect", "--keys"]));
    assert!(
        out.contains(&format!("key {long_hex} ({} bytes)", long.len())),
        "{out}"
    );
    // A damaged v2 object: verify shows the whole key its header holds.
    let name = s.object_path_of(long);
    let mut raw = obj_common::get_object(&ep, &prefix, &name).unwrap();
    *raw.last_mut().unwrap() ^= 1;
    obj_common::put_object(&ep, &prefix, &name, &raw);
    let o = run(&["verify"]);
    assert_eq!(o.status.code(), Some(3), "{:?}", text(&o));
    let (out, _) = text(&o);
    assert!(out.contains(&format!("BAD {name}: ")), "{out}");
    assert!(out.contains(&format!("[key {long_hex}]")), "{out}");
    let v = json(&run(&["verify", "--json"]));
    assert_eq!(v["bad"][0]["key"], long_hex.as_str());
}

#[test]
fn obj_bench_smoke_json() {
    let ep = endpoint_or_skip!();
    let url = format!(
        "s3://{}/{}",
        obj_common::BUCKET,
        obj_common::unique_prefix("bench")
    );
    let o = kvr(&[
        "bench",
        "--tier",
        "obj",
        "--endpoint",
        &ep,
        "--obj-url",
        &url,
        "--block-size",
        "64K",
        "--in-flight",
        "4",
        "--bytes",
        "1M",
        "--runs",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let v = json(&o);
    let rows = v["rows"].as_array().unwrap();
    common::assert_rows_measured(rows, "obj");
    // kvr's stores next to plain PUTs and to conditional PUTs (the publish-once request kvr
    // sends), its loads next to GETs.
    let got: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["op"].as_str().unwrap(), r["limit"].as_str().unwrap()))
        .collect();
    assert_eq!(got.len(), 3, "{rows:?}");
    assert_eq!(
        got[0],
        ("store", "raw HTTP PUT, same bytes, same in flight")
    );
    assert_eq!(got[1].0, "store");
    assert!(got[1].1.contains("If-None-Match: *"), "{rows:?}");
    assert_eq!(got[2], ("load", "raw HTTP GET, same bytes, same in flight"));
    // Each client's own CPU time per request, for kvr's stores and loads and the plain
    // client's conditional PUTs and GETs: measured, so above zero.
    let timings = v["timings"].as_array().unwrap();
    let whats: Vec<&str> = timings
        .iter()
        .map(|t| t["what"].as_str().unwrap())
        .collect();
    let clients = ["kvr store", "If-None-Match", "kvr load", "raw HTTP GET"];
    assert_eq!(whats.len(), clients.len(), "{timings:?}");
    for (what, client) in whats.iter().zip(clients) {
        assert!(
            what.starts_with("client CPU per request, 64K x 4 in flight"),
            "{what}"
        );
        assert!(what.contains(client), "{what}");
    }
    for t in timings {
        let us = t["micros"]["median"].as_f64().unwrap();
        assert!(us > 0.0 && us.is_finite(), "{t:?}");
    }
    // The bench removes what it wrote.
    let inspect = kvr(&["obj", "inspect", "--json", &url, "--endpoint", &ep]);
    assert!(inspect.status.success(), "{:?}", text(&inspect));
    let namespaces = json(&inspect)["namespaces"].as_array().unwrap().len();
    assert_eq!(namespaces, 0, "{:?}", text(&inspect));
}
