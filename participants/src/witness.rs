//! What a participant remembers about its store outside the store: its identity and how far its durable
//! history had gone, so that a store that comes back deleted, replaced or truncated is noticed by the
//! participant itself, before it serves a single read from it.
//!
//! The coordinator notices the same thing from the store marks it keeps (`coordinator/src/engine/
//! stores.rs`), exactly, but only when the participant next answers it, and it cannot stop the
//! participant's readers from being served older data as if it were current. The witness is a small
//! file beside the database (`<data dir>/<participant>.witness`), rewritten atomically (write, fsync,
//! rename, fsync the directory) at start and at most once per [`EVERY`] while the count grows. It lags
//! the store by up to that period, so a damage that lost only the last moment's writes is left to the
//! coordinator's check; a deleted database, another store in its place, or a truncation reaching
//! further back is caught here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::StoreMark;

/// How often the witness is brought up to date while the store's count grows: at most ten small
/// fsynced writes a second, next to the hundreds of forced writes a second the store makes under load.
pub const EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Seen<'a> {
    store: &'a str,
    seq: u64,
}

#[derive(Debug, Clone)]
pub struct Witness {
    path: PathBuf,
}

impl Witness {
    /// The witness of the store named `name` in `data_dir`.
    pub fn new(data_dir: &Path, name: &str) -> Self {
        Self {
            path: data_dir.join(format!("{name}.witness")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Compares the store that opened with what was witnessed: `Ok(None)` if it is the same store, as
    /// far along as last seen or further (or nothing was witnessed yet); `Ok(Some(reason))` if it
    /// lost acknowledged changes.
    pub fn check(&self, name: &str, mark: &StoreMark) -> std::io::Result<Option<String>> {
        let raw = match std::fs::read(&self.path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let seen: Seen<'_> = serde_json::from_slice(&raw).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} does not decode ({}); delete it only if the store beside it is known to be whole",
                    self.path.display(),
                    tpc_common::decode_error(&e)
                ),
            )
        })?;
        Ok(if seen.store != mark.id {
            Some(format!(
                "the {name} participant's store is not the one it served before (store {} where {} was): its database was deleted or replaced",
                mark.id, seen.store
            ))
        } else if mark.seq < seen.seq {
            Some(format!(
                "the {name} participant's store came back with {} forced writes where {} were on disk before: acknowledged changes were lost (a damaged file truncated at open?)",
                mark.seq, seen.seq
            ))
        } else {
            None
        })
    }

    /// Records `mark` as what the store has on disk now, atomically and durably. Blocking.
    pub fn record(&self, mark: &StoreMark) -> std::io::Result<()> {
        let seen = Seen {
            store: &mark.id,
            seq: mark.seq,
        };
        let tmp = self.path.with_extension("witness.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(&seen).expect("a witness serializes"))?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(id: &str, seq: u64) -> StoreMark {
        StoreMark {
            id: id.into(),
            boot: "b".into(),
            seq,
        }
    }

    #[test]
    fn the_same_store_as_far_or_further_passes_and_anything_else_is_a_loss() {
        let dir = tempfile::tempdir().unwrap();
        let witness = Witness::new(dir.path(), "history");
        assert_eq!(
            witness.check("history", &mark("a", 0)).unwrap(),
            None,
            "nothing witnessed yet"
        );
        witness.record(&mark("a", 10)).unwrap();
        assert_eq!(witness.check("history", &mark("a", 10)).unwrap(), None);
        assert_eq!(witness.check("history", &mark("a", 12)).unwrap(), None);
        let behind = witness.check("history", &mark("a", 9)).unwrap().unwrap();
        assert!(behind.contains("9 forced writes where 10"), "{behind}");
        let other = witness.check("history", &mark("b", 50)).unwrap().unwrap();
        assert!(other.contains("deleted or replaced"), "{other}");
    }

    #[test]
    fn a_damaged_witness_is_an_error_not_a_pass() {
        let dir = tempfile::tempdir().unwrap();
        let witness = Witness::new(dir.path(), "password");
        std::fs::write(witness.path(), b"\x00garbage").unwrap();
        assert!(witness.check("password", &mark("a", 1)).is_err());
    }
}
