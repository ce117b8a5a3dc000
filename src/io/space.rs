//! Reserving file space up front, so a full file system fails before data moves (at open
//! for a region or a slot file, before the write for a block or tensor file), not in the
//! middle of a spill or as a SIGBUS on a mapped page.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::lock::{try_lock, LockMode};
use super::{align_up, AlignedBuf};

/// What [`reserve`] does where the file system has no `fallocate(2)` (it returns
/// `EOPNOTSUPP` or `ENOSYS`: Lustre, some FUSE file systems, old NFS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsupported {
    /// Nothing: the data write that follows allocates the space itself (and reports a full
    /// file system then). For files written whole right after, where zero-filling first
    /// would write every byte twice.
    Skip,
    /// Write zeros from the file's end up to the length: slow, but the space is really
    /// taken, and a full file system fails here with `ENOSPC`. For files that are sized
    /// once and filled piecemeal later (a slot file, a mapped region).
    ZeroFill,
}

/// How [`reserve`] got the space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserved {
    /// `fallocate(2)` allocated it.
    Allocated,
    /// The file system has no `fallocate`; the space was zero-filled.
    ZeroFilled,
    /// The file system has no `fallocate`; nothing was done ([`Unsupported::Skip`]).
    Skipped,
}

/// Allocates bytes `[0, len)` of `file` (its size grows to at least `len`; data already in
/// it stays), so later writes there cannot fail for lack of space. Where `fallocate(2)` is
/// unsupported, does what `unsupported` says. A full file system is an error whose errno is
/// `ENOSPC` (or `EDQUOT`, `EFBIG`; see [`is_out_of_space`]), which [`crate::Error::io`] maps
/// to `NoSpace`; callers add what was being reserved.
///
/// With `O_DIRECT`, a zero-fill needs the file's current size and `len` to be multiples of
/// 4096 (kvr's files opened that way are).
pub fn reserve(file: &File, len: u64, unsupported: Unsupported) -> io::Result<Reserved> {
    reserve_with(file, len, unsupported, fallocate)
}

/// [`reserve`] with the allocation call given, so tests can stand in a file system without
/// `fallocate`.
fn reserve_with(
    file: &File,
    len: u64,
    unsupported: Unsupported,
    allocate: fn(&File, u64) -> io::Result<()>,
) -> io::Result<Reserved> {
    if len == 0 {
        return Ok(Reserved::Allocated); // fallocate(2) rejects a zero length (EINVAL)
    }
    match allocate(file, len) {
        Ok(()) => Ok(Reserved::Allocated),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
            ) =>
        {
            note_no_fallocate(&e, unsupported);
            match unsupported {
                Unsupported::Skip => Ok(Reserved::Skipped),
                Unsupported::ZeroFill => zero_fill(file, len).map(|()| Reserved::ZeroFilled),
            }
        }
        Err(e) => Err(e),
    }
}

/// Logs the fallback once per process at warning level (then at debug: the fs store meets it
/// on every block).
fn note_no_fallocate(e: &io::Error, unsupported: Unsupported) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let how = match unsupported {
        Unsupported::Skip => "the data writes allocate the space",
        Unsupported::ZeroFill => "zero-filling instead",
    };
    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        log::debug!(target: "kvr::io", "fallocate unsupported ({e}); {how}");
    } else {
        log::warn!(target: "kvr::io", "this file system has no fallocate ({e}); {how}");
    }
}

/// `fallocate(fd, 0, 0, len)`, retrying EINTR.
fn fallocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    loop {
        // SAFETY: plain syscall on a descriptor `file` keeps open for the call.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Bytes per zero-fill write.
const ZERO_CHUNK: usize = 1 << 20;

/// Writes zeros over `[size, len)`, where `size` is the file's current length.
fn zero_fill(file: &File, len: u64) -> io::Result<()> {
    let start = file.metadata()?.len();
    if start >= len {
        return Ok(());
    }
    // Aligned, so that a file opened with O_DIRECT takes the writes too.
    let zeros = AlignedBuf::new(ZERO_CHUNK.min(align_up((len - start) as usize)))
        .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e.to_string()))?;
    let mut at = start;
    while at < len {
        let n = (zeros.capacity() as u64).min(len - at) as usize;
        // The errno is kept as it is: it makes the error kind (ENOSPC: `NoSpace`).
        file.write_all_at(&zeros.as_slice()[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Checks free space, then reserves every byte of `what` (e.g. "region /dev/shm/kvr_x.mmap"),
/// so a full file system fails here with `NoSpace` naming both sizes, not as a SIGBUS or a
/// failed write later. Where the file system has no `fallocate`, the file is zero-filled.
pub fn reserve_all(file: &File, len: u64, what: &str, dir: &Path) -> crate::Result<()> {
    if let Some(free) = free_bytes(file) {
        if free < len {
            return Err(crate::err!(
                NoSpace,
                "{what} needs {len} bytes but {} has only {free} bytes free",
                dir.display()
            ));
        }
    }
    reserve(file, len, Unsupported::ZeroFill)
        .map(drop)
        .map_err(|e| {
            crate::Error::io(
                format!("reserving {len} bytes for {what} in {}", dir.display()),
                e,
            )
        })
}

/// Whether `e` means "no room": `ENOSPC`, `EDQUOT` or `EFBIG`.
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG)
    )
}

/// Bytes an unprivileged writer may still allocate on `file`'s file system, or `None` when
/// the file system does not say.
pub fn free_bytes(file: &File) -> Option<u64> {
    // SAFETY: statvfs is plain data; all-zero is a valid initial value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open for the call; `st` is a valid out-pointer.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// One process's turn to reserve space in a directory: while it is held, no other kvr
/// process can be between its free-space check and its reservation there, so two files
/// that do not both fit never both pass the check and then both fail half-allocated (of
/// two regions on a `/dev/shm` that fits one, exactly one is created). An exclusive `flock`
/// on the directory itself: no lock file is left behind, and the kernel drops it with a
/// killed holder. Released on drop.
#[derive(Debug)]
pub struct ReserveTurn {
    _dir: Option<File>,
}

/// Waits up to `wait` for the turn to reserve space in `dir`; `None` if another holder
/// kept it that long (a stuck or hostile process: the caller reports a timeout rather
/// than waiting forever). A directory this process cannot open gives an unlocked turn:
/// the reservation then works as it would without it.
pub fn take_turn(dir: &Path, wait: Duration) -> Option<ReserveTurn> {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(d) = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
    else {
        return Some(ReserveTurn { _dir: None });
    };
    let deadline = Instant::now() + wait;
    let mut backoff = Duration::from_micros(200);
    loop {
        match try_lock(&d, LockMode::Exclusive) {
            Ok(true) => return Some(ReserveTurn { _dir: Some(d) }),
            Ok(false) if Instant::now() < deadline => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(10));
            }
            Ok(false) => return None,
            Err(_) => return Some(ReserveTurn { _dir: None }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsupported(_: &File, _: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }

    fn scratch(dir: &std::path::Path) -> File {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("f"))
            .unwrap()
    }

    #[test]
    fn allocates_where_fallocate_works() {
        let d = tempfile::tempdir().unwrap();
        let f = scratch(d.path());
        match reserve(&f, 3 * 4096, Unsupported::ZeroFill).unwrap() {
            Reserved::Allocated => assert_eq!(f.metadata().unwrap().len(), 3 * 4096),
            other => eprintln!("this file system has no fallocate: {other:?}"),
        }
        assert_eq!(
            reserve(&f, 0, Unsupported::Skip).unwrap(),
            Reserved::Allocated
        );
        assert!(free_bytes(&f).is_some());
    }

    #[test]
    fn without_fallocate_zero_fills_or_skips() {
        let d = tempfile::tempdir().unwrap();
        let f = scratch(d.path());
        let r = reserve_with(&f, 10_000, Unsupported::Skip, unsupported).unwrap();
        assert_eq!(r, Reserved::Skipped);
        assert_eq!(f.metadata().unwrap().len(), 0, "skip leaves the file alone");
        f.write_all_at(b"keep", 0).unwrap();
        let r = reserve_with(
            &f,
            3 * ZERO_CHUNK as u64 + 5,
            Unsupported::ZeroFill,
            unsupported,
        );
        assert_eq!(r.unwrap(), Reserved::ZeroFilled);
        let bytes = std::fs::read(d.path().join("f")).unwrap();
        assert_eq!(bytes.len(), 3 * ZERO_CHUNK + 5);
        assert_eq!(&bytes[..4], b"keep", "data before the end stays");
        assert!(bytes[4..].iter().all(|&b| b == 0));
        // Already long enough: nothing to write.
        let r = reserve_with(&f, 100, Unsupported::ZeroFill, unsupported).unwrap();
        assert_eq!(r, Reserved::ZeroFilled);
        assert_eq!(f.metadata().unwrap().len(), 3 * ZERO_CHUNK as u64 + 5);
    }

    #[test]
    fn zero_fill_on_a_full_file_system_is_a_clear_enospc() {
        // /dev/full takes positioned writes and fails each with ENOSPC.
        let Ok(full) = File::options().write(true).open("/dev/full") else {
            eprintln!("skipped: no /dev/full");
            return;
        };
        let e = reserve_with(&full, 1 << 20, Unsupported::ZeroFill, unsupported).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert!(is_out_of_space(&e));
        let kind = crate::Error::io("reserving", e).kind();
        assert_eq!(kind, crate::ErrorKind::NoSpace);
    }

    #[test]
    fn one_turn_at_a_time_per_directory() {
        let d = tempfile::tempdir().unwrap();
        let first = take_turn(d.path(), Duration::ZERO).expect("free");
        let t = Instant::now();
        assert!(take_turn(d.path(), Duration::from_millis(30)).is_none());
        assert!(t.elapsed() >= Duration::from_millis(30), "waited");
        drop(first);
        assert!(take_turn(d.path(), Duration::ZERO).is_some(), "released");
        assert!(take_turn(&d.path().join("missing"), Duration::ZERO).is_some());
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "no lock file"
        );
    }

    #[test]
    fn other_errors_are_reported() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ro"), b"").unwrap();
        let ro = File::open(d.path().join("ro")).unwrap();
        let e = reserve(&ro, 4096, Unsupported::Skip).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }
}
