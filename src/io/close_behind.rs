//! Closing files and removing temp names off the caller's path, for file systems where each
//! is a network round trip.
//!
//! On a FUSE mount `close` sends a synchronous `FLUSH` to the file system process (GlusterFS
//! forwards it to the brick), and `unlink` is a round trip too: once a block is published,
//! neither changes what the caller gets, yet together they were about a fifth of a 64 KiB
//! store's time on the GlusterFS test bed. [`CloseBehind`] hands such finished files to one
//! thread that drops them in order. On local file systems both calls cost microseconds and
//! the handoff would cost more: the fs store uses it only where
//! [`super::file::is_network_fs`] says so, and only for stores (a read block's close is a
//! `FLUSH` with nothing to write behind; deferring it showed no gain there).

use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender, TrySendError};

/// Something whose drop does the deferred work (closes a file, removes a name).
pub type Finished = Box<dyn Send + 'static>;

/// How many finished files may wait; beyond that the caller drops its own. Small on purpose:
/// the thread overlaps the round trips with the callers' next stores, but a long backlog only
/// moves the work into whatever comes next (with 256, the unlinks left by a batch of 512
/// stores slowed the loads that followed by ~12% on the GlusterFS test bed).
const QUEUE: usize = 8;

/// A thread dropping finished files; dropping this drains the queue and joins the thread.
pub struct CloseBehind {
    tx: Option<Sender<Finished>>,
    thread: Option<JoinHandle<()>>,
}

impl CloseBehind {
    /// Starts the thread, named `name`.
    pub fn start(name: &str) -> crate::Result<CloseBehind> {
        let (tx, rx) = bounded::<Finished>(QUEUE);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for finished in rx.iter() {
                    // A panicking drop must not end the thread (nothing of kvr's panics
                    // there; this is only a guard).
                    let _ =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(finished)));
                }
            })
            .map_err(|e| crate::Error::io("starting the close-behind thread", e))?;
        Ok(CloseBehind {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Drops `finished` on the thread, or right here when the queue is full.
    pub fn defer(&self, finished: Finished) {
        if let Some(tx) = &self.tx {
            match tx.try_send(finished) {
                Ok(()) => {}
                Err(TrySendError::Full(f)) | Err(TrySendError::Disconnected(f)) => drop(f),
            }
        }
    }
}

impl Drop for CloseBehind {
    fn drop(&mut self) {
        self.tx.take(); // the thread drains what is queued, then exits
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    #[test]
    fn everything_deferred_is_dropped_by_the_time_it_is_closed() {
        let n = Arc::new(AtomicUsize::new(0));
        let c = CloseBehind::start("kvr-test-close").unwrap();
        for _ in 0..10 * QUEUE {
            c.defer(Box::new(Counted(n.clone())));
        }
        drop(c);
        assert_eq!(n.load(SeqCst), 10 * QUEUE);
    }
}
