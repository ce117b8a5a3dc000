//! Helpers of the object tier's tests: the S3 test server's endpoint (set by the test driver,
//! `scripts/run-tests.sh`, from `scripts/seaweedfs.sh start`), unique URLs, a plain HTTP
//! client to read and damage objects behind kvr's back (SeaweedFS without identities takes
//! unsigned requests), and private servers ([`server`]).

// Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

pub mod server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kvr::ObjConfig;

/// The variable naming the test server's endpoint (`http://127.0.0.1:<port>`).
pub const ENDPOINT_VAR: &str = "KVR_S3_TEST_ENDPOINT";
/// The bucket `scripts/seaweedfs.sh` creates.
pub const BUCKET: &str = "kvr-test";

/// The test server's endpoint, or `None` after printing why the test is skipped.
pub fn endpoint() -> Option<String> {
    match std::env::var(ENDPOINT_VAR) {
        Ok(e) if !e.is_empty() => {
            assert!(
                e.starts_with("http://127.0.0.1:"),
                "{ENDPOINT_VAR}={e}: the tests talk to 127.0.0.1 only"
            );
            Some(e)
        }
        _ => {
            println!("skipped: no S3 test server (run scripts/seaweedfs.sh)");
            None
        }
    }
}

/// The endpoint, or returns from the test (which passes) after saying it is skipped.
#[macro_export]
macro_rules! endpoint_or_skip {
    () => {
        match obj_common::endpoint() {
            Some(e) => e,
            None => return,
        }
    };
}

/// A prefix no other test (or run) uses: `<name>-<pid>-<nanos>-<n>`.
pub fn unique_prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{name}-{}-{nanos}-{n}", std::process::id())
}

/// A config for `s3://kvr-test/<prefix>` on the test server, namespace `ns`, short timeouts.
pub fn config(endpoint: &str, prefix: &str) -> ObjConfig {
    let mut c = ObjConfig::new(format!("s3://{BUCKET}/{prefix}"), "ns");
    c.endpoint = Some(endpoint.to_string());
    c.region = Some("us-east-1".into());
    c.request_timeout = Duration::from_secs(10);
    c
}

/// One plain HTTP/1.1 request (`Connection: close`): the status and the body.
pub fn http(endpoint: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let host = endpoint.strip_prefix("http://").unwrap();
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&resp[..end]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = resp[end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

/// The object at `<prefix>/<name>` as the server holds it (`None` if absent).
pub fn get_object(endpoint: &str, prefix: &str, name: &str) -> Option<Vec<u8>> {
    let (status, body) = http(endpoint, "GET", &format!("/{BUCKET}/{prefix}/{name}"), b"");
    match status {
        200 => Some(body),
        404 => None,
        s => panic!("GET {name}: HTTP {s}"),
    }
}

/// Overwrites (unconditionally) the object at `<prefix>/<name>`, as a faulty writer would.
pub fn put_object(endpoint: &str, prefix: &str, name: &str, body: &[u8]) {
    let (status, _) = http(endpoint, "PUT", &format!("/{BUCKET}/{prefix}/{name}"), body);
    assert_eq!(status, 200, "PUT {name}");
}
