//! `kvr disk inspect|verify PATH`: a slot file's geometry, entries, free and damaged slots;
//! `verify` also checks every live entry's slot header and checksum.

use std::path::PathBuf;

use clap::Subcommand;
use kvr::disk::{self, SlotFileReport};

use crate::report::human_bytes;
use crate::stdout::out;
use crate::EXIT_VERIFY_FOUND_BAD;

#[derive(Subcommand)]
pub enum DiskCommand {
    /// Geometry, live entries, free, superseded and damaged slots (reads the header table only;
    /// takes no lock, works while a live process owns the file and says so).
    Inspect {
        /// The slot file.
        path: PathBuf,
        /// Also list every live entry with its whole engine key (one read of its slot's
        /// header page each: version-2 entries keep keys that are not 16 bytes there).
        #[arg(long)]
        keys: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read every live entry and check its slot header and payload checksum in parallel; lists
    /// the bad ones and exits 3 if there are any. Refused while a live process owns the file.
    Verify {
        /// The slot file.
        path: PathBuf,
        /// Reader threads.
        #[arg(long, default_value_t = 8)]
        threads: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn summary_json(r: &SlotFileReport) -> serde_json::Value {
    serde_json::json!({
        "path": r.path.display().to_string(),
        "slot_size": r.geometry.slot_size,
        "num_slots": r.geometry.num_slots,
        "file_len": r.file_len,
        "owned_by_live_process": r.owned,
        "entries": r.entries,
        "payload_bytes": r.payload_bytes,
        "meta_bytes": r.meta_bytes,
        "free_slots": r.free_slots,
        "superseded_slots": r.superseded,
        "damaged_slots": r.damaged,
    })
}

fn print_summary(r: &SlotFileReport) -> kvr::Result<()> {
    let g = r.geometry;
    out!("slot file   {}", r.path.display())?;
    out!(
        "geometry    {} slots x {} payload (+4K header page), file {}",
        g.num_slots,
        human_bytes(g.slot_size),
        human_bytes(r.file_len)
    )?;
    out!(
        "owner       {}",
        if r.owned {
            "a live process holds it (figures are a snapshot and may be changing)"
        } else {
            "none"
        }
    )?;
    out!(
        "entries     {} ({} payload, {} metadata)",
        r.entries,
        human_bytes(r.payload_bytes),
        human_bytes(r.meta_bytes)
    )?;
    out!("free        {}", r.free_slots)?;
    out!(
        "superseded  {} (older copies left by a crash; dropped at next open)",
        r.superseded
    )?;
    out!(
        "damaged     {} (header table entry fails its checksum; never served)",
        r.damaged.len()
    )?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn entry_json(e: &disk::EntryKey) -> serde_json::Value {
    serde_json::json!({
        "slot": e.slot,
        "name": e.header.key.to_hex(),
        "version": e.version(),
        "key": e.key.as_deref().map(hex),
        "key_len": e.key.as_ref().map(Vec::len),
        "len": e.header.len,
        "meta_len": e.header.meta_len,
        "seq": e.header.seq,
    })
}

fn print_entry(e: &disk::EntryKey) -> kvr::Result<()> {
    let key = match &e.key {
        Some(k) => format!(
            "v{} key {}",
            e.version().unwrap_or(0),
            kvr::Key::display_bytes(k)
        ),
        None => format!("name {} (slot header page does not decode)", e.header.key),
    };
    out!(
        "slot {:>6}  {}  payload {}  meta {}",
        e.slot,
        key,
        human_bytes(e.header.len),
        e.header.meta_len
    )
}

pub fn run(cmd: &DiskCommand) -> kvr::Result<u8> {
    match cmd {
        DiskCommand::Inspect { path, keys, json } => {
            let r = disk::inspect(path)?;
            let listed = if *keys {
                disk::entry_keys(path, &r)?
            } else {
                Vec::new()
            };
            if *json {
                let mut v = summary_json(&r);
                if *keys {
                    v["live"] = listed.iter().map(entry_json).collect();
                }
                out!("{}", serde_json::to_string_pretty(&v).unwrap())?;
            } else {
                print_summary(&r)?;
                for e in &listed {
                    print_entry(e)?;
                }
            }
            Ok(0)
        }
        DiskCommand::Verify {
            path,
            threads,
            json,
        } => {
            if *threads == 0 {
                return Err(kvr::Error::invalid("--threads must be at least 1"));
            }
            let v = disk::verify(path, *threads)?;
            if *json {
                let bad: Vec<_> = v
                    .bad
                    .iter()
                    .map(|b| {
                        serde_json::json!({
                            "slot": b.slot,
                            "name": b.name.as_ref().map(kvr::Key::to_hex),
                            "key": b.key.as_deref().map(hex),
                            "key_len": b.key.as_ref().map(Vec::len),
                            "reason": b.reason,
                        })
                    })
                    .collect();
                let out = serde_json::json!({
                    "summary": summary_json(&v.inspect),
                    "checked": v.checked,
                    "bytes_checked": v.bytes_checked,
                    "bad": bad,
                });
                out!("{}", serde_json::to_string_pretty(&out).unwrap())?;
            } else {
                print_summary(&v.inspect)?;
                for b in &v.bad {
                    let name = b
                        .name
                        .as_ref()
                        .map(kvr::Key::to_hex)
                        .unwrap_or_else(|| "?".into());
                    match &b.key {
                        Some(k) => out!(
                            "BAD slot {} name {name} key {}: {}",
                            b.slot,
                            kvr::Key::display_bytes(k),
                            b.reason
                        )?,
                        None => out!("BAD slot {} name {name}: {}", b.slot, b.reason)?,
                    }
                }
                out!(
                    "verified {} entries ({}): {} bad",
                    v.checked,
                    human_bytes(v.bytes_checked),
                    v.bad.len()
                )?;
            }
            Ok(if v.bad.is_empty() {
                0
            } else {
                EXIT_VERIFY_FOUND_BAD
            })
        }
    }
}
