//! File helpers shared by the crate's and the CLI's tests (the CLI's `common` includes this
//! file by path, so it may use only std).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Whether `p` is a block file still being written in place by the fs store: a regular file
/// with no permission bits.
pub fn is_unpublished(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o7777 == 0)
}

/// Every file under `dir`, recursively. Directories that vanish or cannot be read while
/// walking (other processes may be removing them) are skipped.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Flips one bit of the byte at `off` in `path` and syncs the file, as a disk fault would.
pub fn flip_byte(path: &Path, off: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    b[0] ^= 0x10;
    f.write_all_at(&b, off).unwrap();
    f.sync_all().unwrap();
}
