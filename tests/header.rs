//! The committed C header must be exactly what cbindgen generates from the current code.

#[test]
fn header_is_current() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/kvr.h"));
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/kvr.h"))
        .expect("include/kvr.h exists");
    assert!(
        committed == generated,
        "include/kvr.h is stale: run `cargo build` (outside CI) and commit the regenerated header"
    );
}
