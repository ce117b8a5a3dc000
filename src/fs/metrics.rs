//! What an open fs store shows in `kvr_metrics_text`.

use super::Inner;
use crate::metrics::{Sample, Source};

impl Source for Inner {
    fn sample(&self) -> Sample {
        let st = self.stats();
        let mut s = Sample {
            tier: "fs",
            namespace: self.namespace.clone(),
            path: self.dir.display().to_string(),
            ..Sample::default()
        };
        s.counter("kvr_hits", "Loads that returned a block", st.hits)
            .counter("kvr_misses", "Loads that found no usable block", st.misses)
            .counter(
                "kvr_corrupt_dropped",
                "Corrupt blocks found and removed",
                st.corrupt_dropped,
            )
            .counter("kvr_read_bytes", "Payload bytes loaded", st.bytes_read)
            .counter(
                "kvr_written_bytes",
                "Payload bytes stored",
                st.bytes_written,
            )
            .counter("kvr_stores", "Blocks written", st.stores)
            .counter(
                "kvr_dedups",
                "Stores skipped because the block already existed",
                st.dedup_hits,
            )
            .counter(
                "kvr_evictions",
                "Blocks removed to stay under the capacity",
                st.evictions,
            )
            .gauge("kvr_blocks", "Blocks held", st.blocks as i64)
            .gauge(
                "kvr_held_bytes",
                "Bytes of storage the blocks held take",
                st.bytes as i64,
            )
            .gauge(
                "kvr_direct_io",
                "1 when O_DIRECT is in use, 0 for buffered I/O",
                st.direct_io as i64,
            )
            .latencies(&self.latency);
        s
    }
}
