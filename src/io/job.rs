//! Async batch jobs: one handle per submitted batch, per-item results, poll and bounded wait.
//! Dropping a job waits for its items, so callers' buffers are never used after they are freed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{err, Error, ErrorKind, Result};

/// How far a job has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobProgress {
    /// Items submitted.
    pub total: usize,
    /// Items finished (successfully or not).
    pub done: usize,
    /// Items that failed.
    pub failed: usize,
}

/// Each item's result is written once into its own slot and counted with atomics, so
/// finishing an item takes no lock; only the last item locks `all_done` to wake waiters.
/// (One lock and one wake-up per item cost a futex round trip per 64 KiB block.)
struct Shared {
    results: Vec<OnceLock<Result<u64>>>,
    done: AtomicUsize,
    failed: AtomicUsize,
    /// Guards the sleep in [`Job::wait`] against a lost wake-up from the last item.
    all_done: Mutex<()>,
    cv: Condvar,
}

/// The handle of a submitted batch. Each item ends with `Ok(bytes)` or an error.
pub struct Job {
    shared: Arc<Shared>,
}

/// Completes one item of a job; handed to the task that does the item's I/O. If dropped
/// without [`Completer::finish`] (a panic in the task), the item fails with `Internal`.
pub struct Completer {
    shared: Arc<Shared>,
    index: usize,
    finished: bool,
}

impl Job {
    /// A job of `n` items and one completer per item, in item order.
    pub fn new(n: usize) -> (Job, Vec<Completer>) {
        let shared = Arc::new(Shared {
            results: (0..n).map(|_| OnceLock::new()).collect(),
            done: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            all_done: Mutex::new(()),
            cv: Condvar::new(),
        });
        let completers = (0..n)
            .map(|index| Completer {
                shared: shared.clone(),
                index,
                finished: false,
            })
            .collect();
        (Job { shared }, completers)
    }

    fn progress(&self) -> JobProgress {
        // `done` is read last with Acquire: every failure it counts was counted before it.
        let failed = self.shared.failed.load(Ordering::Acquire);
        let done = self.shared.done.load(Ordering::Acquire);
        JobProgress {
            total: self.shared.results.len(),
            done,
            failed: failed.min(done),
        }
    }

    /// Progress without blocking.
    pub fn poll(&self) -> JobProgress {
        self.progress()
    }

    /// Waits until every item finished, or `timeout` passed (`None` waits without bound).
    /// Returns `Timeout` if items are still running, else `Ok` (check items for failures).
    pub fn wait(&self, timeout: Option<Duration>) -> Result<JobProgress> {
        let total = self.shared.results.len();
        let deadline = timeout.map(|t| Instant::now() + t);
        // A poisoned lock only means a task panicked while holding it; `()` has no state.
        let mut g = self
            .shared
            .all_done
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while self.shared.done.load(Ordering::Acquire) < total {
            match deadline {
                None => g = self.shared.cv.wait(g).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(err!(
                            Timeout,
                            "job: {} of {} items still running",
                            total - self.shared.done.load(Ordering::Acquire),
                            total
                        ));
                    }
                    g = self
                        .shared
                        .cv
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        drop(g);
        Ok(self.progress())
    }

    /// Result of item `i`: `Ok(bytes moved)`, its error, or `Timeout` if it is still running.
    pub fn item(&self, i: usize) -> Result<u64> {
        match self.shared.results.get(i).map(OnceLock::get) {
            None => Err(err!(
                InvalidArgument,
                "item {i} out of range (job has {} items)",
                self.shared.results.len()
            )),
            Some(None) => Err(err!(Timeout, "item {i} is still running")),
            Some(Some(Ok(n))) => Ok(*n),
            Some(Some(Err(e))) => Err(Error::new(e.kind(), e.to_string())),
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // Items hold raw pointers into caller buffers: never let the caller free them early.
        let _ = self.wait(None);
    }
}

impl Completer {
    /// Records the item's result and wakes waiters.
    pub fn finish(mut self, result: Result<u64>) {
        self.record(result);
    }

    fn record(&mut self, result: Result<u64>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let s = &self.shared;
        if result.is_err() {
            s.failed.fetch_add(1, Ordering::Release);
        }
        // Each completer owns its slot and records once, so the slot is always empty here.
        let _ = s.results[self.index].set(result);
        // Release: whoever sees the new count also sees the result stored above.
        if s.done.fetch_add(1, Ordering::AcqRel) + 1 == s.results.len() {
            // Taking the lock orders this wake-up after a waiter's check of `done`: a waiter
            // either saw the final count or is already asleep on `cv`.
            drop(s.all_done.lock().unwrap_or_else(|p| p.into_inner()));
            s.cv.notify_all();
        }
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        self.record(Err(Error::new(
            ErrorKind::Internal,
            "I/O task ended without a result (panic)",
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::IoPool;

    #[test]
    fn results_waits_and_panics() {
        let pool = IoPool::new("t", 2).unwrap();
        let (job, completers) = Job::new(3);
        for (i, c) in completers.into_iter().enumerate() {
            pool.spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                match i {
                    0 => c.finish(Ok(10)),
                    1 => c.finish(Err(err!(NotFound, "no block"))),
                    _ => panic!("task panics"),
                }
            });
        }
        let p = job.wait(Some(Duration::from_secs(5))).unwrap();
        assert_eq!((p.total, p.done, p.failed), (3, 3, 2));
        assert_eq!(job.item(0).unwrap(), 10);
        assert_eq!(job.item(1).unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(job.item(2).unwrap_err().kind(), ErrorKind::Internal);
        assert_eq!(job.item(3).unwrap_err().kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn wait_times_out_and_drop_waits() {
        let pool = IoPool::new("t", 1).unwrap();
        let (job, mut completers) = Job::new(1);
        let c = completers.pop().unwrap();
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f2 = flag.clone();
        pool.spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            f2.store(true, std::sync::atomic::Ordering::SeqCst);
            c.finish(Ok(1));
        });
        assert_eq!(
            job.wait(Some(Duration::from_millis(1))).unwrap_err().kind(),
            ErrorKind::Timeout
        );
        drop(job); // must block until the task finished
        assert!(flag.load(std::sync::atomic::Ordering::SeqCst));
    }
}
