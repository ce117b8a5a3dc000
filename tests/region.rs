//! Shared region: multi-process layout, crash safety and the attach protocol, through the
//! safe Rust API. Child processes are this test binary re-executed with a role in the env.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kvr::{ErrorKind, Layout, Region, RegionConfig, Role};

const ROLE_ENV: &str = "KVR_REGION_TEST_ROLE";

fn unique(stem: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "rt_{stem}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn shm(name: &str) -> PathBuf {
    Path::new("/dev/shm").join(format!("kvr_{name}.mmap"))
}

fn config(name: &str, layout: Layout, role: Role, create: bool) -> RegionConfig {
    let mut c = RegionConfig::new(name, layout, role);
    c.create = create;
    c
}

fn pattern(rank: u32, block: u64, tensor: u32, i: u64) -> u8 {
    (rank as u64 * 61 + block * 7 + tensor as u64 * 131 + i * 3 + 1) as u8
}

/// A child process that is killed if the test fails before reaping it.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns this binary as a child running `role` (see `child_entry_point`).
fn spawn_role(role: &str) -> Kid {
    Kid(Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_entry_point",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_ENV, role)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child"))
}

fn wait_ready(child: &mut Kid) {
    let out = child.0.stdout.as_mut().unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(out);
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "child exited before ready"
        );
        // libtest prints "test child_entry_point ... " before the child's own output.
        if line.trim_end().ends_with("READY") {
            return;
        }
    }
}

/// Not a test of its own: the body of child processes (does nothing without the env var).
#[test]
fn child_entry_point() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let parts: Vec<&str> = role.split(':').collect();
    let layout = Layout::new(
        parts[2].parse().unwrap(),
        parts[3].parse().unwrap(),
        parts[4].parse().unwrap(),
    )
    .unwrap();
    let rank: u32 = parts[5].parse().unwrap();
    match parts[0] {
        // Create or attach, mark block 0, say READY, then live until killed.
        "hold" => {
            let region = Region::open(&config(parts[1], layout, Role::Rank(rank), true)).unwrap();
            let v = region.create_view(layout.cpu_page_size).unwrap();
            v.write_block(0, &vec![0xAB; layout.cpu_page_size as usize])
                .unwrap();
            println!("READY");
            std::thread::sleep(Duration::from_secs(600));
        }
        // Attach only, write two tensors' patterns into every block, exit.
        "write" => {
            let region = Region::open(&config(parts[1], layout, Role::Rank(rank), false)).unwrap();
            let sizes = [
                layout.cpu_page_size / 3,
                layout.cpu_page_size - layout.cpu_page_size / 3,
            ];
            for (t, &size) in sizes.iter().enumerate() {
                let v = region.create_view(size).unwrap();
                for b in 0..layout.num_blocks {
                    let data: Vec<u8> = (0..size).map(|i| pattern(rank, b, t as u32, i)).collect();
                    v.write_block(b, &data).unwrap();
                }
            }
            assert_eq!(
                region.create_view(1).unwrap_err().kind(),
                ErrorKind::TooLarge
            );
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

#[test]
fn four_ranks_in_processes_and_the_scheduler_see_the_interleaving() {
    let name = unique("four");
    let layout = Layout::new(12, 3000, 4).unwrap();
    let sched = Region::open(&config(&name, layout, Role::Scheduler, true)).unwrap();
    assert!(sched.info().created);
    let mut kids: Vec<Kid> = (0..4)
        .map(|r| spawn_role(&format!("write:{name}:12:3000:4:{r}")))
        .collect();
    for k in &mut kids {
        assert!(k.0.wait().unwrap().success());
    }
    let row = sched.row_view();
    let mut buf = vec![0u8; layout.row_stride() as usize];
    let sizes = [1000u64, 2000];
    for b in 0..layout.num_blocks {
        row.read_block(b, &mut buf).unwrap();
        for r in 0..4u32 {
            let mut off = (r as u64 * 3000) as usize;
            for (t, &size) in sizes.iter().enumerate() {
                for i in 0..size {
                    assert_eq!(
                        buf[off + i as usize],
                        pattern(r, b, t as u32, i),
                        "block {b} rank {r} tensor {t} byte {i}"
                    );
                }
                off += size as usize;
            }
        }
    }
    drop(sched);
    assert!(!shm(&name).exists());
}

#[test]
fn a_sigkilled_creators_file_is_replaced_on_next_open() {
    let name = unique("kill");
    let mut kid = spawn_role(&format!("hold:{name}:4:4096:1:0"));
    wait_ready(&mut kid);
    kid.0.kill().unwrap(); // SIGKILL
    kid.0.wait().unwrap();
    assert!(shm(&name).exists(), "SIGKILL leaves the file behind");
    let layout = Layout::new(4, 4096, 1).unwrap();
    let region = Region::open(&config(&name, layout, Role::Rank(0), true)).unwrap();
    assert!(region.info().created, "stale file must be replaced");
    let mut b = vec![1u8; 4096];
    region
        .create_view(4096)
        .unwrap()
        .read_block(0, &mut b)
        .unwrap();
    assert!(b.iter().all(|&x| x == 0), "fresh region");
}

#[test]
fn a_live_holders_file_is_never_stolen() {
    let name = unique("live");
    let mut kid = spawn_role(&format!("hold:{name}:4:4096:2:0"));
    wait_ready(&mut kid);
    let layout = Layout::new(4, 4096, 2).unwrap();
    let region = Region::open(&config(&name, layout, Role::Scheduler, true)).unwrap();
    assert!(!region.info().created);
    let mut row = vec![0u8; 8192];
    region.row_view().read_block(0, &mut row).unwrap();
    assert!(
        row[..4096].iter().all(|&x| x == 0xAB),
        "sees the live holder's bytes"
    );
    kid.0.kill().unwrap();
    kid.0.wait().unwrap();
    drop(region); // now the last holder
    assert!(!shm(&name).exists());
}

#[test]
fn layout_mismatch_names_both_layouts() {
    let name = unique("mismatch");
    let a = Region::open(&config(
        &name,
        Layout::new(8, 4096, 2).unwrap(),
        Role::Rank(0),
        true,
    ))
    .unwrap();
    let e = Region::open(&config(
        &name,
        Layout::new(9, 4096, 2).unwrap(),
        Role::Rank(1),
        true,
    ))
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LayoutMismatch);
    let msg = e.to_string();
    assert!(
        msg.contains("8 blocks x 2 workers x 4096 B/slice") && msg.contains("9 blocks"),
        "{msg}"
    );
    drop(a);
}

#[test]
fn attach_without_creator_times_out() {
    let mut c = config(
        &unique("timeout"),
        Layout::new(2, 4096, 1).unwrap(),
        Role::Rank(0),
        false,
    );
    c.attach_timeout = Duration::from_millis(120);
    let t0 = Instant::now();
    let e = Region::open(&c).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(t0.elapsed() >= Duration::from_millis(100) && t0.elapsed() < Duration::from_secs(3));
}

#[test]
fn racing_creators_agree_on_one_file() {
    let name = unique("race");
    let layout = Layout::new(16, 8192, 8).unwrap();
    let regions: Vec<Region> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8u32)
            .map(|r| {
                let c = config(&name, layout, Role::Rank(r), true);
                s.spawn(move || Region::open(&c).unwrap())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        regions.iter().filter(|r| r.info().created).count(),
        1,
        "exactly one creator"
    );
    // All eight map the same file: a write through rank 3's view is seen by rank 5's row view.
    regions[3]
        .create_view(8192)
        .unwrap()
        .write_block(2, &[9u8; 8192])
        .unwrap();
    let mut row = vec![0u8; layout.row_stride() as usize];
    regions[5].row_view().read_block(2, &mut row).unwrap();
    assert!(row[3 * 8192..4 * 8192].iter().all(|&x| x == 9));
    assert!(row[..3 * 8192].iter().all(|&x| x == 0));
    drop(regions);
    assert!(!shm(&name).exists());
}

#[test]
fn only_the_last_close_removes_the_file() {
    let name = unique("last");
    let layout = Layout::new(2, 4096, 2).unwrap();
    let a = Region::open(&config(&name, layout, Role::Rank(0), true)).unwrap();
    let b = Region::open(&config(&name, layout, Role::Rank(1), false)).unwrap();
    drop(a);
    assert!(shm(&name).exists());
    drop(b);
    assert!(!shm(&name).exists());
}

#[test]
fn too_large_for_free_space_fails_at_open() {
    let name = unique("huge");
    let layout = Layout::new(1 << 20, 1 << 20, 1).unwrap(); // 1 TiB
    let e = Region::open(&config(&name, layout, Role::Rank(0), true)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    assert!(e.to_string().contains("needs 1099511631872 bytes"), "{e}");
    assert!(!shm(&name).exists());
    let temps = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(&name))
        .count();
    assert_eq!(temps, 0, "no temp file left behind");
}

#[test]
fn orphaned_temp_files_of_dead_creators_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique("orphan");
    let orphan = dir.path().join(format!(".kvr_{name}.mmap.999999.1.tmp"));
    std::fs::write(&orphan, b"half-built").unwrap();
    let mut c = config(&name, Layout::new(2, 4096, 1).unwrap(), Role::Rank(0), true);
    c.dir = dir.path().to_owned();
    let r = Region::open(&c).unwrap();
    assert!(!orphan.exists());
    assert!(r.path().starts_with(dir.path()));
}

#[test]
fn views_reject_bad_blocks_and_lengths() {
    let name = unique("views");
    let r = Region::open(&config(
        &name,
        Layout::new(3, 100, 2).unwrap(),
        Role::Rank(1),
        true,
    ))
    .unwrap();
    let v = r.create_view(60).unwrap();
    assert_eq!(
        v.write_block(3, &[0; 60]).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        v.write_block(0, &[0; 59]).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    let w = r.create_view(40).unwrap();
    // SAFETY of the arithmetic below is not at stake: we only compare addresses.
    assert_eq!(w.as_ptr() as usize - v.as_ptr() as usize, 60);
    assert_eq!(v.as_ptr() as usize - r.data_ptr() as usize, 100);
}

#[test]
fn list_shows_live_and_stale_regions_and_remove_refuses_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(2, 4096, 1).unwrap();
    let mut live_cfg = config("live", layout, Role::Rank(0), true);
    live_cfg.dir = dir.path().to_owned();
    let live = Region::open(&live_cfg).unwrap();
    // A stale file: a valid region whose holders are gone (copy of the live one's file).
    std::fs::copy(live.path(), dir.path().join("kvr_stale.mmap")).unwrap();
    std::fs::write(dir.path().join("kvr_junk.mmap"), b"not a region").unwrap();
    let entries = kvr::region::list(dir.path()).unwrap();
    let names: Vec<_> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.live, e.layout.is_ok()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("junk", false, false),
            ("live", true, true),
            ("stale", false, true)
        ]
    );
    let e = kvr::region::remove(dir.path(), "live").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    kvr::region::remove(dir.path(), "stale").unwrap();
    assert!(!dir.path().join("kvr_stale.mmap").exists());
    drop(live);
    assert!(!dir.path().join("kvr_live.mmap").exists());
}
