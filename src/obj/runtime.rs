//! kvr's own async runtime for the object tier: one multi-threaded tokio runtime shared by
//! every open object store of the process, started by the first open, its threads named
//! `kvr-obj-<n>`, shut down when the last store closes. The engine never sees it: the tier's
//! API is blocking calls and `kvr_job` batches.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::runtime::Runtime;

use crate::{err, Error, Result};

/// The process's runtime while any store holds it.
static SHARED: Mutex<Weak<Runtime>> = Mutex::new(Weak::new());

/// A store's hold on the shared runtime; the last one dropped shuts it down (a runtime's
/// drop stops and joins its threads; stores wait for their own tasks before they let go, and
/// are never dropped on a runtime thread).
#[derive(Clone)]
pub(crate) struct RuntimeHandle(Arc<Runtime>);

/// Worker threads: one per four cores, 1 to 8. The work is mostly waiting on sockets, and
/// one worker checksums and copies several GB/s; every further worker adds cross-thread
/// wakeups to each request (on 2 cores, 2 workers cost ~25% more client CPU per 64 KiB GET
/// than 1, CPU an object server on the same host then lacks).
fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 4).clamp(1, 8))
}

impl RuntimeHandle {
    /// The shared runtime, started if no store holds it.
    pub(crate) fn acquire() -> Result<RuntimeHandle> {
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = shared.upgrade() {
            return Ok(RuntimeHandle(rt));
        }
        let next = AtomicUsize::new(0);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads())
            .thread_name_fn(move || format!("kvr-obj-{}", next.fetch_add(1, Ordering::Relaxed)))
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| Error::io("starting the object tier's runtime threads", e))?;
        let rt = Arc::new(rt);
        *shared = Arc::downgrade(&rt);
        Ok(RuntimeHandle(rt))
    }

    /// Runs `fut` and waits for it. On an engine's thread the future is polled right here
    /// (one thread hop less per request; the sockets are still driven by the runtime); on a
    /// thread inside some async runtime, where blocking on another is not allowed, it runs
    /// on a runtime thread while this one waits.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.0.block_on(fut);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.0.spawn(async move {
            let _ = tx.send(fut.await);
        });
        // Every request is bounded by its timeout, so this wait is too. A dropped sender
        // means the task panicked.
        rx.recv()
            .unwrap_or_else(|_| Err(err!(Internal, "object store task ended without a result")))
    }

    /// Starts `fut` on the runtime without waiting.
    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.0.spawn(fut);
    }
}
