//! Offline maintenance of fs block stores under a root: what they hold ([`inspect`]), which
//! block files are damaged ([`verify`], optionally removing them), and trimming them to a
//! byte bound, least recently used first ([`gc`]).
//!
//! These functions work on the directory tree alone (no [`super::FsStore`] needs to be open)
//! and are safe to run while engines use the stores: a damaged file is only removed if the
//! path still names the inode that was checked, and removal is a plain `unlink` (readers that
//! hold a block open keep reading it; the stores treat a vanished block as a miss).

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::clean_temp;
use super::format::{self, Header};
use super::in_place::is_unpublished;
use super::path::{self, Entry, Key};
use super::writers::{remove_dead_writers, Liveness};
use crate::io::file::{
    describe_type, is_not_regular, remove_non_regular, same_inode, OpenNoFollow,
};
use crate::{err, Error, Result};

/// One store directory under a root: `<root>/<namespace>[/r<rank>]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoreLocation {
    /// The namespace directory's name.
    pub namespace: String,
    /// The rank, for a store in an `r<rank>` subdirectory.
    pub rank: Option<u32>,
    /// The store's directory.
    pub dir: PathBuf,
}

/// One complete block file found on disk.
#[derive(Clone, Debug)]
pub struct BlockFile {
    /// Its path.
    pub path: PathBuf,
    /// The key its name says.
    pub key: Key,
    /// File bytes (header included).
    pub size: u64,
    /// Last use: the later of its access and modification times, in seconds since the epoch.
    pub last_used: i64,
}

/// What one store directory holds.
#[derive(Clone, Debug)]
pub struct StoreSummary {
    /// Which store.
    pub location: StoreLocation,
    /// Complete block files.
    pub blocks: u64,
    /// Their file bytes.
    pub bytes: u64,
    /// Writers' temp files and unpublished block files (being written in place), of live
    /// writers or left by dead ones.
    pub temp_files: u64,
    /// Entries that are neither blocks nor fan-out directories where those belong (see
    /// [`Stray`]).
    pub strays: u64,
    /// Oldest and newest last use of its blocks (seconds since the epoch), if any.
    pub last_used: Option<(i64, i64)>,
}

/// Something at a block's name that is no regular file (a FIFO, a symlink, a directory),
/// or at a fan-out directory's name that is no directory (a stray file). Stores skip them
/// (a load of such a block fails, a store replaces what it can); `verify` reports them.
#[derive(Clone, Debug)]
pub struct Stray {
    /// Its path.
    pub path: PathBuf,
    /// What it is and where, in words.
    pub what: String,
}

/// What one store directory holds, entry by entry ([`scan_store`]).
#[derive(Clone, Debug, Default)]
pub struct StoreScan {
    /// Complete block files (published regular files at block names).
    pub blocks: Vec<BlockFile>,
    /// Entries at writers' temp file names, and unpublished files at block names (being
    /// written in place).
    pub temps: Vec<PathBuf>,
    /// Entries in the way (see [`Stray`]).
    pub strays: Vec<Stray>,
}

/// A block file that failed verification.
#[derive(Clone, Debug)]
pub struct BadBlock {
    /// Its path.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
    /// Whether it was removed (`repair`).
    pub removed: bool,
}

/// The result of [`verify`].
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Block files checked.
    pub checked: u64,
    /// Their file bytes.
    pub bytes: u64,
    /// The ones that failed, and the [`Stray`] entries found, sorted by path.
    pub bad: Vec<BadBlock>,
}

/// The result of [`gc`].
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    /// Blocks and bytes before.
    pub blocks_before: u64,
    /// File bytes before.
    pub bytes_before: u64,
    /// Blocks removed.
    pub removed_blocks: u64,
    /// File bytes removed.
    pub removed_bytes: u64,
    /// File bytes left.
    pub bytes_after: u64,
    /// Temp files and unpublished block files of dead writers removed.
    pub removed_temp_files: u64,
}

/// The stores under `root`, all namespaces or only `namespace`, sorted. A namespace directory
/// holding `r<N>` subdirectories yields one store per rank (plus an unranked one if it also
/// holds fan-out directories); an empty namespace directory yields its unranked store.
pub fn find_stores(root: &Path, namespace: Option<&str>) -> Result<Vec<StoreLocation>> {
    let meta =
        std::fs::metadata(root).map_err(|e| Error::io(format!("fs root {}", root.display()), e))?;
    if !meta.is_dir() {
        return Err(err!(
            InvalidArgument,
            "fs root {} is not a directory",
            root.display()
        ));
    }
    let namespaces: Vec<String> = match namespace {
        Some(ns) => {
            path::validate_namespace(ns)?;
            let d = root.join(ns);
            if !d.is_dir() {
                return Err(err!(
                    NotFound,
                    "namespace {ns:?} not found under {}",
                    root.display()
                ));
            }
            vec![ns.to_string()]
        }
        None => read_names(root)?
            .into_iter()
            .filter(|n| path::validate_namespace(n).is_ok() && root.join(n).is_dir())
            .collect(),
    };
    let mut out = Vec::new();
    for ns in namespaces {
        let nsdir = root.join(&ns);
        let names = read_names(&nsdir)?;
        let mut ranks: Vec<u32> = names.iter().filter_map(|n| parse_rank(n)).collect();
        ranks.sort_unstable();
        let has_fanout = names.iter().any(|n| path::is_fanout_dir(n));
        if has_fanout || ranks.is_empty() {
            out.push(StoreLocation {
                namespace: ns.clone(),
                rank: None,
                dir: nsdir.clone(),
            });
        }
        for r in ranks {
            out.push(StoreLocation {
                namespace: ns.clone(),
                rank: Some(r),
                dir: nsdir.join(format!("r{r}")),
            });
        }
    }
    out.sort();
    Ok(out)
}

/// `r<N>` (N a decimal u32 without leading zeros) → N.
fn parse_rank(name: &str) -> Option<u32> {
    let digits = name.strip_prefix('r')?;
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    if !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn read_names(dir: &Path) -> Result<Vec<String>> {
    let it = match std::fs::read_dir(dir) {
        Ok(it) => it,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    Ok(it
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

/// The block files, temp file paths and strays of one store directory (its `<hh>`
/// fan-out). Types come from the directory entries and `lstat`: nothing is opened.
pub fn scan_store(dir: &Path) -> Result<StoreScan> {
    let mut scan = StoreScan::default();
    for a in read_names(dir)? {
        if !path::is_fanout_dir(&a) {
            continue;
        }
        let adir = dir.join(&a);
        match std::fs::symlink_metadata(&adir) {
            Ok(m) if m.is_dir() => {}
            Ok(m) => {
                scan.strays.push(Stray {
                    what: format!("{} where a fan-out directory belongs", entry_type(&m)),
                    path: adir,
                });
                continue;
            }
            Err(_) => continue, // removed since the listing
        }
        for name in read_names(&adir)? {
            match path::classify(&name) {
                Entry::Block(key) => {
                    let p = adir.join(&name);
                    // A block removed since the listing is simply gone.
                    match std::fs::symlink_metadata(&p) {
                        // Still being written in place (or left so by a dead writer).
                        Ok(m) if is_unpublished(&m) => scan.temps.push(p),
                        Ok(m) if m.is_file() => scan.blocks.push(BlockFile {
                            path: p,
                            key,
                            size: m.len(),
                            last_used: m.atime().max(m.mtime()),
                        }),
                        Ok(m) => scan.strays.push(Stray {
                            what: format!("{}, not a block file", describe_type(&m)),
                            path: p,
                        }),
                        Err(_) => {}
                    }
                }
                Entry::Temp(_) | Entry::LegacyTemp => scan.temps.push(adir.join(&name)),
                Entry::Other => {}
            }
        }
    }
    Ok(scan)
}

/// "a regular file", or what [`describe_type`] says.
fn entry_type(m: &std::fs::Metadata) -> String {
    if m.is_file() {
        "a regular file".into()
    } else {
        describe_type(m)
    }
}

/// Counts and sizes per store (namespace and rank) under `root`.
pub fn inspect(root: &Path, namespace: Option<&str>) -> Result<Vec<StoreSummary>> {
    find_stores(root, namespace)?
        .into_iter()
        .map(|location| {
            let StoreScan {
                blocks,
                temps,
                strays,
            } = scan_store(&location.dir)?;
            let last_used = blocks.iter().fold(None, |acc: Option<(i64, i64)>, b| {
                Some(match acc {
                    None => (b.last_used, b.last_used),
                    Some((lo, hi)) => (lo.min(b.last_used), hi.max(b.last_used)),
                })
            });
            Ok(StoreSummary {
                blocks: blocks.len() as u64,
                bytes: blocks.iter().map(|b| b.size).sum(),
                temp_files: temps.len() as u64,
                strays: strays.len() as u64,
                last_used,
                location,
            })
        })
        .collect()
}

/// Validates a whole block file's bytes against its name in `namespace`: header, whole key
/// (its block name must be the file's), length and xxh3-64 checksum. Pure; `Corrupt` with
/// the reason on any mismatch.
pub fn check_block_bytes(bytes: &[u8], namespace: &str, name_key: &Key) -> Result<Header> {
    let h = format::decode_header(bytes)?;
    check_header(&h, bytes.len() as u64, namespace, name_key)?;
    check_sum(&h, format::checksum(&bytes[h.data_offset..]))?;
    Ok(h)
}

/// The header's whole key against the file's name in `namespace`, its lengths against the
/// file's size.
fn check_header(h: &Header, size: u64, namespace: &str, name_key: &Key) -> Result<()> {
    if crate::key::block_name(namespace.as_bytes(), &h.key) != *name_key {
        return Err(err!(
            Corrupt,
            "header holds key {} but the file is named for {name_key}",
            Key::display_bytes(&h.key)
        ));
    }
    let expect = h.data_offset as u64 + h.payload_len;
    if size != expect {
        return Err(err!(
            Corrupt,
            "file is {size} bytes, header says {expect} ({} + {} payload)",
            h.data_offset,
            h.payload_len
        ));
    }
    Ok(())
}

fn check_sum(h: &Header, sum: u64) -> Result<()> {
    if sum != h.checksum {
        return Err(err!(
            Corrupt,
            "checksum mismatch: xxh3-64 of the payload is {sum:016x}, header says {:016x}",
            h.checksum
        ));
    }
    Ok(())
}

/// Bytes [`verify`] reads at a time: its memory per thread, whatever a file's size.
const VERIFY_CHUNK: usize = 1 << 20;

/// Checks an open block file of `size` bytes, streaming it through `buf`: the header first
/// (at most [`format::MAX_HEADER`] bytes), then, only if the header's lengths match the
/// file's size, the payload through the checksum.
fn check_block_file(
    file: &File,
    size: u64,
    namespace: &str,
    key: &Key,
    buf: &mut Vec<u8>,
) -> Result<()> {
    let io_err = |e| Error::io("reading", e);
    let mut prefix = [0u8; 8];
    let got = read_full_at(file, &mut prefix, 0).map_err(io_err)?;
    if got < 8 {
        return Err(err!(
            Corrupt,
            "file is {size} bytes, shorter than the 8-byte header length"
        ));
    }
    let header_len = format::header_len(&prefix)?;
    buf.resize(header_len.max(VERIFY_CHUNK), 0);
    let got = read_full_at(file, &mut buf[..header_len], 0).map_err(io_err)?;
    let h = format::decode_header(&buf[..got])?;
    check_header(&h, size, namespace, key)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut at = h.data_offset as u64;
    while at < size {
        let n = (size - at).min(VERIFY_CHUNK as u64) as usize;
        let got = read_full_at(file, &mut buf[..n], at).map_err(io_err)?;
        if got < n {
            return Err(err!(
                Corrupt,
                "file ended at {} of {size} bytes",
                at + got as u64
            ));
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    check_sum(&h, hasher.digest())
}

/// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Checks one block file; `Ok(None)` if it is good or vanished meanwhile, `Ok(Some(bad))`
/// if it is bad (removed when `repair`, keeping a file renamed over it since).
fn verify_one(
    b: &BlockFile,
    namespace: &str,
    buf: &mut Vec<u8>,
    repair: bool,
) -> Result<Option<BadBlock>> {
    let file = match OpenNoFollow::read_only().open(&b.path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // Replaced by a FIFO, a symlink... since the scan.
        Err(e) if is_not_regular(&e) => {
            return Ok(Some(BadBlock {
                path: b.path.clone(),
                reason: e.to_string(),
                removed: repair && remove_non_regular(&b.path),
            }))
        }
        Err(e) => return Err(Error::io(format!("opening {}", b.path.display()), e)),
    };
    let size = file
        .metadata()
        .map_err(|e| Error::io(format!("stat of {}", b.path.display()), e))?
        .len();
    let e = match check_block_file(&file, size, namespace, &b.key, buf) {
        Ok(()) => return Ok(None),
        Err(e) if e.kind() == crate::ErrorKind::Corrupt => e,
        Err(e) => return Err(e.context(format!("checking {}", b.path.display()))),
    };
    let removed = repair && same_inode(&file, &b.path) && std::fs::remove_file(&b.path).is_ok();
    Ok(Some(BadBlock {
        path: b.path.clone(),
        reason: e.to_string(),
        removed,
    }))
}

/// A stray as a bad entry; with `repair`, removed unless it is a directory.
fn stray_report(s: Stray, repair: bool) -> BadBlock {
    let removed = repair
        && match std::fs::symlink_metadata(&s.path) {
            Ok(m) if !m.is_dir() => std::fs::remove_file(&s.path).is_ok(),
            _ => false,
        };
    BadBlock {
        path: s.path,
        reason: s.what,
        removed,
    }
}

/// Checks every block file of the selected stores with `threads` threads (at least 1);
/// with `repair`, removes the bad ones. I/O errors other than a vanished file abort.
pub fn verify(
    root: &Path,
    namespace: Option<&str>,
    threads: usize,
    repair: bool,
) -> Result<VerifyReport> {
    let (mut files, mut strays): (Vec<(BlockFile, Arc<String>)>, _) = (Vec::new(), Vec::new());
    for s in find_stores(root, namespace)? {
        let ns = Arc::new(s.namespace.clone());
        let scan = scan_store(&s.dir)?;
        files.extend(scan.blocks.into_iter().map(|b| (b, ns.clone())));
        strays.extend(scan.strays);
    }
    let next = AtomicUsize::new(0);
    let bad = Mutex::new(Vec::new());
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|sc| {
        for _ in 0..threads.clamp(1, files.len().max(1)) {
            sc.spawn(|| {
                let mut buf = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((b, ns)) = files.get(i) else { break };
                    match verify_one(b, ns, &mut buf, repair) {
                        Ok(Some(bb)) => bad.lock().unwrap_or_else(|p| p.into_inner()).push(bb),
                        Ok(None) => {}
                        Err(e) => {
                            first_err
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            next.store(files.len(), Ordering::Relaxed);
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut bad = bad.into_inner().unwrap_or_else(|p| p.into_inner());
    bad.extend(strays.into_iter().map(|s| stray_report(s, repair)));
    bad.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(VerifyReport {
        checked: files.len() as u64,
        bytes: files.iter().map(|(b, _)| b.size).sum(),
        bad,
    })
}

/// The blocks to remove so that the rest fit in `max_bytes`: least recently used first
/// (ties broken by path, for determinism). Pure.
pub fn gc_plan(mut blocks: Vec<BlockFile>, max_bytes: u64) -> Vec<BlockFile> {
    let mut total: u64 = blocks.iter().map(|b| b.size).sum();
    blocks.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.path.cmp(&b.path)));
    let mut out = Vec::new();
    for b in blocks {
        if total <= max_bytes {
            break;
        }
        total -= b.size;
        out.push(b);
    }
    out
}

/// Trims the selected stores, together, to at most `max_bytes` of block files, removing the
/// least recently used blocks first; also removes temp files left by dead writers.
pub fn gc(root: &Path, namespace: Option<&str>, max_bytes: u64) -> Result<GcReport> {
    let mut blocks = Vec::new();
    let mut report = GcReport::default();
    for s in find_stores(root, namespace)? {
        let scan = scan_store(&s.dir)?;
        blocks.extend(scan.blocks);
        let mut live = Liveness::new(&s.dir);
        for t in scan.temps {
            let name = t.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            clean_temp(&t, &path::classify(name), &mut live);
            if std::fs::symlink_metadata(&t).is_err() {
                report.removed_temp_files += 1;
            }
        }
        remove_dead_writers(&s.dir);
    }
    report.blocks_before = blocks.len() as u64;
    report.bytes_before = blocks.iter().map(|b| b.size).sum();
    for b in gc_plan(blocks, max_bytes) {
        match std::fs::remove_file(&b.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {} // removed meanwhile
            Err(e) => return Err(Error::io(format!("removing {}", b.path.display()), e)),
        }
        report.removed_blocks += 1;
        report.removed_bytes += b.size;
    }
    report.bytes_after = report.bytes_before - report.removed_bytes;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FsConfig, FsStore, TensorSpec};

    fn bf(name: &str, size: u64, last_used: i64) -> BlockFile {
        BlockFile {
            path: PathBuf::from(name),
            key: Key([0; 16]),
            size,
            last_used,
        }
    }

    #[test]
    fn ranks_parse() {
        assert_eq!(parse_rank("r0"), Some(0));
        assert_eq!(parse_rank("r17"), Some(17));
        for bad in ["r", "r01", "rx", "0", "ra", "r-1", "r99999999999"] {
            assert_eq!(parse_rank(bad), None, "{bad}");
        }
    }

    #[test]
    fn gc_plan_is_lru_and_exact() {
        let v = vec![
            bf("c", 10, 3),
            bf("a", 10, 1),
            bf("b", 10, 2),
            bf("d", 10, 1),
        ];
        let names = |p: Vec<BlockFile>| -> Vec<String> {
            p.iter().map(|b| b.path.display().to_string()).collect()
        };
        assert_eq!(names(gc_plan(v.clone(), 40)), Vec::<String>::new());
        assert_eq!(names(gc_plan(v.clone(), 39)), ["a"]);
        assert_eq!(names(gc_plan(v.clone(), 20)), ["a", "d"]);
        assert_eq!(names(gc_plan(v.clone(), 0)), ["a", "d", "b", "c"]);
    }

    #[test]
    fn check_block_bytes_catches_every_mismatch() {
        let k = Key([5; 16]);
        let data = b"payload bytes";
        let h = format::encode_header(
            &k.0,
            data.len() as u64,
            format::checksum(data),
            &TensorSpec::bytes(data.len() as u64),
        );
        let mut good = h.clone();
        good.extend_from_slice(data);
        assert_eq!(check_block_bytes(&good, "ns", &k).unwrap().payload_len, 13);
        assert!(check_block_bytes(&good, "ns", &Key([6; 16])).is_err());
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(check_block_bytes(&flipped, "ns", &k).is_err());
        assert!(check_block_bytes(&good[..good.len() - 1], "ns", &k).is_err());
        assert!(check_block_bytes(&good[..100], "ns", &k).is_err());
        assert!(check_block_bytes(b"", "ns", &k).is_err());
    }

    #[test]
    fn inspect_verify_gc_on_real_stores() {
        let d = tempfile::tempdir().unwrap();
        let open = |ns: &str, rank| {
            let mut c = FsConfig::new(d.path(), ns);
            c.rank = rank;
            c.read_threads = 1;
            c.write_threads = 1;
            FsStore::open(&c).unwrap()
        };
        let (a, b) = (open("a", None), open("b", Some(1)));
        for i in 0..4u8 {
            a.store(&Key([i; 16]), &[i; 100]).unwrap();
        }
        b.store(&Key([9; 16]), &[9; 100]).unwrap();
        let s = inspect(d.path(), None).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].location.namespace.as_str(), s[0].blocks), ("a", 4));
        assert_eq!((s[1].location.rank, s[1].blocks), (Some(1), 1));
        assert_eq!(s[0].bytes, 4 * (4096 + 100));
        assert_eq!(inspect(d.path(), Some("b")).unwrap().len(), 1);
        assert!(inspect(d.path(), Some("zz")).is_err());

        let p = a.block_path(&Key([2; 16]));
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[4096] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        let r = verify(d.path(), None, 3, false).unwrap();
        assert_eq!((r.checked, r.bad.len()), (5, 1));
        assert_eq!(r.bad[0].path, p);
        assert!(!r.bad[0].removed && p.exists());
        let r = verify(d.path(), Some("a"), 2, true).unwrap();
        assert!(r.bad[0].removed && !p.exists());
        assert!(verify(d.path(), None, 2, false).unwrap().bad.is_empty());

        let g = gc(d.path(), Some("a"), 2 * (4096 + 100)).unwrap();
        assert_eq!((g.blocks_before, g.removed_blocks), (3, 1));
        assert_eq!(g.bytes_after, 2 * (4096 + 100));
        let g = gc(d.path(), None, 0).unwrap();
        assert_eq!((g.removed_blocks, g.bytes_after), (3, 0));
    }
}
