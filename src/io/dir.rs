//! Directory placement hints.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

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
    // Follows a symlinked store directory, as opening the store does.
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

#[cfg(test)]
mod tests {
    use super::*;

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
