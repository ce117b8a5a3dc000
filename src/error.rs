//! One error type for the whole crate: a kind (which maps 1:1 to a C status code), a message
//! that says what failed and why, and the OS error underneath when there is one.

use std::fmt;
use std::io;

/// What went wrong, coarsely; every kind has a stable C status code (`kvr_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A null pointer, zero or overflowing size, bad name or flag combination.
    InvalidArgument,
    /// An operating-system I/O error not covered by a more specific kind.
    Io,
    /// The file system or memory backing a tier has no room (ENOSPC, EDQUOT, EFBIG).
    NoSpace,
    /// The key, tensor, region or file does not exist.
    NotFound,
    /// Stored bytes failed validation (checksum, header, length); the bad copy was dropped.
    Corrupt,
    /// The caller may not access the path (EACCES, EPERM, a symlink where none is allowed).
    Permission,
    /// A bounded wait ran out.
    Timeout,
    /// A storage server (the object tier's S3 endpoint) is down, too slow or refusing; the
    /// message names the endpoint and the HTTP or OS error. Retrying later may succeed.
    Unavailable,
    /// The resource is owned by another live process.
    Busy,
    /// The handle was closed or cleaned up; the object is no longer usable.
    Closed,
    /// An existing object's layout or geometry differs from the one requested.
    LayoutMismatch,
    /// The payload is larger than the container (slot, view, slice) can hold.
    TooLarge,
    /// The caller's buffer is too small; the needed size is reported.
    TooSmall,
    /// The request is valid but not supported on this system or build.
    Unsupported,
    /// No CUDA driver could be loaded, or no device is present.
    CudaUnavailable,
    /// The CUDA driver returned an error.
    Cuda,
    /// A bug in kvr (including a caught panic).
    Internal,
}

/// The crate's error: kind, a human-readable context, and an optional OS error.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<io::Error>,
}

/// `Result` with kvr's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with a message that says what failed and why.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error from an OS call; the kind is derived from the errno (ENOSPC -> NoSpace, ...).
    pub fn io(context: impl Into<String>, err: io::Error) -> Self {
        Error {
            kind: kind_of_io(&err),
            message: context.into(),
            source: Some(err),
        }
    }

    /// Like [`Error::io`] with the calling thread's `errno`.
    pub fn last_os(context: impl Into<String>) -> Self {
        Self::io(context, io::Error::last_os_error())
    }

    /// Shorthand for an `InvalidArgument` error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// The coarse kind, stable across versions.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The OS error underneath, if any.
    pub fn os_error(&self) -> Option<&io::Error> {
        self.source.as_ref()
    }

    /// Prefixes more context ("opening region 'x': ...").
    pub fn context(mut self, outer: impl fmt::Display) -> Self {
        self.message = format!("{outer}: {}", self.message);
        self
    }
}

fn kind_of_io(err: &io::Error) -> ErrorKind {
    match err.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => ErrorKind::NoSpace,
        Some(libc::ENOENT) => ErrorKind::NotFound,
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::ELOOP) => ErrorKind::Permission,
        Some(libc::ETIMEDOUT) => ErrorKind::Timeout,
        Some(libc::EOPNOTSUPP) => ErrorKind::Unsupported,
        _ => match err.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => ErrorKind::Permission,
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData => ErrorKind::Corrupt,
            _ => ErrorKind::Io,
        },
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(src) = &self.source {
            write!(f, ": {src}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Builds an error with `format!` arguments: `err!(NotFound, "no block {key}")`.
#[macro_export]
macro_rules! err {
    ($kind:ident, $($arg:tt)*) => {
        $crate::Error::new($crate::ErrorKind::$kind, format!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_kinds_and_keep_errno_text() {
        let e = Error::io("writing /x", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        let text = e.to_string();
        assert!(text.starts_with("writing /x: "), "{text}");
        assert!(text.contains("No space left"), "{text}");
        let e = Error::io("x", io::Error::from_raw_os_error(libc::EDQUOT));
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        let e = Error::io("x", io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn context_prefixes() {
        let e = err!(Corrupt, "bad checksum").context("loading block 00ff");
        assert_eq!(e.to_string(), "loading block 00ff: bad checksum");
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }
}
