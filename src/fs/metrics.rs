//! What an open fs store shows in `kvr_metrics_text`.

use super::Inner;
use crate::metrics::{BlockCounters, Sample, Source};

impl Source for Inner {
    fn sample(&self) -> Sample {
        let st = self.stats();
        let mut s = Sample::new("fs", self.namespace.clone(), self.dir.display().to_string());
        s.block_counters(BlockCounters {
            hits: st.hits,
            misses: st.misses,
            bytes_read: st.bytes_read,
            bytes_written: st.bytes_written,
            stores: st.stores,
        })
        .dedups(st.dedup_hits)
        .removals(st.corrupt_dropped, st.evictions)
        .held(st.blocks, st.bytes, st.direct_io)
        .latencies(&self.latency);
        s
    }
}
