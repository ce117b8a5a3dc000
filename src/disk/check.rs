//! Read-only inspection and verification of a slot file, for tools (`kvr disk inspect|verify`):
//! no owner lock is taken and nothing is written.
//!
//! - [`inspect`] reads the file header and the header table and classifies every slot: a live
//!   entry (the highest sequence number for its key), a superseded older copy of a key (the
//!   owner invalidates it at its next open), free (zeroed table entry), or damaged (a non-zero
//!   table entry that does not decode: torn or bit-flipped). It works while a live process
//!   owns the file (the figures are then a snapshot that may be changing) and says so.
//! - [`verify`] additionally reads every live entry's slot (header page and payload) in
//!   parallel and checks that the slot's own header decodes and matches the table, and that
//!   the payload and metadata checksum matches. It refuses (`Busy`) while a live process owns
//!   the file, since the owner rewrites slots under it, and holds a shared lock meanwhile (an
//!   owner opening during a verify gets `Busy`).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::file::check_file_len;
use super::format::{self, Geometry, Key, SlotHeader, PAGE, SLOT_HEADER_LEN};
use crate::io::file::OpenNoFollow;
use crate::io::lock::{try_lock, LockMode};
use crate::io::vectored::read_exact_at;
use crate::io::AlignedBuf;
use crate::{err, Error, Result};

/// What [`inspect`] found in a slot file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotFileReport {
    /// Path of the file.
    pub path: PathBuf,
    /// Geometry recorded in the file header.
    pub geometry: Geometry,
    /// Size of the file in bytes.
    pub file_len: u64,
    /// Whether a live process holds the owner lock (the figures may be changing).
    pub owned: bool,
    /// Live entries (one per key).
    pub entries: u64,
    /// Payload bytes of the live entries.
    pub payload_bytes: u64,
    /// Metadata bytes of the live entries.
    pub meta_bytes: u64,
    /// Free slots (zeroed table entry).
    pub free_slots: u64,
    /// Slots holding an older copy of a live key (left by a crash; invalidated at next open).
    pub superseded: u64,
    /// Slots whose table entry is non-zero but damaged (torn or bit-flipped): never served.
    pub damaged: Vec<u32>,
    /// Live entries as (slot, header), in slot order.
    pub live: Vec<(u32, SlotHeader)>,
}

/// One entry that failed [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadEntry {
    /// Slot index.
    pub slot: u32,
    /// The entry's block name (the 16-byte key for a 16-byte engine key, else the
    /// 128-bit hash of the whole key), when its table entry decodes.
    pub name: Option<Key>,
    /// The whole engine key kept in the slot's header page, when that page decodes (it
    /// does not for a damaged header or table entry).
    pub key: Option<Vec<u8>>,
    /// What is wrong.
    pub reason: String,
}

/// What [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// The table-level findings.
    pub inspect: SlotFileReport,
    /// Live entries whose slot was read and checked.
    pub checked: u64,
    /// Payload and metadata bytes read and checksummed.
    pub bytes_checked: u64,
    /// Bad entries (damaged table entries, then slots failing their checks), by slot.
    pub bad: Vec<BadEntry>,
}

/// How a live owner was detected: a shared `flock` fails while the owner's exclusive one is
/// held. On success the shared lock is held until `file` is closed.
fn try_shared_lock(file: &File, path: &Path) -> Result<bool> {
    try_lock(file, LockMode::Shared)
        .map_err(|e| Error::io(format!("locking slot file {}", path.display()), e))
}

fn open_ro(path: &Path, direct: bool) -> io::Result<File> {
    OpenNoFollow::read_only().direct(direct).open(path)
}

fn read_geometry(file: &File, path: &Path) -> Result<(Geometry, u64)> {
    let mut page = vec![0u8; PAGE as usize];
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("stat of {}", path.display()), e))?
        .len();
    if len < PAGE {
        return Err(err!(
            LayoutMismatch,
            "{} is not a kvr slot file ({len} bytes, shorter than its header)",
            path.display()
        ));
    }
    read_exact_at(file, &mut page, 0)
        .map_err(|e| Error::io(format!("reading the header of {}", path.display()), e))?;
    let g = format::decode_file_header(&page).map_err(|e| match e {
        format::FileHeaderError::NotSlotFile => err!(
            LayoutMismatch,
            "{} is not a kvr slot file (bad magic)",
            path.display()
        ),
        format::FileHeaderError::Version(v) => err!(
            LayoutMismatch,
            "{} has slot file format version {v}, this kvr reads version {}",
            path.display(),
            format::FORMAT_VERSION
        ),
        format::FileHeaderError::Checksum => err!(
            Corrupt,
            "{} has a damaged file header (checksum mismatch)",
            path.display()
        ),
    })?;
    check_file_len(path, len, &g)?;
    Ok((g, len))
}

/// Classification of one table entry (pure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableEntry {
    /// Zeroed: the slot is free.
    Free,
    /// A valid entry.
    Valid(SlotHeader),
    /// Non-zero but does not decode.
    Damaged,
}

/// Classifies the 128-byte table entry of slot `slot`.
pub fn classify(entry: &[u8], slot: u32, slot_size: u64) -> TableEntry {
    match format::decode_slot_header(entry, slot, slot_size) {
        Some(h) => TableEntry::Valid(h),
        None if entry.iter().all(|&b| b == 0) => TableEntry::Free,
        None => TableEntry::Damaged,
    }
}

/// Builds the report from classified table entries (pure): the highest sequence number wins
/// for a key, as in recovery.
pub fn summarize(
    path: &Path,
    geometry: Geometry,
    file_len: u64,
    owned: bool,
    table: &[TableEntry],
) -> SlotFileReport {
    let mut winners: std::collections::HashMap<Key, u32> = std::collections::HashMap::new();
    let (mut free, mut superseded, mut damaged) = (0u64, 0u64, Vec::new());
    for (i, t) in table.iter().enumerate() {
        match t {
            TableEntry::Free => free += 1,
            TableEntry::Damaged => damaged.push(i as u32),
            TableEntry::Valid(h) => {
                let w = winners.entry(h.key).or_insert(i as u32);
                if *w != i as u32 {
                    superseded += 1;
                    if let TableEntry::Valid(prev) = table[*w as usize] {
                        if h.seq > prev.seq {
                            *w = i as u32;
                        }
                    }
                }
            }
        }
    }
    let mut live: Vec<(u32, SlotHeader)> = winners
        .into_values()
        .filter_map(|s| match table[s as usize] {
            TableEntry::Valid(h) => Some((s, h)),
            _ => None,
        })
        .collect();
    live.sort_unstable_by_key(|(s, _)| *s);
    SlotFileReport {
        path: path.to_owned(),
        geometry,
        file_len,
        owned,
        entries: live.len() as u64,
        payload_bytes: live.iter().map(|(_, h)| h.len).sum(),
        meta_bytes: live.iter().map(|(_, h)| h.meta_len as u64).sum(),
        free_slots: free,
        superseded,
        damaged,
        live,
    }
}

fn inspect_file(file: &File, path: &Path, owned: bool) -> Result<SlotFileReport> {
    let (g, len) = read_geometry(file, path)?;
    let mut table = vec![0u8; g.table_len() as usize];
    read_exact_at(file, &mut table, g.table_offset())
        .map_err(|e| Error::io(format!("reading the header table of {}", path.display()), e))?;
    let entries: Vec<TableEntry> = table
        .chunks_exact(SLOT_HEADER_LEN)
        .take(g.num_slots as usize)
        .enumerate()
        .map(|(i, e)| classify(e, i as u32, g.slot_size))
        .collect();
    Ok(summarize(path, g, len, owned, &entries))
}

/// Reads a slot file's header and header table without taking the owner lock or writing
/// anything. Errors: `NotFound`, `Permission`, `LayoutMismatch` (not a slot file, or another
/// format version), `Corrupt` (damaged file header, truncated file), `Io`.
pub fn inspect(path: &Path) -> Result<SlotFileReport> {
    let file = open_ro(path, false)
        .map_err(|e| Error::io(format!("opening slot file {}", path.display()), e))?;
    let owned = !try_shared_lock(&file, path)?;
    inspect_file(&file, path, owned)
}

/// A live entry with the whole engine key its slot's header page holds (see [`entry_keys`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryKey {
    /// Slot index.
    pub slot: u32,
    /// The table entry (its `key` is the block name).
    pub header: SlotHeader,
    /// The whole engine key; `None` when the slot's header page does not decode as the
    /// table entry's (then [`verify`] reports the slot).
    pub key: Option<Vec<u8>>,
}

impl EntryKey {
    /// The entry version: 1 for 16-byte keys (their own name), 2 for every other length.
    pub fn version(&self) -> Option<u32> {
        self.key.as_ref().map(|k| if k.len() == 16 { 1 } else { 2 })
    }
}

/// The whole engine keys of `report`'s live entries: one read of each live slot's header
/// page (the table holds only block names; a version-2 entry keeps its whole key in the
/// page). Read-only, no lock, like [`inspect`]. Errors: `NotFound`, `Permission`, `Io`.
pub fn entry_keys(path: &Path, report: &SlotFileReport) -> Result<Vec<EntryKey>> {
    let file = open_ro(path, false)
        .map_err(|e| Error::io(format!("opening slot file {}", path.display()), e))?;
    let g = report.geometry;
    let mut page = vec![0u8; PAGE as usize];
    report
        .live
        .iter()
        .map(|&(slot, header)| {
            read_exact_at(&file, &mut page, g.slot_offset(slot))
                .map_err(|e| Error::io(format!("reading slot {slot} of {}", path.display()), e))?;
            let key = format::decode_slot_header(&page, slot, g.slot_size)
                .filter(|h| *h == header)
                .map(|h| format::slot_key_and_meta(&page, &h).0.to_vec());
            Ok(EntryKey { slot, header, key })
        })
        .collect()
}

/// Checks one live entry's slot against its table entry (pure): `page` is the slot's header
/// page, `payload` its payload bytes.
pub fn check_slot(
    slot: u32,
    t: &SlotHeader,
    page: &[u8],
    payload: &[u8],
    slot_size: u64,
) -> Option<String> {
    let Some(h) = format::decode_slot_header(page, slot, slot_size) else {
        return Some("slot header is damaged (checksum or fields)".into());
    };
    if h != *t {
        return Some(format!(
            "slot header (seq {}, len {}, meta {}) does not match the table entry (seq {}, len {}, meta {})",
            h.seq, h.len, h.meta_len, t.seq, t.len, t.meta_len
        ));
    }
    let (key, meta) = format::slot_key_and_meta(page, &h);
    if crate::key::block_name(b"", key) != h.key {
        return Some(format!(
            "slot holds key {} whose name is not the entry's {}",
            Key::display_bytes(key),
            h.key
        ));
    }
    let sum = format::data_checksum(payload, meta);
    (sum != h.data_sum).then(|| {
        format!(
            "payload checksum mismatch (stored {:016x}, computed {sum:016x})",
            h.data_sum
        )
    })
}

/// [`inspect`], then reads every live entry's slot on `threads` threads (O_DIRECT when the
/// file system takes it, so the device's bytes are checked) and checks it: the slot's header
/// must decode and equal the table entry, and the payload and metadata checksum must match.
/// Damaged table entries are reported as bad too. Errors: those of [`inspect`], and `Busy`
/// while a live process owns the file.
pub fn verify(path: &Path, threads: usize) -> Result<VerifyReport> {
    let file = open_ro(path, false)
        .map_err(|e| Error::io(format!("opening slot file {}", path.display()), e))?;
    if !try_shared_lock(&file, path)? {
        return Err(err!(
            Busy,
            "slot file {} is owned by a live process that rewrites it; stop it before verifying (inspect works meanwhile)",
            path.display()
        ));
    }
    let report = inspect_file(&file, path, false)?;
    let g = report.geometry;
    // O_DIRECT reads check the device's bytes (the kernel writes back dirty cached pages
    // first); buffered reads where the file system refuses O_DIRECT.
    let data = open_ro(path, true)
        .or_else(|_| file.try_clone())
        .map_err(|e| Error::io(format!("opening slot file {}", path.display()), e))?;
    let next = AtomicUsize::new(0);
    let bad: Mutex<Vec<BadEntry>> = Mutex::new(Vec::new());
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let live = &report.live;
    let threads = threads.clamp(1, 256).min(live.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = match AlignedBuf::new(g.stride() as usize) {
                    Ok(b) => b,
                    Err(e) => {
                        *failed.lock().unwrap() = Some(e);
                        return;
                    }
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= live.len() || failed.lock().unwrap().is_some() {
                        break;
                    }
                    let (slot, h) = live[i];
                    let n = (PAGE + h.len).next_multiple_of(PAGE) as usize;
                    let off = g.slot_offset(slot);
                    if let Err(e) = read_exact_at(&data, &mut buf.as_mut_slice()[..n], off) {
                        *failed.lock().unwrap() = Some(Error::io(
                            format!("reading slot {slot} of {}", path.display()),
                            e,
                        ));
                        break;
                    }
                    let b = buf.as_slice();
                    let page = &b[..PAGE as usize];
                    let payload = &b[PAGE as usize..PAGE as usize + h.len as usize];
                    if let Some(reason) = check_slot(slot, &h, page, payload, g.slot_size) {
                        // The whole key names the bad entry the way the engine knows it.
                        let key = format::decode_slot_header(page, slot, g.slot_size)
                            .map(|sh| format::slot_key_and_meta(page, &sh).0.to_vec());
                        bad.lock().unwrap().push(BadEntry {
                            slot,
                            name: Some(h.key),
                            key,
                            reason,
                        });
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e);
    }
    let mut bad: Vec<BadEntry> = report
        .damaged
        .iter()
        .map(|&slot| BadEntry {
            slot,
            name: None,
            key: None,
            reason: "header table entry is damaged (checksum or fields)".into(),
        })
        .chain(bad.into_inner().unwrap())
        .collect();
    bad.sort_by_key(|b| b.slot);
    Ok(VerifyReport {
        checked: live.len() as u64,
        bytes_checked: live.iter().map(|(_, h)| h.len + h.meta_len as u64).sum(),
        inspect: report,
        bad,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(key: u8, seq: u64, slot: u32) -> SlotHeader {
        SlotHeader {
            key: Key([key; 16]),
            len: 100,
            meta_len: 3,
            seq,
            data_sum: 1,
            slot,
        }
    }

    fn entry(h: &SlotHeader) -> Vec<u8> {
        let mut page = vec![0u8; PAGE as usize];
        format::encode_slot_header(h, b"abc", &mut page);
        page.truncate(SLOT_HEADER_LEN);
        page
    }

    #[test]
    fn classifies_free_valid_damaged() {
        assert_eq!(classify(&[0; 128], 0, 4096), TableEntry::Free);
        let h = hdr(1, 5, 2);
        let e = entry(&h);
        assert_eq!(classify(&e, 2, 4096), TableEntry::Valid(h));
        assert_eq!(classify(&e, 3, 4096), TableEntry::Damaged); // misplaced
        let mut d = e.clone();
        d[40] ^= 4;
        assert_eq!(classify(&d, 2, 4096), TableEntry::Damaged);
    }

    #[test]
    fn summary_keeps_highest_seq_per_key() {
        let g = Geometry::new(4096, 6).unwrap();
        let t = [
            TableEntry::Valid(hdr(1, 5, 0)),
            TableEntry::Free,
            TableEntry::Valid(hdr(1, 9, 2)),
            TableEntry::Damaged,
            TableEntry::Valid(hdr(2, 1, 4)),
            TableEntry::Valid(hdr(1, 7, 5)),
        ];
        let r = summarize(Path::new("f"), g, 1, false, &t);
        assert_eq!(r.entries, 2);
        assert_eq!(r.free_slots, 1);
        assert_eq!(r.superseded, 2);
        assert_eq!(r.damaged, vec![3]);
        assert_eq!(r.live.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [2, 4]);
        assert_eq!((r.payload_bytes, r.meta_bytes), (200, 6));
    }

    #[test]
    fn check_slot_finds_each_fault() {
        let payload = vec![7u8; 100];
        let mut h = hdr(1, 5, 2);
        h.data_sum = format::data_checksum(&payload, b"abc");
        let mut page = vec![0u8; PAGE as usize];
        format::encode_slot_header(&h, b"abc", &mut page);
        assert_eq!(check_slot(2, &h, &page, &payload, 4096), None);
        let mut bad = payload.clone();
        bad[50] ^= 1;
        assert!(check_slot(2, &h, &page, &bad, 4096)
            .unwrap()
            .contains("checksum mismatch"));
        let mut m = page.clone();
        m[129] ^= 1; // metadata is covered by the data checksum
        assert!(check_slot(2, &h, &m, &payload, 4096).is_some());
        let mut t = h;
        t.seq = 6;
        assert!(check_slot(2, &t, &page, &payload, 4096)
            .unwrap()
            .contains("does not match"));
        assert!(check_slot(2, &h, &[0u8; 4096], &payload, 4096)
            .unwrap()
            .contains("damaged"));
    }
}
