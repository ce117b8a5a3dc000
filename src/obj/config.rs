//! What opening an object store takes and what it reports: the config (URL, endpoint,
//! region, credentials, concurrency, timeouts), its resolution against the standard `AWS_*`
//! environment variables, and the counters.

use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, Result};

/// Access key pair (and optional session token) signing requests.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    // Never print secrets (configs end up in logs and error messages).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// How to open an object store. [`ObjConfig::new`] fills the defaults.
#[derive(Clone, Debug)]
pub struct ObjConfig {
    /// `s3://bucket[/prefix]`: objects live under `<prefix>/<namespace>/<hh>/<key hex>.kvb`.
    pub url: String,
    /// Namespace (model + layout digest chosen by the engine); the fs store's rules apply.
    pub namespace: String,
    /// `http://host:port` or `https://host:port` of the S3 server; `None`:
    /// `AWS_ENDPOINT_URL`, else AWS's regional endpoint (https).
    pub endpoint: Option<String>,
    /// Region; `None`: `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Credentials; `None`: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
    /// `AWS_SESSION_TOKEN`, else unsigned requests (a server without identities accepts them).
    /// No config file, profile or instance-metadata lookup is ever made.
    pub credentials: Option<Credentials>,
    /// Most requests in flight at once, over all callers and batches. Default 32.
    pub concurrency: usize,
    /// Bound on establishing a connection. Default 2 s.
    pub connect_timeout: Duration,
    /// Bound on one whole request (connect, send, receive). Default 30 s.
    pub request_timeout: Duration,
    /// A PEM file of certificates an `https://` endpoint's chain may end in, trusted besides
    /// the built-in public roots (a private CA, or a self-signed server certificate); `None`:
    /// `AWS_CA_BUNDLE`, as the AWS SDKs and CLI read it, else only the public roots.
    pub ca_bundle: Option<PathBuf>,
}

impl ObjConfig {
    /// A config with the defaults (endpoint, region and credentials from the environment,
    /// 32 requests in flight, 2 s connect and 30 s request timeouts).
    pub fn new(url: impl Into<String>, namespace: impl Into<String>) -> Self {
        ObjConfig {
            url: url.into(),
            namespace: namespace.into(),
            endpoint: None,
            region: None,
            credentials: None,
            concurrency: 32,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            ca_bundle: None,
        }
    }
}

/// A parsed `s3://bucket[/prefix]` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjUrl {
    /// The bucket.
    pub bucket: String,
    /// The key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl ObjUrl {
    /// Parses `s3://bucket[/prefix]`; the prefix may not hold empty, `.` or `..` segments.
    pub fn parse(url: &str) -> Result<ObjUrl> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            Error::invalid(format!(
                "object store URL {url:?} does not start with s3://"
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
        if !bucket_ok {
            return Err(Error::invalid(format!(
                "object store URL {url:?}: bucket {bucket:?} is not a valid S3 bucket name"
            )));
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty()
            && prefix
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == ".." || s.contains('\0'))
        {
            return Err(Error::invalid(format!(
                "object store URL {url:?}: prefix has an empty, '.' or '..' segment"
            )));
        }
        Ok(ObjUrl {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

/// Everything the S3 client needs, with the environment's defaults applied.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub url: ObjUrl,
    pub endpoint: String,
    pub region: String,
    pub credentials: Option<Credentials>,
    pub concurrency: usize,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub ca_bundle: Option<PathBuf>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl ObjConfig {
    /// Applies the `AWS_*` environment defaults and checks the values.
    pub(crate) fn resolve(&self) -> Result<Resolved> {
        let url = ObjUrl::parse(&self.url)?;
        let region = self
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let endpoint = endpoint.trim_end_matches('/').to_string();
        if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
            return Err(Error::invalid(format!(
                "object store endpoint {endpoint:?} is not an http:// or https:// URL"
            )));
        }
        let ca_bundle = self
            .ca_bundle
            .clone()
            .or_else(|| env("AWS_CA_BUNDLE").map(PathBuf::from));
        let credentials = self.credentials.clone().or_else(|| {
            Some(Credentials {
                access_key_id: env("AWS_ACCESS_KEY_ID")?,
                secret_access_key: env("AWS_SECRET_ACCESS_KEY")?,
                session_token: env("AWS_SESSION_TOKEN"),
            })
        });
        if !(1..=4096).contains(&self.concurrency) {
            return Err(Error::invalid(format!(
                "object store concurrency {} is not in 1..=4096",
                self.concurrency
            )));
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(Error::invalid(
                "object store timeouts must be non-zero (they bound every request)",
            ));
        }
        Ok(Resolved {
            url,
            endpoint,
            region,
            credentials,
            concurrency: self.concurrency,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            ca_bundle,
        })
    }
}

/// Counters of one open object store (this process's view; the server holds the objects).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjStats {
    /// Loads that returned a block.
    pub hits: u64,
    /// Loads that found no usable block (absent or bad).
    pub misses: u64,
    /// Bad objects found by loads (wrong key, length or checksum); kept on the server until
    /// `kvr obj verify --repair`.
    pub corrupt: u64,
    /// Payload bytes loaded.
    pub bytes_read: u64,
    /// Payload bytes stored (deduplicated stores write nothing).
    pub bytes_written: u64,
    /// Blocks written.
    pub stores: u64,
    /// Stores the server refused because the object existed (`412` to `If-None-Match: *`).
    pub dedup_hits: u64,
    /// Blocks removed.
    pub removes: u64,
    /// Requests that failed because the server was down, too slow or refusing.
    pub unavailable: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = ObjUrl::parse("s3://kvr-test/a/b/").unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("kvr-test", "a/b"));
        let u = ObjUrl::parse("s3://kvr-test").unwrap();
        assert_eq!(u.prefix, "");
        for bad in [
            "http://x/y",
            "s3://",
            "s3://Upper",
            "s3://ab",
            "s3://kvr-test/a//b",
            "s3://kvr-test/../b",
        ] {
            assert!(ObjUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_checks_values_and_takes_tls_endpoints() {
        let mut c = ObjConfig::new("s3://kvr-test/p", "ns");
        c.endpoint = Some("http://127.0.0.1:1/".into());
        c.region = Some("r".into());
        let r = c.resolve().unwrap();
        assert_eq!(
            (r.endpoint.as_str(), r.region.as_str()),
            ("http://127.0.0.1:1", "r")
        );
        c.concurrency = 0;
        assert!(c.resolve().is_err());
        c.concurrency = 4;
        c.request_timeout = Duration::ZERO;
        assert!(c.resolve().is_err());
        c.request_timeout = Duration::from_secs(1);
        c.endpoint = Some("https://127.0.0.1:1".into());
        c.ca_bundle = Some("/some/ca.pem".into());
        let r = c.resolve().unwrap();
        assert_eq!(r.endpoint, "https://127.0.0.1:1");
        assert_eq!(r.ca_bundle, Some(PathBuf::from("/some/ca.pem")));
        c.endpoint = Some("ftp://127.0.0.1:1".into());
        assert_eq!(
            c.resolve().unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        );
        let creds = Credentials {
            access_key_id: "id".into(),
            secret_access_key: "very-secret".into(),
            session_token: None,
        };
        assert!(!format!("{creds:?}").contains("very-secret"));
    }
}
