//! Namespaces in the tiers: the fs store's manifest and the slot file's identity.

use kvr::io::DirectIo;
use kvr::{DiskConfig, ErrorKind, FsConfig, FsStore, Namespace, SlotFile};

fn ns(tp_rank: u32) -> Namespace {
    let mut n = Namespace::new("org/model");
    n.kv_dtype = "bf16".into();
    n.tp_size = 2;
    n.tp_rank = tp_rank;
    n
}

#[test]
fn fs_store_writes_the_manifest_once_and_refuses_a_foreign_name() {
    let d = tempfile::tempdir().unwrap();
    let mut c = FsConfig::for_namespace(d.path(), &ns(0)).unwrap();
    c.direct_io = DirectIo::Off;
    let s = FsStore::open(&c).unwrap();
    let path = kvr::namespace::manifest_path(d.path(), &c.namespace);
    let first = std::fs::read(&path).unwrap();
    drop(s);
    FsStore::open(&c).unwrap(); // reopen: kept as it is
    assert_eq!(std::fs::read(&path).unwrap(), first);
    // A config whose name is not its fields' name.
    let mut bad = c.clone();
    bad.manifest = Some(ns(1));
    assert_eq!(
        FsStore::open(&bad).err().map(|e| e.kind()),
        Some(ErrorKind::InvalidArgument)
    );
    // Concurrent openers in other processes: see the unit test of write_manifest; here two
    // stores of the same namespace with ranks share one manifest.
    let mut ranked = c.clone();
    ranked.rank = Some(1);
    FsStore::open(&ranked).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), first);
}

#[test]
fn slot_file_identity_is_recorded_and_checked() {
    let d = tempfile::tempdir().unwrap();
    let cfg = |identity: Option<String>| {
        let mut c = DiskConfig::new(d.path().join("slots"), 4096, 4);
        c.direct_io = DirectIo::Off;
        c.namespace = identity;
        c
    };
    let a = Some(ns(0).name().unwrap());
    let b = Some(ns(1).name().unwrap());
    let f = SlotFile::open(&cfg(a.clone())).unwrap();
    f.write(&kvr::Key([1; 16]), b"payload", b"").unwrap();
    drop(f);
    for other in [b, None] {
        let e = SlotFile::open(&cfg(other)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LayoutMismatch, "{e}");
    }
    let f = SlotFile::open(&cfg(a)).unwrap();
    let mut out = [0u8; 7];
    f.read(&kvr::Key([1; 16]), &mut out, &mut []).unwrap();
    assert_eq!(&out, b"payload");
    drop(f);
    // A file created without an identity opens only without one.
    let mut plain = cfg(None);
    plain.path = d.path().join("plain");
    drop(SlotFile::open(&plain).unwrap());
    let mut asks = plain.clone();
    asks.namespace = Some("x".into());
    assert_eq!(
        SlotFile::open(&asks).unwrap_err().kind(),
        ErrorKind::LayoutMismatch
    );
    SlotFile::open(&plain).unwrap();
    // Bad identities.
    for bad in [String::new(), "x".repeat(1025)] {
        let mut c = cfg(Some(bad));
        c.path = d.path().join("never");
        assert_eq!(
            SlotFile::open(&c).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert!(!c.path.exists());
    }
}
