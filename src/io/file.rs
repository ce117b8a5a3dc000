//! Opening files, and asking whether a path still names an open file.
//!
//! Every file kvr opens by path goes through [`OpenNoFollow`]: never through a symlink
//! (`O_NOFOLLOW`), never inherited by a child's `exec` (`O_CLOEXEC`), and, for a file kvr
//! did not just create, never waiting on a FIFO (`O_NONBLOCK` while opening) and never
//! anything but a regular file (`S_ISREG` checked before a byte is read). Another user
//! with write access to a shared directory can plant a symlink, a FIFO or a directory at
//! any name kvr uses: the worst they get is an error, at once.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// How to open a file by path; always `O_CLOEXEC`, `O_NOFOLLOW` unless
/// [`OpenNoFollow::follow_symlinks`]. An existing file is opened with `O_NONBLOCK` (a FIFO
/// does not wait for a writer) and refused unless it is a regular file (see
/// [`not_regular`]); the descriptor returned is blocking again. Built with `const` methods,
/// so a caller's flags cost nothing to assemble on a hot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenNoFollow {
    read: bool,
    write: bool,
    create_new: bool,
    mode: u32,
    direct: bool,
    follow: bool,
    keep_nonblock: bool,
}

impl OpenNoFollow {
    const fn new(read: bool, write: bool) -> Self {
        OpenNoFollow {
            read,
            write,
            create_new: false,
            mode: 0o666,
            direct: false,
            follow: false,
            keep_nonblock: false,
        }
    }

    /// Open for reading.
    pub const fn read_only() -> Self {
        Self::new(true, false)
    }

    /// Open for writing.
    pub const fn write_only() -> Self {
        Self::new(false, true)
    }

    /// Open for reading and writing.
    pub const fn read_write() -> Self {
        Self::new(true, true)
    }

    /// Create the file, failing with `AlreadyExists` if the name exists (whatever it names,
    /// a symlink included), with permission bits `mode` (less the umask).
    pub const fn create_new(mut self, mode: u32) -> Self {
        self.create_new = true;
        self.mode = mode;
        self
    }

    /// Permission bits (less the umask) of a file this open creates; default `0o666`.
    pub const fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Add `O_DIRECT` when `on`.
    pub const fn direct(mut self, on: bool) -> Self {
        self.direct = on;
        self
    }

    /// Follow a symlink at the path's last component. Only for a path the caller named
    /// itself (a tensor file in a model directory, which the Hugging Face cache builds from
    /// symlinks), never for a name in a directory kvr shares with other processes (block,
    /// slot, region and temp files). The FIFO and regular-file guards still apply.
    pub const fn follow_symlinks(mut self) -> Self {
        self.follow = true;
        self
    }

    /// Leave `O_NONBLOCK` set on an existing file's descriptor (one `fcntl` fewer per open).
    /// Plain `read`/`pread`/`write` of a regular file ignore it; only io_uring honours it
    /// (`EAGAIN` instead of waiting), so such a descriptor must never be handed to a ring.
    pub const fn keep_nonblock(mut self) -> Self {
        self.keep_nonblock = true;
        self
    }

    /// The `open(2)` flags beyond the access mode and creation. `O_NONBLOCK` only while
    /// opening an existing file: [`OpenNoFollow::open`] clears it once the file is known to
    /// be regular (io_uring would otherwise return `EAGAIN` instead of waiting).
    const fn custom_flags(&self) -> libc::c_int {
        let mut f = libc::O_CLOEXEC;
        if !self.follow {
            f |= libc::O_NOFOLLOW;
        }
        if self.direct {
            f |= libc::O_DIRECT;
        }
        if !self.create_new {
            f |= libc::O_NONBLOCK;
        }
        f
    }

    fn options(&self, extra_flags: libc::c_int) -> OpenOptions {
        let mut o = OpenOptions::new();
        o.read(self.read)
            .write(self.write)
            .create_new(self.create_new)
            .mode(self.mode)
            .custom_flags(self.custom_flags() | extra_flags);
        o
    }

    /// Opens `path`. A symlink there fails with `ELOOP` (unless followed); anything but a
    /// regular file (a FIFO, a socket, a device, a directory) fails at once with the error
    /// [`not_regular`] makes.
    pub fn open(&self, path: &Path) -> io::Result<File> {
        self.open_with_metadata(path).map(|(file, _)| file)
    }

    /// [`OpenNoFollow::open`], also returning the metadata of an existing file (the `fstat`
    /// behind the regular-file check, so a caller needing the size asks no second time);
    /// `None` for a file this open created.
    pub fn open_with_metadata(&self, path: &Path) -> io::Result<(File, Option<Metadata>)> {
        let file = match self.options(0).open(path) {
            Ok(f) => f,
            // The open itself can fail on a non-regular file: a FIFO without a reader
            // (for writing) or a socket (ENXIO), O_DIRECT on a FIFO (EINVAL), a directory
            // opened for writing (EISDIR). Report what is there, not the errno.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENXIO) | Some(libc::EINVAL) | Some(libc::EISDIR)
                ) =>
            {
                return Err(match std::fs::symlink_metadata(path) {
                    Ok(m) if !m.is_file() && !m.file_type().is_symlink() => not_regular(&m),
                    _ => e,
                })
            }
            Err(e) => return Err(e),
        };
        if self.create_new {
            return Ok((file, None));
        }
        let meta = file.metadata()?;
        check_regular(&meta)?;
        if !self.keep_nonblock {
            let keep = if self.direct { libc::O_DIRECT } else { 0 };
            // SAFETY: plain syscall on a descriptor `file` owns; F_SETFL sets only the
            // status flags (O_NONBLOCK cleared, O_DIRECT kept as opened).
            if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, keep) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok((file, Some(meta)))
    }

    /// Opens an existing `path` like [`OpenNoFollow::open`] (no symlink, no waiting on a
    /// FIFO, `O_NONBLOCK` kept) but without the `fstat` that refuses anything but a regular
    /// file: one syscall (and, on FUSE, one network round trip) fewer. For a reader that
    /// validates what it reads and calls [`check_regular`] on the file's metadata before it
    /// trusts or removes anything unexpected: a FIFO's reads return at once (nothing, with no
    /// writer), a directory's fail with `EISDIR`.
    pub fn open_unchecked(&self, path: &Path) -> io::Result<File> {
        debug_assert!(!self.create_new, "only for existing files");
        self.keep_nonblock()
            .options(0)
            .open(path)
            .or_else(|e| match e.raw_os_error() {
                Some(libc::ENXIO) | Some(libc::EINVAL) | Some(libc::EISDIR) => {
                    self.open_with_metadata(path).map(|(f, _)| f)
                }
                _ => Err(e),
            })
    }

    /// Opens an unnamed file (`O_TMPFILE`) in directory `dir`, which has no name until it is
    /// linked in (see [`super::publish::TempFile`]) and vanishes if its writer dies first.
    /// Needs write access; NFS and some others refuse it (`EOPNOTSUPP`, `EISDIR`).
    pub fn open_unnamed(&self, dir: &Path) -> io::Result<File> {
        // O_TMPFILE creates on its own; O_EXCL would only forbid linking the file in.
        self.options(libc::O_TMPFILE).create_new(false).open(dir)
    }
}

/// The error for a path that names something other than a regular file (a FIFO, a device,
/// a directory, a symlink): `InvalidInput`, never `NotFound`, so that it is not taken for
/// "absent"; [`is_not_regular`] recognizes it.
pub fn not_regular(m: &Metadata) -> io::Error {
    let t = m.file_type();
    let what = if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    };
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{NOT_REGULAR} ({what})"),
    )
}

const NOT_REGULAR: &str = "not a regular file";

/// What a non-regular entry is, in words ("a FIFO", "a directory", ...).
pub fn describe_type(m: &Metadata) -> String {
    let e = not_regular(m).to_string();
    e.trim_start_matches(NOT_REGULAR)
        .trim_matches([' ', '(', ')'])
        .to_string()
}

/// Whether `e` is [`not_regular`]'s error, or the `ELOOP` of a symlink opened with
/// `O_NOFOLLOW`: the path exists but names no regular file.
pub fn is_not_regular(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
        || (e.kind() == io::ErrorKind::InvalidInput && e.to_string().starts_with(NOT_REGULAR))
}

/// What `path` names when it is there but is no regular file (not followed: a symlink is
/// one); `None` for a regular file or nothing.
pub fn non_regular_entry(path: &Path) -> Option<Metadata> {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| !m.is_file())
}

/// Unlinks a non-regular entry (a FIFO, a symlink, a socket, a device) planted at a name
/// kvr owns, if `path` still names one; never a regular file, nor a directory (which
/// `unlink` cannot remove; it is left for its owner). Returns whether it was removed.
pub fn remove_non_regular(path: &Path) -> bool {
    match non_regular_entry(path) {
        Some(m) if !m.is_dir() => std::fs::remove_file(path).is_ok(),
        _ => false,
    }
}

/// `Ok` for a regular file, else [`not_regular`].
pub fn check_regular(m: &Metadata) -> io::Result<()> {
    if m.is_file() {
        Ok(())
    } else {
        Err(not_regular(m))
    }
}

/// Whether `path` still names `file`'s inode: it has not been unlinked, nor replaced by
/// another file since it was opened. Guards every "remove the file I looked at".
pub fn same_inode(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.nlink() > 0 && is_same_inode(&a, &b),
        _ => false,
    }
}

/// Whether two open files are the same inode (e.g. two opens of one path).
pub fn same_inode_as(a: &File, b: &File) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => is_same_inode(&a, &b),
        _ => false,
    }
}

fn is_same_inode(a: &Metadata, b: &Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Whether `dir` is on a file system where every metadata call and `close` is a network
/// round trip (FUSE, NFS, SMB, Ceph, Lustre, AFS), from `statfs`'s `f_type`. Unknown file
/// systems count as local.
pub fn is_network_fs(dir: &Path) -> bool {
    const NETWORK: [libc::c_long; 8] = [
        0x6573_5546, // FUSE (GlusterFS, and any FUSE client)
        0x6969,      // NFS
        0xFE53_4D42, // SMB2
        0xFF53_4D42, // CIFS
        0x517B,      // SMB
        0x00C3_6400, // Ceph
        0x0BD0_0BD0, // Lustre
        0x5346_414F, // AFS
    ];
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` is plain data, all-zero valid; the kernel fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a writable statfs, both alive for the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    NETWORK.contains(&(st.f_type as libc::c_long))
}

/// The directory a file at `path` lives in: its parent, or `.` for a bare name.
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_follows_symlinks_and_creates_exclusively() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        let create = OpenNoFollow::read_write().create_new(0o600);
        create.open(&f).unwrap();
        assert_eq!(
            create.open(&f).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let e = OpenNoFollow::read_only().open(&link).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert!(create.open(&link).is_err(), "nor creates through one");
        assert_eq!(
            OpenNoFollow::read_only()
                .open(&d.path().join("missing"))
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn refuses_fifos_and_other_non_regular_files_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for how in [
            OpenNoFollow::read_only(),
            OpenNoFollow::write_only(),
            OpenNoFollow::read_write(),
            OpenNoFollow::read_only().follow_symlinks(),
            OpenNoFollow::read_only().direct(true),
        ] {
            let e = how.open(&fifo).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{how:?}");
            assert!(e.to_string().contains("FIFO"), "{e}");
            assert!(is_not_regular(&e));
        }
        assert!(
            OpenNoFollow::read_only().open(d.path()).is_err(),
            "a directory"
        );
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let opened = OpenNoFollow::read_only().open(&f).unwrap();
        // SAFETY: plain syscall on an open descriptor.
        let flags = unsafe { libc::fcntl(opened.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0, "blocking again once checked");
        let (kept, meta) = OpenNoFollow::read_only()
            .keep_nonblock()
            .open_with_metadata(&f)
            .unwrap();
        assert_eq!(meta.map(|m| m.len()), Some(1));
        // SAFETY: plain syscall on an open descriptor.
        let flags = unsafe { libc::fcntl(kept.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0, "left non-blocking when asked");
        let e = OpenNoFollow::read_only()
            .keep_nonblock()
            .open(&fifo)
            .unwrap_err();
        assert!(is_not_regular(&e), "{e}");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let e = OpenNoFollow::read_only().open(&link).unwrap_err();
        assert!(is_not_regular(&e));
        OpenNoFollow::read_only()
            .follow_symlinks()
            .open(&link)
            .unwrap();
        assert_eq!(describe_type(&non_regular_entry(&fifo).unwrap()), "a FIFO");
        assert_eq!(
            describe_type(&non_regular_entry(&link).unwrap()),
            "a symlink"
        );
        assert!(non_regular_entry(&f).is_none());
        assert!(
            !remove_non_regular(&f) && f.exists(),
            "never a regular file"
        );
        assert!(!remove_non_regular(d.path()), "nor a directory");
        assert!(remove_non_regular(&fifo) && !fifo.exists());
        assert!(remove_non_regular(&link) && !link.exists() && f.exists());
    }

    #[test]
    fn same_inode_follows_unlink_and_replacement() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"a").unwrap();
        let f = File::open(&p).unwrap();
        assert!(same_inode(&f, &p));
        assert!(same_inode_as(&f, &File::open(&p).unwrap()));
        let q = d.path().join("g");
        std::fs::write(&q, b"b").unwrap();
        std::fs::rename(&q, &p).unwrap();
        assert!(!same_inode(&f, &p), "replaced by rename");
        assert!(!same_inode_as(&f, &File::open(&p).unwrap()));
        std::fs::remove_file(&p).unwrap();
        assert!(!same_inode(&f, &p), "unlinked");
        assert_eq!(parent_dir(Path::new("x")), Path::new("."));
        assert_eq!(parent_dir(Path::new("a/x")), Path::new("a"));
    }

    #[test]
    fn unnamed_files_open_where_supported() {
        let d = tempfile::tempdir().unwrap();
        match OpenNoFollow::write_only()
            .mode(0o644)
            .open_unnamed(d.path())
        {
            Ok(f) => assert_eq!(f.metadata().unwrap().nlink(), 0),
            Err(e) => eprintln!("skipped: no O_TMPFILE here ({e})"),
        }
    }
}
