//! Advisory locks the kernel releases when their holder dies (SIGKILL included), so a lock
//! proves a live holder and a dead one never blocks anyone.
//!
//! - `flock` ([`try_lock`]): whole-file, owned by the open file description. Owner locks (the
//!   slot file) and "a writer is still at work" markers (the fs store's writer lock files).
//! - Open-file-description record locks on byte 0 ([`try_lock_byte0`], [`byte0_locked_by_others`]):
//!   unlike `flock`, they can be *queried* without being taken (`F_OFD_GETLK`), so a prober
//!   never makes a stale file look live to another prober (the region's liveness protocol).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Shared or exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Any number of shared holders, no exclusive one (a read lock).
    Shared,
    /// One holder only (a write lock).
    Exclusive,
}

/// Takes a `flock` on `file` without waiting; `Ok(false)` when a conflicting one is held.
/// Converts a lock this description already holds (shared to exclusive and back).
pub fn try_lock(file: &File, mode: LockMode) -> io::Result<bool> {
    flock(file, flock_op(mode) | libc::LOCK_NB)
}

fn flock_op(mode: LockMode) -> libc::c_int {
    match mode {
        LockMode::Shared => libc::LOCK_SH,
        LockMode::Exclusive => libc::LOCK_EX,
    }
}

/// `flock(op)`, retrying EINTR; `Ok(false)` for EWOULDBLOCK (only with `LOCK_NB`).
fn flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: plain syscall on a descriptor `file` keeps open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// A record lock description of byte 0.
fn byte0(kind: libc::c_int) -> libc::flock {
    // SAFETY: `flock` is plain data; all-zero is valid (and `l_pid` must be 0 for OFD locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 1;
    fl
}

/// Takes (or converts to) an OFD lock on byte 0 without waiting; `Ok(false)` if another
/// open file description holds a conflicting one.
pub fn try_lock_byte0(file: &File, mode: LockMode) -> io::Result<bool> {
    let kind = match mode {
        LockMode::Shared => libc::F_RDLCK,
        LockMode::Exclusive => libc::F_WRLCK,
    };
    let fl = byte0(kind);
    // SAFETY: a valid descriptor and a valid flock struct for the duration of the call.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// Releases this open file description's OFD lock on byte 0 (if any).
pub fn unlock_byte0(file: &File) -> io::Result<()> {
    let fl = byte0(libc::F_UNLCK);
    // SAFETY: a valid descriptor and a valid flock struct for the duration of the call.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether any other open file description holds an OFD lock on byte 0 (asks; takes
/// nothing).
pub fn byte0_locked_by_others(file: &File) -> io::Result<bool> {
    let mut fl = byte0(libc::F_WRLCK);
    // SAFETY: a valid descriptor and a valid, writable flock struct.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flock_conflicts_between_descriptions_and_ends_with_them() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let open = || {
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&p)
                .unwrap()
        };
        let (a, b, c, e) = (open(), open(), open(), open());
        assert!(try_lock(&a, LockMode::Shared).unwrap());
        assert!(
            try_lock(&b, LockMode::Shared).unwrap(),
            "shared with shared"
        );
        assert!(!try_lock(&c, LockMode::Exclusive).unwrap());
        drop((a, b));
        assert!(try_lock(&c, LockMode::Exclusive).unwrap(), "holders closed");
        assert!(!try_lock(&e, LockMode::Shared).unwrap());
        drop(c);
        assert!(try_lock(&e, LockMode::Shared).unwrap());
    }

    #[test]
    fn byte0_locks_can_be_queried_without_taking_them() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        // Record locks need a descriptor open for reading (shared) or writing (exclusive).
        let a = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .unwrap();
        let b = File::options().read(true).write(true).open(&p).unwrap();
        assert!(!byte0_locked_by_others(&b).unwrap());
        assert!(try_lock_byte0(&a, LockMode::Shared).unwrap());
        assert!(byte0_locked_by_others(&b).unwrap());
        assert!(!byte0_locked_by_others(&a).unwrap(), "its own lock");
        assert!(!try_lock_byte0(&b, LockMode::Exclusive).unwrap());
        assert!(
            try_lock_byte0(&a, LockMode::Exclusive).unwrap(),
            "sole holder converts"
        );
        drop(a);
        assert!(try_lock_byte0(&b, LockMode::Exclusive).unwrap());
        unlock_byte0(&b).unwrap();
        let c = File::options().read(true).open(&p).unwrap();
        assert!(!byte0_locked_by_others(&c).unwrap(), "unlocked");
    }
}
