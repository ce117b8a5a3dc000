//! Tensor files: safetensors written from strided tensors (streaming, atomic, optionally
//! 4 KiB-aligned), read lazily and zero-copy from a read-only mapping, a lazy tensor directory
//! with reference-counted lifetime, and export/import of region blocks.
//!
//! Files live at local paths or, given as `s3://bucket/key`, in an S3 store ([`location`]).
//!
//! Files are plain safetensors (see `header` for the format and the alignment scheme): any
//! safetensors reader (Python, Rust, C++) opens them, and kvr opens theirs.

pub(crate) mod codec;
pub(crate) mod dir;
pub(crate) mod dtype;
pub(crate) mod export;
pub(crate) mod file;
mod gather;
pub(crate) mod header;
pub mod location;
pub use header::nbytes;
pub(crate) mod remote;
mod sink;
pub(crate) mod write;

pub use codec::TensorSpec;
pub use dir::{Adopt, ItemIds, LazyTensor, TensorDir};
pub use dtype::{Dtype, ALL_DTYPES};
pub use export::{export_blocks, import_blocks};
pub use file::{TensorEntry, TensorFile, TensorRef};
pub use location::Location;
pub use remote::FetchStats;
pub use write::{write, write_to, TensorIn, WriteOptions};
