//! Standard output that its reader may close early (`kvr tensors ls FILE | head -1`): the
//! first line that cannot be written ends the command, and `main` treats that as a normal
//! end (exit 0, no message) instead of the panic `println!` gives on a closed pipe.

use std::fmt;
use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set when a write found standard output closed (EPIPE).
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes one line to standard output. A closed standard output is an error, so that the
/// command stops at once (through `?`) and unwinds normally (temp files removed, locks
/// released); [`closed`] then tells `main` that nothing failed.
pub fn line(args: fmt::Arguments<'_>) -> kvr::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(|e| {
            if e.kind() == ErrorKind::BrokenPipe {
                CLOSED.store(true, Ordering::Relaxed);
            }
            kvr::Error::io("writing to standard output", e)
        })
}

/// Whether standard output was found closed by its reader.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// `println!` that returns `kvr::Result<()>` (see [`line`]) instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::line(format_args!($($arg)*))
    };
}
pub(crate) use out;
