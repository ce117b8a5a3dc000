//! The S3 requests the object tier makes, through Apache OpenDAL: conditional PUT, ranged
//! GET, HEAD, DELETE and LIST, each bounded by the config's timeouts, and the one mapping of
//! their failures to kvr errors that name the endpoint and the HTTP or OS error.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::time::{Duration, Instant};

use opendal::raw::HttpClient;
use opendal::{Buffer, ErrorKind as DalKind, Operator};

use super::config::Resolved;
use super::http::Transport;
use crate::{err, Error, ErrorKind, Result};

/// One object found by a listing.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Its path relative to the store's prefix (`<namespace>/<hh>/<hex>.kvb`).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its last modification, seconds since the epoch (0 if the server did not say).
    pub modified: i64,
}

/// An S3 bucket and prefix behind one endpoint.
pub(crate) struct Client {
    op: Operator,
    endpoint: String,
    request_timeout: Duration,
}

impl Client {
    /// A client for `cfg`; makes no request (the first one connects).
    pub(crate) fn new(cfg: &Resolved) -> Result<Client> {
        let mut builder = opendal::services::S3::default()
            .root(&format!("/{}", cfg.url.prefix))
            .bucket(&cfg.url.bucket)
            .endpoint(&cfg.endpoint)
            .region(&cfg.region)
            // Credentials come from the config or the AWS_* variables (read by the caller):
            // no profile files, and never a request to the instance-metadata address.
            .disable_config_load()
            .disable_ec2_metadata();
        builder = match &cfg.credentials {
            Some(c) => {
                let b = builder
                    .access_key_id(&c.access_key_id)
                    .secret_access_key(&c.secret_access_key);
                match &c.session_token {
                    Some(t) => b.session_token(t),
                    None => b,
                }
            }
            None => builder.allow_anonymous(),
        };
        let invalid = |e: opendal::Error| {
            Error::invalid(format!(
                "object store {} at {}: {e}",
                cfg.url.bucket, cfg.endpoint
            ))
        };
        let op = Operator::new(builder).map_err(invalid)?.finish();
        let http = Transport::new(
            cfg.connect_timeout,
            cfg.request_timeout,
            cfg.concurrency,
            cfg.ca_bundle.as_deref(),
        )?;
        op.update_http_client(|_| HttpClient::with(http));
        Ok(Client {
            op,
            endpoint: cfg.endpoint.clone(),
            request_timeout: cfg.request_timeout,
        })
    }

    /// The endpoint, for messages.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The OpenDAL operator, for requests the tier's helpers do not cover (tensor files'
    /// streaming writes and chunked ranged reads, `tensors/remote.rs`).
    pub(crate) fn operator(&self) -> &Operator {
        &self.op
    }

    /// The bound on one request.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Runs one request under the request timeout (the HTTP client has its own; this one
    /// also covers OpenDAL's work around it). A request that fails fast for a transient
    /// reason (a pooled connection the restarted server closed) is tried once more.
    async fn bounded<T, F: Future<Output = opendal::Result<T>>>(
        &self,
        what: &str,
        path: &str,
        request: impl Fn() -> F,
    ) -> Result<T> {
        let start = Instant::now();
        let mut tried_again = false;
        loop {
            let outcome = tokio::time::timeout(self.request_timeout, request()).await;
            match outcome {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e))
                    if !tried_again
                        && e.is_temporary()
                        && start.elapsed() < self.request_timeout / 4 =>
                {
                    tried_again = true;
                }
                Ok(Err(e)) => return Err(self.failure(what, path, e)),
                Err(_) => return Err(self.timed_out(what, path)),
            }
        }
    }

    /// The error for a request that ran past the request timeout.
    fn timed_out(&self, what: &str, path: &str) -> Error {
        err!(
            Unavailable,
            "{what} {path}: object store at {} did not answer within {} ms",
            self.endpoint,
            self.request_timeout.as_millis()
        )
    }

    /// The kvr error for a failed request: transport failures, 5xx and throttling are
    /// `Unavailable` (the handle stays usable: retry later).
    pub(crate) fn failure(&self, what: &str, path: &str, e: opendal::Error) -> Error {
        let transport = {
            let mut src = std::error::Error::source(&e);
            let mut found = false;
            while let Some(s) = src {
                found |= s.is::<hyper_util::client::legacy::Error>()
                    || s.is::<hyper::Error>()
                    || s.is::<std::io::Error>();
                src = s.source();
            }
            found
        };
        let kind = match e.kind() {
            DalKind::NotFound => ErrorKind::NotFound,
            DalKind::PermissionDenied => ErrorKind::Permission,
            DalKind::RateLimited => ErrorKind::Unavailable,
            DalKind::ConfigInvalid => ErrorKind::InvalidArgument,
            DalKind::Unsupported => ErrorKind::Unsupported,
            _ if transport || e.is_temporary() => ErrorKind::Unavailable,
            _ => ErrorKind::Io,
        };
        let mut text = e.to_string();
        // OpenDAL's context lists the response headers too; the first part says enough.
        if text.len() > 600 {
            let mut cut = 600;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str(" ...");
        }
        // The HTTP client's message leaves out its causes ("connection refused (os error
        // 111)", "operation timed out"): append them.
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            let cause = s.to_string();
            if !text.contains(&cause) {
                text.push_str(": ");
                text.push_str(&cause);
            }
            src = s.source();
        }
        Error::new(
            kind,
            format!("{what} {path} at object store {}: {text}", self.endpoint),
        )
    }

    /// PUT with `If-None-Match: *`: `true` if this call created the object, `false` if it
    /// existed (the server's `412`).
    pub(crate) async fn put_new(&self, path: &str, body: Buffer) -> Result<bool> {
        let r = self
            .bounded("storing", path, || {
                let body = body.clone(); // reference-counted chunks, no copy
                async move {
                    match self.op.write_with(path, body).if_not_exists(true).await {
                        Ok(_) => Ok(true),
                        Err(e) if e.kind() == DalKind::ConditionNotMatch => Ok(false),
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        Ok(r)
    }

    /// GET of `range` (fewer bytes if the object is shorter); `None` if there is no object.
    pub(crate) async fn get(&self, path: &str, range: Range<u64>) -> Result<Option<Buffer>> {
        let r = self
            .bounded("loading", path, || {
                let range = range.clone();
                async move {
                    match self.op.read_with(path).range(range).await {
                        Ok(b) => Ok(Some(b)),
                        Err(e) if e.kind() == DalKind::NotFound => Ok(None),
                        // A range starting at or past the end of a (short) object.
                        Err(e) if e.kind() == DalKind::RangeNotSatisfied => Ok(Some(Buffer::new())),
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        Ok(r)
    }

    /// GET of `range` (fewer bytes if the object is shorter), the body handed to `consume`
    /// piece by piece as it arrives, until `consume` says `false` (the rest is not read);
    /// `false` if there is no object. Under the request timeout as a whole; a request that
    /// fails fast for a transient reason before any byte was consumed is tried once more.
    pub(crate) async fn get_into(
        &self,
        path: &str,
        range: Range<u64>,
        consume: &mut (dyn FnMut(&[u8]) -> bool + Send),
    ) -> Result<bool> {
        let start = Instant::now();
        let mut tried_again = false;
        loop {
            let mut consumed = false;
            let attempt = async {
                let reader = self.op.reader_with(path).await?;
                let mut body = reader.into_stream(range.clone()).await?;
                while let Some(buf) = std::future::poll_fn(|cx| {
                    futures_core::Stream::poll_next(Pin::new(&mut body), cx)
                })
                .await
                {
                    for piece in buf? {
                        consumed = true;
                        if !consume(&piece) {
                            return Ok(());
                        }
                    }
                }
                Ok::<(), opendal::Error>(())
            };
            let outcome = tokio::time::timeout(self.request_timeout, attempt).await;
            match outcome {
                Ok(Ok(())) => return Ok(true),
                Ok(Err(e)) if !consumed && e.kind() == DalKind::NotFound => return Ok(false),
                // A range starting at or past the end of a (short) object: no bytes.
                Ok(Err(e)) if !consumed && e.kind() == DalKind::RangeNotSatisfied => {
                    return Ok(true)
                }
                Ok(Err(e))
                    if !tried_again
                        && !consumed
                        && e.is_temporary()
                        && start.elapsed() < self.request_timeout / 4 =>
                {
                    tried_again = true;
                }
                Ok(Err(e)) => return Err(self.failure("loading", path, e)),
                Err(_) => return Err(self.timed_out("loading", path)),
            }
        }
    }

    /// HEAD: the object's size, `None` if there is none.
    pub(crate) async fn head(&self, path: &str) -> Result<Option<u64>> {
        self.bounded("looking up", path, || async move {
            match self.op.stat(path).await {
                Ok(m) => Ok(Some(m.content_length())),
                Err(e) if e.kind() == DalKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// DELETE (succeeds whether or not the object existed).
    pub(crate) async fn delete(&self, path: &str) -> Result<()> {
        self.bounded("removing", path, || self.op.delete(path))
            .await
    }

    /// Every object under `dir` (relative to the prefix, ending in `/`), recursively.
    pub(crate) async fn list(&self, dir: &str) -> Result<Vec<Listed>> {
        let entries = self
            .bounded("listing", dir, || async move {
                self.op.list_with(dir).recursive(true).await
            })
            .await?;
        Ok(entries
            .into_iter()
            .filter(|e| e.metadata().is_file())
            .map(|e| Listed {
                path: e.path().to_string(),
                size: e.metadata().content_length(),
                modified: e.metadata().last_modified().map_or(0, |t| t.timestamp()),
            })
            .collect())
    }
}
