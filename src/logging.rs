//! Where the library's log messages go.
//!
//! Every message goes through the [`log`] facade (targets `kvr::fs`, `kvr::io`, ...). A Rust
//! program that links the rlib installs its own logger as usual. Through the C ABI, kvr
//! installs [`KvrLogger`] on first use: it hands records to the engine's callback
//! ([`set_sink`], C: `kvr_set_log_callback`), or without one writes warnings and errors to
//! stderr, each distinct message once (an operator sees every kind of problem, a failing
//! disk does not flood the engine's stderr).
//!
//! The callback is never called with a lock held: the sink is cloned out of its lock first,
//! so a callback may call back into kvr (open a store, log, even replace itself).

use std::cell::Cell;
use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Once, RwLock};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// A log sink: receives (level, target, message) of every record at or above its level.
pub type Sink = Arc<dyn Fn(Level, &str, &str) + Send + Sync>;

/// Distinct messages written to stderr before kvr stops writing new ones (a bound on the
/// dedup set's memory; one line says when it is reached).
const STDERR_DISTINCT_LIMIT: usize = 1024;

/// The installed sink and its minimum level; `None`: the stderr default.
static SINK: RwLock<Option<(LevelFilter, Sink)>> = RwLock::new(None);

/// Hashes of the messages already written to stderr.
static SEEN: Mutex<Option<HashSet<u64>>> = Mutex::new(None);

thread_local! {
    /// How many sink calls are running on this thread (a callback that calls back into kvr).
    static IN_SINK: Cell<usize> = const { Cell::new(0) };
}

/// kvr's logger: forwards to the installed sink, else to deduplicated stderr.
pub struct KvrLogger;

static LOGGER: KvrLogger = KvrLogger;
static INSTALL: Once = Once::new();
/// Whether [`install`] made [`KvrLogger`] the process's logger (else a host's own is).
static OURS: AtomicBool = AtomicBool::new(false);

/// Installs [`KvrLogger`] as the process's `log` logger, once, unless another logger is
/// already installed (a Rust host's own, which then receives kvr's records). Cheap after
/// the first call (one atomic load).
pub fn install() {
    INSTALL.call_once(|| {
        if log::set_logger(&LOGGER).is_ok() {
            OURS.store(true, Relaxed);
            log::set_max_level(current_max_level());
        }
    });
}

/// The level `log`'s macros must let through: the sink's level, or warnings for stderr.
fn current_max_level() -> LevelFilter {
    match &*SINK.read().unwrap_or_else(|p| p.into_inner()) {
        Some((level, _)) => *level,
        None => LevelFilter::Warn,
    }
}

/// Installs `sink` for records at or above `min_level` (`None`: back to the stderr default)
/// and returns once no call of the previous sink is still running on another thread, so
/// whatever the previous sink used may be freed by the caller. A sink replaced from inside
/// a sink call does not wait for the calls on its own thread.
pub fn set_sink(sink: Option<(LevelFilter, Sink)>) {
    install();
    let max = sink.as_ref().map_or(LevelFilter::Warn, |(l, _)| *l);
    let old = {
        let mut slot = SINK.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *slot, sink)
    };
    if OURS.load(Relaxed) {
        log::set_max_level(max);
    }
    if let Some((_, old)) = old {
        // Each running call holds a clone; ours (the slot's) is `old` itself.
        let own = IN_SINK.with(Cell::get);
        while Arc::strong_count(&old) > 1 + own {
            std::thread::yield_now();
        }
    }
}

impl Log for KvrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= current_max_level()
    }

    fn log(&self, record: &Record) {
        let sink = {
            let slot = SINK.read().unwrap_or_else(|p| p.into_inner());
            slot.as_ref()
                .filter(|(level, _)| record.level() <= *level)
                .map(|(_, s)| s.clone())
        };
        let message = record.args().to_string();
        match sink {
            Some(sink) => {
                // The lock is released: the sink may call into kvr.
                IN_SINK.with(|n| n.set(n.get() + 1));
                sink(record.level(), record.target(), &message);
                IN_SINK.with(|n| n.set(n.get() - 1));
            }
            None if record.level() <= Level::Warn => {
                write_stderr_once(record.level(), &message);
            }
            None => {}
        }
    }

    fn flush(&self) {}
}

/// Writes `kvr <level>: <message>` to stderr unless the same message was written before.
fn write_stderr_once(level: Level, message: &str) {
    let hash = xxhash_rust::xxh3::xxh3_64(message.as_bytes());
    let line = {
        let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
        let seen = seen.get_or_insert_with(HashSet::new);
        if seen.contains(&hash) || seen.len() > STDERR_DISTINCT_LIMIT {
            return;
        }
        seen.insert(hash);
        if seen.len() > STDERR_DISTINCT_LIMIT {
            "kvr: too many distinct log messages; no more are written to stderr (install a log callback to see them all)".to_string()
        } else {
            format!("kvr {}: {message}", level.as_str().to_ascii_lowercase())
        }
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    // One test owns the global sink (tests run in parallel threads of one process).
    #[test]
    fn sink_receives_records_and_may_reenter() {
        install();
        let got: Arc<Mutex<Vec<(Level, String, String)>>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let (g, c) = (got.clone(), calls.clone());
        set_sink(Some((
            LevelFilter::Info,
            Arc::new(move |level, target, msg| {
                c.fetch_add(1, Ordering::Relaxed);
                if msg.contains("reenter") {
                    // A record logged from inside the sink: no deadlock.
                    log::info!(target: "kvr::test", "inner");
                }
                g.lock()
                    .unwrap()
                    .push((level, target.to_string(), msg.to_string()));
            }),
        )));
        log::info!(target: "kvr::test", "reenter now");
        log::debug!(target: "kvr::test", "below the level");
        let seen = got.lock().unwrap().clone();
        assert!(seen.contains(&(Level::Info, "kvr::test".into(), "inner".into())));
        assert!(seen.contains(&(Level::Info, "kvr::test".into(), "reenter now".into())));
        assert!(!seen.iter().any(|(_, _, m)| m == "below the level"));
        set_sink(None);
        let before = calls.load(Ordering::Relaxed);
        log::warn!(target: "kvr::test", "to stderr, once");
        log::warn!(target: "kvr::test", "to stderr, once");
        assert_eq!(
            calls.load(Ordering::Relaxed),
            before,
            "the old sink is gone"
        );
        let seen = SEEN.lock().unwrap();
        let h = xxhash_rust::xxh3::xxh3_64(b"to stderr, once");
        assert!(seen.as_ref().unwrap().contains(&h));
    }
}
