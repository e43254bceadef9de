use std::path::Path;

use super::{Batch, Change, Entries, Storage, StorageError};

/// sled 0.34 on disk: what every server uses. A flush is sled's `flush()` (`sync_file_range` on its
/// segments, and an occasional `fsync`; see docs/operations.md for the durability that gives).
#[derive(Clone)]
pub struct SledStorage {
    db: sled::Db,
}

impl SledStorage {
    /// Opens (or creates) the database in `dir`, whose page cache may hold `cache_mib` MiB.
    pub fn open(dir: &Path, cache_mib: u64) -> Result<Self, StorageError> {
        Ok(Self {
            db: crate::open_database(dir, cache_mib)?,
        })
    }

    pub fn new(db: sled::Db) -> Self {
        Self { db }
    }
}

fn entries(iter: sled::Iter) -> Entries {
    Box::new(iter.map(|item| {
        item.map(|(k, v)| (k.to_vec(), v.to_vec()))
            .map_err(StorageError::from)
    }))
}

impl Storage for SledStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
    }

    fn contains(&self, key: &[u8]) -> Result<bool, StorageError> {
        Ok(self.db.contains_key(key)?)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Entries {
        entries(self.db.scan_prefix(prefix))
    }

    fn range_from(&self, start: &[u8]) -> Entries {
        entries(self.db.range(start..))
    }

    fn apply(&self, batch: Batch) -> Result<(), StorageError> {
        let mut b = sled::Batch::default();
        for (key, value) in batch.writes {
            match value {
                Some(value) => b.insert(key, value),
                None => b.remove(key),
            }
        }
        Ok(self.db.apply_batch(b)?)
    }

    // sled's batches take a lock that stops every other writer: a single write is not a batch.
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.db.insert(key, value)?;
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<(), StorageError> {
        self.db.remove(key)?;
        Ok(())
    }

    fn update(&self, key: &[u8], change: Change<'_>) -> Result<(), StorageError> {
        self.db.fetch_and_update(key, change)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        Ok(())
    }
}
