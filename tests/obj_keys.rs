//! Whole engine keys in the object tier against a real S3 server (SeaweedFS, started by the
//! test driver): keys of 1..=256 bytes recorded in the object's header and compared in full,
//! object names that are the fs store's block file names, segmented stores and loads, sync
//! and async, per-key lookups, and forced name collisions that never serve another key's
//! bytes.

mod obj_common;

use kvr::fs::{LoadItem, StoreItem, Stored};
use kvr::io::RawSegment;
use kvr::{ErrorKind, FsConfig, FsStore, Key, ObjStore};

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i * 7) as u8)).collect()
}

/// Keys as engines make them: vLLM's 32-byte hash + 4-byte group, SGLang's 64 hex
/// characters, an LMCache-like tuple, a Dynamo u64, the shortest and the longest.
fn engine_keys() -> Vec<Vec<u8>> {
    let mut vllm = vec![0x11u8; 32];
    vllm.extend_from_slice(&3u32.to_le_bytes());
    vec![
        vllm,
        b"5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e".to_vec(),
        b"llama-3-8b|4|2|0xdeadbeef|bf16".to_vec(),
        42u64.to_le_bytes().to_vec(),
        vec![7],
        vec![0xee; 256],
    ]
}

#[test]
fn whole_keys_round_trip_gathered_and_scattered_named_as_fs_blocks() {
    let ep = endpoint_or_skip!();
    let prefix = obj_common::unique_prefix("keys");
    let s = ObjStore::open(&obj_common::config(&ep, &prefix)).unwrap();
    let fsdir = tempfile::tempdir().unwrap();
    let fs = FsStore::open(&FsConfig::new(fsdir.path(), "ns")).unwrap();
    for (i, key) in engine_keys().iter().enumerate() {
        // 8 layers of 3000 bytes, stored gathered.
        let layers: Vec<Vec<u8>> = (0..8).map(|l| pattern((i * 8 + l) as u8, 3000)).collect();
        let segs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
        assert_eq!(s.store_segments(key, &segs, None).unwrap(), Stored::Written);
        assert_eq!(
            s.store_segments(key, &segs, None).unwrap(),
            Stored::AlreadyPresent
        );
        // The object name is the fs store's block file name under the namespace.
        let fs_path = fs.block_path_of(key);
        let rel = fs_path.strip_prefix(fsdir.path()).unwrap();
        assert_eq!(s.object_path_of(key), rel.to_str().unwrap());
        // The object is an fs block file of format 1 (16-byte key) or 2 (any other), with
        // the whole key in its header.
        let raw = obj_common::get_object(&ep, &prefix, &s.object_path_of(key)).unwrap();
        let h = kvr::fs::format::decode_header(&raw).unwrap();
        assert_eq!(h.key, *key);
        assert_eq!(h.version, if key.len() == 16 { 1 } else { 2 });
        // Loaded scattered over another split.
        let mut out = vec![0u8; 24_000];
        let (a, b) = out.split_at_mut(1);
        let (b, c) = b.split_at_mut(12_345);
        assert_eq!(s.load_segments(key, &mut [a, b, c]).unwrap(), 24_000);
        assert_eq!(out, layers.concat());
        // Another total: intact, a layout mismatch.
        let mut short = vec![0u8; 23_999];
        let e = s.load_segments(key, &mut [&mut short]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LayoutMismatch, "{e}");
    }
    // A key differing in one byte is another block.
    let mut other = engine_keys()[1].clone();
    *other.last_mut().unwrap() ^= 1;
    let mut out = vec![0u8; 24_000];
    let e = s.load_segments(&other, &mut [&mut out]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // A 16-byte whole key is the object of that `Key`: the name it always had.
    let k16 = Key([0x5a; 16]);
    s.store(&k16, &pattern(1, 500)).unwrap();
    assert_eq!(s.object_path_of(&k16.0), s.object_path(&k16));
    assert_eq!(s.object_path(&k16), format!("ns/5a/{}.kvb", k16.to_hex()));
    let mut back = vec![0u8; 500];
    s.load_segments(&k16.0, &mut [&mut back]).unwrap();
    assert_eq!(back, pattern(1, 500));
    s.remove_key(&k16.0).unwrap();
    assert!(!s.contains(&k16).unwrap());
    // Bad keys and segment lists are refused before any request.
    let before = s.stats();
    for bad in [&[][..], &[1u8; 257][..]] {
        let e = s.store_segments(bad, &[b"x"], None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let e = s.load_segments(bad, &mut [&mut [0u8; 1]]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            s.remove_key(bad).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
    let e = s.store_segments(b"k", &[b"x", b""], None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let e = s.store_segments(b"k", &[], None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let e = s.load_segments(b"k", &mut []).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert_eq!(s.stats(), before);
    let st = s.stats();
    assert_eq!((st.stores, st.dedup_hits, st.corrupt), (7, 6, 0));
}

#[test]
fn lookups_answer_per_key() {
    let ep = endpoint_or_skip!();
    let prefix = obj_common::unique_prefix("lookup");
    let mut cfg = obj_common::config(&ep, &prefix);
    cfg.concurrency = 8;
    let s = ObjStore::open(&cfg).unwrap();
    let keys: Vec<Vec<u8>> = (0..40u32)
        .map(|i| format!("page-{i:04}-of-a-long-prompt").into_bytes())
        .collect();
    for k in keys.iter().step_by(3) {
        s.store_segments(k, &[b"kv"], None).unwrap();
    }
    let mut asked: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    asked.push(b"");
    asked.push(&[9; 300]);
    let mut present = vec![9u8; asked.len()];
    let hits = s.lookup(&asked, &mut present).unwrap();
    let want: Vec<u8> = (0..42).map(|i| (i < 40 && i % 3 == 0) as u8).collect();
    assert_eq!(present, want);
    assert_eq!(hits, 14);
    // Another handle (another host) sees the same: the server is the only index.
    let t = ObjStore::open(&cfg).unwrap();
    let mut again = vec![0u8; asked.len()];
    assert_eq!(t.lookup(&asked, &mut again).unwrap(), 14);
    assert_eq!(again, want);
    assert_eq!(s.lookup(&[], &mut []).unwrap(), 0);
    let e = s.lookup(&asked, &mut present[..3]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn segmented_item_batches_store_and_load() {
    let ep = endpoint_or_skip!();
    let prefix = obj_common::unique_prefix("items");
    let mut cfg = obj_common::config(&ep, &prefix);
    cfg.concurrency = 8;
    let s = ObjStore::open(&cfg).unwrap();
    let keys = engine_keys();
    // Each block: K and V of 5000 bytes (SGLang's page_first layout).
    let parts: Vec<[Vec<u8>; 2]> = (0..keys.len())
        .map(|i| [pattern(i as u8, 5000), pattern(i as u8 + 100, 5000)])
        .collect();
    let segs: Vec<[RawSegment; 2]> = parts
        .iter()
        .map(|[k, v]| {
            [
                RawSegment {
                    ptr: k.as_ptr().cast_mut(),
                    len: k.len(),
                },
                RawSegment {
                    ptr: v.as_ptr().cast_mut(),
                    len: v.len(),
                },
            ]
        })
        .collect();
    let items: Vec<StoreItem> = keys
        .iter()
        .zip(&segs)
        .map(|(k, s)| StoreItem {
            key: k,
            segments: s,
        })
        .collect();
    // SAFETY: `parts` outlives the job, waited for and dropped here.
    let job = unsafe { s.submit_store_items(&items) };
    let p = job.wait(Some(std::time::Duration::from_secs(60))).unwrap();
    assert_eq!((p.done, p.failed), (keys.len(), 0));
    assert!((0..keys.len()).all(|i| job.item(i).unwrap() == 10_000));
    drop(job);
    // Loaded into one buffer per block; plus an absent key and a bad segment list.
    let mut outs: Vec<Vec<u8>> = keys.iter().map(|_| vec![0u8; 10_000]).collect();
    let out_segs: Vec<[RawSegment; 1]> = outs
        .iter_mut()
        .map(|o| {
            [RawSegment {
                ptr: o.as_mut_ptr(),
                len: o.len(),
            }]
        })
        .collect();
    let mut loads: Vec<LoadItem> = keys
        .iter()
        .zip(&out_segs)
        .map(|(k, s)| LoadItem {
            key: k,
            segments: s,
        })
        .collect();
    loads.push(LoadItem {
        key: b"absent",
        segments: &out_segs[0],
    });
    let empty = [RawSegment {
        ptr: std::ptr::null_mut(),
        len: 0,
    }];
    loads.push(LoadItem {
        key: b"bad",
        segments: &empty,
    });
    // SAFETY: `outs` outlives the job and is not touched until it is dropped; the absent
    // and the bad item write nothing.
    let job = unsafe { s.submit_load_items(&loads) };
    let p = job.wait(None).unwrap();
    let n = keys.len();
    assert_eq!((p.done, p.failed), (n + 2, 2));
    assert_eq!(job.item(n).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        job.item(n + 1).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    drop(job);
    for (o, [k, v]) in outs.iter().zip(&parts) {
        assert_eq!(&o[..5000], &k[..]);
        assert_eq!(&o[5000..], &v[..]);
    }
}

/// Two different long keys forced to the same object name never load each other's bytes,
/// and the other key's intact object is no corruption. The name hook is process-wide; it
/// gives every other key its natural name, so the tests running alongside are unaffected.
#[test]
fn colliding_names_never_serve_another_keys_bytes() {
    fn same_name(ns: &[u8], key: &[u8]) -> Key {
        if key.starts_with(b"collide-") {
            Key([0xc0; 16])
        } else {
            kvr::key::natural_name(ns, key)
        }
    }
    let ep = endpoint_or_skip!();
    let prefix = obj_common::unique_prefix("collide");
    let s = ObjStore::open(&obj_common::config(&ep, &prefix)).unwrap();
    let (a, b) = (
        b"collide-aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        b"collide-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    );
    kvr::key::testing::set_name_hook(Some(same_name));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_eq!(s.object_path_of(a), s.object_path_of(b));
        assert_eq!(
            s.store_segments(a, &[b"bytes of a"], None).unwrap(),
            Stored::Written
        );
        // The name is taken: b is not stored (a miss later), a's bytes stay a's.
        assert_eq!(
            s.store_segments(b, &[b"bytes of b"], None).unwrap(),
            Stored::AlreadyPresent
        );
        let mut out = [0u8; 10];
        let e = s.load_segments(b, &mut [&mut out]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("name collision"), "{e}");
        s.load_segments(a, &mut [&mut out]).unwrap();
        assert_eq!(&out, b"bytes of a");
        let st = s.stats();
        assert_eq!((st.corrupt, st.hits, st.misses), (0, 1, 1));
        // `kvr obj verify` finds nothing wrong: the object is a's, under a's name.
        let bucket =
            kvr::obj::maintenance::Bucket::open(&obj_common::config(&ep, &prefix)).unwrap();
        let r = bucket.verify(None, false).unwrap();
        assert_eq!((r.checked, r.bad.len()), (1, 0));
    }));
    kvr::key::testing::set_name_hook(None);
    result.unwrap();
}

#[test]
fn inspect_and_verify_show_whole_keys() {
    let ep = endpoint_or_skip!();
    let prefix = obj_common::unique_prefix("inspect");
    let cfg = obj_common::config(&ep, &prefix);
    let s = ObjStore::open(&cfg).unwrap();
    let keys = engine_keys();
    for k in &keys {
        s.store_segments(k, &[&pattern(3, 100)], None).unwrap();
    }
    let bucket = kvr::obj::maintenance::Bucket::open(&cfg).unwrap();
    let listed = bucket.headers(Some("ns")).unwrap();
    assert_eq!(listed.len(), keys.len());
    let mut found: Vec<Vec<u8>> = listed
        .iter()
        .map(|(b, h)| {
            let h = h.as_ref().unwrap();
            assert_eq!(b.name, kvr::key::block_name(b"ns", &h.key));
            assert_eq!(h.payload_len, 100);
            h.key.clone()
        })
        .collect();
    found.sort();
    let mut want = keys.clone();
    want.sort();
    assert_eq!(found, want);
    // A damaged v2 object: verify names its whole key.
    let name = s.object_path_of(&keys[2]);
    let mut raw = obj_common::get_object(&ep, &prefix, &name).unwrap();
    *raw.last_mut().unwrap() ^= 1;
    obj_common::put_object(&ep, &prefix, &name, &raw);
    let r = bucket.verify(Some("ns"), false).unwrap();
    assert_eq!((r.checked, r.bad.len()), (keys.len() as u64, 1));
    assert_eq!(r.bad[0].key.as_deref(), Some(&keys[2][..]));
    assert!(r.bad[0].reason.contains("checksum"), "{}", r.bad[0].reason);
}
