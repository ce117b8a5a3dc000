//! fs block store across processes: a SIGKILLed writer, 4 processes x 4 threads sharing a
//! root, and full file systems (RLIMIT_FSIZE in a child; a small tmpfs when mounting works).
//!
//! Children are this test binary re-executed with `KVR_FS_ROLE` set, running the same test.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kvr::io::DirectIo;
use kvr::{ErrorKind, FsConfig, FsStore, Key, StoreRequest, WriteMode};

use common::files::{is_unpublished, walk};
use common::{content, header_writer, key, key_index};

const ROLE: &str = "KVR_FS_ROLE";
const DIR: &str = "KVR_FS_DIR";

/// Length and content are functions of the key: any process can check any block.
fn block_len(i: u64) -> usize {
    4096 * (1 + (i % 4) as usize) + (i % 7) as usize * 111
}

fn spawn_role(test: &str, role: &str, dir: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(DIR, dir);
    c
}

fn role() -> Option<(String, PathBuf)> {
    let r = std::env::var(ROLE).ok()?;
    // A child that writes until killed must not outlive a parent that died first.
    // SAFETY: plain prctl(2) on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    Some((r, PathBuf::from(std::env::var(DIR).unwrap())))
}

fn is_temp(p: &Path) -> bool {
    p.file_name().unwrap().to_str().unwrap().ends_with(".tmp")
}

/// Every visible block loads and holds exactly its key's bytes. Returns the block count.
fn check_all_blocks(s: &FsStore) -> usize {
    let mut n = 0;
    for p in walk(s.dir()) {
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let Some(hex) = name.strip_suffix(".kvb") else {
            continue;
        };
        let k = Key::from_hex(hex).unwrap();
        let len = block_len(key_index(&k));
        let mut out = vec![0u8; len];
        s.load(&k, &mut out)
            .unwrap_or_else(|e| panic!("visible block {} fails to load: {e}", p.display()));
        assert!(out == content(&k, len), "wrong bytes in {}", p.display());
        n += 1;
    }
    n
}

/// One store request per (key, payload); the payloads must outlive the job.
fn store_requests(bufs: &[(Key, Vec<u8>)]) -> Vec<StoreRequest> {
    bufs.iter()
        .map(|(k, b)| StoreRequest {
            key: *k,
            src: b.as_ptr(),
            len: b.len(),
        })
        .collect()
}

fn open(dir: &Path) -> FsStore {
    let mut c = FsConfig::new(dir, "shared-ns");
    c.read_threads = 4;
    c.write_threads = 4;
    FsStore::open(&c).unwrap()
}

#[test]
fn sigkilled_writer_leaves_no_partial_block_unnamed_temp_files() {
    sigkilled_writer(
        "sigkilled_writer_leaves_no_partial_block_unnamed_temp_files",
        WriteMode::Auto,
    );
}

#[test]
fn sigkilled_writer_leaves_no_partial_block_named_temp_files() {
    sigkilled_writer(
        "sigkilled_writer_leaves_no_partial_block_named_temp_files",
        WriteMode::NamedTemp,
    );
}

#[test]
fn sigkilled_writer_leaves_no_partial_block_in_place() {
    sigkilled_writer(
        "sigkilled_writer_leaves_no_partial_block_in_place",
        WriteMode::InPlace,
    );
}

/// The payload the crash role stores under key `i`: one of 64 (made once, so that the
/// killed writer spends its time writing, not making bytes).
fn crash_payload(i: u64) -> Vec<u8> {
    content(&key(i % 64), block_len(i % 64) + 60_000)
}

/// A writer storing blocks on 4 threads is SIGKILLed, up to 5 times until it leaves
/// something behind; every visible block is whole, and no temp file survives: none at all
/// with unnamed (`O_TMPFILE`) files, none after the next open's cleanup with named ones;
/// written in place, the unpublished files it left are no blocks to anyone and go at the
/// next open.
fn sigkilled_writer(test: &str, write_mode: WriteMode) {
    let config = |dir: &Path| {
        let mut c = FsConfig::new(dir, "shared-ns");
        c.write_mode = write_mode;
        c
    };
    if let Some((r, dir)) = role() {
        assert_eq!(r, "crash-writer");
        // fdatasync keeps each block in its temp state longer: more likely to be killed there.
        let mut c = config(&dir);
        c.durability = kvr::Durability::Fdatasync;
        c.write_threads = 4;
        let s = FsStore::open(&c).unwrap();
        let payloads: Vec<Vec<u8>> = (0..64).map(crash_payload).collect();
        // Store blocks until killed, 16 in flight at a time on 4 threads.
        let mut i = 0u64;
        loop {
            let reqs: Vec<StoreRequest> = (i..i + 16)
                .map(|j| {
                    let b = &payloads[(j % 64) as usize];
                    StoreRequest {
                        key: key(j),
                        src: b.as_ptr(),
                        len: b.len(),
                    }
                })
                .collect();
            // SAFETY: `payloads` outlives the job (waited for in this iteration).
            let job = unsafe { s.submit_store(&reqs) };
            job.wait(None).unwrap();
            i += 16;
        }
    }
    let d = tempfile::tempdir().unwrap();
    let ns = d.path().join("shared-ns");
    let mut left = 0;
    for round in 0..5 {
        let mut child = spawn_role(test, "crash-writer", d.path()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while walk(&ns).iter().filter(|p| !is_temp(p)).count() < 200 * (round + 1) {
            assert!(Instant::now() < deadline, "child wrote too few blocks");
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let temps_before = walk(&ns).iter().filter(|p| is_temp(p)).count();
        let unpublished: Vec<PathBuf> = walk(&ns)
            .into_iter()
            .filter(|p| is_unpublished(p))
            .collect();
        println!(
            "round {round}: left by the killed writer: {temps_before} temp files, {} \
             unpublished block files",
            unpublished.len()
        );
        if write_mode != WriteMode::InPlace {
            assert!(unpublished.is_empty());
        }
        left += temps_before + unpublished.len();
        // An unpublished file is no block, even before anyone cleans it: `verify` (which
        // removes nothing) checks only published blocks and finds none bad, and counts the
        // rest as temp files.
        let report = kvr::fs::maintenance::verify(d.path(), Some("shared-ns"), 2, false).unwrap();
        assert!(report.bad.is_empty(), "{:?}", report.bad);
        let summary = kvr::fs::maintenance::inspect(d.path(), Some("shared-ns")).unwrap();
        assert_eq!(
            summary[0].temp_files as usize,
            temps_before + unpublished.len()
        );
        // Reopening cleans the dead writer's temp and unpublished files (its writer lock
        // died with it).
        let mut c = config(d.path());
        c.direct_io = DirectIo::Auto;
        let s = FsStore::open(&c).unwrap();
        assert!(s.wait_for_scan(Some(Duration::from_secs(60))));
        match s.write_mode() {
            WriteMode::UnnamedTemp => {
                assert_eq!(temps_before, 0, "unnamed temp files never have a name")
            }
            m => assert_eq!(m, write_mode, "as asked for"),
        }
        assert_eq!(walk(&ns).iter().filter(|p| is_temp(p)).count(), 0);
        // Only a file killed before its first write (which names its writer) may stay, until
        // it is `UNPUBLISHED_GRACE` old; it is no block meanwhile.
        for p in &unpublished {
            assert!(
                !p.exists() || header_writer(p).is_none(),
                "{} outlived its dead writer",
                p.display()
            );
        }
        let mut n = 0;
        for p in walk(&ns) {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            let Some(hex) = name.strip_suffix(".kvb") else {
                continue;
            };
            let k = Key::from_hex(hex).unwrap();
            if is_unpublished(&p) {
                assert!(!s.contains(&k), "{} is no block yet", p.display());
                continue;
            }
            let want = crash_payload(key_index(&k));
            let mut out = vec![0u8; want.len()];
            s.load(&k, &mut out)
                .unwrap_or_else(|e| panic!("visible block {} is partial: {e}", p.display()));
            assert!(out == want);
            n += 1;
        }
        assert!(n >= 200, "{n} blocks");
        assert_eq!(s.stats().corrupt_dropped, 0);
        if left > 0 || s.uses_unnamed_temp_files() {
            break;
        }
    }
    if write_mode != WriteMode::Auto {
        assert!(
            left > 0,
            "5 killed writers left nothing to clean: the cleanup went untested"
        );
    }
}

#[test]
fn four_processes_four_threads_share_a_root() {
    if let Some((r, dir)) = role() {
        assert_eq!(r, "mixer");
        let s = open(&dir);
        let pid = std::process::id() as u64;
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let s = &s;
                scope.spawn(move || {
                    let mut x = pid * 7919 + t * 104_729 + 1;
                    let mut out = vec![0u8; 5 * 4096];
                    for _ in 0..300 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let i = x % 48; // overlapping key set
                        let k = key(i);
                        let len = block_len(i);
                        match (x >> 8) % 8 {
                            0..=2 => {
                                s.store(&k, &content(&k, len)).unwrap();
                            }
                            3 => match s.remove(&k) {
                                Ok(()) => {}
                                Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "{e}"),
                            },
                            _ => match s.load(&k, &mut out[..len]) {
                                Ok(n) => {
                                    assert_eq!(n as usize, len);
                                    assert!(out[..len] == content(&k, len), "wrong bytes");
                                }
                                Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "{e}"),
                            },
                        }
                    }
                });
            }
        });
        assert_eq!(s.stats().corrupt_dropped, 0);
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let children: Vec<Child> = (0..4)
        .map(|_| {
            spawn_role(
                "four_processes_four_threads_share_a_root",
                "mixer",
                d.path(),
            )
            .spawn()
            .unwrap()
        })
        .collect();
    for mut c in children {
        let st = c.wait().unwrap();
        assert!(st.success(), "a child failed: {st}");
    }
    let s = open(d.path());
    assert_eq!(walk(s.dir()).iter().filter(|p| is_temp(p)).count(), 0);
    let n = check_all_blocks(&s);
    assert!(n > 0);
}

/// Stores until the file system refuses, then checks: `NoSpace`, no temp file, every
/// visible block intact. Returns the number of blocks stored.
fn fill_until_no_space(dir: &Path, len: usize, max: u64) -> u64 {
    let s = open(dir);
    for i in 0..max {
        let k = key(i);
        match s.store(&k, &content(&k, len)) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
                assert!(!s.contains(&k), "failed block is not visible");
                let temps = walk(s.dir()).into_iter().filter(|p| is_temp(p)).count();
                assert_eq!(temps, 0, "temp file left after {e}");
                for j in 0..i {
                    let mut out = vec![0u8; len];
                    s.load(&key(j), &mut out).unwrap();
                    assert!(out == content(&key(j), len));
                }
                return i;
            }
        }
    }
    panic!("the file system never filled up");
}

#[test]
fn file_size_limit_gives_no_space_and_leaves_nothing_partial() {
    if let Some((r, dir)) = role() {
        assert_eq!(r, "fsize");
        let s = open(&dir);
        let small = content(&key(1), 64 * 1024);
        s.store(&key(1), &small).unwrap();
        let big = content(&key(2), 512 * 1024);
        let e = s.store(&key(2), &big).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
        println!("fsize child got: {e}");
        assert!(!s.contains(&key(2)));
        assert_eq!(walk(s.dir()).iter().filter(|p| is_temp(p)).count(), 0);
        let mut out = vec![0u8; small.len()];
        s.load(&key(1), &mut out).unwrap();
        assert!(out == small);
        // The same through an async batch (the writer threads' pipelined path): the big
        // item fails with NoSpace, the small ones around it are stored, nothing is left.
        let smalls: Vec<Vec<u8>> = (3..5).map(|i| content(&key(i), 64 * 1024)).collect();
        let reqs = [
            StoreRequest {
                key: key(3),
                src: smalls[0].as_ptr(),
                len: smalls[0].len(),
            },
            StoreRequest {
                key: key(2),
                src: big.as_ptr(),
                len: big.len(),
            },
            StoreRequest {
                key: key(4),
                src: smalls[1].as_ptr(),
                len: smalls[1].len(),
            },
        ];
        // SAFETY: the buffers outlive the job, dropped at the end of this block.
        let job = unsafe { s.submit_store(&reqs) };
        job.wait(None).unwrap();
        assert_eq!(job.item(1).unwrap_err().kind(), ErrorKind::NoSpace);
        assert_eq!(job.item(0).unwrap(), 64 * 1024);
        assert_eq!(job.item(2).unwrap(), 64 * 1024);
        drop(job);
        assert!(!s.contains(&key(2)));
        assert_eq!(walk(s.dir()).iter().filter(|p| is_temp(p)).count(), 0);
        for (i, want) in (3..5).zip(&smalls) {
            s.load(&key(i), &mut out).unwrap();
            assert!(out == *want);
        }
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut cmd = spawn_role(
        "file_size_limit_gives_no_space_and_leaves_nothing_partial",
        "fsize",
        d.path(),
    );
    // SAFETY: only async-signal-safe calls (signal, setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN); // EFBIG instead of a signal
            let lim = libc::rlimit {
                rlim_cur: 256 * 1024,
                rlim_max: 256 * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "child failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn small_tmpfs_fills_up_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::piped())
        .output();
    match status {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            println!(
                "SKIP small_tmpfs_fills_up_cleanly: mounting a tmpfs is not permitted here ({})",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            println!("SKIP small_tmpfs_fills_up_cleanly: cannot run mount: {e}");
            return;
        }
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    let n = fill_until_no_space(&mnt, 64 * 1024, 1000);
    assert!((5..=16).contains(&n), "{n} blocks of 64 KiB fit in 1 MiB");
    // Again through async batches, on a second 1 MiB tmpfs.
    let mnt2 = d.path().join("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    let o = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt2)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the first mount worked, the second must too"
    );
    let _u2 = Unmount(mnt2.clone());
    let n = fill_in_batches_until_no_space(&mnt2, 64 * 1024, 1000);
    assert!((5..=16).contains(&n), "{n} blocks of 64 KiB fit in 1 MiB");
}

/// Like `fill_until_no_space`, with async batches of 4: items that fail report `NoSpace`,
/// the others of the same batch are intact, and no temp file is left. Returns the number
/// of blocks stored.
fn fill_in_batches_until_no_space(dir: &Path, len: usize, max: u64) -> u64 {
    let s = open(dir);
    let mut stored = Vec::new();
    for first in (0..max).step_by(4) {
        let bufs: Vec<(Key, Vec<u8>)> = (first..first + 4)
            .map(|i| (key(i), content(&key(i), len)))
            .collect();
        let reqs = store_requests(&bufs);
        // SAFETY: `bufs` outlives the job, dropped in this iteration.
        let job = unsafe { s.submit_store(&reqs) };
        let p = job.wait(None).unwrap();
        for (j, (k, _)) in bufs.iter().enumerate() {
            match job.item(j) {
                Ok(n) => {
                    assert_eq!(n, len as u64);
                    stored.push(*k);
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
                    assert!(!s.contains(k), "failed block is not visible");
                }
            }
        }
        drop(job);
        if p.failed > 0 {
            let temps = walk(s.dir()).into_iter().filter(|p| is_temp(p)).count();
            assert_eq!(temps, 0, "temp file left");
            for k in &stored {
                let mut out = vec![0u8; len];
                s.load(k, &mut out).unwrap();
                assert!(out == content(k, len));
            }
            return stored.len() as u64;
        }
    }
    panic!("the file system never filled up");
}
