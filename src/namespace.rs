//! Namespaces that cannot mix incompatible blocks: everything that makes two engines' KV
//! blocks byte-compatible (model and revision, KV dtype, block geometry, parallel position,
//! an engine fingerprint) and the tenant they belong to, folded into one canonical name.
//!
//! The name is a readable prefix plus a digest, e.g.
//! `meta-llama_Llama-3.1-8B.bf16.tp0of4.pp0.cp0.3c5e...` (32 hex digits): the prefix is for
//! people, the digest (SHA-256 over a versioned, length-prefixed, little-endian encoding of
//! every field, truncated to 128 bits) for identity. Nothing host-specific goes in, so the
//! same inputs give the same name on every host and every kvr version (a golden test pins
//! one); any field changed gives another name (a property test). The name is a valid fs
//! store namespace (no `/`, `..`, NUL, leading `.`; at most [`MAX_NAME_LEN`] bytes) and a
//! slot file's identity.
//!
//! The fs store records the fields in `<root>/<namespace>/NAMESPACE.json` ([`Namespace::
//! write_manifest`]), the tenant salt only as its SHA-256, so an operator can tell what a
//! directory holds without learning the salt.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::io::file::OpenNoFollow;
use crate::io::publish::{sibling_path, TempFile};
use crate::{err, Error, Result};

/// File name of the manifest in a namespace's directory.
pub const MANIFEST_FILE: &str = "NAMESPACE.json";
/// Longest string field (model id, revision, dtype), in bytes.
pub const MAX_FIELD_LEN: usize = 256;
/// Longest engine fingerprint and tenant salt, in bytes.
pub const MAX_BLOB_LEN: usize = 4096;
/// Longest name [`Namespace::name`] returns, in bytes.
pub const MAX_NAME_LEN: usize = 48 + 1 + 16 + 1 + 24 + 1 + 12 + 1 + 12 + 1 + 32;

/// Bytes of the model id kept in the readable prefix.
const PREFIX_MODEL_LEN: usize = 48;
/// Bytes of the dtype kept in the readable prefix.
const PREFIX_DTYPE_LEN: usize = 16;
/// Domain separation of the name digest; bumping it changes every name (never do).
const NAME_DOMAIN: &[u8] = b"kvr-namespace-v1\0";
/// Domain separation of the tenant salt digest.
const SALT_DOMAIN: &[u8] = b"kvr-tenant-salt-v1\0";

/// The inputs of a namespace name. [`Namespace::new`] fills the defaults (1 TP rank of 1,
/// everything else empty or 0: unknown, which is itself part of the identity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Model id, e.g. `meta-llama/Llama-3.1-8B` (required, 1..=256 bytes).
    pub model_id: String,
    /// Model revision (commit, tag), 0..=256 bytes.
    pub model_revision: String,
    /// KV cache dtype, e.g. `bf16`, `fp8_e4m3`, 0..=256 bytes.
    pub kv_dtype: String,
    /// Tokens per block (page).
    pub tokens_per_block: u32,
    /// Layers in a block.
    pub num_layers: u32,
    /// KV heads in a block (this rank's).
    pub num_kv_heads: u32,
    /// Head dimension.
    pub head_dim: u32,
    /// Bytes of one block.
    pub bytes_per_block: u64,
    /// Tensor-parallel size (>= 1).
    pub tp_size: u32,
    /// Tensor-parallel rank (< `tp_size`).
    pub tp_rank: u32,
    /// Pipeline-parallel rank.
    pub pp_rank: u32,
    /// Context-parallel rank.
    pub cp_rank: u32,
    /// Anything else the engine knows makes blocks incompatible (its version, layout
    /// flags, a quantization recipe), 0..=4096 bytes.
    pub engine_fingerprint: String,
    /// Tenant salt, 0..=4096 bytes: tenants with different salts never share blocks. Only
    /// its digest is recorded anywhere.
    pub tenant_salt: Vec<u8>,
}

impl Namespace {
    /// A namespace of `model_id` with the defaults (TP 1, rank 0, other fields empty or 0).
    pub fn new(model_id: impl Into<String>) -> Self {
        Namespace {
            model_id: model_id.into(),
            model_revision: String::new(),
            kv_dtype: String::new(),
            tokens_per_block: 0,
            num_layers: 0,
            num_kv_heads: 0,
            head_dim: 0,
            bytes_per_block: 0,
            tp_size: 1,
            tp_rank: 0,
            pp_rank: 0,
            cp_rank: 0,
            engine_fingerprint: String::new(),
            tenant_salt: Vec::new(),
        }
    }

    /// Checks the fields: lengths, no NUL, a TP rank below the TP size.
    pub fn validate(&self) -> Result<()> {
        let strings = [
            ("model_id", &self.model_id, MAX_FIELD_LEN),
            ("model_revision", &self.model_revision, MAX_FIELD_LEN),
            ("kv_dtype", &self.kv_dtype, MAX_FIELD_LEN),
            ("engine_fingerprint", &self.engine_fingerprint, MAX_BLOB_LEN),
        ];
        for (name, v, max) in strings {
            if v.len() > max {
                return Err(err!(
                    InvalidArgument,
                    "namespace {name} is {} bytes, at most {max} are allowed",
                    v.len()
                ));
            }
            if v.contains('\0') {
                return Err(err!(InvalidArgument, "namespace {name} contains NUL"));
            }
        }
        if self.model_id.is_empty() {
            return Err(err!(InvalidArgument, "namespace model_id is empty"));
        }
        if self.tenant_salt.len() > MAX_BLOB_LEN {
            return Err(err!(
                InvalidArgument,
                "namespace tenant_salt is {} bytes, at most {MAX_BLOB_LEN} are allowed",
                self.tenant_salt.len()
            ));
        }
        if self.tp_size == 0 || self.tp_rank >= self.tp_size {
            return Err(err!(
                InvalidArgument,
                "namespace tp_rank {} is not below tp_size {} (tp_size must be >= 1)",
                self.tp_rank,
                self.tp_size
            ));
        }
        Ok(())
    }

    /// The tenant salt's SHA-256 (domain-separated), in hex; `None` without a salt.
    pub fn salt_digest(&self) -> Option<String> {
        (!self.tenant_salt.is_empty()).then(|| {
            let mut h = Sha256::new();
            h.update(SALT_DOMAIN);
            h.update(&self.tenant_salt);
            hex(&h.finalize())
        })
    }

    /// The digest part of the name: 32 hex digits.
    fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(NAME_DOMAIN);
        let mut put = |tag: u8, bytes: &[u8]| {
            h.update([tag]);
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        put(1, self.model_id.as_bytes());
        put(2, self.model_revision.as_bytes());
        put(3, self.kv_dtype.as_bytes());
        put(4, &self.tokens_per_block.to_le_bytes());
        put(5, &self.num_layers.to_le_bytes());
        put(6, &self.num_kv_heads.to_le_bytes());
        put(7, &self.head_dim.to_le_bytes());
        put(8, &self.bytes_per_block.to_le_bytes());
        put(9, &self.tp_size.to_le_bytes());
        put(10, &self.tp_rank.to_le_bytes());
        put(11, &self.pp_rank.to_le_bytes());
        put(12, &self.cp_rank.to_le_bytes());
        put(13, self.engine_fingerprint.as_bytes());
        put(14, self.salt_digest().unwrap_or_default().as_bytes());
        hex(&h.finalize()[..16])
    }

    /// The canonical name: `<model>.<dtype>.tp<rank>of<size>.pp<rank>.cp<rank>.<digest>`
    /// (model and dtype reduced to `[A-Za-z0-9._-]` and shortened).
    pub fn name(&self) -> Result<String> {
        self.validate()?;
        let dtype = match readable(&self.kv_dtype, PREFIX_DTYPE_LEN) {
            d if d.is_empty() => "any".to_string(),
            d => d,
        };
        let name = format!(
            "{}.{dtype}.tp{}of{}.pp{}.cp{}.{}",
            readable(&self.model_id, PREFIX_MODEL_LEN),
            self.tp_rank,
            self.tp_size,
            self.pp_rank,
            self.cp_rank,
            self.digest()
        );
        debug_assert!(name.len() <= MAX_NAME_LEN);
        Ok(name)
    }

    /// The manifest: every field (the salt as its digest) and the name, as JSON.
    pub fn manifest(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "format": "kvr-namespace",
            "version": 1,
            "name": self.name()?,
            "model_id": self.model_id,
            "model_revision": self.model_revision,
            "kv_dtype": self.kv_dtype,
            "tokens_per_block": self.tokens_per_block,
            "num_layers": self.num_layers,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "bytes_per_block": self.bytes_per_block,
            "tp_size": self.tp_size,
            "tp_rank": self.tp_rank,
            "pp_rank": self.pp_rank,
            "cp_rank": self.cp_rank,
            "engine_fingerprint": self.engine_fingerprint,
            "tenant_salt_sha256": self.salt_digest(),
        }))
    }

    /// Writes the manifest as `<dir>/NAMESPACE.json` unless one is there: written whole
    /// under a temporary name, then linked into place (never replacing a name), so
    /// concurrent openers in any process publish one complete file and a reader never sees
    /// a partial one. An existing manifest must name this namespace (`LayoutMismatch`
    /// otherwise; `Corrupt` if it is not a manifest). Returns whether this call wrote it.
    pub fn write_manifest(&self, dir: &Path) -> Result<bool> {
        let dest = dir.join(MANIFEST_FILE);
        let mut text = serde_json::to_string_pretty(&self.manifest()?).expect("JSON values");
        text.push('\n');
        if dest.exists() {
            return self.check_manifest(&dest).map(|()| false);
        }
        let ctx = |what: &str| format!("{what} namespace manifest {}", dest.display());
        let tag = format!(
            "{}.{:x}.tmp",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let tmp = sibling_path(&dest, tag).map_err(|e| Error::io(ctx("naming"), e))?;
        let mut temp = TempFile::create_named(tmp, OpenNoFollow::write_only(), 0o644)
            .map_err(|e| Error::io(ctx("creating"), e))?;
        let mut f = temp.file();
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| Error::io(ctx("writing"), e))?;
        let linked = temp
            .link_new(&dest)
            .map_err(|e| Error::io(ctx("publishing"), e))?;
        if linked {
            log::info!(target: "kvr::fs", "wrote namespace manifest {}", dest.display());
            Ok(true)
        } else {
            self.check_manifest(&dest).map(|()| false)
        }
    }

    fn check_manifest(&self, path: &Path) -> Result<()> {
        let found = read_manifest(path)?;
        let name = self.name()?;
        match found.get("name").and_then(|n| n.as_str()) {
            Some(n) if n == name => Ok(()),
            Some(n) => Err(err!(
                LayoutMismatch,
                "namespace manifest {} names {n:?}, not {name:?}",
                path.display()
            )),
            None => Err(err!(
                Corrupt,
                "namespace manifest {} has no name",
                path.display()
            )),
        }
    }
}

/// A manifest is a few hundred bytes; more than this is not one.
const MAX_MANIFEST: u64 = 1 << 20;

/// Reads a manifest (`Corrupt` if it is not JSON of an object). Opened as every file in a
/// store directory is (`OpenNoFollow`: a FIFO or a symlink planted there fails at once)
/// and read up to `MAX_MANIFEST` bytes.
pub fn read_manifest(path: &Path) -> Result<serde_json::Value> {
    let ctx = |e| Error::io(format!("reading namespace manifest {}", path.display()), e);
    let mut text = String::new();
    OpenNoFollow::read_only()
        .open(path)
        .and_then(|f| f.take(MAX_MANIFEST).read_to_string(&mut text))
        .map_err(ctx)?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(err!(
            Corrupt,
            "namespace manifest {} is not a JSON object",
            path.display()
        )),
    }
}

/// Where the manifest of namespace `ns` under `root` lives.
pub fn manifest_path(root: &Path, ns: &str) -> PathBuf {
    root.join(ns).join(MANIFEST_FILE)
}

/// `s` reduced to `[A-Za-z0-9._-]` (anything else becomes `_`; a `.` that would start the
/// name, follow another `.` or end it too), at most `max` bytes.
fn readable(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(max);
    for c in s.chars() {
        if out.len() == max {
            break;
        }
        let keep = c.is_ascii_alphanumeric()
            || c == '-'
            || c == '_'
            || (c == '.' && !out.is_empty() && !out.ends_with('.'));
        out.push(if keep { c } else { '_' });
    }
    if out.ends_with('.') {
        out.pop();
        out.push('_');
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::path::validate_namespace;
    use proptest::prelude::*;

    fn example() -> Namespace {
        Namespace {
            model_id: "meta-llama/Llama-3.1-8B-Instruct".into(),
            model_revision: "0e9e39f249a16976918f6564b8830bc894c89659".into(),
            kv_dtype: "bf16".into(),
            tokens_per_block: 16,
            num_layers: 32,
            num_kv_heads: 8,
            head_dim: 128,
            bytes_per_block: 2 * 32 * 8 * 128 * 16 * 2,
            tp_size: 4,
            tp_rank: 1,
            pp_rank: 0,
            cp_rank: 0,
            engine_fingerprint: "vllm-0.11.0 layout=NHD".into(),
            tenant_salt: b"tenant-42".to_vec(),
        }
    }

    /// Pinned forever: a name that changes breaks every store already on disk.
    #[test]
    fn golden_name() {
        assert_eq!(
            example().name().unwrap(),
            "meta-llama_Llama-3.1-8B-Instruct.bf16.tp1of4.pp0.cp0.f5c0b717dd2b549a550f3303f019dc61"
        );
    }

    #[test]
    fn readable_prefix_stays_a_valid_namespace() {
        for model in [".hidden", "a..b", "x/../y", "end.", "ü\u{1F600}", "a b\tc"] {
            let n = Namespace::new(model).name().unwrap();
            validate_namespace(&n).unwrap();
            assert!(!n.contains(".."), "{n}");
        }
        let long = Namespace::new("m".repeat(MAX_FIELD_LEN));
        let mut long = Namespace {
            kv_dtype: "d".repeat(MAX_FIELD_LEN),
            tp_size: u32::MAX,
            tp_rank: u32::MAX - 1,
            pp_rank: u32::MAX,
            cp_rank: u32::MAX,
            ..long
        };
        assert!(long.name().unwrap().len() <= MAX_NAME_LEN);
        long.model_id.push('m');
        assert!(long.name().is_err(), "over-long model id");
    }

    #[test]
    fn rejects_bad_fields() {
        assert!(Namespace::new("").name().is_err());
        let mut n = Namespace::new("m");
        n.tp_rank = 1;
        assert!(n.name().is_err(), "rank 1 of 1");
        n.tp_size = 0;
        n.tp_rank = 0;
        assert!(n.name().is_err(), "tp_size 0");
        let mut n = Namespace::new("m");
        n.tenant_salt = vec![1; MAX_BLOB_LEN + 1];
        assert!(n.name().is_err());
        n.tenant_salt.pop();
        assert!(n.name().is_ok());
    }

    #[test]
    fn manifest_written_once_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let ns = example();
        assert!(ns.write_manifest(d.path()).unwrap());
        assert!(!ns.write_manifest(d.path()).unwrap());
        let m = read_manifest(&d.path().join(MANIFEST_FILE)).unwrap();
        assert_eq!(m["name"], ns.name().unwrap());
        assert_eq!(m["tp_size"], 4);
        assert_eq!(m["tenant_salt_sha256"], ns.salt_digest().unwrap());
        let text = std::fs::read_to_string(d.path().join(MANIFEST_FILE)).unwrap();
        assert!(
            !text.contains("tenant-42"),
            "the salt itself is never written"
        );
        let mut other = ns.clone();
        other.tp_rank = 2;
        let e = other.write_manifest(d.path()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::LayoutMismatch);
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left behind");
    }

    #[test]
    fn concurrent_writers_publish_one_complete_manifest() {
        let d = tempfile::tempdir().unwrap();
        let ns = example();
        let wrote: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| ns.write_manifest(d.path()).unwrap() as usize))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wrote, 1);
        assert_eq!(
            read_manifest(&d.path().join(MANIFEST_FILE)).unwrap(),
            ns.manifest().unwrap()
        );
    }

    fn arb_namespace() -> impl Strategy<Value = Namespace> {
        let s = || proptest::string::string_regex("[a-zA-Z0-9./_ -]{0,12}").unwrap();
        (
            (
                s(),
                s(),
                s(),
                s(),
                proptest::collection::vec(any::<u8>(), 0..8),
            ),
            (
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u64>(),
            ),
            (1u32..64, any::<u32>(), any::<u32>(), any::<u32>()),
        )
            .prop_map(
                |((m, r, d, f, salt), (t, l, h, hd, b), (tp, rank, pp, cp))| Namespace {
                    model_id: format!("m{m}"),
                    model_revision: r,
                    kv_dtype: d,
                    tokens_per_block: t,
                    num_layers: l,
                    num_kv_heads: h,
                    head_dim: hd,
                    bytes_per_block: b,
                    tp_size: tp,
                    tp_rank: rank % tp,
                    pp_rank: pp,
                    cp_rank: cp,
                    engine_fingerprint: f,
                    tenant_salt: salt,
                },
            )
    }

    /// `ns` with field `i` (0..14) changed.
    fn mutate(ns: &Namespace, i: usize) -> Namespace {
        let mut n = ns.clone();
        match i {
            0 => n.model_id.push('x'),
            1 => n.model_revision.push('x'),
            2 => n.kv_dtype.push('x'),
            3 => n.tokens_per_block = n.tokens_per_block.wrapping_add(1),
            4 => n.num_layers = n.num_layers.wrapping_add(1),
            5 => n.num_kv_heads = n.num_kv_heads.wrapping_add(1),
            6 => n.head_dim = n.head_dim.wrapping_add(1),
            7 => n.bytes_per_block = n.bytes_per_block.wrapping_add(1),
            8 => {
                n.tp_size += 1;
            }
            9 => n.tp_rank += 1,
            10 => n.pp_rank = n.pp_rank.wrapping_add(1),
            11 => n.cp_rank = n.cp_rank.wrapping_add(1),
            12 => n.engine_fingerprint.push('x'),
            _ => n.tenant_salt.push(0),
        }
        if n.tp_rank >= n.tp_size {
            n.tp_size = n.tp_rank + 1;
        }
        n
    }

    proptest! {
        #[test]
        fn same_inputs_same_name_any_change_another(ns in arb_namespace(), field in 0usize..14) {
            let name = ns.name().unwrap();
            prop_assert_eq!(&name, &ns.clone().name().unwrap());
            validate_namespace(&name).unwrap();
            let other = mutate(&ns, field);
            prop_assert_ne!(&other, &ns);
            prop_assert_ne!(name, other.name().unwrap());
        }
    }
}
