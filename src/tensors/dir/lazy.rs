//! What an item is (a tensor file, or one tensor of it) and the lazy references to it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::{closed, poisoned, Shared};
use crate::tensors::file::{TensorFile, TensorRef};
use crate::{err, Result};

/// Where a source's file is, and whose it is.
enum Origin {
    /// Written by `put` inside the directory: deleted when its last user is gone.
    Owned(PathBuf),
    /// Adopted: someone else's file (a path today; the location string is what
    /// [`TensorFile::open`] resolves), never deleted by kvr.
    Adopted(String),
}

/// One tensor file, opened (header parsed, data mapped) on the first materialize of any item
/// or reference using it, then shared by all of them.
pub(super) struct Source {
    origin: Origin,
    file: OnceLock<Arc<TensorFile>>,
    load: Mutex<()>,
}

impl Source {
    pub(super) fn owned(path: PathBuf) -> Source {
        Source::new(Origin::Owned(path))
    }

    pub(super) fn adopted(location: String) -> Source {
        Source::new(Origin::Adopted(location))
    }

    fn new(origin: Origin) -> Source {
        Source {
            origin,
            file: OnceLock::new(),
            load: Mutex::new(()),
        }
    }

    /// Opens the file now (validating its header), without keeping it.
    pub(super) fn open(&self) -> Result<TensorFile> {
        TensorFile::open(self.path())
    }

    fn path(&self) -> &Path {
        match &self.origin {
            Origin::Owned(p) => p,
            Origin::Adopted(location) => Path::new(location),
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
        if let Origin::Owned(path) = &self.origin {
            let _ = std::fs::remove_file(path);
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
