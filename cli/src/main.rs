//! `kvr`: benchmarks of kvr's tiers against the physical limit measured in the same run, and
//! inspection/repair of what the tiers hold.
//!
//! Exit codes: 0 success; 1 an operation failed (one line on stderr says what and why);
//! 2 usage error; 3 `verify` found bad entries (and did not repair them all). A standard
//! output closed by its reader (`kvr ... | head -1`) ends any command early with 0 and no
//! message, as the reader asked for no more.

#![deny(clippy::undocumented_unsafe_blocks)]

mod bench;
mod block_report;
mod disk_cmd;
mod fio;
mod fs_cmd;
mod obj_cmd;
mod region_cmd;
mod report;
mod stdout;
mod tensors_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code when an operation fails.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code when `verify` found bad entries.
pub const EXIT_VERIFY_FOUND_BAD: u8 = 3;

#[derive(Parser)]
#[command(
    name = "kvr",
    version,
    about = "kvr's KV-cache tiers: benchmarks and inspection",
    after_help = "Exit codes: 0 success, 1 operation failed, 2 usage error, 3 verify found bad entries."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmark tiers against the physical limit (memcpy, fio) measured in the same run.
    Bench(bench::BenchArgs),
    /// fs block stores: inspect, verify (and repair), trim to a byte bound.
    Fs {
        #[command(subcommand)]
        command: fs_cmd::FsCommand,
    },
    /// S3 object stores: inspect, verify (and repair), trim to a byte bound.
    Obj {
        #[command(subcommand)]
        command: obj_cmd::ObjCommand,
    },
    /// Shared host regions: list them, remove stale ones.
    Region {
        #[command(subcommand)]
        command: region_cmd::RegionCommand,
    },
    /// Disk slot files: geometry and entries, verification of every entry.
    Disk {
        #[command(subcommand)]
        command: disk_cmd::DiskCommand,
    },
    /// Tensor (safetensors) files: list what one holds.
    Tensors {
        #[command(subcommand)]
        command: tensors_cmd::TensorsCommand,
    },
    /// Internal: one rank process of the region benchmark.
    #[command(hide = true, name = "__bench-rank")]
    BenchRank {
        dir: PathBuf,
        name: String,
        blocks: u64,
        page: u64,
        ranks: u32,
        rank: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(&args),
        Command::Fs { command } => fs_cmd::run(&command),
        Command::Obj { command } => obj_cmd::run(&command),
        Command::Region { command } => region_cmd::run(&command),
        Command::Disk { command } => disk_cmd::run(&command),
        Command::Tensors { command } => tensors_cmd::run(&command),
        Command::BenchRank {
            dir,
            name,
            blocks,
            page,
            ranks,
            rank,
        } => bench::region::rank_process(&dir, &name, blocks, page, ranks, rank).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(_) if stdout::closed() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvr: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
