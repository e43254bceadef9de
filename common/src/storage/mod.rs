//! The one small interface every durable record of tpc goes through: the coordinator's log and each
//! participant's store are a [`Storage`] each.
//!
//! A storage is an ordered key-value map with atomic batches whose writes are durable only once
//! [`Storage::flush`] returns (a *forced* write is one followed by a flush; the group commit in
//! `group_commit.rs` shares one flush among many). [`SledStorage`] is the production one (sled 0.34 on
//! disk). [`MemoryStorage`] models a disk for tests and simulation: a crash keeps exactly what was
//! flushed and possibly some of what came after, in order, and it fails or damages reads on command.

mod memory;
mod sled_storage;

use std::sync::Arc;

pub use memory::MemoryStorage;
pub use sled_storage::SledStorage;

/// Why a storage call failed. Cheap to clone: one flush's failure is told to every write it covered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    Sled(Arc<sled::Error>),
    /// A failure made on purpose (a [`MemoryStorage`] told to fail).
    #[error("injected storage failure: {0}")]
    Injected(&'static str),
    #[error("the storage's writer stopped")]
    Stopped,
    /// What the storage holds cannot be read back as it was written.
    #[error("corrupt storage: {0}")]
    Corrupt(&'static str),
    /// A batch failed halfway: the storage takes no more writes, and finishes the batch when opened
    /// again.
    #[error("the storage stopped taking writes: an earlier batch failed halfway")]
    Halted,
    /// A replicated log (etcd) refused a write because this process no longer holds the leadership its
    /// writes are fenced with: another coordinator leads now.
    #[error("fenced: another coordinator leads now")]
    Fenced,
    /// A replicated log (etcd) failed or did not answer in time.
    #[error("replicated log: {0}")]
    Replicated(String),
}

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> Self {
        StorageError::Sled(Arc::new(e))
    }
}

/// Writes applied together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// In order; `None` deletes the key.
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.push((key.into(), Some(value.into())));
    }

    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.push((key.into(), None));
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub fn writes(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.writes
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
    }
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// What [`Storage::update`] does to a value: the old one (if any) in, the new one (`None`: delete) out.
pub type Change<'a> = &'a mut dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>>;

/// Entries in key order; reversible, so "the newest first" reads from the end of a range.
pub type Entries = Box<dyn DoubleEndedIterator<Item = Result<Entry, StorageError>> + Send>;

/// An ordered key-value map whose writes are durable once flushed.
pub trait Storage: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Whether a `get` is answered from this machine, in microseconds (a page in memory, at worst a
    /// read the OS has cached), so an async task may make it in place: a hop to the blocking pool per
    /// change added both cores' worth of threads, and their memory, to the coordinator under load. A
    /// storage whose reads go over the network says no.
    fn reads_locally(&self) -> bool {
        true
    }

    /// Whether this process holds bookkeeping in memory for every page of keys the storage keeps, as
    /// sled does: the coordinator's log then packs its finished records into few values, so that its
    /// memory does not grow with the records of the retention window. A storage that keeps its keys
    /// elsewhere (etcd) says no, and the log keeps a key per record there.
    fn holds_keys_in_memory(&self) -> bool {
        true
    }

    fn contains(&self, key: &[u8]) -> Result<bool, StorageError> {
        Ok(self.get(key)?.is_some())
    }

    /// The entries whose key starts with `prefix`.
    fn scan_prefix(&self, prefix: &[u8]) -> Entries;

    /// The entries from `start` on.
    fn range_from(&self, start: &[u8]) -> Entries;

    /// Applies `batch` atomically (not yet durable).
    fn apply(&self, batch: Batch) -> Result<(), StorageError>;

    /// One insert: a batch of one, which a storage may do more cheaply.
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let mut batch = Batch::default();
        batch.insert(key, value);
        self.apply(batch)
    }

    fn remove(&self, key: &[u8]) -> Result<(), StorageError> {
        let mut batch = Batch::default();
        batch.remove(key);
        self.apply(batch)
    }

    /// Replaces `key`'s value with what `change` makes of it (`None`: delete), atomically with respect
    /// to every other write.
    fn update(&self, key: &[u8], change: Change<'_>) -> Result<(), StorageError>;

    /// Makes every write applied so far durable.
    fn flush(&self) -> Result<(), StorageError>;
}

/// A storage shared by the threads and tasks of one process.
pub type Db = Arc<dyn Storage>;

impl std::fmt::Debug for dyn Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Storage")
    }
}

#[cfg(test)]
mod tests;
