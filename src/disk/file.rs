//! The slot file's open protocol: create-or-reopen with the owner lock and the space
//! reserved, the geometry check, and the parallel header scan that rebuilds the index.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::format::{self, Geometry, SlotHeader, PAGE, SLOT_HEADER_LEN};
use crate::io::file::{parent_dir, same_inode_as, OpenNoFollow};
use crate::io::lock::{try_lock, LockMode};
use crate::io::publish::{remove_abandoned, sibling_path, sync_dir, TempFile};
use crate::io::space;
use crate::io::vectored::{read_exact_at, write_all_at};
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
    // The /proc link is followed on purpose (it is how the inode is reopened); the
    // fallback reopens the path, never through a symlink.
    let twin = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&proc)
        .or_else(|_| OpenNoFollow::read_write().open(path))
        .map_err(|e| {
            Error::io(
                format!("opening {} for the header table", path.display()),
                e,
            )
        })?;
    if !same_inode_as(file, &twin) {
        return Err(err!(
            Busy,
            "slot file {} was replaced while opening",
            path.display()
        ));
    }
    Ok(twin)
}

/// Takes the owner lock: an exclusive `flock`, released by the kernel when the process dies
/// (SIGKILL included), so a killed owner never blocks the next one.
fn lock_owner(file: &File, path: &Path) -> Result<()> {
    match try_lock(file, LockMode::Exclusive) {
        Ok(true) => Ok(()),
        Ok(false) => Err(err!(
            Busy,
            "slot file {} is owned by another open handle (a live process holds its lock)",
            path.display()
        )),
        Err(e) => Err(Error::io(
            format!("locking slot file {}", path.display()),
            e,
        )),
    }
}

/// Opens the slot file at `path` (creating and reserving it if absent), takes the owner
/// lock and checks the geometry.
/// The file records `identity` (see [`super::identity`]); an existing one must record the
/// same.
pub fn open_or_create(
    path: &Path,
    g: &Geometry,
    direct: bool,
    identity: Option<&str>,
) -> Result<OwnedFile> {
    remove_dead_temps(path);
    let how = OpenNoFollow::read_write().direct(direct);
    for _ in 0..8 {
        match how.open(path) {
            Ok(file) => {
                lock_owner(&file, path)?;
                check_existing(&file, path, g, identity)?;
                let table = buffered_twin(&file, path, direct)?;
                return Ok(OwnedFile {
                    file,
                    table,
                    created: false,
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                if let Some(file) = create(path, g, how, identity)? {
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

fn check_existing(file: &File, path: &Path, g: &Geometry, identity: Option<&str>) -> Result<()> {
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
    let recorded = super::identity::decode(page.as_slice())
        .map_err(|e| e.context(format!("slot file {}", path.display())))?;
    super::identity::check(recorded.as_deref(), identity, path)?;
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
fn create(
    path: &Path,
    g: &Geometry,
    how: OpenNoFollow,
    identity: Option<&str>,
) -> Result<Option<File>> {
    if path.file_name().is_none() {
        return Err(Error::invalid(format!(
            "slot file path {} has no name",
            path.display()
        )));
    }
    let dir = parent_dir(path);
    let tag = format!(
        "{}.{:x}.tmp",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let tmp = sibling_path(path, tag).map_err(|e| Error::io("naming a temp file", e))?;
    // From here on the temp file is removed on any failure (when `temp` drops).
    let mut temp = TempFile::create_named(tmp.clone(), how, 0o600)
        .map_err(|e| Error::io(format!("creating slot file {}", tmp.display()), e))?;
    // Another open's cleaner may take the fresh file for a dead creator's before we lock
    // it: it then removes it (or is about to), and we start over.
    let locked = try_lock(temp.file(), LockMode::Exclusive)
        .map_err(|e| Error::io(format!("locking slot file {}", tmp.display()), e))?;
    let linked = temp.file().metadata().is_ok_and(|m| m.nlink() > 0);
    if !locked || !linked {
        temp.disown_name();
        return Ok(None);
    }
    let wait = RESERVE_TURN_WAIT;
    let Some(_turn) = space::take_turn(dir, wait) else {
        return Err(err!(
            Timeout,
            "slot file {}: another process kept the turn to reserve space in {} for {} s",
            path.display(),
            dir.display(),
            wait.as_secs()
        ));
    };
    space::reserve_all(
        temp.file(),
        g.file_len(),
        &format!("slot file {}", path.display()),
        dir,
    )?;
    let mut page = AlignedBuf::new(PAGE as usize)?;
    format::encode_file_header(g, page.as_mut_slice());
    if let Some(name) = identity {
        super::identity::encode(name, page.as_mut_slice());
    }
    write_all_at(temp.file(), page.as_slice(), 0)
        .and_then(|_| temp.file().sync_all())
        .map_err(|e| Error::io(format!("writing the header of {}", tmp.display()), e))?;
    match temp.link_new(path) {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(e) => {
            return Err(Error::io(
                format!("publishing slot file {}", path.display()),
                e,
            ))
        }
    }
    let file = temp.into_file(); // the temporary name goes; the file lives on under `path`
    let _ = sync_dir(dir);
    Ok(Some(file))
}

/// How long a creator waits for its turn to reserve space ([`space::take_turn`]).
const RESERVE_TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Removes the temp files of creators that were killed while building `path`'s slot file
/// (each is as large as the whole file; a live creator holds its lock).
fn remove_dead_temps(path: &Path) {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let prefix = format!(".{name}.");
    remove_abandoned(parent_dir(path), |n| {
        n.starts_with(&prefix) && n.ends_with(".tmp")
    });
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
