//! Each simulated host's disk: a [`MemoryStorage`] that a crash cuts back to what was flushed.
//!
//! A host's server opens the disk's current storage when it starts, and again when it restarts after a
//! crash; [`Disks::crash`] takes the snapshot a crash leaves at the moment of the crash, so nothing the
//! crashed process's threads still write afterwards counts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tpc_common::storage::{Db, MemoryStorage};

#[derive(Clone, Default)]
pub struct Disks {
    current: Arc<Mutex<BTreeMap<String, MemoryStorage>>>,
}

impl Disks {
    /// The storage `host` opens when it starts.
    pub fn open(&self, host: &str) -> Db {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        Arc::new(current.entry(host.to_owned()).or_default().clone())
    }

    /// `host` crashes: its disk keeps what was flushed and the first `survivors` batches after that.
    pub fn crash(&self, host: &str, survivors: usize) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(disk) = current.get_mut(host) {
            *disk = disk.crashed(survivors);
        }
    }

    /// `host`'s disk starts failing every write (`writes`) or every flush, until [`Disks::heal`] or a
    /// crash: a disk that returns an I/O error keeps returning them.
    pub fn break_down(&self, host: &str, writes: bool) {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(disk) = current.get(host) {
            if writes {
                disk.fail_writes(u32::MAX);
            } else {
                disk.fail_flushes(u32::MAX);
            }
        }
    }

    /// `host`'s disk works again.
    pub fn heal(&self, host: &str) {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(disk) = current.get(host) {
            disk.fail_writes(0);
            disk.fail_flushes(0);
        }
    }

    /// Every key and value on every disk, for a scan (a plaintext password must be nowhere).
    pub fn contents(&self) -> Vec<(String, Vec<u8>)> {
        use tpc_common::storage::Storage;
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current
            .iter()
            .flat_map(|(host, disk)| {
                disk.range_from(b"")
                    .filter_map(Result::ok)
                    .map(move |(k, v)| (format!("{host}: {}", String::from_utf8_lossy(&k)), v))
            })
            .collect()
    }

    /// Batches `host` applied since its last flush.
    pub fn unflushed(&self, host: &str) -> usize {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.get(host).map_or(0, MemoryStorage::unflushed)
    }
}
