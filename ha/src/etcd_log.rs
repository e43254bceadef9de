//! The coordinator's log on etcd: the same [`Storage`] the sled log implements, so the coordinator's
//! `Log` (records, outbox, store marks, garbage collection) runs on it unchanged.
//!
//! - **Durable on flush, in groups.** `apply` keeps a batch in memory (reads see it at once); `flush`
//!   sends every batch applied so far in as few etcd transactions as etcd takes (128 operations
//!   each), in order, never splitting a batch, and returns once a majority of the members have them
//!   in their write-ahead log. The coordinator's group commit flushes once for all the forced writes
//!   that arrived meanwhile, so concurrent commits share one round trip to etcd, as they share one
//!   `fsync` with sled. The COMMIT record and its outbox entry are one batch, so in one transaction:
//!   its success is the commit point. Unforced writes are sent within [`BACKGROUND_FLUSH`] anyway.
//! - **Fenced.** Every transaction compares the leader key's create revision with the one this process
//!   was elected under ([`Fence`]). A coordinator that was deposed (its lease expired during a pause or
//!   a partition, and another was elected) can no longer write anything, whatever it believes: its
//!   writes fail with [`StorageError::Fenced`], and a failed forced write stops the process.
//! - **Keys** are the log's own keys under `<prefix>log/`, so recovery and garbage collection are range
//!   reads. Values are the log's records: no password or hash is ever in them.
//!
//! The `Storage` trait is synchronous (sled is); etcd's client is async. Calls run on a small runtime
//! of this storage's own and the caller waits on a channel, so it works from the log's writer threads,
//! the blocking pool and (briefly, at start) an async task alike.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::members::Members;
use etcd_client::{
    Compare, CompareOp, GetOptions, KvClient, SortOrder, SortTarget, Txn, TxnOp, TxnResponse,
};
use tpc_common::storage::{Batch, Change, Entries, Entry, Storage, StorageError};

/// What every write is conditioned on: the leader key still has the create revision it had when this
/// process was elected.
#[derive(Debug, Clone)]
pub struct Fence {
    pub key: Vec<u8>,
    pub create_revision: i64,
}

impl Fence {
    fn compare(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.create_revision)
    }
}

/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;
/// Entries read per range request.
const PAGE: i64 = 512;
/// The longest one etcd call may take: a write that does not return in time may or may not have
/// happened, which is what a failed `fsync` means too.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct EtcdLog {
    inner: Arc<Inner>,
}

struct Inner {
    members: Members,
    /// `<prefix>log/`: every key of the log is under it.
    keys: Vec<u8>,
    fence: Fence,
    runtime: Runtime,
    /// Batches applied and not yet in etcd; reads see them.
    pending: Mutex<Pending>,
    /// One flush at a time, so transactions reach etcd in the order their batches were applied.
    flushing: Mutex<()>,
}

#[derive(Default)]
struct Pending {
    /// The values most recently sent to etcd, which are etcd's values (this leader is the log's only
    /// writer): a COMMIT's END reads the record back, and needs no round trip for it.
    sent: Recent,
    /// Applied since the last flush took its batches, in order.
    applied: Vec<Batch>,
    /// Taken by the flush under way, until etcd has them.
    sending: Vec<Batch>,
}

impl Pending {
    /// The newest pending write of `key`, if any: `Some(None)` is a pending delete.
    fn lookup(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.applied
            .iter()
            .rev()
            .chain(self.sending.iter().rev())
            .find_map(|batch| {
                batch
                    .writes()
                    .filter(|(k, _)| *k == key)
                    .last()
                    .map(|(_, v)| v.map(<[u8]>::to_vec))
            })
            .or_else(|| self.sent.get(key))
    }
}

/// The last [`Recent::KEPT`] keys written, with their values (`None`: deleted).
#[derive(Default)]
struct Recent {
    values: std::collections::HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Keys in the order they were first kept, the oldest first.
    order: VecDeque<Vec<u8>>,
}

impl Recent {
    const KEPT: usize = 8_192;

    fn get(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.values.get(key).cloned()
    }

    fn keep(&mut self, batch: &Batch) {
        for (key, value) in batch.writes() {
            if self
                .values
                .insert(key.to_vec(), value.map(<[u8]>::to_vec))
                .is_none()
            {
                self.order.push_back(key.to_vec());
            }
        }
        while self.order.len() > Self::KEPT {
            if let Some(oldest) = self.order.pop_front() {
                self.values.remove(&oldest);
            }
        }
    }
}

/// How soon unforced writes reach etcd when no forced write carries them along.
pub const BACKGROUND_FLUSH: Duration = Duration::from_millis(100);

/// The storage's own runtime, shut down without waiting when the storage goes (it may be dropped on
/// an async worker, where waiting is not allowed).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl EtcdLog {
    /// Connects to `endpoints` and opens the log under `prefix`, its writes fenced by `fence`.
    pub fn open(endpoints: &[String], prefix: &str, fence: Fence) -> Result<Self, StorageError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tpc-etcd-log")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Replicated(format!("cannot start the etcd runtime: {e}")))?;
        let connecting = {
            let endpoints = endpoints.to_vec();
            async move { Members::connect(&endpoints).await }
        };
        let members = wait(runtime.handle(), connecting)?;
        let log = Self {
            inner: Arc::new(Inner {
                members,
                keys: format!("{prefix}log/").into_bytes(),
                fence,
                runtime: Runtime(Some(runtime)),
                pending: Mutex::new(Pending::default()),
                flushing: Mutex::new(()),
            }),
        };
        let weak = Arc::downgrade(&log.inner);
        std::thread::Builder::new()
            .name("tpc-etcd-flush".into())
            .spawn(move || flush_in_background(weak))
            .map_err(|e| StorageError::Replicated(format!("cannot start the flusher: {e}")))?;
        Ok(log)
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.inner.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the batches applied so far, grouped into as few fenced transactions as etcd takes.
    fn send_pending(&self) -> Result<(), StorageError> {
        let _one = self
            .inner
            .flushing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let batches = {
            let mut pending = self.pending();
            let taken = std::mem::take(&mut pending.applied);
            pending.sending = taken.clone();
            taken
        };
        if batches.is_empty() {
            return Ok(());
        }
        let sent = self.send(&batches);
        let mut pending = self.pending();
        let sending = std::mem::take(&mut pending.sending);
        if sent.is_ok() {
            for batch in &sending {
                pending.sent.keep(batch);
            }
        } else {
            // Kept, ahead of what was applied since: a later flush sends them first (a batch that
            // did land meanwhile lands the same again).
            let later = std::mem::replace(&mut pending.applied, sending);
            pending.applied.extend(later);
        }
        sent
    }

    fn send(&self, batches: &[Batch]) -> Result<(), StorageError> {
        // The newest value of each key of the group: etcd refuses a transaction that writes one
        // key twice.
        let mut group: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for batch in batches {
            let keys: std::collections::BTreeSet<&[u8]> = batch.writes().map(|(k, _)| k).collect();
            let new = keys.iter().filter(|k| !group.contains_key(**k)).count();
            if group.len() + new > MAX_TXN_OPS && !group.is_empty() {
                self.fenced(self.ops(std::mem::take(&mut group)))?;
            }
            if keys.len() > MAX_TXN_OPS {
                self.send_large(batch)?;
                continue;
            }
            for (key, value) in batch.writes() {
                group.insert(key.to_vec(), value.map(<[u8]>::to_vec));
            }
        }
        if !group.is_empty() {
            self.fenced(self.ops(group))?;
        }
        Ok(())
    }

    fn ops(&self, group: BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Vec<TxnOp> {
        group
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => TxnOp::put(self.full(&key), value, None),
                None => TxnOp::delete(self.full(&key), None),
            })
            .collect()
    }

    /// A batch larger than one etcd transaction may be: only ever deletions (the outbox's sent
    /// e-mails), each of which stands alone, so they go in several fenced transactions.
    fn send_large(&self, batch: &Batch) -> Result<(), StorageError> {
        let mut deletes = BTreeMap::new();
        for (key, value) in batch.writes() {
            if value.is_some() {
                return Err(StorageError::Replicated(
                    "a batch writing more keys than one etcd transaction takes".into(),
                ));
            }
            deletes.insert(key.to_vec(), None);
        }
        let mut deletes = deletes.into_iter().peekable();
        while deletes.peek().is_some() {
            let chunk: BTreeMap<_, _> = deletes.by_ref().take(MAX_TXN_OPS).collect();
            self.fenced(self.ops(chunk))?;
        }
        Ok(())
    }

    fn full(&self, key: &[u8]) -> Vec<u8> {
        [self.inner.keys.as_slice(), key].concat()
    }

    /// Runs one etcd request, made by `make`, on the member in use, moving on to the next while etcd
    /// is briefly unavailable (a member died, a new etcd leader is being elected), for at most
    /// [`CALL_TIMEOUT`] in all. Sending again is safe for everything this storage sends: reads, and
    /// fenced batches of absolute puts and deletes, which land the same twice.
    fn call<T, F, Fut>(&self, make: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: Fn(KvClient) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        let runtime = self
            .inner
            .runtime
            .0
            .as_ref()
            .expect("running until dropped");
        let members = self.inner.members.clone();
        wait(runtime.handle(), async move {
            members
                .call(CALL_TIMEOUT, move |client| make(client.kv_client()))
                .await
        })
    }

    /// One fenced transaction of `ops`.
    fn fenced(&self, ops: Vec<TxnOp>) -> Result<(), StorageError> {
        let txn = Txn::new().when([self.inner.fence.compare()]).and_then(ops);
        let response: TxnResponse = self.call(move |mut kv| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(StorageError::Fenced)
        }
    }

    /// Up to [`PAGE`] entries of `[from, to)`, in key order.
    fn page(&self, from: &[u8], to: &[u8]) -> Result<Vec<Entry>, StorageError> {
        let options = GetOptions::new()
            .with_range(to.to_vec())
            .with_limit(PAGE)
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        let from = from.to_vec();
        let response = self.call(move |mut kv| {
            let (from, options) = (from.clone(), options.clone());
            async move { kv.get(from, Some(options)).await }
        })?;
        let skip = self.inner.keys.len();
        Ok(response
            .kvs()
            .iter()
            .map(|kv| (kv.key()[skip..].to_vec(), kv.value().to_vec()))
            .collect())
    }

    /// The entries of `[from, to)` (full keys; `to` empty: to the end of the log), read a page at a
    /// time from either end.
    fn entries(&self, from: Vec<u8>, to: Vec<u8>) -> Entries {
        let to = if to.is_empty() {
            prefix_end(&self.inner.keys)
        } else {
            to
        };
        Box::new(Pages {
            log: self.clone(),
            front: from,
            back: to,
            ahead: VecDeque::new(),
            behind: VecDeque::new(),
            failed: false,
        })
    }
}

/// Runs `call` on `runtime` and waits for it here, at most [`CALL_TIMEOUT`].
fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    call: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T, StorageError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        // A backstop: `Members::call` gives up after `CALL_TIMEOUT` itself.
        let _ = tx.send(tokio::time::timeout(CALL_TIMEOUT * 2, call).await);
    });
    match rx.recv() {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(etcd_client::Error::ElectError(no_answer)))) => {
            Err(StorageError::Replicated(no_answer))
        }
        Ok(Ok(Err(e))) => Err(StorageError::Replicated(e.to_string())),
        Ok(Err(_)) => Err(StorageError::Replicated(format!(
            "the decision log has no quorum: etcd did not answer within {CALL_TIMEOUT:?}"
        ))),
        Err(_) => Err(StorageError::Stopped),
    }
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A range read lazily: the front reads `[front, back)` a page at a time and moves `front` past what
/// it read; the back reads all that is left at once (see [`Pages::fill`]). Neither returns an entry
/// the other did.
struct Pages {
    log: EtcdLog,
    /// Full keys: what is left unread is `[front, back)`.
    front: Vec<u8>,
    back: Vec<u8>,
    /// Read from the front, in key order.
    ahead: VecDeque<Entry>,
    /// Read from the back, the last key first.
    behind: VecDeque<Entry>,
    failed: bool,
}

impl Pages {
    fn fill(&mut self, reverse: bool) -> Option<StorageError> {
        if reverse {
            // etcd sorts a range from its end only after reading all of it, whatever the limit: a
            // page from the back would cost the whole rest each time. The rest is read forwards
            // instead, a page at a time, once, and handed out from its end.
            let mut rest = Vec::new();
            while let Some(page) = self.forward_page() {
                match page {
                    Ok(page) => rest.extend(page),
                    Err(e) => return Some(e),
                }
            }
            self.behind.extend(rest.into_iter().rev());
            return None;
        }
        match self.forward_page() {
            Some(Ok(page)) => {
                self.ahead.extend(page);
                None
            }
            Some(Err(e)) => Some(e),
            None => None,
        }
    }

    /// The next page of `[front, back)`, moving `front` past it; `None` once nothing is left.
    fn forward_page(&mut self) -> Option<Result<Vec<Entry>, StorageError>> {
        if self.failed || self.front >= self.back {
            return None;
        }
        match self.log.page(&self.front, &self.back) {
            Ok(page) => {
                match page.last() {
                    Some((last, _)) if page.len() as i64 == PAGE => {
                        self.front = [self.log.full(last).as_slice(), &[0]].concat();
                    }
                    // A short page: nothing is left between the bounds.
                    _ => self.front = self.back.clone(),
                }
                Some(Ok(page))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl Iterator for Pages {
    type Item = Result<Entry, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ahead.is_empty()
            && let Some(e) = self.fill(false)
        {
            return Some(Err(e));
        }
        self.ahead
            .pop_front()
            .or_else(|| self.behind.pop_back())
            .map(Ok)
    }
}

impl DoubleEndedIterator for Pages {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.behind.is_empty()
            && let Some(e) = self.fill(true)
        {
            return Some(Err(e));
        }
        self.behind
            .pop_front()
            .or_else(|| self.ahead.pop_back())
            .map(Ok)
    }
}

impl Storage for EtcdLog {
    fn reads_locally(&self) -> bool {
        false
    }

    fn holds_keys_in_memory(&self) -> bool {
        false
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(pending) = self.pending().lookup(key) {
            return Ok(pending);
        }
        self.remote_get(key)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Entries {
        // Ranges read etcd only: what is pending goes there first (ranges are for recovery,
        // listing and garbage collection, never on a change's path).
        if let Err(e) = self.send_pending() {
            return Box::new(std::iter::once(Err(e)));
        }
        let from = self.full(prefix);
        let to = prefix_end(&from);
        self.entries(from, to)
    }

    fn range_from(&self, start: &[u8]) -> Entries {
        if let Err(e) = self.send_pending() {
            return Box::new(std::iter::once(Err(e)));
        }
        self.entries(self.full(start), Vec::new())
    }

    fn apply(&self, batch: Batch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let keys: std::collections::BTreeSet<&[u8]> = batch.writes().map(|(k, _)| k).collect();
        if keys.len() > MAX_TXN_OPS && batch.writes().any(|(_, value)| value.is_some()) {
            return Err(StorageError::Replicated(format!(
                "a batch writing {} keys is more than one etcd transaction takes ({MAX_TXN_OPS})",
                keys.len()
            )));
        }
        self.pending().applied.push(batch);
        Ok(())
    }

    fn update(&self, key: &[u8], change: Change<'_>) -> Result<(), StorageError> {
        // The leader is the log's only writer (the fence sees to it), and its writes pass through
        // here in order: read the newest value, pending or in etcd, and apply the change on top.
        let mut pending = self.pending();
        let old = match pending.lookup(key) {
            Some(value) => value,
            None => self.remote_get(key)?,
        };
        let mut batch = Batch::default();
        match change(old.as_deref()) {
            Some(new) => batch.insert(key, new),
            None => batch.remove(key),
        }
        pending.applied.push(batch);
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.send_pending()
    }
}

impl EtcdLog {
    fn remote_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let key = self.full(key);
        let response = self.call(move |mut kv| {
            let key = key.clone();
            async move { kv.get(key, None).await }
        })?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }
}

/// Sends unforced writes every [`BACKGROUND_FLUSH`], until the log is dropped.
fn flush_in_background(log: Weak<Inner>) {
    loop {
        std::thread::sleep(BACKGROUND_FLUSH);
        let Some(inner) = log.upgrade() else {
            return;
        };
        let log = EtcdLog { inner };
        let idle = log.pending().applied.is_empty();
        if !idle && let Err(e) = log.send_pending() {
            tracing::warn!(cause = %e, "unforced writes could not reach etcd; kept for the next flush");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn the_end_of_a_prefix_is_the_first_key_after_all_of_it() {
        assert_eq!(prefix_end(b"/tpc/log/"), b"/tpc/log0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
