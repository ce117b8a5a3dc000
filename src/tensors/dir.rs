//! Lazy tensor directory: items written to safetensors files in a private directory, handed
//! out as small references that load (map) a file only when materialized.
//!
//! Lifetime: the directory handle and every reference share one reference-counted owner; the
//! directory is removed when the last of them is dropped, from whichever thread. `cleanup`
//! removes it at once; references then fail with `Closed` instead of touching freed state.
//! A view materialized earlier stays readable (the mapping outlives the unlinked file).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use super::file::{TensorFile, TensorRef};
use super::write::{write, TensorIn, WriteOptions};
use crate::{err, Error, Result};

struct Shared {
    path: PathBuf,
    /// `None` after cleanup.
    items: RwLock<Option<HashMap<String, Arc<Item>>>>,
    counter: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

struct Item {
    path: PathBuf,
    file: OnceLock<Arc<TensorFile>>,
    load: Mutex<()>,
}

impl Drop for Item {
    fn drop(&mut self) {
        // A replaced item's file goes when its last reference does.
        let _ = std::fs::remove_file(&self.path);
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
    pub fn create(parent: Option<&Path>) -> Result<TensorDir> {
        let parent = parent
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

    /// The directory's path.
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
        if let Err(e) = write(&path, tensors, metadata, opts) {
            // A cleanup racing the write removes the directory under it: report that.
            if matches!(self.shared.items.read().as_deref(), Ok(None)) {
                return Err(closed(&self.shared.path));
            }
            return Err(e.context(format!("putting item '{item_id}'")));
        }
        let item = Arc::new(Item {
            path,
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
        *items = None;
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
        let f = Arc::new(TensorFile::open(&self.item.path)?);
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
