//! O_DIRECT: requested mode, and a one-time probe of whether a directory's file system takes it.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::AlignedBuf;

/// Requested direct-I/O mode (C: `KVR_DIRECT_IO_AUTO/ON/OFF`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectIo {
    /// Use O_DIRECT if the file system accepts it, else buffered I/O (one log line).
    Auto,
    /// Require O_DIRECT; opening fails with `Unsupported` if the file system rejects it.
    On,
    /// Always buffered I/O through the page cache.
    Off,
}

/// Whether files in `dir` can be written and read with O_DIRECT: writes and reads back one
/// aligned page in a temporary file. tmpfs (before 6.6), overlayfs and some NFS mounts fail
/// with EINVAL.
pub fn probe(dir: &Path) -> bool {
    let path = dir.join(format!(
        ".kvr_direct_probe.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let result = (|| -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(&path)?;
        let mut buf = AlignedBuf::new(4096).map_err(|e| std::io::Error::other(e.to_string()))?;
        f.write_all_at(buf.as_slice(), 0)?;
        f.read_exact_at(buf.as_mut_slice(), 0)?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result.is_ok()
}

/// Resolves `mode` for `dir`: `Ok(true)` to use O_DIRECT. Logs one line when `Auto` falls back.
pub fn resolve(mode: DirectIo, dir: &Path) -> crate::Result<bool> {
    match mode {
        DirectIo::Off => Ok(false),
        DirectIo::On => {
            if probe(dir) {
                Ok(true)
            } else {
                Err(crate::err!(
                    Unsupported,
                    "direct I/O requested but {} does not support O_DIRECT",
                    dir.display()
                ))
            }
        }
        DirectIo::Auto => {
            let ok = probe(dir);
            if !ok {
                eprintln!(
                    "kvr: {} does not support O_DIRECT; using buffered I/O",
                    dir.display()
                );
            }
            Ok(ok)
        }
    }
}
