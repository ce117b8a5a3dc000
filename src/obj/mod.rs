//! The S3 object tier: KV blocks shared between hosts through an S3 object store, one
//! object per block.
//!
//! - A block of key `k` in namespace `ns` is the object `<prefix>/<ns>/<hh>/<hex>.kvb` of the
//!   bucket `s3://bucket/prefix` names ([`object`]); its bytes are exactly an fs block file
//!   (a safetensors file with the key, payload length and xxh3-64 checksum in its header),
//!   built and checked with the fs store's codec. A block stored here can be copied into an
//!   fs store and back unchanged.
//! - Store is publish-once: a conditional `PUT` with `If-None-Match: *`; the server's `412`
//!   means another writer published the key first, a dedup, not an error.
//! - Load fetches the object in one ranged `GET` and verifies key, length and checksum while
//!   copying the payload out. A bad object is a miss plus a counter; it stays on the server
//!   until `kvr obj verify --repair` removes it (a load never deletes what it cannot vouch
//!   for on a store others share).
//! - Requests go through Apache OpenDAL on kvr's own async runtime ([`runtime`]), at most
//!   `concurrency` in flight, each bounded by the connect and request timeouts: a server that
//!   is down, too slow or refusing yields `Unavailable` naming the endpoint and the error,
//!   never a hang, and the same handle works again once the server is back.

pub(crate) mod client;
pub mod config;
pub mod maintenance;
mod metrics;
pub(crate) mod object;
pub(crate) mod runtime;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::Semaphore;

pub use client::Listed;
pub use config::{Credentials, ObjConfig, ObjStats, ObjUrl};
pub use object::object_path;

use crate::fs::format::TensorSpec;
use crate::fs::path::validate_namespace;
use crate::fs::{LoadRequest, StoreRequest, Stored};
use crate::io::job::Completer;
use crate::io::Job;
use crate::{err, Error, ErrorKind, Key, Result};
use client::Client;
use object::Checked;
use runtime::RuntimeHandle;

/// This process's counters of one store (read by [`ObjStore::stats`] and the metrics
/// registry, `metrics.rs`).
#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    stores: AtomicU64,
    dedup: AtomicU64,
    removes: AtomicU64,
    unavailable: AtomicU64,
}

/// Tasks of this store still running on the runtime (async batch items); closing waits for
/// them, so callers' buffers are never touched after the store is gone.
#[derive(Default)]
struct Pending {
    count: Mutex<usize>,
    idle: Condvar,
}

struct Inner {
    client: Client,
    namespace: String,
    /// The store's URL, for messages.
    url: String,
    /// Bounds the requests in flight over every caller and batch.
    slots: Semaphore,
    counters: Counters,
    latency: crate::metrics::OpLatencies,
    pending: Pending,
}

/// An open object store. Cheap to share between threads (`&ObjStore` is `Sync`).
pub struct ObjStore {
    inner: Arc<Inner>,
    _metrics: crate::metrics::Registration,
    // Dropped after `inner`: the last store closed shuts the runtime down.
    runtime: RuntimeHandle,
}

/// Runs its closure when dropped (records a latency on every way out of a call).
struct Defer<F: FnMut()>(F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// A raw pointer that may cross to a runtime thread; the batch contracts keep it valid.
struct SendPtr<T>(*mut T);
// SAFETY: the pointer is only dereferenced by the one task it was handed to, while the
// caller keeps the buffer valid and unaliased until the job completes (the contract of
// `submit_store` / `submit_load`).
unsafe impl<T> Send for SendPtr<T> {}

impl ObjStore {
    /// Opens a store: checks the config, starts the runtime if no store holds it, and makes
    /// one `HEAD` request so a wrong endpoint, credentials or bucket fail here
    /// (`Unavailable`, `Permission`, `NotFound`) rather than at the first store.
    pub fn open(cfg: &ObjConfig) -> Result<ObjStore> {
        validate_namespace(&cfg.namespace)?;
        let resolved = cfg.resolve()?;
        let runtime = RuntimeHandle::acquire()?;
        let client = Client::new(&resolved)?;
        let inner = Arc::new(Inner {
            client,
            namespace: cfg.namespace.clone(),
            url: cfg.url.clone(),
            slots: Semaphore::new(resolved.concurrency),
            counters: Counters::default(),
            latency: Default::default(),
            pending: Pending::default(),
        });
        let _metrics = crate::metrics::register(&inner);
        let store = ObjStore {
            inner,
            _metrics,
            runtime,
        };
        // Any object name will do: a missing one answers 404, which proves the endpoint,
        // the bucket and the credentials.
        let probe = format!("{}/.kvr-open-probe", cfg.namespace);
        let inner = store.inner.clone();
        store
            .runtime
            .run(async move { inner.client.head(&probe).await })
            .map_err(|e| e.context(format!("opening object store {}", cfg.url)))?;
        Ok(store)
    }

    /// The store's URL as given.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The S3 endpoint requests go to.
    pub fn endpoint(&self) -> &str {
        self.inner.client.endpoint()
    }

    /// The object name of `key`'s block, relative to the URL's prefix.
    pub fn object_path(&self, key: &Key) -> String {
        object::object_path(&self.inner.namespace, key)
    }

    /// Stores `data` as a `U8` block under `key`, unless an object of that key exists.
    pub fn store(&self, key: &Key, data: &[u8]) -> Result<Stored> {
        self.store_tensor(key, data, &TensorSpec::bytes(data.len() as u64))
    }

    /// Stores `data` recording the tensor's dtype and shape in the object's header.
    pub fn store_tensor(&self, key: &Key, data: &[u8], tensor: &TensorSpec) -> Result<Stored> {
        let body = self.inner.prepare(key, data, tensor)?;
        let (inner, key, len) = (self.inner.clone(), *key, data.len() as u64);
        self.runtime
            .run(async move { inner.publish(&key, body, len).await })
    }

    /// Loads the block of `key` into `dst`, whose length must equal the stored payload's.
    /// `NotFound` if absent or bad (a bad object is counted in `corrupt` and kept);
    /// `LayoutMismatch` if it is intact but of another length. On error `dst`'s contents are
    /// unspecified.
    pub fn load(&self, key: &Key, dst: &mut [u8]) -> Result<u64> {
        if dst.is_empty() {
            return Err(Error::invalid("load destination is empty"));
        }
        let (inner, key, len) = (self.inner.clone(), *key, dst.len());
        let ptr = SendPtr(dst.as_mut_ptr());
        self.runtime.run(async move {
            let ptr = ptr;
            // SAFETY: `dst` is borrowed mutably for this whole call, and `run` returns only
            // once this future has finished (or was dropped by a panic), so the slice is
            // valid and unaliased for as long as the future uses it.
            let dst = unsafe { std::slice::from_raw_parts_mut(ptr.0, len) };
            inner.fetch(&key, dst).await
        })
    }

    /// Whether an object of `key` exists (one `HEAD`).
    pub fn contains(&self, key: &Key) -> Result<bool> {
        let (inner, key) = (self.inner.clone(), *key);
        let started = std::time::Instant::now();
        let r = self.runtime.run(async move { inner.exists(&key).await });
        self.inner.latency.lookup.record_since(started);
        r
    }

    /// How many leading `keys` exist: the reusable prefix of a prompt. Asks in waves of up
    /// to `concurrency` concurrent `HEAD`s and stops after the first wave with a miss.
    pub fn lookup_prefix(&self, keys: &[Key]) -> Result<usize> {
        let (inner, keys) = (self.inner.clone(), keys.to_vec());
        let started = std::time::Instant::now();
        let _record = Defer(|| self.inner.latency.lookup.record_since(started));
        self.runtime.run(async move {
            let wave = inner.slots.available_permits().max(1);
            let mut found = 0;
            for chunk in keys.chunks(wave) {
                let answers: Vec<_> = chunk
                    .iter()
                    .map(|k| {
                        let inner = inner.clone();
                        let k = *k;
                        tokio::spawn(async move { inner.exists(&k).await })
                    })
                    .collect();
                let mut all = true;
                for a in answers {
                    let present = a
                        .await
                        .map_err(|e| err!(Internal, "prefix lookup task failed: {e}"))??;
                    if all && present {
                        found += 1;
                    } else {
                        all = false;
                    }
                }
                if !all {
                    break;
                }
            }
            Ok(found)
        })
    }

    /// Removes the block of `key`; `NotFound` if there was none (a `HEAD`, then the
    /// `DELETE`).
    pub fn remove(&self, key: &Key) -> Result<()> {
        let (inner, key) = (self.inner.clone(), *key);
        self.runtime.run(async move {
            let path = object::object_path(&inner.namespace, &key);
            if !inner.exists(&key).await? {
                return Err(err!(NotFound, "no block {key} in {} ({path})", inner.url));
            }
            let _slot = inner.slot().await?;
            inner.count(inner.client.delete(&path).await)?;
            inner.counters.removes.fetch_add(1, Relaxed);
            Ok(())
        })
    }

    /// This process's counters.
    pub fn stats(&self) -> ObjStats {
        self.inner.stats()
    }

    /// Stores a batch, up to `concurrency` requests in flight; each item ends with
    /// `Ok(bytes written)` (0 when deduplicated) or its error.
    ///
    /// # Safety
    /// Every `src` must be valid for reads of `len` bytes until the returned job has
    /// completed (dropping the job waits for it).
    pub unsafe fn submit_store(&self, items: &[StoreRequest]) -> Job {
        let (job, completers) = Job::new(items.len());
        for (it, done) in items.iter().zip(completers) {
            let src = SendPtr(it.src.cast_mut());
            let (key, len) = (it.key, it.len);
            self.spawn_item(done, move |inner| async move {
                let src = src;
                if src.0.is_null() || len == 0 {
                    return Err(Error::invalid("store item has a NULL or empty buffer"));
                }
                // SAFETY: valid for reads of `len` bytes until the job completes (this
                // function's contract); the job cannot complete before this item finishes.
                let data = unsafe { std::slice::from_raw_parts(src.0.cast_const(), len) };
                let body = inner.prepare(&key, data, &TensorSpec::bytes(len as u64))?;
                let stored = inner.publish(&key, body, len as u64).await?;
                Ok(if stored == Stored::Written {
                    len as u64
                } else {
                    0
                })
            });
        }
        job
    }

    /// Loads a batch, up to `concurrency` requests in flight; each item ends with
    /// `Ok(bytes loaded)` or its error (as for [`ObjStore::load`]).
    ///
    /// # Safety
    /// Every `dst` must be valid for writes of `len` bytes, and not accessed by anyone else,
    /// until the returned job has completed (dropping the job waits for it).
    pub unsafe fn submit_load(&self, items: &[LoadRequest]) -> Job {
        let (job, completers) = Job::new(items.len());
        for (it, done) in items.iter().zip(completers) {
            let dst = SendPtr(it.dst);
            let (key, len) = (it.key, it.len);
            self.spawn_item(done, move |inner| async move {
                let dst = dst;
                if dst.0.is_null() || len == 0 {
                    return Err(Error::invalid("load item has a NULL or empty buffer"));
                }
                // SAFETY: valid and exclusively ours for `len` bytes until the job completes
                // (this function's contract).
                let dst = unsafe { std::slice::from_raw_parts_mut(dst.0, len) };
                inner.fetch(&key, dst).await
            });
        }
        job
    }

    /// Runs one batch item on the runtime, counted in `pending` until it has finished.
    fn spawn_item<F>(&self, done: Completer, item: impl FnOnce(Arc<Inner>) -> F + Send + 'static)
    where
        F: std::future::Future<Output = Result<u64>> + Send,
    {
        let inner = self.inner.clone();
        *inner.pending.lock() += 1;
        self.runtime.spawn(async move {
            let result = item(inner.clone()).await;
            done.finish(result);
            let mut n = inner.pending.lock();
            *n -= 1;
            if *n == 0 {
                inner.pending.idle.notify_all();
            }
        });
    }
}

impl Drop for ObjStore {
    fn drop(&mut self) {
        // Batch items still running hold pointers into callers' buffers and need the
        // runtime: let them finish (each request is bounded by its timeout).
        let mut n = self.inner.pending.lock();
        while *n > 0 {
            n = self
                .inner
                .pending
                .idle
                .wait(n)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        // A poisoned lock only means a thread panicked while holding it; the count is sound.
        self.count.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn stats(&self) -> ObjStats {
        let c = &self.counters;
        ObjStats {
            hits: c.hits.load(Relaxed),
            misses: c.misses.load(Relaxed),
            corrupt: c.corrupt.load(Relaxed),
            bytes_read: c.bytes_read.load(Relaxed),
            bytes_written: c.bytes_written.load(Relaxed),
            stores: c.stores.load(Relaxed),
            dedup_hits: c.dedup.load(Relaxed),
            removes: c.removes.load(Relaxed),
            unavailable: c.unavailable.load(Relaxed),
        }
    }

    /// Waits for a request slot (bounded: every request holding one has a timeout).
    async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        self.slots
            .acquire()
            .await
            .map_err(|_| err!(Closed, "object store {} is closing", self.url))
    }

    /// Counts a request that failed for the server's reasons.
    fn count<T>(&self, r: Result<T>) -> Result<T> {
        if matches!(&r, Err(e) if e.kind() == ErrorKind::Unavailable) {
            self.counters.unavailable.fetch_add(1, Relaxed);
        }
        r
    }

    /// The object's bytes for a store call (checks the tensor against the payload).
    fn prepare(&self, key: &Key, data: &[u8], tensor: &TensorSpec) -> Result<opendal::Buffer> {
        if data.is_empty() {
            return Err(Error::invalid("store payload is empty"));
        }
        tensor.check(data.len() as u64)?;
        Ok(object::encode(key, data, tensor))
    }

    /// Publishes a prepared object once: `Written`, or `AlreadyPresent` on the server's 412.
    async fn publish(&self, key: &Key, body: opendal::Buffer, len: u64) -> Result<Stored> {
        let path = object::object_path(&self.namespace, key);
        let _slot = self.slot().await?;
        let started = std::time::Instant::now();
        let created = self.count(self.client.put_new(&path, body).await);
        self.latency.store.record_since(started);
        let created = created?;
        let c = &self.counters;
        if created {
            c.stores.fetch_add(1, Relaxed);
            c.bytes_written.fetch_add(len, Relaxed);
            Ok(Stored::Written)
        } else {
            c.dedup.fetch_add(1, Relaxed);
            Ok(Stored::AlreadyPresent)
        }
    }

    async fn exists(&self, key: &Key) -> Result<bool> {
        let path = object::object_path(&self.namespace, key);
        let _slot = self.slot().await?;
        Ok(self.count(self.client.head(&path).await)?.is_some())
    }

    /// Fetches and verifies `key`'s block into `dst`, counting the outcome.
    async fn fetch(&self, key: &Key, dst: &mut [u8]) -> Result<u64> {
        let c = &self.counters;
        let started = std::time::Instant::now();
        let r = self.fetch_checked(key, dst).await;
        self.latency.load.record_since(started);
        match &r {
            Ok(n) => {
                c.hits.fetch_add(1, Relaxed);
                c.bytes_read.fetch_add(*n, Relaxed);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                c.misses.fetch_add(1, Relaxed);
            }
            Err(_) => {}
        }
        r
    }

    async fn fetch_checked(&self, key: &Key, dst: &mut [u8]) -> Result<u64> {
        let path = object::object_path(&self.namespace, key);
        let miss = || err!(NotFound, "no block {key} in {} ({path})", self.url);
        let _slot = self.slot().await?;
        let mut want = object::first_fetch(dst.len());
        let mut complete = false;
        loop {
            let fetched = match self.client.get(&path, 0..want).await {
                // OpenDAL refuses a ranged read the object is too short for: ask for its
                // size and fetch exactly that (only a bad object gets here).
                Err(e) if e.kind() == ErrorKind::Io && !complete => {
                    match self.count(self.client.head(&path).await)? {
                        Some(size) => {
                            (want, complete) = (size, true);
                            continue;
                        }
                        None => None,
                    }
                }
                r => self.count(r)?,
            };
            let Some(buf) = fetched else {
                return Err(miss());
            };
            let checked = object::check_into(&buf, complete, key, dst);
            match checked {
                Ok(Checked::Loaded(h)) => return Ok(h.payload_len),
                Ok(Checked::FetchWhole(n)) if !complete && n > want => want = n,
                Ok(Checked::FetchWhole(_)) => {
                    return Err(self.bad(&path, key, "the object ends before its header does"))
                }
                Ok(Checked::OtherLength {
                    payload_len,
                    object_len,
                }) => {
                    let size = self.count(self.client.head(&path).await)?;
                    if size.is_some_and(|s| s != object_len) {
                        return Err(self.bad(&path, key, "its size disagrees with its header"));
                    }
                    return Err(err!(
                        LayoutMismatch,
                        "block {key} in {} holds {payload_len} payload bytes, the destination \
                         has {}",
                        self.url,
                        dst.len()
                    ));
                }
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    return Err(self.bad(&path, key, &e.to_string()))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A bad object: counted, kept, reported as a miss.
    fn bad(&self, path: &str, key: &Key, why: &str) -> Error {
        self.counters.corrupt.fetch_add(1, Relaxed);
        err!(
            NotFound,
            "block {key} in {} is bad and was treated as a miss ({path}: {why}); \
             `kvr obj verify --repair` removes it",
            self.url
        )
    }
}
