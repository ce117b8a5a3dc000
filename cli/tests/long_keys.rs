//! `kvr fs inspect --keys`, `kvr disk inspect --keys` and both `verify`s on stores holding
//! version-2 (whole, not 16-byte) keys next to version-1 (16-byte) ones; and the smoke runs
//! of `kvr bench --tier vectored` and `--tier lookup`.

mod common;

use kvr::{DiskConfig, FsConfig, FsStore, SlotFile};

use common::files::flip_byte;
use common::{bench_smoke, json, kvr, stderr};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const LONG: &[u8] = b"sglang:5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e";
const SHORT: &[u8] = b"0123456789abcdef";

#[test]
fn fs_inspect_lists_whole_keys_and_verify_checks_v2_blocks() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = FsStore::open(&FsConfig::new(dir.path(), "ns")).unwrap();
        s.store_segments(LONG, &[&[1u8; 5000], &[2u8; 3000]], None)
            .unwrap();
        s.store_segments(SHORT, &[&[3u8; 4096]], None).unwrap();
    }
    let root = dir.path().to_str().unwrap();
    let o = kvr(&["fs", "inspect", root, "--keys", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let blocks = v["stores"][0]["block_list"].as_array().unwrap();
    assert_eq!(blocks.len(), 2);
    let find = |k: &[u8]| {
        blocks
            .iter()
            .find(|b| b["key"] == hex(k))
            .unwrap_or_else(|| panic!("no block of key {k:?} in {blocks:?}"))
    };
    assert_eq!(find(LONG)["version"], 2);
    assert_eq!(find(LONG)["key_len"], LONG.len());
    assert_eq!(find(LONG)["payload_len"], 8000);
    assert_eq!(find(SHORT)["version"], 1);
    let o = kvr(&["fs", "inspect", root, "--keys"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains(&format!("v2  key {}", hex(LONG))), "{text}");
    assert!(text.contains(&format!("v1  key {}", hex(SHORT))), "{text}");
    let o = kvr(&["fs", "verify", root]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("checked 2 blocks"));
}

#[test]
fn disk_inspect_lists_whole_keys_and_verify_checks_v2_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spill.slots");
    {
        let d = SlotFile::open(&DiskConfig::new(&path, 8192, 4)).unwrap();
        d.write_segments(LONG, &[&[1u8; 4096], &[2u8; 100]], b"md")
            .unwrap();
        d.write_segments(SHORT, &[&[3u8; 10]], b"").unwrap();
    }
    let p = path.to_str().unwrap();
    let o = kvr(&["disk", "inspect", p, "--keys", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let live = v["live"].as_array().unwrap();
    assert_eq!(live.len(), 2);
    let long = live.iter().find(|e| e["key"] == hex(LONG)).unwrap();
    assert_eq!(
        (&long["version"], &long["len"], &long["meta_len"]),
        (&2.into(), &4196.into(), &2.into())
    );
    let short = live.iter().find(|e| e["key"] == hex(SHORT)).unwrap();
    assert_eq!(
        (&short["version"], &short["name"]),
        (&1.into(), &hex(SHORT).into())
    );
    // Without --keys the summary stays as it was (no listing).
    assert!(json(&kvr(&["disk", "inspect", p, "--json"]))
        .get("live")
        .is_none());
    let o = kvr(&["disk", "inspect", p, "--keys"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains(&format!("v2 key {}", hex(LONG))), "{text}");
    let o = kvr(&["disk", "verify", p]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("verified 2 entries"));
}

/// A damaged version-2 entry is reported by its whole engine key (what the engine knows),
/// next to its 16-byte block name.
#[test]
fn disk_verify_names_a_bad_v2_entry_by_its_whole_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spill.slots");
    let g = {
        let d = SlotFile::open(&DiskConfig::new(&path, 8192, 4)).unwrap();
        d.write_segments(LONG, &[&[1u8; 4096], &[2u8; 100]], b"md")
            .unwrap();
        d.write_segments(SHORT, &[&[3u8; 10]], b"").unwrap();
        d.geometry()
    };
    let r = kvr::disk::inspect(&path).unwrap();
    let name = kvr::disk::entry_keys(&path, &r)
        .unwrap()
        .into_iter()
        .find(|e| e.key.as_deref() == Some(LONG))
        .unwrap();
    flip_byte(&path, g.slot_offset(name.slot) + 4096 + 50); // a payload byte
    let p = path.to_str().unwrap();
    let o = kvr(&["disk", "verify", p, "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let v = json(&o);
    let bad = v["bad"].as_array().unwrap();
    assert_eq!(bad.len(), 1, "{v}");
    assert_eq!(bad[0]["slot"], name.slot);
    assert_eq!(bad[0]["key"], hex(LONG));
    assert_eq!(bad[0]["key_len"], LONG.len());
    assert_eq!(bad[0]["name"], name.header.key.to_hex());
    assert!(
        bad[0]["reason"].as_str().unwrap().contains("checksum"),
        "{v}"
    );
    let o = kvr(&["disk", "verify", p]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!(
            "BAD slot {} name {} key {}",
            name.slot,
            name.header.key.to_hex(),
            hex(LONG)
        )),
        "{text}"
    );
}

#[test]
fn bench_vectored_and_lookup_smoke_json() {
    let dir = tempfile::tempdir().unwrap();
    let o = bench_smoke("vectored", dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let rows = v["rows"].as_array().unwrap();
    let ops: Vec<&str> = rows.iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        ["store 64x32K", "load 64x32K", "write 64x32K", "read 64x32K"]
    );
    for r in rows {
        assert!(r["ratio"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["block_size"], 2 << 20);
    }
    let o = bench_smoke("lookup", dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let t = v["timings"].as_array().unwrap();
    assert_eq!(t.len(), 4);
    for x in t {
        assert!(x["micros"]["median"].as_f64().unwrap() > 0.0, "{x}");
    }
}
