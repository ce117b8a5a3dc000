//! What another user with write access to a shared store directory can plant (symlinks,
//! FIFOs, directories, stray files at kvr's names) costs an error at most: never a hang,
//! never a followed symlink, never a bricked store (issue 11, items 4 to 7). Every
//! operation that hung before runs under a time limit.

mod common;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::ptr::null_mut;
use std::time::Duration;

use kvr::ffi::fs::*;
use kvr::ffi::kvr_status::{self, *};
use kvr::ffi::tensors::*;
use kvr::fs::maintenance;
use kvr::io::DirectIo;
use kvr::{ErrorKind, FsConfig, FsStore, Key};

use common::bounded::{mkfifo, names_starting, within};
use common::last_error;

const LIMIT: Duration = Duration::from_secs(10);

fn config(root: &Path) -> FsConfig {
    let mut c = FsConfig::new(root, "ns");
    c.read_threads = 1;
    c.write_threads = 1;
    c
}

fn open_store(root: &Path) -> FsStore {
    FsStore::open(&config(root)).unwrap()
}

fn c_path(p: &Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

/// Opens the store at `root` through the C ABI; the status and the handle.
fn c_open(root: &CString) -> (kvr_status, *mut kvr_fs) {
    let ns = CString::new("ns").unwrap();
    let mut c = kvr_fs_config::default();
    assert_eq!(kvr_fs_config_default(&mut c), KVR_OK);
    c.root = root.as_ptr();
    c.namespace_name = ns.as_ptr();
    c.read_threads = 1;
    c.write_threads = 1;
    let mut fs = null_mut();
    let st = kvr_fs_open(&c, &mut fs);
    (st, fs)
}

fn block_path(root: &Path, key: &Key) -> PathBuf {
    kvr::fs::path::block_path(&root.join("ns"), key)
}

#[test]
fn a_fifo_at_a_block_path_is_never_waited_on_and_the_key_can_be_stored_again() {
    let d = tempfile::tempdir().unwrap();
    let root = c_path(d.path());
    let (st, fs) = c_open(&root);
    assert_eq!(st, KVR_OK, "{}", last_error());
    let key = kvr_block_key { bytes: [0xab; 16] };
    let path = block_path(d.path(), &Key(key.bytes));
    mkfifo(&path);
    let handle = fs as usize;
    let (contains, load, message) = within(LIMIT, "kvr_load_block on a FIFO", move || {
        let fs = handle as *const kvr_fs;
        let mut present = true;
        assert_eq!(kvr_fs_contains(fs, &key, &mut present), KVR_OK);
        let mut buf = vec![0u8; 100];
        let st = kvr_load_block(fs, &key, buf.as_mut_ptr().cast(), buf.len());
        (present, st, last_error())
    });
    assert!(!contains, "a FIFO is no block");
    assert_eq!(load, KVR_ERR_CORRUPT, "{message}");
    assert!(message.contains("FIFO"), "{message}");
    assert!(
        std::fs::symlink_metadata(&path).is_err(),
        "the FIFO was removed"
    );

    // Planted again: a store replaces it (never dedups against it), then serves the bytes.
    mkfifo(&path);
    let data = vec![7u8; 5000];
    let stored = within(LIMIT, "kvr_store_block over a FIFO", move || {
        let fs = handle as *const kvr_fs;
        kvr_store_block(fs, &key, data.as_ptr().cast(), data.len())
    });
    assert_eq!(stored, KVR_OK, "{}", last_error());
    assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
    let mut back = vec![0u8; 5000];
    assert_eq!(
        kvr_load_block(fs, &key, back.as_mut_ptr().cast(), back.len()),
        KVR_OK
    );
    assert_eq!(back, vec![7u8; 5000]);
    kvr_fs_close(fs);
}

#[test]
fn symlinks_and_directories_at_block_paths_are_no_blocks() {
    let d = tempfile::tempdir().unwrap();
    let s = open_store(d.path());
    let (linked, dir) = (Key([1; 16]), Key([2; 16]));
    let target = d.path().join("target");
    std::fs::write(&target, b"not a block").unwrap();
    std::os::unix::fs::symlink(&target, block_path(d.path(), &linked)).unwrap();
    std::fs::create_dir(block_path(d.path(), &dir)).unwrap();
    assert!(!s.contains(&linked) && !s.contains(&dir));
    assert_eq!(s.lookup_prefix(&[linked]), 0);
    let mut buf = [0u8; 11];
    let e = s.load(&linked, &mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"not a block",
        "never followed"
    );
    s.store(&linked, b"now a block").unwrap();
    assert_eq!(s.load(&linked, &mut buf).unwrap(), 11);
    assert_eq!(&buf, b"now a block");
    let e = s.load(&dir, &mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let e = s.store(&dir, b"x").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("directory"), "a clear error: {e}");
}

#[test]
fn a_fifo_named_like_a_temp_file_hangs_neither_open_nor_gc() {
    let d = tempfile::tempdir().unwrap();
    drop(open_store(d.path()));
    let fanout = d.path().join("ns").join("ab");
    let temp = fanout.join(kvr::fs::path::temp_name(&Key([0xab; 16]), 1, 1));
    let legacy = fanout.join(kvr::fs::path::legacy_temp_name(&Key([0xab; 16]), 1, 1));
    mkfifo(&legacy);
    mkfifo(&temp);
    let root = c_path(d.path());
    let st = within(LIMIT, "kvr_fs_open with a FIFO temp file", move || {
        let (st, fs) = c_open(&root);
        kvr_fs_close(fs);
        st
    });
    assert_eq!(st, KVR_OK);
    for t in [&temp, &legacy] {
        assert!(
            std::fs::symlink_metadata(t).is_err(),
            "open's scan removed it"
        );
        mkfifo(t);
    }
    let dir = d.path().to_path_buf();
    let g = within(LIMIT, "gc with a FIFO temp file", move || {
        maintenance::gc(&dir, None, u64::MAX)
    });
    assert_eq!(g.unwrap().removed_temp_files, 2, "junk at temp names goes");
    assert!(std::fs::symlink_metadata(&temp).is_err());
    assert!(std::fs::symlink_metadata(&legacy).is_err());
}

#[test]
fn kvr_tensors_open_on_a_fifo_fails_at_once() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("model.safetensors");
    mkfifo(&fifo);
    let path = c_path(&fifo);
    let (st, message) = within(LIMIT, "kvr_tensors_open on a FIFO", move || {
        let mut f = null_mut();
        let st = kvr_tensors_open(path.as_ptr(), &mut f);
        assert!(f.is_null());
        (st, last_error())
    });
    assert_ne!(st, KVR_OK);
    assert!(message.contains("FIFO"), "{message}");
}

#[test]
fn a_symlink_at_the_old_probe_name_is_not_followed() {
    let d = tempfile::tempdir().unwrap();
    let victim = d.path().join("victim");
    std::fs::write(&victim, b"precious bytes").unwrap();
    let store_dir = d.path().join("ns");
    std::fs::create_dir(&store_dir).unwrap();
    // The name the probe used to open with O_CREAT | O_TRUNC, following symlinks.
    let old_name = format!(
        ".kvr_direct_probe.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    );
    std::os::unix::fs::symlink(&victim, store_dir.join(&old_name)).unwrap();
    let slot_dir = d.path().join("disk");
    std::fs::create_dir(&slot_dir).unwrap();
    std::os::unix::fs::symlink(&victim, slot_dir.join(&old_name)).unwrap();
    let mut c = config(d.path());
    c.direct_io = DirectIo::Auto;
    drop(FsStore::open(&c).unwrap());
    let disk = kvr::DiskConfig::new(slot_dir.join("slots"), 4096, 4);
    drop(kvr::SlotFile::open(&disk).unwrap());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious bytes");
    for dir in [&store_dir, &slot_dir] {
        assert!(names_starting(dir, ".kvr_direct_probe.").is_empty());
    }
}

#[test]
fn a_stray_file_named_like_a_fanout_directory_is_skipped_and_reported() {
    let d = tempfile::tempdir().unwrap();
    let s = open_store(d.path());
    s.store(&Key([1; 16]), b"one").unwrap();
    drop(s);
    let stray = d.path().join("ns").join("ff");
    std::fs::remove_dir(&stray).unwrap();
    std::fs::write(&stray, b"junk").unwrap();
    let root = c_path(d.path());
    let (st, fs) = c_open(&root);
    assert_eq!(st, KVR_OK, "{}", last_error());
    let mut present = false;
    let key = kvr_block_key { bytes: [1; 16] };
    assert_eq!(kvr_fs_contains(fs, &key, &mut present), KVR_OK);
    assert!(present);
    kvr_fs_close(fs);
    let summary = maintenance::inspect(d.path(), None).unwrap();
    assert_eq!((summary[0].blocks, summary[0].strays), (1, 1));
    let r = maintenance::verify(d.path(), None, 2, false).unwrap();
    assert_eq!(r.bad.len(), 1);
    assert_eq!(r.bad[0].path, stray);
    assert!(r.bad[0].reason.contains("fan-out"), "{}", r.bad[0].reason);
}

#[test]
fn verify_lists_what_sits_at_block_paths_and_repair_removes_it() {
    let d = tempfile::tempdir().unwrap();
    let s = open_store(d.path());
    s.store(&Key([9; 16]), b"good").unwrap();
    let fifo = block_path(d.path(), &Key([1; 16]));
    let link = block_path(d.path(), &Key([2; 16]));
    let dir = block_path(d.path(), &Key([3; 16]));
    mkfifo(&fifo);
    std::os::unix::fs::symlink(block_path(d.path(), &Key([9; 16])), &link).unwrap();
    std::fs::create_dir(&dir).unwrap();
    let root = d.path().to_path_buf();
    let r = within(LIMIT, "verify with a FIFO at a block path", move || {
        maintenance::verify(&root, None, 2, false).unwrap()
    });
    assert_eq!(r.checked, 1);
    let found: Vec<(&Path, &str)> = r
        .bad
        .iter()
        .map(|b| (b.path.as_path(), b.reason.as_str()))
        .collect();
    assert_eq!(found.len(), 3, "{found:?}");
    for (path, what) in [(&fifo, "FIFO"), (&link, "symlink"), (&dir, "directory")] {
        assert!(
            found.iter().any(|(p, r)| p == path && r.contains(what)),
            "{what}: {found:?}"
        );
    }
    let r = maintenance::verify(d.path(), None, 2, true).unwrap();
    let removed: Vec<&Path> = r
        .bad
        .iter()
        .filter(|b| b.removed)
        .map(|b| b.path.as_path())
        .collect();
    assert_eq!(removed.len(), 2, "all but the directory: {removed:?}");
    assert!(std::fs::symlink_metadata(&fifo).is_err() && std::fs::symlink_metadata(&link).is_err());
    assert!(dir.is_dir());
    let mut back = [0u8; 4];
    s.load(&Key([9; 16]), &mut back).unwrap();
    assert_eq!(&back, b"good", "the symlink's target is untouched");
}

#[test]
fn verify_bounds_its_memory_on_a_huge_sparse_file() {
    let d = tempfile::tempdir().unwrap();
    let s = open_store(d.path());
    let key = Key([4; 16]);
    s.store(&key, b"small").unwrap();
    let path = block_path(d.path(), &key);
    // A valid header for 5 bytes, then a hole up to 8 GiB: reading it whole would need
    // 8 GiB of memory; a bounded verify reports the length at once.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(8 << 30).unwrap();
    drop(f);
    let root = d.path().to_path_buf();
    let r = within(
        Duration::from_secs(20),
        "verify of an 8 GiB sparse block",
        move || maintenance::verify(&root, None, 1, false).unwrap(),
    );
    assert_eq!(r.bad.len(), 1);
    assert!(
        r.bad[0].reason.contains("header says"),
        "{}",
        r.bad[0].reason
    );
}

#[test]
fn a_fifo_at_the_namespace_manifest_fails_the_open_at_once() {
    let d = tempfile::tempdir().unwrap();
    let mut ns = kvr::Namespace::new("org/model");
    ns.kv_dtype = "bf16".into();
    let mut c = FsConfig::for_namespace(d.path(), &ns).unwrap();
    c.direct_io = DirectIo::Off;
    let path = kvr::namespace::manifest_path(d.path(), &c.namespace);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    mkfifo(&path);
    let e = within(
        LIMIT,
        "opening a store whose manifest is a FIFO",
        move || FsStore::open(&c).err(),
    )
    .expect("a FIFO is no manifest");
    assert!(e.to_string().contains("FIFO"), "{e}");
    let root = d.path().to_path_buf();
    let listed = within(LIMIT, "inspect with a FIFO manifest", move || {
        maintenance::inspect(&root, None).map(|s| s.len())
    });
    assert!(listed.is_ok());
}
