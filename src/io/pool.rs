//! A fixed pool of I/O threads fed by a channel; dropping the pool finishes queued work.

use std::sync::Arc;

use crossbeam_channel::{unbounded, Sender};

use super::job::{Completer, Job};
use std::thread::JoinHandle;

type Task = Box<dyn FnOnce() + Send + 'static>;

/// A pool of `n` named worker threads executing submitted closures in FIFO order.
pub struct IoPool {
    tx: Option<Sender<Task>>,
    threads: Vec<JoinHandle<()>>,
}

impl IoPool {
    /// Starts `threads` workers (at least 1) named `<name>-<i>`.
    pub fn new(name: &str, threads: usize) -> crate::Result<Self> {
        let (tx, rx) = unbounded::<Task>();
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let h = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    for task in rx.iter() {
                        // A panicking task must not kill the worker; its job records the
                        // failure.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
                    }
                })
                .map_err(|e| crate::Error::io("starting I/O thread", e))?;
            handles.push(h);
        }
        Ok(IoPool {
            tx: Some(tx),
            threads: handles,
        })
    }

    /// Queues `task`.
    pub fn spawn(&self, task: impl FnOnce() + Send + 'static) {
        if let Some(tx) = &self.tx {
            // Only fails when all receivers are gone, which cannot happen while `self` lives.
            let _ = tx.send(Box::new(task));
        }
    }

    /// Runs `task(item, completer)` on the pool for every item of a batch and returns the
    /// batch's job; each task finishes its item through the completer.
    ///
    /// # Safety
    /// Items are moved to the pool threads even when they are not `Send` (they carry raw
    /// pointers into caller buffers): the caller guarantees that whatever they point to stays
    /// valid (and, for buffers written by the tasks, unaliased) until the job completes. The
    /// job's Drop waits for every item, so no task outlives those buffers.
    pub unsafe fn submit_batch<T: Copy + 'static>(
        &self,
        items: &[T],
        task: impl Fn(T, Completer) + Send + Sync + 'static,
    ) -> Job {
        /// An item moved to a pool thread.
        struct AssertSend<T>(T);
        // SAFETY: see this function's contract.
        unsafe impl<T> Send for AssertSend<T> {}
        let task = Arc::new(task);
        let (job, completers) = Job::new(items.len());
        for (item, done) in items.iter().zip(completers) {
            let task = task.clone();
            let item = AssertSend(*item);
            self.spawn(move || {
                // Moves the whole wrapper in (a closure naming only `item.0` would capture
                // the non-Send field alone).
                let item = item;
                task(item.0, done)
            });
        }
        job
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        self.tx.take(); // closes the channel; workers drain it and exit
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}
