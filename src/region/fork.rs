//! Open regions across `fork(2)`.
//!
//! A forked child inherits each open region's descriptor and mapping, and both still refer
//! to the parent's open file description, so the parent's OFD read lock (the region's
//! liveness mark, see [`super::shm`]) lives on for as long as the child keeps either, and a
//! close in the child would release the parent's lock. In the README's topology (the
//! scheduler creates the region, forks workers that attach their own handles, and each
//! worker `_exit`s when done) no close ever saw itself as the last one: the file stayed in
//! `/dev/shm` after every process had closed.
//!
//! So in the child, right after the fork, every open region's inherited handle gets an
//! open file description of its own: the file is opened anew through `/proc/self/fd/N`,
//! mapped over the inherited mapping (same file, same bytes, same address: pointers into
//! it stay valid, views keep working) and moved onto descriptor `N`. The new description
//! holds no lock: the child holds no reference to the parent's lock, and a close in the
//! child (of either handle) touches only its own. An inherited handle therefore does not
//! keep the region's file alive: a child that must keep it after its parent closes opens
//! (attaches) its own handle, as the README's workers do; the last such handle to close
//! removes the file, while an inherited handle's memory stays valid until it is closed.
//!
//! The open regions are listed in a fixed array of atomics rather than behind a mutex: a
//! thread of the parent may be in the middle of registering one when another thread forks,
//! and the child's handler runs with only the forking thread, so it must never wait. The
//! handler makes only async-signal-safe system calls (`open`, `mmap`, `dup3`, `close`) and
//! allocates nothing.
//!
//! Limits: a region opened or closed by another thread at the instant of a fork, regions
//! beyond [`SLOTS`] open at once in one process, and children made without `fork` (a raw
//! `clone`, `vfork`) keep the shared description; a child's close of such a handle then
//! leaves the lock and the file alone ([`Registration::shares_parent_lock`]).

use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::Once;

/// Regions one process can have open and still hand over cleanly to a forked child.
pub const SLOTS: usize = 64;

const FREE: u8 = 0;
const CLAIMED: u8 = 1;
const READY: u8 = 2;
/// Set by the child's handler where it could not give the handle its own description.
const SHARED: u8 = 3;

struct Slot {
    state: AtomicU8,
    fd: AtomicI32,
    addr: AtomicUsize,
    len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)] // only the array initializer uses it
const EMPTY: Slot = Slot {
    state: AtomicU8::new(FREE),
    fd: AtomicI32::new(-1),
    addr: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
};

static OPEN_REGIONS: [Slot; SLOTS] = [EMPTY; SLOTS];
static INSTALL: Once = Once::new();

/// An open region's entry in the list the fork handler walks; removed on drop.
#[derive(Debug)]
pub struct Registration {
    slot: Option<usize>,
    /// The process that opened the handle.
    opener: u32,
}

impl Registration {
    /// Whether this handle still shares an open file description (and so its lock) with
    /// the process it was inherited from: a fork whose handler could not reopen it, or a
    /// region not listed (every slot taken) when the fork happened. Its close must then
    /// leave the lock alone: releasing it would release the other process's.
    pub fn shares_parent_lock(&self) -> bool {
        match self.slot {
            Some(i) => OPEN_REGIONS[i].state.load(SeqCst) == SHARED,
            None => self.opener != std::process::id(),
        }
    }
}

/// Lists an open region (its descriptor `fd` holding the read lock, and the shared mapping
/// of the whole file at `addr`, `len` bytes) for the fork handler, installed on first use.
/// With every slot taken, the region is not listed (a forked child shares its description).
pub fn register(fd: i32, addr: *mut u8, len: usize) -> Registration {
    INSTALL.call_once(|| {
        // SAFETY: registers a handler with C linkage that lives for the whole program.
        unsafe { libc::pthread_atfork(None, None, Some(reopen_in_child)) };
    });
    for (i, slot) in OPEN_REGIONS.iter().enumerate() {
        if slot
            .state
            .compare_exchange(FREE, CLAIMED, SeqCst, SeqCst)
            .is_ok()
        {
            slot.fd.store(fd, SeqCst);
            slot.addr.store(addr as usize, SeqCst);
            slot.len.store(len, SeqCst);
            slot.state.store(READY, SeqCst);
            return Registration {
                slot: Some(i),
                opener: std::process::id(),
            };
        }
    }
    Registration {
        slot: None,
        opener: std::process::id(),
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            OPEN_REGIONS[i].state.store(FREE, SeqCst);
        }
    }
}

/// The `pthread_atfork` child handler: gives every listed region its own open file
/// description (see the module docs). Where a step fails, the region stays as inherited
/// and is marked [`SHARED`].
extern "C" fn reopen_in_child() {
    for slot in &OPEN_REGIONS {
        if slot.state.load(SeqCst) != READY {
            continue;
        }
        let (fd, addr, len) = (
            slot.fd.load(SeqCst),
            slot.addr.load(SeqCst),
            slot.len.load(SeqCst),
        );
        // SAFETY: `fd` and the mapping at `addr` (`len` bytes, shared, read-write) are an
        // open region's, copied into this child by the fork; the calls below are
        // async-signal-safe system calls on them and on a stack buffer.
        if !unsafe { reopen(fd, addr as *mut libc::c_void, len) } {
            slot.state.store(SHARED, SeqCst);
        }
    }
}

/// Reopens region descriptor `fd` as a new description (unlocked), maps it over `addr` and
/// moves it onto `fd`; whether that all worked.
///
/// # Safety
/// `fd` must be an open region file and `addr..addr + len` its whole shared mapping.
unsafe fn reopen(fd: i32, addr: *mut libc::c_void, len: usize) -> bool {
    let mut path = [0u8; 32];
    let Some(path) = proc_fd_path(fd, &mut path) else {
        return false;
    };
    // SAFETY: `path` is NUL-terminated and outlives the call.
    let new = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDWR | libc::O_CLOEXEC) };
    if new < 0 {
        return false;
    }
    let remapped = {
        // SAFETY: replaces the inherited mapping of the same file at the same address with
        // one of the same length, protection and sharing (the caller's contract), so every
        // pointer into it keeps pointing at the same bytes.
        let p = unsafe {
            libc::mmap(
                addr,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                new,
                0,
            )
        };
        p == addr
    };
    // SAFETY: moves our new descriptor onto `fd` (closing the inherited one), keeping
    // close-on-exec, then closes the spare; plain syscalls on descriptors we own.
    unsafe {
        let moved = remapped && libc::dup3(new, fd, libc::O_CLOEXEC) == fd;
        libc::close(new);
        moved
    }
}

/// `/proc/self/fd/<fd>\0` in `buf`, without allocating.
fn proc_fd_path(fd: i32, buf: &mut [u8; 32]) -> Option<&[u8]> {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    if fd < 0 {
        return None;
    }
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let (mut n, mut k) = (fd as u32, 0);
    loop {
        digits[k] = b'0' + (n % 10) as u8;
        k += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut at = PREFIX.len();
    for d in digits[..k].iter().rev() {
        buf[at] = *d;
        at += 1;
    }
    buf[at] = 0;
    Some(&buf[..=at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_paths_are_built_without_allocating() {
        let mut b = [0u8; 32];
        assert_eq!(proc_fd_path(0, &mut b).unwrap(), b"/proc/self/fd/0\0");
        assert_eq!(
            proc_fd_path(i32::MAX, &mut b).unwrap(),
            b"/proc/self/fd/2147483647\0"
        );
        assert!(proc_fd_path(-1, &mut b).is_none());
    }

    #[test]
    fn slots_are_claimed_and_freed() {
        let a = register(-1, std::ptr::null_mut(), 0);
        let i = a.slot.expect("a free slot");
        assert_eq!(OPEN_REGIONS[i].state.load(SeqCst), READY);
        assert!(!a.shares_parent_lock());
        drop(a);
        assert_eq!(OPEN_REGIONS[i].state.load(SeqCst), FREE);
    }
}
