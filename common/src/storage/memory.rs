use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Batch, Change, Entries, Storage, StorageError};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// A disk in memory, for tests and simulation: it remembers what was flushed apart from what was only
/// applied, so that [`MemoryStorage::crashed`] can hand a restarted process exactly what a crash leaves.
#[derive(Clone, Default)]
pub struct MemoryStorage {
    inner: Arc<Mutex<Disk>>,
}

#[derive(Default)]
struct Disk {
    /// What reads see: everything applied.
    live: Map,
    /// What survives a crash for sure.
    durable: Map,
    /// Batches applied since the last flush, in order.
    unflushed: Vec<Batch>,
    failing_writes: u32,
    failing_flushes: u32,
    /// Keys whose value reads back damaged.
    damaged: BTreeSet<Vec<u8>>,
}

fn apply_to(map: &mut Map, batch: &Batch) {
    for (key, value) in batch.writes() {
        match value {
            Some(value) => map.insert(key.to_vec(), value.to_vec()),
            None => map.remove(key),
        };
    }
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a process finds after a crash: everything flushed, and the first `survivors` of the batches
    /// applied after the last flush (a log-structured store like sled loses a suffix of its unflushed
    /// writes, never a write from the middle). A new storage: the crashed one is left as it was.
    pub fn crashed(&self, survivors: usize) -> MemoryStorage {
        let disk = self.disk();
        let mut durable = disk.durable.clone();
        for batch in disk.unflushed.iter().take(survivors) {
            apply_to(&mut durable, batch);
        }
        MemoryStorage {
            inner: Arc::new(Mutex::new(Disk {
                live: durable.clone(),
                durable,
                damaged: disk.damaged.clone(),
                ..Disk::default()
            })),
        }
    }

    /// How many batches were applied since the last flush (what a crash may lose).
    pub fn unflushed(&self) -> usize {
        self.disk().unflushed.len()
    }

    /// The next `n` writes (batches, inserts, removes, updates) fail and change nothing.
    pub fn fail_writes(&self, n: u32) {
        self.disk().failing_writes = n;
    }

    /// The next `n` flushes fail and make nothing durable.
    pub fn fail_flushes(&self, n: u32) {
        self.disk().failing_flushes = n;
    }

    /// `key`'s value reads back with its last byte flipped, as bits rotted on disk, until it is written
    /// again.
    pub fn damage(&self, key: &[u8]) {
        self.disk().damaged.insert(key.to_vec());
    }

    fn entries(&self, keep: impl Fn(&[u8]) -> bool, from: &[u8]) -> Entries {
        let disk = self.disk();
        let found: Vec<_> = disk
            .live
            .range(from.to_vec()..)
            .take_while(|(k, _)| keep(k))
            .map(|(k, v)| Ok((k.clone(), read(&disk, k, v))))
            .collect();
        Box::new(found.into_iter())
    }
}

/// `value` as read: damaged if the key was marked so.
fn read(disk: &Disk, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut value = value.to_vec();
    if disk.damaged.contains(key)
        && let Some(last) = value.last_mut()
    {
        *last ^= 0xff;
    }
    value
}

impl Storage for MemoryStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let disk = self.disk();
        Ok(disk.live.get(key).map(|v| read(&disk, key, v)))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Entries {
        self.entries(|k| k.starts_with(prefix), prefix)
    }

    fn range_from(&self, start: &[u8]) -> Entries {
        self.entries(|_| true, start)
    }

    fn apply(&self, batch: Batch) -> Result<(), StorageError> {
        let mut disk = self.disk();
        if disk.failing_writes > 0 {
            disk.failing_writes -= 1;
            return Err(StorageError::Injected("write"));
        }
        for (key, _) in batch.writes() {
            disk.damaged.remove(key);
        }
        apply_to(&mut disk.live, &batch);
        disk.unflushed.push(batch);
        Ok(())
    }

    fn update(&self, key: &[u8], change: Change<'_>) -> Result<(), StorageError> {
        let mut disk = self.disk();
        if disk.failing_writes > 0 {
            disk.failing_writes -= 1;
            return Err(StorageError::Injected("write"));
        }
        let old = disk.live.get(key).map(|v| read(&disk, key, v));
        let mut batch = Batch::default();
        match change(old.as_deref()) {
            Some(new) => batch.insert(key, new),
            None => batch.remove(key),
        }
        disk.damaged.remove(key);
        apply_to(&mut disk.live, &batch);
        disk.unflushed.push(batch);
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        let mut disk = self.disk();
        if disk.failing_flushes > 0 {
            disk.failing_flushes -= 1;
            return Err(StorageError::Injected("flush"));
        }
        for batch in std::mem::take(&mut disk.unflushed) {
            apply_to(&mut disk.durable, &batch);
        }
        Ok(())
    }
}
