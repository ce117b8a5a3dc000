//! `kvr obj inspect|verify|gc URL`: a thin layer over `kvr::obj::maintenance`.

use clap::{Args, Subcommand};
use kvr::obj::maintenance::Bucket;
use kvr::ObjConfig;
use serde_json::json;

use crate::report::human_bytes;
use crate::stdout::out;
use crate::EXIT_VERIFY_FOUND_BAD;

#[derive(Args, Debug)]
pub struct Target {
    /// The stores' URL, `s3://bucket[/prefix]` (one namespace per directory under it).
    pub url: String,
    /// Only this namespace (default: every namespace under URL).
    #[arg(long)]
    pub namespace: Option<String>,
    /// The S3 endpoint, `http://host:port` (default: AWS_ENDPOINT_URL). Credentials and
    /// region come from the AWS_* variables; without credentials requests are unsigned.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Requests in flight (verify).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ObjCommand {
    /// Block objects and bytes per namespace, and objects that are not blocks.
    Inspect(Target),
    /// Fetch every block object and check its header, key, length and checksum; exit 3 if
    /// bad objects remain.
    Verify {
        #[command(flatten)]
        target: Target,
        /// Remove the bad objects (the only way kvr removes them: loads count them as
        /// misses and leave them).
        #[arg(long)]
        repair: bool,
    },
    /// Remove the oldest blocks (by upload time) until the stores hold at most --max-bytes.
    Gc {
        #[command(flatten)]
        target: Target,
        /// Byte bound for the selected stores together (K/M/G suffixes; 0 empties them).
        #[arg(long, value_parser = crate::fs_cmd::parse_bound)]
        max_bytes: u64,
    },
}

fn open(t: &Target) -> kvr::Result<Bucket> {
    let mut c = ObjConfig::new(&t.url, "-");
    c.endpoint = t.endpoint.clone();
    c.concurrency = t.concurrency;
    Bucket::open(&c)
}

pub fn run(cmd: &ObjCommand) -> kvr::Result<u8> {
    match cmd {
        ObjCommand::Inspect(t) => {
            let spaces = open(t)?.inspect(t.namespace.as_deref())?;
            if t.json {
                let v: Vec<_> = spaces
                    .iter()
                    .map(|s| {
                        json!({
                            "namespace": s.namespace,
                            "blocks": s.blocks,
                            "bytes": s.bytes,
                            "other_objects": s.other_objects,
                            "modified": s.modified.map(|(lo, hi)| json!({"oldest": lo, "newest": hi})),
                        })
                    })
                    .collect();
                let v = json!({ "url": t.url, "namespaces": v });
                out!("{}", serde_json::to_string_pretty(&v).unwrap())?;
                return Ok(0);
            }
            if spaces.is_empty() {
                out!("no object stores under {}", t.url)?;
                return Ok(0);
            }
            out!(
                "{:<40} {:>10} {:>10} {:>6}",
                "namespace",
                "blocks",
                "bytes",
                "other"
            )?;
            let (mut nb, mut by) = (0, 0);
            for s in &spaces {
                out!(
                    "{:<40} {:>10} {:>10} {:>6}",
                    s.namespace,
                    s.blocks,
                    human_bytes(s.bytes),
                    s.other_objects
                )?;
                nb += s.blocks;
                by += s.bytes;
            }
            out!("{:<40} {:>10} {:>10}", "total", nb, human_bytes(by))?;
            Ok(0)
        }
        ObjCommand::Verify { target: t, repair } => {
            let r = open(t)?.verify(t.namespace.as_deref(), *repair)?;
            let remaining = r.bad.iter().filter(|b| !b.removed).count();
            if t.json {
                let bad: Vec<_> = r
                    .bad
                    .iter()
                    .map(|b| json!({"path": b.path, "reason": b.reason, "removed": b.removed}))
                    .collect();
                let v = json!({"checked": r.checked, "bytes": r.bytes, "bad": bad});
                out!("{}", serde_json::to_string_pretty(&v).unwrap())?;
            } else {
                for b in &r.bad {
                    let what = if b.removed { "REMOVED" } else { "BAD" };
                    out!("{what} {}: {}", b.path, b.reason)?;
                }
                out!(
                    "checked {} blocks ({}): {} bad, {} removed",
                    r.checked,
                    human_bytes(r.bytes),
                    r.bad.len(),
                    r.bad.len() - remaining
                )?;
            }
            Ok(if remaining > 0 {
                EXIT_VERIFY_FOUND_BAD
            } else {
                0
            })
        }
        ObjCommand::Gc {
            target: t,
            max_bytes,
        } => {
            let r = open(t)?.gc(t.namespace.as_deref(), *max_bytes)?;
            if t.json {
                let v = json!({
                    "blocks_before": r.blocks_before,
                    "bytes_before": r.bytes_before,
                    "removed_blocks": r.removed_blocks,
                    "removed_bytes": r.removed_bytes,
                    "bytes_after": r.bytes_after,
                });
                out!("{}", serde_json::to_string_pretty(&v).unwrap())?;
            } else {
                out!(
                    "removed {} of {} blocks ({} of {}), {} left",
                    r.removed_blocks,
                    r.blocks_before,
                    human_bytes(r.removed_bytes),
                    human_bytes(r.bytes_before),
                    human_bytes(r.bytes_after)
                )?;
            }
            Ok(0)
        }
    }
}
