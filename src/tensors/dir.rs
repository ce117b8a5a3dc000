//! Lazy tensor directory: items written to safetensors files in a private directory, handed
//! out as small references that load (map) a file only when materialized.
//!
//! Lifetime: the directory handle and every reference share one reference-counted owner; the
//! directory is removed when the last of them is dropped, from whichever thread. `cleanup`
//! removes it at once; references then fail with `Closed` instead of touching freed state.
//! A view materialized earlier stays readable (the mapping outlives the unlinked file).
//!
//! The parent may be an S3 URL (`s3://bucket[/prefix]`, settings from the `AWS_*`
//! environment): the directory is then a key prefix under it, items are objects, and the same
//! lifetime rules delete the directory's own objects (`cleanup` deletes them at once).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use super::file::{TensorFile, TensorRef};
use super::location::Location;
use super::remote::RemoteObject;
use super::write::{write, write_to, TensorIn, WriteOptions};
use crate::obj::ObjUrl;
use crate::{err, Error, Result};

struct Shared {
    /// The directory, or for an S3 parent its URL (`s3://bucket/prefix/kvr-tensors-...`).
    path: PathBuf,
    /// Whether `path` is an S3 URL (items are objects).
    remote: bool,
    /// `None` after cleanup.
    items: RwLock<Option<HashMap<String, Arc<Item>>>>,
    counter: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Objects of an S3 directory are deleted by their items' drops (the map goes next).
        if !self.remote {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

struct Item {
    path: PathBuf,
    /// Whether `path` is an object's URL.
    remote: bool,
    /// Set once the item's object was deleted (by `cleanup`), so its drop does not again.
    deleted: std::sync::atomic::AtomicBool,
    file: OnceLock<Arc<TensorFile>>,
    load: Mutex<()>,
}

impl Item {
    /// Deletes the item's object (an S3 directory's item; a no-op otherwise).
    fn delete_object(&self) -> Result<()> {
        if !self.remote || self.deleted.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        match Location::of_path(&self.path)? {
            Location::S3 { bucket, key } => RemoteObject::new(&bucket, &key, None)?.delete(),
            Location::Local(_) => Ok(()),
        }
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        // A replaced item's file goes when its last reference does.
        if self.remote {
            let _ = self.delete_object();
        } else {
            let _ = std::fs::remove_file(&self.path);
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

/// A reference to one tensor of one item; cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct LazyTensor {
    item: Arc<Item>,
    name: Option<String>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LazyTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyTensor")
            .field("file", &self.item.path)
            .field("name", &self.name)
            .finish()
    }
}

static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TensorDir {
    /// Creates a fresh, private (0700) directory inside `parent` (default: the system temp
    /// directory). It is removed when the handle and every reference are gone.
    ///
    /// `parent` may be a `file://` URL (its path), or `s3://bucket[/prefix]`: the directory is then the fresh key prefix
    /// `<prefix>/kvr-tensors-<pid>-<n>-<nanos>/` (no request is made until the first put),
    /// with the S3 settings of the `AWS_*` environment variables.
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
                            items: RwLock::new(Some(HashMap::new())),
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
                items: RwLock::new(Some(HashMap::new())),
                counter: AtomicU64::new(0),
            }),
        })
    }

    /// The directory's path (for an S3 directory: its `s3://` URL).
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Writes `tensors` as item `item_id` (replacing an earlier item of that id; references
    /// to the old one keep working until released).
    pub fn put(
        &self,
        item_id: &str,
        tensors: &[TensorIn<'_>],
        metadata: &[(&str, &str)],
        opts: WriteOptions,
    ) -> Result<()> {
        let n = self.shared.counter.fetch_add(1, Ordering::Relaxed);
        let path = self.shared.path.join(format!("item-{n}.safetensors"));
        {
            let items = self.shared.items.read().map_err(|_| poisoned())?;
            if items.is_none() {
                return Err(closed(&self.shared.path));
            }
        }
        let written = match (self.shared.remote, path.to_str()) {
            (true, Some(url)) => write_to(url, None, tensors, metadata, opts),
            _ => write(&path, tensors, metadata, opts),
        };
        if let Err(e) = written {
            // A cleanup racing the write removes the directory under it: report that.
            if matches!(self.shared.items.read().as_deref(), Ok(None)) {
                return Err(closed(&self.shared.path));
            }
            return Err(e.context(format!("putting item '{item_id}'")));
        }
        let item = Arc::new(Item {
            path,
            remote: self.shared.remote,
            deleted: Default::default(),
            file: OnceLock::new(),
            load: Mutex::new(()),
        });
        let mut items = self.shared.items.write().map_err(|_| poisoned())?;
        match items.as_mut() {
            Some(map) => {
                map.insert(item_id.to_string(), item);
                Ok(())
            }
            None => Err(closed(&self.shared.path)), // cleaned up meanwhile; `item` removes its file
        }
    }

    /// Whether an item exists.
    pub fn contains(&self, item_id: &str) -> bool {
        matches!(self.shared.items.read().as_deref(), Ok(Some(m)) if m.contains_key(item_id))
    }

    /// A lazy reference to tensor `name` of item `item_id` (`None`: the item's only tensor).
    /// Nothing is read until it is materialized.
    pub fn get_ref(&self, item_id: &str, name: Option<&str>) -> Result<LazyTensor> {
        let items = self.shared.items.read().map_err(|_| poisoned())?;
        let map = items.as_ref().ok_or_else(|| closed(&self.shared.path))?;
        let item = map.get(item_id).ok_or_else(|| {
            err!(
                NotFound,
                "no item '{item_id}' in tensor directory {}",
                self.shared.path.display()
            )
        })?;
        Ok(LazyTensor {
            item: item.clone(),
            name: name.map(str::to_string),
            shared: self.shared.clone(),
        })
    }

    /// Removes the directory and its files now. References fail with `Closed` from then on.
    pub fn cleanup(&self) -> Result<()> {
        let mut items = self.shared.items.write().map_err(|_| poisoned())?;
        let taken = items.take();
        if self.shared.remote {
            // Every object of the directory goes now, also those references still hold.
            let mut first_error = None;
            for item in taken.iter().flat_map(|m| m.values()) {
                if let Err(e) = item.delete_object() {
                    first_error.get_or_insert(e);
                }
            }
            return first_error.map_or(Ok(()), Err);
        }
        match std::fs::remove_dir_all(&self.shared.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(
                format!("removing tensor directory {}", self.shared.path.display()),
                e,
            )),
        }
    }
}

fn poisoned() -> Error {
    err!(Internal, "tensor directory lock poisoned")
}

fn closed(path: &Path) -> Error {
    err!(Closed, "tensor directory {} was cleaned up", path.display())
}

impl LazyTensor {
    /// Maps the item's file (once per item, shared by all its references) and returns it,
    /// or `Closed` after cleanup.
    pub fn load(&self) -> Result<Arc<TensorFile>> {
        // Hold the read lock while opening so a concurrent cleanup cannot race the open.
        let items = self.shared.items.read().map_err(|_| poisoned())?;
        if items.is_none() {
            return Err(closed(&self.shared.path));
        }
        if let Some(f) = self.item.file.get() {
            return Ok(f.clone());
        }
        let _one = self.item.load.lock().map_err(|_| poisoned())?;
        if let Some(f) = self.item.file.get() {
            return Ok(f.clone());
        }
        let f = Arc::new(match (self.item.remote, self.item.path.to_str()) {
            (true, Some(url)) => TensorFile::open_location(url, None)?,
            _ => TensorFile::open(&self.item.path)?,
        });
        let _ = self.item.file.set(f.clone());
        Ok(f)
    }

    /// Copies the tensor into `dst`; returns the bytes copied.
    pub fn materialize_into(&self, dst: &mut [u8]) -> Result<usize> {
        self.load()?.read_into(self.name.as_deref(), dst)
    }

    /// Maps the tensor and calls `f` with a zero-copy view of it.
    pub fn with_view<R>(&self, f: impl FnOnce(TensorRef<'_>) -> R) -> Result<R> {
        let file = self.load()?;
        let t = file.get(self.name.as_deref())?;
        Ok(f(t))
    }

    /// The tensor's name as given to `get_ref` (`None`: the item's only tensor).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}
