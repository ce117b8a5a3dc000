//! Streaming, atomic writing of tensor files from strided tensors.
//!
//! The header is planned first ([`super::header::plan`]), then each tensor's bytes are
//! produced in C order straight into the file: contiguous runs of at least [`CHUNK`] bytes are
//! written from the caller's memory directly; shorter runs and transposed (element-wise)
//! layouts are gathered into a bounded [`CHUNK`]-byte buffer. Files of more than two chunks
//! hand each full buffer to a writer thread and gather into a second one meanwhile, so the
//! element-wise gather of a transposed tensor overlaps with the write. Nothing else is
//! buffered.
//! The file appears atomically: a temp file in the same directory, fsync, rename, fsync of
//! the directory; on any error the temp file is removed.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::header::{self, Piece, Plan, TensorSpec};
use super::Dtype;
use crate::{err, Error, Result};
use xxhash_rust::xxh3::Xxh3;

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

/// Options of [`write`].
#[derive(Clone, Copy, Debug)]
pub struct WriteOptions {
    /// Start every tensor's data at a 4096-aligned file offset (see [`super::header`]).
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

/// Byte range `[lo, hi)` relative to element `[0,..]` that a strided tensor touches, or
/// `None` for a tensor with no elements. Pure; i128 so no input overflows.
pub fn extent(shape: &[u64], strides: &[i64], elem: u64) -> Option<(i128, i128)> {
    if shape.contains(&0) {
        return None;
    }
    let (mut lo, mut hi) = (0i128, 0i128);
    for (&d, &s) in shape.iter().zip(strides) {
        let span = (d as i128 - 1) * s as i128 * elem as i128;
        if span < 0 {
            lo += span;
        } else {
            hi += span;
        }
    }
    Some((lo, hi + elem as i128))
}

/// A validated gather program: outer dims iterated as an odometer, inner runs copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Gather {
    /// Outer dimensions (sizes, byte strides), outermost first.
    outer: Vec<(u64, i64)>,
    /// Elements in the innermost loop and their byte stride.
    inner_len: u64,
    inner_stride: i64,
    /// Bytes per element (or per contiguous run when `inner_stride == elem`).
    elem: usize,
    /// Total bytes produced.
    total: u64,
}

impl Gather {
    /// Plans the copy of a tensor: drops size-1 dims, merges dims that are contiguous with
    /// each other, and checks the reach stays within `data_len` bytes around `offset`.
    pub(crate) fn new(t: &TensorIn<'_>) -> Result<Gather> {
        let total = header::nbytes(t.dtype, t.shape)?;
        let ctx = |e: Error| e.context(format!("tensor '{}'", t.name));
        let contiguous_strides = || -> Vec<i64> {
            let mut s = vec![0i64; t.shape.len()];
            let mut acc = 1i64;
            for i in (0..t.shape.len()).rev() {
                s[i] = acc;
                acc = acc.saturating_mul(t.shape[i].min(i64::MAX as u64) as i64);
            }
            s
        };
        let strides: Vec<i64> = match t.strides {
            Some(s) if s.len() != t.shape.len() => {
                return Err(ctx(err!(
                    InvalidArgument,
                    "{} strides for {} dimensions",
                    s.len(),
                    t.shape.len()
                )))
            }
            Some(s) => s.to_vec(),
            None => contiguous_strides(),
        };
        let Some(elem) = t.dtype.byte_size() else {
            // Packed sub-byte types: only contiguous data, taken as raw bytes.
            if t.strides.is_some() && strides != contiguous_strides() && total > 0 {
                return Err(ctx(err!(
                    InvalidArgument,
                    "{} is a packed sub-byte dtype; strided {} data is not supported, pass it contiguous",
                    t.dtype,
                    t.dtype
                )));
            }
            check_reach(t, 0, total as i128).map_err(ctx)?;
            return Ok(Gather {
                outer: vec![],
                inner_len: 1,
                inner_stride: total as i64,
                elem: total as usize,
                total,
            });
        };
        let Some((lo, hi)) = extent(t.shape, &strides, elem as u64) else {
            return Ok(Gather {
                outer: vec![],
                inner_len: 0,
                inner_stride: 0,
                elem,
                total: 0,
            });
        };
        check_reach(t, lo, hi).map_err(ctx)?;
        // Byte strides fit i64: |stride*(dim-1)*elem| <= reach <= data.len().
        let mut dims: Vec<(u64, i64)> = t
            .shape
            .iter()
            .zip(&strides)
            .filter(|(&d, _)| d != 1)
            .map(|(&d, &s)| (d, s * elem as i64))
            .collect();
        // Merge (outer, inner) when outer's stride equals inner's full extent.
        let mut merged: Vec<(u64, i64)> = Vec::with_capacity(dims.len());
        while let Some(d) = dims.pop() {
            match merged.last_mut() {
                Some(inner) if d.1 == inner.1 * inner.0 as i64 => {
                    inner.0 *= d.0;
                }
                _ => merged.push(d),
            }
        }
        merged.reverse();
        let (inner_len, inner_stride) = merged.pop().unwrap_or((1, elem as i64));
        let (elem, inner_len, inner_stride) = if inner_stride == elem as i64 {
            // A contiguous run: copy it as one piece.
            (
                (inner_len as usize) * elem,
                1,
                (inner_len as usize * elem) as i64,
            )
        } else {
            (elem, inner_len, inner_stride)
        };
        Ok(Gather {
            outer: merged,
            inner_len,
            inner_stride,
            elem,
            total,
        })
    }

    /// Rows gathered together by the tiled (transpose) path, when it applies: the copy is
    /// element-wise and the last outer dimension is closer to contiguous than the inner one,
    /// so reading `tile` elements along it per inner index touches one cache line instead of
    /// `tile`.
    pub(crate) fn tile(&self) -> Option<usize> {
        let &(len, stride) = self.outer.last()?;
        if self.inner_len < 2 || stride.unsigned_abs() >= self.inner_stride.unsigned_abs() {
            return None;
        }
        let row = self.inner_len as usize * self.elem;
        let t = (TILE_ROWS as u64).min(len).min((CHUNK / row.max(1)) as u64) as usize;
        (t >= 2).then_some(t)
    }

    /// Calls `f(byte offset relative to element 0)` for every inner loop, in C order.
    fn for_each_inner(&self, f: impl FnMut(i64) -> Result<()>) -> Result<()> {
        if self.total == 0 {
            return Ok(());
        }
        odometer(&self.outer, f)
    }
}

/// Output rows per tile of the tiled gather: along them the source is read sequentially
/// (a run of TILE_ROWS elements per source row), long enough for the hardware prefetcher.
const TILE_ROWS: usize = 256;
/// Source rows (output elements) per block within a tile: TILE rows x TILE_ROWS elements of
/// the source and as many output bytes stay in L1/L2 while the block is transposed.
const TILE: usize = 64;

/// Transposes with SSE2 (part of the x86_64 baseline, so always available there).
#[cfg(target_arch = "x86_64")]
mod transpose {
    use std::arch::x86_64::*;

    use super::TILE;

    /// Output row `k < n`, element `j < inner` (E bytes each, rows `inner*E` bytes apart in
    /// `dp`) <- the source element at byte `start + k*E + j*inner_stride` of `sp`.
    /// Full L x L blocks (L = 16/E) go through registers; the edges element by element.
    ///
    /// # Safety
    /// Every source element so described lies inside the allocation at `sp`; `dp` is valid
    /// for `n*inner*E` bytes of writes and does not overlap the source.
    pub(super) unsafe fn tile<const E: usize>(
        sp: *const u8,
        dp: *mut u8,
        start: i64,
        n: usize,
        inner: usize,
        inner_stride: i64,
    ) {
        let lanes = 16 / E;
        let row = inner * E;
        let src = |k: usize, j: usize| (start + (k * E) as i64 + j as i64 * inner_stride) as usize;
        // SAFETY (all blocks below): loads read elements k0..k0+lanes of source row j, all
        // elements of the view (k < n, j < inner); stores write output rows k < n at
        // elements j < inner, inside `dp`'s n*row bytes.
        let scalar = |k: std::ops::Range<usize>, j: std::ops::Range<usize>| {
            for k in k {
                for j in j.clone() {
                    unsafe {
                        std::ptr::copy_nonoverlapping(sp.add(src(k, j)), dp.add(k * row + j * E), E)
                    };
                }
            }
        };
        for jb in (0..inner).step_by(TILE) {
            let je = (jb + TILE).min(inner);
            let mut j0 = jb;
            while j0 + lanes <= je {
                // Prefetch the next block's source rows: each block reads `lanes` short
                // runs (n elements) too few for the hardware prefetcher to pick up.
                if j0 + 2 * lanes <= je {
                    for q in 0..lanes {
                        for off in (0..n * E).step_by(64) {
                            let p = src(0, j0 + lanes + q) + off;
                            // SAFETY: a prefetch is a hint that never faults; the address
                            // is inside source row j0+lanes+q of the view anyway.
                            unsafe { _mm_prefetch::<_MM_HINT_T0>(sp.add(p).cast()) };
                        }
                    }
                }
                let mut k0 = 0;
                while k0 + lanes <= n {
                    // SAFETY: loads of source row j0+q at elements k0..k0+lanes < n and stores
                    // to output rows k0+q < n at elements j0..j0+lanes: see the note above.
                    let ld = |q: usize| unsafe { _mm_loadu_si128(sp.add(src(k0, j0 + q)).cast()) };
                    let st = |q: usize, v: __m128i| unsafe {
                        _mm_storeu_si128(dp.add((k0 + q) * row + j0 * E).cast(), v)
                    };
                    // SAFETY: SSE2 is part of x86_64; the intrinsics only touch registers.
                    unsafe {
                        if E == 2 {
                            let a: [__m128i; 8] = std::array::from_fn(ld);
                            let t0 = _mm_unpacklo_epi16(a[0], a[1]);
                            let t1 = _mm_unpackhi_epi16(a[0], a[1]);
                            let t2 = _mm_unpacklo_epi16(a[2], a[3]);
                            let t3 = _mm_unpackhi_epi16(a[2], a[3]);
                            let t4 = _mm_unpacklo_epi16(a[4], a[5]);
                            let t5 = _mm_unpackhi_epi16(a[4], a[5]);
                            let t6 = _mm_unpacklo_epi16(a[6], a[7]);
                            let t7 = _mm_unpackhi_epi16(a[6], a[7]);
                            let u0 = _mm_unpacklo_epi32(t0, t2);
                            let u1 = _mm_unpackhi_epi32(t0, t2);
                            let u2 = _mm_unpacklo_epi32(t1, t3);
                            let u3 = _mm_unpackhi_epi32(t1, t3);
                            let u4 = _mm_unpacklo_epi32(t4, t6);
                            let u5 = _mm_unpackhi_epi32(t4, t6);
                            let u6 = _mm_unpacklo_epi32(t5, t7);
                            let u7 = _mm_unpackhi_epi32(t5, t7);
                            st(0, _mm_unpacklo_epi64(u0, u4));
                            st(1, _mm_unpackhi_epi64(u0, u4));
                            st(2, _mm_unpacklo_epi64(u1, u5));
                            st(3, _mm_unpackhi_epi64(u1, u5));
                            st(4, _mm_unpacklo_epi64(u2, u6));
                            st(5, _mm_unpackhi_epi64(u2, u6));
                            st(6, _mm_unpacklo_epi64(u3, u7));
                            st(7, _mm_unpackhi_epi64(u3, u7));
                        } else {
                            let a: [__m128i; 4] = std::array::from_fn(ld);
                            let t0 = _mm_unpacklo_epi32(a[0], a[1]);
                            let t1 = _mm_unpackhi_epi32(a[0], a[1]);
                            let t2 = _mm_unpacklo_epi32(a[2], a[3]);
                            let t3 = _mm_unpackhi_epi32(a[2], a[3]);
                            st(0, _mm_unpacklo_epi64(t0, t2));
                            st(1, _mm_unpackhi_epi64(t0, t2));
                            st(2, _mm_unpacklo_epi64(t1, t3));
                            st(3, _mm_unpackhi_epi64(t1, t3));
                        }
                    }
                    k0 += lanes;
                }
                scalar(k0..n, j0..j0 + lanes);
                j0 += lanes;
            }
            scalar(0..n, j0..je);
        }
    }
}

/// Calls `f(offset)` for every index of `dims` (size, byte stride) in C order.
fn odometer(dims: &[(u64, i64)], mut f: impl FnMut(i64) -> Result<()>) -> Result<()> {
    let mut idx = vec![0u64; dims.len()];
    let mut base = 0i64;
    loop {
        f(base)?;
        let mut d = dims.len();
        loop {
            if d == 0 {
                return Ok(());
            }
            d -= 1;
            idx[d] += 1;
            base += dims[d].1;
            if idx[d] < dims[d].0 {
                break;
            }
            base -= dims[d].1 * dims[d].0 as i64;
            idx[d] = 0;
        }
    }
}

fn check_reach(t: &TensorIn<'_>, lo: i128, hi: i128) -> Result<()> {
    let start = t.offset as i128 + lo;
    let end = t.offset as i128 + hi;
    if start < 0 || end > t.data.len() as i128 {
        return Err(err!(
            InvalidArgument,
            "shape {:?} with strides {:?} reaches bytes [{start}, {end}) of a {}-byte buffer",
            t.shape,
            t.strides,
            t.data.len()
        ));
    }
    Ok(())
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
    },
    /// Plain bytes.
    Bytes(&'a [u8]),
    /// The row hashes collected by an earlier `Rows` source, as little-endian u64s.
    Hashes(&'a RefCell<Vec<u64>>),
}

/// Buffered sink: small pieces gathered into a bounded buffer, large ones written through.
struct Sink<'f> {
    file: &'f File,
    buf: Vec<u8>,
    /// Bytes written on this thread (the background writer counts its own).
    written: u64,
    /// Writes full buffers while the next one is gathered; `None` for small files.
    background: Option<Background<'f>>,
}

/// A thread writing full gather buffers in order, handing each back once written, so that
/// gathering the next buffer (element-wise, for transposed tensors: as much CPU as the
/// page-cache write) overlaps with writing the last one. Two buffers circulate.
struct Background<'scope> {
    to_writer: Option<crossbeam_channel::Sender<Vec<u8>>>,
    written_back: crossbeam_channel::Receiver<Vec<u8>>,
    /// Buffers sent and not yet handed back.
    in_flight: usize,
    /// A handed-back buffer not yet reused.
    spare: Option<Vec<u8>>,
    /// Set by the writer when a write fails (it then skips the rest).
    failed: Arc<AtomicBool>,
    thread: Option<std::thread::ScopedJoinHandle<'scope, Result<u64>>>,
}

impl<'scope> Background<'scope> {
    fn start<'env>(scope: &'scope std::thread::Scope<'scope, 'env>, file: &'scope File) -> Self {
        let (to_writer, jobs) = crossbeam_channel::unbounded::<Vec<u8>>();
        let (give_back, written_back) = crossbeam_channel::unbounded::<Vec<u8>>();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let thread = scope.spawn(move || {
            let mut written = 0u64;
            let mut error = None;
            for mut buf in jobs {
                if error.is_none() {
                    let mut f = file;
                    match f.write_all(&buf) {
                        Ok(()) => written += buf.len() as u64,
                        Err(e) => {
                            error = Some(Error::io("writing tensor data", e));
                            flag.store(true, Ordering::Release);
                        }
                    }
                }
                buf.clear();
                // The sink may be gone after a failure; the buffer is then just freed.
                let _ = give_back.send(buf);
            }
            error.map_or(Ok(written), Err)
        });
        Background {
            to_writer: Some(to_writer),
            written_back,
            in_flight: 0,
            spare: None,
            failed,
            thread: Some(thread),
        }
    }

    /// Queues `full` for writing and returns an empty buffer to gather into (waiting for
    /// the writer when both buffers are taken).
    fn swap(&mut self, full: Vec<u8>) -> Result<Vec<u8>> {
        if self.failed.load(Ordering::Acquire) {
            return Err(self.finish().err().unwrap_or_else(|| {
                err!(Internal, "background tensor writer failed without an error")
            }));
        }
        let sender = self.to_writer.as_ref().expect("open until finish");
        sender
            .send(full)
            .map_err(|_| err!(Internal, "background tensor writer stopped"))?;
        self.in_flight += 1;
        if let Some(b) = self.spare.take() {
            return Ok(b);
        }
        if self.in_flight < 2 {
            return Ok(Vec::with_capacity(CHUNK));
        }
        let b = self
            .written_back
            .recv()
            .map_err(|_| err!(Internal, "background tensor writer stopped"))?;
        self.in_flight -= 1;
        Ok(b)
    }

    /// Waits until every queued buffer is written (before writing on the calling thread).
    fn drain(&mut self) -> Result<()> {
        while self.in_flight > 0 {
            let b = self
                .written_back
                .recv()
                .map_err(|_| err!(Internal, "background tensor writer stopped"))?;
            self.in_flight -= 1;
            self.spare = Some(b);
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(self.finish().err().unwrap_or_else(|| {
                err!(Internal, "background tensor writer failed without an error")
            }));
        }
        Ok(())
    }

    /// Stops the writer after the queued buffers; the bytes it wrote, or its error.
    fn finish(&mut self) -> Result<u64> {
        self.to_writer.take();
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(err!(Internal, "background tensor writer panicked"))),
            None => Ok(0),
        }
    }
}

impl Sink<'_> {
    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Some(bg) = self.background.as_mut() {
            let full = std::mem::take(&mut self.buf);
            self.buf = bg.swap(full)?;
            return Ok(());
        }
        let mut f = self.file;
        f.write_all(&self.buf)
            .map_err(|e| Error::io("writing tensor data", e))?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is buffered and waits for the background writer; the total written.
    fn finish(&mut self) -> Result<u64> {
        self.flush()?;
        if let Some(bg) = self.background.as_mut() {
            self.written += bg.finish()?;
        }
        Ok(self.written)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() >= CHUNK {
            self.flush()?;
            if let Some(bg) = self.background.as_mut() {
                bg.drain()?; // file order: everything queued goes first
            }
            let mut f = self.file;
            f.write_all(bytes)
                .map_err(|e| Error::io("writing tensor data", e))?;
            self.written += bytes.len() as u64;
            return Ok(());
        }
        if self.buf.len() + bytes.len() > CHUNK {
            self.flush()?;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Appends `n` elements of `elem` bytes read from `src + i*stride`.
    fn put_strided(
        &mut self,
        src: &[u8],
        start: usize,
        n: u64,
        stride: i64,
        elem: usize,
    ) -> Result<()> {
        let mut i = 0u64;
        while i < n {
            let room = (CHUNK - self.buf.len()) / elem;
            if room == 0 {
                self.flush()?;
                continue;
            }
            let take = room.min((n - i) as usize);
            let at = self.buf.len();
            self.buf.resize(at + take * elem, 0);
            let dst = &mut self.buf[at..];
            let mut off = start as i64 + i as i64 * stride;
            macro_rules! copy_n {
                ($n:literal) => {
                    for d in dst.chunks_exact_mut($n) {
                        let o = off as usize;
                        d.copy_from_slice(&src[o..o + $n]);
                        off += stride;
                    }
                };
            }
            match elem {
                1 => {
                    for d in dst.iter_mut() {
                        *d = src[off as usize];
                        off += stride;
                    }
                }
                2 => copy_n!(2),
                4 => copy_n!(4),
                8 => copy_n!(8),
                _ => {
                    for d in dst.chunks_exact_mut(elem) {
                        let o = off as usize;
                        d.copy_from_slice(&src[o..o + elem]);
                        off += stride;
                    }
                }
            }
            i += take as u64;
        }
        Ok(())
    }

    /// Appends `n` consecutive output rows (row `k` starts at `src[start + k*row_stride]`,
    /// its elements `g.inner_stride` apart), reading across rows first for cache locality.
    fn put_tile(
        &mut self,
        src: &[u8],
        start: i64,
        n: usize,
        row_stride: i64,
        g: &Gather,
    ) -> Result<()> {
        let elem = g.elem;
        let row = g.inner_len as usize * elem;
        if self.buf.len() + n * row > CHUNK {
            self.flush()?;
        }
        let at = self.buf.len();
        self.buf.reserve(n * row);
        // Blocks of TILE x TILE elements: TILE source cache lines and TILE destination
        // runs are live at a time, so both sides stay in cache and in the TLB.
        let inner = g.inner_len as usize;
        // Every source offset below is an element of the view (k < n <= rows, j < inner),
        // and `Gather::new` checked that all elements lie inside `src`; check it in debug.
        debug_assert!(start >= 0 && n > 0);
        debug_assert!({
            let last = start
                + (n as i64 - 1) * row_stride.max(0)
                + (inner as i64 - 1) * g.inner_stride.max(0);
            let first = start
                + (n as i64 - 1) * row_stride.min(0)
                + (inner as i64 - 1) * g.inner_stride.min(0);
            first >= 0 && (last as usize + elem) <= src.len()
        });
        // The kernels below write every byte of the n*row bytes after `at` (each output row
        // k < n, each element j < inner), so the length is set after them without zeroing.
        // SAFETY: `reserve` made room for n*row bytes after `at`.
        let (sp, dp) = (src.as_ptr(), unsafe { self.buf.as_mut_ptr().add(at) });
        #[cfg(target_arch = "x86_64")]
        if row_stride == elem as i64 && (elem == 2 || elem == 4) {
            // A plain transpose of 2- or 4-byte elements: 8x8 / 4x4 blocks in SSE2 registers.
            // SAFETY: as for the scalar loop below: every element read is an element of the
            // view, inside `src`; writes stay within the n*row bytes of `dst`.
            unsafe {
                if elem == 2 {
                    transpose::tile::<2>(sp, dp, start, n, inner, g.inner_stride)
                } else {
                    transpose::tile::<4>(sp, dp, start, n, inner, g.inner_stride)
                }
                // SAFETY: all n*row bytes were written (see above); u8 needs no init.
                self.buf.set_len(at + n * row);
            }
            return Ok(());
        }
        macro_rules! tile_n {
            ($e:expr) => {
                for jb in (0..inner).step_by(TILE) {
                    let je = (jb + TILE).min(inner);
                    for k in 0..n {
                        let d0 = k * row;
                        let s0 = start + k as i64 * row_stride;
                        for j in jb..je {
                            let o = (s0 + j as i64 * g.inner_stride) as usize;
                            let d = d0 + j * $e;
                            // SAFETY: `o..o+e` is an element of the view, inside `src` (see
                            // above); `d..d+e` < n*row, reserved after `at`; the buffers are
                            // distinct.
                            unsafe { std::ptr::copy_nonoverlapping(sp.add(o), dp.add(d), $e) };
                        }
                    }
                }
            };
        }
        match elem {
            1 => tile_n!(1),
            2 => tile_n!(2),
            4 => tile_n!(4),
            8 => tile_n!(8),
            _ => tile_n!(elem),
        }
        // SAFETY: all n*row bytes were written (see above); u8 needs no init.
        unsafe { self.buf.set_len(at + n * row) };
        Ok(())
    }

    fn zeros(&mut self, mut n: u64) -> Result<()> {
        while n > 0 {
            if self.buf.len() == CHUNK {
                self.flush()?;
            }
            let take = ((CHUNK - self.buf.len()) as u64).min(n) as usize;
            self.buf.resize(self.buf.len() + take, 0);
            n -= take as u64;
        }
        Ok(())
    }

    fn source(&mut self, src: &Source<'_>, gather: Option<&Gather>) -> Result<()> {
        match (src, gather) {
            (Source::Strided(t), Some(g)) if g.total > 0 && g.tile().is_some() => {
                let tile = g.tile().expect("checked");
                let (rows, row_stride) = *g.outer.last().expect("tile needs an outer dim");
                let outer = &g.outer[..g.outer.len() - 1];
                odometer(outer, |base| {
                    let mut i0 = 0u64;
                    while i0 < rows {
                        let n = (tile as u64).min(rows - i0) as usize;
                        let start = t.offset as i64 + base + i0 as i64 * row_stride;
                        self.put_tile(t.data, start, n, row_stride, g)?;
                        i0 += n as u64;
                    }
                    Ok(())
                })
            }
            (Source::Strided(t), Some(g)) => g.for_each_inner(|base| {
                let start = (t.offset as i64 + base) as usize;
                if g.inner_len == 1 {
                    self.put(&t.data[start..start + g.elem])
                } else {
                    self.put_strided(t.data, start, g.inner_len, g.inner_stride, g.elem)
                }
            }),
            (Source::Rows { ptrs, len, hashes }, _) => {
                for &p in ptrs {
                    let mut hasher = Xxh3::new();
                    let mut done = 0;
                    while done < *len {
                        if self.buf.len() == CHUNK {
                            self.flush()?;
                        }
                        let take = (CHUNK - self.buf.len()).min(len - done);
                        let at = self.buf.len();
                        self.buf.resize(at + take, 0);
                        // SAFETY: `Source::Rows` is built by region export from rows inside a
                        // live region mapping (`p + len` in bounds); the destination is our own
                        // freshly resized buffer, which cannot overlap shared memory.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                p.add(done),
                                self.buf.as_mut_ptr().add(at),
                                take,
                            )
                        };
                        hasher.update(&self.buf[at..at + take]);
                        done += take;
                    }
                    if let Some(h) = hashes {
                        h.borrow_mut().push(hasher.digest());
                    }
                }
                Ok(())
            }
            (Source::Bytes(b), _) => self.put(b),
            (Source::Hashes(h), _) => {
                let bytes: Vec<u8> = h.borrow().iter().flat_map(|x| x.to_le_bytes()).collect();
                self.put(&bytes)
            }
            (Source::Strided(_), None) => Err(err!(Internal, "strided source without a plan")),
        }
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temp file removed on drop unless persisted.
struct TempFile {
    path: PathBuf,
    file: File,
    keep: bool,
}

impl TempFile {
    fn create(target: &Path) -> Result<TempFile> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let base = target.file_name().ok_or_else(|| {
            err!(
                InvalidArgument,
                "path '{}' has no file name",
                target.display()
            )
        })?;
        let path = dir.join(format!(
            ".{}.kvr-tmp.{}.{}",
            base.to_string_lossy(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::io(format!("creating temp file {}", path.display()), e))?;
        Ok(TempFile {
            path,
            file,
            keep: false,
        })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
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
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|t| TensorSpec {
            name: t.name.to_string(),
            dtype: t.dtype,
            shape: t.shape.to_vec(),
        })
        .collect();
    write_sources(path, &specs, &sources, metadata, opts)
}

/// Writes tensors from arbitrary sources (strided tensors or region rows).
pub(crate) fn write_sources(
    path: &Path,
    specs: &[TensorSpec],
    sources: &[Source<'_>],
    metadata: &[(&str, &str)],
    opts: WriteOptions,
) -> Result<u64> {
    let ctx = |e: Error| e.context(format!("writing tensor file {}", path.display()));
    let plan: Plan = header::plan(specs, metadata, opts.align_4k).map_err(ctx)?;
    let gathers: Vec<Option<Gather>> = sources
        .iter()
        .map(|s| match s {
            Source::Strided(t) => Gather::new(t).map(Some),
            Source::Rows { .. } | Source::Bytes(_) | Source::Hashes(_) => Ok(None),
        })
        .collect::<Result<_>>()
        .map_err(ctx)?;
    let mut tmp = TempFile::create(path).map_err(ctx)?;
    // Reserve the space up front so a full disk fails here, not half-way.
    // SAFETY: valid fd; fallocate only changes the file's allocation.
    let rc = unsafe { libc::fallocate(tmp.file.as_raw_fd(), 0, 0, plan.file_len as libc::off_t) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if matches!(
            e.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG)
        ) {
            return Err(ctx(Error::io(
                format!("reserving {} bytes", plan.file_len),
                e,
            )));
        }
    }
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
    let written = if plan.file_len as usize > 2 * CHUNK {
        let file = &tmp.file;
        std::thread::scope(|scope| {
            let mut sink = Sink {
                file,
                buf,
                written: 0,
                background: Some(Background::start(scope, file)),
            };
            let r = produce(&mut sink);
            if let Some(bg) = sink.background.as_mut() {
                let _ = bg.finish(); // after an error: stop the writer before leaving
            }
            r
        })?
    } else {
        produce(&mut Sink {
            file: &tmp.file,
            buf,
            written: 0,
            background: None,
        })?
    };
    if written != plan.file_len {
        return Err(ctx(err!(
            Internal,
            "wrote {} bytes, planned {}",
            written,
            plan.file_len
        )));
    }
    if opts.sync {
        tmp.file
            .sync_all()
            .map_err(|e| ctx(Error::io("fsync", e)))?;
    }
    std::fs::rename(&tmp.path, path).map_err(|e| {
        ctx(Error::io(
            format!("renaming {} into place", tmp.path.display()),
            e,
        ))
    })?;
    tmp.keep = true;
    if opts.sync {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
    }
    Ok(plan.file_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed background write surfaces as an error at the next hand-over, at drain and at
    /// finish; the writer never blocks the sink after failing.
    #[test]
    fn background_write_errors_reach_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"x").unwrap();
        let read_only = File::open(&path).unwrap();
        std::thread::scope(|scope| {
            let mut bg = Background::start(scope, &read_only);
            let mut next = bg.swap(vec![1u8; 100]).unwrap();
            // The writer fails on its first buffer; later hand-overs report it.
            let mut error = None;
            for _ in 0..1000 {
                next.extend_from_slice(&[2u8; 10]);
                match bg.swap(std::mem::take(&mut next)) {
                    Ok(b) => next = b,
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let e = error.expect("the write error reaches the sink");
            assert_eq!(e.kind(), crate::ErrorKind::Io, "{e}");
            assert!(e.to_string().contains("writing tensor data"), "{e}");
            assert!(
                bg.finish().is_ok(),
                "already joined: nothing more to report"
            );
        });
        std::thread::scope(|scope| {
            let mut bg = Background::start(scope, &read_only);
            let _ = bg.swap(vec![1u8; 100]).unwrap();
            assert!(bg.drain().is_err());
        });
    }

    /// Gathered buffers, direct writes of large runs and the final flush land in file order.
    #[test]
    fn background_writer_keeps_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let big = vec![9u8; CHUNK + 5];
        let written = std::thread::scope(|scope| {
            let mut sink = Sink {
                file: &file,
                buf: Vec::new(),
                written: 0,
                background: Some(Background::start(scope, &file)),
            };
            for round in 0..3u8 {
                for i in 0..(CHUNK / 1000 + 7) {
                    sink.put(&[round.wrapping_mul(31).wrapping_add(i as u8); 1000])
                        .unwrap();
                }
                sink.put(&big).unwrap();
            }
            sink.put(b"end").unwrap();
            sink.finish().unwrap()
        });
        let mut want = Vec::new();
        for round in 0..3u8 {
            for i in 0..(CHUNK / 1000 + 7) {
                want.extend_from_slice(&[round.wrapping_mul(31).wrapping_add(i as u8); 1000]);
            }
            want.extend_from_slice(&big);
        }
        want.extend_from_slice(b"end");
        assert_eq!(written, want.len() as u64);
        assert!(std::fs::read(&path).unwrap() == want);
    }

    #[test]
    fn extent_handles_negative_and_zero_strides() {
        assert_eq!(extent(&[2, 3], &[3, 1], 4), Some((0, 24)));
        assert_eq!(extent(&[2, 3], &[1, 2], 4), Some((0, 24)));
        assert_eq!(extent(&[3], &[-1], 2), Some((-4, 2)));
        assert_eq!(extent(&[3], &[0], 2), Some((0, 2)));
        assert_eq!(extent(&[0, 5], &[5, 1], 2), None);
    }

    fn gather(
        shape: &[u64],
        strides: Option<&[i64]>,
        data: &[u8],
        offset: usize,
    ) -> Result<Gather> {
        Gather::new(&TensorIn {
            name: "t",
            dtype: Dtype::U16,
            shape,
            strides,
            data,
            offset,
        })
    }

    #[test]
    fn contiguous_collapses_to_one_run_and_transposes_do_not() {
        let data = vec![0u8; 2 * 24];
        let g = gather(&[2, 3, 4], None, &data, 0).unwrap();
        assert_eq!((g.outer.len(), g.inner_len, g.elem), (0, 1, 48));
        // Slice of rows with a gap: outer dim stays, inner rows contiguous.
        let g = gather(&[2, 4], Some(&[8, 1]), &data, 0).unwrap();
        assert_eq!((g.outer.clone(), g.elem), (vec![(2, 16)], 8));
        // Transpose: element-wise inner loop.
        let g = gather(&[4, 6], Some(&[1, 4]), &data, 0).unwrap();
        assert_eq!((g.inner_len, g.inner_stride, g.elem), (6, 8, 2));
        // Size-1 dims are ignored whatever their stride.
        let g = gather(&[1, 24, 1], Some(&[999, 1, -7]), &data, 0).unwrap();
        assert_eq!(g.elem, 48);
    }

    #[test]
    fn transposes_take_the_tiled_path_and_plain_rows_do_not() {
        let data = vec![0u8; 2 * 24];
        // Transpose of 4x6: the output's outer dim walks memory by 1 element.
        assert_eq!(
            gather(&[6, 4], Some(&[1, 6]), &data, 0).unwrap().tile(),
            Some(6)
        );
        assert_eq!(
            gather(&[2, 4], Some(&[8, 1]), &data, 0).unwrap().tile(),
            None
        );
        assert_eq!(gather(&[24], Some(&[1]), &data, 0).unwrap().tile(), None);
        // A column slice with a step is element-wise but has no closer outer dim.
        assert_eq!(gather(&[6], Some(&[4]), &data, 0).unwrap().tile(), None);
    }

    #[test]
    fn reach_outside_the_buffer_is_rejected() {
        let data = vec![0u8; 16];
        assert!(gather(&[9], None, &data, 0).is_err());
        assert!(gather(&[8], None, &data, 2).is_err());
        assert!(gather(&[4], Some(&[-1]), &data, 4).is_err());
        assert!(gather(&[4], Some(&[-1]), &data, 6).is_ok());
        assert!(gather(&[4], Some(&[3]), &data, 0).is_err());
        assert!(gather(&[2], Some(&[1, 1]), &data, 0).is_err());
        assert!(gather(&[2], Some(&[i64::MAX]), &data, 0).is_err());
    }
}
