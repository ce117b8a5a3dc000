//! Runs `fio` as the physical reference for the disk tiers and reads its JSON output.

use std::path::Path;
use std::process::Command;

/// One fio measurement.
#[derive(Clone, Copy)]
pub struct FioJob<'a> {
    /// "write", "read", "randwrite", "randread".
    pub rw: &'a str,
    pub block_size: u64,
    pub numjobs: usize,
    pub direct: bool,
    /// Bytes per job.
    pub size_per_job: u64,
    /// Either a directory (one file per job) or one file shared by all jobs.
    pub target: FioTarget<'a>,
    /// One file per block instead of one file per job: `--nrfiles=size/bs --filesize=bs`.
    /// Writes add `--create_on_open=1` (files are created inside the timed phase, as a block
    /// store creates them); reads, of the files such a write left, add `--openfiles=1` (each
    /// file opened, read and closed in turn, as a block store loads them).
    pub new_file_per_block: bool,
}

#[derive(Clone, Copy)]
pub enum FioTarget<'a> {
    Directory(&'a Path),
    File(&'a Path),
}

/// Fails with a clear message when fio is missing.
pub fn require() -> kvr::Result<()> {
    match Command::new("fio").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err(kvr::err!(NotFound, "fio not found: install it with `apt-get install fio` (it measures the disk limit kvr is compared with)")),
    }
}

/// Runs the job and returns aggregate bandwidth in GB/s (1e9 B/s).
pub fn run(job: &FioJob) -> kvr::Result<f64> {
    run_with(job, &[])
}

/// Runs the job on one existing, preallocated file shared by all jobs (`job.target` must be
/// a file): each job moves `job.size_per_job` bytes at offsets in `[offset, offset + len)`,
/// and fio neither extends nor reallocates the file. Returns aggregate GB/s.
pub fn run_shared_file(job: &FioJob, offset: u64, len: u64) -> kvr::Result<f64> {
    if !matches!(job.target, FioTarget::File(_)) {
        return Err(kvr::err!(
            Internal,
            "fio shared-file run needs a file target"
        ));
    }
    run_with(
        &FioJob {
            size_per_job: len,
            ..*job
        },
        &[
            format!("--offset={offset}"),
            format!("--io_size={}", job.size_per_job),
            "--fallocate=none".into(),
        ],
    )
}

fn run_with(job: &FioJob, extra: &[String]) -> kvr::Result<f64> {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=kvr-limit",
        &format!("--rw={}", job.rw),
        &format!("--bs={}", job.block_size),
        &format!("--numjobs={}", job.numjobs),
        &format!("--direct={}", u8::from(job.direct)),
        &format!("--size={}", job.size_per_job),
        "--ioengine=psync",
        "--group_reporting",
        "--output-format=json",
        "--end_fsync=0",
    ]);
    cmd.args(extra);
    if job.new_file_per_block {
        cmd.args([
            format!("--nrfiles={}", (job.size_per_job / job.block_size).max(1)),
            format!("--filesize={}", job.block_size),
        ]);
        cmd.arg(if job.rw.contains("write") {
            "--create_on_open=1"
        } else {
            "--openfiles=1"
        });
    }
    match job.target {
        FioTarget::Directory(d) => cmd.arg(format!("--directory={}", d.display())),
        FioTarget::File(f) => cmd.arg(format!("--filename={}", f.display())),
    };
    let out = cmd.output().map_err(|e| kvr::Error::io("running fio", e))?;
    if !out.status.success() {
        return Err(kvr::err!(
            Io,
            "fio failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse_bw(&out.stdout, job.rw)
}

fn parse_bw(json: &[u8], rw: &str) -> kvr::Result<f64> {
    // fio may print warnings before the JSON document.
    let text = String::from_utf8_lossy(json);
    let start = text
        .find('{')
        .ok_or_else(|| kvr::err!(Io, "fio printed no JSON"))?;
    let v: serde_json::Value =
        serde_json::from_str(&text[start..]).map_err(|e| kvr::err!(Io, "fio JSON: {e}"))?;
    let dir = if rw.contains("write") {
        "write"
    } else {
        "read"
    };
    let bw = v["jobs"][0][dir]["bw_bytes"]
        .as_f64()
        .ok_or_else(|| kvr::err!(Io, "fio JSON has no jobs[0].{dir}.bw_bytes"))?;
    Ok(bw / 1e9)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_fio_json() {
        let j = br#"note: something
{"jobs":[{"read":{"bw_bytes":2000000000},"write":{"bw_bytes":1000000000}}]}"#;
        assert_eq!(super::parse_bw(j, "write").unwrap(), 1.0);
        assert_eq!(super::parse_bw(j, "randread").unwrap(), 2.0);
        assert!(super::parse_bw(b"nope", "read").is_err());
    }
}
