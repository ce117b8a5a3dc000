//! Lazy tensor directory: items written to safetensors files in a private directory, or
//! adopted from existing files, handed out as small references that load (map) a file only
//! when materialized; with the dictionary surface of a mapping (count, contains, ids in
//! insertion order, lookup that tells a missing id from an error, removal).
//!
//! Lifetime: the directory handle and every reference share one reference-counted owner; the
//! directory is removed when the last of them is dropped, from whichever thread. `cleanup`
//! removes it at once; references then fail with `Closed` instead of touching freed state.
//! A view materialized earlier stays readable (the mapping outlives the unlinked file).
//! A removed or replaced item's file goes with its last reference. Adopted files are not the
//! directory's: removal and cleanup never delete them.
//!
//! The parent may be an S3 URL (`s3://bucket[/prefix]`, settings from the `AWS_*`
//! environment): the directory is then a fresh key prefix under it, its own items are
//! objects, and the same lifetime rules delete them (`cleanup` deletes them at once).

mod entries;
mod lazy;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::file::TensorFile;
use super::location::Location;
use super::write::{write, write_to, TensorIn, WriteOptions};
use crate::obj::ObjUrl;
use crate::{err, Error, Result};
use entries::Entries;
pub use entries::ItemIds;
pub use lazy::LazyTensor;
use lazy::{Item, Source};

struct Shared {
    /// The directory, or for an S3 parent its URL (`s3://bucket/prefix/kvr-tensors-...`).
    path: PathBuf,
    /// Whether `path` is an S3 URL (the directory's own items are objects).
    remote: bool,
    /// `None` after cleanup.
    items: RwLock<Option<Entries>>,
    counter: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // An S3 directory's objects are deleted by their sources' drops (the items go next).
        if !self.remote {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The directory handle.
pub struct TensorDir {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TensorDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorDir")
            .field("path", &self.shared.path)
            .finish()
    }
}

/// One entry of [`TensorDir::adopt`]: item `item_id` is tensor `tensor` of the file at
/// `location` (`None`: the whole file, its tensors chosen by name as for a `put` item).
#[derive(Clone, Copy, Debug)]
pub struct Adopt<'a> {
    /// The item's id.
    pub item_id: &'a str,
    /// The file: a path or URL, as [`TensorFile::open_location`](super::TensorFile::open_location) takes it.
    pub location: &'a str,
    /// The one tensor of the file this item is, or `None` for the whole file.
    pub tensor: Option<&'a str>,
}

static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TensorDir {
    /// Creates a fresh, private (0700) directory inside `parent` (default: the system temp
    /// directory). It is removed when the handle and every reference are gone.
    ///
    /// `parent` may be a `file://` URL (its path), or `s3://bucket[/prefix]`: the directory
    /// is then the fresh key prefix `<prefix>/kvr-tensors-<pid>-<n>-<nanos>/` (no request is
    /// made until the first put), with the S3 settings of the `AWS_*` environment variables.
    pub fn create(parent: Option<&Path>) -> Result<TensorDir> {
        let mut from_url = None;
        match parent.and_then(Path::to_str) {
            Some(url) if url.starts_with("s3://") => return TensorDir::create_remote(url),
            Some(url) if url.starts_with("file://") => {
                if let Location::Local(path) = Location::parse(url)? {
                    from_url = Some(path);
                }
            }
            _ => {}
        }
        let parent = from_url
            .as_deref()
            .or(parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        for _ in 0..16 {
            let path = parent.join(format!(
                "kvr-tensors-{}-{}-{:08x}",
                std::process::id(),
                DIR_COUNTER.fetch_add(1, Ordering::Relaxed),
                nanos
            ));
            let mut b = std::fs::DirBuilder::new();
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            match b.create(&path) {
                Ok(()) => {
                    return Ok(TensorDir {
                        shared: Arc::new(Shared {
                            path,
                            remote: false,
                            items: RwLock::new(Some(Entries::default())),
                            counter: AtomicU64::new(0),
                        }),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::io(
                        format!("creating tensor directory {}", path.display()),
                        e,
                    ))
                }
            }
        }
        Err(err!(
            Io,
            "could not create a fresh directory in {}",
            parent.display()
        ))
    }

    /// An S3 directory: a key prefix unique to this process, call and moment (objects have
    /// no exclusive create of a prefix; the pid, a counter and the time make it fresh).
    fn create_remote(parent: &str) -> Result<TensorDir> {
        let url = ObjUrl::parse(parent).map_err(|e| e.context("creating a tensor directory"))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!(
            "kvr-tensors-{}-{}-{nanos:x}",
            std::process::id(),
            DIR_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = match url.prefix.as_str() {
            "" => format!("s3://{}/{name}", url.bucket),
            p => format!("s3://{}/{p}/{name}", url.bucket),
        };
        Ok(TensorDir {
            shared: Arc::new(Shared {
                path: PathBuf::from(path),
                remote: true,
                items: RwLock::new(Some(Entries::default())),
                counter: AtomicU64::new(0),
            }),
        })
    }

    /// The directory's path (for an S3 directory: its `s3://` URL).
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Writes `tensors` as item `item_id` (replacing an earlier item of that id, which keeps
    /// its place in the order; references to the old one keep working until released).
    /// Any string without NUL is an id (ids never become file names).
    pub fn put(
        &self,
        item_id: &str,
        tensors: &[TensorIn<'_>],
        metadata: &[(&str, &str)],
        opts: WriteOptions,
    ) -> Result<()> {
        check_id(item_id)?;
        let n = self.shared.counter.fetch_add(1, Ordering::Relaxed);
        let path = self.shared.path.join(format!("item-{n}.safetensors"));
        {
            let items = self.shared.items.read().map_err(|_| poisoned())?;
            if items.is_none() {
                return Err(closed(&self.shared.path));
            }
        }
        let url = path
            .to_str()
            .filter(|_| self.shared.remote)
            .map(str::to_string);
        let written = match &url {
            Some(url) => write_to(url, None, tensors, metadata, opts),
            None => write(&path, tensors, metadata, opts),
        };
        if let Err(e) = written {
            // A cleanup racing the write removes the directory under it: report that.
            if matches!(self.shared.items.read().as_deref(), Ok(None)) {
                return Err(closed(&self.shared.path));
            }
            return Err(e.context(format!("putting item '{item_id}'")));
        }
        let source = match url {
            Some(url) => Source::owned_object(url),
            None => Source::owned(path),
        };
        let item = Arc::new(Item::new(Arc::new(source), None));
        let mut items = self.shared.items.write().map_err(|_| poisoned())?;
        let replaced = match items.as_mut() {
            Some(entries) => entries.insert(item_id, item),
            None => return Err(closed(&self.shared.path)), // `item` removes its file
        };
        drop(items);
        drop(replaced); // may delete the old file: not under the lock
        Ok(())
    }

    /// Adds items that are existing tensor files, or single tensors of them, the way a
    /// mapping `id -> (file, tensor)` describes them. Every file is opened and its header
    /// validated (and every named tensor looked up) before anything is added: a missing file
    /// or tensor (`NotFound`), a malformed file (`Corrupt`), a duplicate id in `items` or a
    /// file inside this directory (`InvalidArgument`) adopts nothing. An id already present
    /// is replaced, as by `put`. Files are opened again at the first materialize, once per
    /// file of one adoption (its items share the mapping); they are not the directory's and
    /// are never deleted by it.
    pub fn adopt(&self, items: &[Adopt<'_>]) -> Result<()> {
        self.check_open()?;
        let mut seen = HashSet::new();
        // Each distinct file is opened once, kept open only while its items are checked.
        let mut sources: HashMap<&str, (Arc<Source>, TensorFile)> = HashMap::new();
        let mut adopted = Vec::with_capacity(items.len());
        for (i, a) in items.iter().enumerate() {
            let ctx = |e: Error| {
                e.context(format!(
                    "adopting item '{}' (items[{i}]) from {}",
                    a.item_id, a.location
                ))
            };
            check_id(a.item_id).map_err(ctx)?;
            if !seen.insert(a.item_id) {
                return Err(ctx(Error::invalid("the id appears twice in one adoption")));
            }
            let (source, file) = match sources.entry(a.location) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => v.insert(self.validate_source(a.location).map_err(ctx)?),
            };
            if let Some(t) = a.tensor {
                file.find(Some(t)).map_err(ctx)?;
            }
            adopted.push((
                a.item_id,
                Item::new(source.clone(), a.tensor.map(str::to_string)),
            ));
        }
        drop(sources);
        let mut guard = self.shared.items.write().map_err(|_| poisoned())?;
        let entries = guard.as_mut().ok_or_else(|| closed(&self.shared.path))?;
        let replaced: Vec<_> = adopted
            .into_iter()
            .filter_map(|(id, item)| entries.insert(id, Arc::new(item)))
            .collect();
        drop(guard);
        drop(replaced); // may delete old files: not under the lock
        Ok(())
    }

    /// An adopted file's source, after checking the location and the file's header.
    fn validate_source(&self, location: &str) -> Result<(Arc<Source>, TensorFile)> {
        if location.is_empty() || location.contains('\0') {
            return Err(Error::invalid("the location is empty or contains NUL"));
        }
        // A file inside the directory would be deleted with it: it cannot be adopted.
        let dir_url = format!("{}/", self.shared.path.display());
        if self.shared.remote && location.starts_with(&dir_url) {
            return Err(Error::invalid(format!(
                "{location} is inside the tensor directory itself"
            )));
        }
        if let (Ok(file), Ok(dir)) = (
            Path::new(location).canonicalize(),
            self.shared.path.canonicalize(),
        ) {
            if file.starts_with(&dir) {
                return Err(Error::invalid(format!(
                    "{} is inside the tensor directory itself",
                    file.display()
                )));
            }
        }
        let source = Source::adopted(location.to_string());
        let file = source.open()?;
        Ok((Arc::new(source), file))
    }

    /// Number of items (0 after cleanup).
    pub fn len(&self) -> usize {
        self.read_entries(|e| e.len(), 0)
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an item exists (none after cleanup).
    pub fn contains(&self, item_id: &str) -> bool {
        self.read_entries(|e| e.get(item_id).is_some(), false)
    }

    /// The item ids in insertion order, as a snapshot: iterating it while other threads put
    /// and remove sees the ids of one moment (empty after cleanup).
    pub fn ids(&self) -> ItemIds {
        self.read_entries(|e| e.ids(), ItemIds::default())
    }

    /// A lazy reference to tensor `name` of item `item_id` (`None`: the item's only tensor),
    /// or `Ok(None)` when there is no such item: a miss is not an error. Nothing is read
    /// until it is materialized, so a broken file shows there (`Corrupt`, `Io`, `NotFound`
    /// for a vanished adopted file), never as a miss. `Closed` after cleanup.
    pub fn find(&self, item_id: &str, name: Option<&str>) -> Result<Option<LazyTensor>> {
        let items = self.shared.items.read().map_err(|_| poisoned())?;
        let entries = items.as_ref().ok_or_else(|| closed(&self.shared.path))?;
        Ok(entries
            .get(item_id)
            .map(|item| LazyTensor::new(item.clone(), name, self.shared.clone())))
    }

    /// As [`TensorDir::find`], with a missing item as a `NotFound` error.
    pub fn get_ref(&self, item_id: &str, name: Option<&str>) -> Result<LazyTensor> {
        self.find(item_id, name)?.ok_or_else(|| {
            err!(
                NotFound,
                "no item '{item_id}' in tensor directory {}",
                self.shared.path.display()
            )
        })
    }

    /// Removes one item; `Ok(false)` when there was none. Its references keep working until
    /// released; the last one deletes the item's own file (an adopted file is left alone).
    /// `Closed` after cleanup.
    pub fn remove(&self, item_id: &str) -> Result<bool> {
        let mut items = self.shared.items.write().map_err(|_| poisoned())?;
        let entries = items.as_mut().ok_or_else(|| closed(&self.shared.path))?;
        let removed = entries.remove(item_id);
        drop(items);
        Ok(removed.is_some()) // `removed` drops here, outside the lock
    }

    /// Removes the directory and its files now (adopted files stay). References fail with
    /// `Closed` from then on.
    pub fn cleanup(&self) -> Result<()> {
        let mut items = self.shared.items.write().map_err(|_| poisoned())?;
        let dropped = items.take();
        drop(items);
        if self.shared.remote {
            // Every object of the directory goes now, also those references still hold.
            let mut first_error = None;
            for item in dropped.iter().flat_map(Entries::items) {
                if let Err(e) = item.source().delete_object() {
                    first_error.get_or_insert(e);
                }
            }
            drop(dropped);
            return first_error.map_or(Ok(()), Err);
        }
        drop(dropped);
        match std::fs::remove_dir_all(&self.shared.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(
                format!("removing tensor directory {}", self.shared.path.display()),
                e,
            )),
        }
    }

    fn check_open(&self) -> Result<()> {
        match self.shared.items.read().map_err(|_| poisoned())?.as_ref() {
            Some(_) => Ok(()),
            None => Err(closed(&self.shared.path)),
        }
    }

    /// Reads the entries, or `fallback` after cleanup. The lock is only ever poisoned by a
    /// panic, and no code under it panics; readers see the state regardless.
    fn read_entries<R>(&self, f: impl FnOnce(&Entries) -> R, fallback: R) -> R {
        let items = self
            .shared
            .items
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        items.as_ref().map(f).unwrap_or(fallback)
    }
}

fn check_id(item_id: &str) -> Result<()> {
    if item_id.contains('\0') {
        return Err(Error::invalid("an item id cannot contain NUL"));
    }
    Ok(())
}

fn poisoned() -> Error {
    err!(Internal, "tensor directory lock poisoned")
}

fn closed(path: &Path) -> Error {
    err!(Closed, "tensor directory {} was cleaned up", path.display())
}
