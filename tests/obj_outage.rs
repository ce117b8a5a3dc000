//! The object tier when its server is down, frozen or refusing, on private SeaweedFS servers
//! started (and stopped, restarted, frozen) by these tests through `scripts/seaweedfs.sh`:
//! every call ends within its timeout with `Unavailable` naming the endpoint and the error,
//! and the same handle works again once the server is back; a server that refuses the
//! credentials answers `Permission` at open.

mod obj_common;

use std::time::{Duration, Instant};

use kvr::fs::LoadRequest;
use kvr::obj::Credentials;
use kvr::{ErrorKind, Key, ObjStore};

use obj_common::server::PrivateServer;

/// Runs `f`, checks it failed with `Unavailable` naming the endpoint, within `bound`.
fn unavailable<T: std::fmt::Debug>(
    endpoint: &str,
    bound: Duration,
    what: &str,
    f: impl FnOnce() -> kvr::Result<T>,
) -> String {
    let t = Instant::now();
    let e = f().expect_err(what);
    let took = t.elapsed();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{what}: {e}");
    let text = e.to_string();
    assert!(text.contains(endpoint), "{what}: {text}");
    assert!(
        took < bound,
        "{what} took {took:?} (bound {bound:?}): {text}"
    );
    text
}

#[test]
fn down_slow_and_back_again() {
    let _ = endpoint_or_skip!();
    let server = PrivateServer::start(&[]);
    let ep = server.endpoint();
    let mut cfg = obj_common::config(&ep, "outage");
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.request_timeout = Duration::from_secs(2);
    let s = ObjStore::open(&cfg).unwrap();
    let (k1, k2, k3) = (Key([1; 16]), Key([2; 16]), Key([3; 16]));
    let data = vec![0x5a; 65536];
    let mut out = vec![0u8; data.len()];
    s.store(&k1, &data).unwrap();

    // Down: connections are refused; every call fails at once, naming the OS error.
    server.run("down");
    let bound = Duration::from_secs(5);
    let text = unavailable(&ep, bound, "load while down", || s.load(&k1, &mut out));
    assert!(
        text.to_lowercase().contains("connect") || text.contains("refused"),
        "{text}"
    );
    unavailable(&ep, bound, "store while down", || s.store(&k2, &data));
    unavailable(&ep, bound, "contains while down", || s.contains(&k1));
    unavailable(&ep, bound, "prefix lookup while down", || {
        s.lookup_prefix(&[k1, k2])
    });
    let e = ObjStore::open(&cfg).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(s.stats().unavailable >= 4);

    // Restarted on the same data and port: the same handle works again.
    server.run("up");
    s.load(&k1, &mut out).unwrap();
    assert_eq!(out, data);
    s.store(&k2, &data).unwrap();

    // Frozen (SIGSTOP): the kernel accepts connections, nothing answers. Bounded by the
    // request timeout, plain calls and batches alike.
    server.run("pause");
    let bound = Duration::from_secs(8);
    let text = unavailable(&ep, bound, "load while frozen", || s.load(&k1, &mut out));
    assert!(text.contains("time") || text.contains("answer"), "{text}");
    unavailable(&ep, bound, "store while frozen", || s.store(&k3, &data));
    let mut outs = vec![vec![0u8; data.len()]; 4];
    let items: Vec<LoadRequest> = outs
        .iter_mut()
        .map(|o| LoadRequest {
            key: k1,
            dst: o.as_mut_ptr(),
            len: o.len(),
        })
        .collect();
    let t = Instant::now();
    // SAFETY: `outs` outlives the job, which is waited for and dropped before it is read.
    let job = unsafe { s.submit_load(&items) };
    let p = job.wait(Some(Duration::from_secs(20))).unwrap();
    assert!(t.elapsed() < bound, "batch took {:?}", t.elapsed());
    assert_eq!(p.failed, 4);
    assert_eq!(job.item(0).unwrap_err().kind(), ErrorKind::Unavailable);
    drop(job);
    server.run("resume");
    s.load(&k1, &mut out).unwrap();
    s.store(&k3, &data).unwrap();
    s.load(&k3, &mut out).unwrap();
    assert_eq!(out, data);
}

#[test]
fn a_server_refusing_the_credentials_is_a_permission_error_at_open() {
    let _ = endpoint_or_skip!();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        r#"{"identities":[{"name":"kvr","credentials":[{"accessKey":"kvrtestkey",
            "secretKey":"kvrtestsecret"}],"actions":["Admin","Read","Write","List"]}]}"#,
    )
    .unwrap();
    let server = PrivateServer::start(&[("KVR_SEAWEEDFS_S3_CONFIG", config.path().as_os_str())]);
    let ep = server.endpoint();
    let with = |id: Option<(&str, &str)>| {
        let mut c = obj_common::config(&ep, "refusing");
        c.credentials = id.map(|(id, secret)| Credentials {
            access_key_id: id.into(),
            secret_access_key: secret.into(),
            session_token: None,
        });
        c
    };
    for (what, id) in [
        ("unsigned", None),
        ("wrong secret", Some(("kvrtestkey", "wrong"))),
        ("unknown key", Some(("nobody", "kvrtestsecret"))),
    ] {
        let t = Instant::now();
        let e = ObjStore::open(&with(id)).err().expect(what);
        assert_eq!(e.kind(), ErrorKind::Permission, "{what}: {e}");
        assert!(e.to_string().contains(&ep), "{what}: {e}");
        assert!(t.elapsed() < Duration::from_secs(5), "{what}");
    }
    // Signed with the right key (AWS SigV4): works. The server's volumes may need a moment
    // after it first answers.
    let s = ObjStore::open(&with(Some(("kvrtestkey", "kvrtestsecret")))).unwrap();
    let data = vec![3u8; 10_000];
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = s.store(&Key([1; 16]), &data) {
        assert!(Instant::now() < deadline, "signed store: {e}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut out = vec![0u8; data.len()];
    s.load(&Key([1; 16]), &mut out).unwrap();
    assert_eq!(out, data);
}
