use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};

use futures_util::future::Either;
use tokio::sync::{mpsc, oneshot};

use crate::storage::{Db, StorageError};

/// Told the flush's outcome, once a write has been applied.
type Finish = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// Written just before each flush, after every write that flush covers was applied: for what a store
/// needs on disk with its writes but only as of each flush, such as a count of them (one write per
/// flush instead of one per write).
pub type Seal = Arc<dyn Fn(&dyn crate::storage::Storage) -> Result<(), StorageError> + Send + Sync>;

/// A queued write: applies itself and returns how to tell its waiter, or `None` if it failed (its
/// waiter was told already).
struct Job {
    write: Box<dyn FnOnce() -> Option<Finish> + Send>,
    forced: bool,
}

/// Every write to one storage (`storage.rs`), group-committed, and never on an async worker.
///
/// A writer hands its write to [`GroupCommit::write`] (or [`GroupCommit::force`]). Two threads serve
/// each database: the *applier* applies every write the moment it arrives, in the order they were
/// queued, and answers an unforced one at once; the *flusher* takes every forced write applied so far,
/// calls `flush()` once for all of them, and answers them together. Sixteen concurrent commits cost one
/// flush, not sixteen; writes keep flowing into sled while a flush runs (sled's own I/O threads start
/// on them at once), and no write runs where it would stall an async worker (a sled write can wait for
/// its I/O buffers, a read behind it for the disk).
///
/// Why not `sled::Db::flush_async`: in sled 0.34 concurrent `flush_async` calls deadlock (sled #1308).
/// Correctness: the flusher takes a write only after it was applied, and flushes after taking it, so
/// that flush covers it; a forced write is answered only after its flush.
#[derive(Clone)]
pub struct GroupCommit {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    /// The applier's queue.
    Threads(mpsc::UnboundedSender<Job>),
    /// In a simulation: each write applied, and flushed if forced, in place, so that no other thread
    /// decides when a write lands (`simulation.rs`).
    InPlace(Db, Option<Seal>),
}

/// How long a flush takes in a simulation: a loaded disk's, so that crashes land inside flushes too.
const SIMULATED_FLUSH: std::time::Duration = std::time::Duration::from_millis(5);

/// Forced writes applied and waiting for a flush; `None` once the applier stopped.
type Applied = Option<Vec<Finish>>;

impl GroupCommit {
    /// Starts the applier and the flusher (two threads, which stop once every handle is dropped); in a
    /// simulation, none.
    pub fn start(db: Db) -> Self {
        Self::sealed(db, None)
    }

    /// [`GroupCommit::start`], with `seal` written before every flush (see [`Seal`]). A flush whose
    /// seal fails fails for every write it was to cover.
    pub fn sealed(db: Db, seal: Option<Seal>) -> Self {
        if crate::simulation::active() {
            return Self {
                inner: Inner::InPlace(db, seal),
            };
        }
        let (queue, mut rx) = mpsc::unbounded_channel::<Job>();
        let applied: Arc<(Mutex<Applied>, Condvar)> =
            Arc::new((Mutex::new(Some(Vec::new())), Condvar::new()));
        let to_flush = applied.clone();
        let flusher_db = db.clone();
        let flusher_seal = seal.clone();
        std::thread::Builder::new()
            .name("tpc-apply".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    let forced = job.forced;
                    // A write that failed was answered already; one that panicked dropped its waiter's
                    // sender (the waiter hears the task stopped), and the others go on.
                    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job.write));
                    if let Ok(Some(finish)) = applied {
                        if forced {
                            let (lock, ready) = &*to_flush;
                            if let Some(waiting) =
                                lock.lock().unwrap_or_else(|p| p.into_inner()).as_mut()
                            {
                                waiting.push(finish);
                            }
                            ready.notify_one();
                        } else {
                            finish(Ok(()));
                        }
                    }
                }
                let (lock, ready) = &*to_flush;
                // Whatever is still waiting is flushed one last time, then the flusher stops.
                let last = lock.lock().unwrap_or_else(|p| p.into_inner()).take();
                ready.notify_one();
                if let Some(last) = last.filter(|l| !l.is_empty()) {
                    flush_and_answer(&*db, seal.as_ref(), last);
                }
            })
            .expect("cannot start the apply thread");
        std::thread::Builder::new()
            .name("tpc-flush".into())
            .spawn(move || {
                let (lock, ready) = &*applied;
                loop {
                    let batch = {
                        let mut waiting = lock.lock().unwrap_or_else(|p| p.into_inner());
                        loop {
                            match waiting.as_mut() {
                                None => return,
                                Some(w) if !w.is_empty() => break std::mem::take(w),
                                Some(_) => {
                                    waiting = ready.wait(waiting).unwrap_or_else(|p| p.into_inner())
                                }
                            }
                        }
                    };
                    flush_and_answer(&*flusher_db, flusher_seal.as_ref(), batch);
                }
            })
            .expect("cannot start the flush thread");
        Self {
            inner: Inner::Threads(queue),
        }
    }
    /// Queues `write` (applied in queue order), and returns a future that resolves once it is applied
    /// and, if `forced`, on disk. The write is queued at the call, not when the future is first polled:
    /// a caller that does not need the answer may drop the future, and a failure nobody waits for is
    /// logged.
    pub fn write<E, W>(
        &self,
        forced: bool,
        write: W,
    ) -> impl Future<Output = Result<(), E>> + Send + 'static + use<E, W>
    where
        E: From<StorageError> + Display + Send + 'static,
        W: FnOnce() -> Result<(), E> + Send + 'static,
    {
        let queue = match &self.inner {
            Inner::Threads(queue) => queue,
            Inner::InPlace(db, seal) => {
                // Applied at once; a forced write's flush takes a moment, as on a disk, so that a crash
                // can land between the write and its flush (and one whose waiter is gone is flushed by
                // the next).
                let applied = write();
                let (db, seal) = (db.clone(), seal.clone());
                return Either::Left(async move {
                    applied?;
                    if forced {
                        tokio::time::sleep(SIMULATED_FLUSH).await;
                        sealed_flush(&*db, seal.as_ref()).map_err(E::from)?;
                    }
                    Ok(())
                });
            }
        };
        let (tx, rx) = oneshot::channel::<Result<(), E>>();
        let job = Job {
            forced,
            write: Box::new(move || match write() {
                Ok(()) => Some(Box::new(move |flushed: Result<(), StorageError>| {
                    if let Err(Err(e)) = tx.send(flushed.map_err(E::from)) {
                        tracing::error!(cause = %e, "a write nobody waited for was not made durable");
                    }
                }) as Finish),
                Err(e) => {
                    if let Err(Err(e)) = tx.send(Err(e)) {
                        tracing::error!(cause = %e, "a write nobody waited for failed");
                    }
                    None
                }
            }),
        };
        let queued = queue.send(job).is_ok();
        Either::Right(async move {
            if !queued {
                return Err(E::from(stopped()));
            }
            rx.await.unwrap_or_else(|_| Err(E::from(stopped())))
        })
    }

    /// Returns once everything written to the database before this call is on disk.
    pub async fn force(&self) -> Result<(), StorageError> {
        self.write(true, || Ok(())).await
    }
}

/// Flushes once for `batch` (every write in it applied already) and answers each.
fn flush_and_answer(db: &dyn crate::storage::Storage, seal: Option<&Seal>, batch: Vec<Finish>) {
    let flushed = sealed_flush(db, seal);
    for finish in batch {
        finish(flushed.clone());
    }
}

fn sealed_flush(db: &dyn crate::storage::Storage, seal: Option<&Seal>) -> Result<(), StorageError> {
    if let Some(seal) = seal {
        seal(db)?;
    }
    db.flush()
}

fn stopped() -> StorageError {
    StorageError::Stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_forced_writes_all_complete() {
        let dir = tempfile_dir();
        let db: Db = Arc::new(crate::storage::SledStorage::open(&dir, 1).unwrap());
        let gc = GroupCommit::start(db.clone());
        let mut tasks = Vec::new();
        for i in 0..32u32 {
            let (db, gc) = (db.clone(), gc.clone());
            tasks.push(tokio::spawn(async move {
                gc.write::<StorageError, _>(true, move || db.insert(&i.to_be_bytes(), b"v"))
                    .await
                    .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(db.range_from(b"").count(), 32);
        drop(db);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn writes_apply_in_queue_order_even_when_nobody_waits() {
        let dir = tempfile_dir();
        let db: Db = Arc::new(crate::storage::SledStorage::open(&dir, 1).unwrap());
        let gc = GroupCommit::start(db.clone());
        for i in 0..100u32 {
            let db = db.clone();
            // Dropped at once: queued at the call all the same.
            drop(gc.write::<StorageError, _>(false, move || db.insert(b"k", &i.to_be_bytes())));
        }
        gc.force().await.unwrap();
        assert_eq!(db.get(b"k").unwrap().unwrap(), 99u32.to_be_bytes());
        drop(db);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn a_failed_write_is_answered_with_its_own_error_and_the_others_go_on() {
        let dir = tempfile_dir();
        let db: Db = Arc::new(crate::storage::SledStorage::open(&dir, 1).unwrap());
        let gc = GroupCommit::start(db.clone());
        let bad = gc.write::<StorageError, _>(true, || Err(StorageError::Injected("refused")));
        let good = {
            let db = db.clone();
            gc.write::<StorageError, _>(true, move || db.insert(b"k", b"v"))
        };
        assert!(bad.await.unwrap_err().to_string().contains("refused"));
        good.await.unwrap();
        assert!(db.contains(b"k").unwrap());
        drop(db);
        std::fs::remove_dir_all(dir).ok();
    }

    /// A disk whose flushes wait until the test lets each one through.
    struct Gated {
        disk: crate::storage::MemoryStorage,
        gate: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl crate::storage::Storage for Gated {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
            self.disk.get(key)
        }
        fn scan_prefix(&self, prefix: &[u8]) -> crate::storage::Entries {
            self.disk.scan_prefix(prefix)
        }
        fn range_from(&self, start: &[u8]) -> crate::storage::Entries {
            self.disk.range_from(start)
        }
        fn apply(&self, batch: crate::storage::Batch) -> Result<(), StorageError> {
            self.disk.apply(batch)
        }
        fn update(
            &self,
            key: &[u8],
            change: crate::storage::Change<'_>,
        ) -> Result<(), StorageError> {
            self.disk.update(key, change)
        }
        fn flush(&self) -> Result<(), StorageError> {
            let _ = self.gate.lock().unwrap().recv();
            self.disk.flush()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_seal_is_written_once_per_flush_after_every_write_it_covers() {
        let (open, gate) = std::sync::mpsc::channel();
        let disk = crate::storage::MemoryStorage::new();
        let db: Db = Arc::new(Gated {
            disk: disk.clone(),
            gate: Mutex::new(gate),
        });
        // The seal counts itself, and records how many writes it found applied.
        let seal: Seal = Arc::new(|db| {
            let seals = db.get(b"seals")?.map_or(0, |v| v[0]) + 1;
            let writes = db.scan_prefix(b"w/").count() as u8;
            let mut batch = crate::storage::Batch::default();
            batch.insert(b"seals".to_vec(), [seals]);
            batch.insert(format!("seal/{seals}").into_bytes(), [writes]);
            db.apply(batch)
        });
        let gc = GroupCommit::sealed(db.clone(), Some(seal));
        let write = |i: u8| {
            let db = db.clone();
            gc.write::<StorageError, _>(true, move || db.insert(&[b'w', b'/', i], b"v"))
        };
        let until = |what: &'static str, done: Box<dyn Fn() -> bool + Send>| async move {
            for _ in 0..5_000 {
                if done() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            panic!("{what} never happened");
        };
        // The first flush is held while ten more forced writes queue behind it.
        let first = tokio::spawn(write(0));
        let sealing = db.clone();
        until(
            "the first seal",
            Box::new(move || sealing.get(b"seals").unwrap().is_some()),
        )
        .await;
        let rest: Vec<_> = (1..=10).map(|i| tokio::spawn(write(i))).collect();
        let applying = db.clone();
        until(
            "the ten writes applied",
            Box::new(move || applying.scan_prefix(b"w/").count() == 11),
        )
        .await;
        open.send(()).unwrap();
        first.await.unwrap().unwrap();
        open.send(()).unwrap();
        for w in rest {
            w.await.unwrap().unwrap();
        }
        let read = |key: &[u8]| db.get(key).unwrap().map(|v| v[0]);
        assert_eq!(read(b"seals"), Some(2), "one seal per flush, not per write");
        assert_eq!(
            read(b"seal/1"),
            Some(1),
            "the first flush's write was applied before its seal"
        );
        assert_eq!(read(b"seal/2"), Some(11), "and the second's ten");
        assert_eq!(
            crate::storage::Storage::get(&disk.crashed(0), b"seals")
                .unwrap()
                .map(|v| v[0]),
            Some(2),
            "each seal made durable by its flush"
        );
    }

    #[tokio::test]
    async fn a_failed_seal_fails_the_writes_of_its_flush() {
        let dir = tempfile_dir();
        let db: Db = Arc::new(crate::storage::SledStorage::open(&dir, 1).unwrap());
        let seal: Seal = Arc::new(|_| Err(StorageError::Injected("seal")));
        let gc = GroupCommit::sealed(db.clone(), Some(seal));
        let forced = {
            let db = db.clone();
            gc.write::<StorageError, _>(true, move || db.insert(b"k", b"v"))
        };
        assert!(forced.await.unwrap_err().to_string().contains("seal"));
        drop(db);
        std::fs::remove_dir_all(dir).ok();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tpc-gc-test-{}", crate::TxnId::generate()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
