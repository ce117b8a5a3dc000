//! Opening files, and asking whether a path still names an open file.
//!
//! Every file kvr opens by path goes through [`OpenNoFollow`]: never through a symlink
//! (`O_NOFOLLOW`), never inherited by a child's `exec` (`O_CLOEXEC`). Options that guard
//! against other hostile entries (a FIFO where a block should be) are added here, once.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// How to open a file by path; always `O_NOFOLLOW | O_CLOEXEC`. Built with `const`
/// methods, so a caller's flags cost nothing to assemble on a hot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenNoFollow {
    read: bool,
    write: bool,
    create_new: bool,
    mode: u32,
    direct: bool,
    nonblock: bool,
    regular_only: bool,
}

impl OpenNoFollow {
    const fn new(read: bool, write: bool) -> Self {
        OpenNoFollow {
            read,
            write,
            create_new: false,
            mode: 0o666,
            direct: false,
            nonblock: false,
            regular_only: false,
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

    /// Add `O_NONBLOCK` when `on`: opening a FIFO then returns at once instead of waiting
    /// for the other end (combine with [`OpenNoFollow::regular_only`] to refuse it).
    pub const fn nonblock(mut self, on: bool) -> Self {
        self.nonblock = on;
        self
    }

    /// When `on`, refuse anything but a regular file after opening it (one `fstat`), with
    /// the error [`not_regular`] makes.
    pub const fn regular_only(mut self, on: bool) -> Self {
        self.regular_only = on;
        self
    }

    /// The `open(2)` flags beyond the access mode and creation.
    const fn custom_flags(&self) -> libc::c_int {
        let mut f = libc::O_NOFOLLOW | libc::O_CLOEXEC;
        if self.direct {
            f |= libc::O_DIRECT;
        }
        if self.nonblock {
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

    /// Opens `path`. A symlink there fails with `ELOOP`.
    pub fn open(&self, path: &Path) -> io::Result<File> {
        let file = self.options(0).open(path)?;
        if self.regular_only {
            check_regular(&file.metadata()?)?;
        }
        Ok(file)
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
/// a directory): `InvalidInput`, never `NotFound`, so that it is not taken for "absent".
pub fn not_regular(m: &Metadata) -> io::Error {
    let t = m.file_type();
    let what = if t.is_dir() {
        "a directory"
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
        format!("not a regular file ({what})"),
    )
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
    fn regular_only_refuses_fifos_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let guarded = OpenNoFollow::read_only().nonblock(true).regular_only(true);
        let e = guarded.open(&fifo).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("FIFO"), "{e}");
        assert!(guarded.open(d.path()).is_err(), "a directory");
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        guarded.open(&f).unwrap();
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
