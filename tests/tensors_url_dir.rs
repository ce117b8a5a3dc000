//! The lazy tensor directory with an S3 parent (`s3://bucket/prefix`), on the SeaweedFS test
//! server (skipped with a message without one): items are objects under the directory's
//! prefix, references read them, a replaced item's object goes with its last reference,
//! `cleanup` deletes every object of the directory at once, and dropping the handle and the
//! references deletes them too. One test: it sets `AWS_ENDPOINT_URL` for the process.

mod obj_common;

use std::path::Path;

use kvr::tensors::{Adopt, Dtype, TensorDir, TensorIn, WriteOptions};
use kvr::ErrorKind;

use obj_common::{http, unique_prefix, BUCKET};

/// Keys of the objects under `prefix` (a plain ListObjects request).
fn objects_under(endpoint: &str, prefix: &str) -> Vec<String> {
    let (status, body) = http(
        endpoint,
        "GET",
        &format!("/{BUCKET}?list-type=2&prefix={prefix}"),
        b"",
    );
    assert_eq!(status, 200);
    let body = String::from_utf8(body).unwrap();
    body.split("<Key>")
        .skip(1)
        .map(|s| s.split("</Key>").next().unwrap().to_string())
        .collect()
}

#[test]
fn s3_directory_items_are_objects_with_the_same_lifetime() {
    let endpoint = endpoint_or_skip!();
    // The directory's calls take their settings from the environment, as a C caller's do.
    std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
    let prefix = unique_prefix("tensors-url-dir");
    let parent = format!("s3://{BUCKET}/{prefix}");
    let a: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    let b = vec![7u8; 1000];
    let opts = WriteOptions {
        align_4k: false,
        sync: false,
    };

    let dir = TensorDir::create(Some(Path::new(&parent))).unwrap();
    let root = dir.path().to_str().unwrap().to_string();
    assert!(
        root.starts_with(&format!("{parent}/kvr-tensors-")),
        "{root}"
    );
    assert!(
        objects_under(&endpoint, &prefix).is_empty(),
        "nothing before a put"
    );
    dir.put(
        "x",
        &[TensorIn::contiguous("a", Dtype::U8, &[4096], &a)],
        &[],
        opts,
    )
    .unwrap();
    dir.put(
        "y",
        &[TensorIn::contiguous("b", Dtype::U8, &[1000], &b)],
        &[],
        opts,
    )
    .unwrap();
    assert_eq!(objects_under(&endpoint, &prefix).len(), 2);

    let rx = dir.get_ref("x", Some("a")).unwrap();
    let mut out = vec![0u8; 4096];
    assert_eq!(rx.materialize_into(&mut out).unwrap(), 4096);
    assert_eq!(out, a);
    let ry = dir.get_ref("y", None).unwrap();
    ry.with_view(|t| assert_eq!(t.data, &b[..])).unwrap();

    // Replacing y: its old object stays while `ry` holds it, then goes.
    dir.put(
        "y",
        &[TensorIn::contiguous("b", Dtype::U8, &[1000], &a[..1000])],
        &[],
        opts,
    )
    .unwrap();
    assert_eq!(objects_under(&endpoint, &prefix).len(), 3);
    drop(ry);
    assert_eq!(objects_under(&endpoint, &prefix).len(), 2);

    // cleanup: every object of the directory now, though `rx` still exists.
    dir.cleanup().unwrap();
    assert!(objects_under(&endpoint, &prefix).is_empty());
    let e = rx.materialize_into(&mut out).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    drop((rx, dir));

    // Without cleanup: the last release deletes the objects.
    let dir = TensorDir::create(Some(Path::new(&parent))).unwrap();
    dir.put(
        "z",
        &[TensorIn::contiguous("a", Dtype::U8, &[4096], &a)],
        &[],
        opts,
    )
    .unwrap();
    let rz = dir.get_ref("z", None).unwrap();
    drop(dir);
    assert_eq!(
        objects_under(&endpoint, &prefix).len(),
        1,
        "the reference keeps it"
    );
    assert_eq!(rz.materialize_into(&mut out).unwrap(), 4096);
    drop(rz);
    assert!(objects_under(&endpoint, &prefix).is_empty());

    // An object adopted by URL (into a local directory) is read, and never deleted.
    let external = format!("{parent}/external.safetensors");
    kvr::tensors::write_to(
        &external,
        None,
        &[TensorIn::contiguous("a", Dtype::U8, &[4096], &a)],
        &[],
        opts,
    )
    .unwrap();
    let local = TensorDir::create(None).unwrap();
    local
        .adopt(&[Adopt {
            item_id: "ext",
            location: &external,
            tensor: Some("a"),
        }])
        .unwrap();
    out.fill(0);
    let r = local.get_ref("ext", None).unwrap();
    assert_eq!(r.materialize_into(&mut out).unwrap(), 4096);
    assert_eq!(out, a);
    local.cleanup().unwrap();
    drop((r, local));
    assert_eq!(
        objects_under(&endpoint, &prefix),
        [format!("{prefix}/external.safetensors")]
    );

    // A bucket without a prefix works as a parent too; a bad bucket name does not.
    let dir = TensorDir::create(Some(Path::new(&format!("s3://{BUCKET}")))).unwrap();
    assert!(dir
        .path()
        .to_str()
        .unwrap()
        .starts_with(&format!("s3://{BUCKET}/kvr-tensors-")));
    let e = TensorDir::create(Some(Path::new("s3://No_Such"))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    std::env::remove_var("AWS_ENDPOINT_URL");
}
