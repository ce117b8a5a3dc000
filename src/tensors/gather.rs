//! Gathering a strided tensor's bytes in C order: the gather program (size-1 dims dropped,
//! contiguous dims merged, reach checked), the odometer over outer dims, and the copy into
//! the sink's buffer (element-wise, or tiled with SSE2 transposes for transposed layouts).

use super::header;
use super::sink::Sink;
use super::write::{TensorIn, CHUNK};
use crate::{err, Error, Result};

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
                    // SAFETY: element (k, j) of the view, k < n and j < inner (see above).
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
                    // SAFETY: as for `ld` (the note above).
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

impl Sink<'_> {
    /// Appends the bytes of strided tensor `t` in C order, as `g` plans: tiled for
    /// transposes, element-wise or in runs otherwise.
    pub(super) fn gather(&mut self, t: &TensorIn<'_>, g: &Gather) -> Result<()> {
        match g.tile() {
            Some(tile) if g.total > 0 => {
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
            _ => g.for_each_inner(|base| {
                let start = (t.offset as i64 + base) as usize;
                if g.inner_len == 1 {
                    self.put(&t.data[start..start + g.elem])
                } else {
                    self.put_strided(t.data, start, g.inner_len, g.inner_stride, g.elem)
                }
            }),
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensors::Dtype;

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
