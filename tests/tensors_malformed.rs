//! Malformed tensor files fail to open with clear `Corrupt` errors, never a crash; plus a
//! bounded-time randomized mutation test over the open path.

mod common;

use std::time::{Duration, Instant};

use kvr::tensors::{Dtype, TensorFile, TensorIn, WriteOptions};
use kvr::ErrorKind;

use common::Rng;

fn raw(header: &str, data_len: usize) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.resize(v.len() + data_len, 0);
    v
}

fn open_bytes(bytes: &[u8]) -> kvr::Result<TensorFile> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    std::fs::write(&p, bytes).unwrap();
    TensorFile::open(&p)
}

fn expect_corrupt(bytes: &[u8], needle: &str) {
    let e = open_bytes(bytes).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(
        e.to_string().contains(needle),
        "expected '{needle}' in: {e}"
    );
    assert!(e.to_string().contains("m.safetensors"), "{e}");
}

#[test]
fn malformed_files_are_rejected_with_reasons() {
    let good = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    assert!(open_bytes(&raw(good, 8)).is_ok());
    expect_corrupt(&[], "0 bytes, shorter than the 8-byte");
    expect_corrupt(&[1, 0, 0], "3 bytes");
    // Truncated data.
    let mut t = raw(good, 8);
    t.pop();
    expect_corrupt(&t, "truncated");
    // Trailing garbage.
    expect_corrupt(&raw(good, 9), "does not end exactly");
    // Header length past the end.
    let mut h = raw(good, 8);
    h[..8].copy_from_slice(&1000u64.to_le_bytes());
    expect_corrupt(&h, "header length 1000 runs past the end");
    h[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_corrupt(&h, "runs past the end");
    // Overlapping offsets.
    let ov = r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}}"#;
    expect_corrupt(&raw(ov, 12), "not contiguous");
    // A gap.
    let gap = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}}"#;
    expect_corrupt(&raw(gap, 12), "not contiguous");
    // Bad JSON.
    expect_corrupt(
        &raw(r#"{"a":{"dtype":"F32","shape":[2],"#, 8),
        "not valid safetensors JSON",
    );
    expect_corrupt(&raw("not json at all", 0), "not valid safetensors JSON");
    // Not UTF-8.
    let mut bad = raw("{\"\u{e9}\":1}", 0);
    bad[10] = 0xff;
    expect_corrupt(&bad, "UTF-8");
    // Wrong dtype size: F32 x 2 needs 8 bytes, offsets say 6.
    let ws = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,6]}}"#;
    expect_corrupt(&raw(ws, 6), "differs from its dtype size x shape");
    // Unknown dtype.
    let ud = r#"{"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,2]}}"#;
    expect_corrupt(&raw(ud, 2), "not valid safetensors JSON");
    // Shape overflow.
    let so = r#"{"a":{"dtype":"F64","shape":[4611686018427387904,8],"data_offsets":[0,8]}}"#;
    expect_corrupt(&raw(so, 8), "invalid safetensors header");
    // A directory and a missing file.
    let dir = tempfile::tempdir().unwrap();
    assert!(TensorFile::open(dir.path()).is_err());
    let e = TensorFile::open(&dir.path().join("nope")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

fn seeds() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    let d: Vec<u8> = (0..=255u8).collect();
    for (i, align) in [false, true].into_iter().enumerate() {
        let p = dir.path().join(format!("s{i}"));
        kvr::tensors::write(
            &p,
            &[
                TensorIn::contiguous("k.0", Dtype::F16, &[3, 5], &d[..30]),
                TensorIn::contiguous("v.0", Dtype::I64, &[2], &d[30..46]),
                TensorIn::contiguous("s", Dtype::U8, &[], &d[46..47]),
                TensorIn::contiguous("e", Dtype::F32, &[0, 4], &[]),
            ],
            &[("layout", "nhd"), ("kvr.note", "x")],
            WriteOptions {
                align_4k: align,
                sync: false,
            },
        )
        .unwrap();
        out.push(std::fs::read(&p).unwrap());
    }
    out
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    let hdr_end = 8 + u64::from_le_bytes(v[..8].try_into().unwrap()) as usize;
    for _ in 0..1 + rng.index(4) {
        // Bias mutations towards the header, where the parser lives.
        let at = if rng.index(4) > 0 {
            rng.index(hdr_end.min(v.len()))
        } else {
            rng.index(v.len())
        };
        match rng.index(9) {
            0 => v[at] ^= 1 << rng.index(8),
            1 => v[at] = b"{}[]\",:0123456789-eE. "[rng.index(22)],
            2 => v.truncate(rng.index(v.len() + 1)),
            3 => v.insert(at.min(v.len()), rng.next() as u8),
            4 => {
                if at < v.len() {
                    v.remove(at);
                }
            }
            5 => {
                // Rewrite the header length.
                let n = match rng.index(4) {
                    0 => rng.next(),
                    1 => (hdr_end as u64)
                        .wrapping_add(rng.index(16) as u64)
                        .wrapping_sub(8),
                    2 => v.len() as u64,
                    _ => 0,
                };
                if v.len() >= 8 {
                    v[..8].copy_from_slice(&n.to_le_bytes());
                }
            }
            6 => {
                // Change a digit inside the JSON (offsets, shapes).
                let digits: Vec<usize> = (8..hdr_end.min(v.len()))
                    .filter(|&i| v[i].is_ascii_digit())
                    .collect();
                if !digits.is_empty() {
                    let i = digits[rng.index(digits.len())];
                    v[i] = b'0' + rng.index(10) as u8;
                }
            }
            7 => v.extend((0..rng.index(64)).map(|_| rng.next() as u8)),
            _ => {
                // Swap two header bytes.
                let j = rng.index(hdr_end.min(v.len()));
                if at < v.len() && j < v.len() {
                    v.swap(at, j);
                }
            }
        }
        if v.is_empty() {
            break;
        }
    }
    v
}

/// Randomized mutations of valid files, for a fixed time budget (KVR_FUZZ_SECS, default 2):
/// every open either fails with an error or yields a file whose tensors all read within
/// bounds; nothing panics or crashes.
#[test]
fn mutated_files_never_crash_the_open_path() {
    let budget = std::env::var("KVR_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let seeds = seeds();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.safetensors");
    let mut rng = Rng(0x2545f4914f6cdd1d ^ std::process::id() as u64);
    let start = Instant::now();
    let (mut runs, mut opened) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs_f64(budget) {
        let seed = &seeds[rng.index(seeds.len())];
        let bytes = mutate(&mut rng, seed);
        std::fs::write(&path, &bytes).unwrap();
        runs += 1;
        match TensorFile::open(&path) {
            Ok(f) => {
                opened += 1;
                for t in f.tensors() {
                    let r = f.get(Some(&t.name)).unwrap();
                    assert_eq!(r.data.len() as u64, t.len);
                    assert!(t.offset + t.len <= bytes.len() as u64);
                    let mut buf = vec![0u8; t.len as usize];
                    if t.len > 0 {
                        f.read_into(Some(&t.name), &mut buf).unwrap();
                        assert_eq!(buf, r.data);
                    }
                }
            }
            Err(e) => {
                assert!(
                    matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Unsupported),
                    "unexpected error kind for a mutated file: {e}"
                );
                assert!(!e.to_string().is_empty());
            }
        }
    }
    eprintln!("fuzz: {runs} mutated files in {budget}s, {opened} still valid");
    assert!(runs > 100, "only {runs} iterations ran");
}
