//! Lazy reading: map the file read-only, parse and validate only the header, hand out
//! zero-copy views and targeted copies of single tensors. A file in an S3 store
//! (`s3://bucket/key`) is read the same way through ranged `GET`s (`tensors/remote.rs`):
//! the header only at open, one tensor's bytes per read.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use memmap2::{Advice, Mmap, MmapOptions};

use super::header::{self, Parsed, ParsedTensor};
use super::location::Location;
use super::remote::{FetchStats, RemoteObject};
use super::Dtype;
use crate::io::aligned::is_aligned;
use crate::io::file::OpenNoFollow;
use crate::io::{AlignedBuf, IO_ALIGN};
use crate::obj::ObjConfig;
use crate::{err, Error, Result};

/// One tensor of an open file.
#[derive(Debug)]
pub struct TensorEntry {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// File offset of the first byte.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// The name as a C string, made on first use (by the C API).
    name_c: OnceLock<CString>,
    /// Whether [`TensorFile::get`] has asked the kernel to read this tensor's pages.
    prefetched: AtomicBool,
}

impl TensorEntry {
    /// The name as a C string (NULs replaced), valid as long as the entry.
    pub(crate) fn name_c(&self) -> &CString {
        self.name_c.get_or_init(|| c_lossy(&self.name))
    }
}

/// A zero-copy view of one tensor, borrowed from its [`TensorFile`].
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    /// The tensor's header entry.
    pub entry: &'a TensorEntry,
    /// Its bytes in the read-only mapping.
    pub data: &'a [u8],
}

/// An open tensor file: a read-only mapping (or, for an object of an S3 store, ranged reads)
/// plus the validated header.
///
/// Like every mmap reader, the file must not be truncated or rewritten in place while open
/// (kvr itself only ever replaces files by rename, which is safe).
pub struct TensorFile {
    path: PathBuf,
    len: u64,
    backing: Backing,
    tensors: Vec<TensorEntry>,
    padding: Vec<ParsedTensor>,
    data_start: u64,
    /// Name -> position, built on the second lookup (one lookup is a scan: cheaper than
    /// hashing every name, and the common "open, get one tensor" stays fast).
    index: OnceLock<HashMap<String, usize>>,
    lookups: AtomicBool,
    metadata: Vec<(String, String)>,
    metadata_c: Vec<CString>,
}

/// Where an open file's bytes come from.
enum Backing {
    /// A local file and its read-only mapping.
    Mapped {
        file: File,
        map: Mmap,
        /// A second descriptor opened with O_DIRECT on first use of `read_into_direct`
        /// (`None` when the file system refuses O_DIRECT).
        direct: OnceLock<Option<File>>,
    },
    /// An object of an S3 store.
    Remote {
        object: RemoteObject,
        /// Each tensor's bytes once [`TensorFile::get`] fetched them (4096-aligned, owned by
        /// the handle until close), by tensor position.
        fetched: Vec<OnceLock<AlignedBuf>>,
    },
}

impl std::fmt::Debug for TensorFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Largest bounce buffer [`TensorFile::read_into_direct`] uses for an unaligned destination.
pub const DIRECT_BOUNCE: usize = 4 << 20;

/// First read of the header: enough for the headers of files of a few hundred tensors.
const HEAD_READ: u64 = 64 << 10;

/// The header bytes of a file of `len >= 8` bytes, read with `read_at(buf, offset, what)`:
/// the first 64 KiB (or the whole file if shorter), then the rest of a longer header. For a
/// local file that is `pread` rather than the mapping: a first fault on the mapping reads
/// the file's whole readahead window around it synchronously (16 MiB on a disk with 8 MiB
/// readahead under `POSIX_FADV_SEQUENTIAL`), which made a cold open + get of one tensor cost
/// that read. For an object it is one or two ranged `GET`s.
fn read_head(
    len: u64,
    mut read_at: impl FnMut(&mut [u8], u64, String) -> Result<()>,
) -> Result<Vec<u8>> {
    let first = len.min(HEAD_READ) as usize;
    let mut buf = vec![0u8; first];
    read_at(&mut buf, 0, format!("reading the first {first} bytes"))?;
    let need = header::head_len(buf[..8].try_into().expect("len >= 8"), len) as usize;
    if need > first {
        buf.resize(need, 0);
        read_at(
            &mut buf[first..],
            first as u64,
            format!("reading the {need}-byte header"),
        )?;
    }
    Ok(buf)
}

fn c_lossy(s: &str) -> CString {
    CString::new(s.replace('\0', "\u{FFFD}")).expect("NULs replaced")
}

impl TensorFile {
    /// Opens and maps `path`, parsing and validating the header only (no tensor data is read).
    pub fn open(path: &Path) -> Result<TensorFile> {
        let ctx = |e: Error| e.context(format!("opening tensor file {}", path.display()));
        // Symlinks are followed (a model directory, as the Hugging Face cache lays it out,
        // is made of them); a FIFO or a device fails at once instead of blocking.
        let file = OpenNoFollow::read_only()
            .follow_symlinks()
            .open(path)
            .map_err(|e| ctx(Error::io("open", e)))?;
        let len = file
            .metadata()
            .map_err(|e| ctx(Error::io("fstat", e)))?
            .len();
        if len < 8 {
            return Err(ctx(err!(
                Corrupt,
                "file is {len} bytes, shorter than the 8-byte header length"
            )));
        }
        if len > isize::MAX as u64 {
            return Err(ctx(err!(TooLarge, "file of {len} bytes cannot be mapped")));
        }
        // Tensors are read whole, front to back (`read_into`) or through the mapping in
        // large runs: let readahead use its sequential window, as readers like fio do.
        // SAFETY: fadvise on a valid descriptor; it is only a hint (failure is harmless).
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
        // SAFETY: a read-only private mapping; kvr replaces files only by rename, and the
        // type's docs require callers not to truncate an open file in place.
        let map = unsafe { MmapOptions::new().len(len as usize).map(&file) }
            .map_err(|e| ctx(Error::io("mmap", e)))?;
        // The mapping gets no fault readahead: under the sequential hint above, the first
        // fault would read a 16 MiB window around one tensor synchronously (a cold open +
        // get + read of one 512 KiB tensor cost 20 ms against 2 ms for `read_into`).
        // `get` asks for exactly the tensor's pages instead. A hint: failure is harmless.
        let _ = map.advise(Advice::Random);
        let head = read_head(len, |buf, at, what| {
            file.read_exact_at(buf, at).map_err(|e| Error::io(what, e))
        })
        .map_err(ctx)?;
        let parsed = header::parse_head(&head, len).map_err(ctx)?;
        let backing = Backing::Mapped {
            file,
            map,
            direct: OnceLock::new(),
        };
        Ok(TensorFile::from_header(
            path.to_path_buf(),
            len,
            backing,
            parsed,
        ))
    }

    /// Opens a tensor file at a path or URL (see [`Location::parse`]): a path or `file://`
    /// URL exactly as [`TensorFile::open`]; `s3://bucket/key` with one `HEAD` (the size) and
    /// ranged `GET`s of the header (the first 64 KiB, then the rest of a longer header),
    /// validated exactly as a local file's. `cfg` gives the S3 endpoint, region, credentials
    /// and timeouts (its `url` and `namespace` are not used); `None`: the `AWS_*` environment.
    ///
    /// On an object: [`TensorFile::read_into`] (and `read_into_direct`) fetch exactly the
    /// tensor's byte range; [`TensorFile::get`] fetches the tensor once into memory the handle
    /// owns until it is dropped; `read_into_device` fetches into a temporary host buffer.
    pub fn open_location(location: &str, cfg: Option<&ObjConfig>) -> Result<TensorFile> {
        let ctx = |e: Error| e.context(format!("opening tensor file {location}"));
        match Location::parse(location).map_err(ctx)? {
            Location::Local(path) => TensorFile::open(&path),
            Location::S3 { bucket, key } => {
                let object = RemoteObject::new(&bucket, &key, cfg).map_err(ctx)?;
                TensorFile::open_remote(object)
            }
        }
    }

    fn open_remote(object: RemoteObject) -> Result<TensorFile> {
        let url = object.url().to_string();
        let ctx = |e: Error| e.context(format!("opening tensor file {url}"));
        let len = object.size().map_err(ctx)?;
        if len < 8 {
            return Err(ctx(err!(
                Corrupt,
                "file is {len} bytes, shorter than the 8-byte header length"
            )));
        }
        let head = read_head(len, |buf, at, what| {
            object.read_exact_at(buf, at).map_err(|e| e.context(what))
        })
        .map_err(ctx)?;
        let parsed = header::parse_head(&head, len).map_err(ctx)?;
        let fetched = (0..parsed.tensors.len()).map(|_| OnceLock::new()).collect();
        let backing = Backing::Remote { object, fetched };
        Ok(TensorFile::from_header(
            PathBuf::from(url),
            len,
            backing,
            parsed,
        ))
    }

    fn from_header(path: PathBuf, len: u64, backing: Backing, parsed: Parsed) -> TensorFile {
        let Parsed {
            tensors,
            padding,
            metadata,
            data_start,
        } = parsed;
        let tensors: Vec<TensorEntry> = tensors
            .into_iter()
            .map(|t| TensorEntry {
                name_c: OnceLock::new(),
                prefetched: AtomicBool::new(false),
                name: t.name,
                dtype: t.dtype,
                shape: t.shape,
                offset: t.offset,
                len: t.len,
            })
            .collect();
        let metadata_c = metadata.iter().map(|(_, v)| c_lossy(v)).collect();
        TensorFile {
            path,
            len,
            backing,
            tensors,
            padding,
            data_start,
            index: OnceLock::new(),
            lookups: AtomicBool::new(false),
            metadata,
            metadata_c,
        }
    }

    /// The file's path (for an object: its `s3://bucket/key` URL).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file is an object of an S3 store (read through ranged `GET`s).
    pub fn is_remote(&self) -> bool {
        matches!(self.backing, Backing::Remote { .. })
    }

    /// For an object: the ranged `GET`s made and bytes received so far (the open's
    /// included); `None` for a local file.
    pub fn fetched(&self) -> Option<FetchStats> {
        match &self.backing {
            Backing::Remote { object, .. } => Some(object.fetched()),
            Backing::Mapped { .. } => None,
        }
    }

    /// Number of tensors (padding tensors of aligned files excluded).
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the file holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    /// The padding tensors of an aligned kvr file (`__kvr_pad_*`, hidden from
    /// [`TensorFile::tensors`]), in file order; empty for other files.
    pub fn padding(&self) -> &[ParsedTensor] {
        &self.padding
    }

    /// File offset of the data area (8 + the header length).
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// File size in bytes.
    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// `__metadata__` entries sorted by key.
    pub fn metadata(&self) -> &[(String, String)] {
        &self.metadata
    }

    /// A metadata value.
    pub fn metadata_get(&self, key: &str) -> Option<&str> {
        self.metadata_index(key)
            .map(|i| self.metadata[i].1.as_str())
    }

    fn metadata_index(&self, key: &str) -> Option<usize> {
        self.metadata
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
    }

    pub(crate) fn metadata_get_c(&self, key: &str) -> Option<&CString> {
        self.metadata_index(key).map(|i| &self.metadata_c[i])
    }

    /// Finds a tensor by name. `None` succeeds only when the file holds exactly one tensor;
    /// otherwise the `NotFound` error lists the available names.
    pub fn find(&self, name: Option<&str>) -> Result<&TensorEntry> {
        self.find_index(name).map(|i| &self.tensors[i])
    }

    /// [`TensorFile::find`], by position.
    fn find_index(&self, name: Option<&str>) -> Result<usize> {
        let found = match name {
            Some(n) => self.position(n),
            None if self.tensors.len() == 1 => Some(0),
            None => None,
        };
        found.ok_or_else(|| {
            let what = match name {
                Some(n) => format!("no tensor named '{n}'"),
                None => format!(
                    "no tensor name given and the file holds {} tensors, not exactly one",
                    self.tensors.len()
                ),
            };
            err!(
                NotFound,
                "{what} in {}; available: {}",
                self.path.display(),
                self.list_names()
            )
        })
    }

    fn position(&self, name: &str) -> Option<usize> {
        if let Some(index) = self.index.get() {
            return index.get(name).copied();
        }
        if !self.lookups.swap(true, Ordering::Relaxed) {
            return self.tensors.iter().position(|t| t.name == name);
        }
        let index = self.index.get_or_init(|| {
            self.tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect()
        });
        index.get(name).copied()
    }

    fn list_names(&self) -> String {
        const SHOW: usize = 20;
        if self.tensors.is_empty() {
            return "(none)".into();
        }
        let mut s: Vec<String> = self
            .tensors
            .iter()
            .take(SHOW)
            .map(|t| format!("'{}'", t.name))
            .collect();
        if self.tensors.len() > SHOW {
            s.push(format!("... and {} more", self.tensors.len() - SHOW));
        }
        s.join(", ")
    }

    /// Zero-copy view of a tensor (see [`TensorFile::find`] for `name`). The first `get` of a
    /// tensor starts reading its pages (`MADV_WILLNEED` of its range), so reading it cold
    /// through the view costs about what [`TensorFile::read_into`] does.
    ///
    /// On an object, the first `get` of a tensor fetches its bytes (ranged `GET`s) into a
    /// 4096-aligned buffer the handle owns until it is dropped; later `get`s return that copy.
    pub fn get(&self, name: Option<&str>) -> Result<TensorRef<'_>> {
        let index = self.find_index(name)?;
        let entry = &self.tensors[index];
        let map = match &self.backing {
            Backing::Mapped { map, .. } => map,
            Backing::Remote { object, fetched } => {
                let len = entry.len as usize;
                if len == 0 {
                    return Ok(TensorRef { entry, data: &[] });
                }
                let cell = &fetched[index];
                if cell.get().is_none() {
                    let mut buf = AlignedBuf::new(len)?;
                    object
                        .read_exact_at(&mut buf.as_mut_slice()[..len], entry.offset)
                        .map_err(|e| self.tensor_context(e, entry))?;
                    // Two threads racing on a first get both fetch; one copy is kept.
                    let _ = cell.set(buf);
                }
                let data = &cell.get().expect("set above").as_slice()[..len];
                return Ok(TensorRef { entry, data });
            }
        };
        let (start, len) = (entry.offset as usize, entry.len as usize);
        if len > 0 && !entry.prefetched.swap(true, Ordering::Relaxed) {
            // Start reading the tensor's pages, all of them and only them, in large
            // requests; the faults of the caller's first touches then wait for that I/O
            // rather than each reading one page (the mapping has no readahead, see `open`).
            let _ = map.advise_range(Advice::WillNeed, start, len);
        }
        let data = &map[start..start + len];
        Ok(TensorRef { entry, data })
    }

    /// Copies one tensor into `dst` (at least its size; `TooSmall` names the size needed)
    /// with positioned reads of that tensor's bytes only. Returns the bytes copied.
    ///
    /// On an object: ranged `GET`s of exactly the tensor's bytes, straight into `dst`.
    pub fn read_into(&self, name: Option<&str>, dst: &mut [u8]) -> Result<usize> {
        let entry = self.find(name)?;
        let len = room_for(entry, dst)?;
        let file = match &self.backing {
            Backing::Mapped { file, .. } => file,
            Backing::Remote { object, .. } => {
                object
                    .read_exact_at(&mut dst[..len], entry.offset)
                    .map_err(|e| self.tensor_context(e, entry))?;
                return Ok(len);
            }
        };
        file.read_exact_at(&mut dst[..len], entry.offset)
            .map_err(|e| {
                Error::io(
                    format!(
                        "reading tensor '{}' ({len} bytes at {}) from {}",
                        entry.name,
                        entry.offset,
                        self.path.display()
                    ),
                    e,
                )
            })?;
        Ok(len)
    }

    /// Like [`TensorFile::read_into`], but bypasses the page cache: when the tensor starts at
    /// a 4096-aligned file offset (every tensor of a file written with `align_4k`) and the
    /// file system accepts O_DIRECT, its bytes are read with O_DIRECT straight into `dst`
    /// when `dst` is 4096-aligned, else through a 4096-aligned bounce buffer of at most
    /// `DIRECT_BOUNCE` bytes; a final partial page always goes through a one-page bounce
    /// buffer. Otherwise (unaligned tensor, tmpfs ...) it falls back to `read_into`.
    ///
    /// Use it for large loads that should not evict other data from the page cache, or when
    /// the file was just written and its pages are not worth keeping. Returns the bytes copied.
    ///
    /// On an object there is no page cache to bypass: it is exactly [`TensorFile::read_into`].
    pub fn read_into_direct(&self, name: Option<&str>, dst: &mut [u8]) -> Result<usize> {
        let entry = self.find(name)?;
        let Backing::Mapped { direct, .. } = &self.backing else {
            return self.read_into(name, dst);
        };
        let direct = direct.get_or_init(|| {
            OpenNoFollow::read_only()
                .follow_symlinks()
                .direct(true)
                .open(&self.path)
                .ok()
        });
        let (Some(fd), true) = (direct, entry.offset % IO_ALIGN as u64 == 0) else {
            return self.read_into(name, dst);
        };
        let len = room_for(entry, dst)?;
        let ctx = |at: u64, n: usize, e: std::io::Error| {
            Error::io(
                format!(
                    "reading tensor '{}' with O_DIRECT ({n} bytes at {at}) from {}",
                    entry.name,
                    self.path.display()
                ),
                e,
            )
        };
        let body = len / IO_ALIGN * IO_ALIGN;
        if is_aligned(dst.as_ptr(), 0) {
            fd.read_exact_at(&mut dst[..body], entry.offset)
                .map_err(|e| ctx(entry.offset, body, e))?;
        } else if body > 0 {
            let mut bounce = AlignedBuf::new(body.min(DIRECT_BOUNCE))?;
            let mut done = 0;
            while done < body {
                let n = (body - done).min(bounce.capacity());
                let at = entry.offset + done as u64;
                fd.read_exact_at(&mut bounce.as_mut_slice()[..n], at)
                    .map_err(|e| ctx(at, n, e))?;
                dst[done..done + n].copy_from_slice(&bounce.as_slice()[..n]);
                done += n;
            }
        }
        if body < len {
            // The last partial page: read the whole page (O_DIRECT lengths are multiples of
            // 4096; the read is short where the page runs past the end of the file).
            let mut page = AlignedBuf::new(IO_ALIGN)?;
            let at = entry.offset + body as u64;
            let got = fd
                .read_at(page.as_mut_slice(), at)
                .map_err(|e| ctx(at, IO_ALIGN, e))?;
            if got < len - body {
                return Err(err!(
                    Corrupt,
                    "{} ended inside tensor '{}' (truncated while open?)",
                    self.path.display(),
                    entry.name
                ));
            }
            dst[body..len].copy_from_slice(&page.as_slice()[..len - body]);
        }
        Ok(len)
    }

    /// Copies one tensor into device memory `dst` (a `CUdeviceptr` of `cap` bytes on device
    /// `device`). `CudaUnavailable` where there is no CUDA driver or device (checked before
    /// anything is read). On an object the tensor is fetched into a temporary host buffer
    /// (freed before returning), then copied.
    ///
    /// # Safety
    /// `dst` must be a device allocation of at least `cap` bytes on device `device`.
    pub unsafe fn read_into_device(
        &self,
        name: Option<&str>,
        dst: u64,
        cap: usize,
        device: i32,
    ) -> Result<usize> {
        crate::cuda::available()?;
        let staged;
        let t = match &self.backing {
            Backing::Mapped { .. } => self.get(name)?,
            Backing::Remote { .. } => {
                let entry = self.find(name)?;
                if cap < entry.len as usize {
                    return Err(err!(
                        TooSmall,
                        "tensor '{}' is {} bytes, the device buffer holds {cap}",
                        entry.name,
                        entry.len
                    ));
                }
                let mut buf = AlignedBuf::new(entry.len as usize)?;
                let len = self.read_into(name, buf.as_mut_slice())?;
                staged = buf;
                TensorRef {
                    entry,
                    data: &staged.as_slice()[..len],
                }
            }
        };
        if cap < t.data.len() {
            return Err(err!(
                TooSmall,
                "tensor '{}' is {} bytes, the device buffer holds {cap}",
                t.entry.name,
                t.data.len()
            ));
        }
        // SAFETY: forwarded contract: `dst` holds at least `cap >= len` bytes on `device`.
        unsafe { crate::cuda::copy_to_device_on(device, dst, t.data) }.map_err(|e| {
            e.context(format!(
                "copying tensor '{}' from {} to device {device}",
                t.entry.name,
                self.path.display()
            ))
        })?;
        Ok(t.data.len())
    }
}

impl TensorFile {
    /// Names the tensor and the file in a read error.
    fn tensor_context(&self, e: Error, entry: &TensorEntry) -> Error {
        e.context(format!(
            "reading tensor '{}' ({} bytes at {}) from {}",
            entry.name,
            entry.len,
            entry.offset,
            self.path.display()
        ))
    }
}

/// The tensor's length, or `TooSmall` (naming the size needed) when `dst` cannot hold it.
fn room_for(entry: &TensorEntry, dst: &[u8]) -> Result<usize> {
    let len = entry.len as usize;
    if dst.len() < len {
        return Err(err!(
            TooSmall,
            "tensor '{}' is {len} bytes, the buffer holds {}",
            entry.name,
            dst.len()
        ));
    }
    Ok(len)
}
