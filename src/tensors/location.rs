//! Where a tensor file lives: a local path (also written as a `file://` URL) or an object
//! `s3://bucket/key` of an S3 store.

use std::path::{Path, PathBuf};

use crate::obj::ObjUrl;
use crate::{err, Error, Result};

/// A parsed tensor file location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A path of the local file system (`file://` URLs become their path).
    Local(PathBuf),
    /// The object `key` of `bucket` (`s3://bucket/key`).
    S3 {
        /// The bucket.
        bucket: String,
        /// The object's key (no leading `/`).
        key: String,
    },
}

/// `scheme://` at the start of `s`, if `s` starts with a URL scheme (RFC 3986 letters).
fn scheme_of(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once("://")?;
    let mut bytes = scheme.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic());
    (first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))).then_some(scheme)
}

impl Location {
    /// Parses a path or a URL: `file:///abs/path` (percent-decoded, host empty or
    /// `localhost`), `s3://bucket/key` (the key taken as written, as S3 tools do), or
    /// anything without a `scheme://` as a path. Another scheme is `Unsupported`; a
    /// malformed URL `InvalidArgument`.
    pub fn parse(s: &str) -> Result<Location> {
        let Some(scheme) = scheme_of(s) else {
            return Ok(Location::Local(PathBuf::from(s)));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                let url = url::Url::parse(s)
                    .map_err(|e| Error::invalid(format!("file URL {s:?}: {e}")))?;
                let path = url.to_file_path().map_err(|()| {
                    Error::invalid(format!(
                        "file URL {s:?} names no local absolute path (host must be empty or localhost)"
                    ))
                })?;
                Ok(Location::Local(path))
            }
            "s3" => {
                let parsed = ObjUrl::parse(s)?;
                if parsed.prefix.is_empty() || s.ends_with('/') {
                    return Err(Error::invalid(format!(
                        "tensor file URL {s:?} names no object: use s3://bucket/key"
                    )));
                }
                Ok(Location::S3 {
                    bucket: parsed.bucket,
                    key: parsed.prefix,
                })
            }
            _ => Err(err!(
                Unsupported,
                "tensor file location {s:?}: scheme '{scheme}://' is not supported \
                 (a path, file:// or s3://)"
            )),
        }
    }

    /// Parses a path given as a [`Path`] (not UTF-8: always a local path).
    pub fn of_path(path: &Path) -> Result<Location> {
        match path.to_str() {
            Some(s) => Location::parse(s),
            None => Ok(Location::Local(path.to_path_buf())),
        }
    }

    /// The location as a URL or path, for messages and [`super::TensorFile::path`].
    pub fn display(&self) -> String {
        match self {
            Location::Local(p) => p.display().to_string(),
            Location::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_urls_parse() {
        let local = |s: &str| Location::Local(PathBuf::from(s));
        assert_eq!(
            Location::parse("a/b.safetensors").unwrap(),
            local("a/b.safetensors")
        );
        assert_eq!(Location::parse("/x/y").unwrap(), local("/x/y"));
        // A colon without "//" is an ordinary file name.
        assert_eq!(Location::parse("c:weights").unwrap(), local("c:weights"));
        assert_eq!(Location::parse("file:///x/a%20b").unwrap(), local("/x/a b"));
        assert_eq!(Location::parse("file://localhost/x").unwrap(), local("/x"));
        assert_eq!(
            Location::parse("s3://kvr-test/dir/w.safetensors").unwrap(),
            Location::S3 {
                bucket: "kvr-test".into(),
                key: "dir/w.safetensors".into()
            }
        );
        for (bad, kind) in [
            ("file://otherhost/x", crate::ErrorKind::InvalidArgument),
            ("s3://kvr-test", crate::ErrorKind::InvalidArgument),
            ("s3://kvr-test/", crate::ErrorKind::InvalidArgument),
            ("s3://kvr-test/dir/", crate::ErrorKind::InvalidArgument),
            ("s3:///key", crate::ErrorKind::InvalidArgument),
            ("s3://kvr-test/a//b", crate::ErrorKind::InvalidArgument),
            ("gs://bucket/key", crate::ErrorKind::Unsupported),
            ("http://host/key", crate::ErrorKind::Unsupported),
        ] {
            let e = Location::parse(bad).expect_err(bad);
            assert_eq!(e.kind(), kind, "{bad}: {e}");
        }
    }
}
