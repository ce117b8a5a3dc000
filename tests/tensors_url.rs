//! Tensor files at URLs: `file://` (exactly the local path, mapped) and `s3://bucket/key` on
//! the SeaweedFS test server (`scripts/seaweedfs.sh`, endpoint from `KVR_S3_TEST_ENDPOINT`;
//! the tests skip with a message without it): round trips, the object's bytes equal to the
//! local file's, opens that fetch the header only, reads that fetch one tensor's range, the
//! `get` contract, hostile headers rejected as locally, and the bad inputs.

mod obj_common;

use std::time::{Duration, Instant};

use kvr::tensors::{Dtype, FetchStats, TensorFile, TensorIn, WriteOptions};
use kvr::{ErrorKind, ObjConfig};

use obj_common::{get_object, put_object, unique_prefix, BUCKET};

fn cfg(endpoint: &str) -> ObjConfig {
    obj_common::config(endpoint, "unused")
}

fn url(prefix: &str, name: &str) -> String {
    format!("s3://{BUCKET}/{prefix}/{name}")
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn stats(f: &TensorFile) -> FetchStats {
    f.fetched().expect("a remote file counts its requests")
}

/// Small tensors, a transposed one, metadata: the object is byte for byte the local file,
/// and every tensor reads back through read_into, read_into_direct and get.
#[test]
fn s3_round_trip_matches_the_local_file() {
    let endpoint = endpoint_or_skip!();
    let prefix = unique_prefix("tensors-url");
    let c = cfg(&endpoint);
    let a = pattern(4 * 6 * 4, 1); // F32 [4, 6]
    let b = pattern(3 * 5 * 2, 2); // BF16 [3, 5] stored, written as its transpose [5, 3]
    let (sa, sb) = ([4u64, 6], [5u64, 3]);
    let strides = [1i64, 5];
    let tensors = [
        TensorIn::contiguous("a", Dtype::F32, &sa, &a),
        TensorIn {
            name: "b_t",
            dtype: Dtype::BF16,
            shape: &sb,
            strides: Some(&strides),
            data: &b,
            offset: 0,
        },
    ];
    let md = [("format", "pt"), ("who", "kvr")];
    for align in [false, true] {
        let opts = WriteOptions {
            align_4k: align,
            sync: false,
        };
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("w.safetensors");
        let len_local = kvr::tensors::write(&local, &tensors, &md, opts).unwrap();
        let name = format!("w{}.safetensors", align as u8);
        let u = url(&prefix, &name);
        let len = kvr::tensors::write_to(&u, Some(&c), &tensors, &md, opts).unwrap();
        assert_eq!(len, len_local);
        let object = get_object(&endpoint, &prefix, &name).expect("object written");
        assert!(
            object == std::fs::read(&local).unwrap(),
            "object != local file"
        );

        let f = TensorFile::open_location(&u, Some(&c)).unwrap();
        let l = TensorFile::open(&local).unwrap();
        assert!(f.is_remote() && !l.is_remote());
        assert_eq!(f.path().to_str(), Some(u.as_str()));
        assert_eq!((f.len(), f.file_len()), (l.len(), l.file_len()));
        assert_eq!(f.metadata(), l.metadata());
        assert_eq!(f.padding().len(), l.padding().len());
        for (rt, lt) in f.tensors().iter().zip(l.tensors()) {
            assert_eq!(
                (&rt.name, rt.dtype, &rt.shape, rt.offset, rt.len),
                (&lt.name, lt.dtype, &lt.shape, lt.offset, lt.len)
            );
            let want = l.get(Some(&lt.name)).unwrap().data.to_vec();
            let mut got = vec![0u8; want.len() + 3];
            assert_eq!(f.read_into(Some(&rt.name), &mut got).unwrap(), want.len());
            assert_eq!(&got[..want.len()], &want[..]);
            got.fill(0);
            let n = f.read_into_direct(Some(&rt.name), &mut got).unwrap();
            assert_eq!(&got[..n], &want[..]);
            assert_eq!(f.get(Some(&rt.name)).unwrap().data, &want[..]);
        }
        // Too small a buffer: TooSmall, and nothing is fetched.
        let before = stats(&f);
        let e = f.read_into(Some("a"), &mut [0u8; 3]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooSmall, "{e}");
        assert_eq!(stats(&f), before);
        let e = f.get(Some("nope")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("'a'"), "names the tensors: {e}");
    }
}

/// Opening fetches the header only (a HEAD, then at most the first 64 KiB); read_into of one
/// tensor fetches exactly its bytes (in 8 MiB ranged GETs); get fetches once into memory the
/// handle owns (4096-aligned, the same pointer every time); read_into_direct is read_into.
#[test]
fn s3_reads_fetch_only_what_is_asked() {
    let endpoint = endpoint_or_skip!();
    let prefix = unique_prefix("tensors-url-ranges");
    let c = cfg(&endpoint);
    let small = pattern(1000, 3);
    let big = pattern(20 << 20, 4); // 20 MiB: three ranged GETs
    let tail = pattern(4096, 5);
    let (s1, s2, s3) = ([1000u64], [20u64 << 20], [4096u64]);
    let tensors = [
        TensorIn::contiguous("small", Dtype::U8, &s1, &small),
        TensorIn::contiguous("big", Dtype::U8, &s2, &big),
        TensorIn::contiguous("tail", Dtype::U8, &s3, &tail),
    ];
    let u = url(&prefix, "ranges.safetensors");
    let opts = WriteOptions {
        align_4k: true,
        sync: false,
    };
    let file_len = kvr::tensors::write_to(&u, Some(&c), &tensors, &[], opts).unwrap();
    assert!(file_len > 20 << 20);

    let f = TensorFile::open_location(&u, Some(&c)).unwrap();
    let opened = stats(&f);
    assert_eq!(opened.requests, 1, "one ranged GET of the head: {opened:?}");
    assert_eq!(opened.bytes, 64 << 10, "the first 64 KiB only: {opened:?}");

    let mut dst = vec![0u8; 20 << 20];
    assert_eq!(f.read_into(Some("tail"), &mut dst).unwrap(), 4096);
    assert_eq!(&dst[..4096], &tail[..]);
    let after_tail = stats(&f);
    assert_eq!(after_tail.requests - opened.requests, 1);
    assert_eq!(
        after_tail.bytes - opened.bytes,
        4096,
        "exactly the tensor's range"
    );

    assert_eq!(f.read_into(Some("big"), &mut dst).unwrap(), big.len());
    assert!(dst == big);
    let after_big = stats(&f);
    assert_eq!(after_big.requests - after_tail.requests, 3, "8 MiB chunks");
    assert_eq!(after_big.bytes - after_tail.bytes, big.len() as u64);

    dst.fill(0);
    assert_eq!(f.read_into_direct(Some("small"), &mut dst).unwrap(), 1000);
    assert_eq!(&dst[..1000], &small[..]);
    let after_direct = stats(&f);
    assert_eq!(after_direct.bytes - after_big.bytes, 1000);

    // get: fetched on first use only, owned by the handle, aligned, stable.
    let first = f.get(Some("small")).unwrap();
    let after_get = stats(&f);
    assert_eq!(after_get.bytes - after_direct.bytes, 1000);
    assert_eq!(first.data, &small[..]);
    assert_eq!(first.data.as_ptr() as usize % 4096, 0);
    let again = f.get(Some("small")).unwrap();
    assert_eq!(again.data.as_ptr(), first.data.as_ptr());
    assert_eq!(stats(&f), after_get, "the second get fetches nothing");

    // Device copies need CUDA; without it they fail before fetching anything.
    if kvr::cuda::available().is_ok() {
        println!("CUDA present: the device path of remote files is checked by the C++ suite");
    } else {
        // SAFETY (test): the call fails before touching the (bogus) device pointer.
        let e = unsafe { f.read_into_device(Some("tail"), 1, 4096, 0) }.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CudaUnavailable, "{e}");
        assert_eq!(stats(&f), after_get);
    }
}

/// A header longer than the first read is fetched in a second ranged GET, and a large file
/// (a multipart upload of several parts) reads back whole.
#[test]
fn s3_long_headers_and_multipart_files() {
    let endpoint = endpoint_or_skip!();
    let prefix = unique_prefix("tensors-url-multi");
    let c = cfg(&endpoint);
    let names: Vec<String> = (0..3000).map(|i| format!("layer.{i}.weight")).collect();
    let datas: Vec<Vec<u8>> = (0..3000).map(|i| pattern(16, i as u8)).collect();
    let shape = [16u64];
    let many: Vec<TensorIn> = names
        .iter()
        .zip(&datas)
        .map(|(n, d)| TensorIn::contiguous(n, Dtype::U8, &shape, d))
        .collect();
    let u = url(&prefix, "many.safetensors");
    kvr::tensors::write_to(&u, Some(&c), &many, &[], WriteOptions::default()).unwrap();
    let f = TensorFile::open_location(&u, Some(&c)).unwrap();
    assert!(
        f.data_start() > 64 << 10,
        "header longer than the first read"
    );
    assert_eq!(stats(&f).requests, 2);
    assert_eq!(stats(&f).bytes, f.data_start(), "exactly the header");
    assert_eq!(f.len(), 3000);
    assert_eq!(
        f.get(Some("layer.2999.weight")).unwrap().data,
        &datas[2999][..]
    );

    // 40 MiB: five parts of 8 MiB, written through the background writer.
    let big = pattern(40 << 20, 9);
    let shape = [10u64 << 20];
    let t = [TensorIn::contiguous("big", Dtype::F32, &shape, &big)];
    let u = url(&prefix, "big.safetensors");
    kvr::tensors::write_to(&u, Some(&c), &t, &[], WriteOptions::default()).unwrap();
    let object = get_object(&endpoint, &prefix, "big.safetensors").unwrap();
    let f = TensorFile::open_location(&u, Some(&c)).unwrap();
    assert_eq!(object.len() as u64, f.file_len());
    let mut dst = vec![0u8; big.len()];
    f.read_into(None, &mut dst).unwrap();
    assert!(dst == big);
}

/// The hostile headers the local open rejects are rejected the same way (same kind, same
/// reason) on an object.
#[test]
fn s3_hostile_headers_are_rejected_as_locally() {
    let endpoint = endpoint_or_skip!();
    let prefix = unique_prefix("tensors-url-hostile");
    let c = cfg(&endpoint);
    let raw = |header: &str, data_len: usize| {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.resize(v.len() + data_len, 0);
        v
    };
    let good = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut past = raw(good, 8);
    past[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut truncated = raw(good, 8);
    truncated.pop();
    let cases: Vec<Vec<u8>> = vec![
        vec![1, 0, 0],
        truncated,
        raw(good, 9),
        past,
        raw(
            r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}}"#,
            12,
        ),
        raw(r#"{"a":{"dtype":"F32","shape":[2],"#, 8),
        raw(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,6]}}"#,
            6,
        ),
        raw(
            r#"{"a":{"dtype":"F64","shape":[4611686018427387904,8],"data_offsets":[0,8]}}"#,
            8,
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, bytes) in cases.iter().enumerate() {
        let name = format!("hostile{i}.safetensors");
        let local = dir.path().join(&name);
        std::fs::write(&local, bytes).unwrap();
        put_object(&endpoint, &prefix, &name, bytes);
        let le = TensorFile::open(&local).unwrap_err();
        let re = TensorFile::open_location(&url(&prefix, &name), Some(&c)).unwrap_err();
        assert_eq!(le.kind(), re.kind(), "case {i}: {le} / {re}");
        let reason = |e: &kvr::Error, loc: &str| {
            let text = e.to_string();
            let head = format!("opening tensor file {loc}: ");
            text.strip_prefix(&head)
                .unwrap_or_else(|| panic!("case {i}: {text}"))
                .to_string()
        };
        assert_eq!(
            reason(&le, &local.display().to_string()),
            reason(&re, &url(&prefix, &name)),
            "case {i}"
        );
    }
}

/// Bad locations and the failure statuses: missing object, missing bucket key, unknown
/// scheme, a server that is not there (Unavailable within the timeout).
#[test]
fn bad_locations_fail_with_clear_statuses() {
    let t = [TensorIn::contiguous("x", Dtype::U8, &[1], &[7])];
    let kind_of_open =
        |u: &str, c: Option<&ObjConfig>| TensorFile::open_location(u, c).unwrap_err().kind();
    assert_eq!(kind_of_open("gs://b/k", None), ErrorKind::Unsupported);
    assert_eq!(
        kind_of_open("s3://kvr-test", None),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind_of_open("s3://kvr-test/", None),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind_of_open("s3://Bad_Bucket/k", None),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind_of_open("file://host/x", None),
        ErrorKind::InvalidArgument
    );
    let e = kvr::tensors::write_to("gs://b/k", None, &t, &[], WriteOptions::default());
    assert_eq!(e.unwrap_err().kind(), ErrorKind::Unsupported);

    // Nothing listens on port 1: refused at once, Unavailable naming the endpoint.
    let mut down = ObjConfig::new("", "");
    down.endpoint = Some("http://127.0.0.1:1".into());
    down.connect_timeout = Duration::from_millis(500);
    down.request_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let e = TensorFile::open_location("s3://kvr-test/x.safetensors", Some(&down)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    let e = kvr::tensors::write_to(
        "s3://kvr-test/x.safetensors",
        Some(&down),
        &t,
        &[],
        WriteOptions::default(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded");

    let Some(endpoint) = obj_common::endpoint() else {
        return;
    };
    let c = cfg(&endpoint);
    let prefix = unique_prefix("tensors-url-missing");
    let e = TensorFile::open_location(&url(&prefix, "absent.safetensors"), Some(&c)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("absent.safetensors"), "{e}");
}

/// A write that fails leaves no object, and a failed overwrite leaves the old one intact.
#[test]
fn failed_writes_leave_no_object() {
    let endpoint = endpoint_or_skip!();
    let prefix = unique_prefix("tensors-url-failed");
    let c = cfg(&endpoint);
    let big = pattern(12 << 20, 1);
    let short = pattern(100, 2);
    let (s_big, s_bad) = ([12u64 << 20], [1000u64]);
    // The second tensor claims 1,000 bytes of a 100-byte buffer: refused before any upload.
    let bad = [
        TensorIn::contiguous("big", Dtype::U8, &s_big, &big),
        TensorIn::contiguous("bad", Dtype::U8, &s_bad, &short),
    ];
    let u = url(&prefix, "bad.safetensors");
    let e = kvr::tensors::write_to(&u, Some(&c), &bad, &[], WriteOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(get_object(&endpoint, &prefix, "bad.safetensors").is_none());

    // An existing object, then a failing overwrite: still the old bytes.
    let good = [TensorIn::contiguous("big", Dtype::U8, &s_big, &big)];
    kvr::tensors::write_to(&u, Some(&c), &good, &[], WriteOptions::default()).unwrap();
    let before = get_object(&endpoint, &prefix, "bad.safetensors").unwrap();
    kvr::tensors::write_to(&u, Some(&c), &bad, &[], WriteOptions::default()).unwrap_err();
    assert!(get_object(&endpoint, &prefix, "bad.safetensors").unwrap() == before);
}

/// file:// is the local path: same bytes, a mapped (zero-copy, not remote) open.
#[test]
fn file_urls_are_local_paths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f 1.safetensors");
    let u = url::Url::from_file_path(&path).unwrap().to_string();
    assert!(u.starts_with("file:///") && u.contains("%20"), "{u}");
    let data = pattern(8192, 3);
    let t = [TensorIn::contiguous("x", Dtype::U16, &[4096], &data)];
    let opts = WriteOptions {
        align_4k: true,
        sync: true,
    };
    kvr::tensors::write_to(&u, None, &t, &[("k", "v")], opts).unwrap();
    let direct = dir.path().join("direct.safetensors");
    kvr::tensors::write(&direct, &t, &[("k", "v")], opts).unwrap();
    assert!(std::fs::read(&path).unwrap() == std::fs::read(&direct).unwrap());
    let f = TensorFile::open_location(&u, None).unwrap();
    assert!(!f.is_remote() && f.fetched().is_none());
    assert_eq!(f.path(), path.as_path());
    let a = f.get(None).unwrap();
    let b = f.get(None).unwrap();
    assert_eq!(a.data.as_ptr(), b.data.as_ptr());
    assert_eq!(a.data, &data[..]);
    // The view is in the file's mapping: the tensor's offset is 4096-aligned, so is it.
    assert_eq!(a.data.as_ptr() as usize % 4096, 0);
}
