//! The slot file's I/O: create-or-reopen with the owner lock, space reservation, vectored
//! positioned reads and writes, and the parallel header scan that rebuilds the index.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::format::{self, Geometry, SlotHeader, PAGE, SLOT_HEADER_LEN};
use crate::io::AlignedBuf;
use crate::{err, Error, Result};

/// An open, locked slot file.
pub struct OwnedFile {
    /// The file, opened with O_DIRECT when `direct` (holds the owner lock).
    pub file: File,
    /// The same file without O_DIRECT, for the 128-byte header table entries (the page
    /// cache does their read-modify-write).
    pub table: File,
    /// Whether this open created the file.
    pub created: bool,
}

/// A second, buffered open file description of `file`'s inode.
fn buffered_twin(file: &File, path: &Path, direct: bool) -> Result<File> {
    if !direct {
        return file
            .try_clone()
            .map_err(|e| Error::io(format!("duplicating {}", path.display()), e));
    }
    let proc = format!("/proc/self/fd/{}", file.as_raw_fd());
    let twin = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&proc)
        .or_else(|_| open_raw(path, libc::O_RDWR, 0))
        .map_err(|e| {
            Error::io(
                format!("opening {} for the header table", path.display()),
                e,
            )
        })?;
    use std::os::unix::fs::MetadataExt;
    let same = match (file.metadata(), twin.metadata()) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    };
    if !same {
        return Err(err!(
            Busy,
            "slot file {} was replaced while opening",
            path.display()
        ));
    }
    Ok(twin)
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid(format!("path {} contains NUL", path.display())))
}

fn open_raw(path: &Path, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated path; the returned fd is owned by the File below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own exclusively.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Takes the owner lock: an exclusive `flock`, released by the kernel when the process dies
/// (SIGKILL included), so a killed owner never blocks the next one.
fn lock_owner(file: &File, path: &Path) -> Result<()> {
    // SAFETY: valid fd for the duration of the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(err!(
            Busy,
            "slot file {} is owned by another open handle (a live process holds its lock)",
            path.display()
        ));
    }
    Err(Error::io(
        format!("locking slot file {}", path.display()),
        e,
    ))
}

/// Opens the slot file at `path` (creating and reserving it if absent), takes the owner
/// lock and checks the geometry.
pub fn open_or_create(path: &Path, g: &Geometry, direct: bool) -> Result<OwnedFile> {
    let dflag = if direct { libc::O_DIRECT } else { 0 };
    for _ in 0..8 {
        match open_raw(path, libc::O_RDWR | dflag, 0) {
            Ok(file) => {
                lock_owner(&file, path)?;
                check_existing(&file, path, g)?;
                let table = buffered_twin(&file, path, direct)?;
                return Ok(OwnedFile {
                    file,
                    table,
                    created: false,
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                if let Some(file) = create(path, g, dflag)? {
                    let table = buffered_twin(&file, path, direct)?;
                    return Ok(OwnedFile {
                        file,
                        table,
                        created: true,
                    });
                }
                // Another process published the file first: open it.
            }
            Err(e) => {
                return Err(Error::io(
                    format!("opening slot file {}", path.display()),
                    e,
                ))
            }
        }
    }
    Err(err!(
        Busy,
        "slot file {} keeps appearing and disappearing",
        path.display()
    ))
}

fn check_existing(file: &File, path: &Path, g: &Geometry) -> Result<()> {
    let mut page = AlignedBuf::new(PAGE as usize)?;
    read_exact_at(file, page.as_mut_slice(), 0).map_err(|e| {
        Error::io(
            format!("reading the header of slot file {}", path.display()),
            e,
        )
    })?;
    let found = match format::decode_file_header(page.as_slice()) {
        Ok(found) => found,
        Err(format::FileHeaderError::NotSlotFile) => {
            return Err(err!(
            LayoutMismatch,
            "{} exists and is not a kvr slot file (bad magic); remove it or choose another path",
            path.display()
        ))
        }
        Err(format::FileHeaderError::Version(v)) => {
            return Err(err!(
                LayoutMismatch,
                "slot file {} has format version {v}, this kvr reads version {}",
                path.display(),
                format::FORMAT_VERSION
            ))
        }
        Err(format::FileHeaderError::Checksum) => {
            return Err(err!(
                Corrupt,
                "slot file {} has a damaged header page (checksum mismatch)",
                path.display()
            ))
        }
    };
    if found != *g {
        return Err(err!(
            LayoutMismatch,
            "slot file {} has {} slots of {} bytes, requested {} slots of {} bytes",
            path.display(),
            found.num_slots,
            found.slot_size,
            g.num_slots,
            g.slot_size
        ));
    }
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("stat of slot file {}", path.display()), e))?
        .len();
    check_file_len(path, len, g)
}

/// A slot file shorter than its geometry (truncated) is `Corrupt`.
pub fn check_file_len(path: &Path, len: u64, g: &Geometry) -> Result<()> {
    if len < g.file_len() {
        return Err(err!(
            Corrupt,
            "slot file {} is {len} bytes, its geometry needs {}",
            path.display(),
            g.file_len()
        ));
    }
    Ok(())
}

/// Builds the file under a temporary name (locked, reserved, header written and synced) and
/// publishes it with `link(2)`, which fails if the name exists: a reopen never sees a
/// half-built file, and two creators never both win. `None` if another creator won.
fn create(path: &Path, g: &Geometry, dflag: libc::c_int) -> Result<Option<File>> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("slot file path {} has no name", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.{}.{:x}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let file = open_raw(
        &tmp,
        libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | dflag,
        0o600,
    )
    .map_err(|e| Error::io(format!("creating slot file {}", tmp.display()), e))?;
    let cleanup = TempGuard(Some(&tmp));
    lock_owner(&file, &tmp)?;
    reserve(&file, dir, path, g.file_len())?;
    let mut page = AlignedBuf::new(PAGE as usize)?;
    format::encode_file_header(g, page.as_mut_slice());
    write_all_at(&file, page.as_slice(), 0)
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::io(format!("writing the header of {}", tmp.display()), e))?;
    let (a, b) = (cpath(&tmp)?, cpath(path)?);
    // SAFETY: both are valid NUL-terminated paths.
    if unsafe { libc::link(a.as_ptr(), b.as_ptr()) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Ok(None);
        }
        return Err(Error::io(
            format!("publishing slot file {}", path.display()),
            e,
        ));
    }
    drop(cleanup);
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(Some(file))
}

struct TempGuard<'a>(Option<&'a Path>);

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Checks free space, then reserves every byte with `fallocate`, so a full disk fails at
/// open with `NoSpace` instead of in the middle of a spill.
fn reserve(file: &File, dir: &Path, path: &Path, len: u64) -> Result<()> {
    // SAFETY: statvfs is plain data; zeroed is a valid initial value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open for the duration of the call; `st` is a valid out-pointer.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } == 0 {
        let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
        if free < len {
            return Err(err!(
                NoSpace,
                "slot file {} needs {len} bytes but {} has only {free} bytes free",
                path.display(),
                dir.display()
            ));
        }
    }
    // SAFETY: valid fd; `len` <= i64::MAX (checked by Geometry::new).
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => file
            .set_len(len)
            .map_err(|e| Error::io(format!("sizing slot file {}", path.display()), e)),
        _ => Err(Error::io(
            format!(
                "reserving {len} bytes for slot file {} in {}",
                path.display(),
                dir.display()
            ),
            e,
        )),
    }
}

/// `pread` until `buf` is full.
pub fn read_exact_at(file: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, off)
}

/// `pwrite` until `buf` is written.
pub fn write_all_at(file: &File, buf: &[u8], off: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, off)
}

pub use crate::io::vectored::{preadv_exact, pwritev_all};

/// `fdatasync`.
pub fn datasync(file: &File) -> io::Result<()> {
    file.sync_data()
}

/// Bytes of the header table per scan read.
const SCAN_CHUNK: usize = 1 << 20;

/// Reads the header table (`table`: the buffered file) in parallel on up to `threads`
/// threads, in large sequential reads, and decodes every slot's entry (`None` for free,
/// torn or damaged entries).
pub fn scan_table(table: &File, g: &Geometry, threads: usize) -> Result<Vec<Option<SlotHeader>>> {
    let n = g.num_slots as usize;
    let mut found: Vec<Option<SlotHeader>> = vec![None; n];
    let per_chunk = SCAN_CHUNK / SLOT_HEADER_LEN;
    let chunks = n.div_ceil(per_chunk);
    let threads = threads.clamp(1, 64).min(chunks).max(1);
    let per_thread = chunks.div_ceil(threads) * per_chunk;
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = found
            .chunks_mut(per_thread)
            .enumerate()
            .map(|(t, out)| {
                let first = t * per_thread;
                s.spawn(move || -> Result<()> {
                    let mut buf = vec![0u8; SCAN_CHUNK];
                    for (c, part) in out.chunks_mut(per_chunk).enumerate() {
                        let slot0 = first + c * per_chunk;
                        let off = g.table_entry_offset(slot0 as u32);
                        let bytes = part.len() * SLOT_HEADER_LEN;
                        read_exact_at(table, &mut buf[..bytes], off).map_err(|e| {
                            Error::io(format!("reading the header table at offset {off}"), e)
                        })?;
                        for (i, o) in part.iter_mut().enumerate() {
                            let e = &buf[i * SLOT_HEADER_LEN..(i + 1) * SLOT_HEADER_LEN];
                            *o = format::decode_slot_header(e, (slot0 + i) as u32, g.slot_size);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(err!(Internal, "header scan thread panicked")))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(found)
}
