//! The fs block store on a real distributed file system: GlusterFS, one brick, two FUSE
//! mounts acting as two hosts (`scripts/glusterfs.sh`; each mount is its own client process
//! with its own caches, so what one host writes reaches the other only through the server).
//!
//! The mounts come from `KVR_GLUSTER_A` / `KVR_GLUSTER_B` (set by `scripts/run-tests.sh`,
//! which starts and stops the test bed around this file), else from a running test bed
//! (`scripts/glusterfs.sh status`). Without either the tests print why and pass, unless
//! `KVR_REQUIRE_GLUSTER=1` (CI), where that is a failure.
//!
//! Gluster's FUSE mount has no `O_TMPFILE`, so the stores here write blocks in place (the
//! default there: created with no permission bits, published by `fchmod`); the tests of
//! concurrent and killed writers also run the named-temp-file + hard-link path.

mod common;

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use kvr::fs::maintenance;
use kvr::{ErrorKind, FsConfig, FsStore, Key, StoreRequest, WriteMode};

use common::files::{flip_byte, is_unpublished, walk};
use common::{content, header_writer, key, key_index};

const ROLE: &str = "KVR_GLUSTER_ROLE";

/// The two mounts of one volume, or `None` (after saying why) when there is no test bed.
fn hosts() -> Option<(PathBuf, PathBuf)> {
    let from_env = std::env::var_os("KVR_GLUSTER_A").zip(std::env::var_os("KVR_GLUSTER_B"));
    let found = from_env.map(|(a, b)| (a.into(), b.into())).or_else(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/glusterfs.sh");
        let out = Command::new(script).arg("status").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let var = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")).map(PathBuf::from))
        };
        out.status
            .success()
            .then(|| var("KVR_GLUSTER_A").zip(var("KVR_GLUSTER_B")))
            .flatten()
    });
    if found.is_none() {
        let why = "no GlusterFS test bed: set KVR_GLUSTER_A/B or run `scripts/glusterfs.sh start`";
        assert!(
            std::env::var_os("KVR_REQUIRE_GLUSTER").is_none(),
            "KVR_REQUIRE_GLUSTER is set but there is {why}"
        );
        eprintln!("skipped: {why}");
    }
    found
}

/// A namespace of its own for each test (and run), removed from the volume on drop.
struct Namespace {
    name: String,
    dir_a: PathBuf,
}

impl Namespace {
    fn new(a: &Path, test: &str) -> Namespace {
        let name = format!("{test}-{}", std::process::id());
        Namespace {
            dir_a: a.join(&name),
            name,
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir_a);
    }
}

fn open(root: &Path, ns: &str) -> FsStore {
    open_as(root, ns, WriteMode::Auto)
}

fn open_as(root: &Path, ns: &str, write_mode: WriteMode) -> FsStore {
    let mut c = FsConfig::new(root, ns);
    c.read_threads = 4;
    c.write_threads = 4;
    c.write_mode = write_mode;
    FsStore::open(&c).unwrap()
}

/// The write modes a file system without `O_TMPFILE` offers: in place (what `Auto` picks
/// there) and named temp files.
const MODES: [WriteMode; 2] = [WriteMode::Auto, WriteMode::NamedTemp];

/// Lengths vary around 64 KiB, so tails are unaligned.
fn block_len(i: u64) -> usize {
    65536 + (i % 5) as usize * 4096 + (i % 3) as usize * 777
}

/// Stores test blocks `ids` as one async batch; returns each item's result.
fn store_batch(s: &FsStore, ids: &[u64]) -> Vec<kvr::Result<u64>> {
    let bufs: Vec<(Key, Vec<u8>)> = ids
        .iter()
        .map(|&i| (key(i), content(&key(i), block_len(i))))
        .collect();
    let reqs: Vec<StoreRequest> = bufs
        .iter()
        .map(|(k, b)| StoreRequest {
            key: *k,
            src: b.as_ptr(),
            len: b.len(),
        })
        .collect();
    // SAFETY: `bufs` outlives the job, which is waited for (and dropped) here.
    let job = unsafe { s.submit_store(&reqs) };
    job.wait(None).unwrap();
    (0..ids.len()).map(|i| job.item(i)).collect()
}

/// Loads test block `i` and checks its bytes; `Ok(false)` for a miss.
fn load_checked(s: &FsStore, i: u64) -> kvr::Result<bool> {
    let k = key(i);
    let mut out = vec![0u8; block_len(i)];
    match s.load(&k, &mut out) {
        Ok(n) => {
            assert_eq!(n as usize, out.len());
            assert!(out == content(&k, out.len()), "wrong bytes in block {i}");
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// How many of this process's threads are fs stores' close-behind threads.
fn close_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|n| n.trim() == "kvr-fs-close")
        .count()
}

/// Also: the close-behind thread starts with a store's first store, not at open, so a store
/// that only loads has none (counted in this process: `scripts/run-tests.sh` runs these tests
/// one at a time).
#[test]
fn stored_on_a_loads_on_b() {
    let Some((a, b)) = hosts() else { return };
    let ns = Namespace::new(&a, "a-to-b");
    let threads = close_threads();
    let on_a = open(&a, &ns.name);
    assert_eq!(close_threads(), threads, "no close thread before a store");
    assert!(
        !on_a.uses_unnamed_temp_files(),
        "Gluster's FUSE mount has no O_TMPFILE"
    );
    assert_eq!(
        on_a.write_mode(),
        WriteMode::InPlace,
        "the default without O_TMPFILE"
    );
    eprintln!(
        "on GlusterFS: write mode {:?}, direct I/O {}",
        on_a.write_mode(),
        on_a.direct_io()
    );
    let ids: Vec<u64> = (0..1000).collect();
    for r in store_batch(&on_a, &ids) {
        assert!(r.unwrap() > 0, "a fresh key is written");
    }
    assert_eq!(
        close_threads(),
        threads + 1,
        "A's stores started its close thread"
    );
    let on_b = open(&b, &ns.name);
    for &i in &ids {
        assert!(load_checked(&on_b, i).unwrap(), "block {i} missing on B");
    }
    let st = on_b.stats();
    assert_eq!((st.hits, st.misses, st.corrupt_dropped), (1000, 0, 0));
    assert!(!st.unnamed_temp_files);
    assert_eq!(st.write_mode, WriteMode::InPlace);
    assert_eq!(
        close_threads(),
        threads + 1,
        "B only loaded: no close thread"
    );
    drop(on_a);
    assert_eq!(
        close_threads(),
        threads,
        "closing A joined its close thread"
    );
}

#[test]
fn same_keys_from_both_hosts_publish_once() {
    let Some((a, b)) = hosts() else { return };
    for mode in MODES {
        same_keys_from_both_hosts(&a, &b, mode);
    }
}

fn same_keys_from_both_hosts(a: &Path, b: &Path, mode: WriteMode) {
    let ns = Namespace::new(a, &format!("both-{mode:?}"));
    let (on_a, on_b) = (open_as(a, &ns.name, mode), open_as(b, &ns.name, mode));
    for round in 0..3u64 {
        let ids: Vec<u64> = (round * 1000..round * 1000 + 300).collect();
        let (ra, rb) = std::thread::scope(|sc| {
            let ta = sc.spawn(|| store_batch(&on_a, &ids));
            let tb = sc.spawn(|| store_batch(&on_b, &ids));
            (ta.join().unwrap(), tb.join().unwrap())
        });
        let mut written = 0;
        for (n, (x, y)) in ra.into_iter().zip(rb).enumerate() {
            let (x, y) = (x.unwrap(), y.unwrap());
            // Bytes written, or 0 for a deduplicated store: exactly one of each per key.
            assert!(
                (x == 0) != (y == 0),
                "key {} ({mode:?}): A wrote {x}, B wrote {y} bytes",
                ids[n]
            );
            written += 1;
        }
        assert_eq!(written, ids.len());
        for &i in &ids {
            assert!(load_checked(&on_a, i).unwrap(), "{mode:?}: block {i} on A");
            assert!(load_checked(&on_b, i).unwrap(), "{mode:?}: block {i} on B");
        }
    }
    let (sa, sb) = (on_a.stats(), on_b.stats());
    assert_eq!(sa.stores + sb.stores, 900);
    assert_eq!(sa.dedup_hits + sb.dedup_hits, 900);
}

/// The child: stores big blocks on host A forever, until killed.
fn writer_role(root: &Path, ns: &str, mode: WriteMode) {
    let s = open_as(root, ns, mode);
    for round in 0u64.. {
        let ids: Vec<u64> = (round * 8..round * 8 + 8).collect();
        let bufs: Vec<(Key, Vec<u8>)> = ids
            .iter()
            .map(|&i| (key(i), content(&key(i), big_len(i))))
            .collect();
        let reqs: Vec<StoreRequest> = bufs
            .iter()
            .map(|(k, b)| StoreRequest {
                key: *k,
                src: b.as_ptr(),
                len: b.len(),
            })
            .collect();
        // SAFETY: `bufs` outlives the job, which is dropped (waited for) at the loop's end.
        let job = unsafe { s.submit_store(&reqs) };
        job.wait(None).unwrap();
    }
}

fn big_len(i: u64) -> usize {
    (4 << 20) + (i % 3) as usize * 4099
}

/// What writers have not published yet: named temp files, and block files written in place
/// but still unpublished.
fn temp_files(dir: &Path) -> HashSet<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| {
            let name = p.to_string_lossy();
            name.ends_with(".tmp") || (name.ends_with(".kvb") && is_unpublished(p))
        })
        .collect()
}

/// Whether someone else holds an exclusive `flock` on `p`.
fn locked(p: &Path) -> bool {
    let Ok(f) = std::fs::File::open(p) else {
        return false;
    };
    // SAFETY: plain syscall on a descriptor `f` keeps open; closing `f` drops our lock.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    r != 0
}

/// Whether temp file `p` of the store at `store_dir` belongs to a live writer: its name (or,
/// for a block file written in place, its header) names a lock file under `.writers` that
/// its writer holds.
fn writer_alive(store_dir: &Path, p: &Path) -> bool {
    let name = p.file_name().unwrap().to_str().unwrap();
    let lock = |id: u64| locked(&store_dir.join(".writers").join(format!("{id:016x}")));
    match kvr::fs::path::classify(name) {
        kvr::fs::path::Entry::Temp(id) => lock(id),
        kvr::fs::path::Entry::Block(_) => header_writer(p).is_some_and(lock),
        other => panic!("{} is no writer's temp file ({other:?})", p.display()),
    }
}

/// The writer child, killed on drop (also when the test fails while it is stopped).
struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGSTOP / SIGCONT / SIGKILL the writer.
fn signal(child: &Writer, sig: libc::c_int) {
    // SAFETY: plain syscall on our own child's pid (not yet reaped).
    assert_eq!(unsafe { libc::kill(child.0.id() as libc::pid_t, sig) }, 0);
}

#[test]
fn killed_writer_on_a_leaves_no_block_on_b() {
    if let Ok(ns) = std::env::var(ROLE) {
        // A writer that stores until killed must not outlive a parent that died first.
        // SAFETY: plain prctl(2) on this process.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        let root = PathBuf::from(std::env::var("KVR_GLUSTER_ROOT").unwrap());
        let named = std::env::var_os("KVR_GLUSTER_NAMED").is_some();
        let mode = if named {
            WriteMode::NamedTemp
        } else {
            WriteMode::Auto
        };
        return writer_role(&root, &ns, mode);
    }
    let Some((a, b)) = hosts() else { return };
    for mode in MODES {
        killed_writer_on_a(&a, &b, mode);
    }
}

fn killed_writer_on_a(a: &Path, b: &Path, mode: WriteMode) {
    let ns = Namespace::new(a, &format!("killed-{mode:?}"));
    let dir_a = a.join(&ns.name);
    let dir_b = b.join(&ns.name);
    for attempt in 0..20 {
        let mut child = Writer(
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "killed_writer_on_a_leaves_no_block_on_b",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(ROLE, &ns.name)
                .env("KVR_GLUSTER_ROOT", a)
                .envs((mode == WriteMode::NamedTemp).then_some(("KVR_GLUSTER_NAMED", "1")))
                .spawn()
                .unwrap(),
        );
        // Freeze the writer while it has temp files: alive (its writer lock held) but
        // stopped.
        // (Generous: the writer first creates its store's 256 directories through FUSE.)
        let deadline = Instant::now() + Duration::from_secs(120);
        let live = loop {
            assert!(Instant::now() < deadline, "the writer made no temp files");
            std::thread::sleep(Duration::from_millis(20 + 13 * attempt));
            signal(&child, libc::SIGSTOP);
            let all = temp_files(&dir_a);
            let t: HashSet<PathBuf> = all
                .iter()
                .filter(|p| writer_alive(&dir_a, p))
                .cloned()
                .collect();
            if !t.is_empty() {
                break t;
            }
            signal(&child, libc::SIGCONT);
        };
        // Nothing unpublished is a block on B, even while its writer lives.
        let on_b = open_as(b, &ns.name, mode);
        for p in live
            .iter()
            .filter(|p| p.to_string_lossy().ends_with(".kvb"))
        {
            let hex = p.file_stem().unwrap().to_str().unwrap();
            let k = Key::from_hex(hex).unwrap();
            assert!(!on_b.contains(&k), "{} is a block on B", p.display());
            let mut out = vec![0u8; big_len(key_index(&k))];
            let e = on_b.load(&k, &mut out).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NotFound, "{}: {e}", p.display());
        }
        // B's open while A's writer lives must leave its temp files alone.
        drop(on_b);
        let kept = live.iter().filter(|p| {
            let rel = p.strip_prefix(&dir_a).unwrap();
            std::fs::symlink_metadata(dir_b.join(rel)).is_ok()
        });
        assert_eq!(
            kept.count(),
            live.len(),
            "B's open removed temp files of a live writer"
        );
        signal(&child, libc::SIGKILL);
        child.0.wait().unwrap();
        // A's writer lock is released when the dead writer's descriptors close; B's next
        // open then removes what it left (poll: the release travels through A's client).
        // (A file written in place whose writer was killed before its first write landed
        // names no writer: it stays until `UNPUBLISHED_GRACE` old, no block meanwhile.)
        let deadline = Instant::now() + Duration::from_secs(20);
        let on_b = loop {
            let s = open_as(b, &ns.name, mode);
            if temp_files(&dir_b)
                .iter()
                .all(|p| p.to_string_lossy().ends_with(".kvb") && header_writer(p).is_none())
            {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "B's open left a dead writer's temp files: {:?}",
                temp_files(&dir_b)
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        // Whatever B sees as a block is complete and correct.
        for p in walk(&dir_b) {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let Some(hex) = name.strip_suffix(".kvb") else {
                continue;
            };
            let k = Key::from_hex(hex).unwrap();
            if is_unpublished(&p) {
                assert!(!on_b.contains(&k), "{} is a block on B", p.display());
                continue;
            }
            let mut out = vec![0u8; big_len(key_index(&k))];
            on_b.load(&k, &mut out)
                .unwrap_or_else(|e| panic!("visible block {} fails to load: {e}", p.display()));
            assert!(
                out == content(&k, out.len()),
                "wrong bytes in {}",
                p.display()
            );
        }
        if attempt >= 2 {
            break;
        }
    }
}

#[test]
fn gc_on_a_while_b_loads() {
    let Some((a, b)) = hosts() else { return };
    let ns = Namespace::new(&a, "gc");
    let on_a = open(&a, &ns.name);
    let ids: Vec<u64> = (0..600).collect();
    for r in store_batch(&on_a, &ids) {
        r.unwrap();
    }
    let on_b = open(&b, &ns.name);
    let stop = AtomicBool::new(false);
    let (hits, misses) = (AtomicU64::new(0), AtomicU64::new(0));
    let report = std::thread::scope(|sc| {
        for t in 0..4u64 {
            let (on_b, stop, ids) = (&on_b, &stop, &ids);
            let (hits, misses) = (&hits, &misses);
            sc.spawn(move || {
                let mut n = t;
                while !stop.load(Relaxed) {
                    let i = ids[(n % ids.len() as u64) as usize];
                    // A block removed under the load (even after its open: Gluster's
                    // open-behind defers the real open) is a miss, never wrong bytes.
                    match load_checked(on_b, i) {
                        Ok(true) => hits.fetch_add(1, Relaxed),
                        Ok(false) => misses.fetch_add(1, Relaxed),
                        Err(e) => panic!("load of block {i} during gc: {e}"),
                    };
                    n += 7;
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        // What `kvr fs gc --max-bytes` runs, on host A: trim to about a third.
        let bound = ids.iter().map(|&i| block_len(i) as u64 + 4096).sum::<u64>() / 3;
        let report = maintenance::gc(&a, Some(&ns.name), bound).unwrap();
        let report2 = maintenance::gc(&a, Some(&ns.name), 0).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Relaxed);
        (report, report2)
    });
    assert!(report.0.removed_blocks > 0);
    assert_eq!(report.0.removed_blocks + report.1.removed_blocks, 600);
    eprintln!(
        "gc under load: {} hits, {} misses, 0 wrong bytes",
        hits.load(Relaxed),
        misses.load(Relaxed)
    );
    for &i in &ids {
        assert!(!load_checked(&on_b, i).unwrap(), "block {i} survived gc");
    }
}

#[test]
fn corrupted_through_a_is_detected_on_b() {
    let Some((a, b)) = hosts() else { return };
    let ns = Namespace::new(&a, "corrupt");
    let on_a = open(&a, &ns.name);
    let ids: Vec<u64> = (0..20).collect();
    for r in store_batch(&on_a, &ids) {
        r.unwrap();
    }
    let bad: Vec<u64> = ids.iter().copied().filter(|i| i % 4 == 0).collect();
    for &i in &bad {
        // A payload byte (after the 4 KiB header), flipped through host A's mount.
        flip_byte(&on_a.block_path(&key(i)), 4096 + 1000 + i);
    }
    let on_b = open(&b, &ns.name);
    for &i in &ids {
        let r = load_checked(&on_b, i);
        if bad.contains(&i) {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "block {i}: {e}");
            // Removed by B: a miss from now on, on both hosts.
            assert!(!load_checked(&on_b, i).unwrap());
            assert!(!on_a.contains(&key(i)) || !load_checked(&on_a, i).unwrap());
        } else {
            assert!(r.unwrap());
        }
    }
    let st = on_b.stats();
    assert_eq!(st.corrupt_dropped, bad.len() as u64);
}
