//! What an open slot file shows in `kvr_metrics_text`.

use super::Inner;
use crate::metrics::{Sample, Source};

impl Source for Inner {
    fn sample(&self) -> Sample {
        let (c, entries) = {
            let ix = self.lock();
            (ix.counters, ix.entries())
        };
        let mut s = Sample {
            tier: "disk",
            namespace: self.identity.clone().unwrap_or_default(),
            path: self.path.display().to_string(),
            ..Sample::default()
        };
        s.counter("kvr_hits", "Loads that returned a block", c.hits)
            .counter("kvr_misses", "Loads that found no usable block", c.misses)
            .counter(
                "kvr_corrupt_dropped",
                "Corrupt blocks found and removed",
                c.corrupt_dropped,
            )
            .counter("kvr_read_bytes", "Payload bytes loaded", c.bytes_read)
            .counter("kvr_written_bytes", "Payload bytes stored", c.bytes_written)
            .counter("kvr_stores", "Blocks written", c.writes)
            .counter(
                "kvr_evictions",
                "Blocks removed to stay under the capacity",
                c.evictions,
            )
            .gauge("kvr_blocks", "Blocks held", entries as i64)
            .gauge(
                "kvr_held_bytes",
                "Bytes of storage the blocks held take",
                (entries * self.geometry.stride()) as i64,
            )
            .gauge(
                "kvr_direct_io",
                "1 when O_DIRECT is in use, 0 for buffered I/O",
                self.direct as i64,
            )
            .latencies(&self.latency);
        s
    }
}
