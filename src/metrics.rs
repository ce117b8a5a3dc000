//! Counters, gauges and latency histograms of every open handle, rendered in the Prometheus
//! text exposition format (version 0.0.4) for an engine to serve from its own `/metrics`.
//!
//! - Handles register a [`Source`] at open and hold the [`Registration`], whose drop (at
//!   close) unregisters it. The registry keeps only [`Weak`] references: it never keeps a
//!   handle alive, and [`render`] upgrades each one for the time it samples it, so a handle
//!   closing concurrently is either sampled whole or skipped, never read after it is freed.
//! - The hot path pays atomics only: `Histogram::record` is three relaxed `fetch_add`s on
//!   fixed log2 buckets, no lock, no allocation. Rendering (rare) does the rest.
//! - The text is produced by the `prometheus-client` crate's encoder, not formatted here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Latency buckets: upper bounds of 2^i microseconds, i in `0..BUCKETS` (1 µs .. ~8.4 s),
/// then an overflow bucket (`+Inf`).
const BUCKETS: usize = 24;

/// A latency histogram updated with atomics only (cheap enough for every 64 KiB block).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; the last is the overflow bucket.
    buckets: [AtomicU64; BUCKETS + 1],
    /// Sum of the recorded durations in nanoseconds.
    sum_ns: AtomicU64,
}

/// A consistent-enough copy of a [`Histogram`] (each bucket read once).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Per-bucket counts, the overflow bucket last.
    pub buckets: Vec<u64>,
    /// Sum in seconds.
    pub sum_seconds: f64,
}

impl Histogram {
    /// Records one operation of `ns` nanoseconds.
    #[inline]
    pub fn record_ns(&self, ns: u64) {
        let us = ns.div_ceil(1000).max(1);
        // ceil(log2(us)): 1 µs -> bucket 0, 2 -> 1, 3..=4 -> 2, ...
        let i = (64 - (us - 1).leading_zeros() as usize).min(BUCKETS);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Records one operation that started at `started`.
    #[inline]
    pub fn record_since(&self, started: Instant) {
        self.record_ns(started.elapsed().as_nanos() as u64);
    }

    /// Copies the current counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum_seconds: self.sum_ns.load(Relaxed) as f64 / 1e9,
        }
    }
}

impl HistogramSnapshot {
    /// Operations recorded (the buckets' sum, so the `+Inf` bucket equals `_count`).
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// `(upper bound in seconds, per-bucket count)` pairs, `+Inf` last.
    fn bounds(&self) -> Vec<(f64, u64)> {
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let le = if i < BUCKETS {
                    (1u64 << i) as f64 / 1e6
                } else {
                    f64::INFINITY
                };
                (le, n)
            })
            .collect()
    }
}

/// The latency histograms every block tier keeps, one per operation.
#[derive(Debug, Default)]
pub struct OpLatencies {
    /// Stores / writes of one block (including deduplicated ones).
    pub store: Histogram,
    /// Loads / reads of one block (hits and misses).
    pub load: Histogram,
    /// Existence queries (one per call, whatever the number of keys).
    pub lookup: Histogram,
}

impl OpLatencies {
    fn snapshot(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        vec![
            ("store", self.store.snapshot()),
            ("load", self.load.snapshot()),
            ("lookup", self.lookup.snapshot()),
        ]
    }
}

/// What one handle reports: its labels and current values.
#[derive(Debug, Default)]
pub struct Sample {
    /// `fs`, `disk`, `region`.
    pub tier: &'static str,
    /// The fs store's namespace, the slot file's identity, the region's name ("" if none).
    pub namespace: String,
    /// The handle's directory or file.
    pub path: String,
    /// Monotonic counters: (metric name without `_total`, help, value).
    pub counters: Vec<(&'static str, &'static str, u64)>,
    /// Gauges: (metric name, help, value).
    pub gauges: Vec<(&'static str, &'static str, i64)>,
    /// Latencies per operation, if the tier keeps them.
    pub latencies: Vec<(&'static str, HistogramSnapshot)>,
}

/// The counters every block tier keeps (fs store, slot file, object tier), rendered under the
/// names and help they share.
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockCounters {
    /// Loads that returned a block.
    pub hits: u64,
    /// Loads that found no usable block.
    pub misses: u64,
    /// Payload bytes loaded.
    pub bytes_read: u64,
    /// Payload bytes stored.
    pub bytes_written: u64,
    /// Blocks written.
    pub stores: u64,
}

impl Sample {
    /// A sample of the handle of `tier` with these labels, holding no values yet.
    pub fn new(tier: &'static str, namespace: String, path: String) -> Self {
        Sample {
            tier,
            namespace,
            path,
            ..Sample::default()
        }
    }

    /// Adds the counters every block tier keeps.
    pub fn block_counters(&mut self, c: BlockCounters) -> &mut Self {
        self.counter("kvr_hits", "Loads that returned a block", c.hits)
            .counter("kvr_misses", "Loads that found no usable block", c.misses)
            .counter("kvr_read_bytes", "Payload bytes loaded", c.bytes_read)
            .counter("kvr_written_bytes", "Payload bytes stored", c.bytes_written)
            .counter("kvr_stores", "Blocks written", c.stores)
    }

    /// Adds the count of stores a content-addressed tier skipped (the block existed).
    pub fn dedups(&mut self, n: u64) -> &mut Self {
        self.counter(
            "kvr_dedups",
            "Stores skipped because the block already existed",
            n,
        )
    }

    /// Adds what a local tier (fs store, slot file) removed on its own: corrupt blocks it
    /// found, and least-recently-used ones to stay under its capacity.
    pub fn removals(&mut self, corrupt_dropped: u64, evictions: u64) -> &mut Self {
        self.counter(
            "kvr_corrupt_dropped",
            "Corrupt blocks found and removed",
            corrupt_dropped,
        )
        .counter(
            "kvr_evictions",
            "Blocks removed to stay under the capacity",
            evictions,
        )
    }

    /// Adds what a local tier holds: `blocks`, the `bytes` of storage they take, and whether
    /// it uses O_DIRECT.
    pub fn held(&mut self, blocks: u64, bytes: u64, direct_io: bool) -> &mut Self {
        self.gauge("kvr_blocks", "Blocks held", blocks as i64)
            .gauge(
                "kvr_held_bytes",
                "Bytes of storage the blocks held take",
                bytes as i64,
            )
            .gauge(
                "kvr_direct_io",
                "1 when O_DIRECT is in use, 0 for buffered I/O",
                direct_io as i64,
            )
    }

    /// Adds a counter.
    pub fn counter(&mut self, name: &'static str, help: &'static str, v: u64) -> &mut Self {
        self.counters.push((name, help, v));
        self
    }

    /// Adds a gauge.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, v: i64) -> &mut Self {
        self.gauges.push((name, help, v));
        self
    }

    /// Adds the latency histograms.
    pub fn latencies(&mut self, l: &OpLatencies) -> &mut Self {
        self.latencies = l.snapshot();
        self
    }
}

/// Something whose metrics [`render`] includes while it is registered.
pub trait Source: Send + Sync {
    /// The handle's labels and current values.
    fn sample(&self) -> Sample;
}

/// Registered sources; dead entries are pruned on every change and render.
static SOURCES: Mutex<Vec<Weak<dyn Source>>> = Mutex::new(Vec::new());

fn sources() -> std::sync::MutexGuard<'static, Vec<Weak<dyn Source>>> {
    // A panic while holding the lock leaves a valid Vec.
    SOURCES.lock().unwrap_or_else(|p| p.into_inner())
}

/// A handle's place in the registry; dropping it unregisters the handle.
#[derive(Debug)]
#[must_use = "dropping the registration unregisters the handle at once"]
pub struct Registration(Weak<dyn Source>);

/// Registers `source` until the returned [`Registration`] is dropped.
pub fn register<S: Source + 'static>(source: &Arc<S>) -> Registration {
    let source: Arc<dyn Source> = source.clone();
    let weak = Arc::downgrade(&source);
    let mut all = sources();
    all.retain(|w| w.strong_count() > 0);
    all.push(weak.clone());
    Registration(weak)
}

impl Drop for Registration {
    fn drop(&mut self) {
        sources().retain(|w| !Weak::ptr_eq(w, &self.0) && w.strong_count() > 0);
    }
}

/// How many handles are registered now (for tests and diagnostics).
pub fn registered() -> usize {
    sources().iter().filter(|w| w.strong_count() > 0).count()
}

/// Renders every registered handle's metrics in the Prometheus text format.
pub fn render() -> String {
    // Upgrade under the lock, sample without it: sampling may take a tier's own locks, and
    // a handle closing meanwhile stays alive (its memory valid) until its sample is taken.
    let live: Vec<Arc<dyn Source>> = {
        let mut all = sources();
        all.retain(|w| w.strong_count() > 0);
        all.iter().filter_map(Weak::upgrade).collect()
    };
    let samples: Vec<Sample> = live.iter().map(|s| s.sample()).collect();
    drop(live);
    encode(samples)
}

/// Encodes samples with `prometheus-client` (one family per metric name).
pub fn encode(samples: Vec<Sample>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Samples(samples)));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// The collector `prometheus-client` asks for the samples at encode time.
#[derive(Debug)]
struct Samples(Vec<Sample>);

type Labels = Vec<(&'static str, String)>;
/// Metric name -> (help, one value per labelled handle).
type Families<'a, V> = BTreeMap<&'a str, (&'a str, Vec<(Labels, V)>)>;

fn labels(s: &Sample) -> Labels {
    let mut l = vec![
        ("tier", s.tier.to_string()),
        ("namespace", s.namespace.clone()),
    ];
    if !s.path.is_empty() {
        l.push(("path", s.path.clone()));
    }
    l
}

impl Collector for Samples {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Group by metric name: one HELP/TYPE per family, whatever the handle count.
        let mut counters: Families<u64> = BTreeMap::new();
        let mut gauges: Families<i64> = BTreeMap::new();
        let mut latencies: Vec<(Labels, &HistogramSnapshot)> = Vec::new();
        for s in &self.0 {
            for &(name, help, v) in &s.counters {
                let e = counters.entry(name).or_insert((help, Vec::new()));
                e.1.push((labels(s), v));
            }
            for &(name, help, v) in &s.gauges {
                let e = gauges.entry(name).or_insert((help, Vec::new()));
                e.1.push((labels(s), v));
            }
            for (op, h) in &s.latencies {
                let mut l = labels(s);
                l.push(("op", op.to_string()));
                latencies.push((l, h));
            }
        }
        for (name, (help, rows)) in &counters {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (l, v) in rows {
                ConstCounter::new(*v).encode(m.encode_family(l)?)?;
            }
        }
        for (name, (help, rows)) in &gauges {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (l, v) in rows {
                ConstGauge::new(*v).encode(m.encode_family(l)?)?;
            }
        }
        if !latencies.is_empty() {
            let mut m = encoder.encode_descriptor(
                "kvr_op_latency_seconds",
                "Latency of one block operation (store, load) or one existence query (lookup)",
                None,
                MetricType::Histogram,
            )?;
            for (l, h) in &latencies {
                m.encode_family(l)?.encode_histogram::<NoLabelSet>(
                    h.sum_seconds,
                    h.count(),
                    &h.bounds(),
                    None,
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(u64);
    impl Source for Fake {
        fn sample(&self) -> Sample {
            let mut s = Sample {
                tier: "test",
                namespace: format!("ns{}", self.0),
                ..Sample::default()
            };
            let lat = OpLatencies::default();
            lat.load.record_ns(1500);
            s.counter("kvr_test_hits", "hits", self.0)
                .gauge("kvr_test_blocks", "blocks", 3)
                .latencies(&lat);
            s
        }
    }

    #[test]
    fn buckets_are_log2_microseconds() {
        let h = Histogram::default();
        for ns in [1, 1000, 1001, 2000, 4000, 4001, u64::MAX / 2] {
            h.record_ns(ns);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets[0], 2); // <= 1 µs
        assert_eq!(s.buckets[1], 2); // <= 2 µs
        assert_eq!(s.buckets[2], 1); // <= 4 µs
        assert_eq!(s.buckets[3], 1); // <= 8 µs
        assert_eq!(s.buckets[BUCKETS], 1); // overflow
        assert_eq!(s.count(), 7);
    }

    /// The hot-path cost: `cargo test --release --lib record_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn record_cost() {
        let lat = OpLatencies::default();
        const N: u32 = 10_000_000;
        let t0 = Instant::now();
        for _ in 0..N {
            let started = Instant::now();
            lat.store.record_since(std::hint::black_box(started));
        }
        let per = t0.elapsed().as_nanos() as f64 / N as f64;
        let t1 = Instant::now();
        for _ in 0..N {
            std::hint::black_box(Instant::now());
        }
        let clock = t1.elapsed().as_nanos() as f64 / N as f64;
        eprintln!("Instant::now + record_since: {per:.1} ns per operation (of which Instant::now: {clock:.1} ns)");
        assert_eq!(lat.store.snapshot().count(), N as u64);
    }

    #[test]
    fn registration_lives_as_long_as_its_token_and_the_handle() {
        let a = Arc::new(Fake(7_000_001));
        let reg = register(&a);
        assert!(render().contains("namespace=\"ns7000001\""));
        drop(reg);
        assert!(!render().contains("ns7000001"));
        let b = Arc::new(Fake(7_000_002));
        let _reg = register(&b);
        drop(b); // the handle is gone though its token is not: never sampled after free
        assert!(!render().contains("ns7000002"));
    }

    #[test]
    fn families_group_handles() {
        let text = encode(vec![Fake(1).sample(), Fake(2).sample()]);
        assert_eq!(
            text.matches("# TYPE kvr_test_hits_total counter").count(),
            1
        );
        assert!(text.contains("kvr_test_hits_total{tier=\"test\",namespace=\"ns1\"} 1"));
        assert!(text.contains("kvr_test_hits_total{tier=\"test\",namespace=\"ns2\"} 2"));
        assert!(text.contains(
            "kvr_op_latency_seconds_bucket{tier=\"test\",namespace=\"ns1\",op=\"load\",le=\"2e-06\"} 1"
        ));
        assert!(text.contains(
            "kvr_op_latency_seconds_count{tier=\"test\",namespace=\"ns2\",op=\"load\"} 1"
        ));
    }
}
