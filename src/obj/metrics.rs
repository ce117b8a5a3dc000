//! What an open object store shows in `kvr_metrics_text`.

use super::Inner;
use crate::metrics::{BlockCounters, Sample, Source};

impl Source for Inner {
    fn sample(&self) -> Sample {
        let st = self.stats();
        let mut s = Sample::new("obj", self.namespace.clone(), self.url.clone());
        s.block_counters(BlockCounters {
            hits: st.hits,
            misses: st.misses,
            bytes_read: st.bytes_read,
            bytes_written: st.bytes_written,
            stores: st.stores,
        })
        .dedups(st.dedup_hits)
        .counter(
            "kvr_corrupt",
            "Bad objects found by loads (kept until verify --repair)",
            st.corrupt,
        )
        .counter("kvr_removes", "Blocks removed", st.removes)
        .counter(
            "kvr_unavailable",
            "Requests that failed because the server was down, slow or refusing",
            st.unavailable,
        )
        .latencies(&self.latency);
        s
    }
}
