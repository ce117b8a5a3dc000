//! The HTTP transport under OpenDAL: hyper's pooled HTTP/1.1 client (rustls for `https`),
//! handed to OpenDAL as its [`HttpFetch`]. OpenDAL's own transport, reqwest, turns every
//! request's URI into a string and parses it back into a `Url` (with IDNA host processing)
//! and runs redirect and proxy layers no S3 request here needs: against a local SeaweedFS,
//! 64 KiB loads at 8 in flight took 238-263 us of client CPU per GET through reqwest and
//! 169-219 us through this (three alternated pairs), CPU a server on the same host then
//! lacks. This is only the transport: requests, signing, errors and retries stay OpenDAL's.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opendal::raw::{parse_content_encoding, parse_content_length, HttpBody, HttpFetch};
use opendal::{Buffer, ErrorKind as DalKind};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::{err, Error, Result};

/// Connections idle longer than this are closed (a server closes its end after a while too;
/// the first request on such a connection fails and OpenDAL's caller tries again).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The transport of one object store's requests.
pub(crate) struct Transport {
    client: hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, RequestBody>,
    /// The bound on one exchange, response body included: also for requests no caller
    /// bounds (the parts a multipart upload sends in the background).
    request_timeout: Duration,
}

/// The trusted roots: Mozilla's (webpki-roots, compiled in: no system trust store to depend
/// on) and the certificates of the PEM bundle at `ca_bundle`.
fn roots(ca_bundle: Option<&Path>) -> Result<rustls::RootCertStore> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let Some(path) = ca_bundle else {
        return Ok(roots);
    };
    // A config mistake, whatever the OS error: not the `NotFound` of a missing bucket.
    let pem = std::fs::read(path)
        .map_err(|e| Error::invalid(format!("CA bundle {} cannot be read: {e}", path.display())))?;
    let not_pem = |e: &dyn std::fmt::Display| {
        Error::invalid(format!(
            "CA bundle {} is not PEM certificates: {e}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| not_pem(&e))?;
    if certs.is_empty() {
        return Err(Error::invalid(format!(
            "CA bundle {} holds no certificate",
            path.display()
        )));
    }
    // A system bundle may hold a certificate rustls cannot use as a trust anchor (an old
    // format, a negative serial): skipped, as other TLS clients skip it, but a bundle with
    // none it can use is a mistake.
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(not_pem(
            &"none of its certificates can be used as a trust anchor",
        ));
    }
    if ignored > 0 {
        log::warn!(
            "CA bundle {}: {ignored} of {} certificates cannot be used as trust anchors and \
             were skipped",
            path.display(),
            added + ignored
        );
    }
    Ok(roots)
}

impl Transport {
    /// A transport connecting within `connect_timeout`, ending any exchange not done within
    /// `request_timeout`, keeping up to `max_idle` idle connections to the endpoint, trusting `ca_bundle`'s certificates besides the usual
    /// roots. Makes no connection (the first request does). The endpoint is reached
    /// directly: no proxy from the environment in between.
    pub(crate) fn new(
        connect_timeout: Duration,
        request_timeout: Duration,
        max_idle: usize,
        ca_bundle: Option<&Path>,
    ) -> Result<Transport> {
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| err!(Internal, "TLS settings of the object store's client: {e}"))?
        .with_root_certificates(roots(ca_bundle)?)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(max_idle)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Transport {
            client,
            request_timeout,
        })
    }
}

/// An OpenDAL error for a failed exchange, marked temporary (worth one more try: the
/// request never reached a server, or a pooled connection the server had closed broke), as
/// OpenDAL's own transport marks every failure to send or to read a body.
fn failed(
    what: &'static str,
    uri: &Uri,
    source: impl std::error::Error + Send + Sync + 'static,
) -> opendal::Error {
    opendal::Error::new(DalKind::Unexpected, what)
        .with_operation("kvr::obj::http")
        .with_context("uri", uri.to_string())
        .set_temporary()
        .set_source(source)
}

impl HttpFetch for Transport {
    async fn fetch(&self, req: Request<Buffer>) -> opendal::Result<Response<HttpBody>> {
        let uri = req.uri().clone();
        let is_head = req.method() == http::Method::HEAD;
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, RequestBody(body));
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let resp = match tokio::time::timeout_at(deadline, self.client.request(req)).await {
            Ok(r) => r.map_err(|e| failed("send http request", &uri, e))?,
            Err(_) => {
                let e = TimedOut {
                    what: "the response",
                    timeout: self.request_timeout,
                };
                return Err(failed("send http request", &uri, e));
            }
        };
        let (mut parts, incoming) = resp.into_parts();
        // The length OpenDAL checks the body against; none for HEAD or an encoded body.
        let content_length = if is_head || parse_content_encoding(&parts.headers)?.is_some() {
            None
        } else {
            parse_content_length(&parts.headers)?
        };
        // OpenDAL's error messages name the URI it finds here.
        parts.extensions.insert(uri.clone());
        let body = ResponseBody {
            incoming,
            uri,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            timeout: self.request_timeout,
        };
        let body = HttpBody::new(body, content_length);
        Ok(Response::from_parts(parts, body))
    }
}

/// An exchange still unfinished at its deadline: `what` did not arrive within `timeout`.
#[derive(Debug)]
struct TimedOut {
    what: &'static str,
    timeout: Duration,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} did not arrive within the request timeout ({} ms)",
            self.what,
            self.timeout.as_millis()
        )
    }
}

impl std::error::Error for TimedOut {}

/// A request body: OpenDAL's buffer, chunk by chunk (no copy).
struct RequestBody(Buffer);

impl Body for RequestBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.next().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.len() as u64)
    }
}

/// A response body as the stream of buffers OpenDAL reads (data frames; trailers and empty
/// frames are skipped).
struct ResponseBody {
    incoming: hyper::body::Incoming,
    uri: Uri,
    /// The exchange's end: a body still arriving then is an error.
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl futures_core::Stream for ResponseBody {
    type Item = opendal::Result<Buffer>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let frame = match Pin::new(&mut self.incoming).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                // Waiting: only now is the deadline's timer armed (no timer work while the
                // body's bytes are already there).
                Poll::Pending => {
                    ready!(self.deadline.as_mut().poll(cx));
                    let late = TimedOut {
                        what: "the response body",
                        timeout: self.timeout,
                    };
                    let e = failed("read data from http response", &self.uri, late);
                    return Poll::Ready(Some(Err(e)));
                }
            };
            match frame {
                None => return Poll::Ready(None),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => return Poll::Ready(Some(Ok(data.into()))),
                    _ => continue,
                },
                Some(Err(e)) => {
                    let e = failed("read data from http response", &self.uri, e);
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn ca_bundles_must_hold_pem_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let builtin = roots(None).unwrap().len();
        assert!(builtin > 50, "Mozilla's roots are compiled in: {builtin}");
        for (name, text, says) in [
            ("empty.pem", "", "holds no certificate"),
            (
                "key.pem",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "holds no certificate",
            ),
            (
                "bad.pem",
                "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
                "is not PEM certificates",
            ),
            (
                "junk.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "is not PEM certificates",
            ),
        ] {
            let e = roots(Some(&write(name, text))).err().unwrap();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{name}: {e}");
            assert!(
                e.to_string().contains(says) && e.to_string().contains(name),
                "{name}: {e}"
            );
        }
        let e = roots(Some(&dir.path().join("missing.pem"))).err().unwrap();
        assert!(e.to_string().contains("cannot be read"), "{e}");
    }

    /// A server that accepts, reads the request, writes `reply` and then stalls.
    fn stalling_server(reply: &'static [u8]) -> (String, std::thread::JoinHandle<()>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            conn.write_all(reply).unwrap();
            // Held open and silent past the client's timeout (or until it closes).
            conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let _ = conn.read(&mut buf);
        });
        (format!("http://{addr}/bucket/object"), server)
    }

    /// The transport bounds a whole exchange by itself: no answer, or a body that stops
    /// arriving, ends in a temporary error at the request timeout, never a hang.
    #[test]
    fn exchanges_end_at_the_request_timeout() {
        use opendal::raw::oio::Read as _;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let timeout = Duration::from_millis(300);
        let t = Transport::new(Duration::from_secs(2), timeout, 1, None).unwrap();
        let get = |uri: &str| {
            Request::get(uri)
                .body(Buffer::new())
                .expect("a valid request")
        };

        let (uri, server) = stalling_server(b"");
        let started = std::time::Instant::now();
        let e = rt.block_on(t.fetch(get(&uri))).err().expect("no answer");
        assert!(e.is_temporary(), "{e}");
        assert!(
            format!("{e:?}").contains("response did not arrive"),
            "{e:?}"
        );
        assert!(started.elapsed() >= timeout && started.elapsed() < timeout * 10);
        server.join().unwrap();

        let (uri, server) =
            stalling_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b");
        let started = std::time::Instant::now();
        let e = rt.block_on(async {
            let mut body = t.fetch(get(&uri)).await?.into_body();
            loop {
                if body.read().await?.is_empty() {
                    return Ok(());
                }
            }
        });
        let e: opendal::Error = e.expect_err("a body that stops arriving");
        assert!(e.is_temporary(), "{e}");
        assert!(format!("{e:?}").contains("body did not arrive"), "{e:?}");
        assert!(started.elapsed() >= timeout && started.elapsed() < timeout * 10);
        drop(t);
        server.join().unwrap();
    }
}
