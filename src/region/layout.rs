//! Pure layout arithmetic of a shared region: interleaved rows, one slice per worker.
//!
//! ```text
//! row b:  | worker 0 slice | worker 1 slice | ... | worker N-1 slice |   (row_stride bytes)
//!           tensor 0 | tensor 1 | ...  (views pack inside each slice)
//! ```
//! Worker r's slice of block b starts at `b * row_stride + r * cpu_page_size`.

use crate::{Error, ErrorKind, Result};

/// The geometry every process attached to one region must agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Rows in the region; one row holds one KV block for all workers.
    pub num_blocks: u64,
    /// Bytes of one worker's slice of one block.
    pub cpu_page_size: u64,
    /// Tensor-parallel workers sharing the region.
    pub num_workers: u32,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} blocks x {} workers x {} B/slice",
            self.num_blocks, self.num_workers, self.cpu_page_size
        )
    }
}

impl Layout {
    /// Validates the geometry: all fields non-zero and the total size representable.
    pub fn new(num_blocks: u64, cpu_page_size: u64, num_workers: u32) -> Result<Self> {
        let layout = Layout {
            num_blocks,
            cpu_page_size,
            num_workers,
        };
        if num_blocks == 0 || cpu_page_size == 0 || num_workers == 0 {
            return Err(Error::invalid(format!(
                "region layout must have non-zero sizes, got {layout}"
            )));
        }
        // The data size must fit in off_t (i64) so the file can be sized and mapped.
        match layout.checked_data_len() {
            Some(n) if n <= i64::MAX as u64 - HEADER_LEN => Ok(layout),
            _ => Err(Error::invalid(format!(
                "region layout {layout} overflows the addressable size"
            ))),
        }
    }

    fn checked_data_len(&self) -> Option<u64> {
        self.cpu_page_size
            .checked_mul(self.num_workers as u64)?
            .checked_mul(self.num_blocks)
    }

    /// Bytes from one block's row to the next: `cpu_page_size * num_workers`.
    pub fn row_stride(&self) -> u64 {
        self.cpu_page_size * self.num_workers as u64
    }

    /// Bytes of data (all rows), excluding the header page.
    pub fn data_len(&self) -> u64 {
        self.row_stride() * self.num_blocks
    }

    /// Size of the whole file: header page plus data.
    pub fn file_len(&self) -> u64 {
        HEADER_LEN + self.data_len()
    }

    /// Offset in the data area of worker `rank`'s slice of `block`.
    pub fn slice_offset(&self, block: u64, rank: u32) -> u64 {
        debug_assert!(block < self.num_blocks && rank < self.num_workers);
        block * self.row_stride() + rank as u64 * self.cpu_page_size
    }

    /// Inverse of [`Layout::slice_offset`]: (block, worker, offset inside the slice) of a data byte.
    pub fn locate(&self, offset: u64) -> Option<(u64, u32, u64)> {
        if offset >= self.data_len() {
            return None;
        }
        let block = offset / self.row_stride();
        let in_row = offset % self.row_stride();
        Some((
            block,
            (in_row / self.cpu_page_size) as u32,
            in_row % self.cpu_page_size,
        ))
    }
}

/// Bytes reserved for the header at the start of the file: one page, so data stays aligned.
pub const HEADER_LEN: u64 = 4096;

/// One tensor's placement inside every slice of a worker: what `kvr_create_view` hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewPlacement {
    /// Offset of the tensor inside the worker's slice.
    pub offset_in_slice: u64,
    /// Bytes of this tensor per block.
    pub bytes_per_block: u64,
}

/// Packs successive tensor views into a worker's slice, in call order.
#[derive(Clone, Debug)]
pub struct ViewPacker {
    cpu_page_size: u64,
    used: u64,
    count: u32,
}

impl ViewPacker {
    /// A packer for slices of `cpu_page_size` bytes.
    pub fn new(cpu_page_size: u64) -> Self {
        ViewPacker {
            cpu_page_size,
            used: 0,
            count: 0,
        }
    }

    /// Places the next tensor of `tensor_page_size` bytes per block right after the previous.
    pub fn next(&mut self, tensor_page_size: u64) -> Result<ViewPlacement> {
        if tensor_page_size == 0 {
            return Err(Error::invalid("tensor_page_size is 0"));
        }
        let end = self.used.checked_add(tensor_page_size);
        match end {
            Some(end) if end <= self.cpu_page_size => {
                let placement = ViewPlacement {
                    offset_in_slice: self.used,
                    bytes_per_block: tensor_page_size,
                };
                self.used = end;
                self.count += 1;
                Ok(placement)
            }
            _ => Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "view {} of {} B per block does not fit: {} of the {} B slice already used, {} left",
                    self.count,
                    tensor_page_size,
                    self.used,
                    self.cpu_page_size,
                    self.cpu_page_size - self.used
                ),
            )),
        }
    }

    /// Bytes of the slice handed out so far.
    pub fn used(&self) -> u64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_zero_and_overflow() {
        assert!(Layout::new(0, 1, 1).is_err());
        assert!(Layout::new(1, 0, 1).is_err());
        assert!(Layout::new(1, 1, 0).is_err());
        assert!(Layout::new(u64::MAX, 2, 2).is_err());
        assert!(Layout::new(1 << 40, 1 << 30, 8).is_err());
        assert!(Layout::new(1024, 1 << 20, 8).is_ok());
    }

    #[test]
    fn packer_fails_clearly_on_overflow() {
        let mut p = ViewPacker::new(100);
        assert_eq!(p.next(60).unwrap().offset_in_slice, 0);
        let e = p.next(41).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge);
        assert!(e.to_string().contains("40 left"), "{e}");
        assert_eq!(p.next(40).unwrap().offset_in_slice, 60);
        assert!(p.next(u64::MAX).is_err());
    }

    proptest! {
        /// Every data byte belongs to exactly one (block, worker, tensor), and the views
        /// handed out never overlap.
        #[test]
        fn every_byte_has_exactly_one_owner(
            num_blocks in 1u64..6,
            num_workers in 1u32..5,
            tensor_sizes in proptest::collection::vec(1u64..40, 1..6),
        ) {
            let cpu_page_size: u64 = tensor_sizes.iter().sum::<u64>() + 3; // 3 spare bytes
            let layout = Layout::new(num_blocks, cpu_page_size, num_workers).unwrap();
            let mut owner = vec![None::<(u64, u32, usize)>; layout.data_len() as usize];
            for rank in 0..num_workers {
                let mut packer = ViewPacker::new(cpu_page_size);
                for (t, &size) in tensor_sizes.iter().enumerate() {
                    let v = packer.next(size).unwrap();
                    for b in 0..num_blocks {
                        let base = layout.slice_offset(b, rank) + v.offset_in_slice;
                        for i in 0..v.bytes_per_block {
                            let at = (base + i) as usize;
                            prop_assert!(owner[at].is_none(), "byte {} owned twice", at);
                            owner[at] = Some((b, rank, t));
                            let (lb, lr, off) = layout.locate(base + i).unwrap();
                            prop_assert_eq!((lb, lr), (b, rank));
                            prop_assert_eq!(off, v.offset_in_slice + i);
                        }
                    }
                }
                prop_assert!(packer.next(4).is_err()); // only 3 spare bytes left
            }
            // The unowned bytes are exactly the 3 spare bytes of each slice.
            let unowned = owner.iter().filter(|o| o.is_none()).count() as u64;
            prop_assert_eq!(unowned, 3 * num_blocks * num_workers as u64);
            prop_assert!(layout.locate(layout.data_len()).is_none());
        }
    }
}
