//! What an item is (a tensor file, or one tensor of it) and the lazy references to it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::{closed, poisoned, Shared};
use crate::tensors::file::{TensorFile, TensorRef};
use crate::tensors::location::Location;
use crate::tensors::remote::RemoteObject;
use crate::{err, Result};

/// Where a source's file is, and whose it is.
enum Origin {
    /// Written by `put` inside the directory: deleted when its last user is gone.
    Owned(PathBuf),
    /// Written by `put` into an S3 directory (its `s3://` URL): the object is deleted when
    /// its last user is gone, or by `cleanup` at once.
    OwnedObject(String),
    /// Adopted: someone else's file (a path or URL, as [`TensorFile::open_location`]
    /// resolves it), never deleted by kvr.
    Adopted(String),
}

/// One tensor file, opened (header parsed, data mapped) on the first materialize of any item
/// or reference using it, then shared by all of them.
pub(super) struct Source {
    origin: Origin,
    file: OnceLock<Arc<TensorFile>>,
    load: Mutex<()>,
    /// Set once an owned object was deleted (by `cleanup`), so the drop does not again.
    deleted: AtomicBool,
}

impl Source {
    pub(super) fn owned(path: PathBuf) -> Source {
        Source::new(Origin::Owned(path))
    }

    pub(super) fn owned_object(url: String) -> Source {
        Source::new(Origin::OwnedObject(url))
    }

    pub(super) fn adopted(location: String) -> Source {
        Source::new(Origin::Adopted(location))
    }

    fn new(origin: Origin) -> Source {
        Source {
            origin,
            file: OnceLock::new(),
            load: Mutex::new(()),
            deleted: AtomicBool::new(false),
        }
    }

    /// Opens the file now (validating its header), without keeping it.
    pub(super) fn open(&self) -> Result<TensorFile> {
        match &self.origin {
            Origin::Owned(p) => TensorFile::open(p),
            Origin::OwnedObject(url) | Origin::Adopted(url) => TensorFile::open_location(url, None),
        }
    }

    fn path(&self) -> &Path {
        match &self.origin {
            Origin::Owned(p) => p,
            Origin::OwnedObject(url) | Origin::Adopted(url) => Path::new(url),
        }
    }

    /// Deletes an owned object now (a no-op for files and adopted sources, and the second
    /// time).
    pub(super) fn delete_object(&self) -> Result<()> {
        let Origin::OwnedObject(url) = &self.origin else {
            return Ok(());
        };
        if self.deleted.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        match Location::parse(url)? {
            Location::S3 { bucket, key } => RemoteObject::new(&bucket, &key, None)?.delete(),
            Location::Local(_) => Ok(()),
        }
    }

    fn location(&self) -> String {
        self.path().display().to_string()
    }

    fn load(&self) -> Result<Arc<TensorFile>> {
        if let Some(f) = self.file.get() {
            return Ok(f.clone());
        }
        let _one = self.load.lock().map_err(|_| poisoned())?;
        if let Some(f) = self.file.get() {
            return Ok(f.clone());
        }
        let f = Arc::new(self.open()?);
        let _ = self.file.set(f.clone());
        Ok(f)
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        // A replaced or removed item's own file goes when its last reference does.
        match &self.origin {
            Origin::Owned(path) => {
                let _ = std::fs::remove_file(path);
            }
            Origin::OwnedObject(_) => {
                let _ = self.delete_object();
            }
            Origin::Adopted(_) => {}
        }
    }
}

/// One item: a whole file (its tensors chosen by name), or one tensor of an adopted file.
pub(crate) struct Item {
    source: Arc<Source>,
    /// Set for an item adopted as one tensor of a file: the only tensor the item has.
    tensor: Option<String>,
}

impl Item {
    pub(super) fn new(source: Arc<Source>, tensor: Option<String>) -> Item {
        Item { source, tensor }
    }

    pub(super) fn source(&self) -> &Source {
        &self.source
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
            .field("file", &self.item.source.location())
            .field("name", &self.name)
            .finish()
    }
}

impl LazyTensor {
    pub(super) fn new(item: Arc<Item>, name: Option<&str>, shared: Arc<Shared>) -> LazyTensor {
        LazyTensor {
            item,
            name: name.map(str::to_string),
            shared,
        }
    }

    /// Maps the item's file (once per file, shared by all its items and references) and
    /// returns it, or `Closed` after cleanup.
    pub fn load(&self) -> Result<Arc<TensorFile>> {
        // Hold the read lock while opening so a concurrent cleanup cannot race the open.
        let items = self.shared.items.read().map_err(|_| poisoned())?;
        if items.is_none() {
            return Err(closed(&self.shared.path));
        }
        self.item.source.load()
    }

    /// Copies the tensor into `dst`; returns the bytes copied.
    pub fn materialize_into(&self, dst: &mut [u8]) -> Result<usize> {
        let file = self.load()?;
        file.read_into(self.tensor_name()?, dst)
    }

    /// Maps the tensor and calls `f` with a zero-copy view of it.
    pub fn with_view<R>(&self, f: impl FnOnce(TensorRef<'_>) -> R) -> Result<R> {
        let file = self.load()?;
        let t = file.get(self.tensor_name()?)?;
        Ok(f(t))
    }

    /// The tensor's name as given to `get_ref` (`None`: the item's only tensor).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The name to look up in the item's file: the one asked for, or for an item adopted as
    /// one tensor, that tensor (asking for another one is `NotFound`).
    pub fn tensor_name(&self) -> Result<Option<&str>> {
        match (self.item.tensor.as_deref(), self.name.as_deref()) {
            (None, asked) => Ok(asked),
            (Some(only), None) => Ok(Some(only)),
            (Some(only), Some(asked)) if only == asked => Ok(Some(only)),
            (Some(only), Some(asked)) => Err(err!(
                NotFound,
                "no tensor named '{asked}' in this item: it was adopted as tensor '{only}' of {}",
                self.item.source.location()
            )),
        }
    }
}
