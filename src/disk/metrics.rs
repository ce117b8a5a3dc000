//! What an open slot file shows in `kvr_metrics_text`.

use super::Inner;
use crate::metrics::{BlockCounters, Sample, Source};

impl Source for Inner {
    fn sample(&self) -> Sample {
        let (c, entries) = {
            let ix = self.lock();
            (ix.counters, ix.entries())
        };
        let mut s = Sample::new(
            "disk",
            self.identity.clone().unwrap_or_default(),
            self.path.display().to_string(),
        );
        s.block_counters(BlockCounters {
            hits: c.hits,
            misses: c.misses,
            bytes_read: c.bytes_read,
            bytes_written: c.bytes_written,
            stores: c.writes,
        })
        .removals(c.corrupt_dropped, c.evictions)
        .held(entries, entries * self.geometry.stride(), self.direct)
        .latencies(&self.latency);
        s
    }
}
