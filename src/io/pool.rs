//! A fixed pool of I/O threads fed by a channel; dropping the pool finishes queued work.

use crossbeam_channel::{unbounded, Sender};
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
                    for task in rx {
                        // A panicking task must not kill the worker; the job records it.
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
