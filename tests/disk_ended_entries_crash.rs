//! kill -9 right after an overwrite, a remove or an eviction returned while reads were still
//! using the key's slot: after reopening, an entry that was gone stays gone, and an
//! overwritten key holds its new value, never the older one (issue 11, item 1).
//!
//! Children are this test binary re-executed with `KVR_ENDED_CHILD` set; each one writes v1,
//! starts reads of it on other threads, ends the entry while they run, and SIGKILLs itself
//! the moment the operation returned. Through the C ABI, as an engine would call it.

use std::ffi::CString;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kvr::ffi::disk::*;
use kvr::ffi::kvr_block_key;
use kvr::ffi::kvr_status::{self, *};
use kvr::ffi::KVR_DIRECT_IO_OFF;

/// v1 fills a slot, so a read of it lasts far longer than the small write of v2 and the
/// remove or eviction that follow it: the reads are still in flight when the child dies.
const BIG: usize = 4 << 20;
/// v2 (and the keys that evict it).
const SMALL: usize = 4096;
const SLOTS: u64 = 3;
const READERS: usize = 4;
/// Rounds per variant, unless the time bound ends them first (after at least `MIN_ROUNDS`).
const ROUNDS: usize = 200;
const MIN_ROUNDS: usize = 30;
const TIME_BOUND: Duration = Duration::from_secs(20);

const KEY: kvr_block_key = kvr_block_key { bytes: [0x4b; 16] };

fn other_key(i: u8) -> kvr_block_key {
    kvr_block_key { bytes: [i; 16] }
}

fn v1() -> Vec<u8> {
    vec![0x11; BIG]
}

fn v2() -> Vec<u8> {
    vec![0x22; SMALL]
}

/// A slot file handle shared by the child's reader threads.
#[derive(Clone, Copy)]
struct Handle(*mut kvr_disk);
// SAFETY: the C API documents a `kvr_disk` as usable from any number of threads at once; the
// handle outlives every thread (the process is killed before it is closed).
unsafe impl Send for Handle {}

fn open(path: &CString) -> *mut kvr_disk {
    let mut c = kvr_disk_config {
        struct_size: 0,
        path: std::ptr::null(),
        slot_size: 0,
        num_slots: 0,
        io_threads: 0,
        direct_io: 0,
        verify: false,
        sync: false,
        namespace_name: std::ptr::null(),
    };
    assert_eq!(kvr_disk_config_default(&mut c), KVR_OK);
    c.path = path.as_ptr();
    c.slot_size = BIG as u64;
    c.num_slots = SLOTS;
    c.io_threads = 1;
    // Buffered: the test is about the slot state machine, not about O_DIRECT.
    c.direct_io = KVR_DIRECT_IO_OFF;
    let mut d = null_mut();
    assert_eq!(kvr_disk_open(&c, &mut d), KVR_OK);
    d
}

fn write(d: *mut kvr_disk, key: &kvr_block_key, data: &[u8], meta: &[u8]) -> kvr_status {
    kvr_disk_write(
        d,
        key,
        data.as_ptr(),
        data.len() as u64,
        meta.as_ptr(),
        meta.len() as u64,
    )
}

/// Reads `key`: its status, payload and metadata.
fn read(d: *mut kvr_disk, key: &kvr_block_key) -> (kvr_status, Vec<u8>, Vec<u8>) {
    let mut buf = vec![0u8; BIG];
    let mut meta = [0u8; 16];
    let (mut len, mut meta_len) = (0u64, 0u64);
    let s = kvr_disk_read(
        d,
        key,
        buf.as_mut_ptr(),
        BIG as u64,
        &mut len,
        meta.as_mut_ptr(),
        meta.len() as u64,
        &mut meta_len,
    );
    buf.truncate(len as usize);
    (s, buf, meta[..meta_len as usize].to_vec())
}

/// Child role: v1, reads of it in flight, the variant's operation, then SIGKILL at once.
/// Prints whether a read was still in flight when the operation returned.
fn child_main(spec: &str) -> ! {
    let (path, variant) = spec.split_once(':').unwrap();
    let path = CString::new(path).unwrap();
    let d = open(&path);
    assert_eq!(write(d, &KEY, &v1(), b"v1"), KVR_OK);
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
    let h = Handle(d);
    for _ in 0..READERS {
        std::thread::spawn(move || {
            let h = h;
            IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
            STARTED.fetch_add(1, Ordering::SeqCst);
            read(h.0, &KEY);
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        });
    }
    while STARTED.load(Ordering::SeqCst) < READERS {
        std::thread::yield_now();
    }
    // Long enough for every reader to pin the slot, far shorter than a read of v1.
    std::thread::sleep(Duration::from_micros(50));
    assert_eq!(write(d, &KEY, &v2(), b"v2"), KVR_OK);
    match variant {
        "overwrite" => {}
        "remove" => assert_eq!(kvr_disk_remove(d, &KEY), KVR_OK),
        "evict" => {
            // Other keys until the key's entry (v2) is the one evicted; a slot still being
            // read is skipped by eviction, so this may take a few writes.
            let mut present = true;
            for i in 0..64u8 {
                match write(d, &other_key(i), &v2(), b"other") {
                    KVR_OK | KVR_ERR_BUSY => {}
                    s => panic!("writing another key: {s:?}"),
                }
                assert_eq!(kvr_disk_contains(d, &KEY, &mut present), KVR_OK);
                if !present {
                    break;
                }
            }
            assert!(!present, "the key was never evicted");
        }
        v => panic!("unknown variant {v}"),
    }
    let overlap = IN_FLIGHT.load(Ordering::SeqCst) > 0;
    let mut out = std::io::stdout();
    out.write_all(format!("\noverlap {overlap}\n").as_bytes())
        .unwrap();
    out.flush().unwrap();
    // SAFETY: plain syscalls on this process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL is not delivered late");
}

/// Runs the variant's rounds; `check` judges the key after each reopen. Returns (rounds,
/// rounds in which a read was still in flight at the kill).
fn run_rounds(
    test: &str,
    variant: &str,
    check: impl Fn(usize, (kvr_status, Vec<u8>, Vec<u8>)),
) -> (usize, usize) {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slots");
    let cpath = CString::new(path.to_str().unwrap()).unwrap();
    let t0 = Instant::now();
    let mut overlaps = 0;
    let mut rounds = 0;
    while rounds < ROUNDS && (rounds < MIN_ROUNDS || t0.elapsed() < TIME_BOUND) {
        let _ = std::fs::remove_file(&path);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env("KVR_ENDED_CHILD", format!("{}:{variant}", path.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut text = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "round {rounds}: the child failed before its kill ({status}): {text}"
        );
        let overlap = text
            .lines()
            .find_map(|l| l.strip_prefix("overlap "))
            .unwrap_or_else(|| panic!("round {rounds}: no overlap line in {text:?}"));
        overlaps += usize::from(overlap == "true");
        let d = open(&cpath);
        check(rounds, read(d, &KEY));
        kvr_disk_close(d);
        rounds += 1;
    }
    eprintln!("{variant}: {rounds} rounds, a read in flight at the kill in {overlaps}");
    // The rounds only mean something if reads were still using the slot when the child died.
    assert!(
        overlaps * 4 >= rounds,
        "{variant}: reads overlapped the kill in only {overlaps} of {rounds} rounds"
    );
    (rounds, overlaps)
}

fn gone(variant: &'static str) -> impl Fn(usize, (kvr_status, Vec<u8>, Vec<u8>)) {
    move |round, (status, _, meta)| {
        assert_eq!(
            status,
            KVR_ERR_NOT_FOUND,
            "{variant} round {round}: the ended entry came back after the crash (metadata {:?})",
            String::from_utf8_lossy(&meta)
        );
    }
}

#[test]
fn removed_entry_stays_removed_after_kill9_while_reads_pin_it() {
    if let Ok(spec) = std::env::var("KVR_ENDED_CHILD") {
        child_main(&spec);
    }
    run_rounds(
        "removed_entry_stays_removed_after_kill9_while_reads_pin_it",
        "remove",
        gone("remove"),
    );
}

#[test]
fn evicted_entry_stays_evicted_after_kill9_while_reads_pin_its_old_value() {
    if let Ok(spec) = std::env::var("KVR_ENDED_CHILD") {
        child_main(&spec);
    }
    run_rounds(
        "evicted_entry_stays_evicted_after_kill9_while_reads_pin_its_old_value",
        "evict",
        gone("evict"),
    );
}

#[test]
fn overwritten_entry_holds_the_new_value_after_kill9_while_reads_pin_the_old() {
    if let Ok(spec) = std::env::var("KVR_ENDED_CHILD") {
        child_main(&spec);
    }
    run_rounds(
        "overwritten_entry_holds_the_new_value_after_kill9_while_reads_pin_the_old",
        "overwrite",
        |round, (status, data, meta)| {
            assert_eq!(status, KVR_OK, "overwrite round {round}");
            assert_eq!(
                meta, b"v2",
                "overwrite round {round}: an older value came back"
            );
            assert!(data == v2(), "overwrite round {round}: payload is not v2");
        },
    );
}
