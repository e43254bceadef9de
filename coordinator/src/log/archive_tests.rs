//! The archive, on sled (the storage it exists for) and on the in-memory storage's crashes.

use std::sync::Arc;

use tpc_common::storage::{MemoryStorage, Storage};
use tpc_common::{OperationKind, TxnId, UserId};

use super::archive::ARCHIVE;
use super::{BLOCK, Log, State, TXN};
use crate::email;
use crate::engine::{AbortNote, CommitRecord, LoggedRequest};

fn commit() -> CommitRecord {
    let txn = TxnId::generate();
    CommitRecord {
        txn,
        request_id: format!("r-{txn}"),
        kind: OperationKind::Update,
        user: UserId::parse("alice").unwrap(),
        email: tpc_common::Email::parse("alice@example.com").unwrap(),
        started_at: txn.created_ms(),
        decided_at: txn.created_ms(),
    }
}

fn abort() -> AbortNote {
    let txn = TxnId::generate();
    AbortNote {
        txn,
        request_id: format!("r-{txn}"),
        kind: OperationKind::Update,
        user: UserId::parse("bob").unwrap(),
        reason: "conflict".into(),
        started_at: txn.created_ms(),
        decided_at: txn.created_ms(),
    }
}

/// Committed with END and its e-mail sent: finished.
async fn finished(log: &Log) -> TxnId {
    let r = commit();
    log.force_commit(&r, &email::compose(&r)).await.unwrap();
    log.end(r.txn).await.unwrap();
    log.mark_sent(&[r.txn]).await.unwrap();
    r.txn
}

fn count(db: &dyn Storage, prefix: &[u8]) -> usize {
    db.scan_prefix(prefix).count()
}

fn sled_log() -> (tempfile::TempDir, Log, Arc<dyn Storage>) {
    let dir = tempfile::tempdir().unwrap();
    let db: Arc<dyn Storage> = Arc::new(
        tpc_common::storage::SledStorage::open(dir.path(), tpc_common::DEFAULT_CACHE_MIB).unwrap(),
    );
    (dir, Log::on(db.clone()), db)
}

#[tokio::test]
async fn finished_records_move_into_blocks_and_read_as_before() {
    let (_dir, log, db) = sled_log();
    let mut all = Vec::new();
    let (mut committing, mut unsent) = (Vec::new(), Vec::new());
    for i in 0..80 {
        match i % 10 {
            // In doubt: COMMIT without END.
            3 => {
                let r = commit();
                log.force_commit(&r, &email::compose(&r)).await.unwrap();
                committing.push(r.clone());
                all.push(r.txn);
            }
            // Ended, its e-mail still in the outbox.
            7 => {
                let r = commit();
                log.force_commit(&r, &email::compose(&r)).await.unwrap();
                log.end(r.txn).await.unwrap();
                unsent.push(r.txn);
                all.push(r.txn);
            }
            5 => {
                let note = abort();
                log.note_abort(&note).await.unwrap();
                all.push(note.txn);
            }
            _ => all.push(finished(&log).await),
        }
    }
    let before: Vec<_> = log.records().unwrap();
    assert_eq!(before.len(), 80);

    // 64 finished records (seven committed and one aborted in ten): two blocks.
    let moved = log.archive(tpc_common::now_ms() + 1).unwrap();
    assert_eq!(moved, 2 * BLOCK);
    assert_eq!(count(&*db, ARCHIVE), 2);
    assert_eq!(count(&*db, TXN), 80 - 2 * BLOCK);
    assert_eq!(
        log.archive(tpc_common::now_ms() + 1).unwrap(),
        0,
        "nothing moves twice"
    );

    // Every read sees the same records.
    assert_eq!(
        log.records().unwrap(),
        before,
        "the whole log, newest first"
    );
    for record in &before {
        assert_eq!(log.get(record.txn).unwrap().as_ref(), Some(record));
        assert!(log.contains(record.txn).unwrap());
        assert_eq!(
            log.committed_request(&record.request_id).unwrap(),
            record.commit_record().map(|c| LoggedRequest {
                txn: c.txn,
                kind: c.kind,
                user: c.user,
            })
        );
    }
    assert!(!log.contains(TxnId::generate()).unwrap());
    assert_eq!(
        log.unfinished_commits().unwrap(),
        committing,
        "recovery finds what is in doubt: never archived"
    );
    for txn in &unsent {
        assert!(!log.get(*txn).unwrap().unwrap().email_sent);
    }

    // The listing merges both, newest first, with its bound and its filter.
    let aborted: Vec<_> = before
        .iter()
        .filter(|r| r.state == State::Aborted)
        .map(|r| r.txn)
        .collect();
    let mut looked_at = 0;
    let listed = log
        .newest(3, Some(aborted[1]), |r| {
            looked_at += 1;
            r.state == State::Aborted
        })
        .unwrap();
    assert_eq!(
        listed.iter().map(|r| r.txn).collect::<Vec<_>>(),
        aborted[2..5]
    );
    let oldest_listed = before.iter().position(|r| r.txn == aborted[4]).unwrap();
    let first_looked = before.iter().position(|r| r.txn == aborted[1]).unwrap() + 1;
    assert_eq!(looked_at, oldest_listed - first_looked + 1, "once each");
    // Every page of five, from every record on: the blocks newer than a page are skipped unread,
    // and the one a page starts in is read.
    for (at, record) in before.iter().enumerate() {
        let page = log.newest(5, Some(record.txn), |_| true).unwrap();
        let expected = &before[at + 1..(at + 6).min(before.len())];
        assert_eq!(page, expected, "the page before record {at}");
    }

    // Those left behind finish later and stay under their own keys, still found.
    for r in &committing {
        log.end(r.txn).await.unwrap();
    }
    log.mark_sent(&committing.iter().map(|r| r.txn).collect::<Vec<_>>())
        .await
        .unwrap();
    for r in &committing {
        assert_eq!(
            log.get(r.txn).unwrap().map(|r| r.state),
            Some(State::Committed)
        );
    }
    assert_eq!(log.records().unwrap().len(), 80);
}

#[tokio::test]
async fn a_block_written_while_the_listing_scans_is_read_too() {
    let (_dir, log, _db) = sled_log();
    let mut written = Vec::new();
    for _ in 0..2 * BLOCK {
        written.push(finished(&log).await);
    }
    written.reverse();
    // The first record the listing looks at archives everything: the older records leave their
    // own keys behind the scan's position and land in blocks written after it began.
    let mut archived = false;
    let listed = log
        .newest(usize::MAX, None, |_| {
            if !archived {
                archived = true;
                assert_eq!(log.archive(tpc_common::now_ms() + 1).unwrap(), 2 * BLOCK);
            }
            true
        })
        .unwrap();
    assert_eq!(listed.iter().map(|r| r.txn).collect::<Vec<_>>(), written);
}

#[tokio::test]
async fn archiving_goes_in_slices_and_stops_at_young_records() {
    let (_dir, log, db) = sled_log();
    let mut old = Vec::new();
    for _ in 0..3 * BLOCK {
        old.push(finished(&log).await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    let settled = tpc_common::now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    let young = finished(&log).await;

    // A slice that ends mid-block writes what it has, and the next goes on from there.
    let first = log.archive_slice(None, settled, BLOCK + 5).unwrap();
    assert_eq!(first.archived, BLOCK + 5);
    assert_eq!(first.resume_after, Some(old[BLOCK + 4]));
    let rest = log
        .archive_slice(first.resume_after, settled, usize::MAX)
        .unwrap();
    assert_eq!(rest.archived, BLOCK, "one full block; the 27 after it wait");
    assert_eq!(rest.resume_after, None);
    assert_eq!(count(&*db, ARCHIVE), 3);

    // The next pass starts after the newest block, and never takes a record decided after `settled`.
    let pass = log.archive_slice(None, settled, usize::MAX).unwrap();
    assert_eq!(pass.archived, 0);
    assert!(db.contains(&super::key(TXN, young)).unwrap());
    assert_eq!(log.records().unwrap().len(), 3 * BLOCK + 1);
}

#[tokio::test]
async fn garbage_collection_takes_whole_blocks_and_their_request_ids() {
    let (_dir, log, db) = sled_log();
    let mut old = Vec::new();
    for _ in 0..2 * BLOCK {
        old.push(finished(&log).await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    let cutoff = tpc_common::now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    let mut young = Vec::new();
    for _ in 0..BLOCK {
        young.push(finished(&log).await);
    }
    assert_eq!(log.archive(tpc_common::now_ms() + 1).unwrap(), 3 * BLOCK);
    let request_of = |txn: TxnId| format!("r-{txn}");

    let first = log.collect_archive_slice(None, cutoff, 1).unwrap();
    assert_eq!(first.collected.len(), BLOCK, "one block per slice of one");
    assert_eq!(first.resume_after, Some(old[BLOCK - 1]));
    let rest = log
        .collect_archive_slice(first.resume_after, cutoff, usize::MAX)
        .unwrap();
    assert_eq!(
        rest.collected.iter().map(|r| r.txn).collect::<Vec<_>>(),
        old[BLOCK..]
    );
    assert_eq!(rest.resume_after, None, "stopped at the young block");
    for txn in &old {
        assert_eq!(log.get(*txn).unwrap(), None);
        assert_eq!(log.committed_request(&request_of(*txn)).unwrap(), None);
    }
    for txn in &young {
        assert!(log.get(*txn).unwrap().is_some());
        assert!(log.committed_request(&request_of(*txn)).unwrap().is_some());
    }
    assert_eq!(count(&*db, ARCHIVE), 1);
    assert_eq!(log.collect_garbage(u64::MAX).unwrap().len(), BLOCK);
    assert_eq!(count(&*db, ARCHIVE) + count(&*db, TXN), 0);
    assert_eq!(count(&*db, super::REQUEST), 0);
}

#[tokio::test]
async fn a_crash_keeps_each_record_readable_once() {
    let mem = MemoryStorage::new();
    let log = Log::on(Arc::new(mem.clone()));
    let mut written = Vec::new();
    for _ in 0..BLOCK {
        written.push(finished(&log).await);
    }
    log.sync().await.unwrap();
    assert_eq!(log.archive(tpc_common::now_ms() + 1).unwrap(), BLOCK);

    // Archiving is not forced: a crash before the next flush finds the records where they were.
    let lost = Log::on(Arc::new(mem.crashed(0)));
    let mut records = lost.records().unwrap();
    records.reverse();
    assert_eq!(records.iter().map(|r| r.txn).collect::<Vec<_>>(), written);
    assert_eq!(count(&mem.crashed(0), ARCHIVE), 0);

    // The block is written before the records leave their keys: a crash between the two finds each
    // record twice, and every read once.
    let both = Log::on(Arc::new(mem.crashed(1)));
    assert_eq!(count(&mem.crashed(1), ARCHIVE), 1);
    assert_eq!(count(&mem.crashed(1), TXN), BLOCK);
    let mut records = both.records().unwrap();
    records.reverse();
    assert_eq!(records.iter().map(|r| r.txn).collect::<Vec<_>>(), written);
    assert_eq!(
        both.collect_garbage(u64::MAX).unwrap().len(),
        2 * BLOCK,
        "both copies collected"
    );
    assert!(both.records().unwrap().is_empty());

    log.sync().await.unwrap();
    let kept = Log::on(Arc::new(mem.crashed(0)));
    assert_eq!(kept.records().unwrap().len(), BLOCK);
    assert_eq!(count(&mem.crashed(0), ARCHIVE), 1);
    assert_eq!(count(&mem.crashed(0), TXN), 0);
}

/// A storage that keeps its keys elsewhere, as etcd does.
struct Remote(MemoryStorage);

impl Storage for Remote {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, tpc_common::storage::StorageError> {
        self.0.get(key)
    }
    fn holds_keys_in_memory(&self) -> bool {
        false
    }
    fn scan_prefix(&self, prefix: &[u8]) -> tpc_common::storage::Entries {
        self.0.scan_prefix(prefix)
    }
    fn range_from(&self, start: &[u8]) -> tpc_common::storage::Entries {
        self.0.range_from(start)
    }
    fn apply(
        &self,
        batch: tpc_common::storage::Batch,
    ) -> Result<(), tpc_common::storage::StorageError> {
        self.0.apply(batch)
    }
    fn update(
        &self,
        key: &[u8],
        change: tpc_common::storage::Change<'_>,
    ) -> Result<(), tpc_common::storage::StorageError> {
        self.0.update(key, change)
    }
    fn flush(&self) -> Result<(), tpc_common::storage::StorageError> {
        self.0.flush()
    }
}

#[tokio::test]
async fn a_storage_that_keeps_its_keys_elsewhere_keeps_a_key_per_record() {
    let mem = MemoryStorage::new();
    let log = Log::on(Arc::new(Remote(mem.clone())));
    for _ in 0..BLOCK {
        finished(&log).await;
    }
    assert_eq!(log.archive(tpc_common::now_ms() + 1).unwrap(), 0);
    assert_eq!(count(&mem, ARCHIVE), 0);
    assert_eq!(count(&mem, TXN), BLOCK);
    assert_eq!(log.records().unwrap().len(), BLOCK);
}
