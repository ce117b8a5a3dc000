//! What `kvr fs` and `kvr obj` print alike for `verify` and `gc` (as text or JSON): the two
//! block tiers report the same counts, each with its own way of naming a bad block.

use serde_json::json;

use crate::report::human_bytes;
use crate::stdout::out;
use crate::EXIT_VERIFY_FOUND_BAD;

/// How a tier shows one bad block of a `verify`.
pub trait BadBlock {
    /// Whether `--repair` removed it.
    fn removed(&self) -> bool;
    /// Its JSON object.
    fn json(&self) -> serde_json::Value;
    /// Its text line, after "BAD " or "REMOVED ".
    fn line(&self) -> String;
}

/// Prints a `verify` of `checked` blocks (`bytes` in all) that found `bad` (each bad block,
/// then the totals) and returns the exit code: bad blocks left (not removed) are
/// `EXIT_VERIFY_FOUND_BAD`.
pub fn print_verify<B: BadBlock>(
    checked: u64,
    bytes: u64,
    bad: &[B],
    as_json: bool,
) -> kvr::Result<u8> {
    let remaining = bad.iter().filter(|b| !b.removed()).count();
    if as_json {
        let list: Vec<_> = bad.iter().map(B::json).collect();
        let j = json!({"checked": checked, "bytes": bytes, "bad": list});
        out!("{}", serde_json::to_string_pretty(&j).unwrap())?;
    } else {
        for b in bad {
            let what = if b.removed() { "REMOVED" } else { "BAD" };
            out!("{what} {}", b.line())?;
        }
        out!(
            "checked {} blocks ({}): {} bad, {} removed",
            checked,
            human_bytes(bytes),
            bad.len(),
            bad.len() - remaining
        )?;
    }
    Ok(if remaining > 0 {
        EXIT_VERIFY_FOUND_BAD
    } else {
        0
    })
}

/// What a `gc` of a block tier removed.
pub struct Collected {
    pub blocks_before: u64,
    pub bytes_before: u64,
    pub removed_blocks: u64,
    pub removed_bytes: u64,
    pub bytes_after: u64,
    /// Stale temp files removed, for a tier that has them (the fs store).
    pub removed_temp_files: Option<u64>,
}

/// Prints `c` as text or JSON.
pub fn print_gc(c: &Collected, as_json: bool) -> kvr::Result<()> {
    if as_json {
        let mut v = json!({
            "blocks_before": c.blocks_before,
            "bytes_before": c.bytes_before,
            "removed_blocks": c.removed_blocks,
            "removed_bytes": c.removed_bytes,
            "bytes_after": c.bytes_after,
        });
        if let Some(n) = c.removed_temp_files {
            v["removed_temp_files"] = n.into();
        }
        return out!("{}", serde_json::to_string_pretty(&v).unwrap());
    }
    let temp = c
        .removed_temp_files
        .map_or_else(String::new, |n| format!("; {n} stale temp files removed"));
    out!(
        "removed {} of {} blocks ({} of {}), {} left{temp}",
        c.removed_blocks,
        c.blocks_before,
        human_bytes(c.removed_bytes),
        human_bytes(c.bytes_before),
        human_bytes(c.bytes_after)
    )
}
