//! Offline maintenance of the object stores under one `s3://bucket/prefix`: what they hold
//! ([`Bucket::inspect`]), which objects are bad ([`Bucket::verify`], optionally removing
//! them: the only place kvr deletes a bad object), and trimming them to a byte bound, oldest
//! first ([`Bucket::gc`]). Safe while engines use the stores: they treat a vanished block as
//! a miss.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::client::{Client, Listed};
use super::config::ObjConfig;
use super::object::name_of;
use super::runtime::RuntimeHandle;
use crate::fs::format::{self, Header};
use crate::fs::maintenance::check_block_bytes;
use crate::fs::path::validate_namespace;
use crate::{err, Key, Result};

/// One block object found by a listing.
#[derive(Clone, Debug)]
pub struct BlockObject {
    /// Its namespace.
    pub namespace: String,
    /// The block name its object name says (the key itself for a 16-byte key, else the
    /// hash of namespace and key: [`crate::key::block_name`]; the whole key is in its header).
    pub name: Key,
    /// Its name relative to the URL's prefix.
    pub path: String,
    /// Object bytes (header included).
    pub size: u64,
    /// Last modification (its upload), seconds since the epoch.
    pub modified: i64,
}

/// What one namespace holds.
#[derive(Clone, Debug, Default)]
pub struct NamespaceSummary {
    /// The namespace.
    pub namespace: String,
    /// Block objects.
    pub blocks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Objects whose names are not a block's (not kvr's, or damaged names).
    pub other_objects: u64,
    /// Oldest and newest upload of its blocks (seconds since the epoch), if any.
    pub modified: Option<(i64, i64)>,
}

/// An object that failed verification.
#[derive(Clone, Debug)]
pub struct BadObject {
    /// Its name relative to the URL's prefix.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
    /// The whole key its header holds, where the header decodes.
    pub key: Option<Vec<u8>>,
    /// Whether it was removed (`repair`).
    pub removed: bool,
}

/// The result of [`Bucket::verify`].
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Block objects checked.
    pub checked: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The ones that failed, sorted by name.
    pub bad: Vec<BadObject>,
}

/// The result of [`Bucket::gc`].
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    /// Blocks before.
    pub blocks_before: u64,
    /// Bytes before.
    pub bytes_before: u64,
    /// Blocks removed.
    pub removed_blocks: u64,
    /// Bytes removed.
    pub removed_bytes: u64,
    /// Bytes left.
    pub bytes_after: u64,
}

/// The stores under one URL, for maintenance (no namespace needed).
pub struct Bucket {
    client: Arc<Client>,
    concurrency: usize,
    runtime: RuntimeHandle,
}

impl Bucket {
    /// Connects to `cfg.url` (its `namespace` is ignored); makes no request.
    pub fn open(cfg: &ObjConfig) -> Result<Bucket> {
        let resolved = cfg.resolve()?;
        Ok(Bucket {
            runtime: RuntimeHandle::acquire()?,
            client: Arc::new(Client::new(&resolved)?),
            concurrency: resolved.concurrency,
        })
    }

    /// Every block object of `namespace` (all namespaces if `None`), sorted by name; and
    /// per namespace, how many other objects there are.
    pub fn blocks(
        &self,
        namespace: Option<&str>,
    ) -> Result<(Vec<BlockObject>, BTreeMap<String, u64>)> {
        let dir = match namespace {
            Some(ns) => {
                validate_namespace(ns)?;
                format!("{ns}/")
            }
            None => "/".to_string(),
        };
        let client = self.client.clone();
        let listed: Vec<Listed> = self.runtime.run(async move { client.list(&dir).await })?;
        let mut blocks = Vec::new();
        let mut other: BTreeMap<String, u64> = BTreeMap::new();
        for l in listed {
            let path = l.path.trim_start_matches('/').to_string();
            let Some((ns, rest)) = path.split_once('/') else {
                continue; // an object beside the namespaces: not a store's
            };
            match name_of(rest) {
                Some(name) => blocks.push(BlockObject {
                    namespace: ns.to_string(),
                    name,
                    path: path.clone(),
                    size: l.size,
                    modified: l.modified,
                }),
                None => *other.entry(ns.to_string()).or_default() += 1,
            }
        }
        blocks.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((blocks, other))
    }

    /// Counts and sizes per namespace.
    pub fn inspect(&self, namespace: Option<&str>) -> Result<Vec<NamespaceSummary>> {
        let (blocks, other) = self.blocks(namespace)?;
        let mut out: BTreeMap<String, NamespaceSummary> = BTreeMap::new();
        for (ns, n) in other {
            out.entry(ns.clone()).or_default().other_objects = n;
        }
        for b in blocks {
            let s = out.entry(b.namespace.clone()).or_default();
            s.blocks += 1;
            s.bytes += b.size;
            s.modified = Some(match s.modified {
                None => (b.modified, b.modified),
                Some((lo, hi)) => (lo.min(b.modified), hi.max(b.modified)),
            });
        }
        Ok(out
            .into_iter()
            .map(|(ns, mut s)| {
                s.namespace = ns;
                s
            })
            .collect())
    }

    /// Every block object of `namespace` (all if `None`), sorted by name, with its decoded
    /// header (the whole key, format version, payload length) or why it does not decode:
    /// one ranged `GET` of the header per object, up to `concurrency` at once.
    pub fn headers(&self, namespace: Option<&str>) -> Result<Vec<(BlockObject, Result<Header>)>> {
        let (blocks, _) = self.blocks(namespace)?;
        let client = self.client.clone();
        let limit = Arc::new(Semaphore::new(self.concurrency));
        self.runtime.run(async move {
            let tasks: Vec<_> = blocks
                .into_iter()
                .map(|b| {
                    let (client, limit) = (client.clone(), limit.clone());
                    tokio::spawn(async move {
                        let _slot = limit.acquire_owned().await;
                        let h = read_header(&client, &b).await;
                        (b, h)
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                let (b, h) = t
                    .await
                    .map_err(|e| err!(Internal, "header task failed: {e}"))?;
                // A request failure aborts (as `verify`); a bad header is the object's.
                match h {
                    Err(e) if e.kind() == crate::ErrorKind::NotFound => {} // removed meanwhile
                    Err(e) if e.kind() != crate::ErrorKind::Corrupt => return Err(e),
                    h => out.push((b, h)),
                }
            }
            Ok(out)
        })
    }

    /// Fetches every block object and checks header, key, length and checksum, up to
    /// `concurrency` at once; with `repair`, removes the bad ones. Request failures abort.
    pub fn verify(&self, namespace: Option<&str>, repair: bool) -> Result<VerifyReport> {
        let (blocks, _) = self.blocks(namespace)?;
        let client = self.client.clone();
        let limit = Arc::new(Semaphore::new(self.concurrency));
        let checked = blocks.len() as u64;
        let bytes = blocks.iter().map(|b| b.size).sum();
        let mut bad = self.runtime.run(async move {
            let tasks: Vec<_> = blocks
                .into_iter()
                .map(|b| {
                    let (client, limit) = (client.clone(), limit.clone());
                    tokio::spawn(async move {
                        let _slot = limit.acquire_owned().await;
                        verify_one(&client, &b, repair).await
                    })
                })
                .collect();
            let mut bad = Vec::new();
            for t in tasks {
                let r = t
                    .await
                    .map_err(|e| err!(Internal, "verify task failed: {e}"))?;
                bad.extend(r?);
            }
            Ok(bad)
        })?;
        bad.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(VerifyReport {
            checked,
            bytes,
            bad,
        })
    }

    /// Removes the oldest blocks (by upload time, ties by name) until the selected stores
    /// together hold at most `max_bytes`.
    pub fn gc(&self, namespace: Option<&str>, max_bytes: u64) -> Result<GcReport> {
        let (mut blocks, _) = self.blocks(namespace)?;
        let mut report = GcReport {
            blocks_before: blocks.len() as u64,
            bytes_before: blocks.iter().map(|b| b.size).sum(),
            ..GcReport::default()
        };
        blocks.sort_by(|a, b| a.modified.cmp(&b.modified).then(a.path.cmp(&b.path)));
        let mut total = report.bytes_before;
        let mut doomed = Vec::new();
        for b in blocks {
            if total <= max_bytes {
                break;
            }
            total -= b.size;
            doomed.push(b);
        }
        let client = self.client.clone();
        let removed = self.runtime.run(async move {
            for b in &doomed {
                client.delete(&b.path).await?;
            }
            Ok(doomed)
        })?;
        report.removed_blocks = removed.len() as u64;
        report.removed_bytes = removed.iter().map(|b| b.size).sum();
        report.bytes_after = report.bytes_before - report.removed_bytes;
        Ok(report)
    }
}

/// The decoded header of block object `b`: its first page (the header of any ordinary shape
/// fits), then the rest of a longer header. `Corrupt` if it does not decode.
async fn read_header(client: &Client, b: &BlockObject) -> Result<Header> {
    let first = (crate::io::IO_ALIGN as u64).min(b.size);
    let short = || {
        err!(
            Corrupt,
            "object is {} bytes, shorter than a block header",
            b.size
        )
    };
    let Some(buf) = client.get(&b.path, 0..first).await? else {
        return Err(err!(NotFound, "{} was removed meanwhile", b.path));
    };
    let mut bytes = buf.to_bytes();
    let prefix: [u8; 8] = bytes
        .get(..8)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(short)?;
    let n = format::header_len(&prefix)?;
    if n as u64 > b.size {
        return Err(short());
    }
    if n > bytes.len() {
        let Some(buf) = client.get(&b.path, 0..n as u64).await? else {
            return Err(err!(NotFound, "{} was removed meanwhile", b.path));
        };
        bytes = buf.to_bytes();
    }
    format::decode_header(bytes.get(..n).ok_or_else(short)?)
}

async fn verify_one(client: &Client, b: &BlockObject, repair: bool) -> Result<Option<BadObject>> {
    // The listing's size bounds the read: an object longer than its header says is bad
    // without being read whole.
    let Some(buf) = client.get(&b.path, 0..b.size).await? else {
        return Ok(None); // removed meanwhile
    };
    let bytes = buf.to_bytes();
    let key = format::decode_header(&bytes).ok().map(|h| h.key);
    let reason = match check_block_bytes(&bytes, &b.namespace, &b.name) {
        Ok(_) if bytes.len() as u64 == b.size => return Ok(None),
        Ok(_) => format!(
            "object is {} bytes but was listed with {}",
            bytes.len(),
            b.size
        ),
        Err(e) => e.to_string(),
    };
    let removed = repair && client.delete(&b.path).await.is_ok();
    Ok(Some(BadObject {
        path: b.path.clone(),
        reason,
        key,
        removed,
    }))
}
