//! Shared I/O machinery, and the one home of every OS file mechanism the tiers use:
//!
//! - `file`: opening by path (never through a symlink), regular-file checks, same-inode
//!   checks;
//! - `publish`: building a file under a temporary name, then publishing it atomically;
//! - `space`: reserving a file's space up front (with a fallback where `fallocate` is
//!   missing), free space;
//! - `lock`: `flock` and byte-range liveness locks;
//! - `vectored`: positional whole-buffer and vectored reads and writes;
//! - `direct`: O_DIRECT probing and the transfer plan (aligned part in place, the rest
//!   through a bounce buffer), with `aligned` buffers, rounding and the `bounce` pool;
//! - `dir`: directory placement hints;
//! - `close_behind`: closing finished files off the caller's path on network file systems;
//! - a worker `pool` and the async `job` handle that batched submits return.

pub(crate) mod aligned;
pub(crate) mod bounce;
pub(crate) mod close_behind;
pub(crate) mod dir;
pub(crate) mod direct;
pub(crate) mod file;
pub(crate) mod job;
pub(crate) mod lock;
pub(crate) mod pool;
pub(crate) mod publish;
pub(crate) mod space;
pub(crate) mod vectored;

pub use aligned::{align_down, align_up, is_aligned, is_aligned_ptr, AlignedBuf};
pub use bounce::{Bounce, BouncePool};
pub use direct::{probe, DirectIo, SegmentPlan, TransferPlan};
pub use job::{Job, JobProgress};
pub use pool::IoPool;
pub use vectored::RawSegment;

/// Alignment of every O_DIRECT buffer, offset and length in kvr's file formats.
pub const IO_ALIGN: usize = 4096;
