//! The shared host region: one `MAP_SHARED` file holding every TP worker's slice of every
//! KV block, created once per engine instance, attached by each worker, optionally pinned.

mod fork;
pub(crate) mod layout;
mod metrics;
pub(crate) mod shm;

pub use shm::{list, remove, RegionEntry};

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memmap2::{MmapOptions, MmapRaw};

pub use layout::{Layout, ViewPacker, ViewPlacement, HEADER_LEN};
use shm::RegionFile;

use crate::cuda::HostRegistration;
use crate::{err, Error, ErrorKind, Result};

/// Which part of the region this process works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A TP worker: gets views of its own slices and pre-faults only those.
    Rank(u32),
    /// The scheduler side: no rank; sees whole rows and populates nothing.
    Scheduler,
}

/// Whether to page-lock the mapping with CUDA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pinning {
    /// Do not register with CUDA.
    Off,
    /// Register; fail with `CudaUnavailable` if CUDA is missing.
    Required,
    /// Register if CUDA is present, otherwise continue unpinned (see [`RegionInfo::pinned`]).
    IfAvailable,
}

/// How to open a region. [`RegionConfig::new`] fills the defaults.
#[derive(Clone, Debug)]
pub struct RegionConfig {
    /// Region name; the file is `<dir>/kvr_<name>.mmap`. No `/`, `..` or NUL.
    pub name: String,
    /// Directory of the file; default `/dev/shm`.
    pub dir: PathBuf,
    /// Geometry every attached process must agree on.
    pub layout: Layout,
    /// Worker rank or scheduler.
    pub role: Role,
    /// May this process create the file (or replace a stale one)? Default true. Without it,
    /// the open waits up to `attach_timeout` for a creator.
    pub create: bool,
    /// CUDA pinning. Default off.
    pub pinning: Pinning,
    /// Bound on waiting for a creator or a concurrent replacement. Default 10 s.
    pub attach_timeout: Duration,
    /// Pre-fault this rank's slices at open. Default true (ignored for the scheduler).
    pub populate: bool,
}

impl RegionConfig {
    /// A config with defaults: `/dev/shm`, create allowed, not pinned, 10 s timeout, populate.
    pub fn new(name: impl Into<String>, layout: Layout, role: Role) -> Self {
        RegionConfig {
            name: name.into(),
            dir: PathBuf::from("/dev/shm"),
            layout,
            role,
            create: true,
            pinning: Pinning::Off,
            attach_timeout: Duration::from_secs(10),
            populate: true,
        }
    }
}

/// What a region handle is and how it was opened.
#[derive(Clone, Debug)]
pub struct RegionInfo {
    /// The geometry.
    pub layout: Layout,
    /// This handle's role.
    pub role: Role,
    /// Whether this handle created the file (vs attached to an existing one).
    pub created: bool,
    /// Whether the mapping is registered with CUDA.
    pub pinned: bool,
    /// Why the mapping is not pinned, when pinning was requested "if available".
    pub pin_note: Option<String>,
    /// Time to create or attach, size and map the file.
    pub attach_time: Duration,
    /// Time to pre-fault this rank's slices.
    pub populate_time: Duration,
    /// Time to register with CUDA.
    pub pin_time: Duration,
    /// Path of the file.
    pub path: PathBuf,
}

/// An open region. Views handed out borrow it; dropping it unpins, unmaps, releases the
/// lock and removes the file if this was the last holder.
pub struct Region {
    // Field order is drop order: leave the fork handler's list, unregister from CUDA, then
    // unmap, then release the file.
    _fork: fork::Registration,
    _pin: Option<HostRegistration>,
    map: MmapRaw,
    file: RegionFile,
    packer: Mutex<ViewPacker>,
    info: RegionInfo,
    /// Listed in `kvr_metrics_text` while open (its gauges live in the registration).
    _metrics: (Arc<metrics::RegionGauges>, crate::metrics::Registration),
}

impl Drop for Region {
    fn drop(&mut self) {
        // The fields drop next, in order; the file's close protocol must not release the
        // lock of a description this handle shares with the process it came from.
        if self._fork.shares_parent_lock() {
            self.file.leave_lock_alone();
        }
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region").field("info", &self.info).finish()
    }
}

impl Region {
    /// Creates, attaches to, or replaces-if-stale the region described by `cfg`.
    pub fn open(cfg: &RegionConfig) -> Result<Region> {
        let layout = cfg.layout;
        if let Role::Rank(r) = cfg.role {
            if r >= layout.num_workers {
                return Err(Error::invalid(format!(
                    "rank {r} out of range for {} workers",
                    layout.num_workers
                )));
            }
        }
        if layout.file_len() > isize::MAX as u64 {
            return Err(Error::invalid(format!(
                "region of {} bytes cannot be mapped",
                layout.file_len()
            )));
        }
        let path = shm::region_path(&cfg.dir, &cfg.name)?;
        let started = Instant::now();
        let file = RegionFile::open(&path, &layout, cfg.create, cfg.attach_timeout)
            .map_err(|e| e.context(format!("opening region '{}'", cfg.name)))?;
        let map = MmapOptions::new()
            .len(layout.file_len() as usize)
            .map_raw(file.file())
            .map_err(|e| Error::io(format!("mapping region {}", path.display()), e))?;
        let attach_time = started.elapsed();

        let started = Instant::now();
        if let (Role::Rank(rank), true) = (cfg.role, cfg.populate) {
            // SAFETY: `map` covers the whole file, which has layout.file_len() bytes.
            unsafe { populate_rank(map.as_mut_ptr().add(HEADER_LEN as usize), &layout, rank) }
                .map_err(|e| e.context(format!("pre-faulting region {}", path.display())))?;
        }
        let populate_time = started.elapsed();

        let started = Instant::now();
        let (pin, pin_note) = match cfg.pinning {
            Pinning::Off => (None, None),
            Pinning::Required | Pinning::IfAvailable => {
                // SAFETY: the data area stays mapped until `pin` is dropped, which happens
                // before `map` (field order).
                let r = unsafe {
                    HostRegistration::register(
                        map.as_mut_ptr().add(HEADER_LEN as usize),
                        layout.data_len(),
                        layout.row_stride(),
                    )
                };
                match (r, cfg.pinning) {
                    (Ok(reg), _) => (Some(reg), None),
                    (Err(e), Pinning::IfAvailable) if e.kind() == ErrorKind::CudaUnavailable => {
                        (None, Some(e.to_string()))
                    }
                    (Err(e), _) => {
                        return Err(e.context(format!("pinning region {}", path.display())))
                    }
                }
            }
        };
        let pin_time = started.elapsed();

        let info = RegionInfo {
            layout,
            role: cfg.role,
            created: file.created(),
            pinned: pin.is_some(),
            pin_note,
            attach_time,
            populate_time,
            pin_time,
            path,
        };
        // From here on a forked child gives this region its own description (see `fork`).
        let fork = fork::register(
            std::os::fd::AsRawFd::as_raw_fd(file.file()),
            map.as_mut_ptr(),
            map.len(),
        );

        let gauges = Arc::new(metrics::RegionGauges {
            name: cfg.name.clone(),
            path: info.path.display().to_string(),
            blocks: layout.num_blocks,
            bytes: layout.data_len(),
            pinned: info.pinned,
        });
        let registration = crate::metrics::register(&gauges);
        Ok(Region {
            _fork: fork,
            _metrics: (gauges, registration),
            _pin: pin,
            map,
            file,
            packer: Mutex::new(ViewPacker::new(layout.cpu_page_size)),
            info,
        })
    }

    /// How the region was opened.
    pub fn info(&self) -> &RegionInfo {
        &self.info
    }

    /// The geometry.
    pub fn layout(&self) -> Layout {
        self.info.layout
    }

    /// Path of the backing file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Start of the data area (row 0); rows follow every `row_stride` bytes.
    pub fn data_ptr(&self) -> *mut u8 {
        // SAFETY: the mapping is file_len() >= HEADER_LEN bytes long.
        unsafe { self.map.as_mut_ptr().add(HEADER_LEN as usize) }
    }

    /// The next canonical tensor's view for this rank: successive calls pack tensors of
    /// `tensor_page_size` bytes per block inside the rank's slice, failing with `TooLarge`
    /// when the slice is full.
    pub fn create_view(&self, tensor_page_size: u64) -> Result<View<'_>> {
        let Role::Rank(rank) = self.info.role else {
            return Err(Error::invalid(
                "a scheduler handle has no rank; use the row view (kvr_region_row_view)",
            ));
        };
        let placement = self
            .packer
            .lock()
            .map_err(|_| err!(Internal, "view packer lock poisoned"))?
            .next(tensor_page_size)?;
        let layout = self.info.layout;
        let offset = layout.slice_offset(0, rank) + placement.offset_in_slice;
        Ok(View {
            // SAFETY: offset < data_len, inside the mapping.
            ptr: unsafe { self.data_ptr().add(offset as usize) },
            num_blocks: layout.num_blocks,
            bytes_per_block: placement.bytes_per_block,
            row_stride: layout.row_stride(),
            _region: PhantomData,
        })
    }

    /// The whole-row view (`num_blocks x row_stride`) a scheduler-side tier stores from.
    /// Any handle may ask for it; only a scheduler handle is expected to write through it.
    pub fn row_view(&self) -> View<'_> {
        let layout = self.info.layout;
        View {
            ptr: self.data_ptr(),
            num_blocks: layout.num_blocks,
            bytes_per_block: layout.row_stride(),
            row_stride: layout.row_stride(),
            _region: PhantomData,
        }
    }
}

/// A strided view of one tensor across all blocks: block `b` occupies
/// `[ptr + b*row_stride, ptr + b*row_stride + bytes_per_block)`. Valid while the region lives.
///
/// The memory is shared with other processes, which may write their own slices at any time;
/// kvr's layout guarantees views of different ranks and tensors never overlap.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    ptr: *mut u8,
    num_blocks: u64,
    bytes_per_block: u64,
    row_stride: u64,
    _region: PhantomData<&'a Region>,
}

// SAFETY: a View is a description of memory owned by the Region it borrows; copies through it
// are bounds-checked and the bytes are plain data.
unsafe impl Send for View<'_> {}
// SAFETY: as above.
unsafe impl Sync for View<'_> {}

impl View<'_> {
    /// Base pointer (block 0); hand `ptr + b*row_stride` to `cudaMemcpyAsync`.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    /// Number of blocks.
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    /// Bytes of this tensor in one block.
    pub fn bytes_per_block(&self) -> u64 {
        self.bytes_per_block
    }
    /// Distance between consecutive blocks.
    pub fn row_stride(&self) -> u64 {
        self.row_stride
    }

    fn block_ptr(&self, block: u64, len: usize) -> Result<*mut u8> {
        if block >= self.num_blocks {
            return Err(Error::invalid(format!(
                "block {block} out of range (num_blocks {})",
                self.num_blocks
            )));
        }
        if len as u64 != self.bytes_per_block {
            return Err(err!(
                InvalidArgument,
                "buffer is {len} bytes, a block of this view is {} bytes",
                self.bytes_per_block
            ));
        }
        // SAFETY: block < num_blocks, so the offset is inside the mapped data area.
        Ok(unsafe { self.ptr.add((block * self.row_stride) as usize) })
    }

    /// Copies `src` (exactly `bytes_per_block` bytes) into block `block`.
    pub fn write_block(&self, block: u64, src: &[u8]) -> Result<()> {
        let dst = self.block_ptr(block, src.len())?;
        // SAFETY: `dst` has bytes_per_block bytes inside the mapping; `src` is a distinct
        // Rust slice (the mapping is never handed out as a Rust slice), so no overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        Ok(())
    }

    /// Copies block `block` (exactly `bytes_per_block` bytes) into `dst`.
    pub fn read_block(&self, block: u64, dst: &mut [u8]) -> Result<()> {
        let src = self.block_ptr(block, dst.len())?;
        // SAFETY: as in `write_block`, reversed.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
}

const PAGE: u64 = 4096;

/// Pre-faults (for writing) the pages of `rank`'s slices, merging page-adjacent ranges.
///
/// # Safety
/// `data` must point to a live shared mapping of at least `layout.data_len()` bytes.
unsafe fn populate_rank(data: *mut u8, layout: &Layout, rank: u32) -> Result<()> {
    let mut pending: Option<(u64, u64)> = None;
    for block in 0..layout.num_blocks {
        let start = layout.slice_offset(block, rank) / PAGE * PAGE;
        let end = (layout.slice_offset(block, rank) + layout.cpu_page_size).div_ceil(PAGE) * PAGE;
        let end = end.min(layout.data_len().div_ceil(PAGE) * PAGE);
        pending = match pending {
            Some((s, e)) if start <= e => Some((s, e.max(end))),
            Some((s, e)) => {
                // SAFETY: [s, e) lies inside the mapping (forwarded contract).
                unsafe { populate_range(data, s, e) }?;
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    if let Some((s, e)) = pending {
        // SAFETY: as above.
        unsafe { populate_range(data, s, e) }?;
    }
    Ok(())
}

/// # Safety
/// `[data+start, data+end)` must be inside a live shared mapping; `data` page-aligned.
unsafe fn populate_range(data: *mut u8, start: u64, end: u64) -> Result<()> {
    // SAFETY: the range is mapped (caller's contract); MADV_POPULATE_WRITE only faults pages in.
    let rc = unsafe {
        libc::madvise(
            data.add(start as usize).cast(),
            (end - start) as usize,
            libc::MADV_POPULATE_WRITE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINVAL) {
        // Kernel older than 5.14: touch each page. An atomic add of 0 write-faults the page
        // without changing bytes another process may be writing.
        let mut off = start;
        while off < end {
            // SAFETY: in range; AtomicU8 has the layout of u8 and the memory is shared plain data.
            let byte = unsafe { &*(data.add(off as usize) as *const std::sync::atomic::AtomicU8) };
            byte.fetch_add(0, std::sync::atomic::Ordering::Relaxed);
            off += PAGE;
        }
        return Ok(());
    }
    Err(Error::io(
        format!("MADV_POPULATE_WRITE of {} bytes", end - start),
        e,
    ))
}
