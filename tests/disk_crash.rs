//! kill -9 of a slot file's owner: at several points in the middle of thousands of writes
//! (overwrites of the same keys and evictions included), and while it merely holds the file.
//! Children are this test binary re-executed with `KVR_DISK_CHILD` set.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kvr::io::DirectIo;
use kvr::{DiskConfig, ErrorKind, SlotFile};

use common::{key, Rng};

const SLOT: u64 = 32 * 1024;
const SLOTS: u64 = 24;
const KEYS: u64 = 40;

/// The value of version `v` of key `k`: length and bytes both derive from (k, v).
fn value(k: u64, v: u64) -> Vec<u8> {
    let len = 1 + ((k * 31 + v * 7919) % SLOT) as usize;
    let mut out = vec![0u8; len];
    Rng((k << 32 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1).fill(&mut out);
    out
}

fn config(path: &Path, direct: bool) -> DiskConfig {
    let mut c = DiskConfig::new(path, SLOT, SLOTS);
    c.direct_io = if direct {
        DirectIo::Auto
    } else {
        DirectIo::Off
    };
    c.io_threads = 1;
    c
}

/// Child role: open, say "ready", then write forever (or hold the file with "hold").
fn child_main(spec: &str) {
    let mut parts = spec.split(':');
    let (path, direct, mode, base) = (
        parts.next().unwrap(),
        parts.next().unwrap() == "1",
        parts.next().unwrap(),
        parts.next().unwrap().parse::<u64>().unwrap(),
    );
    let d = SlotFile::open(&config(Path::new(path), direct)).unwrap();
    println!("ready");
    if mode == "hold" {
        d.write(&key(7), &value(7, 1), b"held").unwrap();
        println!("written");
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let mut x = base | 1;
    for v in base.. {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = x % KEYS;
        d.write(&key(k), &value(k, v), &v.to_le_bytes()).unwrap();
        if x % 11 == 0 {
            d.remove(&key((x >> 16) % KEYS));
        }
        if (v - base) % PROGRESS_EVERY == 0 {
            println!("progress {}", v - base);
        }
    }
}

fn spawn_child(test: &str, spec: String) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("KVR_DISK_CHILD", spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

fn wait_line(out: &mut BufReader<std::process::ChildStdout>, want: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child exited early");
        if line.trim_end().ends_with(want) {
            return;
        }
    }
}

/// The child reports every this many writes; kill points are counted in writes, not time,
/// so the test means the same on a fast or a loaded machine.
const PROGRESS_EVERY: u64 = 25;

/// Waits until the child has completed at least `writes` writes.
fn wait_progress(out: &mut BufReader<std::process::ChildStdout>, writes: u64) {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child exited early");
        let done = line
            .trim_end()
            .rsplit("progress ")
            .next()
            .and_then(|n| n.parse::<u64>().ok());
        if done.is_some_and(|n| n >= writes) {
            return;
        }
    }
}

fn kill9(mut child: Child) {
    // SAFETY: plain syscall on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    assert!(!status.success());
}

/// Every entry is a completely written value of its key, or absent; nothing is corrupt.
/// Returns the number of entries and the highest version found.
fn check_all(d: &SlotFile) -> (u64, u64) {
    let mut buf = vec![0u8; SLOT as usize];
    let mut meta = [0u8; 8];
    let mut present = 0;
    let mut newest = 0;
    for k in 0..KEYS {
        match d.read(&key(k), &mut buf, &mut meta) {
            Ok(n) => {
                assert_eq!(n.meta_len, 8);
                let v = u64::from_le_bytes(meta);
                let want = value(k, v);
                assert_eq!(n.len as usize, want.len(), "key {k} version {v}: length");
                assert!(buf[..want.len()] == want[..], "key {k} version {v}: bytes");
                present += 1;
                newest = newest.max(v);
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "key {k}: {e}"),
        }
    }
    let s = d.stats();
    assert_eq!(s.corrupt_dropped, 0);
    assert_eq!(s.entries + s.free_slots, SLOTS);
    (present, newest)
}

#[test]
fn kill9_mid_writes_leaves_old_or_no_entry_never_a_mix() {
    if let Ok(spec) = std::env::var("KVR_DISK_CHILD") {
        child_main(&spec);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slots");
    let test = "kill9_mid_writes_leaves_old_or_no_entry_never_a_mix";
    let mut total_recovered = 0;
    let mut most_writes = 0;
    // Kill points in completed writes after the child opened the file (plus a short, varying
    // delay so the kill lands at an arbitrary instant of a write); alternate direct and
    // buffered I/O, all on the same file so each round recovers what the previous one left.
    let points = [0u64, 25, 100, 300, 800, 1500, 2500];
    for (round, &writes) in points.iter().enumerate() {
        let direct = round % 2 == 0;
        let base = (round as u64 + 1) << 40;
        let spec = format!("{}:{}:write:{base}", path.display(), u8::from(direct));
        let (child, mut out) = spawn_child(test, spec);
        wait_line(&mut out, "ready");
        if writes > 0 {
            wait_progress(&mut out, writes);
        }
        std::thread::sleep(Duration::from_micros(137 * round as u64));
        kill9(child);
        let d = SlotFile::open(&config(&path, !direct)).unwrap();
        let s = d.stats();
        assert!(!s.created);
        total_recovered += s.recovered_entries;
        let (present, newest) = check_all(&d);
        assert_eq!(present, s.recovered_entries);
        eprintln!(
            "killed after {writes}+ writes (direct {direct}): newest version {}, {present} entries",
            newest.saturating_sub(base)
        );
        most_writes = most_writes.max(newest.saturating_sub(base));
        // The recovered file keeps working.
        d.write(&key(0), &value(0, 1), &1u64.to_le_bytes()).unwrap();
        check_all(&d);
    }
    // The last round was killed after at least 2500 writes; some recent version survives.
    assert!(
        most_writes > 500,
        "no round got to 500 writes ({most_writes})"
    );
    assert!(
        total_recovered > 20,
        "the children wrote too little before being killed ({total_recovered})"
    );
}

#[test]
fn second_owner_is_busy_and_reopen_after_kill9_succeeds() {
    if let Ok(spec) = std::env::var("KVR_DISK_CHILD") {
        child_main(&spec);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slots");
    let spec = format!("{}:1:hold:0", path.display());
    let (child, mut out) =
        spawn_child("second_owner_is_busy_and_reopen_after_kill9_succeeds", spec);
    wait_line(&mut out, "written");
    let e = SlotFile::open(&config(&path, true)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    kill9(child);
    let d = SlotFile::open(&config(&path, true)).unwrap();
    let mut buf = vec![0u8; SLOT as usize];
    let mut meta = [0u8; 4];
    let n = d.read(&key(7), &mut buf, &mut meta).unwrap();
    assert_eq!(&buf[..n.len as usize], &value(7, 1)[..]);
    assert_eq!(&meta, b"held");
}
