//! Tensor files at s3:// URLs when the server goes away, on a private SeaweedFS server
//! started, stopped and frozen by these tests through `scripts/seaweedfs.sh` (they skip with
//! a message when there is no test server, i.e. no `KVR_S3_TEST_ENDPOINT`): a write whose
//! server stops midway fails with `Unavailable` and leaves no object; reads of an open file
//! fail within the timeout while the server is down or frozen and work again once it is back.

mod obj_common;

use std::time::{Duration, Instant};

use kvr::tensors::{Dtype, TensorFile, TensorIn, WriteOptions};
use kvr::{ErrorKind, ObjConfig};

use obj_common::server::PrivateServer;
use obj_common::{get_object, http, BUCKET};

fn config(endpoint: &str) -> ObjConfig {
    let mut c = ObjConfig::new("", "");
    c.endpoint = Some(endpoint.to_string());
    c.connect_timeout = Duration::from_secs(1);
    c.request_timeout = Duration::from_secs(4);
    c
}

/// The server stops while a 256 MiB file is being uploaded (its multipart upload is under
/// way): the write fails with Unavailable within its timeouts, and once the server is back
/// no object of that name exists.
#[test]
fn a_write_cut_off_midway_leaves_no_object() {
    if obj_common::endpoint().is_none() {
        return;
    }
    let server = PrivateServer::start(&[]);
    let endpoint = server.endpoint();
    let c = config(&endpoint);
    let key = "cut/off.safetensors";
    let url = format!("s3://{BUCKET}/{key}");
    let data: Vec<u8> = (0..256usize << 20).map(|i| (i >> 12) as u8).collect();
    let shape = [data.len() as u64];
    let writer = {
        let (c, url) = (c.clone(), url.clone());
        std::thread::spawn(move || {
            let t = [TensorIn::contiguous("big", Dtype::U8, &shape, &data)];
            let started = Instant::now();
            let r = kvr::tensors::write_to(&url, Some(&c), &t, &[], WriteOptions::default());
            (r, started.elapsed())
        })
    };
    // Wait until the server lists the upload in progress (ListMultipartUploads): the
    // write is streaming parts, nothing visible yet.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http(&endpoint, "GET", &format!("/{BUCKET}?uploads"), b"");
        let body = String::from_utf8_lossy(&body);
        if status == 200 && body.contains(key) {
            break;
        }
        assert!(
            !writer.is_finished(),
            "the write ended before it could be cut off"
        );
        assert!(
            Instant::now() < deadline,
            "no multipart upload seen: {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(get_object(&endpoint, "cut", "off.safetensors").is_none());
    server.run("down");
    let (r, took) = writer.join().unwrap();
    let e = r.expect_err("the server stopped midway");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains(&endpoint), "{e}");
    assert!(took < Duration::from_secs(60), "bounded: {took:?}");
    server.run("up");
    assert!(
        get_object(&endpoint, "cut", "off.safetensors").is_none(),
        "a cut-off write must leave no object"
    );
}

/// An open remote file while its server is down or frozen: reads fail with Unavailable
/// within the timeout (never a hang) and the same handle reads again once it is back.
#[test]
fn reads_fail_within_the_timeout_and_recover() {
    if obj_common::endpoint().is_none() {
        return;
    }
    let server = PrivateServer::start(&[]);
    let endpoint = server.endpoint();
    let c = config(&endpoint);
    let url = format!("s3://{BUCKET}/recover.safetensors");
    let data: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
    let t = [TensorIn::contiguous("x", Dtype::U8, &[1 << 20], &data)];
    kvr::tensors::write_to(&url, Some(&c), &t, &[], WriteOptions::default()).unwrap();
    let f = TensorFile::open_location(&url, Some(&c)).unwrap();
    let mut dst = vec![0u8; data.len()];
    for (stop, start) in [("down", "up"), ("pause", "resume")] {
        server.run(stop);
        let started = Instant::now();
        let e = f.read_into(None, &mut dst).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{stop}: {e}");
        assert!(e.to_string().contains(&endpoint), "{e}");
        let e = TensorFile::open_location(&url, Some(&c)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{stop}: {e}");
        // Two requests, each bounded by the 4 s request timeout (plus one quick retry).
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{stop}: {:?}",
            started.elapsed()
        );
        server.run(start);
        dst.fill(0);
        f.read_into(None, &mut dst).unwrap();
        assert!(dst == data, "after {start}");
    }
}
