//! Async batch jobs: one handle per submitted batch, per-item results, poll and bounded wait.
//! Dropping a job waits for its items, so callers' buffers are never used after they are freed.

use std::sync::{Arc, Condvar, Mutex};
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

struct State {
    results: Vec<Option<Result<u64>>>,
    done: usize,
    failed: usize,
}

struct Shared {
    state: Mutex<State>,
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
            state: Mutex::new(State {
                results: (0..n).map(|_| None).collect(),
                done: 0,
                failed: 0,
            }),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a task panicked while holding it; the data is still sound.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Progress without blocking.
    pub fn poll(&self) -> JobProgress {
        let s = self.lock();
        JobProgress {
            total: s.results.len(),
            done: s.done,
            failed: s.failed,
        }
    }

    /// Waits until every item finished, or `timeout` passed (`None` waits without bound).
    /// Returns `Timeout` if items are still running, else `Ok` (check items for failures).
    pub fn wait(&self, timeout: Option<Duration>) -> Result<JobProgress> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut s = self.lock();
        while s.done < s.results.len() {
            match deadline {
                None => s = self.shared.cv.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(err!(
                            Timeout,
                            "job: {} of {} items still running",
                            s.results.len() - s.done,
                            s.results.len()
                        ));
                    }
                    s = self
                        .shared
                        .cv
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        Ok(JobProgress {
            total: s.results.len(),
            done: s.done,
            failed: s.failed,
        })
    }

    /// Result of item `i`: `Ok(bytes moved)`, its error, or `Timeout` if it is still running.
    pub fn item(&self, i: usize) -> Result<u64> {
        let s = self.lock();
        match s.results.get(i) {
            None => Err(err!(
                InvalidArgument,
                "item {i} out of range (job has {} items)",
                s.results.len()
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
        let mut s = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if result.is_err() {
            s.failed += 1;
        }
        s.results[self.index] = Some(result);
        s.done += 1;
        self.shared.cv.notify_all();
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
