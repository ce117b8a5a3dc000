//! What a process SIGKILLed in the middle of an open leaves behind is removed by the next
//! open (issue 11, items 4 and 8): O_DIRECT and O_TMPFILE probe files in an fs store's
//! directory, the fully allocated temp file of a slot file killed while being created.
//! Children are this test binary re-executed with a role; each loops over the open until
//! it is killed at a random moment, many times, within a time bound.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvr::io::DirectIo;
use kvr::{DiskConfig, FsConfig, FsStore, SlotFile};

use common::bounded::names_starting;
use common::Rng;

const ROLE: &str = "KVR_KILLED_OPENS_ROLE";
const DIR: &str = "KVR_KILLED_OPENS_DIR";

fn fs_config(root: &Path) -> FsConfig {
    let mut c = FsConfig::new(root, "ns");
    c.direct_io = DirectIo::Auto;
    c.read_threads = 1;
    c.write_threads = 1;
    c
}

fn slot_config(dir: &Path) -> DiskConfig {
    let mut c = DiskConfig::new(dir.join("slots"), 1 << 20, 64);
    c.io_threads = 1;
    c
}

/// A child killed (SIGKILL) and reaped on drop.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts this binary as `role` in `dir` and waits until it says it is looping.
fn start(test: &str, role: &str, dir: &Path) -> Kid {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(DIR, dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the child died");
        if line.trim_end().ends_with("looping") {
            break;
        }
    }
    Kid(child)
}

/// In a child: loops over `open_once` forever (until killed).
fn run_role(open_once: impl Fn(&Path)) -> ! {
    let dir = PathBuf::from(std::env::var(DIR).unwrap());
    println!("looping");
    loop {
        open_once(&dir);
    }
}

/// Kills a looping child `rounds` times at random moments (within `deadline`); after each
/// kill, counts what `left_by_dead` finds, runs `next_open`, and asserts nothing is left.
/// Returns how many kills left something for the next open to remove.
fn kill_and_reopen(
    test: &str,
    role: &str,
    dir: &Path,
    rounds: u32,
    left_by_dead: impl Fn() -> Vec<String>,
    next_open: impl Fn(),
) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut rng = Rng(0x5eed_0000 + rounds as u64);
    let mut left = 0;
    for round in 0..rounds {
        if Instant::now() >= deadline {
            println!("{test}: stopped after {round} rounds (time bound)");
            break;
        }
        let kid = start(test, role, dir);
        std::thread::sleep(Duration::from_micros(rng.below(20_000)));
        drop(kid); // SIGKILL, reaped
        if !left_by_dead().is_empty() {
            left += 1;
        }
        next_open();
        let after = left_by_dead();
        assert!(
            after.is_empty(),
            "round {round}: the next open left {after:?}"
        );
    }
    println!("{test}: {left} of {rounds} kills left files that the next open removed");
    left
}

#[test]
fn killed_fs_opens_leave_no_probe_files() {
    if std::env::var(ROLE).as_deref() == Ok("fs") {
        run_role(|dir| drop(FsStore::open(&fs_config(dir)).unwrap()));
    }
    let d = tempfile::tempdir().unwrap();
    let store_dir = d.path().join("ns");
    let probes = || {
        let mut v = names_starting(&store_dir, ".kvr_direct_probe.");
        v.extend(names_starting(&store_dir, ".kvr_tmpfile_probe."));
        v
    };
    kill_and_reopen(
        "killed_fs_opens_leave_no_probe_files",
        "fs",
        d.path(),
        100,
        probes,
        || drop(FsStore::open(&fs_config(d.path())).unwrap()),
    );
}

#[test]
fn a_slot_file_killed_while_being_created_leaves_no_temp_file() {
    if std::env::var(ROLE).as_deref() == Ok("slot") {
        run_role(|dir| {
            let cfg = slot_config(dir);
            drop(SlotFile::open(&cfg).unwrap());
            // Created again on the next turn: the window this test aims at.
            std::fs::remove_file(&cfg.path).unwrap();
        });
    }
    let d = tempfile::tempdir().unwrap();
    let temps = || {
        names_starting(d.path(), ".slots.")
            .into_iter()
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    };
    let left = kill_and_reopen(
        "a_slot_file_killed_while_being_created_leaves_no_temp_file",
        "slot",
        d.path(),
        60,
        temps,
        || {
            let cfg = slot_config(d.path());
            drop(SlotFile::open(&cfg).unwrap());
            let _ = std::fs::remove_file(&cfg.path);
        },
    );
    assert!(
        left > 0,
        "no kill landed while a temp file existed: the test proved nothing"
    );
}
