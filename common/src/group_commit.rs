use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

type Waiter = oneshot::Sender<Result<(), Arc<sled::Error>>>;

/// Forced writes for one sled database, group-committed.
///
/// A writer applies its batch, then awaits [`GroupCommit::force`]. One task per database collects every
/// writer waiting at that moment, calls `flush()` once for all of them on the blocking pool, and wakes
/// them together, so sixteen concurrent commits cost one fsync, not sixteen.
///
/// Why not `sled::Db::flush_async`: in sled 0.34 concurrent `flush_async` calls deadlock (sled #1308).
/// Correctness: a waiter's batch was applied before it queued, and the flush that answers it starts after
/// it was dequeued, so that flush covers its batch.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<Waiter>,
}

impl GroupCommit {
    /// Starts the flushing task on the current tokio runtime.
    pub fn start(db: sled::Db) -> Self {
        let (queue, mut rx) = mpsc::unbounded_channel::<Waiter>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(next) = rx.try_recv() {
                    batch.push(next);
                }
                let db = db.clone();
                let flushed = match tokio::task::spawn_blocking(move || db.flush()).await {
                    Ok(result) => result.map(drop).map_err(Arc::new),
                    // Not the panic's payload: it could hold anything.
                    Err(_) => Err(Arc::new(sled::Error::ReportableBug(
                        "the flush task panicked".into(),
                    ))),
                };
                for waiter in batch {
                    // A waiter that gave up (its RPC was cancelled) no longer cares.
                    let _ = waiter.send(flushed.clone());
                }
            }
        });
        Self { queue }
    }

    /// Returns once everything written to the database before this call is on disk.
    pub async fn force(&self) -> Result<(), Arc<sled::Error>> {
        let (tx, rx) = oneshot::channel();
        let stopped = || {
            Arc::new(sled::Error::ReportableBug(
                "group commit task stopped".into(),
            ))
        };
        self.queue.send(tx).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_forces_all_complete() {
        let dir = tempfile_dir();
        let db = sled::open(&dir).unwrap();
        let gc = GroupCommit::start(db.clone());
        let mut tasks = Vec::new();
        for i in 0..32u32 {
            let (db, gc) = (db.clone(), gc.clone());
            tasks.push(tokio::spawn(async move {
                db.insert(i.to_be_bytes(), &b"v"[..]).unwrap();
                gc.force().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(db.len(), 32);
        drop(db);
        std::fs::remove_dir_all(dir).ok();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tpc-gc-test-{}", crate::TxnId::generate()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
