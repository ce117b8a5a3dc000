//! `kvr obj inspect|verify|gc URL`: a thin layer over `kvr::obj::maintenance`.

use clap::{Args, Subcommand};
use kvr::fs::format::Header;
use kvr::obj::maintenance::{BadObject, BlockObject, Bucket};
use kvr::ObjConfig;
use serde_json::json;

use crate::block_report::{print_gc, print_verify, BadBlock, Collected};
use crate::report::human_bytes;
use crate::stdout::out;

#[derive(Args, Debug)]
pub struct Target {
    /// The stores' URL, `s3://bucket[/prefix]` (one namespace per directory under it).
    pub url: String,
    /// Only this namespace (default: every namespace under URL).
    #[arg(long)]
    pub namespace: Option<String>,
    /// The S3 endpoint, `http://host:port` or `https://host:port` (default:
    /// AWS_ENDPOINT_URL). Credentials and region come from the AWS_* variables; without
    /// credentials requests are unsigned.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// A PEM file of certificates to trust for an https endpoint besides the public roots
    /// (default: AWS_CA_BUNDLE).
    #[arg(long)]
    pub ca_bundle: Option<std::path::PathBuf>,
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
    Inspect {
        #[command(flatten)]
        target: Target,
        /// Also list every block object with the whole engine key its header holds (one
        /// ranged GET of each object's header; version-2 blocks keep keys that are not 16
        /// bytes there).
        #[arg(long)]
        keys: bool,
    },
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
    c.ca_bundle = t.ca_bundle.clone();
    c.concurrency = t.concurrency;
    Bucket::open(&c)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A block object and what its header says, as JSON.
fn block_json(b: &BlockObject, h: &kvr::Result<Header>) -> serde_json::Value {
    match h {
        Ok(h) => json!({
            "path": b.path,
            "size": b.size,
            "version": h.version,
            "key": hex(&h.key),
            "key_len": h.key.len(),
            "payload_len": h.payload_len,
        }),
        Err(e) => json!({"path": b.path, "size": b.size, "error": e.to_string()}),
    }
}

/// A block object and what its header says, as a line: the whole key in hex.
fn block_line(b: &BlockObject, h: &kvr::Result<Header>) -> String {
    let name = b.path.rsplit('/').next().unwrap_or(&b.path);
    match h {
        Ok(h) => format!(
            "{name}  v{}  key {} ({} bytes)  payload {}",
            h.version,
            hex(&h.key),
            h.key.len(),
            human_bytes(h.payload_len)
        ),
        Err(e) => format!("{name}  header does not decode: {e}"),
    }
}

impl BadBlock for BadObject {
    fn removed(&self) -> bool {
        self.removed
    }
    fn json(&self) -> serde_json::Value {
        json!({
            "path": self.path,
            "key": self.key.as_deref().map(hex),
            "reason": self.reason,
            "removed": self.removed,
        })
    }
    fn line(&self) -> String {
        match &self.key {
            Some(k) => format!("{}: {} [key {}]", self.path, self.reason, hex(k)),
            None => format!("{}: {}", self.path, self.reason),
        }
    }
}

pub fn run(cmd: &ObjCommand) -> kvr::Result<u8> {
    match cmd {
        ObjCommand::Inspect { target: t, keys } => {
            let bucket = open(t)?;
            let spaces = bucket.inspect(t.namespace.as_deref())?;
            let listed = if *keys {
                bucket.headers(t.namespace.as_deref())?
            } else {
                Vec::new()
            };
            if t.json {
                let v: Vec<_> = spaces
                    .iter()
                    .map(|s| {
                        let mut v = json!({
                            "namespace": s.namespace,
                            "blocks": s.blocks,
                            "bytes": s.bytes,
                            "other_objects": s.other_objects,
                            "modified": s.modified.map(|(lo, hi)| json!({"oldest": lo, "newest": hi})),
                        });
                        if *keys {
                            v["block_list"] = listed
                                .iter()
                                .filter(|(b, _)| b.namespace == s.namespace)
                                .map(|(b, h)| block_json(b, h))
                                .collect();
                        }
                        v
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
            for s in spaces.iter().filter(|_| *keys) {
                out!("\nblocks of {}:", s.namespace)?;
                for (b, h) in listed.iter().filter(|(b, _)| b.namespace == s.namespace) {
                    out!("  {}", block_line(b, h))?;
                }
            }
            Ok(0)
        }
        ObjCommand::Verify { target: t, repair } => {
            let r = open(t)?.verify(t.namespace.as_deref(), *repair)?;
            print_verify(r.checked, r.bytes, &r.bad, t.json)
        }
        ObjCommand::Gc {
            target: t,
            max_bytes,
        } => {
            let r = open(t)?.gc(t.namespace.as_deref(), *max_bytes)?;
            let c = Collected {
                blocks_before: r.blocks_before,
                bytes_before: r.bytes_before,
                removed_blocks: r.removed_blocks,
                removed_bytes: r.removed_bytes,
                bytes_after: r.bytes_after,
                removed_temp_files: None,
            };
            print_gc(&c, t.json)?;
            Ok(0)
        }
    }
}
