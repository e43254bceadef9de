use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};

use futures_util::future::Either;
use tokio::sync::{mpsc, oneshot};

use crate::storage::{Db, StorageError};

/// Told the flush's outcome, once a write has been applied.
type Finish = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

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
    InPlace(Db),
}

/// How long a flush takes in a simulation: a loaded disk's, so that crashes land inside flushes too.
const SIMULATED_FLUSH: std::time::Duration = std::time::Duration::from_millis(5);

/// Forced writes applied and waiting for a flush; `None` once the applier stopped.
type Applied = Option<Vec<Finish>>;

impl GroupCommit {
    /// Starts the applier and the flusher (two threads, which stop once every handle is dropped); in a
    /// simulation, none.
    pub fn start(db: Db) -> Self {
        if crate::simulation::active() {
            return Self {
                inner: Inner::InPlace(db),
            };
        }
        let (queue, mut rx) = mpsc::unbounded_channel::<Job>();
        let applied: Arc<(Mutex<Applied>, Condvar)> =
            Arc::new((Mutex::new(Some(Vec::new())), Condvar::new()));
        let to_flush = applied.clone();
        let flusher_db = db.clone();
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
                    flush_and_answer(&*db, last);
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
                    flush_and_answer(&*flusher_db, batch);
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
            Inner::InPlace(db) => {
                // Applied at once; a forced write's flush takes a moment, as on a disk, so that a crash
                // can land between the write and its flush (and one whose waiter is gone is flushed by
                // the next).
                let applied = write();
                let db = db.clone();
                return Either::Left(async move {
                    applied?;
                    if forced {
                        tokio::time::sleep(SIMULATED_FLUSH).await;
                        db.flush().map_err(E::from)?;
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
fn flush_and_answer(db: &dyn crate::storage::Storage, batch: Vec<Finish>) {
    let flushed = db.flush();
    for finish in batch {
        finish(flushed.clone());
    }
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

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tpc-gc-test-{}", crate::TxnId::generate()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
