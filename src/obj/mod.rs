//! The S3 object tier: KV blocks shared between hosts through an S3 object store, one
//! object per block.
//!
//! - Keys are the engine's, 1..=256 bytes. A block of key `k` in namespace `ns` is the
//!   object `<prefix>/<ns>/<hh>/<hex>.kvb` of the bucket `s3://bucket/prefix` names
//!   (`object`), where `hex` is the block name the fs store gives its file
//!   ([`crate::key::block_name`]: the key itself for a 16-byte key, else the xxh3-128 of
//!   namespace and key). Its bytes are exactly an fs block file (a safetensors file with the
//!   whole key, payload length and xxh3-64 checksum in its header), built and checked with
//!   the fs store's codec: a block stored here can be copied into an fs store and back
//!   unchanged. Loads compare the whole key: an object of another key with the same name is
//!   a miss, never that key's bytes.
//! - A block is a list of segments, gathered into the request body on store and scattered
//!   from the response on load; one contiguous buffer is a list of one.
//! - Store is publish-once: a conditional `PUT` with `If-None-Match: *`; the server's `412`
//!   means another writer published the key first, a dedup, not an error.
//! - Load fetches the object in one ranged `GET` and verifies key, length and checksum while
//!   copying the payload out. A bad object is a miss plus a counter; it stays on the server
//!   until `kvr obj verify --repair` removes it (a load never deletes what it cannot vouch
//!   for on a store others share).
//! - Requests go through Apache OpenDAL on kvr's own async runtime (`runtime`), at most
//!   `concurrency` in flight, each bounded by the connect and request timeouts: a server that
//!   is down, too slow or refusing yields `Unavailable` naming the endpoint and the error,
//!   never a hang, and the same handle works again once the server is back.

mod body_pool;
pub(crate) mod client;
pub mod config;
mod http;
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
use crate::fs::{check_raw_segments, LoadItem, LoadRequest, StoreItem, StoreRequest, Stored};
use crate::io::job::Completer;
use crate::io::vectored::{payload_len, payload_len_mut, RawSegment, SegmentBatch};
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
    /// Reused request bodies for stores.
    bodies: body_pool::BodyPool,
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

/// A blocking load's destination segments, crossing to a runtime thread.
struct SendSegments(Vec<RawSegment>);
// SAFETY: the segments are only written by the one future they were handed to, while
// `load_segments` holds their mutable borrow (it blocks until that future is done).
unsafe impl Send for SendSegments {}

impl SendSegments {
    /// The segments as slices.
    ///
    /// # Safety
    /// Every segment must be valid for unaliased writes of its length for `'a`.
    unsafe fn slices_mut<'a>(&self) -> Vec<&'a mut [u8]> {
        self.0
            .iter()
            // SAFETY: the caller's contract.
            .map(|s| unsafe { std::slice::from_raw_parts_mut(s.ptr, s.len) })
            .collect()
    }
}

/// An async batch's keys and segment lists, copied at submit (the fs store's
/// [`SegmentBatch`]), with each item's part.
struct SendBatch {
    batch: SegmentBatch,
    entries: Vec<crate::io::vectored::BatchEntry>,
}

impl SendBatch {
    fn of<'a>(items: impl Iterator<Item = (&'a [u8], &'a [RawSegment])>) -> SendBatch {
        let mut batch = SegmentBatch::default();
        let entries = items.map(|(k, s)| batch.push(k, s)).collect();
        SendBatch { batch, entries }
    }
}

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
            bodies: body_pool::BodyPool::new(resolved.concurrency),
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

    /// The object name of the 16-byte `key`'s block, relative to the URL's prefix.
    pub fn object_path(&self, key: &Key) -> String {
        object::object_path(&self.inner.namespace, key)
    }

    /// The object name of the whole engine `key`'s block, relative to the URL's prefix
    /// (whether or not it exists): the fs store's block file name, under the namespace.
    pub fn object_path_of(&self, key: &[u8]) -> String {
        object::object_path(&self.inner.namespace, &self.inner.name(key))
    }

    /// Stores `data` as a `U8` block under the 16-byte `key`, unless an object of that key
    /// exists.
    pub fn store(&self, key: &Key, data: &[u8]) -> Result<Stored> {
        self.store_segments(&key.0, &[data], None)
    }

    /// Stores `data` recording the tensor's dtype and shape in the object's header.
    pub fn store_tensor(&self, key: &Key, data: &[u8], tensor: &TensorSpec) -> Result<Stored> {
        self.store_segments(&key.0, &[data], Some(tensor))
    }

    /// Stores the concatenation of `segments` (each non-empty) under the whole engine `key`
    /// (1..=256 bytes, recorded in the object's header), as a `U8` block or as `tensor`,
    /// unless an object of that key's name exists (publish-once: `AlreadyPresent`).
    pub fn store_segments(
        &self,
        key: &[u8],
        segments: &[&[u8]],
        tensor: Option<&TensorSpec>,
    ) -> Result<Stored> {
        let (body, len) = self.inner.prepare(key, segments, tensor)?;
        let (inner, key) = (self.inner.clone(), key.to_vec());
        self.runtime
            .run(async move { inner.publish(&key, body, len).await })
    }

    /// Loads the block of the 16-byte `key` into `dst`, whose length must equal the stored
    /// payload's. `NotFound` if absent or bad (a bad object is counted in `corrupt` and kept);
    /// `LayoutMismatch` if it is intact but of another length. On error `dst`'s contents are
    /// unspecified.
    pub fn load(&self, key: &Key, dst: &mut [u8]) -> Result<u64> {
        if dst.is_empty() {
            return Err(Error::invalid("load destination is empty"));
        }
        self.load_segments(&key.0, &mut [dst])
    }

    /// Loads the block of the whole engine `key` scattered over `segments` (each non-empty),
    /// whose lengths must sum to the stored payload's (else `LayoutMismatch`). Errors as for
    /// [`ObjStore::load`]; an object of another key with the same name is `NotFound` (not
    /// counted as corrupt: it is another key's intact block).
    pub fn load_segments(&self, key: &[u8], segments: &mut [&mut [u8]]) -> Result<u64> {
        crate::key::check_key(key)?;
        payload_len_mut(segments)?;
        let raw: Vec<RawSegment> = segments
            .iter_mut()
            .map(|s| RawSegment {
                ptr: s.as_mut_ptr(),
                len: s.len(),
            })
            .collect();
        let segs = SendSegments(raw);
        let (inner, key) = (self.inner.clone(), key.to_vec());
        self.runtime.run(async move {
            let segs = segs;
            // SAFETY: `segments` are borrowed mutably for this whole call, and `run` returns
            // only once this future has finished (or was dropped by a panic), so the slices
            // are valid and unaliased for as long as the future uses them.
            let mut dst = unsafe { segs.slices_mut() };
            inner.fetch(&key, &mut dst).await
        })
    }

    /// Whether an object of the 16-byte `key` exists (one `HEAD`).
    pub fn contains(&self, key: &Key) -> Result<bool> {
        let (inner, key) = (self.inner.clone(), *key);
        let started = std::time::Instant::now();
        let r = self.runtime.run(async move { inner.exists(&key.0).await });
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
                let keys: Vec<Vec<u8>> = chunk.iter().map(|k| k.0.to_vec()).collect();
                let answers = inner.clone().exist_all(keys).await?;
                let leading = answers.iter().take_while(|&&p| p).count();
                found += leading;
                if leading < answers.len() {
                    break;
                }
            }
            Ok(found)
        })
    }

    /// Per-key presence of whole engine keys: `present[i]` is set to 1 when an object of
    /// `keys[i]`'s name exists, else 0; returns how many exist. All keys are asked at once,
    /// up to `concurrency` `HEAD`s in flight (no key is known without asking: other hosts
    /// store and remove objects). Keys that are not 1..=256 bytes are absent. A `HEAD` finds
    /// the name only: a colliding object of another key counts as present here and is a
    /// miss on load.
    pub fn lookup(&self, keys: &[&[u8]], present: &mut [u8]) -> Result<usize> {
        if keys.len() != present.len() {
            return Err(err!(
                InvalidArgument,
                "{} keys but {} presence bytes",
                keys.len(),
                present.len()
            ));
        }
        let started = std::time::Instant::now();
        let _record = Defer(|| self.inner.latency.lookup.record_since(started));
        present.fill(0);
        let asked: Vec<usize> = (0..keys.len())
            .filter(|&i| crate::key::check_key(keys[i]).is_ok())
            .collect();
        if asked.is_empty() {
            return Ok(0);
        }
        let inner = self.inner.clone();
        let owned: Vec<Vec<u8>> = asked.iter().map(|&i| keys[i].to_vec()).collect();
        let answers = self
            .runtime
            .run(async move { inner.exist_all(owned).await })?;
        for (&i, yes) in asked.iter().zip(answers) {
            present[i] = yes.into();
        }
        Ok(present.iter().filter(|&&p| p != 0).count())
    }

    /// Removes the block of the 16-byte `key`; `NotFound` if there was none (a `HEAD`, then
    /// the `DELETE`).
    pub fn remove(&self, key: &Key) -> Result<()> {
        self.remove_key(&key.0)
    }

    /// Removes the block of the whole engine `key` (whatever key a colliding object of the
    /// same name holds); `NotFound` if there was none.
    pub fn remove_key(&self, key: &[u8]) -> Result<()> {
        crate::key::check_key(key)?;
        let (inner, key) = (self.inner.clone(), key.to_vec());
        self.runtime.run(async move {
            let path = inner.path(&key);
            if !inner.exists(&key).await? {
                return Err(err!(
                    NotFound,
                    "no block {} in {} ({path})",
                    Key::display_bytes(&key),
                    inner.url
                ));
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
        // SAFETY: the items' segments are the requests' buffers: this function's contract.
        crate::fs::as_store_items(items, |items| unsafe { self.submit_store_items(items) })
    }

    /// Stores a batch of whole-key, segmented blocks, up to `concurrency` requests in
    /// flight; each item ends with `Ok(bytes written)` (0 when deduplicated) or its error.
    /// The keys and segment lists are copied here.
    ///
    /// # Safety
    /// Every segment must be valid for reads of its length until the returned job has
    /// completed (dropping the job waits for it).
    pub unsafe fn submit_store_items(&self, items: &[StoreItem]) -> Job {
        let (job, completers) = Job::new(items.len());
        let batch = Arc::new(SendBatch::of(items.iter().map(|it| (it.key, it.segments))));
        for (e, done) in batch.entries.iter().copied().zip(completers) {
            let batch = batch.clone();
            self.spawn_item(done, move |inner| async move {
                let (key, segments) = (batch.batch.key(e), batch.batch.segments(e));
                check_raw_segments(segments, "store")?;
                let data: Vec<&[u8]> = segments
                    .iter()
                    // SAFETY: valid for reads until the job completes (this function's
                    // contract; the job cannot complete before this item finishes); checked
                    // non-null and non-empty above.
                    .map(|s| unsafe { std::slice::from_raw_parts(s.ptr.cast_const(), s.len) })
                    .collect();
                // The body is copied once a slot is free: a batch holds at most
                // `concurrency` copies at once, not one per item.
                let slot = inner.slot().await?;
                let (body, len) = inner.prepare(key, &data, None)?;
                let stored = inner.put(key, body, len).await;
                drop(slot);
                let stored = stored?;
                Ok(if stored == Stored::Written { len } else { 0 })
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
        // SAFETY: the items' segments are the requests' buffers: this function's contract.
        crate::fs::as_load_items(items, |items| unsafe { self.submit_load_items(items) })
    }

    /// Loads a batch of whole-key, segmented blocks, up to `concurrency` requests in flight;
    /// each item ends with `Ok(bytes loaded)` or its error (as for
    /// [`ObjStore::load_segments`]). The keys and segment lists are copied here.
    ///
    /// # Safety
    /// Every segment must be valid for writes of its length, and not accessed by anyone
    /// else, until the returned job has completed (dropping the job waits for it).
    pub unsafe fn submit_load_items(&self, items: &[LoadItem]) -> Job {
        let (job, completers) = Job::new(items.len());
        let batch = Arc::new(SendBatch::of(items.iter().map(|it| (it.key, it.segments))));
        for (e, done) in batch.entries.iter().copied().zip(completers) {
            let batch = batch.clone();
            self.spawn_item(done, move |inner| async move {
                let (key, segments) = (batch.batch.key(e), batch.batch.segments(e));
                check_raw_segments(segments, "load")?;
                crate::key::check_key(key)?;
                let mut dst: Vec<&mut [u8]> = segments
                    .iter()
                    // SAFETY: valid and exclusively ours until the job completes (this
                    // function's contract); checked non-null and non-empty above.
                    .map(|s| unsafe { std::slice::from_raw_parts_mut(s.ptr, s.len) })
                    .collect();
                inner.fetch(key, &mut dst).await
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

    /// The block name of a whole engine key in this store's namespace.
    fn name(&self, key: &[u8]) -> Key {
        crate::key::block_name(self.namespace.as_bytes(), key)
    }

    /// The object name of a whole engine key's block.
    fn path(&self, key: &[u8]) -> String {
        object::object_path(&self.namespace, &self.name(key))
    }

    /// The object's bytes and payload length for a store call (checks the key, the
    /// segments and the tensor against the payload; no tensor: `U8` bytes).
    fn prepare(
        &self,
        key: &[u8],
        segments: &[&[u8]],
        tensor: Option<&TensorSpec>,
    ) -> Result<(opendal::Buffer, u64)> {
        crate::key::check_key(key)?;
        let len = payload_len(segments)?;
        let bytes = TensorSpec::bytes(len as u64);
        let tensor = tensor.unwrap_or(&bytes);
        tensor.check(len as u64)?;
        Ok((
            object::encode(&self.bodies, key, segments, len, tensor),
            len as u64,
        ))
    }

    /// Publishes a prepared object once: `Written`, or `AlreadyPresent` on the server's 412.
    async fn publish(&self, key: &[u8], body: opendal::Buffer, len: u64) -> Result<Stored> {
        let _slot = self.slot().await?;
        self.put(key, body, len).await
    }

    /// [`Inner::publish`] for a caller that holds a slot.
    async fn put(&self, key: &[u8], body: opendal::Buffer, len: u64) -> Result<Stored> {
        let path = self.path(key);
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

    async fn exists(&self, key: &[u8]) -> Result<bool> {
        let path = self.path(key);
        let _slot = self.slot().await?;
        Ok(self.count(self.client.head(&path).await)?.is_some())
    }

    /// Whether each of `keys` exists, asked concurrently (up to `concurrency` in flight).
    async fn exist_all(self: Arc<Self>, keys: Vec<Vec<u8>>) -> Result<Vec<bool>> {
        let answers: Vec<_> = keys
            .into_iter()
            .map(|k| {
                let inner = self.clone();
                tokio::spawn(async move { inner.exists(&k).await })
            })
            .collect();
        let mut out = Vec::with_capacity(answers.len());
        for a in answers {
            out.push(
                a.await
                    .map_err(|e| err!(Internal, "lookup task failed: {e}"))??,
            );
        }
        Ok(out)
    }

    /// Fetches and verifies `key`'s block into `dst`'s segments, counting the outcome.
    async fn fetch(&self, key: &[u8], dst: &mut [&mut [u8]]) -> Result<u64> {
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

    async fn fetch_checked(&self, key: &[u8], dst: &mut [&mut [u8]]) -> Result<u64> {
        let len = payload_len_mut(dst)?;
        let path = self.path(key);
        let shown = Key::display_bytes(key);
        let miss = || err!(NotFound, "no block {shown} in {} ({path})", self.url);
        let _slot = self.slot().await?;
        let mut want = object::first_fetch(len);
        let mut complete = false;
        loop {
            // Checked as it arrives: the response is never held whole (see `Checker`).
            let mut checker = object::Checker::new(&self.namespace, key, dst, len);
            let fetched = {
                let mut feed = |piece: &[u8]| checker.feed(piece);
                self.client.get_into(&path, 0..want, &mut feed).await
            };
            let found = match fetched {
                // OpenDAL refuses a ranged read the object is too short for: ask for its
                // size and fetch exactly that (only a bad object gets here).
                Err(e) if e.kind() == ErrorKind::Io && !complete => {
                    match self.count(self.client.head(&path).await)? {
                        Some(size) => {
                            (want, complete) = (size, true);
                            continue;
                        }
                        None => false,
                    }
                }
                r => self.count(r)?,
            };
            if !found {
                return Err(miss());
            }
            let checked = checker.finish(complete);
            match checked {
                Ok(Checked::Loaded(h)) => return Ok(h.payload_len),
                Ok(Checked::OtherKey(other)) => {
                    return Err(err!(
                        NotFound,
                        "no block {shown} in {}: the object of its name ({path}) holds another \
                         key ({}), a name collision",
                        self.url,
                        Key::display_bytes(&other)
                    ))
                }
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
                        "block {shown} in {} holds {payload_len} payload bytes, the \
                         destination has {len}",
                        self.url
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
    fn bad(&self, path: &str, key: &[u8], why: &str) -> Error {
        self.counters.corrupt.fetch_add(1, Relaxed);
        err!(
            NotFound,
            "block {} in {} is bad and was treated as a miss ({path}: {why}); \
             `kvr obj verify --repair` removes it",
            Key::display_bytes(key),
            self.url
        )
    }
}
