//! `kvr fs inspect` shows a namespace's manifest (NAMESPACE.json).

mod common;

use common::{json, kvr, text};
use kvr::{FsConfig, FsStore, Key, Namespace};

#[test]
fn inspect_shows_the_namespace_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let mut ns = Namespace::new("org/model-7B");
    ns.kv_dtype = "fp8_e4m3".into();
    ns.tp_size = 2;
    ns.tp_rank = 1;
    ns.tenant_salt = b"secret-salt".to_vec();
    let name = ns.name().unwrap();
    let mut cfg = FsConfig::for_namespace(dir.path(), &ns).unwrap();
    cfg.direct_io = kvr::io::DirectIo::Off;
    let store = FsStore::open(&cfg).unwrap();
    store.store(&Key([1; 16]), b"block").unwrap();
    drop(store);

    let d = dir.path().to_str().unwrap();
    let o = kvr(&["fs", "inspect", d, "--json"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let v = json(&o);
    let m = &v["stores"][0]["manifest"];
    assert_eq!(m["name"], name.as_str(), "{v}");
    assert_eq!(m["kv_dtype"], "fp8_e4m3");
    assert_eq!(m["tp_rank"], 1);
    assert_eq!(m["tenant_salt_sha256"], ns.salt_digest().unwrap().as_str());

    let o = kvr(&["fs", "inspect", d]);
    let (out, _) = text(&o);
    assert!(
        out.contains(&format!("namespace {name} (NAMESPACE.json):")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("model_id") && l.ends_with("org/model-7B")),
        "{out}"
    );
    assert!(
        !out.contains("secret-salt"),
        "the salt is never shown: {out}"
    );
}
