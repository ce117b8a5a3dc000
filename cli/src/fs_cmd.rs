//! `kvr fs inspect|verify|gc`: a thin layer over `kvr::fs::maintenance`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kvr::fs::maintenance;
use serde_json::json;

use crate::bench::parse_size;
use crate::block_report::{print_gc, print_verify, BadBlock, Collected};
use crate::report::human_bytes;
use crate::stdout::out;

#[derive(Args, Debug)]
pub struct Target {
    /// The store root (the directory holding one subdirectory per namespace).
    pub root: PathBuf,
    /// Only this namespace (default: every namespace under ROOT).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum FsCommand {
    /// Blocks, bytes, temp files and strays (entries in the way of blocks or fan-out
    /// directories, which `verify` lists) per namespace and rank, and each namespace's
    /// manifest (NAMESPACE.json: the model, dtype, geometry and parallel position it was
    /// made of).
    Inspect {
        #[command(flatten)]
        target: Target,
        /// Also list every block with the whole engine key its header holds (reads each
        /// block's header; version-2 blocks keep keys that are not 16 bytes there).
        #[arg(long)]
        keys: bool,
    },
    /// Check every block file's header, key, length and checksum in parallel (streaming, a
    /// bounded buffer per thread), and list what is in the way of blocks (FIFOs, symlinks,
    /// directories at block paths, files at fan-out paths); exit 3 if any remain.
    Verify {
        #[command(flatten)]
        target: Target,
        /// Remove the bad block files.
        #[arg(long)]
        repair: bool,
        /// Checking threads.
        #[arg(long, default_value_t = 8)]
        threads: usize,
    },
    /// Remove least recently used blocks until the stores hold at most --max-bytes (and
    /// remove temp files left by dead writers).
    Gc {
        #[command(flatten)]
        target: Target,
        /// Byte bound for the selected stores together (K/M/G suffixes; 0 empties them).
        #[arg(long, value_parser = parse_bound)]
        max_bytes: u64,
    },
}

pub fn parse_bound(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        Ok(0)
    } else {
        parse_size(s)
    }
}

/// The namespace's manifest, if it has one (an unreadable one is shown as its error).
fn manifest(root: &std::path::Path, ns: &str) -> Option<serde_json::Value> {
    let p = kvr::namespace::manifest_path(root, ns);
    if !p.exists() {
        return None;
    }
    Some(kvr::namespace::read_manifest(&p).unwrap_or_else(|e| json!({ "error": e.to_string() })))
}

fn store_name(l: &maintenance::StoreLocation) -> String {
    match l.rank {
        Some(r) => format!("{}/r{r}", l.namespace),
        None => l.namespace.clone(),
    }
}

/// One block file and what its header says (or why it does not decode).
struct BlockKey {
    path: PathBuf,
    header: kvr::Result<kvr::fs::format::Header>,
}

impl BlockKey {
    fn json(&self) -> serde_json::Value {
        match &self.header {
            Ok(h) => json!({
                "path": self.path,
                "version": h.version,
                "key": h.key.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                "key_len": h.key.len(),
                "payload_len": h.payload_len,
            }),
            Err(e) => json!({"path": self.path, "error": e.to_string()}),
        }
    }

    fn line(&self) -> String {
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        match &self.header {
            Ok(h) => format!(
                "{name}  v{}  key {}  payload {}",
                h.version,
                kvr::Key::display_bytes(&h.key),
                human_bytes(h.payload_len)
            ),
            Err(e) => format!("{name}  header does not decode: {e}"),
        }
    }
}

/// Reads the header of every block file of the store directory `dir`.
fn block_keys(dir: &std::path::Path) -> kvr::Result<Vec<BlockKey>> {
    let mut blocks = maintenance::scan_store(dir)?.blocks;
    blocks.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(blocks
        .into_iter()
        .map(|b| BlockKey {
            header: read_header(&b.path),
            path: b.path,
        })
        .collect())
}

fn read_header(path: &std::path::Path) -> kvr::Result<kvr::fs::format::Header> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let io = |e| kvr::Error::io(format!("reading {}", path.display()), e);
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut prefix = [0u8; 8];
    f.read_exact(&mut prefix).map_err(io)?;
    let n = kvr::fs::format::header_len(&prefix)?;
    let mut bytes = vec![0u8; n];
    f.read_exact_at(&mut bytes, 0).map_err(io)?;
    kvr::fs::format::decode_header(&bytes)
}

impl BadBlock for maintenance::BadBlock {
    fn removed(&self) -> bool {
        self.removed
    }
    fn json(&self) -> serde_json::Value {
        json!({"path": self.path, "reason": self.reason, "removed": self.removed})
    }
    fn line(&self) -> String {
        format!("{}: {}", self.path.display(), self.reason)
    }
}

pub fn run(cmd: &FsCommand) -> kvr::Result<u8> {
    match cmd {
        FsCommand::Inspect { target: t, keys } => {
            let stores = maintenance::inspect(&t.root, t.namespace.as_deref())?;
            let listed: Vec<Vec<BlockKey>> = if *keys {
                stores
                    .iter()
                    .map(|s| block_keys(&s.location.dir))
                    .collect::<kvr::Result<_>>()?
            } else {
                stores.iter().map(|_| Vec::new()).collect()
            };
            if t.json {
                let v: Vec<_> = stores
                    .iter()
                    .zip(&listed)
                    .map(|(s, blocks)| {
                        let mut v = json!({
                            "namespace": s.location.namespace,
                            "rank": s.location.rank,
                            "dir": s.location.dir,
                            "blocks": s.blocks,
                            "bytes": s.bytes,
                            "temp_files": s.temp_files,
                            "strays": s.strays,
                            "last_used": s.last_used.map(|(lo, hi)| json!({"oldest": lo, "newest": hi})),
                            "manifest": manifest(&t.root, &s.location.namespace),
                        });
                        if *keys {
                            v["block_list"] = blocks.iter().map(BlockKey::json).collect();
                        }
                        v
                    })
                    .collect();
                out!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "stores": v })).unwrap()
                )?;
                return Ok(0);
            }
            if stores.is_empty() {
                out!("no fs stores under {}", t.root.display())?;
                return Ok(0);
            }
            out!(
                "{:<40} {:>10} {:>10} {:>6} {:>6}",
                "store",
                "blocks",
                "bytes",
                "temp",
                "stray"
            )?;
            let (mut nb, mut by) = (0, 0);
            for s in &stores {
                out!(
                    "{:<40} {:>10} {:>10} {:>6} {:>6}",
                    store_name(&s.location),
                    s.blocks,
                    human_bytes(s.bytes),
                    s.temp_files,
                    s.strays
                )?;
                nb += s.blocks;
                by += s.bytes;
            }
            out!("{:<40} {:>10} {:>10}", "total", nb, human_bytes(by))?;
            for (s, blocks) in stores.iter().zip(&listed) {
                if *keys {
                    out!("\nblocks of {}:", store_name(&s.location))?;
                }
                for b in blocks {
                    out!("  {}", b.line())?;
                }
            }
            let mut shown = std::collections::BTreeSet::new();
            for s in &stores {
                let ns = &s.location.namespace;
                let Some(serde_json::Value::Object(m)) = manifest(&t.root, ns) else {
                    continue;
                };
                if !shown.insert(ns.clone()) {
                    continue;
                }
                out!("\nnamespace {ns} ({}):", kvr::namespace::MANIFEST_FILE)?;
                for (k, v) in &m {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    out!("  {k:<20} {v}")?;
                }
            }
            Ok(0)
        }
        FsCommand::Verify {
            target: t,
            repair,
            threads,
        } => {
            if *threads == 0 {
                return Err(kvr::Error::invalid("--threads must be at least 1"));
            }
            let r = maintenance::verify(&t.root, t.namespace.as_deref(), *threads, *repair)?;
            print_verify(r.checked, r.bytes, &r.bad, t.json)
        }
        FsCommand::Gc {
            target: t,
            max_bytes,
        } => {
            let r = maintenance::gc(&t.root, t.namespace.as_deref(), *max_bytes)?;
            let c = Collected {
                blocks_before: r.blocks_before,
                bytes_before: r.bytes_before,
                removed_blocks: r.removed_blocks,
                removed_bytes: r.removed_bytes,
                bytes_after: r.bytes_after,
                removed_temp_files: Some(r.removed_temp_files),
            };
            print_gc(&c, t.json)?;
            Ok(0)
        }
    }
}
