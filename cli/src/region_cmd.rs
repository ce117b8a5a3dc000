//! `kvr region ls|rm`.

use std::path::PathBuf;

use clap::Subcommand;
use kvr::region as shm;

use crate::report::human_bytes;
use crate::stdout::out;

#[derive(Subcommand)]
pub enum RegionCommand {
    /// List kvr regions with their layout, size, and whether a live process holds them.
    Ls {
        /// Directory holding the region files.
        #[arg(long, default_value = "/dev/shm")]
        dir: PathBuf,
    },
    /// Remove a region left behind by dead processes (refused while a live process holds it).
    Rm {
        /// Region name (the file is kvr_<NAME>.mmap).
        name: String,
        /// Directory holding the region files.
        #[arg(long, default_value = "/dev/shm")]
        dir: PathBuf,
    },
}

pub fn run(cmd: &RegionCommand) -> kvr::Result<u8> {
    match cmd {
        RegionCommand::Ls { dir } => {
            let entries = shm::list(dir)?;
            if entries.is_empty() {
                out!("no kvr regions in {}", dir.display())?;
                return Ok(0);
            }
            out!("{:<32} {:>10} {:<8} layout", "name", "size", "state")?;
            for e in entries {
                let layout = match &e.layout {
                    Ok(l) => l.to_string(),
                    Err(err) => format!("unreadable: {err}"),
                };
                let state = if e.live { "live" } else { "stale" };
                out!(
                    "{:<32} {:>10} {:<8} {layout}",
                    e.name,
                    human_bytes(e.size),
                    state
                )?;
            }
            Ok(0)
        }
        RegionCommand::Rm { name, dir } => {
            shm::remove(dir, name)?;
            out!("removed region {name} from {}", dir.display())?;
            Ok(0)
        }
    }
}
