use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use super::{Batch, Change, Entries, Storage, StorageError};

/// sled 0.34 on disk: what every server uses. A flush is sled's `flush()` (`sync_file_range` on its
/// segments, and an occasional `fsync`; see docs/operations.md for the durability that gives).
///
/// Batches are not sled's `apply_batch`. That one seals and writes sled's I/O buffer twice (a
/// `pwrite` and a `sync_file_range` each, on sled's I/O threads) and stops every writer of the
/// database, once per batch: with a batch per commit in every process, two thirds of the disk writes
/// under load were these, not the flushes the group commit shares. Instead a batch is written as its
/// *intent* (the whole batch under one key of a tree of its own), then its writes one by one, then
/// the intent removed. sled recovers a prefix of its log (it stops at the first gap, which is what its
/// own batches rely on too), and no other write of this database runs while a batch does (`order`),
/// so after a crash an intent on disk means its batch may be half done and nothing written after it
/// survived: [`SledStorage::open`] writes the whole batch again and removes the intent.
#[derive(Clone)]
pub struct SledStorage {
    db: sled::Db,
    /// Where the intent of the batch being applied is kept.
    intents: sled::Tree,
    /// Batches take it exclusively; every other read and write shares it. So a batch's writes are
    /// contiguous in sled's log, and a reader sees all of a batch or none of it.
    order: Arc<RwLock<()>>,
    /// Set when a batch failed after its intent was written: a later write must not land between the
    /// batch's writes and the intent that will finish it on the next open.
    halted: Arc<AtomicBool>,
}

/// The key of the intent: at most one batch is being applied at a time.
const INTENT: &[u8] = b"intent";

impl SledStorage {
    /// Opens (or creates) the database in `dir`, whose page cache may hold `cache_mib` MiB, and
    /// finishes a batch a crash interrupted.
    pub fn open(dir: &Path, cache_mib: u64) -> Result<Self, StorageError> {
        Self::new(crate::open_database(dir, cache_mib)?)
    }

    /// The storage on an open database, with a batch a crash interrupted finished.
    pub fn new(db: sled::Db) -> Result<Self, StorageError> {
        let storage = Self {
            intents: db.open_tree("tpc/batch-intents")?,
            db,
            order: Default::default(),
            halted: Default::default(),
        };
        storage.finish_interrupted_batch()?;
        Ok(storage)
    }

    fn finish_interrupted_batch(&self) -> Result<(), StorageError> {
        let Some(intent) = self.intents.get(INTENT)? else {
            return Ok(());
        };
        let batch = decode_batch(&intent).ok_or(StorageError::Corrupt(
            "the intent of an interrupted batch does not decode",
        ))?;
        for (key, value) in batch.writes() {
            self.write_one(key, value)?;
        }
        self.intents.remove(INTENT)?;
        self.db.flush()?;
        Ok(())
    }

    fn write_one(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), StorageError> {
        match value {
            Some(value) => self.db.insert(key, value)?,
            None => self.db.remove(key)?,
        };
        Ok(())
    }

    fn shared(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.order.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The shared side of `order`, for a write.
    fn writing(&self) -> Result<std::sync::RwLockReadGuard<'_, ()>, StorageError> {
        let shared = self.shared();
        if self.halted.load(Ordering::Acquire) {
            return Err(StorageError::Halted);
        }
        Ok(shared)
    }

    /// Writes `batch` (of two writes or more) as its intent, its writes, and the intent removed.
    fn apply_alone(&self, batch: &Batch) -> Result<(), StorageError> {
        let _alone = self.order.write().unwrap_or_else(|p| p.into_inner());
        if self.halted.load(Ordering::Acquire) {
            return Err(StorageError::Halted);
        }
        self.intents.insert(INTENT, encode_batch(batch))?;
        let applied = batch
            .writes()
            .try_for_each(|(key, value)| self.write_one(key, value))
            .and_then(|()| Ok(self.intents.remove(INTENT).map(drop)?));
        if applied.is_err() {
            self.halted.store(true, Ordering::Release);
        }
        applied
    }

    /// Writes `batch`'s intent and its first `writes` writes, and stops there, as a crash would.
    #[cfg(test)]
    pub(super) fn apply_interrupted(&self, batch: &Batch, writes: usize) {
        self.intents.insert(INTENT, encode_batch(batch)).unwrap();
        for (key, value) in batch.writes().take(writes) {
            self.write_one(key, value).unwrap();
        }
        self.db.flush().unwrap();
    }
}

/// A batch as bytes: per write, the key's length and the key, then a value's length and the value,
/// or `u32::MAX` for a removal (lengths little-endian `u32`).
pub(super) fn encode_batch(batch: &Batch) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in batch.writes() {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        match value {
            Some(value) => {
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
            None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
    }
    out
}

pub(super) fn decode_batch(mut bytes: &[u8]) -> Option<Batch> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = bytes.split_at_checked(n)?;
        *bytes = rest;
        Some(head)
    }
    fn length(bytes: &mut &[u8]) -> Option<u32> {
        Some(u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?))
    }
    let mut batch = Batch::default();
    while !bytes.is_empty() {
        let key_len = length(&mut bytes)? as usize;
        let key = take(&mut bytes, key_len)?.to_vec();
        match length(&mut bytes)? {
            u32::MAX => batch.remove(key),
            n => batch.insert(key, take(&mut bytes, n as usize)?),
        }
    }
    Some(batch)
}

fn entries(iter: sled::Iter) -> Entries {
    Box::new(iter.map(|item| {
        item.map(|(k, v)| (k.to_vec(), v.to_vec()))
            .map_err(StorageError::from)
    }))
}

impl Storage for SledStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let _shared = self.shared();
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
    }

    fn contains(&self, key: &[u8]) -> Result<bool, StorageError> {
        let _shared = self.shared();
        Ok(self.db.contains_key(key)?)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Entries {
        entries(self.db.scan_prefix(prefix))
    }

    fn range_from(&self, start: &[u8]) -> Entries {
        entries(self.db.range(start..))
    }

    fn apply(&self, batch: Batch) -> Result<(), StorageError> {
        let mut writes = batch.writes();
        let (Some((key, value)), None) = (writes.next(), writes.next()) else {
            if batch.is_empty() {
                return Ok(());
            }
            return self.apply_alone(&batch);
        };
        let _writing = self.writing()?;
        self.write_one(key, value)
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let _writing = self.writing()?;
        self.write_one(key, Some(value))
    }

    fn remove(&self, key: &[u8]) -> Result<(), StorageError> {
        let _writing = self.writing()?;
        self.write_one(key, None)
    }

    fn update(&self, key: &[u8], change: Change<'_>) -> Result<(), StorageError> {
        let _writing = self.writing()?;
        self.db.fetch_and_update(key, change)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        Ok(())
    }
}
