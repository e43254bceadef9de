//! The coordinator's durable log, one storage (sled in production, `tpc_common::storage`):
//! - `t/<txn>` → [`TxnRecord`]: COMMIT records (forced: the commit point), END (unforced), ABORT notes
//!   (unforced, only for `tpc txn list`: presumed abort needs no abort record);
//! - `o/<txn>` → [`OutboxEntry`]: the e-mail, written in the same forced batch as the COMMIT record and
//!   deleted when the mail server accepted it. Its absence is what "sent" means: marking an e-mail sent
//!   deletes one key and rewrites no record (so it cannot race with END rewriting the same record);
//! - `r/<request id>` → txn id: the COMMIT record of each request id, written in the record's batch and
//!   deleted just before it is collected, so a retry is answered from the log and the engine need not
//!   remember every request id of the retention window (`engine/requests.rs`);
//! - `a/<txn>` → finished records, 32 to a value, once they are 30 s old ([`archive`]): sled's memory
//!   grows with its pages, and one key per record for 24 hours made the coordinator's grow with
//!   every change.

mod archive;
#[cfg(test)]
mod archive_tests;

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tpc_common::storage::{Batch, Db, Entry, SledStorage, StorageError};
use tpc_common::{Email, GroupCommit, OperationKind, Strategy, TxnId, UserId};

use crate::engine::{AbortNote, CommitRecord, LoggedRequest};

pub use archive::{ArchiveSlice, BLOCK, SETTLED_MS};

const TXN: &[u8] = b"t/";
const OUTBOX: &[u8] = b"o/";
const REQUEST: &[u8] = b"r/";
/// The events strategy's deliveries waiting for a consumer: `e/<participant>/<txn>` → sealed operation.
const DELIVERY: &[u8] = b"e/";
/// How far each participant's store went, as it reported: `w/<participant>` → {id, seq}.
const STORE_MARK: &[u8] = b"w/";
/// Which strategy wrote this log.
const STRATEGY: &[u8] = b"strategy";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log storage: {0}")]
    Storage(#[from] StorageError),
    #[error("corrupt log record: {0}")]
    Corrupt(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// COMMIT forced; not every participant has acknowledged (events: published, not yet delivered to
    /// every consumer).
    Committing,
    /// END written: every participant acknowledged (saga: every step applied).
    Committed,
    Aborted,
    /// Saga: started (forced before its first step); steps running.
    Running,
    /// Saga: a step failed; the steps done are being compensated.
    Compensating,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    pub txn: TxnId,
    /// The strategy that ran it (records written before strategies existed are two-phase commits).
    #[serde(default)]
    pub strategy: Strategy,
    pub request_id: String,
    pub kind: OperationKind,
    pub user: UserId,
    /// Where the e-mail went (committed transactions only).
    pub email: Option<Email>,
    pub state: State,
    pub reason: String,
    pub started_at: u64,
    pub decided_at: u64,
    /// Derived when read: the e-mail left the outbox (stored only by older versions).
    #[serde(default)]
    pub email_sent: bool,
    /// Why the e-mail can never be sent, if it cannot (it then leaves the outbox unsent).
    #[serde(default)]
    pub email_error: Option<String>,
}

/// What one slice of garbage collection did.
#[derive(Debug)]
pub struct GarbageSlice {
    /// The records deleted.
    pub collected: Vec<TxnRecord>,
    /// Where the next slice starts, or `None` if the scan reached records too young to collect.
    pub resume_after: Option<TxnId>,
}

/// An e-mail waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub txn: TxnId,
    pub to: String,
    pub subject: String,
    pub body: String,
    /// Stable across retries (derived from the txn id), so receivers can drop duplicates.
    pub message_id: String,
}

/// How far a participant's store went, as it reported (`w/<participant>`).
#[derive(Debug, Serialize, Deserialize)]
struct StoreMark {
    id: String,
    seq: u64,
}

pub struct Log {
    db: Db,
    forcer: GroupCommit,
    /// Whether finished records move into the archive ([`archive`]): on storages that hold their keys
    /// in this process's memory.
    archives: bool,
}

impl Log {
    /// Opens (or creates) the log with a page cache of `cache_mib` MiB, and starts its group commit's
    /// two threads.
    pub fn open(dir: &Path, cache_mib: u64) -> Result<Self, LogError> {
        Ok(Self::on(std::sync::Arc::new(SledStorage::open(
            dir, cache_mib,
        )?)))
    }

    /// The log kept in `db` (a [`tpc_common::storage::MemoryStorage`] in tests and simulation).
    pub fn on(db: Db) -> Self {
        let forcer = GroupCommit::start(db.clone());
        let archives = db.holds_keys_in_memory();
        Self {
            db,
            forcer,
            archives,
        }
    }

    /// The strategy that wrote this log; `None` for a new log (or one from before strategies, which
    /// only two-phase commit wrote: see `set_strategy`).
    pub fn strategy(&self) -> Result<Option<Strategy>, LogError> {
        match self.db.get(STRATEGY)? {
            Some(raw) => Ok(Some(decode(&raw)?)),
            None if self.db.scan_prefix(TXN).next().is_some() || self.has_blocks()? => {
                Ok(Some(Strategy::TwoPc))
            }
            None => Ok(None),
        }
    }

    /// Records the strategy of a new log (forced with the first forced write).
    pub fn set_strategy(&self, strategy: Strategy) -> Result<(), LogError> {
        self.db.insert(STRATEGY, &encode(&strategy))?;
        self.db.flush()?;
        Ok(())
    }

    /// The commit point: the COMMIT record and its e-mail, in one batch, on disk when this returns.
    pub async fn force_commit(
        &self,
        record: &CommitRecord,
        mail: &OutboxEntry,
    ) -> Result<(), LogError> {
        self.force_decision(
            Strategy::TwoPc,
            State::Committing,
            record,
            mail,
            Batch::default(),
        )
        .await
    }

    /// A decision and its e-mail in one forced batch, with `extra` writes (the events strategy's
    /// deliveries): the commit point of every strategy.
    pub async fn force_decision(
        &self,
        strategy: Strategy,
        state: State,
        record: &CommitRecord,
        mail: &OutboxEntry,
        mut batch: Batch,
    ) -> Result<(), LogError> {
        let txn = TxnRecord {
            txn: record.txn,
            strategy,
            request_id: record.request_id.clone(),
            kind: record.kind,
            user: record.user.clone(),
            email: Some(record.email.clone()),
            state,
            reason: String::new(),
            started_at: record.started_at,
            decided_at: record.decided_at,
            email_sent: false,
            email_error: None,
        };
        batch.insert(key(TXN, record.txn), encode(&txn));
        batch.insert(key(OUTBOX, record.txn), encode(mail));
        batch.insert(
            request_key(&record.request_id),
            record.txn.as_bytes().to_vec(),
        );
        self.apply_forced(batch).await
    }

    /// Applies `batch` and forces it, in the group commit's round.
    async fn apply_forced(&self, batch: Batch) -> Result<(), LogError> {
        let db = self.db.clone();
        self.forcer
            .write::<LogError, _>(true, move || {
                db.apply(batch)?;
                Ok(())
            })
            .await
    }

    /// Queues an unforced write: applied in order with every other write of the log, in the group
    /// commit's next round on the blocking pool, never on an async worker. The returned future tells
    /// when it is applied; a caller that does not need to know drops it (a failure is logged).
    fn queue<W>(
        &self,
        write: W,
    ) -> impl Future<Output = Result<(), LogError>> + Send + 'static + use<W>
    where
        W: FnOnce(&Db) -> Result<(), LogError> + Send + 'static,
    {
        let db = self.db.clone();
        self.forcer.write(false, move || write(&db))
    }

    /// Notes an abort for the listing, unforced (see [`Log::queue`]).
    pub fn note_abort(
        &self,
        note: &AbortNote,
    ) -> impl Future<Output = Result<(), LogError>> + Send + 'static + use<> {
        self.insert(&abort_record(Strategy::TwoPc, State::Aborted, note))
    }

    /// Writes `record` as it is, unforced (see [`Log::queue`]).
    pub fn insert(
        &self,
        record: &TxnRecord,
    ) -> impl Future<Output = Result<(), LogError>> + Send + 'static + use<> {
        let (k, v) = (key(TXN, record.txn), encode(record));
        self.queue(move |db| {
            db.insert(&k, &v)?;
            Ok(())
        })
    }

    /// Makes every write queued before this call durable: at a graceful stop, so that the unforced
    /// notes of the last moments (an abort for the listing, an END) are not left to a later flush that
    /// never comes.
    pub async fn sync(&self) -> Result<(), LogError> {
        Ok(self.forcer.force().await?)
    }

    /// Writes `record` and forces it.
    pub async fn force(&self, record: &TxnRecord) -> Result<(), LogError> {
        self.force_with(record, Batch::default()).await
    }

    /// Writes `record` with `batch`, atomically, and forces them.
    pub async fn force_with(&self, record: &TxnRecord, mut batch: Batch) -> Result<(), LogError> {
        batch.insert(key(TXN, record.txn), encode(record));
        self.apply_forced(batch).await
    }

    /// Sets a record's state, unforced (see [`Log::queue`]).
    pub fn set_state(
        &self,
        txn: TxnId,
        state: State,
    ) -> impl Future<Output = Result<(), LogError>> + Send + 'static + use<> {
        self.queue(move |db| update(db, txn, |r| r.state = state))
    }

    /// Runs `work` in the queue of writes (see [`Log::queue`]), after every write queued before it,
    /// and returns what it found.
    async fn queued<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Db) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue(move |db| {
            let _ = tx.send(work(db)?);
            Ok(())
        })
        .await?;
        rx.await
            .map_err(|_| LogError::Corrupt("a queued read gave no answer".into()))
    }

    /// Events: the deliveries still waiting for consumer `to`, oldest first (off the async workers).
    pub async fn deliveries(&self, to: &str) -> Result<Vec<(TxnId, Vec<u8>)>, LogError> {
        let prefix = delivery_prefix(to);
        self.queued(move |db| scan_deliveries(db, &prefix)).await
    }

    /// Events: whether consumer `to` still has `txn` to receive. Blocking: for startup.
    pub fn awaits(&self, to: &str, txn: TxnId) -> Result<bool, LogError> {
        Ok(self.db.contains(&delivery_key(to, txn))?)
    }

    /// [`Log::awaits`], off the async workers.
    pub async fn still_awaits(&self, to: &str, txn: TxnId) -> Result<bool, LogError> {
        let key = delivery_key(to, txn);
        self.queued(move |db| Ok(db.contains(&key)?)).await
    }

    /// Events: whether any delivery is waiting (a new sealing key would make them unreadable).
    pub fn has_deliveries(&self) -> Result<bool, LogError> {
        Ok(self.db.scan_prefix(DELIVERY).next().is_some())
    }

    /// Events: consumer `to` has `txn` (applied or refused for good). Unforced: a delivery that comes
    /// back after a crash is delivered again, and consumers are idempotent. Returns whether every one of
    /// `consumers` has it.
    pub async fn delivered(
        &self,
        to: &str,
        txn: TxnId,
        consumers: &[&str],
    ) -> Result<bool, LogError> {
        let mine = delivery_key(to, txn);
        let all: Vec<Vec<u8>> = consumers.iter().map(|c| delivery_key(c, txn)).collect();
        self.queued(move |db| {
            db.remove(&mine)?;
            for key in all {
                if db.contains(&key)? {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await
    }

    /// Events: the e-mail consumer found the address: the e-mail joins the outbox and the delivery
    /// leaves, in one batch (unforced: if both are lost, the delivery comes back and is done again).
    pub async fn queue_mail(
        &self,
        from: &str,
        mail: &OutboxEntry,
        to: &Email,
    ) -> Result<(), LogError> {
        let (txn, to) = (mail.txn, to.clone());
        let mut batch = Batch::default();
        batch.insert(key(OUTBOX, mail.txn), encode(mail));
        batch.remove(delivery_key(from, mail.txn));
        self.queue(move |db| {
            // The record is updated in place (a consumer may be noting a refusal on it at the same
            // time); the outbox entry and the delivery then change together.
            update(db, txn, |r| r.email = Some(to.clone()))?;
            db.apply(batch)?;
            Ok(())
        })
        .await
    }

    /// Events: the e-mail can never be sent (the user never existed): keep why, for the listing.
    pub async fn note_mail_error(&self, txn: TxnId, reason: &str) -> Result<(), LogError> {
        let reason = reason.to_owned();
        self.queue(move |db| update(db, txn, |r| r.email_error = Some(reason.clone())))
            .await
    }

    /// Adds why a consumer refused to a record's reason, unforced.
    pub async fn note_refusal(&self, txn: TxnId, reason: &str) -> Result<(), LogError> {
        let reason = reason.to_owned();
        self.queue(move |db| {
            update(db, txn, |r| {
                if !r.reason.is_empty() {
                    r.reason.push_str("; ");
                }
                r.reason.push_str(&reason);
            })
        })
        .await
    }

    /// END: every participant acknowledged. Unforced: if lost, recovery resends `Commit`, which the
    /// participants acknowledge again.
    pub async fn end(&self, txn: TxnId) -> Result<(), LogError> {
        self.set_state(txn, State::Committed).await
    }

    /// The mail server accepted these e-mails: drop them from the outbox, in one batch and one forced
    /// write (off the commit path, and shared with concurrent commits by the group commit), so a crash
    /// can resend only e-mails accepted in the last instant before it.
    pub async fn mark_sent(&self, txns: &[TxnId]) -> Result<(), LogError> {
        let mut batch = Batch::default();
        for &txn in txns {
            batch.remove(key(OUTBOX, txn));
        }
        self.apply_forced(batch).await
    }

    /// The e-mail can never be built or sent: take it out of the outbox, keep the reason.
    pub async fn mark_undeliverable(&self, txn: TxnId, reason: &str) -> Result<(), LogError> {
        let (db, reason) = (self.db.clone(), reason.to_owned());
        self.forcer
            .write::<LogError, _>(true, move || {
                update(&db, txn, |r| r.email_error = Some(reason.clone()))?;
                db.remove(&key(OUTBOX, txn))?;
                Ok(())
            })
            .await
    }

    /// Record `txn`, under its own key or in the archive.
    pub fn get(&self, txn: TxnId) -> Result<Option<TxnRecord>, LogError> {
        match self.db.get(&key(TXN, txn))? {
            Some(raw) => Ok(Some(self.read(&raw)?)),
            None => self.archived(txn),
        }
    }

    /// Whether reads of this log may be made in place on an async task (see
    /// [`tpc_common::storage::Storage::reads_locally`]).
    pub fn reads_locally(&self) -> bool {
        self.db.reads_locally()
    }

    /// The COMMIT record of `request_id`, if one is in the log. Blocking unless the log
    /// [reads locally](Log::reads_locally).
    pub fn committed_request(&self, request_id: &str) -> Result<Option<LoggedRequest>, LogError> {
        let Some(raw) = self.db.get(&request_key(request_id))? else {
            return Ok(None);
        };
        let txn = TxnId::from_bytes(&raw).ok_or_else(|| {
            LogError::Corrupt("a request id's entry holds no transaction id".into())
        })?;
        // No record: collected between the two reads.
        let record = match self.db.get(&key(TXN, txn))? {
            Some(raw) => decode::<TxnRecord>(&raw)?,
            None => match self.archived(txn)? {
                Some(record) => record,
                None => return Ok(None),
            },
        };
        Ok(Some(LoggedRequest {
            txn,
            kind: record.kind,
            user: record.user,
        }))
    }

    /// The newest `limit` records older than `before` (all, if `None`) that `keep` accepts, newest
    /// first: range scans from the newest key, of the records under their own keys and of the
    /// archive's blocks, merged, that stop once they have them (UUIDv7 ids sort by time). Blocking;
    /// for the blocking pool.
    pub fn newest(
        &self,
        limit: usize,
        before: Option<TxnId>,
        mut keep: impl FnMut(&TxnRecord) -> bool,
    ) -> Result<Vec<TxnRecord>, LogError> {
        let mut found = Vec::new();
        let mark = self.newest_block()?;
        let waiting = self.waiting()?;
        let end = before.map(|txn| key(TXN, txn));
        let mut live = self
            .db
            .scan_prefix(TXN)
            .rev()
            // Skipped before they are decoded: a page of a long listing starts deep in the log.
            .filter(|item| match (item, &end) {
                (Ok((k, _)), Some(end)) => k < end,
                _ => true,
            })
            .map(|item| read_with(&item?.1, &waiting));
        let mut archived = self.archived_newest_first(before)?;
        let mut next_live = live.next().transpose()?;
        let mut next_archived = archived.next().transpose()?;
        // The last record looked at: the merge yields ids strictly falling, so a record moved into the
        // archive while the scan ran is not looked at twice.
        let mut last: Option<TxnId> = None;
        while found.len() < limit {
            let take_live = match (&next_live, &next_archived) {
                (Some(l), Some(a)) => l.txn > a.txn,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let record = if take_live {
                std::mem::replace(&mut next_live, live.next().transpose()?)
            } else {
                std::mem::replace(&mut next_archived, archived.next().transpose()?)
            }
            .expect("matched as present");
            if last.is_some_and(|last| record.txn >= last)
                || before.is_some_and(|before| record.txn >= before)
            {
                continue;
            }
            last = Some(record.txn);
            if keep(&record) {
                found.push(record);
            }
        }
        // Blocks written during the scan hold records that had left their own keys before the scan
        // reached them: read those blocks too.
        if self.newest_block()? != mark {
            let seen: HashSet<TxnId> = found.iter().map(|r| r.txn).collect();
            let mut late = false;
            for record in self.archived_since(mark)? {
                if !seen.contains(&record.txn)
                    && before.is_none_or(|before| record.txn < before)
                    && keep(&record)
                {
                    found.push(record);
                    late = true;
                }
            }
            if late {
                found.sort_by_key(|r| std::cmp::Reverse(r.txn));
                found.truncate(limit);
            }
        }
        Ok(found)
    }

    /// Remembers how far `participant`'s store went. Not forced: a lost update only makes the check
    /// after a crash start from an earlier mark.
    pub fn save_store_mark(
        &self,
        participant: &str,
        id: &str,
        seq: u64,
    ) -> impl Future<Output = Result<(), LogError>> + Send + 'static + use<> {
        let mark = StoreMark {
            id: id.to_owned(),
            seq,
        };
        let (k, v) = ([STORE_MARK, participant.as_bytes()].concat(), encode(&mark));
        self.queue(move |db| {
            db.insert(&k, &v)?;
            Ok(())
        })
    }

    /// Every participant's remembered store mark: (participant, id, seq).
    pub fn store_marks(&self) -> Result<Vec<(String, String, u64)>, LogError> {
        let mut marks = Vec::new();
        for item in self.db.scan_prefix(STORE_MARK) {
            let (key, raw) = item?;
            let StoreMark { id, seq } = decode(&raw)?;
            marks.push((
                String::from_utf8_lossy(&key[STORE_MARK.len()..]).into_owned(),
                id,
                seq,
            ));
        }
        Ok(marks)
    }

    /// Whether `txn` has a record.
    pub fn contains(&self, txn: TxnId) -> Result<bool, LogError> {
        Ok(self.db.contains(&key(TXN, txn))? || self.archived(txn)?.is_some())
    }

    /// The COMMIT records of two-phase commits without an END, oldest first: what recovery must
    /// finish. Only the records under their own keys are read: the archive holds finished ones.
    pub fn unfinished_commits(&self) -> Result<Vec<CommitRecord>, LogError> {
        let mut committing = Vec::new();
        for item in self.db.scan_prefix(TXN) {
            let record: TxnRecord = decode(&item?.1)?;
            if record.state == State::Committing
                && let Some(commit) = record.commit_record()
            {
                committing.push(commit);
            }
        }
        Ok(committing)
    }

    /// Every record, newest first.
    pub fn records(&self) -> Result<Vec<TxnRecord>, LogError> {
        self.newest(usize::MAX, None, |_| true)
    }

    /// The outbox's keys, read once for a scan of many records instead of looked up record by record:
    /// on etcd each lookup is a round trip. (The outbox holds only e-mails not yet sent: small.) A
    /// record written after this read looks sent; every caller tolerates that (recovery runs alone,
    /// listing only shows it, and garbage collection never takes a record that young).
    fn waiting(&self) -> Result<HashSet<Vec<u8>>, LogError> {
        Ok(self
            .db
            .scan_prefix(OUTBOX)
            .map(|item| item.map(|(k, _)| k))
            .collect::<Result<_, _>>()?)
    }

    /// Decodes a record and derives whether its e-mail was sent.
    fn read(&self, raw: &[u8]) -> Result<TxnRecord, LogError> {
        let record: TxnRecord = decode(raw)?;
        let in_outbox = self.db.contains(&key(OUTBOX, record.txn))?;
        Ok(with_email_state(record, in_outbox))
    }

    /// E-mails of committed transactions not yet accepted by the mail server, oldest first: what the
    /// dispatcher finds at start (afterwards the runtime hands it each entry once it is on disk).
    ///
    /// An entry becomes visible when its commit batch is applied, a moment before that batch is forced;
    /// mailing it then, and crashing before the force, would announce a transaction that recovery
    /// presumes aborted. So this forces the log after reading: every entry returned is durable, and its
    /// transaction committed.
    pub async fn outbox(&self) -> Result<Vec<OutboxEntry>, LogError> {
        let pending = self
            .db
            .scan_prefix(OUTBOX)
            .map(|item| decode(&item?.1))
            .collect::<Result<Vec<_>, _>>()?;
        if !pending.is_empty() {
            self.forcer.force().await?;
        }
        Ok(pending)
    }

    /// Deletes finished records decided before `cutoff` (committed with END and e-mail sent, or aborted),
    /// in the archive and under their own keys, and returns them, so the engine can forget their
    /// request ids too.
    pub fn collect_garbage(&self, cutoff: u64) -> Result<Vec<TxnRecord>, LogError> {
        let mut collected = self
            .collect_archive_slice(None, cutoff, usize::MAX)?
            .collected;
        let mut from = None;
        loop {
            let slice = self.collect_garbage_slice(from, cutoff, usize::MAX)?;
            collected.extend(slice.collected);
            match slice.resume_after {
                Some(last) => from = Some(last),
                None => return Ok(collected),
            }
        }
    }

    /// Moves every finished record decided before `before` into the archive; returns how many moved.
    pub fn archive(&self, before: u64) -> Result<usize, LogError> {
        let (mut moved, mut from) = (0, None);
        loop {
            let slice = self.archive_slice(from, before, usize::MAX)?;
            moved += slice.archived;
            match slice.resume_after {
                Some(last) => from = Some(last),
                None => return Ok(moved),
            }
        }
    }

    /// One slice of garbage collection: looks at up to `max` records, oldest first, after `from`.
    ///
    /// Keys are transaction ids, which begin with their creation time, and a transaction is decided
    /// after it was created: so the scan stops at the first record created after `cutoff`, and each
    /// pass reads only the old end of the log, never the whole retention window.
    pub fn collect_garbage_slice(
        &self,
        from: Option<TxnId>,
        cutoff: u64,
        max: usize,
    ) -> Result<GarbageSlice, LogError> {
        let mut slice = GarbageSlice {
            collected: Vec::new(),
            resume_after: None,
        };
        let waiting = self.waiting()?;
        for (looked_at, item) in self.entries_after(TXN, from).enumerate() {
            let (k, raw) = item?;
            if looked_at == max {
                return Ok(slice);
            }
            let record = read_with(&raw, &waiting)?;
            if record.txn.created_ms() > cutoff {
                break;
            }
            slice.resume_after = Some(record.txn);
            if record.is_finished() && record.decided_at < cutoff {
                // The index entry first: a crash between the two leaves a record that is about to be
                // collected anyway and whose request id is already forgotten, never an entry without
                // its record.
                if let Some(request) = self.request_entry(&record)? {
                    self.db.remove(&request)?;
                }
                self.db.remove(&k)?;
                slice.collected.push(record);
            }
        }
        slice.resume_after = None;
        Ok(slice)
    }
}

impl Log {
    /// The key of `record`'s request-id entry, if that entry stands for it (when a change aborted and
    /// its retry committed under the same id, the entry is the retry's): what collecting the record
    /// deletes with it.
    fn request_entry(&self, record: &TxnRecord) -> Result<Option<Vec<u8>>, LogError> {
        let request = request_key(&record.request_id);
        let ours = self.db.get(&request)?.as_deref() == Some(record.txn.as_bytes().as_slice());
        Ok(ours.then_some(request))
    }

    /// The entries under `prefix` after `<prefix><from>` (all of them, if `None`), in key order: where
    /// a scan in slices goes on.
    fn entries_after(
        &self,
        prefix: &'static [u8],
        from: Option<TxnId>,
    ) -> impl Iterator<Item = Result<Entry, LogError>> + use<> {
        let start = from.map_or_else(|| prefix.to_vec(), |txn| key(prefix, txn));
        self.db
            .range_from(&start)
            .map(|item| item.map_err(LogError::from))
            .take_while(move |item| match item {
                Ok((k, _)) => k.starts_with(prefix),
                Err(_) => true,
            })
            .filter(move |item| match item {
                Ok((k, _)) => from.is_none() || *k != start,
                Err(_) => true,
            })
    }
}

/// Decodes a record, with whether its e-mail was sent by the outbox's keys `waiting`.
fn read_with(raw: &[u8], waiting: &HashSet<Vec<u8>>) -> Result<TxnRecord, LogError> {
    let record: TxnRecord = decode(raw)?;
    let in_outbox = waiting.contains(&key(OUTBOX, record.txn));
    Ok(with_email_state(record, in_outbox))
}

/// `record`, with whether its e-mail was sent: it was, once a committed record's e-mail is no longer
/// in the outbox (`in_outbox`) and was not parked as undeliverable.
fn with_email_state(mut record: TxnRecord, in_outbox: bool) -> TxnRecord {
    record.email_sent = record.email_sent
        || (record.state != State::Aborted
            && record.email.is_some()
            && record.email_error.is_none()
            && !in_outbox);
    record
}

impl TxnRecord {
    /// The COMMIT record this entry was written from; `None` for an aborted transaction.
    pub fn commit_record(&self) -> Option<CommitRecord> {
        let email = self.email.clone()?;
        (self.state != State::Aborted).then(|| CommitRecord {
            txn: self.txn,
            request_id: self.request_id.clone(),
            kind: self.kind,
            user: self.user.clone(),
            email,
            started_at: self.started_at,
            decided_at: self.decided_at,
        })
    }
}

/// The record of a transaction that did not commit (or, for a saga, is being compensated).
pub fn abort_record(strategy: Strategy, state: State, note: &AbortNote) -> TxnRecord {
    TxnRecord {
        txn: note.txn,
        strategy,
        request_id: note.request_id.clone(),
        kind: note.kind,
        user: note.user.clone(),
        email: None,
        state,
        reason: note.reason.clone(),
        started_at: note.started_at,
        decided_at: note.decided_at,
        email_sent: false,
        email_error: None,
    }
}

fn delivery_prefix(to: &str) -> Vec<u8> {
    [DELIVERY, to.as_bytes(), b"/"].concat()
}

pub fn delivery_key(to: &str, txn: TxnId) -> Vec<u8> {
    [delivery_prefix(to).as_slice(), txn.as_bytes()].concat()
}

fn request_key(request_id: &str) -> Vec<u8> {
    [REQUEST, request_id.as_bytes()].concat()
}

pub fn key(prefix: &[u8], txn: TxnId) -> Vec<u8> {
    [prefix, txn.as_bytes()].concat()
}

/// Records go through [`tpc_common::record`]: a format byte, a CRC-32 and postcard (a third of the
/// JSON the log wrote before, which still reads).
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    tpc_common::record::encode(value)
}

fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, LogError> {
    tpc_common::record::decode(raw).map_err(|e| LogError::Corrupt(e.to_string()))
}

/// Every delivery under `prefix`, oldest first.
fn scan_deliveries(db: &Db, prefix: &[u8]) -> Result<Vec<(TxnId, Vec<u8>)>, LogError> {
    db.scan_prefix(prefix)
        .map(|item| {
            let (k, v) = item?;
            let txn = TxnId::from_bytes(&k[prefix.len()..])
                .ok_or_else(|| LogError::Corrupt("a delivery key without a transaction".into()))?;
            Ok((txn, v.to_vec()))
        })
        .collect()
}

/// Rewrites record `txn` with `change`, atomically (a record that does not decode is left as it is).
fn update(db: &Db, txn: TxnId, change: impl Fn(&mut TxnRecord)) -> Result<(), LogError> {
    let mut corrupt = None;
    db.update(&key(TXN, txn), &mut |old| {
        let old = old?;
        match decode::<TxnRecord>(old) {
            Ok(mut record) => {
                change(&mut record);
                Some(encode(&record))
            }
            Err(e) => {
                corrupt = Some(e);
                Some(old.to_vec())
            }
        }
    })?;
    corrupt.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::email;

    /// A transaction created and decided now.
    fn record() -> CommitRecord {
        let txn = TxnId::generate();
        let decided_at = txn.created_ms();
        CommitRecord {
            txn,
            request_id: format!("r-{txn}"),
            kind: OperationKind::Update,
            user: UserId::parse("alice").unwrap(),
            email: Email::parse("alice@example.com").unwrap(),
            started_at: decided_at,
            decided_at,
        }
    }

    #[tokio::test]
    async fn a_crash_keeps_the_commit_point_and_loses_only_unforced_notes() {
        use tpc_common::storage::MemoryStorage;
        let mem = MemoryStorage::new();
        let log = Log::on(std::sync::Arc::new(mem.clone()));
        let (committed, ended) = (record(), record());
        for r in [&committed, &ended] {
            log.force_commit(r, &email::compose(r)).await.unwrap();
        }
        log.end(ended.txn).await.unwrap();
        let aborted = AbortNote {
            txn: TxnId::generate(),
            request_id: "aborted".into(),
            kind: OperationKind::Update,
            user: UserId::parse("bob").unwrap(),
            reason: "no".into(),
            started_at: 1,
            decided_at: 2,
        };
        log.note_abort(&aborted).await.unwrap();
        assert_eq!(
            mem.unflushed(),
            2,
            "END and the abort note wait for a flush"
        );

        let after = Log::on(std::sync::Arc::new(mem.crashed(0)));
        assert_eq!(
            after.get(committed.txn).unwrap().map(|r| r.state),
            Some(State::Committing)
        );
        assert_eq!(
            after.get(ended.txn).unwrap().map(|r| r.state),
            Some(State::Committing),
            "END was lost: recovery resends Commit, which the participants acknowledge again"
        );
        assert_eq!(after.get(aborted.txn).unwrap(), None);
        assert_eq!(after.outbox().await.unwrap().len(), 2, "no e-mail lost");

        // The next forced write carries the unforced ones before it to disk.
        log.mark_sent(&[committed.txn]).await.unwrap();
        let later = Log::on(std::sync::Arc::new(mem.crashed(0)));
        assert_eq!(
            later.get(ended.txn).unwrap().map(|r| r.state),
            Some(State::Committed)
        );
        assert!(later.get(aborted.txn).unwrap().is_some());
        assert_eq!(later.outbox().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn records_of_a_log_written_as_json_still_read_and_damage_is_caught() {
        use tpc_common::storage::{MemoryStorage, Storage};
        let mem = MemoryStorage::new();
        let log = Log::on(std::sync::Arc::new(mem.clone()));
        // A COMMIT record as the log wrote it before postcard: bare JSON, with its request index.
        let r = record();
        let mut old = TxnRecord {
            txn: r.txn,
            strategy: Strategy::TwoPc,
            request_id: r.request_id.clone(),
            kind: r.kind,
            user: r.user.clone(),
            email: Some(r.email.clone()),
            state: State::Committing,
            reason: String::new(),
            started_at: r.started_at,
            decided_at: r.decided_at,
            email_sent: false,
            email_error: None,
        };
        let mut batch = Batch::default();
        batch.insert(key(TXN, r.txn), serde_json::to_vec(&old).unwrap());
        batch.insert(request_key(&r.request_id), r.txn.as_bytes().to_vec());
        mem.apply(batch).unwrap();
        assert!(
            mem.get(&key(TXN, r.txn))
                .unwrap()
                .unwrap()
                .starts_with(b"{")
        );

        old.email_sent = true;
        assert_eq!(log.get(r.txn).unwrap().as_ref(), Some(&old));
        assert_eq!(log.unfinished_commits().unwrap(), std::slice::from_ref(&r));
        assert_eq!(
            log.committed_request(&r.request_id).unwrap().map(|l| l.txn),
            Some(r.txn)
        );
        // END rewrites it in today's format.
        log.end(r.txn).await.unwrap();
        let raw = mem.get(&key(TXN, r.txn)).unwrap().unwrap();
        assert!(
            !raw.starts_with(b"{") && raw.len() < 150,
            "{} bytes",
            raw.len()
        );
        assert_eq!(
            log.get(r.txn).unwrap().map(|r| r.state),
            Some(State::Committed)
        );

        // A damaged record is reported, never read as a decision.
        mem.damage(&key(TXN, r.txn));
        let said = log.get(r.txn).unwrap_err().to_string();
        assert!(said.contains("checksum"), "{said}");
        assert!(log.unfinished_commits().is_err());
    }

    #[tokio::test]
    async fn a_failed_flush_fails_the_commit_point() {
        use tpc_common::storage::MemoryStorage;
        let mem = MemoryStorage::new();
        let log = Log::on(std::sync::Arc::new(mem.clone()));
        let r = record();
        mem.fail_flushes(1);
        assert!(
            log.force_commit(&r, &email::compose(&r)).await.is_err(),
            "nobody may hear committed"
        );
        assert_eq!(
            Log::on(std::sync::Arc::new(mem.crashed(0)))
                .get(r.txn)
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_commit_lives_through_end_and_mail_until_collected() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), tpc_common::DEFAULT_CACHE_MIB).unwrap();
        let old = record();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let cutoff = tpc_common::now_ms();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let young = record();
        for r in [&old, &young] {
            log.force_commit(r, &email::compose(r)).await.unwrap();
        }
        assert_eq!(log.outbox().await.unwrap().len(), 2);
        assert_eq!(
            log.get(old.txn).unwrap().unwrap().commit_record(),
            Some(old.clone())
        );

        // Not collectable before END and the e-mail; what recovery finishes until END.
        assert_eq!(
            log.unfinished_commits().unwrap(),
            [old.clone(), young.clone()]
        );
        assert!(log.collect_garbage(u64::MAX).unwrap().is_empty());
        log.end(old.txn).await.unwrap();
        assert_eq!(
            log.unfinished_commits().unwrap(),
            std::slice::from_ref(&young)
        );
        assert!(log.collect_garbage(u64::MAX).unwrap().is_empty());
        log.mark_sent(&[old.txn]).await.unwrap();
        assert!(log.get(old.txn).unwrap().unwrap().email_sent);
        assert!(!log.get(young.txn).unwrap().unwrap().email_sent);
        log.end(young.txn).await.unwrap();
        log.mark_sent(&[young.txn]).await.unwrap();
        assert!(log.outbox().await.unwrap().is_empty());

        let collected = log.collect_garbage(cutoff).unwrap();
        assert_eq!(
            collected.iter().map(|r| r.txn).collect::<Vec<_>>(),
            [old.txn]
        );
        assert_eq!(log.get(old.txn).unwrap(), None);
        assert_eq!(log.records().unwrap().len(), 1);
        // Its request id went with it; the young one's is still answered.
        assert_eq!(log.committed_request(&old.request_id).unwrap(), None);
        assert_eq!(
            log.committed_request(&young.request_id).unwrap(),
            Some(LoggedRequest {
                txn: young.txn,
                kind: young.kind,
                user: young.user.clone()
            })
        );
    }

    #[tokio::test]
    async fn listing_reads_from_the_newest_and_stops_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), tpc_common::DEFAULT_CACHE_MIB).unwrap();
        let mut written = Vec::new();
        for _ in 0..6 {
            // A millisecond apart, so their ids sort in this order.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            let r = record();
            log.force_commit(&r, &email::compose(&r)).await.unwrap();
            written.push(r.txn);
        }
        // Ended: every second one.
        for txn in written.iter().step_by(2) {
            log.end(*txn).await.unwrap();
        }
        let mut looked_at = 0;
        let newest = log
            .newest(2, None, |r| {
                looked_at += 1;
                r.state == State::Committed
            })
            .unwrap();
        assert_eq!(
            newest.iter().map(|r| r.txn).collect::<Vec<_>>(),
            [written[4], written[2]],
            "newest first, only those kept"
        );
        assert_eq!(looked_at, 4, "it stopped once it had two");
        assert!(log.contains(written[0]).unwrap());
        assert!(!log.contains(TxnId::generate()).unwrap());
    }

    #[tokio::test]
    async fn garbage_is_collected_in_slices_from_the_oldest_and_stops_at_young_records() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), tpc_common::DEFAULT_CACHE_MIB).unwrap();
        let notes: Vec<AbortNote> = (0..5)
            .map(|i| AbortNote {
                txn: TxnId::generate(),
                request_id: format!("r{i}"),
                kind: OperationKind::Update,
                user: UserId::parse("alice").unwrap(),
                reason: "conflict".into(),
                started_at: 0,
                decided_at: 0,
            })
            .collect();
        for note in &notes {
            log.note_abort(note).await.unwrap();
        }
        let cutoff = tpc_common::now_ms() + 1;
        let first = log.collect_garbage_slice(None, cutoff, 2).unwrap();
        assert_eq!(first.collected.len(), 2);
        assert_eq!(first.resume_after, Some(notes[1].txn));
        let rest = log
            .collect_garbage_slice(first.resume_after, cutoff, 10)
            .unwrap();
        assert_eq!(
            rest.collected.iter().map(|r| r.txn).collect::<Vec<_>>(),
            notes[2..].iter().map(|n| n.txn).collect::<Vec<_>>()
        );
        assert_eq!(rest.resume_after, None);

        // Records created after the cutoff end the scan, even if they would be collectable.
        let young = AbortNote {
            txn: TxnId::generate(),
            ..notes[0].clone()
        };
        log.note_abort(&young).await.unwrap();
        let none = log
            .collect_garbage_slice(None, young.txn.created_ms() - 1, 10)
            .unwrap();
        assert!(none.collected.is_empty());
        assert_eq!(none.resume_after, None);
    }

    #[tokio::test]
    async fn abort_notes_are_listed_newest_first_and_have_no_commit_record_or_request_index() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), tpc_common::DEFAULT_CACHE_MIB).unwrap();
        let committed = record();
        log.force_commit(&committed, &email::compose(&committed))
            .await
            .unwrap();
        let aborted = AbortNote {
            txn: TxnId::generate(),
            request_id: "r".into(),
            kind: OperationKind::Update,
            user: UserId::parse("alice").unwrap(),
            reason: "password was used recently".into(),
            started_at: 2,
            decided_at: 3,
        };
        log.note_abort(&aborted).await.unwrap();
        let records = log.records().unwrap();
        assert_eq!(records[0].txn, aborted.txn);
        assert_eq!(records[0].state, State::Aborted);
        assert_eq!(records[0].commit_record(), None);
        assert_eq!(records[1].state, State::Committing);
        // A commit is found by its request id; an abort, or an id never seen, is not.
        assert_eq!(
            log.committed_request(&committed.request_id)
                .unwrap()
                .map(|r| r.txn),
            Some(committed.txn)
        );
        assert_eq!(log.committed_request(&aborted.request_id).unwrap(), None);
        assert_eq!(log.committed_request("never-seen").unwrap(), None);
    }
}
