//! "Build a file under a temporary name, then publish it atomically": readers never see a
//! half-written file under its final name, and a failed writer leaves nothing behind.
//!
//! [`TempFile`] is the file being built: named (next to its final path, removed on drop
//! unless published by rename) or unnamed (`O_TMPFILE`: no name until linked, nothing to
//! clean up after a crash). It is published by [`TempFile::link_new`] (never replaces an
//! existing name: two racing creators cannot both win) or [`TempFile::rename_over`]
//! (replaces it). The tiers choose the names, the locks and what a lost race means.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::file::{is_not_regular, parent_dir, remove_non_regular, same_inode, OpenNoFollow};
use super::lock::{try_lock, LockMode};

/// A file under construction; see the module docs. Dropping it removes its temporary name,
/// if it still has one.
#[derive(Debug)]
pub struct TempFile {
    file: File,
    /// The temporary name while this writer owns it.
    name: OwnedName,
}

/// A temporary name, removed on drop; `None` for an unnamed file, after a rename into
/// place, or once disowned.
#[derive(Debug)]
struct OwnedName(Option<PathBuf>);

impl Drop for OwnedName {
    fn drop(&mut self) {
        if let Some(name) = self.0.take() {
            let _ = std::fs::remove_file(name);
        }
    }
}

impl TempFile {
    /// Creates the file `path` exclusively (`O_CREAT | O_EXCL`, so an existing name, a
    /// symlink included, fails with `AlreadyExists`) with `how`'s access and flags and
    /// permission bits `mode`.
    pub fn create_named(path: PathBuf, how: OpenNoFollow, mode: u32) -> io::Result<TempFile> {
        let file = how.create_new(mode).open(&path)?;
        Ok(TempFile {
            file,
            name: OwnedName(Some(path)),
        })
    }

    /// Creates an unnamed file in `dir` (see [`OpenNoFollow::open_unnamed`]).
    pub fn create_unnamed(dir: &Path, how: OpenNoFollow) -> io::Result<TempFile> {
        Ok(TempFile {
            file: how.open_unnamed(dir)?,
            name: OwnedName(None),
        })
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The temporary name this writer owns, if any.
    pub fn name(&self) -> Option<&Path> {
        self.name.0.as_deref()
    }

    /// Whether the file was created without a name.
    pub fn is_unnamed(&self) -> bool {
        self.name.0.is_none()
    }

    /// Gives up the temporary name: drop then leaves it alone (someone else removed it, and
    /// it may name another file by now).
    pub fn disown_name(&mut self) {
        self.name.0 = None;
    }

    /// Links the file in as `dest`, atomically; `Ok(false)` when `dest` exists (nothing
    /// changed). The temporary name, if any, stays and is removed on drop.
    pub fn link_new(&mut self, dest: &Path) -> io::Result<bool> {
        let linked = match &self.name.0 {
            Some(name) => std::fs::hard_link(name, dest),
            None => link_unnamed(&self.file, dest),
        };
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Renames the file over `dest` (replacing what is there). Only for a named file.
    pub fn rename_over(&mut self, dest: &Path) -> io::Result<()> {
        let Some(name) = &self.name.0 else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an unnamed file can only be linked in",
            ));
        };
        std::fs::rename(name, dest)?;
        self.name.0 = None;
        Ok(())
    }

    /// The file, after removing its temporary name (once published, it lives on under its
    /// final name).
    pub fn into_file(self) -> File {
        // `self.name` drops here, removing the name.
        self.file
    }
}

/// `<dir of target>/.<file name of target>.<tag>`: a temporary name next to `target`, on
/// the same file system (so it can be linked or renamed there) and hidden from listings.
pub fn sibling_path(target: &Path, tag: impl std::fmt::Display) -> io::Result<PathBuf> {
    let base = target.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {} has no file name", target.display()),
        )
    })?;
    Ok(parent_dir(target).join(format!(".{}.{tag}", base.to_string_lossy())))
}

/// Gives an unnamed (`O_TMPFILE`) file the name `dest`, atomically; fails with `EEXIST`
/// (and changes nothing) when `dest` exists. Goes through `/proc/self/fd` (`AT_EMPTY_PATH`
/// would need CAP_DAC_READ_SEARCH).
fn link_unnamed(file: &File, dest: &Path) -> io::Result<()> {
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

/// Name prefix of the file [`probe_unnamed`] links in.
pub const UNNAMED_PROBE_PREFIX: &str = ".kvr_tmpfile_probe.";

/// Whether `dir` supports unnamed files end to end: one opened with `how`, `flock`ed (so
/// that a cleaner knows its prober lives), linked under a unique probe name, which is then
/// removed. Probe files of killed probers are removed first.
pub fn probe_unnamed(dir: &Path, how: OpenNoFollow) -> bool {
    remove_abandoned(dir, |name| name.starts_with(UNNAMED_PROBE_PREFIX));
    let Ok(mut f) = TempFile::create_unnamed(dir, how) else {
        return false;
    };
    if !matches!(try_lock(f.file(), LockMode::Exclusive), Ok(true)) {
        return false; // a fresh unnamed file no one else can open: cannot be held
    }
    static SEQ: AtomicU64 = AtomicU64::new(0);
    for _ in 0..16 {
        let name = dir.join(format!(
            "{UNNAMED_PROBE_PREFIX}{}.{}",
            std::process::id(),
            SEQ.fetch_add(1, Relaxed)
        ));
        match f.link_new(&name) {
            Ok(true) => {
                if same_inode(f.file(), &name) {
                    let _ = std::fs::remove_file(&name);
                }
                return true;
            }
            Ok(false) => continue, // the name is taken: the next one
            Err(_) => return false,
        }
    }
    false
}

/// Removes `path` if it is a regular file no live process holds a `flock` on (the writers
/// of kvr's probe and writer lock files lock them for as long as they use them, and the kernel
/// drops the lock of a killed one), or a non-regular entry planted at a name kvr reserves
/// (see [`remove_non_regular`]). Returns whether it is gone.
pub fn remove_if_abandoned(path: &Path) -> bool {
    match OpenNoFollow::read_only().open(path) {
        Ok(f) => {
            matches!(try_lock(&f, LockMode::Exclusive), Ok(true))
                && same_inode(&f, path)
                && std::fs::remove_file(path).is_ok()
        }
        Err(e) if is_not_regular(&e) => remove_non_regular(path),
        Err(_) => false,
    }
}

/// Removes every entry of `dir` whose name `matches` and that [`remove_if_abandoned`]
/// finds abandoned; returns how many went. An unreadable directory removes nothing.
pub fn remove_abandoned(dir: &Path, matches: impl Fn(&str) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(&matches))
        .filter(|e| remove_if_abandoned(&e.path()))
        .count()
}

/// Flushes a directory's entries (a link or rename just made in it) to stable storage.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn abandoned_files_go_and_held_ones_stay() {
        let d = tempfile::tempdir().unwrap();
        let name = |n: &str| d.path().join(format!(".x.{n}"));
        std::fs::write(name("dead"), b"").unwrap();
        let held = File::create(name("live")).unwrap();
        assert!(try_lock(&held, LockMode::Exclusive).unwrap());
        let fifo = std::ffi::CString::new(name("fifo").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::fs::create_dir(name("dir")).unwrap();
        std::fs::write(d.path().join("other"), b"").unwrap();
        let gone = remove_abandoned(d.path(), |n| n.starts_with(".x."));
        assert_eq!(gone, 2, "the dead writer's file and the FIFO");
        assert!(!name("dead").exists() && !name("fifo").exists());
        assert!(name("live").exists() && name("dir").exists());
        assert!(d.path().join("other").exists(), "not matched");
        drop(held);
        assert!(remove_if_abandoned(&name("live")));
    }

    #[test]
    fn named_files_link_without_replacing_and_clean_up() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("dest");
        let tmp = sibling_path(&dest, "1.tmp").unwrap();
        assert_eq!(tmp, d.path().join(".dest.1.tmp"));
        let how = OpenNoFollow::read_write();
        let mut a = TempFile::create_named(tmp.clone(), how, 0o600).unwrap();
        assert!(
            TempFile::create_named(tmp.clone(), how, 0o600).is_err(),
            "exclusive"
        );
        a.file().write_all_at(b"a", 0).unwrap();
        assert!(a.link_new(&dest).unwrap());
        assert_eq!(a.name(), Some(tmp.as_path()));
        let f = a.into_file();
        assert!(!tmp.exists(), "temp name removed");
        assert_eq!(std::fs::read(&dest).unwrap(), b"a");
        drop(f);

        let mut b = TempFile::create_named(sibling_path(&dest, "2").unwrap(), how, 0o600).unwrap();
        assert!(!b.link_new(&dest).unwrap(), "never replaces");
        b.rename_over(&dest).unwrap();
        assert!(b.name().is_none());
        drop(b);
        assert!(dest.exists(), "a renamed file stays");

        let c = TempFile::create_named(d.path().join(".c"), how, 0o600).unwrap();
        drop(c);
        assert!(
            !d.path().join(".c").exists(),
            "dropped unpublished: removed"
        );
        let mut e = TempFile::create_named(d.path().join(".e"), how, 0o600).unwrap();
        e.disown_name();
        drop(e);
        assert!(
            d.path().join(".e").exists(),
            "a disowned name is left alone"
        );
        assert!(sibling_path(Path::new("/"), "x").is_err());
        sync_dir(d.path()).unwrap();
    }

    #[test]
    fn unnamed_files_link_in_once() {
        let d = tempfile::tempdir().unwrap();
        let how = OpenNoFollow::write_only().mode(0o644);
        if !probe_unnamed(d.path(), how) {
            eprintln!("skipped: no O_TMPFILE here");
            return;
        }
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "probe cleaned up"
        );
        let dest = d.path().join("dest");
        let mut a = TempFile::create_unnamed(d.path(), how).unwrap();
        assert!(a.is_unnamed());
        a.file().write_all_at(b"u", 0).unwrap();
        assert!(a.link_new(&dest).unwrap());
        let mut b = TempFile::create_unnamed(d.path(), how).unwrap();
        assert!(!b.link_new(&dest).unwrap());
        assert!(b.rename_over(&dest).is_err());
        drop((a, b));
        assert_eq!(std::fs::read(&dest).unwrap(), b"u");
    }
}
