//! Lazy tensor directory: lifetime by reference counting across threads, cleanup, replace.

use std::sync::Arc;

use kvr::tensors::{Dtype, TensorDir, TensorIn, WriteOptions};
use kvr::ErrorKind;

fn opts() -> WriteOptions {
    WriteOptions {
        align_4k: false,
        sync: false,
    }
}

fn put(dir: &TensorDir, id: &str, fill: u8, len: u64) {
    let data = vec![fill; len as usize];
    dir.put(
        id,
        &[
            TensorIn::contiguous("x", Dtype::U8, &[len], &data),
            TensorIn::contiguous("y", Dtype::U16, &[2], &[fill, 0, fill, 1]),
        ],
        &[("id", id)],
        opts(),
    )
    .unwrap();
}

#[test]
fn references_outlive_the_handle_and_the_last_release_deletes_the_directory() {
    let parent = tempfile::tempdir().unwrap();
    let dir = TensorDir::create(Some(parent.path())).unwrap();
    let path = dir.path().to_path_buf();
    assert!(path.starts_with(parent.path()));
    put(&dir, "a", 1, 100);
    let r = dir.get_ref("a", Some("x")).unwrap();
    let r2 = r.clone();
    drop(dir);
    assert!(path.is_dir(), "a live reference keeps the directory");
    let mut buf = vec![0u8; 100];
    assert_eq!(r.materialize_into(&mut buf).unwrap(), 100);
    assert!(buf.iter().all(|&b| b == 1));
    drop(r);
    assert!(path.is_dir());
    // The last reference is released on another thread.
    std::thread::spawn(move || {
        r2.with_view(|t| assert_eq!(t.data.len(), 100)).unwrap();
        drop(r2);
    })
    .join()
    .unwrap();
    assert!(!path.exists(), "directory removed after the last release");
}

#[test]
fn cleanup_while_references_exist_fails_cleanly() {
    let dir = TensorDir::create(None).unwrap();
    let path = dir.path().to_path_buf();
    put(&dir, "a", 2, 4096);
    put(&dir, "b", 3, 10);
    let ra = dir.get_ref("a", Some("x")).unwrap();
    let rb = dir.get_ref("b", None).unwrap(); // two tensors: fails at materialize
    let loaded = ra.load().unwrap(); // a mapping taken before cleanup
    dir.cleanup().unwrap();
    assert!(!path.exists());
    let mut buf = vec![0u8; 4096];
    let e = ra.materialize_into(&mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    assert_eq!(rb.with_view(|_| ()).unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(
        dir.get_ref("a", None).unwrap_err().kind(),
        ErrorKind::Closed
    );
    let e = dir
        .put(
            "c",
            &[TensorIn::contiguous("x", Dtype::U8, &[1], &[0])],
            &[],
            opts(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed);
    // The earlier mapping is still readable (the unlinked file stays mapped).
    assert!(loaded.get(Some("x")).unwrap().data.iter().all(|&b| b == 2));
    dir.cleanup().unwrap(); // idempotent
}

#[test]
fn concurrent_materialize_from_threads() {
    let dir = TensorDir::create(None).unwrap();
    let path = dir.path().to_path_buf();
    for i in 0..8u8 {
        put(&dir, &format!("item{i}"), i, 64 * 1024 + i as u64);
    }
    let refs: Vec<_> = (0..8u8)
        .map(|i| Arc::new(dir.get_ref(&format!("item{i}"), Some("x")).unwrap()))
        .collect();
    drop(dir);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let refs = refs.clone();
            std::thread::spawn(move || {
                for round in 0..50 {
                    let i = (t + round) % 8;
                    let mut buf = vec![0xffu8; 64 * 1024 + 8];
                    let n = refs[i].materialize_into(&mut buf).unwrap();
                    assert_eq!(n, 64 * 1024 + i);
                    assert!(buf[..n].iter().all(|&b| b == i as u8));
                    refs[i]
                        .with_view(|v| assert_eq!(v.data[n - 1], i as u8))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(path.is_dir());
    drop(refs);
    assert!(!path.exists());
}

#[test]
fn replacing_an_item_keeps_old_references_valid() {
    let dir = TensorDir::create(None).unwrap();
    put(&dir, "a", 5, 8);
    let old = dir.get_ref("a", Some("x")).unwrap();
    put(&dir, "a", 6, 8);
    let new = dir.get_ref("a", Some("x")).unwrap();
    old.with_view(|v| assert_eq!(v.data, [5u8; 8])).unwrap();
    new.with_view(|v| assert_eq!(v.data, [6u8; 8])).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    drop(old);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "old file removed"
    );
    let e = dir.get_ref("missing", None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let e = new.materialize_into(&mut [0u8; 4]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooSmall);
    let bad = dir.get_ref("a", Some("nope")).unwrap();
    let e = bad.materialize_into(&mut [0u8; 64]).unwrap_err();
    assert!(
        e.kind() == ErrorKind::NotFound && e.to_string().contains("'x', 'y'"),
        "{e}"
    );
}
