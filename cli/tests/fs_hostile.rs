//! `kvr fs verify|gc` against hostile entries (issue 11, items 5 and 7): bounded memory on
//! a huge file, FIFOs and symlinks at block paths reported (exit 3), no hang on a FIFO.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::bounded::{mkfifo, wait_within};
use common::{kvr, text};

const EXIT_FOUND_BAD: i32 = 3;

/// The path of the block of key 00..00 in namespace `ns` under `root` (its fan-out
/// directory created; the file is the test's to make).
fn block_path_in(root: &Path) -> std::path::PathBuf {
    let fanout = root.join("ns").join("00");
    std::fs::create_dir_all(&fanout).unwrap();
    fanout.join(format!("{}.kvb", "00".repeat(16)))
}

#[test]
fn verify_bounds_its_memory_and_reports_non_regular_entries() {
    let d = tempfile::tempdir().unwrap();
    let path = block_path_in(d.path());
    // Junk of 8 GiB (sparse): a verify that reads files whole runs out of memory under the
    // 1 GiB address-space limit below and exits 1 with the rest unverified.
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(8 << 30).unwrap();
    drop(f);
    let fifo = path.with_file_name(format!("{}.kvb", "01".repeat(16)));
    mkfifo(&fifo);
    let link = path.with_file_name(format!("{}.kvb", "02".repeat(16)));
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -v 1048576 && exec "$0" fs verify "$1""#)
        .arg(env!("CARGO_BIN_EXE_kvr"))
        .arg(d.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_within(&mut child, Duration::from_secs(30), "kvr fs verify");
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(status.code(), Some(EXIT_FOUND_BAD), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("FIFO") && stdout.contains("symlink"),
        "{stdout}"
    );
    assert!(stdout.contains("3 bad"), "{stdout}");
}

#[test]
fn gc_does_not_hang_on_a_fifo_temp_file() {
    let d = tempfile::tempdir().unwrap();
    let path = block_path_in(d.path());
    let temp = path.with_file_name(format!(".{}.1.1.tmp", "00".repeat(16)));
    mkfifo(&temp);
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvr"))
        .args(["fs", "gc", d.path().to_str().unwrap(), "--max-bytes", "1G"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_within(&mut child, Duration::from_secs(30), "kvr fs gc");
    assert!(status.success());
    assert!(
        std::fs::symlink_metadata(&temp).is_err(),
        "junk at a temp name removed"
    );
    let o = kvr(&["fs", "verify", d.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
}
