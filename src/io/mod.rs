//! Shared I/O machinery: page-aligned buffers for O_DIRECT, direct-I/O probing, a worker pool
//! and the async job handle that batched submits return.

pub mod aligned;
pub mod bounce;
pub mod direct;
pub mod job;
pub mod pool;
pub mod uring;
pub mod vectored;

pub use aligned::{is_aligned, is_aligned_ptr, AlignedBuf};
pub use bounce::{Bounce, BouncePool};
pub use direct::DirectIo;
pub use job::{Job, JobProgress};
pub use pool::IoPool;

/// Alignment of every O_DIRECT buffer, offset and length in kvr's file formats.
pub const IO_ALIGN: usize = 4096;
