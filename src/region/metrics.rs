//! What an open region shows in `kvr_metrics_text`: its size and whether it is pinned (a
//! region is plain memory: there are no operations to count).

use crate::metrics::{Sample, Source};

/// A region's labels and gauges, fixed at open.
pub(super) struct RegionGauges {
    pub(super) name: String,
    pub(super) path: String,
    pub(super) blocks: u64,
    pub(super) bytes: u64,
    pub(super) pinned: bool,
}

impl Source for RegionGauges {
    fn sample(&self) -> Sample {
        let mut s = Sample::new("region", self.name.clone(), self.path.clone());
        s.gauge("kvr_blocks", "Blocks held", self.blocks as i64)
            .gauge(
                "kvr_held_bytes",
                "Bytes of storage the blocks held take",
                self.bytes as i64,
            )
            .gauge(
                "kvr_region_pinned",
                "1 when the region is registered with CUDA (pinned)",
                self.pinned as i64,
            );
        s
    }
}
