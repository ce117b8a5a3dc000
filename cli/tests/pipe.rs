//! A standard output closed by its reader (`kvr tensors ls FILE | head -1`) is a normal end
//! for every command: exit 0, nothing on stderr (issue 11, item 10).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `kvr args` with standard output a pipe whose read end is already closed, so the
/// first line it prints fails with EPIPE (the kernel's answer once `head` has exited).
/// Returns the exit code and stderr.
fn kvr_into_closed_pipe(args: &[&str]) -> (Option<i32>, String) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 succeeded: both descriptors are open and owned by nothing else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end);
    let out = Command::new(env!("CARGO_BIN_EXE_kvr"))
        .args(args)
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()
        .expect("run kvr");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_normal_end(args: &[&str]) {
    let (code, err) = kvr_into_closed_pipe(args);
    assert_eq!(code, Some(0), "kvr {args:?}: exit code; stderr: {err}");
    assert!(err.is_empty(), "kvr {args:?}: stderr: {err}");
}

/// A small safetensors file with metadata (so `ls` prints several lines).
fn tensor_file(path: &Path) {
    let json = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"U8","shape":[3],"data_offsets":[16,19]}}"#;
    let mut v = (json.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(json.as_bytes());
    v.extend_from_slice(&[0u8; 19]);
    std::fs::write(path, v).unwrap();
}

#[test]
fn tensors_ls_into_a_closed_pipe_exits_0_silently() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.safetensors");
    tensor_file(&file);
    let f = file.to_str().unwrap();
    assert_normal_end(&["tensors", "ls", f]);
    assert_normal_end(&["tensors", "ls", f, "--json"]);
}

#[test]
fn fs_inspect_into_a_closed_pipe_exits_0_silently() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert_normal_end(&["fs", "inspect", d]);
    assert_normal_end(&["fs", "inspect", d, "--json"]);
}

#[test]
fn disk_inspect_into_a_closed_pipe_exits_0_silently() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spill.slots");
    drop(kvr::SlotFile::open(&kvr::DiskConfig::new(&path, 4096, 4)).unwrap());
    let p = path.to_str().unwrap();
    assert_normal_end(&["disk", "inspect", p]);
    assert_normal_end(&["disk", "inspect", p, "--json"]);
    assert_normal_end(&["disk", "verify", p]);
}

#[test]
fn region_ls_into_a_closed_pipe_exits_0_silently() {
    let dir = tempfile::tempdir().unwrap();
    assert_normal_end(&["region", "ls", "--dir", dir.path().to_str().unwrap()]);
}

#[test]
fn a_failing_command_still_reports_its_error() {
    // The closed pipe changes nothing for errors found before anything is printed.
    let (code, err) = kvr_into_closed_pipe(&["tensors", "ls", "/nonexistent/kvr-pipe-test"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
