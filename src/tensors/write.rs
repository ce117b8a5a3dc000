//! Streaming, atomic writing of tensor files from strided tensors.
//!
//! The header is planned first ([`super::header::plan`]), then each tensor's bytes are
//! produced in C order straight into the file (gathering: `tensors/gather.rs`): contiguous
//! runs of at least [`CHUNK`] bytes are written from the caller's memory directly; shorter
//! runs and transposed (element-wise) layouts are gathered into a bounded [`CHUNK`]-byte
//! buffer. Files of more than two chunks hand each full buffer to a writer thread and
//! gather into a second one meanwhile (the sink: `tensors/sink.rs`), so the element-wise
//! gather of a transposed tensor overlaps with the write. Nothing else is buffered.
//! The file appears atomically: a temp file in the same directory, fsync, rename, fsync of
//! the directory; on any error the temp file is removed. An `s3://` location streams the
//! same bytes as a multipart upload that completes (and so appears) only at the end
//! (`tensors/remote.rs`).

use std::cell::RefCell;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::gather::Gather;
use super::header::{self, NamedTensor, Piece, Plan};
use super::location::Location;
use super::remote::RemoteObject;
use super::sink::{Background, Out, Sink};
use super::Dtype;
use super::TensorSpec;
use crate::io::file::OpenNoFollow;
use crate::io::publish::{sibling_path, sync_dir, TempFile};
use crate::io::space::{self, Unsupported};
use crate::obj::ObjConfig;
use crate::{err, Error, Result};

pub use super::gather::extent;

/// Size of the gather buffer.
pub const CHUNK: usize = 4 << 20;

/// A tensor to write: shape and strides (in elements) over a borrowed byte buffer.
#[derive(Clone, Copy, Debug)]
pub struct TensorIn<'a> {
    /// Unique name.
    pub name: &'a str,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions (empty for a scalar).
    pub shape: &'a [u64],
    /// Distance between consecutive elements of each dimension, in elements (may be negative
    /// or zero); `None` means C-contiguous. Packed sub-byte dtypes must be contiguous.
    pub strides: Option<&'a [i64]>,
    /// Memory holding every element the shape and strides reach.
    pub data: &'a [u8],
    /// Byte offset in `data` of element `[0, 0, ...]`.
    pub offset: usize,
}

impl<'a> TensorIn<'a> {
    /// A C-contiguous tensor whose bytes are exactly `data`.
    pub fn contiguous(name: &'a str, dtype: Dtype, shape: &'a [u64], data: &'a [u8]) -> Self {
        TensorIn {
            name,
            dtype,
            shape,
            strides: None,
            data,
            offset: 0,
        }
    }
}

/// Options of [`write()`].
#[derive(Clone, Copy, Debug)]
pub struct WriteOptions {
    /// Start every tensor's data at a 4096-aligned file offset (see the `header` module).
    pub align_4k: bool,
    /// fsync the file and its directory before returning (default true).
    pub sync: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            align_4k: false,
            sync: true,
        }
    }
}

/// Where a tensor's bytes come from.
pub(crate) enum Source<'a> {
    /// A strided tensor.
    Strided(TensorIn<'a>),
    /// Rows of `len` bytes at raw addresses (region blocks), in order.
    Rows {
        /// Row start addresses.
        ptrs: Vec<*const u8>,
        /// Bytes per row.
        len: usize,
        /// Receives the xxh3-64 of each row as it is written.
        hashes: Option<&'a RefCell<Vec<u64>>>,
        /// Seed of each row's hash (region export binds a block's checksum to its id with
        /// it); rows past its end hash with seed 0.
        hash_seeds: &'a [u64],
    },
    /// Plain bytes.
    Bytes(&'a [u8]),
    /// The row hashes collected by an earlier `Rows` source, as little-endian u64s.
    Hashes(&'a RefCell<Vec<u64>>),
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temp file next to `target` (removed on drop unless renamed into place).
fn create_temp(target: &Path) -> Result<TempFile> {
    if target.file_name().is_none() {
        return Err(err!(
            InvalidArgument,
            "path '{}' has no file name",
            target.display()
        ));
    }
    let tag = format_args!(
        "kvr-tmp.{}.{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let path = sibling_path(target, tag).map_err(|e| Error::io("naming a temp file", e))?;
    TempFile::create_named(path.clone(), OpenNoFollow::write_only(), 0o644)
        .map_err(|e| Error::io(format!("creating temp file {}", path.display()), e))
}

/// Writes `tensors` and `metadata` as a safetensors file at `path`, atomically.
/// Returns the file size.
pub fn write(
    path: &Path,
    tensors: &[TensorIn<'_>],
    metadata: &[(&str, &str)],
    opts: WriteOptions,
) -> Result<u64> {
    let sources: Vec<Source<'_>> = tensors.iter().map(|t| Source::Strided(*t)).collect();
    write_sources(path, &specs_of(tensors), &sources, metadata, opts)
}

/// The gather plan of each strided source (checks every tensor before a byte is written).
fn plan_gathers(sources: &[Source<'_>]) -> Result<Vec<Option<Gather>>> {
    sources
        .iter()
        .map(|s| match s {
            Source::Strided(t) => Gather::new(t).map(Some),
            Source::Rows { .. } | Source::Bytes(_) | Source::Hashes(_) => Ok(None),
        })
        .collect()
}

fn specs_of(tensors: &[TensorIn<'_>]) -> Vec<NamedTensor> {
    tensors
        .iter()
        .map(|t| NamedTensor {
            name: t.name.to_string(),
            spec: TensorSpec {
                dtype: t.dtype,
                shape: t.shape.to_vec(),
            },
        })
        .collect()
}

/// Writes tensors from arbitrary sources (strided tensors or region rows).
pub(crate) fn write_sources(
    path: &Path,
    specs: &[NamedTensor],
    sources: &[Source<'_>],
    metadata: &[(&str, &str)],
    opts: WriteOptions,
) -> Result<u64> {
    let ctx = |e: Error| e.context(format!("writing tensor file {}", path.display()));
    let plan: Plan = header::plan(specs, metadata, opts.align_4k).map_err(ctx)?;
    let gathers = plan_gathers(sources).map_err(ctx)?;
    let mut tmp = create_temp(path).map_err(ctx)?;
    // Reserve the space up front so a full disk fails here, not half-way (only a lack of
    // space is an error: the writes allocate too).
    if let Err(e) = space::reserve(tmp.file(), plan.file_len, Unsupported::Skip) {
        if space::is_out_of_space(&e) {
            return Err(ctx(Error::io(
                format!("reserving {} bytes", plan.file_len),
                e,
            )));
        }
    }
    let written = stream(Out::File(tmp.file()), &plan, specs, sources, &gathers, &ctx)?;
    if written != plan.file_len {
        return Err(ctx(err!(
            Internal,
            "wrote {} bytes, planned {}",
            written,
            plan.file_len
        )));
    }
    if opts.sync {
        tmp.file()
            .sync_all()
            .map_err(|e| ctx(Error::io("fsync", e)))?;
    }
    tmp.rename_over(path).map_err(|e| {
        let name = tmp.name().unwrap_or(path);
        ctx(Error::io(
            format!("renaming {} into place", name.display()),
            e,
        ))
    })?;
    if opts.sync {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = sync_dir(dir);
        }
    }
    Ok(plan.file_len)
}

/// Produces the planned file (header, tensors, padding) into `out`; the bytes written.
fn stream(
    out: Out<'_>,
    plan: &Plan,
    specs: &[NamedTensor],
    sources: &[Source<'_>],
    gathers: &[Option<Gather>],
    ctx: &dyn Fn(Error) -> Error,
) -> Result<u64> {
    let produce = |sink: &mut Sink<'_>| -> Result<u64> {
        sink.put(&plan.header).map_err(ctx)?;
        for piece in &plan.pieces {
            match *piece {
                Piece::Tensor { index, .. } => sink
                    .source(&sources[index], gathers[index].as_ref())
                    .map_err(|e| ctx(e.context(format!("tensor '{}'", specs[index].name))))?,
                Piece::Pad { len } => sink.zeros(len).map_err(ctx)?,
            }
        }
        sink.finish().map_err(ctx)
    };
    let buf = Vec::with_capacity(CHUNK.min(plan.file_len as usize));
    // Files of more than two buffers get a background writer (a thread per file write).
    if plan.file_len as usize > 2 * CHUNK {
        std::thread::scope(|scope| {
            let mut sink = Sink {
                out,
                buf,
                written: 0,
                background: Some(Background::start(scope, out)),
            };
            let r = produce(&mut sink);
            if let Some(bg) = sink.background.as_mut() {
                let _ = bg.finish(); // after an error: stop the writer before leaving
            }
            r
        })
    } else {
        produce(&mut Sink {
            out,
            buf,
            written: 0,
            background: None,
        })
    }
}

/// Writes `tensors` and `metadata` as a safetensors file at `location`: a path, a `file://`
/// URL (exactly [`write()`] of its path) or `s3://bucket/key`. An object is streamed as a
/// multipart upload of bounded parts and appears only once whole (on any error the upload is
/// aborted and no object appears; an existing object stays as it was). `cfg` gives the
/// endpoint, region, credentials and timeouts of S3 locations (its `url` and `namespace`
/// are not used); `None`: the `AWS_*` environment variables. Returns the file size.
pub fn write_to(
    location: &str,
    cfg: Option<&ObjConfig>,
    tensors: &[TensorIn<'_>],
    metadata: &[(&str, &str)],
    opts: WriteOptions,
) -> Result<u64> {
    let sources: Vec<Source<'_>> = tensors.iter().map(|t| Source::Strided(*t)).collect();
    let specs = specs_of(tensors);
    let loc = Location::parse(location)
        .map_err(|e| e.context(format!("writing tensor file {location}")))?;
    write_sources_at(&loc, cfg, &specs, &sources, metadata, opts)
}

/// [`write_sources`] at a path or an S3 object.
pub(crate) fn write_sources_at(
    loc: &Location,
    cfg: Option<&ObjConfig>,
    specs: &[NamedTensor],
    sources: &[Source<'_>],
    metadata: &[(&str, &str)],
    opts: WriteOptions,
) -> Result<u64> {
    let (bucket, key) = match loc {
        Location::Local(path) => return write_sources(path, specs, sources, metadata, opts),
        Location::S3 { bucket, key } => (bucket, key),
    };
    let object = RemoteObject::new(bucket, key, cfg)?;
    let ctx = |e: Error| e.context(format!("writing tensor file {}", object.url()));
    let plan: Plan = header::plan(specs, metadata, opts.align_4k).map_err(ctx)?;
    let gathers = plan_gathers(sources).map_err(ctx)?;
    // `opts.sync` has nothing to do here: a completed upload is the store's to keep.
    let upload = object.writer(plan.file_len).map_err(ctx)?;
    let written = stream(Out::Remote(&upload), &plan, specs, sources, &gathers, &ctx)?;
    if written != plan.file_len {
        return Err(ctx(err!(
            Internal,
            "wrote {} bytes, planned {}",
            written,
            plan.file_len
        )));
    }
    upload.finish().map_err(ctx)?;
    Ok(plan.file_len)
}
