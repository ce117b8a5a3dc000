//! Tensor files in an S3 object store, through the object tier's OpenDAL client, its
//! timeouts and error mapping, and its private runtime (`obj/client.rs`, `obj/runtime.rs`):
//! ranged reads of exactly the bytes asked for, split into concurrent chunk-sized `GET`s, and
//! a streaming writer (multipart upload of bounded parts) whose object appears only when the
//! whole file is written.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opendal::{Buffer, Writer};

use crate::obj::client::Client;
use crate::obj::runtime::RuntimeHandle;
use crate::obj::ObjConfig;
use crate::{err, Error, Result};

/// Bytes of one ranged `GET` of a large read, and the smallest part of a multipart upload
/// (S3 wants parts of at least 5 MiB).
const CHUNK: u64 = 8 << 20;
/// Chunks in flight per read or write: enough to fill a link, a bounded amount of memory.
const MAX_IN_FLIGHT: usize = 4;
/// S3 allows 10,000 parts per upload; leave room.
const MAX_PARTS: u64 = 9_000;

/// Requests and bytes a remote tensor file fetched (this handle's view).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Ranged `GET`s made (the open's included).
    pub requests: u64,
    /// Bytes received.
    pub bytes: u64,
}

/// One object of an S3 store.
pub(crate) struct RemoteObject {
    // Dropped before the runtime (the last holder shuts it down).
    client: Arc<Client>,
    runtime: RuntimeHandle,
    key: Arc<str>,
    url: String,
    in_flight: usize,
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// A raw pointer that may cross to a runtime thread; [`RemoteObject::read_exact_at`] keeps
/// the buffer borrowed until the future that uses it has finished.
struct SendPtr(*mut u8);
// SAFETY: only the one future it is moved into dereferences it, while the caller's `&mut`
// borrow of the buffer lasts (`RuntimeHandle::run` returns after the future finished).
unsafe impl Send for SendPtr {}

impl RemoteObject {
    /// A handle on `s3://bucket/key` with `cfg`'s endpoint, region, credentials, concurrency
    /// and timeouts (its `url` and `namespace` are not used), or the `AWS_*` environment's
    /// when `cfg` is `None`. Makes no request.
    pub(crate) fn new(bucket: &str, key: &str, cfg: Option<&ObjConfig>) -> Result<RemoteObject> {
        let url = format!("s3://{bucket}/{key}");
        let mut c = cfg.cloned().unwrap_or_else(|| ObjConfig::new("", ""));
        c.url = format!("s3://{bucket}");
        let resolved = c.resolve().map_err(|e| e.context(&url))?;
        let runtime = RuntimeHandle::acquire()?;
        let client = Arc::new(Client::new(&resolved)?);
        Ok(RemoteObject {
            client,
            runtime,
            key: key.into(),
            url,
            in_flight: resolved.concurrency.min(MAX_IN_FLIGHT),
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }

    /// `s3://bucket/key`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Requests and bytes fetched so far.
    pub(crate) fn fetched(&self) -> FetchStats {
        FetchStats {
            requests: self.requests.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
        }
    }

    /// The object's size (one `HEAD`); `NotFound` if there is none.
    pub(crate) fn size(&self) -> Result<u64> {
        let (client, key) = (self.client.clone(), self.key.clone());
        let size = self.runtime.run(async move { client.head(&key).await })?;
        size.ok_or_else(|| err!(NotFound, "no object {}", self.url))
    }

    /// Fills `dst` with the object's bytes from `at`: one ranged `GET`, or for more than a
    /// chunk, chunk-sized ranged `GET`s with a few in flight. `Corrupt` if the object ends
    /// early, `NotFound` if it is gone.
    pub(crate) fn read_exact_at(&self, dst: &mut [u8], at: u64) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        let len = dst.len();
        let ptr = SendPtr(dst.as_mut_ptr());
        let (client, key) = (self.client.clone(), self.key.clone());
        let in_flight = self.in_flight;
        let (requests, received) = self.runtime.run(async move {
            let ptr = ptr;
            // SAFETY: `dst` is borrowed mutably for this whole call and `run` returns only
            // after this future has finished, so the slice is valid and unaliased meanwhile.
            let dst = unsafe { std::slice::from_raw_parts_mut(ptr.0, len) };
            fetch_ranges(client, key, dst, at, in_flight).await
        })?;
        self.requests.fetch_add(requests, Relaxed);
        self.bytes.fetch_add(received, Relaxed);
        Ok(())
    }

    /// A streaming writer of a `file_len`-byte object; nothing is visible until
    /// [`RemoteWriter::finish`] succeeds.
    pub(crate) fn writer(&self, file_len: u64) -> Result<RemoteWriter<'_>> {
        // Parts of at least CHUNK, larger for files that would need too many.
        let part = CHUNK.max(file_len.div_ceil(MAX_PARTS).next_multiple_of(1 << 20)) as usize;
        let (client, key, in_flight) = (self.client.clone(), self.key.clone(), self.in_flight);
        let timeout = self.client.request_timeout();
        let writer = self.runtime.run(async move {
            let w = client
                .operator()
                .writer_with(&key)
                .chunk(part)
                .concurrent(in_flight);
            match tokio::time::timeout(timeout, w).await {
                Ok(r) => r.map_err(|e| client.failure("writing", &key, e)),
                Err(_) => Err(timed_out(&client, "writing", &key, timeout)),
            }
        })?;
        Ok(RemoteWriter {
            object: self,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Deletes the object (succeeds if there is none).
    pub(crate) fn delete(&self) -> Result<()> {
        let (client, key) = (self.client.clone(), self.key.clone());
        self.runtime.run(async move { client.delete(&key).await })
    }

    /// Runs one step of `writer` on the runtime under the request timeout, handing the
    /// writer back (`None` only if the runtime lost the task).
    fn writer_step(&self, mut writer: Writer, step: Step) -> (Option<Writer>, Result<()>) {
        let (client, key) = (self.client.clone(), self.key.clone());
        let timeout = client.request_timeout();
        let what = match step {
            Step::Write(_) => "writing",
            Step::Close => "completing the upload of",
            Step::Abort => "aborting the upload of",
        };
        let out = self.runtime.run(async move {
            let work = async {
                match step {
                    Step::Write(body) => writer.write(body).await,
                    Step::Close => writer.close().await.map(|_| ()),
                    Step::Abort => writer.abort().await,
                }
            };
            let r = match tokio::time::timeout(timeout, work).await {
                Ok(r) => r.map_err(|e| client.failure(what, &key, e)),
                Err(_) => Err(timed_out(&client, what, &key, timeout)),
            };
            Ok((writer, r))
        });
        match out {
            Ok((writer, r)) => (Some(writer), r),
            Err(e) => (None, Err(e)),
        }
    }
}

/// What [`RemoteObject::writer_step`] does.
enum Step {
    Write(Buffer),
    Close,
    Abort,
}

fn timed_out(client: &Client, what: &str, key: &str, timeout: Duration) -> Error {
    err!(
        Unavailable,
        "{what} {key}: object store at {} did not answer within {} ms",
        client.endpoint(),
        timeout.as_millis()
    )
}

/// Fetches `dst.len()` bytes from `at` in chunk-sized ranged `GET`s, `in_flight` at a time,
/// copying each into its place. Returns the requests made and bytes received.
async fn fetch_ranges(
    client: Arc<Client>,
    key: Arc<str>,
    dst: &mut [u8],
    at: u64,
    in_flight: usize,
) -> Result<(u64, u64)> {
    let len = dst.len() as u64;
    let chunks = len.div_ceil(CHUNK);
    let mut tasks = tokio::task::JoinSet::new();
    let (mut next, mut requests, mut received) = (0u64, 0u64, 0u64);
    let spawn = |tasks: &mut tokio::task::JoinSet<_>, i: u64| {
        let (client, key) = (client.clone(), key.clone());
        let range = at + i * CHUNK..at + ((i + 1) * CHUNK).min(len);
        tasks.spawn(async move { (i, client.get(&key, range).await) });
    };
    while next < chunks.min(in_flight as u64) {
        spawn(&mut tasks, next);
        next += 1;
    }
    while let Some(done) = tasks.join_next().await {
        let (i, got) =
            done.map_err(|e| err!(Internal, "a ranged read of {key} ended abnormally: {e}"))?;
        requests += 1;
        let buf = got?.ok_or_else(|| err!(NotFound, "object {key} is gone"))?;
        let start = (i * CHUNK) as usize;
        let want = ((i + 1) * CHUNK).min(len) as usize - start;
        received += buf.len() as u64;
        if buf.len() != want {
            return Err(err!(
                Corrupt,
                "object {key} returned {} bytes at {}, {want} expected (shorter than its header \
                 says: replaced while open?)",
                buf.len(),
                at + start as u64
            ));
        }
        copy_buffer(&buf, &mut dst[start..start + want]);
        if next < chunks {
            spawn(&mut tasks, next);
            next += 1;
        }
    }
    Ok((requests, received))
}

/// Copies the (possibly non-contiguous) `buf` into `dst` of the same length.
fn copy_buffer(buf: &Buffer, dst: &mut [u8]) {
    let mut at = 0;
    for piece in buf.clone() {
        dst[at..at + piece.len()].copy_from_slice(&piece);
        at += piece.len();
    }
}

/// A streaming write of one object: bytes go out in parts as they come; the object
/// appears only at [`RemoteWriter::finish`]; dropped unfinished, the upload is aborted.
pub(crate) struct RemoteWriter<'o> {
    object: &'o RemoteObject,
    /// `None` once finished or aborted.
    writer: Mutex<Option<Writer>>,
}

impl RemoteWriter<'_> {
    /// Appends `bytes` (copied: the caller reuses its buffer), waiting while the parts in
    /// flight are at their bound.
    pub(crate) fn write_all(&self, bytes: &[u8]) -> Result<()> {
        let mut slot = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let writer = slot
            .take()
            .ok_or_else(|| err!(Internal, "write to a finished or failed tensor upload"))?;
        let body = Buffer::from(bytes.to_vec());
        let (writer, r) = self.object.writer_step(writer, Step::Write(body));
        *slot = writer;
        r
    }

    /// Completes the upload: the object appears, whole.
    pub(crate) fn finish(&self) -> Result<()> {
        let mut slot = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let writer = slot
            .take()
            .ok_or_else(|| err!(Internal, "tensor upload finished twice or failed"))?;
        let (writer, r) = self.object.writer_step(writer, Step::Close);
        if r.is_err() {
            *slot = writer; // aborted on drop
        }
        r
    }
}

impl Drop for RemoteWriter<'_> {
    fn drop(&mut self) {
        let slot = self.writer.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(writer) = slot.take() {
            // Best effort: a failed abort leaves parts of an upload that was never
            // completed; the object itself never appears either way.
            let _ = self.object.writer_step(writer, Step::Abort);
        }
    }
}
