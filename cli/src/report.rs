//! Formatting of benchmark results: medians with ranges, a table, JSON.

use serde::Serialize;

use crate::stdout::out;

/// Median, minimum and maximum of repeated measurements.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Summary {
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let median = if v.is_empty() {
            f64::NAN
        } else if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Summary {
            median,
            min: *v.first().unwrap_or(&f64::NAN),
            max: *v.last().unwrap_or(&f64::NAN),
        }
    }
}

/// One line of the benchmark table: kvr's throughput next to the physical limit's.
#[derive(Debug, Serialize)]
pub struct Row {
    pub tier: String,
    pub op: String,
    pub block_size: u64,
    pub threads: usize,
    /// kvr, GB/s (1e9 bytes per second).
    pub kvr_gbps: Summary,
    /// The physical reference measured in the same run, GB/s.
    pub limit_gbps: Summary,
    /// What the limit is (memcpy, fio ...).
    pub limit: String,
    /// kvr median / limit median.
    pub ratio: f64,
}

impl Row {
    pub fn new(
        tier: &str,
        op: &str,
        block_size: u64,
        threads: usize,
        kvr: &[f64],
        limit: &[f64],
        limit_name: &str,
    ) -> Row {
        let (k, l) = (Summary::of(kvr), Summary::of(limit));
        Row {
            tier: tier.into(),
            op: op.into(),
            block_size,
            threads,
            kvr_gbps: k,
            limit_gbps: l,
            limit: limit_name.into(),
            ratio: k.median / l.median,
        }
    }
}

/// A latency measurement that has no throughput limit to compare with, in microseconds.
#[derive(Debug, Serialize)]
pub struct Timing {
    pub tier: String,
    pub what: String,
    pub micros: Summary,
}

impl Timing {
    pub fn new(tier: &str, what: &str, micros: &[f64]) -> Timing {
        Timing {
            tier: tier.into(),
            what: what.into(),
            micros: Summary::of(micros),
        }
    }
}

pub fn print_timings(timings: &[Timing]) -> kvr::Result<()> {
    for t in timings {
        out!(
            "{:<8} {}: median {:.0} us ({:.0}-{:.0})",
            t.tier,
            t.what,
            t.micros.median,
            t.micros.min,
            t.micros.max
        )?;
    }
    Ok(())
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("T", 1 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ];
    for (u, size) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{u}", n / size);
        }
        if n >= size {
            return format!("{:.1}{u}", n as f64 / size as f64);
        }
    }
    format!("{n}B")
}

pub fn print_table(rows: &[Row], runs: usize) -> kvr::Result<()> {
    out!(
        "{:<8} {:<14} {:>6} {:>3}  {:>22}  {:>22}  {:>6}",
        "tier",
        "op",
        "block",
        "thr",
        "kvr GB/s (min-max)",
        "limit GB/s (min-max)",
        "ratio"
    )?;
    for r in rows {
        out!(
            "{:<8} {:<14} {:>6} {:>3}  {:>7.2} ({:>6.2}-{:>6.2})  {:>7.2} ({:>6.2}-{:>6.2})  {:>5.2}x  [{}]",
            r.tier,
            r.op,
            human_bytes(r.block_size),
            r.threads,
            r.kvr_gbps.median,
            r.kvr_gbps.min,
            r.kvr_gbps.max,
            r.limit_gbps.median,
            r.limit_gbps.min,
            r.limit_gbps.max,
            r.ratio,
            r.limit
        )?;
    }
    out!("medians of {runs} runs; ratio = kvr median / limit median")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_and_units() {
        let s = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Summary::of(&[1.0, 2.0, 3.0, 10.0]).median, 2.5);
        assert_eq!(human_bytes(65536), "64K");
        assert_eq!(human_bytes(2 << 20), "2M");
        assert_eq!(human_bytes(100), "100B");
    }
}
