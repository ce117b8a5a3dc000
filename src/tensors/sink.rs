//! The sink a tensor file is written through: small pieces gathered into a bounded buffer,
//! large runs written through, and (for files over two buffers) a background writer that
//! writes each full buffer while the next one is gathered. The bytes go to a local file or
//! to an object store upload ([`Out`]).

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::gather::Gather;
use super::remote::RemoteWriter;
use super::write::{Source, CHUNK};
use crate::{err, Error, Result};
use xxhash_rust::xxh3::Xxh3;

/// Where a tensor file's bytes go, in order.
#[derive(Clone, Copy)]
pub(super) enum Out<'f> {
    /// A local (temp) file, at its current position.
    File(&'f File),
    /// A streaming upload to an object store.
    Remote(&'f RemoteWriter<'f>),
}

impl Out<'_> {
    fn write_all(self, bytes: &[u8]) -> Result<()> {
        match self {
            Out::File(mut f) => f
                .write_all(bytes)
                .map_err(|e| Error::io("writing tensor data", e)),
            Out::Remote(w) => w.write_all(bytes),
        }
    }
}

/// Buffered sink: small pieces gathered into a bounded buffer, large ones written through.
pub(super) struct Sink<'f> {
    pub(super) out: Out<'f>,
    pub(super) buf: Vec<u8>,
    /// Bytes written on this thread (the background writer counts its own).
    pub(super) written: u64,
    /// Writes full buffers while the next one is gathered; `None` for small files.
    pub(super) background: Option<Background<'f>>,
}

/// A thread writing full gather buffers in order, handing each back once written, so that
/// gathering the next buffer (element-wise, for transposed tensors: as much CPU as the
/// page-cache write) overlaps with writing the last one. Two buffers circulate.
pub(super) struct Background<'scope> {
    to_writer: Option<crossbeam_channel::Sender<Vec<u8>>>,
    written_back: crossbeam_channel::Receiver<Vec<u8>>,
    /// Buffers sent and not yet handed back.
    in_flight: usize,
    /// A handed-back buffer not yet reused.
    spare: Option<Vec<u8>>,
    /// Set by the writer when a write fails (it then skips the rest).
    failed: Arc<AtomicBool>,
    thread: Option<std::thread::ScopedJoinHandle<'scope, Result<u64>>>,
}

impl<'scope> Background<'scope> {
    pub(super) fn start<'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        out: Out<'scope>,
    ) -> Self {
        let (to_writer, jobs) = crossbeam_channel::unbounded::<Vec<u8>>();
        let (give_back, written_back) = crossbeam_channel::unbounded::<Vec<u8>>();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let thread = scope.spawn(move || {
            let mut written = 0u64;
            let mut error = None;
            for mut buf in jobs {
                if error.is_none() {
                    match out.write_all(&buf) {
                        Ok(()) => written += buf.len() as u64,
                        Err(e) => {
                            error = Some(e);
                            flag.store(true, Ordering::Release);
                        }
                    }
                }
                buf.clear();
                // The sink may be gone after a failure; the buffer is then just freed.
                let _ = give_back.send(buf);
            }
            error.map_or(Ok(written), Err)
        });
        Background {
            to_writer: Some(to_writer),
            written_back,
            in_flight: 0,
            spare: None,
            failed,
            thread: Some(thread),
        }
    }

    /// Queues `full` for writing and returns an empty buffer to gather into (waiting for
    /// the writer when both buffers are taken).
    pub(super) fn swap(&mut self, full: Vec<u8>) -> Result<Vec<u8>> {
        if self.failed.load(Ordering::Acquire) {
            return Err(self.finish().err().unwrap_or_else(|| {
                err!(Internal, "background tensor writer failed without an error")
            }));
        }
        let sender = self.to_writer.as_ref().expect("open until finish");
        sender
            .send(full)
            .map_err(|_| err!(Internal, "background tensor writer stopped"))?;
        self.in_flight += 1;
        if let Some(b) = self.spare.take() {
            return Ok(b);
        }
        if self.in_flight < 2 {
            return Ok(Vec::with_capacity(CHUNK));
        }
        let b = self
            .written_back
            .recv()
            .map_err(|_| err!(Internal, "background tensor writer stopped"))?;
        self.in_flight -= 1;
        Ok(b)
    }

    /// Waits until every queued buffer is written (before writing on the calling thread).
    pub(super) fn drain(&mut self) -> Result<()> {
        while self.in_flight > 0 {
            let b = self
                .written_back
                .recv()
                .map_err(|_| err!(Internal, "background tensor writer stopped"))?;
            self.in_flight -= 1;
            self.spare = Some(b);
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(self.finish().err().unwrap_or_else(|| {
                err!(Internal, "background tensor writer failed without an error")
            }));
        }
        Ok(())
    }

    /// Stops the writer after the queued buffers; the bytes it wrote, or its error.
    pub(super) fn finish(&mut self) -> Result<u64> {
        self.to_writer.take();
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(err!(Internal, "background tensor writer panicked"))),
            None => Ok(0),
        }
    }
}

impl Sink<'_> {
    pub(super) fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Some(bg) = self.background.as_mut() {
            let full = std::mem::take(&mut self.buf);
            self.buf = bg.swap(full)?;
            return Ok(());
        }
        self.out.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is buffered and waits for the background writer; the total written.
    pub(super) fn finish(&mut self) -> Result<u64> {
        self.flush()?;
        if let Some(bg) = self.background.as_mut() {
            self.written += bg.finish()?;
        }
        Ok(self.written)
    }

    pub(super) fn put(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() >= CHUNK {
            self.flush()?;
            if let Some(bg) = self.background.as_mut() {
                bg.drain()?; // file order: everything queued goes first
            }
            self.out.write_all(bytes)?;
            self.written += bytes.len() as u64;
            return Ok(());
        }
        if self.buf.len() + bytes.len() > CHUNK {
            self.flush()?;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    pub(super) fn zeros(&mut self, mut n: u64) -> Result<()> {
        while n > 0 {
            if self.buf.len() == CHUNK {
                self.flush()?;
            }
            let take = ((CHUNK - self.buf.len()) as u64).min(n) as usize;
            self.buf.resize(self.buf.len() + take, 0);
            n -= take as u64;
        }
        Ok(())
    }

    pub(super) fn source(&mut self, src: &Source<'_>, gather: Option<&Gather>) -> Result<()> {
        match (src, gather) {
            (Source::Strided(t), Some(g)) => self.gather(t, g),
            (
                Source::Rows {
                    ptrs,
                    len,
                    hashes,
                    hash_seeds,
                },
                _,
            ) => {
                for (i, &p) in ptrs.iter().enumerate() {
                    let mut hasher = Xxh3::with_seed(hash_seeds.get(i).copied().unwrap_or(0));
                    let mut done = 0;
                    while done < *len {
                        if self.buf.len() == CHUNK {
                            self.flush()?;
                        }
                        let take = (CHUNK - self.buf.len()).min(len - done);
                        let at = self.buf.len();
                        self.buf.resize(at + take, 0);
                        // SAFETY: `Source::Rows` is built by region export from rows inside a
                        // live region mapping (`p + len` in bounds); the destination is our own
                        // freshly resized buffer, which cannot overlap shared memory.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                p.add(done),
                                self.buf.as_mut_ptr().add(at),
                                take,
                            )
                        };
                        hasher.update(&self.buf[at..at + take]);
                        done += take;
                    }
                    if let Some(h) = hashes {
                        h.borrow_mut().push(hasher.digest());
                    }
                }
                Ok(())
            }
            (Source::Bytes(b), _) => self.put(b),
            (Source::Hashes(h), _) => {
                let bytes: Vec<u8> = h.borrow().iter().flat_map(|x| x.to_le_bytes()).collect();
                self.put(&bytes)
            }
            (Source::Strided(_), None) => Err(err!(Internal, "strided source without a plan")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed background write surfaces as an error at the next hand-over, at drain and at
    /// finish; the writer never blocks the sink after failing.
    #[test]
    fn background_write_errors_reach_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"x").unwrap();
        let read_only = File::open(&path).unwrap();
        std::thread::scope(|scope| {
            let mut bg = Background::start(scope, Out::File(&read_only));
            let mut next = bg.swap(vec![1u8; 100]).unwrap();
            // The writer fails on its first buffer; later hand-overs report it.
            let mut error = None;
            for _ in 0..1000 {
                next.extend_from_slice(&[2u8; 10]);
                match bg.swap(std::mem::take(&mut next)) {
                    Ok(b) => next = b,
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let e = error.expect("the write error reaches the sink");
            assert_eq!(e.kind(), crate::ErrorKind::Io, "{e}");
            assert!(e.to_string().contains("writing tensor data"), "{e}");
            assert!(
                bg.finish().is_ok(),
                "already joined: nothing more to report"
            );
        });
        std::thread::scope(|scope| {
            let mut bg = Background::start(scope, Out::File(&read_only));
            let _ = bg.swap(vec![1u8; 100]).unwrap();
            assert!(bg.drain().is_err());
        });
    }

    /// Gathered buffers, direct writes of large runs and the final flush land in file order.
    #[test]
    fn background_writer_keeps_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let big = vec![9u8; CHUNK + 5];
        let written = std::thread::scope(|scope| {
            let mut sink = Sink {
                out: Out::File(&file),
                buf: Vec::new(),
                written: 0,
                background: Some(Background::start(scope, Out::File(&file))),
            };
            for round in 0..3u8 {
                for i in 0..(CHUNK / 1000 + 7) {
                    sink.put(&[round.wrapping_mul(31).wrapping_add(i as u8); 1000])
                        .unwrap();
                }
                sink.put(&big).unwrap();
            }
            sink.put(b"end").unwrap();
            sink.finish().unwrap()
        });
        let mut want = Vec::new();
        for round in 0..3u8 {
            for i in 0..(CHUNK / 1000 + 7) {
                want.extend_from_slice(&[round.wrapping_mul(31).wrapping_add(i as u8); 1000]);
            }
            want.extend_from_slice(&big);
        }
        want.extend_from_slice(b"end");
        assert_eq!(written, want.len() as u64);
        assert!(std::fs::read(&path).unwrap() == want);
    }
}
