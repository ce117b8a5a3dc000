//! The region file's lifetime across processes (issue 11, items 3 and 9): fork after open,
//! close in any order, close at the same instant: the last one out removes the file, and
//! never while a live process holds it; two regions racing for space that fits one: at
//! most one fails. Children are `fork`ed (the inherited handle is the point of item 3a);
//! a child touches only the region API and raw system calls, and ends with `_exit`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvr::{ErrorKind, Layout, Region, RegionConfig, Role};

/// One test at a time: a child forked by one test would inherit the pipes of another
/// running on another thread, and hold their write ends open (no end of file, a hang).
fn serial() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

fn config(dir: &Path, name: &str, layout: Layout, role: Role, create: bool) -> RegionConfig {
    let mut c = RegionConfig::new(name, layout, role);
    c.dir = dir.to_path_buf();
    c.create = create;
    c.populate = false;
    c
}

fn region_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("kvr_{name}.mmap"))
}

fn small() -> Layout {
    Layout::new(4, 4096, 2).unwrap()
}

/// A pipe: (read end, write end).
fn pipe() -> (i32, i32) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out-array of two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    (fds[0], fds[1])
}

/// Reads one byte; false at end of file (every write end closed).
fn read_byte(fd: i32) -> bool {
    let mut b = 0u8;
    loop {
        // SAFETY: reads one byte into a live local.
        let n = unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
        if n >= 0 {
            return n == 1;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}

fn write_byte(fd: i32, b: u8) {
    // SAFETY: writes one byte from a live local.
    assert_eq!(unsafe { libc::write(fd, (&b as *const u8).cast(), 1) }, 1);
}

fn close(fd: i32) {
    // SAFETY: closes a descriptor this test owns.
    unsafe { libc::close(fd) };
}

/// Forks a child that runs `body` and `_exit`s with its result (0 for success); never
/// returns in the child.
fn fork_child(body: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child runs only `body` (region calls and system calls) and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
        // SAFETY: ends the child without running the parent's destructors or atexit hooks.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Waits for `pid`; its exit code.
fn reap(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child into a live local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    }
}

/// Waits until `path` is gone (a closing process may still be between its last steps),
/// at most a second; whether it went.
fn gone(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    while path.exists() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

#[derive(Clone, Copy, Debug)]
enum Order {
    /// The creator closes first, then the workers (the README's topology).
    CreatorFirst,
    /// The workers close (and exit) first, then the creator.
    WorkersFirst,
    /// The workers close both their own and the inherited handle, after the creator.
    WorkersCloseInheritedToo,
}

/// The creator opens the region, forks two workers that attach their own handles; they
/// all close in `order`. The file exists while anyone holds it and is gone after.
fn fork_topology(dir: &Path, round: u32, order: Order) {
    let name = format!("fork{round}");
    let path = region_file(dir, &name);
    let layout = small();
    let creator = Region::open(&config(dir, &name, layout, Role::Scheduler, true)).unwrap();
    let mut creator = Some(creator);
    let (ready_r, ready_w) = pipe();
    let (go_r, go_w) = pipe();
    let inherited: *mut Option<Region> = &mut creator;
    let kids: Vec<_> = (0..2)
        .map(|rank| {
            let cfg = config(dir, &name, layout, Role::Rank(rank), false);
            fork_child(move || {
                close(ready_r);
                close(go_w);
                let Ok(own) = Region::open(&cfg) else {
                    return 2;
                };
                write_byte(ready_w, 1);
                read_byte(go_r); // until the parent says so (or closes the pipe)
                drop(own);
                if matches!(order, Order::WorkersCloseInheritedToo) {
                    // SAFETY: the child's copy of the parent's `creator`, which nothing
                    // else in the child touches.
                    drop(unsafe { (*inherited).take() });
                }
                0 // `_exit`: the inherited handle is never closed otherwise
            })
        })
        .collect();
    close(ready_w);
    close(go_r);
    for _ in 0..2 {
        assert!(read_byte(ready_r), "a worker failed to attach");
    }
    close(ready_r);
    match order {
        Order::CreatorFirst | Order::WorkersCloseInheritedToo => {
            drop(creator.take());
            assert!(
                path.exists(),
                "{order:?}: removed while the workers hold it"
            );
            close(go_w);
            for k in kids {
                assert_eq!(reap(k), 0);
            }
        }
        Order::WorkersFirst => {
            close(go_w);
            for k in kids {
                assert_eq!(reap(k), 0);
            }
            assert!(
                path.exists(),
                "{order:?}: removed while the creator holds it"
            );
            drop(creator.take());
        }
    }
    assert!(
        gone(&path),
        "round {round} {order:?}: region file left behind"
    );
}

#[test]
fn fork_after_open_close_in_any_order_leaves_no_file() {
    let _serial = serial();
    let d = tempfile::tempdir_in("/dev/shm").unwrap();
    for round in 0..30 {
        for order in [
            Order::CreatorFirst,
            Order::WorkersFirst,
            Order::WorkersCloseInheritedToo,
        ] {
            fork_topology(d.path(), round * 3 + order as u32, order);
        }
    }
}

#[test]
fn an_inherited_handle_keeps_working_after_the_parent_closes() {
    let _serial = serial();
    let d = tempfile::tempdir_in("/dev/shm").unwrap();
    let cfg = config(d.path(), "inherit", small(), Role::Scheduler, true);
    let parent = Region::open(&cfg).unwrap();
    let data = parent.data_ptr() as usize;
    let (go_r, go_w) = pipe();
    let (done_r, done_w) = pipe();
    let kid = fork_child(move || {
        close(go_w);
        close(done_r);
        read_byte(go_r);
        // The parent has closed: the inherited mapping still holds the same bytes.
        // SAFETY: the child's copy of the parent's mapping, still mapped (inherited
        // handles are closed only by `_exit`).
        let first = unsafe { *(data as *const u8) };
        write_byte(done_w, first);
        0
    });
    close(go_r);
    close(done_w);
    // SAFETY: the region's data area, mapped while `parent` lives.
    unsafe { *(data as *mut u8) = 0xa5 };
    let path = parent.path().to_path_buf();
    drop(parent);
    // The inherited handle keeps the memory, not the file (see `region::fork`): the
    // parent was the last process holding it.
    assert!(gone(&path));
    close(go_w);
    let mut b = 0u8;
    // SAFETY: reads one byte into a live local.
    assert_eq!(
        unsafe { libc::read(done_r, (&mut b as *mut u8).cast(), 1) },
        1
    );
    assert_eq!(b, 0xa5, "the child reads what the parent wrote");
    assert_eq!(reap(kid), 0);
    close(done_r);
}

#[test]
fn processes_closing_at_the_same_instant_remove_the_file() {
    let _serial = serial();
    let d = tempfile::tempdir_in("/dev/shm").unwrap();
    let layout = small();
    const CLOSERS: usize = 4;
    for round in 0..150 {
        let name = format!("together{round}");
        let path = region_file(d.path(), &name);
        let (ready_r, ready_w) = pipe();
        let (go_r, go_w) = pipe();
        // Forked before any region is open here: no inherited handles, only own ones.
        let kids: Vec<_> = (0..CLOSERS)
            .map(|_| {
                let cfg = config(d.path(), &name, layout, Role::Scheduler, true);
                fork_child(move || {
                    close(ready_r);
                    close(go_w);
                    let Ok(own) = Region::open(&cfg) else {
                        return 2;
                    };
                    write_byte(ready_w, 1);
                    read_byte(go_r); // end of file wakes every closer at once
                    drop(own);
                    0
                })
            })
            .collect();
        close(ready_w);
        close(go_r);
        for _ in 0..CLOSERS {
            assert!(read_byte(ready_r), "a closer failed to open");
        }
        close(ready_r);
        assert!(path.exists());
        close(go_w);
        for k in kids {
            assert_eq!(reap(k), 0);
        }
        assert!(
            gone(&path),
            "round {round}: no closer removed the region file"
        );
    }
}

/// Mounts a tmpfs of `size` under `dir`; `None` (with a message) where mounting is not
/// permitted. Unmounted on drop.
fn small_tmpfs(dir: &Path, size: &str) -> Option<Unmount> {
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let o = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&mnt)
        .output();
    match o {
        Ok(o) if o.status.success() => Some(Unmount(mnt)),
        Ok(o) => {
            println!(
                "SKIP: mounting a tmpfs is not permitted here ({})",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            println!("SKIP: cannot run mount: {e}");
            None
        }
    }
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn two_regions_racing_for_space_that_fits_one_fail_at_most_once() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let Some(mnt) = small_tmpfs(d.path(), "48m") else {
        return;
    };
    // 32 MiB each: one fits in 48 MiB, two do not.
    let layout = Layout::new(4096, 4096, 2).unwrap();
    for round in 0..30 {
        let (ready_r, ready_w) = pipe();
        let (go_r, go_w) = pipe();
        let (result_r, result_w) = pipe();
        // Held open by the parent until both results are in: a child that has tried keeps
        // its region until then. (Not `go`: a fast child would read its rival's go byte.)
        let (hold_r, hold_w) = pipe();
        let kids: Vec<_> = (0..2)
            .map(|i| {
                let cfg = config(
                    &mnt.0,
                    &format!("space{round}_{i}"),
                    layout,
                    Role::Scheduler,
                    true,
                );
                fork_child(move || {
                    close(ready_r);
                    close(go_w);
                    close(result_r);
                    close(hold_w);
                    write_byte(ready_w, 1);
                    read_byte(go_r);
                    let r = Region::open(&cfg);
                    let code = match &r {
                        Ok(_) => b'o',
                        Err(e) if e.kind() == ErrorKind::NoSpace => b'n',
                        Err(_) => b'e',
                    };
                    write_byte(result_w, code);
                    // Hold it until both have tried (the parent closes the pipe).
                    read_byte(hold_r);
                    drop(r);
                    0
                })
            })
            .collect();
        close(ready_w);
        close(go_r);
        close(result_w);
        close(hold_r);
        for _ in 0..2 {
            assert!(read_byte(ready_r));
        }
        close(ready_r);
        // One byte each: both start together.
        write_byte(go_w, 1);
        write_byte(go_w, 1);
        let mut results = Vec::new();
        for _ in 0..2 {
            let mut b = 0u8;
            // SAFETY: reads one byte into a live local.
            assert_eq!(
                unsafe { libc::read(result_r, (&mut b as *mut u8).cast(), 1) },
                1
            );
            results.push(b);
        }
        close(go_w);
        close(result_r);
        close(hold_w);
        for k in kids {
            assert_eq!(reap(k), 0);
        }
        assert!(
            results.contains(&b'o') && !results.contains(&b'e'),
            "round {round}: {:?} (o: opened, n: no space, e: other error)",
            String::from_utf8_lossy(&results)
        );
        let left: Vec<_> = std::fs::read_dir(&mnt.0).unwrap().collect();
        assert!(left.is_empty(), "round {round}: left behind: {left:?}");
    }
}
