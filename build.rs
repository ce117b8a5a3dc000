//! Generates `include/kvr.h` with cbindgen.
//!
//! The header is always written to `$OUT_DIR/kvr.h`. The committed `include/kvr.h` is updated
//! in place for developers, but never when `CI` is set: there the `header_is_current` test
//! compares the two and fails if the committed header is stale.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=CI");
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    // A versioned soname, so engines linking libkvr.so record libkvr.so.<KVR_ABI_VERSION>.
    // The number is read from the constant itself (CMake reads it the same way), so it is
    // written in one place.
    let abi = abi_version(&crate_dir.join("src/ffi/mod.rs"));
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libkvr.so.{abi}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is valid");
    // Only src/ffi is the C surface (cbindgen follows its `mod` items); the rest of the
    // crate is Rust-only.
    let builder = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/ffi/mod.rs"));
    let bindings = builder
        .generate()
        .expect("cbindgen could not generate the C header");
    let generated = out_dir.join("kvr.h");
    bindings.write_to_file(&generated);
    let committed = crate_dir.join("include/kvr.h");
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    if !ci {
        let new = std::fs::read(&generated).unwrap();
        if std::fs::read(&committed).ok().as_deref() != Some(&new[..]) {
            std::fs::write(&committed, new).expect("writing include/kvr.h");
        }
    }
}

/// The value of `pub const KVR_ABI_VERSION: u32 = N;` in `src/ffi/mod.rs`.
fn abi_version(ffi_mod: &std::path::Path) -> u32 {
    let text = std::fs::read_to_string(ffi_mod).expect("reading src/ffi/mod.rs");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("pub const KVR_ABI_VERSION: u32 = "))
        .and_then(|rest| rest.trim_end_matches(';').trim().parse().ok())
        .expect("src/ffi/mod.rs defines `pub const KVR_ABI_VERSION: u32 = <number>;`")
}
