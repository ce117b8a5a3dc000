//! Thin syscall helpers for block files: vectored positional I/O that retries short
//! transfers and EINTR, advisory locks, and directory fsync.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

pub use crate::io::vectored::{preadv_all, pwritev_all};

/// Takes an exclusive advisory lock; `wait` false makes it fail with EWOULDBLOCK when held.
pub fn flock_exclusive(file: &File, wait: bool) -> io::Result<()> {
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: plain syscall on an open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Allocates `len` bytes of `file` from offset 0 (the size grows to `len`). A file system
/// without `fallocate` support (EOPNOTSUPP) is not an error: the write allocates instead.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    loop {
        // SAFETY: plain syscall on an open descriptor.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => return Ok(()),
            _ => return Err(e),
        }
    }
}

/// Opens an unnamed file (`O_TMPFILE`) in `dir` for writing, with `flags` added. It has no
/// name until [`link_unnamed`] gives it one, and vanishes if the writer dies first: no temp
/// file is ever left behind. NFS and some others reject it (EOPNOTSUPP, EISDIR).
pub fn open_unnamed(dir: &Path, flags: libc::c_int) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .mode(0o644)
        .custom_flags(libc::O_TMPFILE | flags)
        .open(dir)
}

/// Gives an [`open_unnamed`] file the name `dest`, atomically; fails with `EEXIST` (and
/// changes nothing) when `dest` exists. Goes through `/proc/self/fd` (`AT_EMPTY_PATH` would
/// need CAP_DAC_READ_SEARCH).
pub fn link_unnamed(file: &File, dest: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .expect("no NUL in a formatted number");
    let to = CString::new(dest.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: both arguments are NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `dir` supports the unnamed-file protocol end to end: an [`open_unnamed`] file
/// (with `flags`) linked under a probe name, which is then removed.
pub fn probe_unnamed(dir: &Path, flags: libc::c_int) -> bool {
    let Ok(f) = open_unnamed(dir, flags) else {
        return false;
    };
    let name = dir.join(format!(
        ".kvr_tmpfile_probe.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let linked = link_unnamed(&f, &name).is_ok();
    if linked {
        let _ = std::fs::remove_file(&name);
    }
    linked
}

/// Flushes a file's data (and the metadata needed to read it) to stable storage.
pub fn fdatasync(file: &File) -> io::Result<()> {
    file.sync_data()
}

/// Flushes a directory (its entries, e.g. after a rename) to stable storage.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `FS_TOPDIR_FL` (`chattr +T`): "this directory is the top of a hierarchy" for ext4's Orlov
/// allocator (not in the libc crate).
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

/// A directory's inode flags (`FS_IOC_GETFLAGS`); `None` where the file system has none.
pub fn inode_flags(dir: &File) -> Option<libc::c_int> {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int (the kernel's `put_user(int)`, despite the
    // ioctl number's `long`) to a live local.
    let r = unsafe { libc::ioctl(dir.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    (r == 0).then_some(flags)
}

/// Marks `dir` as the top of a directory hierarchy (`chattr +T`), so that ext4 spreads the
/// subdirectories created in it over block groups with the most free inodes, instead of
/// packing them next to their parent. A new file's inode is allocated in its directory's
/// group, and without a journal ext4 scans past every inode freed there in the last minute
/// (`recently_deleted`): spread fan-out directories keep file creation fast next to other
/// programs' deletions. A hint only: returns whether the flag is set; file systems without
/// it (tmpfs, xfs, NFS...) or a directory owned by someone else simply keep their layout.
pub fn hint_top_dir(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(d) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
    else {
        return false;
    };
    let Some(flags) = inode_flags(&d) else {
        return false;
    };
    if flags & FS_TOPDIR_FL != 0 {
        return true;
    }
    let new = flags | FS_TOPDIR_FL;
    // SAFETY: FS_IOC_SETFLAGS reads one int from a live local.
    unsafe { libc::ioctl(d.as_raw_fd(), libc::FS_IOC_SETFLAGS, &new) == 0 }
}

/// Whether `path` still names the same inode as `file` (guards unlinking a file that another
/// process has replaced by rename in the meantime).
pub fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectored_round_trip_and_eof() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        pwritev_all(&f, &[b"abc", b"", b"defgh"], 2).unwrap();
        let (mut a, mut b) = ([0u8; 4], [9u8; 10]);
        let n = preadv_all(&f, &mut [&mut a, &mut b], 0).unwrap();
        assert_eq!(n, 10);
        assert_eq!(&a, b"\0\0ab");
        assert_eq!(&b[..6], b"cdefgh");
        assert_eq!(b[6], 9);
        flock_exclusive(&f, false).unwrap();
        let g = std::fs::File::open(dir.path().join("f")).unwrap();
        assert!(flock_exclusive(&g, false).is_err());
        drop(f);
        flock_exclusive(&g, false).unwrap();
        assert!(same_file(&g, &dir.path().join("f")));
        assert!(!same_file(&g, &dir.path().join("nope")));
        fsync_dir(dir.path()).unwrap();
    }

    #[test]
    fn top_dir_hint_sets_the_flag_where_supported() {
        let dir = tempfile::tempdir().unwrap();
        let set = hint_top_dir(dir.path());
        let flags = inode_flags(&File::open(dir.path()).unwrap());
        // Either the flag is now set (ext4 and friends) or the file system has no such flag.
        assert_eq!(
            set,
            flags.is_some_and(|f| f & FS_TOPDIR_FL != 0),
            "{flags:?}"
        );
        assert_eq!(hint_top_dir(dir.path()), set, "idempotent");
        assert!(!hint_top_dir(&dir.path().join("missing")));
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(!hint_top_dir(&file), "not a directory");
    }
}
