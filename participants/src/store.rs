//! The participant's durable state in one storage (sled in production, `tpc_common::storage`): the transaction log (PREPARED and COMMITTED
//! records, keys `t/<txn>`) beside the data it guards: one record per user (keys `d/<user>`) and, for a
//! resource that keeps a list per user, one key per item (`l/<user>\0<seq>`, so appending writes one
//! small key instead of rewriting the list), and the saga barrier (`b/<txn>`, see `barrier.rs`). A commit writes the new data and the COMMITTED record in
//! one atomic batch, so they can never disagree after a crash.

use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tpc_common::storage::{Batch, Db, SledStorage, StorageError};
use tpc_common::{GroupCommit, Seal, TxnId, UserId};

use crate::barrier::Barrier;

const TXN: &[u8] = b"t/";
const DATA: &[u8] = b"d/";
const LIST: &[u8] = b"l/";
const BARRIER: &[u8] = b"b/";
/// The store's identity, made when it is created.
const STORE_ID: &[u8] = b"m/id";
/// How many promises (forced writes) the store holds: PREPARED records, commits, saga steps.
const STORE_SEQ: &[u8] = b"m/seq";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("injected storage failure (fail point)")]
    Injected,
    #[error("corrupt record {key}: {cause}")]
    Corrupt { key: String, cause: String },
}

#[derive(Debug, Serialize, Deserialize)]
enum TxnRecord<C> {
    Prepared { user: UserId, change: C, at: u64 },
    Committed { at: u64 },
}

/// What the log holds after a restart.
pub struct Recovered<C> {
    pub prepared: Vec<(TxnId, UserId, C)>,
    pub committed: Vec<(TxnId, u64)>,
}

/// Read and batch-write access to the participant's data (`d/<user>` → JSON).
#[derive(Clone)]
pub struct Data {
    db: Db,
}

impl Data {
    pub fn get<T: DeserializeOwned>(&self, user: &UserId) -> Result<Option<T>, StoreError> {
        let key = data_key(user);
        self.db.get(&key)?.map(|raw| decode(&key, &raw)).transpose()
    }

    pub fn put<T: Serialize>(batch: &mut Batch, user: &UserId, value: &T) {
        batch.insert(data_key(user), encode(value));
    }

    /// Deletes `user`'s record (a compensated registration).
    pub fn remove(batch: &mut Batch, user: &UserId) {
        batch.remove(data_key(user));
    }

    /// Item `seq` of `user`'s list.
    pub fn item<T: DeserializeOwned>(
        &self,
        user: &UserId,
        seq: u64,
    ) -> Result<Option<T>, StoreError> {
        let key = list_key(user, seq);
        self.db.get(&key)?.map(|raw| decode(&key, &raw)).transpose()
    }

    /// Adds item `seq` to the end of `user`'s list.
    pub fn append<T: Serialize>(batch: &mut Batch, user: &UserId, seq: u64, item: &T) {
        batch.insert(list_key(user, seq), encode(item));
    }

    /// Drops item `seq` of `user`'s list.
    pub fn drop_item(batch: &mut Batch, user: &UserId, seq: u64) {
        batch.remove(list_key(user, seq));
    }

    /// `user`'s list, newest first: a range scan of the user's keys only.
    pub fn items<T: DeserializeOwned>(&self, user: &UserId) -> Result<Vec<T>, StoreError> {
        self.db
            .scan_prefix(&list_prefix(user))
            .rev()
            .map(|item| {
                let (key, raw) = item?;
                decode(&key, &raw)
            })
            .collect()
    }
}

/// How far the promises went.
struct Seqs {
    applied: AtomicU64,
    durable: AtomicU64,
}

pub struct Store<C> {
    db: Db,
    forcer: GroupCommit,
    /// Which store this is and how far its durable history goes (see [`StoreMark`]).
    id: String,
    boot: String,
    /// The number the next promise gets.
    next_seq: AtomicU64,
    /// The highest number known to be on disk (what is reported), and the highest whose write was
    /// applied: the flush's seal stores the latter (see [`Store::on`]).
    seqs: Arc<Seqs>,
    _change: PhantomData<fn() -> C>,
}

/// What a participant tells the coordinator about its store (`tpc.v1.StoreMark`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreMark {
    pub id: String,
    pub boot: String,
    pub seq: u64,
}

impl<C: Serialize + DeserializeOwned> Store<C> {
    /// Opens (or creates) the database with a page cache of `cache_mib` MiB, and starts its group
    /// commit's two threads.
    pub fn open(dir: &Path, cache_mib: u64) -> Result<Self, StoreError> {
        Self::on(Arc::new(SledStorage::open(dir, cache_mib)?))
    }

    /// The store kept in `db` (a [`tpc_common::storage::MemoryStorage`] in tests and simulation).
    pub fn on(db: Db) -> Result<Self, StoreError> {
        let id = match db.get(STORE_ID)? {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                // A new store (or one from before stores had an identity).
                let id = tpc_common::entropy::uuid_v7().to_string();
                db.insert(STORE_ID, id.as_bytes())?;
                db.flush()?;
                id
            }
        };
        let seq = match db.get(STORE_SEQ)? {
            Some(raw) => {
                u64::from_be_bytes(raw.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                    key: "m/seq".into(),
                    cause: "not a count".into(),
                })?)
            }
            None => 0,
        };
        let seqs = Arc::new(Seqs {
            applied: AtomicU64::new(seq),
            durable: AtomicU64::new(seq),
        });
        // The count is stored once per flush, before it, as the highest promise applied so far: every
        // promise that flush answers was applied before it, so the count on disk never falls below a
        // number reported. Updating it with each promise instead copied the leaf holding it every time,
        // ~6% of a participant's CPU under load.
        let sealed = seqs.clone();
        let seal: Seal = Arc::new(move |db| {
            let applied = sealed.applied.load(Ordering::Acquire);
            if applied > sealed.durable.load(Ordering::Acquire) {
                db.update(STORE_SEQ, &mut |old| {
                    let old = old
                        .and_then(|raw| <[u8; 8]>::try_from(raw).ok())
                        .map_or(0, u64::from_be_bytes);
                    Some(old.max(applied).to_be_bytes().to_vec())
                })?;
            }
            Ok(())
        });
        let forcer = GroupCommit::sealed(db.clone(), Some(seal));
        Ok(Self {
            db,
            forcer,
            id,
            boot: tpc_common::entropy::uuid_v7().to_string(),
            next_seq: AtomicU64::new(seq),
            seqs,
            _change: PhantomData,
        })
    }

    /// This store and how far its durable history goes.
    pub fn mark(&self) -> StoreMark {
        StoreMark {
            id: self.id.clone(),
            boot: self.boot.clone(),
            seq: self.seqs.durable.load(Ordering::Acquire),
        }
    }

    /// Applies `write` with a new promise number, forces it, and only then counts the number as durable.
    /// The write runs in the group commit's round, on its applier thread; the flush's seal stores the
    /// count.
    ///
    /// The stored count only ever grows (a compare-and-swap to the larger value), so promises need no
    /// lock, and a plain insert stays a plain insert: sled's batches take a lock that stops every other
    /// writer, and routing each PREPARED record through one cost the participants a third more CPU per
    /// change.
    async fn force_promise(
        &self,
        write: impl FnOnce(&Db) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let seq = self.next_seq.fetch_add(1, Ordering::AcqRel) + 1;
        let (db, seqs) = (self.db.clone(), self.seqs.clone());
        self.forcer
            .write::<StoreError, _>(true, move || {
                write(&db)?;
                seqs.applied.fetch_max(seq, Ordering::AcqRel);
                Ok(())
            })
            .await?;
        self.seqs.durable.fetch_max(seq, Ordering::AcqRel);
        Ok(())
    }

    pub fn data(&self) -> Data {
        Data {
            db: self.db.clone(),
        }
    }

    pub fn recover(&self) -> Result<Recovered<C>, StoreError> {
        let mut recovered = Recovered {
            prepared: Vec::new(),
            committed: Vec::new(),
        };
        for item in self.db.scan_prefix(TXN) {
            let (key, raw) = item?;
            let txn = TxnId::from_bytes(&key[TXN.len()..]).ok_or_else(|| StoreError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                cause: "not a transaction id".into(),
            })?;
            match decode(&key, &raw)? {
                TxnRecord::Prepared { user, change, .. } => {
                    recovered.prepared.push((txn, user, change))
                }
                TxnRecord::Committed { at } => recovered.committed.push((txn, at)),
            }
        }
        Ok(recovered)
    }

    /// Writes the PREPARED record and returns once it is on disk: only then may the participant vote yes.
    pub async fn force_prepared(
        &self,
        txn: TxnId,
        user: &UserId,
        change: &C,
        at: u64,
    ) -> Result<(), StoreError>
    where
        C: Clone,
    {
        let record = encode(&TxnRecord::Prepared {
            user: user.clone(),
            change: change.clone(),
            at,
        });
        self.force_promise(move |db| {
            db.insert(&txn_key(txn), &record)?;
            Ok(())
        })
        .await
    }

    /// Applies the writes `apply` adds (reading what it needs; it runs on the blocking pool) and
    /// replaces PREPARED with COMMITTED, atomically and forced.
    pub async fn force_commit(
        &self,
        txn: TxnId,
        at: u64,
        apply: impl FnOnce(&mut Batch) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let committed = encode(&TxnRecord::<C>::Committed { at });
        self.force_promise(move |db| {
            let mut batch = Batch::default();
            apply(&mut batch)?;
            batch.insert(txn_key(txn), committed);
            db.apply(batch)?;
            Ok(())
        })
        .await
    }

    /// What this participant recorded for a saga or events transaction (see `barrier.rs`). Reads the
    /// database: call it off the async workers.
    pub fn barrier<U: DeserializeOwned>(
        &self,
        txn: TxnId,
    ) -> Result<Option<Barrier<U>>, StoreError> {
        let key = barrier_key(txn);
        self.db.get(&key)?.map(|raw| decode(&key, &raw)).transpose()
    }

    /// Applies the writes `apply` adds and records the barrier it returns, atomically, and returns once
    /// both are on disk: a saga step is answered only when durable, like a vote. `apply` runs on the
    /// blocking pool.
    pub async fn force_barrier<U: Serialize>(
        &self,
        txn: TxnId,
        apply: impl FnOnce(&mut Batch) -> Result<Barrier<U>, StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        self.force_promise(move |db| {
            let mut batch = Batch::default();
            let barrier = apply(&mut batch)?;
            batch.insert(barrier_key(txn), encode(&barrier));
            db.apply(batch)?;
            Ok(())
        })
        .await
    }

    /// Records a refusal, unforced and unawaited: it changed nothing, and a lost one only lets a retry
    /// check again.
    pub fn note_barrier<U: Serialize>(&self, txn: TxnId, barrier: &Barrier<U>) {
        let (db, record) = (self.db.clone(), encode(barrier));
        drop(self.forcer.write::<StoreError, _>(false, move || {
            db.insert(&barrier_key(txn), &record)?;
            Ok(())
        }));
    }

    /// Deletes up to `max` barrier records of transactions created before `before_ms`, oldest first
    /// (keys are UUIDv7 transaction ids, which begin with their creation time, so the scan stops at the
    /// first young one). Returns how many it deleted; fewer than `max` means it is done.
    pub fn collect_barriers(&self, before_ms: u64, max: usize) -> Result<usize, StoreError> {
        let mut batch = Batch::default();
        let mut n = 0;
        for item in self.db.scan_prefix(BARRIER) {
            let (key, _) = item?;
            let old = TxnId::from_bytes(&key[BARRIER.len()..])
                .is_some_and(|txn| txn.created_ms() < before_ms);
            if !old || n == max {
                break;
            }
            batch.remove(key);
            n += 1;
        }
        self.db.apply(batch)?;
        Ok(n)
    }

    /// Deletes a transaction's record (an aborted PREPARED one, or an old COMMITTED one), unforced and
    /// unawaited: a PREPARED record that comes back after a crash is asked about and resolves as
    /// aborted; a COMMITTED one is forgotten again later.
    pub fn remove(&self, txn: TxnId) {
        let db = self.db.clone();
        drop(self.forcer.write::<StoreError, _>(false, move || {
            db.remove(&txn_key(txn))?;
            Ok(())
        }));
    }

    /// Returns once every write queued before it is applied and on disk.
    pub async fn settled(&self) -> Result<(), StoreError> {
        Ok(self.forcer.force().await?)
    }
}

fn txn_key(txn: TxnId) -> Vec<u8> {
    [TXN, txn.as_bytes()].concat()
}

fn barrier_key(txn: TxnId) -> Vec<u8> {
    [BARRIER, txn.as_bytes()].concat()
}

fn data_key(user: &UserId) -> Vec<u8> {
    [DATA, user.as_str().as_bytes()].concat()
}

/// `l/<user>\0`: user ids never contain a NUL, so no user's prefix is another's.
fn list_prefix(user: &UserId) -> Vec<u8> {
    [LIST, user.as_str().as_bytes(), b"\0"].concat()
}

/// Big-endian, so the keys sort in the order the items were appended.
fn list_key(user: &UserId, seq: u64) -> Vec<u8> {
    [list_prefix(user), seq.to_be_bytes().to_vec()].concat()
}

/// Records go through [`tpc_common::record`] (a format byte, a CRC-32, postcard; older JSON records still
/// read).
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    tpc_common::record::encode(value)
}

fn decode<T: DeserializeOwned>(key: &[u8], raw: &[u8]) -> Result<T, StoreError> {
    tpc_common::record::decode(raw).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        cause: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use tpc_common::storage::{MemoryStorage, Storage};

    fn user() -> UserId {
        UserId::parse("alice").unwrap()
    }

    /// Waits until the group commit applied what was queued (not forced).
    async fn applied(mem: &MemoryStorage, key: &[u8], present: bool) {
        for _ in 0..1000 {
            if mem.contains(key).unwrap() == present {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!("the queued write was never applied");
    }

    #[tokio::test]
    async fn a_crash_keeps_forced_records_and_loses_what_was_not_forced() {
        let mem = MemoryStorage::new();
        let store = Store::<String>::on(Arc::new(mem.clone())).unwrap();
        let (prepared, committed) = (TxnId::generate(), TxnId::generate());
        store
            .force_prepared(prepared, &user(), &"v2".to_owned(), 1)
            .await
            .unwrap();
        store
            .force_commit(committed, 2, |batch| {
                Data::put(batch, &user(), &"v1");
                Ok(())
            })
            .await
            .unwrap();
        let mark = store.mark();
        // An abort deletes the PREPARED record unforced: a crash brings it back.
        store.remove(prepared);
        applied(&mem, &txn_key(prepared), false).await;
        assert!(store.recover().unwrap().prepared.is_empty());

        let after = Store::<String>::on(Arc::new(mem.crashed(0))).unwrap();
        let recovered = after.recover().unwrap();
        assert_eq!(recovered.prepared, [(prepared, user(), "v2".to_owned())]);
        assert_eq!(recovered.committed, [(committed, 2)]);
        assert_eq!(
            after.data().get::<String>(&user()).unwrap().as_deref(),
            Some("v1")
        );
        assert_eq!(
            (after.mark().id, after.mark().seq),
            (mark.id, mark.seq),
            "the same store, as far as it went"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_count_on_disk_covers_every_promise_answered_when_they_ran_together() {
        let mem = MemoryStorage::new();
        let store = Arc::new(Store::<String>::on(Arc::new(mem.clone())).unwrap());
        let before = store.mark().seq;
        let promises: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .force_prepared(TxnId::generate(), &user(), &format!("v{i}"), i)
                        .await
                })
            })
            .collect();
        for p in promises {
            p.await.unwrap().unwrap();
        }
        let mark = store.mark();
        assert_eq!(mark.seq, before + 20);
        let after = Store::<String>::on(Arc::new(mem.crashed(0))).unwrap();
        assert_eq!(after.mark().seq, mark.seq, "what was reported is on disk");
        assert_eq!(after.recover().unwrap().prepared.len(), 20);
    }

    #[tokio::test]
    async fn a_failed_flush_fails_the_promise_and_counts_nothing_durable() {
        let mem = MemoryStorage::new();
        let store = Store::<String>::on(Arc::new(mem.clone())).unwrap();
        let before = store.mark().seq;
        mem.fail_flushes(1);
        let txn = TxnId::generate();
        assert!(
            store
                .force_prepared(txn, &user(), &"v2".to_owned(), 1)
                .await
                .is_err(),
            "no yes-vote without the record on disk"
        );
        assert_eq!(store.mark().seq, before);
        assert!(
            Store::<String>::on(Arc::new(mem.crashed(0)))
                .unwrap()
                .recover()
                .unwrap()
                .prepared
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_record_damaged_in_storage_is_refused_on_recovery() {
        let mem = MemoryStorage::new();
        let store = Store::<String>::on(Arc::new(mem.clone())).unwrap();
        let txn = TxnId::generate();
        store
            .force_prepared(txn, &user(), &"v2".to_owned(), 1)
            .await
            .unwrap();
        mem.damage(&txn_key(txn));
        let error = store
            .recover()
            .err()
            .expect("a damaged record is never recovered");
        assert!(error.to_string().contains("checksum"), "{error}");
    }

    #[test]
    fn a_record_damaged_on_disk_is_caught_with_its_key() {
        let raw = encode(&vec![
            "$argon2id$one".to_owned(),
            "$argon2id$two".to_owned(),
        ]);
        assert_eq!(
            decode::<Vec<String>>(b"d/alice", &raw).unwrap(),
            ["$argon2id$one", "$argon2id$two"]
        );
        for at in 0..raw.len() {
            let mut damaged = raw.clone();
            damaged[at] ^= 0x04;
            let error = decode::<Vec<String>>(b"d/alice", &damaged)
                .expect_err("a flipped bit is never read as data");
            let said = error.to_string();
            assert!(said.contains("d/alice"), "{said}");
            assert!(!said.contains("argon2"), "{said}");
        }
        // Records from before the format byte still read.
        assert_eq!(
            decode::<Vec<String>>(b"d/bob", br#"["old"]"#).unwrap(),
            ["old"]
        );
    }

    #[tokio::test]
    async fn barrier_records_are_collected_oldest_first_in_slices_and_young_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store: Store<String> = Store::open(dir.path(), tpc_common::DEFAULT_CACHE_MIB).unwrap();
        let txns: Vec<TxnId> = (0..5).map(|_| TxnId::generate()).collect();
        for txn in &txns {
            let record = Barrier::<u8>::Refused {
                strategy: tpc_common::Strategy::Saga,
                reason: "r".into(),
            };
            store.note_barrier(*txn, &record);
        }
        store.settled().await.unwrap();
        assert_eq!(store.collect_barriers(0, 10).unwrap(), 0, "none is old");
        let after = tpc_common::now_ms() + 1;
        assert_eq!(store.collect_barriers(after, 2).unwrap(), 2);
        assert!(store.barrier::<u8>(txns[0]).unwrap().is_none());
        assert!(store.barrier::<u8>(txns[2]).unwrap().is_some());
        assert_eq!(store.collect_barriers(after, 10).unwrap(), 3);
        assert!(store.barrier::<u8>(txns[4]).unwrap().is_none());
    }

    #[tokio::test]
    async fn recovery_finds_prepared_and_committed_records_only() {
        let dir = tempfile::tempdir().unwrap();
        let user = UserId::parse("alice").unwrap();
        let (prepared, committed, aborted) =
            (TxnId::generate(), TxnId::generate(), TxnId::generate());
        {
            let store: Store<String> =
                Store::open(dir.path(), tpc_common::DEFAULT_CACHE_MIB).unwrap();
            store
                .force_prepared(prepared, &user, &"h1".to_owned(), 1)
                .await
                .unwrap();
            store
                .force_prepared(committed, &user, &"h2".to_owned(), 2)
                .await
                .unwrap();
            let owner = user.clone();
            store
                .force_commit(committed, 3, move |batch| {
                    Data::put(batch, &owner, &"h2");
                    Ok(())
                })
                .await
                .unwrap();
            store
                .force_prepared(aborted, &user, &"h3".to_owned(), 4)
                .await
                .unwrap();
            store.remove(aborted);
            store.settled().await.unwrap();
        }
        // The group commit's threads hold the database until they see its queue closed.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let store: Store<String> = Store::open(dir.path(), tpc_common::DEFAULT_CACHE_MIB).unwrap();
        let recovered = store.recover().unwrap();
        assert_eq!(
            recovered.prepared,
            [(prepared, user.clone(), "h1".to_owned())]
        );
        assert_eq!(recovered.committed, [(committed, 3)]);
        assert_eq!(
            store.data().get::<String>(&user).unwrap(),
            Some("h2".to_owned())
        );
    }
}
