//! The object tier over https: a private SeaweedFS serving S3 over TLS too (started and
//! stopped by this test through `scripts/seaweedfs.sh`), with a self-signed certificate for
//! 127.0.0.1 made here with openssl. kvr trusts it only through its CA bundle setting
//! (`ObjConfig::ca_bundle`, or `AWS_CA_BUNDLE`): without it the handshake fails, a clear
//! `Unavailable`.

mod obj_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use kvr::fs::Stored;
use kvr::{ErrorKind, Key, ObjStore};

use obj_common::server::PrivateServer;

/// A self-signed certificate (and its key) for the IP address 127.0.0.1.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        // A server's certificate, not a CA's (openssl's default): TLS verifiers refuse a CA
        // certificate presented by a server.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (the https test makes its certificate with it)");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[test]
fn stores_and_loads_over_https_with_a_trusted_self_signed_certificate() {
    // The test bed's presence says SeaweedFS is installed; this test runs its own server.
    let _ = endpoint_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let server = PrivateServer::start(&[
        ("KVR_SEAWEEDFS_TLS_CERT", cert.as_os_str()),
        ("KVR_SEAWEEDFS_TLS_KEY", key.as_os_str()),
    ]);
    let https = server.https_endpoint();
    assert!(https.starts_with("https://127.0.0.1:"), "{https}");
    let prefix = obj_common::unique_prefix("tls");
    let mut cfg = obj_common::config(&https, &prefix);
    cfg.request_timeout = std::time::Duration::from_secs(10);

    // Not trusted: the handshake fails at open, a clear error naming the endpoint.
    let e = ObjStore::open(&cfg)
        .err()
        .expect("an untrusted certificate");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains(&https), "{e}");
    assert!(
        e.to_string().to_lowercase().contains("certificate"),
        "the message says why: {e}"
    );

    // Trusted through the config's CA bundle: store, dedup, load, whole keys, remove.
    cfg.ca_bundle = Some(cert.clone());
    let s = ObjStore::open(&cfg).unwrap();
    let k = Key([0x42; 16]);
    let data: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i * 13) as u8).collect();
    assert_eq!(s.store(&k, &data).unwrap(), Stored::Written);
    assert_eq!(s.store(&k, &data).unwrap(), Stored::AlreadyPresent);
    let mut out = vec![0u8; data.len()];
    assert_eq!(s.load(&k, &mut out).unwrap(), data.len() as u64);
    assert!(out == data);
    let long = b"a whole engine key, longer than sixteen bytes";
    s.store_segments(long, &[b"over ", b"tls"], None).unwrap();
    let mut back = [0u8; 8];
    s.load_segments(long, &mut [&mut back]).unwrap();
    assert_eq!(&back, b"over tls");
    let mut present = [0u8; 2];
    assert_eq!(s.lookup(&[long, b"absent"], &mut present).unwrap(), 1);
    s.remove_key(long).unwrap();
    assert_eq!(s.stats().unavailable, 0);
    drop(s);

    // Trusted through AWS_CA_BUNDLE, as the AWS SDKs read it (this file's only test, so
    // setting the process's environment disturbs no other).
    cfg.ca_bundle = None;
    std::env::set_var("AWS_CA_BUNDLE", &cert);
    let s = ObjStore::open(&cfg);
    std::env::remove_var("AWS_CA_BUNDLE");
    let s = s.unwrap();
    let mut out = vec![0u8; data.len()];
    s.load(&k, &mut out).unwrap();
    assert!(out == data);
}
