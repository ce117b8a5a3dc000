//! The lazy tensor directory as a dictionary: count, contains, ids in insertion order (as
//! snapshots, also while other threads put and remove), lookup that tells a missing id from
//! an error, removal, and adoption of existing files.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvr::tensors::{write, Adopt, Dtype, TensorDir, TensorIn, WriteOptions};
use kvr::ErrorKind;

fn opts() -> WriteOptions {
    WriteOptions {
        align_4k: false,
        sync: false,
    }
}

fn put(dir: &TensorDir, id: &str, fill: u8) {
    dir.put(
        id,
        &[TensorIn::contiguous("x", Dtype::U8, &[16], &[fill; 16])],
        &[],
        opts(),
    )
    .unwrap();
}

fn read_x(dir: &TensorDir, id: &str) -> Vec<u8> {
    let r = dir.find(id, None).unwrap().expect("present");
    let mut buf = vec![0u8; 64];
    let n = r.materialize_into(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn ids(dir: &TensorDir) -> Vec<String> {
    dir.ids().iter().map(str::to_string).collect()
}

fn files_in(p: &Path) -> usize {
    std::fs::read_dir(p).unwrap().count()
}

/// A checkpoint-like file with tensors "x" (8 x u8 of `fill`) and "y" (2 x u16).
fn checkpoint(path: &Path, fill: u8) {
    write(
        path,
        &[
            TensorIn::contiguous("x", Dtype::U8, &[8], &[fill; 8]),
            TensorIn::contiguous("y", Dtype::U16, &[2], &[fill, 0, fill, 1]),
        ],
        &[],
        opts(),
    )
    .unwrap();
}

#[test]
fn count_contains_and_ids_in_insertion_order() {
    let dir = TensorDir::create(None).unwrap();
    assert_eq!((dir.len(), dir.is_empty()), (0, true));
    assert!(dir.ids().is_empty());
    for (id, fill) in [("b", 1), ("a", 2), ("c", 3)] {
        put(&dir, id, fill);
    }
    assert_eq!(dir.len(), 3);
    assert!(dir.contains("a") && !dir.contains("d"));
    assert_eq!(ids(&dir), ["b", "a", "c"]);
    let before = dir.ids();
    put(&dir, "a", 9);
    assert_eq!(
        ids(&dir),
        ["b", "a", "c"],
        "a replaced item keeps its place"
    );
    assert_eq!(read_x(&dir, "a"), [9u8; 16]);
    assert!(dir.remove("b").unwrap());
    assert!(
        !dir.remove("b").unwrap(),
        "a second removal is a plain miss"
    );
    put(&dir, "b", 4);
    assert_eq!(ids(&dir), ["a", "c", "b"], "removed and re-added goes last");
    assert_eq!(
        before.iter().collect::<Vec<_>>(),
        ["b", "a", "c"],
        "a snapshot does not change"
    );
    assert_eq!(
        (before.len(), before.get(1), before.get(3)),
        (3, Some("a"), None)
    );
    assert_eq!(
        files_in(dir.path()),
        3,
        "one file per item, replaced files gone"
    );
}

#[test]
fn ids_are_never_file_names() {
    let parent = tempfile::tempdir().unwrap();
    let dir = TensorDir::create(Some(parent.path())).unwrap();
    let odd = ["", "../escape", "a/b", "/abs", "..", ".", "ünï cödé"];
    for (i, id) in odd.iter().enumerate() {
        put(&dir, id, i as u8);
    }
    assert_eq!(ids(&dir), odd);
    for (i, id) in odd.iter().enumerate() {
        assert_eq!(read_x(&dir, id), [i as u8; 16], "{id:?}");
    }
    // Only the directory holds anything, and only its own numbered files.
    assert_eq!(files_in(parent.path()), 1);
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let name = f.unwrap().file_name().into_string().unwrap();
        assert!(
            name.starts_with("item-") && name.ends_with(".safetensors"),
            "{name}"
        );
    }
    let t = [TensorIn::contiguous("x", Dtype::U8, &[1], &[0])];
    let e = dir.put("nul\0id", &t, &[], opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(dir.remove("").unwrap());
    assert_eq!(dir.len(), odd.len() - 1);
}

#[test]
fn find_tells_a_missing_item_from_a_broken_one() {
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("ck.safetensors");
    checkpoint(&file, 7);
    let dir = TensorDir::create(None).unwrap();
    dir.adopt(&[Adopt {
        item_id: "w",
        location: file.to_str().unwrap(),
        tensor: Some("x"),
    }])
    .unwrap();
    assert!(
        dir.find("missing", None).unwrap().is_none(),
        "a miss, not an error"
    );
    let e = dir.get_ref("missing", None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "get_ref keeps its error");
    // The adopted file is replaced by garbage before its first materialize.
    let garbage = src.path().join("garbage");
    std::fs::write(&garbage, 1000u64.to_le_bytes()).unwrap();
    std::fs::rename(&garbage, &file).unwrap();
    let r = dir.find("w", None).unwrap().expect("the item is there");
    let e = r.materialize_into(&mut [0u8; 8]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    std::fs::remove_file(&file).unwrap();
    let e = r.materialize_into(&mut [0u8; 8]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("ck.safetensors"), "{e}");
}

#[test]
fn removal_keeps_outstanding_references_working() {
    let dir = TensorDir::create(None).unwrap();
    put(&dir, "a", 1);
    put(&dir, "b", 2);
    let ra = dir.get_ref("a", Some("x")).unwrap();
    let rb = dir.get_ref("b", Some("x")).unwrap();
    let view_b = rb.load().unwrap(); // b mapped before its removal
    assert!(dir.remove("a").unwrap());
    assert!(dir.remove("b").unwrap());
    assert!(!dir.contains("a") && dir.find("a", None).unwrap().is_none());
    assert_eq!(files_in(dir.path()), 2, "files stay while references exist");
    // `a` was never loaded: its file is opened now, after the removal.
    let mut buf = [0u8; 16];
    assert_eq!(ra.materialize_into(&mut buf).unwrap(), 16);
    assert_eq!(buf, [1u8; 16]);
    drop(ra);
    assert_eq!(
        files_in(dir.path()),
        1,
        "the last reference deleted a's file"
    );
    drop(rb);
    assert_eq!(files_in(dir.path()), 0);
    assert_eq!(
        view_b.get(Some("x")).unwrap().data,
        [2u8; 16],
        "mapping outlives the file"
    );
}

#[test]
fn adopted_items_are_read_lazily_and_their_files_never_deleted() {
    let src = tempfile::tempdir().unwrap();
    let (a, b) = (
        src.path().join("a.safetensors"),
        src.path().join("b.safetensors"),
    );
    checkpoint(&a, 3);
    checkpoint(&b, 5);
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    let dir = TensorDir::create(None).unwrap();
    put(&dir, "own", 1);
    dir.adopt(&[
        Adopt {
            item_id: "a.x",
            location: a_s,
            tensor: Some("x"),
        },
        Adopt {
            item_id: "a.y",
            location: a_s,
            tensor: Some("y"),
        },
        Adopt {
            item_id: "b",
            location: b_s,
            tensor: None,
        },
    ])
    .unwrap();
    assert_eq!(ids(&dir), ["own", "a.x", "a.y", "b"]);
    assert_eq!(files_in(dir.path()), 1, "adoption copies nothing");
    assert_eq!(read_x(&dir, "a.x"), [3u8; 8]);
    let y = dir.get_ref("a.y", None).unwrap();
    let x_file = dir.get_ref("a.x", None).unwrap().load().unwrap();
    assert!(
        Arc::ptr_eq(&x_file, &y.load().unwrap()),
        "one mapping per file of one call"
    );
    drop(x_file);
    y.with_view(|t| assert_eq!(t.data, [3, 0, 3, 1])).unwrap();
    // Naming the adopted tensor is fine; another tensor of the same file is not this item.
    assert_eq!(
        dir.get_ref("a.x", Some("x"))
            .unwrap()
            .materialize_into(&mut [0; 8])
            .unwrap(),
        8
    );
    let e = dir
        .get_ref("a.x", Some("y"))
        .unwrap()
        .materialize_into(&mut [0; 8])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("adopted as tensor 'x'"), "{e}");
    // A whole-file item picks tensors by name, as a put item does.
    let bx = dir.get_ref("b", Some("x")).unwrap();
    assert_eq!(bx.with_view(|t| t.data.to_vec()).unwrap(), [5u8; 8]);
    let e = dir
        .get_ref("b", None)
        .unwrap()
        .materialize_into(&mut [0; 8])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "two tensors, no name: {e}");
    // Removal and cleanup leave adopted files alone; references then fail with Closed.
    assert!(dir.remove("a.x").unwrap());
    assert!(a.is_file());
    // An adopted id replaced by a put, and an own item replaced by an adopted one.
    put(&dir, "a.y", 8);
    assert_eq!(read_x(&dir, "a.y"), [8u8; 16]);
    dir.adopt(&[Adopt {
        item_id: "own",
        location: a_s,
        tensor: Some("x"),
    }])
    .unwrap();
    assert_eq!(read_x(&dir, "own"), [3u8; 8]);
    assert_eq!(
        files_in(dir.path()),
        1,
        "the replaced own file is gone, a.y's is there"
    );
    let path = dir.path().to_path_buf();
    dir.cleanup().unwrap();
    assert!(!path.exists());
    assert!(a.is_file() && b.is_file(), "adopted files survive cleanup");
    assert_eq!(
        bx.materialize_into(&mut [0; 8]).unwrap_err().kind(),
        ErrorKind::Closed
    );
    assert_eq!((dir.len(), dir.contains("b")), (0, false));
    assert!(dir.ids().is_empty());
    assert_eq!(dir.find("b", None).unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(dir.remove("b").unwrap_err().kind(), ErrorKind::Closed);
    let e = dir
        .adopt(&[Adopt {
            item_id: "c",
            location: a_s,
            tensor: None,
        }])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed);
    // The last release of a handle whose items were adopted deletes no adopted file either.
    let dir = TensorDir::create(None).unwrap();
    dir.adopt(&[Adopt {
        item_id: "b",
        location: b_s,
        tensor: None,
    }])
    .unwrap();
    let r = dir.get_ref("b", Some("y")).unwrap();
    drop(dir);
    r.with_view(|t| assert_eq!(t.data.len(), 4)).unwrap();
    drop(r);
    assert!(b.is_file());
}

#[test]
fn bad_adoptions_adopt_nothing() {
    let src = tempfile::tempdir().unwrap();
    let good = src.path().join("good.safetensors");
    checkpoint(&good, 1);
    let hostile = src.path().join("hostile.safetensors");
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{\"x\":");
    std::fs::write(&hostile, &bytes).unwrap();
    let not_json = src.path().join("text.safetensors");
    std::fs::write(&not_json, b"\x05\0\0\0\0\0\0\0hello").unwrap();
    let g = good.to_str().unwrap();
    let dir = TensorDir::create(None).unwrap();
    put(&dir, "keep", 2);
    let inside = dir.path().join("item-0.safetensors");
    let missing = src.path().join("missing.safetensors");
    let cases: Vec<(ErrorKind, &str, Option<&str>, &str)> = vec![
        (
            ErrorKind::NotFound,
            missing.to_str().unwrap(),
            None,
            "missing.safetensors",
        ),
        (ErrorKind::NotFound, g, Some("z"), "no tensor named 'z'"),
        (
            ErrorKind::Corrupt,
            hostile.to_str().unwrap(),
            None,
            "hostile.safetensors",
        ),
        (
            ErrorKind::Corrupt,
            not_json.to_str().unwrap(),
            None,
            "text.safetensors",
        ),
        (
            ErrorKind::InvalidArgument,
            inside.to_str().unwrap(),
            None,
            "inside the tensor directory",
        ),
        (ErrorKind::InvalidArgument, "", None, "empty"),
    ];
    for (kind, location, tensor, needle) in cases {
        // A good entry first: it must not be adopted when a later one fails.
        let batch = [
            Adopt {
                item_id: "first",
                location: g,
                tensor: Some("x"),
            },
            Adopt {
                item_id: "bad",
                location,
                tensor,
            },
        ];
        let e = dir.adopt(&batch).unwrap_err();
        assert_eq!(e.kind(), kind, "{location}: {e}");
        assert!(e.to_string().contains(needle), "'{needle}' in: {e}");
        assert!(e.to_string().contains("'bad'"), "names the item: {e}");
        assert_eq!(ids(&dir), ["keep"], "nothing adopted");
    }
    let dup = [
        Adopt {
            item_id: "d",
            location: g,
            tensor: Some("x"),
        },
        Adopt {
            item_id: "d",
            location: g,
            tensor: Some("y"),
        },
    ];
    assert_eq!(
        dir.adopt(&dup).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    let nul = [Adopt {
        item_id: "n\0",
        location: g,
        tensor: None,
    }];
    assert_eq!(
        dir.adopt(&nul).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(ids(&dir), ["keep"]);
    assert!(dir.adopt(&[]).is_ok(), "an empty mapping adopts nothing");
    assert!(
        inside.is_file(),
        "the refused file is still the directory's own"
    );
}

/// Writers put and remove their own ids while readers iterate snapshots and materialize
/// whatever they find: every snapshot is one moment's consistent order, every reference
/// found materializes, and the directory ends with exactly the surviving items' files.
#[test]
fn snapshots_and_lookups_while_other_threads_put_and_remove() {
    const WRITERS: usize = 4;
    const ROUNDS: usize = 150;
    let dir = Arc::new(TensorDir::create(None).unwrap());
    let stable: Vec<String> = (0..10).map(|i| format!("stable{i}")).collect();
    for (i, id) in stable.iter().enumerate() {
        put(&dir, id, i as u8);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (dir, stop, stable) = (dir.clone(), stop.clone(), stable.clone());
            std::thread::spawn(move || {
                let mut snapshots = 0;
                while !stop.load(Ordering::Relaxed) || snapshots == 0 {
                    let snap = dir.ids();
                    let all: Vec<&str> = snap.iter().collect();
                    let unique: HashSet<&str> = all.iter().copied().collect();
                    assert_eq!(unique.len(), all.len(), "an id twice in a snapshot");
                    let stable_seen: Vec<&str> = all
                        .iter()
                        .copied()
                        .filter(|s| s.starts_with("stable"))
                        .collect();
                    assert_eq!(stable_seen, stable, "stable ids, in their order");
                    assert_eq!(
                        &all[..stable.len()],
                        &stable[..],
                        "inserted first, listed first"
                    );
                    for id in all.iter().rev().take(8) {
                        if let Some(r) = dir.find(id, Some("x")).unwrap() {
                            // Found means readable, even if removed right after.
                            let mut buf = [0u8; 16];
                            assert_eq!(r.materialize_into(&mut buf).unwrap(), 16);
                            assert!(buf.iter().all(|&b| b == buf[0]), "{id}: torn item");
                        }
                    }
                    snapshots += 1;
                }
                snapshots
            })
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    let id = format!("w{w}-{}", round % 7);
                    if round % 3 == 2 {
                        let _ = dir.remove(&id).unwrap();
                    } else {
                        put(&dir, &id, round as u8);
                    }
                }
            })
        })
        .collect();
    for t in writers {
        t.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for t in readers {
        assert!(t.join().unwrap() > 0);
    }
    let left = dir.len();
    assert_eq!(dir.ids().len(), left);
    assert_eq!(files_in(dir.path()), left, "one file per surviving item");
    for id in dir.ids().iter() {
        assert_eq!(read_x(&dir, id).len(), 16);
    }
}
