//! Lazy reading: map the file read-only, parse and validate only the header, hand out
//! zero-copy views and targeted copies of single tensors.

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
use super::Dtype;
use crate::io::aligned::is_aligned;
use crate::io::file::OpenNoFollow;
use crate::io::{AlignedBuf, IO_ALIGN};
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

/// An open tensor file: a read-only mapping plus the validated header.
///
/// Like every mmap reader, the file must not be truncated or rewritten in place while open
/// (kvr itself only ever replaces files by rename, which is safe).
pub struct TensorFile {
    path: PathBuf,
    file: File,
    map: Mmap,
    tensors: Vec<TensorEntry>,
    padding: Vec<ParsedTensor>,
    data_start: u64,
    /// Name -> position, built on the second lookup (one lookup is a scan: cheaper than
    /// hashing every name, and the common "open, get one tensor" stays fast).
    index: OnceLock<HashMap<String, usize>>,
    lookups: AtomicBool,
    /// A second descriptor opened with O_DIRECT on first use of `read_into_direct`
    /// (`None` when the file system refuses O_DIRECT).
    direct: OnceLock<Option<File>>,
    metadata: Vec<(String, String)>,
    metadata_c: Vec<CString>,
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

/// The header bytes of a file of `len >= 8` bytes, read with `pread` rather than through
/// the mapping: a first fault on the mapping reads the file's whole readahead window around
/// it synchronously (16 MiB on a disk with 8 MiB readahead under `POSIX_FADV_SEQUENTIAL`),
/// which made a cold open + get of one tensor cost that read.
fn read_head(file: &File, len: u64) -> Result<Vec<u8>> {
    let first = len.min(HEAD_READ) as usize;
    let mut buf = vec![0u8; first];
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| Error::io(format!("reading the first {first} bytes"), e))?;
    let need = header::head_len(buf[..8].try_into().expect("len >= 8"), len) as usize;
    if need > first {
        buf.resize(need, 0);
        file.read_exact_at(&mut buf[first..], first as u64)
            .map_err(|e| Error::io(format!("reading the {need}-byte header"), e))?;
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
        let Parsed {
            tensors,
            padding,
            metadata,
            data_start,
        } = header::parse_head(&read_head(&file, len).map_err(ctx)?, len).map_err(ctx)?;
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
        Ok(TensorFile {
            path: path.to_path_buf(),
            file,
            map,
            tensors,
            padding,
            data_start,
            index: OnceLock::new(),
            lookups: AtomicBool::new(false),
            direct: OnceLock::new(),
            metadata,
            metadata_c,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
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
        self.map.len() as u64
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
        let found = match name {
            Some(n) => self.position(n).map(|i| &self.tensors[i]),
            None if self.tensors.len() == 1 => Some(&self.tensors[0]),
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
    pub fn get(&self, name: Option<&str>) -> Result<TensorRef<'_>> {
        let entry = self.find(name)?;
        let (start, len) = (entry.offset as usize, entry.len as usize);
        if len > 0 && !entry.prefetched.swap(true, Ordering::Relaxed) {
            // Start reading the tensor's pages, all of them and only them, in large
            // requests; the faults of the caller's first touches then wait for that I/O
            // rather than each reading one page (the mapping has no readahead, see `open`).
            let _ = self.map.advise_range(Advice::WillNeed, start, len);
        }
        let data = &self.map[start..start + len];
        Ok(TensorRef { entry, data })
    }

    /// Copies one tensor into `dst` (at least its size; `TooSmall` names the size needed)
    /// with positioned reads of that tensor's bytes only. Returns the bytes copied.
    pub fn read_into(&self, name: Option<&str>, dst: &mut [u8]) -> Result<usize> {
        let entry = self.find(name)?;
        let len = room_for(entry, dst)?;
        self.file
            .read_exact_at(&mut dst[..len], entry.offset)
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
    /// [`DIRECT_BOUNCE`] bytes; a final partial page always goes through a one-page bounce
    /// buffer. Otherwise (unaligned tensor, tmpfs ...) it falls back to `read_into`.
    ///
    /// Use it for large loads that should not evict other data from the page cache, or when
    /// the file was just written and its pages are not worth keeping. Returns the bytes copied.
    pub fn read_into_direct(&self, name: Option<&str>, dst: &mut [u8]) -> Result<usize> {
        let entry = self.find(name)?;
        let direct = self.direct.get_or_init(|| {
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
    /// `device`). `CudaUnavailable` where there is no CUDA driver or device.
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
        let t = self.get(name)?;
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
