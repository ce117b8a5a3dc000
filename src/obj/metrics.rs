//! What an open object store shows in `kvr_metrics_text`.

use super::Inner;
use crate::metrics::{Sample, Source};

impl Source for Inner {
    fn sample(&self) -> Sample {
        let st = self.stats();
        let mut s = Sample {
            tier: "obj",
            namespace: self.namespace.clone(),
            path: self.url.clone(),
            ..Sample::default()
        };
        s.counter("kvr_hits", "Loads that returned a block", st.hits)
            .counter("kvr_misses", "Loads that found no usable block", st.misses)
            .counter(
                "kvr_corrupt",
                "Bad objects found by loads (kept until verify --repair)",
                st.corrupt,
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
