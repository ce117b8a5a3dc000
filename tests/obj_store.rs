//! The object tier against a real S3 server (SeaweedFS, started by the test driver): store,
//! publish-once dedup, verified loads, bad objects, batches, prefix lookup, removal.

mod obj_common;

use kvr::fs::format::TensorSpec;
use kvr::fs::{LoadRequest, StoreRequest, Stored};
use kvr::{Dtype, ErrorKind, Key, ObjStore};

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn store_load_dedup_contains_remove() {
    let ep = endpoint_or_skip!();
    let prefix = obj_common::unique_prefix("basic");
    let s = ObjStore::open(&obj_common::config(&ep, &prefix)).unwrap();
    let k = Key([7; 16]);
    let data = payload(65536, 1);
    assert!(!s.contains(&k).unwrap());
    assert_eq!(s.store(&k, &data).unwrap(), Stored::Written);
    assert_eq!(
        s.store(&k, &payload(65536, 2)).unwrap(),
        Stored::AlreadyPresent
    );
    let mut out = vec![0u8; data.len()];
    assert_eq!(s.load(&k, &mut out).unwrap(), 65536);
    assert_eq!(
        out, data,
        "the first writer's bytes, not the deduplicated second's"
    );
    assert!(s.contains(&k).unwrap());
    // The object is exactly an fs block file, where the layout says.
    let name = s.object_path(&k);
    assert_eq!(name, format!("ns/07/{}.kvb", k.to_hex()));
    let raw = obj_common::get_object(&ep, &prefix, &name).unwrap();
    let h = kvr::fs::maintenance::check_block_bytes(&raw, "ns", &k).unwrap();
    assert_eq!((h.data_offset, h.payload_len), (4096, 65536));
    // Another length: intact, so a layout mismatch, not a miss.
    let mut short = vec![0u8; 100];
    assert_eq!(
        s.load(&k, &mut short).unwrap_err().kind(),
        ErrorKind::LayoutMismatch
    );
    let missing = Key([8; 16]);
    let e = s.load(&missing, &mut out).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(s.lookup_prefix(&[k, missing, k]).unwrap(), 1);
    assert_eq!(s.lookup_prefix(&[]).unwrap(), 0);
    s.remove(&k).unwrap();
    assert_eq!(s.remove(&k).unwrap_err().kind(), ErrorKind::NotFound);
    assert!(!s.contains(&k).unwrap());
    let st = s.stats();
    assert_eq!((st.stores, st.dedup_hits, st.hits, st.misses), (1, 1, 1, 1));
    assert_eq!(
        (st.bytes_written, st.bytes_read, st.removes),
        (65536, 65536, 1)
    );
    assert_eq!((st.corrupt, st.unavailable), (0, 0));
}

#[test]
fn tensors_keep_dtype_and_shape_and_big_headers_load() {
    let ep = endpoint_or_skip!();
    let prefix = obj_common::unique_prefix("tensor");
    let s = ObjStore::open(&obj_common::config(&ep, &prefix)).unwrap();
    let k = Key([9; 16]);
    let data = payload(2 * 8 * 128 * 2, 3);
    let spec = TensorSpec {
        dtype: Dtype::BF16,
        shape: vec![2, 8, 128],
    };
    assert_eq!(s.store_tensor(&k, &data, &spec).unwrap(), Stored::Written);
    let raw = obj_common::get_object(&ep, &prefix, &s.object_path(&k)).unwrap();
    let h = kvr::fs::format::decode_header(&raw).unwrap();
    assert_eq!(h.tensor, spec);
    let mut out = vec![0u8; data.len()];
    s.load(&k, &mut out).unwrap();
    assert_eq!(out, data);
    // A header longer than the one page the first request fetches: a second request.
    let k2 = Key([10; 16]);
    let long = TensorSpec {
        dtype: Dtype::U8,
        shape: [vec![1u64; 2000], vec![1000]].concat(),
    };
    let data = payload(1000, 4);
    s.store_tensor(&k2, &data, &long).unwrap();
    let mut out = vec![0u8; 1000];
    s.load(&k2, &mut out).unwrap();
    assert_eq!(out, data);
    // A tensor that does not match the payload is refused before any request.
    let bad = TensorSpec {
        dtype: Dtype::F32,
        shape: vec![3],
    };
    let e = s.store_tensor(&Key([11; 16]), &data, &bad).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn a_bad_object_is_a_counted_miss_and_is_kept() {
    let ep = endpoint_or_skip!();
    let prefix = obj_common::unique_prefix("bad");
    let s = ObjStore::open(&obj_common::config(&ep, &prefix)).unwrap();
    let data = payload(10_000, 5);
    let mut out = vec![0u8; data.len()];
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let damages: Vec<(Key, Damage)> = vec![
        (Key([1; 16]), Box::new(|b| *b.last_mut().unwrap() ^= 0x10)),
        (Key([2; 16]), Box::new(|b| b.truncate(b.len() - 1))),
        (Key([3; 16]), Box::new(|b| b.truncate(100))),
        (Key([4; 16]), Box::new(|b| b[10] = b'X')),
    ];
    for (i, (k, damage)) in damages.iter().enumerate() {
        s.store(k, &data).unwrap();
        let name = s.object_path(k);
        let mut raw = obj_common::get_object(&ep, &prefix, &name).unwrap();
        damage(&mut raw);
        obj_common::put_object(&ep, &prefix, &name, &raw);
        let e = s.load(k, &mut out).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{i}: {e}");
        assert!(e.to_string().contains("verify --repair"), "{e}");
        assert!(
            s.contains(k).unwrap(),
            "a bad object stays until verify --repair"
        );
        assert_eq!(s.stats().corrupt, i as u64 + 1);
    }
    // Bytes after the block's end: loads read only what the header covers and check all
    // of it (`kvr obj verify` reports the object's size).
    let k = Key([5; 16]);
    s.store(&k, &data).unwrap();
    let name = s.object_path(&k);
    let mut raw = obj_common::get_object(&ep, &prefix, &name).unwrap();
    raw.extend_from_slice(b"tail");
    obj_common::put_object(&ep, &prefix, &name, &raw);
    s.load(&k, &mut out).unwrap();
    assert_eq!(out, data);
    // An object stored under another key's name.
    let (k, other) = (Key([6; 16]), Key([7; 16]));
    s.store(&other, &data).unwrap();
    let raw = obj_common::get_object(&ep, &prefix, &s.object_path(&other)).unwrap();
    obj_common::put_object(&ep, &prefix, &s.object_path(&k), &raw);
    let e = s.load(&k, &mut out).unwrap_err();
    assert!(e.to_string().contains("named for"), "{e}");
    let st = s.stats();
    assert_eq!((st.corrupt, st.misses, st.hits), (5, 5, 1));
}

#[test]
fn concurrent_stores_of_one_key_publish_once() {
    let ep = endpoint_or_skip!();
    let prefix = obj_common::unique_prefix("race");
    let stores: Vec<ObjStore> = (0..4)
        .map(|_| ObjStore::open(&obj_common::config(&ep, &prefix)).unwrap())
        .collect();
    for round in 0..10u8 {
        let k = Key([round; 16]);
        let written: usize = std::thread::scope(|sc| {
            let hs: Vec<_> = stores
                .iter()
                .enumerate()
                .map(|(i, s)| sc.spawn(move || s.store(&k, &payload(4096, i as u8)).unwrap()))
                .collect();
            hs.into_iter()
                .map(|h| (h.join().unwrap() == Stored::Written) as usize)
                .sum()
        });
        assert_eq!(written, 1, "round {round}: exactly one writer publishes");
        let mut out = vec![0u8; 4096];
        stores[0].load(&k, &mut out).unwrap();
        assert!((0..4).any(|i| out == payload(4096, i)));
    }
    let dedup: u64 = stores.iter().map(|s| s.stats().dedup_hits).sum();
    assert_eq!(dedup, 30);
}

#[test]
fn async_batches_store_and_load() {
    let ep = endpoint_or_skip!();
    let prefix = obj_common::unique_prefix("batch");
    let mut cfg = obj_common::config(&ep, &prefix);
    cfg.concurrency = 8;
    let s = ObjStore::open(&cfg).unwrap();
    let blocks: Vec<Vec<u8>> = (0..40).map(|i| payload(65536 + i * 7, i as u8)).collect();
    let keys: Vec<Key> = (0..40).map(|i| Key([i as u8 + 100; 16])).collect();
    let stores: Vec<StoreRequest> = keys
        .iter()
        .zip(&blocks)
        .map(|(k, b)| StoreRequest {
            key: *k,
            src: b.as_ptr(),
            len: b.len(),
        })
        .collect();
    // SAFETY: `blocks` outlives the job (waited for and dropped below).
    let job = unsafe { s.submit_store(&stores) };
    let p = job.wait(Some(std::time::Duration::from_secs(60))).unwrap();
    assert_eq!((p.total, p.done, p.failed), (40, 40, 0));
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(job.item(i).unwrap(), b.len() as u64);
    }
    drop(job);
    // Again: every item deduplicated (0 bytes).
    // SAFETY: as above.
    let job = unsafe { s.submit_store(&stores) };
    job.wait(None).unwrap();
    assert!((0..40).all(|i| job.item(i).unwrap() == 0));
    drop(job);
    let mut outs: Vec<Vec<u8>> = blocks.iter().map(|b| vec![0u8; b.len()]).collect();
    let mut loads: Vec<LoadRequest> = keys
        .iter()
        .zip(outs.iter_mut())
        .map(|(k, o)| LoadRequest {
            key: *k,
            dst: o.as_mut_ptr(),
            len: o.len(),
        })
        .collect();
    loads.push(LoadRequest {
        key: Key([1; 16]),
        dst: outs[0].as_mut_ptr(),
        len: 0,
    });
    // SAFETY: `outs` outlives the job and is not touched until it is dropped; the last item
    // is empty and never written.
    let job = unsafe { s.submit_load(&loads) };
    let p = job.wait(None).unwrap();
    assert_eq!((p.done, p.failed), (41, 1));
    assert_eq!(job.item(40).unwrap_err().kind(), ErrorKind::InvalidArgument);
    drop(job);
    assert_eq!(outs, blocks);
    assert_eq!(s.lookup_prefix(&keys).unwrap(), 40);
    let st = s.stats();
    assert_eq!((st.stores, st.dedup_hits, st.hits), (40, 40, 40));
}
