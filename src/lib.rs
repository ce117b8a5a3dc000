//! # kvr: KV-cache storage tiers for C++ LLM inference engines
//!
//! kvr owns the places a KV cache goes when it leaves GPU memory, and hands out raw,
//! stable, correctly laid-out host pointers an engine can give to `cudaMemcpyAsync`:
//!
//! - [`region`]: a host-memory region shared by all tensor-parallel workers of one node,
//!   mapped from `/dev/shm`, optionally pinned for DMA, crash-safe across SIGKILL.
//! - [`fs`]: a content-addressed block store on a local or shared file system (one
//!   safetensors file per block, atomic rename, checksums, O_DIRECT, LRU capacity).
//! - [`disk`]: a preallocated file of fixed-size slots for local spill, with an in-memory LRU
//!   index rebuilt from checksummed slot headers at open, crash-safe across SIGKILL.
//! - [`obj`]: KV blocks in an S3 object store, one object per block in the fs store's block
//!   format, shared between hosts; publish-once conditional PUTs, verified loads.
//! - [`tensors`]: safetensors files written from strided tensors and read lazily (zero-copy),
//!   a lazy tensor directory, and export/import of region blocks.
//! - [`namespace`]: canonical namespace names from what makes blocks compatible (model,
//!   dtype, geometry, parallel position, tenant).
//! - [`logging`] and [`metrics`]: log records to the engine's callback, Prometheus text of
//!   every open handle's counters and latencies.
//!
//! The Rust API here is safe; the C ABI in [`ffi`] is a thin layer over it (see `include/kvr.h`).

#![deny(unsafe_op_in_unsafe_fn)]
// Every unsafe block states why it is sound; enforced by machine, not by habit.
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod cuda;
pub mod disk;
mod error;
pub mod ffi;
pub mod fs;
pub mod io;
pub mod key;
pub mod logging;
pub mod metrics;
pub mod namespace;
pub mod obj;
pub mod region;
pub mod tensors;

pub use disk::{DiskConfig, DiskStats, EntryLen, SlotFile};
pub use error::{Error, ErrorKind, Result};
pub use fs::{
    Durability, FsConfig, FsStats, FsStore, LoadRequest, StoreRequest, Stored, WriteMode,
};
pub use key::Key;
pub use namespace::Namespace;
pub use obj::{ObjConfig, ObjStats, ObjStore};
pub use region::{Layout, Pinning, Region, RegionConfig, RegionInfo, Role, View};
pub use tensors::{
    Dtype, LazyTensor, TensorDir, TensorFile, TensorIn, TensorRef, TensorSpec, WriteOptions,
};
