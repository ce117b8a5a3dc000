//! `kvr bench`: each tier's store and load paths next to the physical limit, same run.

pub mod disk;
pub mod fs;
pub mod lookup;
pub mod obj;
pub mod region;
pub mod tensors;
pub mod vectored;

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::report::{print_table, print_timings, Row, Timing};
use crate::stdout::out;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Tier {
    Region,
    Fs,
    Disk,
    Tensors,
    /// 2 MiB blocks as 64 segments of 32 KiB against one buffer (fs store and slot file).
    Vectored,
    /// Batched per-key lookups of 1,000 keys (fs store from memory and by stat, slot file).
    Lookup,
    /// The S3 object tier (needs a server: --endpoint; not part of `all`).
    Obj,
    /// Every local tier (region, fs, disk, vectored, lookup, tensors).
    All,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Which tier to measure.
    #[arg(long, value_enum, default_value = "all")]
    pub tier: Tier,
    /// Block sizes, comma-separated, with K/M/G suffixes. For --tier tensors: the size of
    /// each tensor in the benchmark file (a multiple of 4096) and fio's --bs.
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "64K,2M")]
    pub block_size: Vec<u64>,
    /// I/O threads (and fio --numjobs) for the disk tiers. The tensors tier reads and writes
    /// one file from one thread (fio --numjobs=1), as `read_into` and `write` do.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Directory for the disk tiers' files (and fio's); region files go to /dev/shm.
    /// The tensors tier puts one file of --bytes there (removed at the end).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Bytes moved per measurement (K/M/G suffixes).
    #[arg(long, value_parser = parse_size, default_value = "1G")]
    pub bytes: u64,
    /// Repetitions; the table reports medians with min-max.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// For --tier obj: the S3 endpoint, `http://host:port` (default: KVR_S3_TEST_ENDPOINT,
    /// else AWS_ENDPOINT_URL).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// For --tier obj: where the benchmark's objects go (under `kvr-bench-<pid>/`, removed
    /// at the end).
    #[arg(long, default_value = "s3://kvr-test")]
    pub obj_url: String,
    /// For --tier obj: requests in flight, comma-separated (kvr's concurrency and the raw
    /// HTTP client's threads).
    #[arg(long, value_delimiter = ',', default_value = "8,32")]
    pub in_flight: Vec<usize>,
    /// For --tier fs: how the store writes and publishes blocks (`auto`: unnamed O_TMPFILE
    /// files where the file system has them, else in place).
    #[arg(long, value_enum, default_value = "auto")]
    pub fs_write_mode: FsWriteMode,
}

/// `kvr::WriteMode` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FsWriteMode {
    Auto,
    UnnamedTemp,
    NamedTemp,
    InPlace,
}

impl From<FsWriteMode> for kvr::WriteMode {
    fn from(m: FsWriteMode) -> Self {
        match m {
            FsWriteMode::Auto => kvr::WriteMode::Auto,
            FsWriteMode::UnnamedTemp => kvr::WriteMode::UnnamedTemp,
            FsWriteMode::NamedTemp => kvr::WriteMode::NamedTemp,
            FsWriteMode::InPlace => kvr::WriteMode::InPlace,
        }
    }
}

/// Parses "64K", "2M", "4G", "4096".
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        Some((i, 'T' | 't')) => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?} (expected e.g. 4096, 64K, 2M, 4G)"))?;
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("size {s:?} must be > 0 and fit in 64 bits"))
}

/// A progress bar that draws only on a terminal (indicatif hides itself otherwise).
pub fn progress(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg:<28} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap()
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

pub fn run(args: &BenchArgs) -> kvr::Result<u8> {
    if args.runs == 0 || args.threads == 0 {
        return Err(kvr::Error::invalid(
            "--runs and --threads must be at least 1",
        ));
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut timings: Vec<Timing> = Vec::new();
    if matches!(args.tier, Tier::Region | Tier::All) {
        rows.extend(region::bench(args)?);
    }
    if matches!(args.tier, Tier::Fs | Tier::All) {
        rows.extend(fs::bench(args)?);
    }
    if matches!(args.tier, Tier::Disk | Tier::All) {
        rows.extend(disk::bench(args, &mut notes)?);
    }
    if matches!(args.tier, Tier::Vectored | Tier::All) {
        rows.extend(vectored::bench(args)?);
    }
    if matches!(args.tier, Tier::Lookup | Tier::All) {
        timings.extend(lookup::bench(args)?);
    }
    if matches!(args.tier, Tier::Tensors | Tier::All) {
        let (r, t) = tensors::bench(args)?;
        rows.extend(r);
        timings.extend(t);
    }
    if args.tier == Tier::Obj {
        let (r, t) = obj::bench(args)?;
        rows.extend(r);
        timings.extend(t);
    }
    if args.json {
        let out = serde_json::json!({
            "runs": args.runs,
            "bytes": args.bytes,
            "rows": rows,
            "timings": timings,
            "notes": notes,
        });
        out!("{}", serde_json::to_string_pretty(&out).unwrap())?;
    } else {
        print_table(&rows, args.runs)?;
        print_timings(&timings)?;
        for n in &notes {
            out!("{n}")?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("4g"), Ok(4 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
