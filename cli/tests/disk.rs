//! End-to-end tests of `kvr disk inspect|verify` and `kvr bench --tier disk`.

mod common;

use std::process::Command;

use kvr::disk::Key;
use kvr::{DiskConfig, SlotFile};

use common::files::flip_byte;
use common::{assert_rows_measured, bench_smoke, json, kvr, stderr};

/// 8 slots, 6 entries (one key overwritten once), then three kinds of damage.
#[test]
fn inspect_counts_and_verify_finds_exactly_the_bad_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spill.slots");
    let p = path.to_str().unwrap();
    let key = |i: u8| -> Key { Key([i; 16]) };
    let g = {
        let d = SlotFile::open(&DiskConfig::new(&path, 8192, 8)).unwrap();
        for i in 0..6u8 {
            d.write(&key(i), &vec![i; 5000 + i as usize], &[i; 3])
                .unwrap();
        }
        d.write(&key(0), &[9u8; 100], b"m").unwrap(); // overwrite
        d.geometry()
    };
    let clean = kvr(&["disk", "inspect", p, "--json"]);
    assert!(clean.status.success(), "{}", stderr(&clean));
    let v = json(&clean);
    assert_eq!(v["entries"], 6);
    assert_eq!(v["free_slots"], 2);
    assert_eq!(v["damaged_slots"].as_array().unwrap().len(), 0);
    assert_eq!(v["owned_by_live_process"], false);
    assert_eq!(v["num_slots"], 8);
    assert_eq!(v["slot_size"], 8192);
    let ok = kvr(&["disk", "verify", p]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("verified 6 entries"));

    // Which slot holds which key.
    let r = kvr::disk::inspect(&path).unwrap();
    let slot_of = |i: u8| r.live.iter().find(|(_, h)| h.key == key(i)).unwrap().0;
    let (a, b, c, m) = (slot_of(1), slot_of(2), slot_of(3), slot_of(4));
    flip_byte(&path, g.slot_offset(a) + 4096 + 4000); // payload bit
    flip_byte(&path, g.table_entry_offset(b) + 40); // header table entry
    flip_byte(&path, g.slot_offset(c) + 20); // the slot's own header copy
    flip_byte(&path, g.slot_offset(m) + 129); // metadata (covered by the data checksum)

    let o = kvr(&["disk", "inspect", p, "--json"]);
    assert!(o.status.success());
    let v = json(&o);
    assert_eq!(v["entries"], 5);
    assert_eq!(v["free_slots"], 2);
    assert_eq!(v["damaged_slots"], serde_json::json!([b]));

    let o = kvr(&["disk", "verify", p, "--json", "--threads", "3"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["checked"], 5);
    let mut bad: Vec<u64> = v["bad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["slot"].as_u64().unwrap())
        .collect();
    bad.sort();
    let mut want = vec![a as u64, b as u64, c as u64, m as u64];
    want.sort();
    assert_eq!(bad, want, "{v}");
    let text = kvr(&["disk", "verify", p]);
    assert_eq!(text.status.code(), Some(3));
    let out = String::from_utf8_lossy(&text.stdout);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("BAD slot")).count(),
        4,
        "{out}"
    );
    assert!(out.contains("checksum mismatch"), "{out}");
}

#[test]
fn live_owner_is_reported_and_refused_and_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("owned.slots");
    let p = path.to_str().unwrap();
    let d = SlotFile::open(&DiskConfig::new(&path, 4096, 4)).unwrap();
    d.write(&Key([1; 16]), b"hello", b"").unwrap();
    let o = kvr(&["disk", "inspect", p, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(
        (v["owned_by_live_process"].clone(), v["entries"].clone()),
        (true.into(), 1.into())
    );
    let o = kvr(&["disk", "verify", p]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("owned by a live process"), "{e}");
    drop(d);
    assert_eq!(kvr(&["disk", "verify", p]).status.code(), Some(0));

    let other = dir.path().join("not_slots");
    std::fs::write(&other, vec![7u8; 8192]).unwrap();
    for args in [
        vec!["disk", "inspect", other.to_str().unwrap()],
        vec!["disk", "verify", "/nonexistent/kvr.slots"],
    ] {
        let o = kvr(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let e = stderr(&o);
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    assert!(
        stderr(&kvr(&["disk", "inspect", other.to_str().unwrap()])).contains("not a kvr slot file")
    );
    for sub in [
        &["disk", "--help"][..],
        &["disk", "inspect", "--help"],
        &["disk", "verify", "--help"],
    ] {
        let o = kvr(sub);
        assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Usage"));
    }
    assert_eq!(kvr(&["disk", "verify"]).status.code(), Some(2));
}

#[test]
fn bench_disk_smoke_json() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let o = bench_smoke("disk", dir.path());
    let fio = Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !fio {
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("apt-get install fio"), "{}", stderr(&o));
        return;
    }
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4); // write and read at 64K and 2M
    assert_rows_measured(rows, "disk");
    assert!(v["notes"][0]
        .as_str()
        .unwrap()
        .contains("recovery of 1024 slots"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "bench file left behind"
    );
}
