//! The coordinator's log on etcd: the same [`Storage`] the sled log implements, so the coordinator's
//! `Log` (records, outbox, store marks, garbage collection) runs on it unchanged.
//!
//! - **Durable on return.** Every write is one etcd transaction, which returns once a majority of the
//!   members have it in their write-ahead log; `flush` has nothing left to do. The COMMIT record and
//!   its outbox entry are one batch, so one transaction: its success is the commit point.
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

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KvClient, SortOrder, SortTarget, Txn, TxnOp,
    TxnResponse,
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
    client: Client,
    /// `<prefix>log/`: every key of the log is under it.
    keys: Vec<u8>,
    fence: Fence,
    runtime: Runtime,
}

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
            async move { Client::connect(endpoints, Some(crate::connect_options())).await }
        };
        let client = wait(runtime.handle(), connecting)?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                keys: format!("{prefix}log/").into_bytes(),
                fence,
                runtime: Runtime(Some(runtime)),
            }),
        })
    }

    fn full(&self, key: &[u8]) -> Vec<u8> {
        [self.inner.keys.as_slice(), key].concat()
    }

    /// Runs one etcd request, made by `make`, retrying it while etcd is briefly unavailable (a member
    /// died, a new etcd leader is being elected), for at most [`CALL_TIMEOUT`] in all. Retrying is
    /// safe for everything this storage sends: reads; batches of absolute puts and deletes, which
    /// land the same twice; and the compare-and-swap of `update`, which fails if the first attempt
    /// landed, and then reads again.
    fn call<T, F, Fut>(&self, make: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: Fn(KvClient) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        let runtime = self
            .inner
            .runtime
            .0
            .as_ref()
            .expect("running until dropped");
        let kv = self.inner.client.kv_client();
        wait(runtime.handle(), async move {
            let mut pause = Duration::from_millis(20);
            loop {
                match make(kv.clone()).await {
                    Err(e) if passing(&e) => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(500));
                    }
                    answered => return answered,
                }
            }
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

    /// Up to [`PAGE`] entries of `[from, to)`, in key order or from the end.
    fn page(&self, from: &[u8], to: &[u8], reverse: bool) -> Result<Vec<Entry>, StorageError> {
        let mut options = GetOptions::new().with_range(to.to_vec()).with_limit(PAGE);
        if reverse {
            options = options.with_sort(SortTarget::Key, SortOrder::Descend);
        } else {
            options = options.with_sort(SortTarget::Key, SortOrder::Ascend);
        }
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
        let _ = tx.send(tokio::time::timeout(CALL_TIMEOUT, call).await);
    });
    match rx.recv() {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(e))) => Err(StorageError::Replicated(e.to_string())),
        Ok(Err(_)) => Err(StorageError::Replicated(format!(
            "the decision log has no quorum: etcd did not answer within {CALL_TIMEOUT:?}"
        ))),
        Err(_) => Err(StorageError::Stopped),
    }
}

/// Whether `error` is etcd being briefly unavailable, worth the same request again.
fn passing(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        _ => false,
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

/// A range read lazily from both ends: the front reads `[front, back)` forwards, the back reads it
/// backwards, and each moves its bound past what it read, so the two never return an entry twice.
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
        if self.failed || self.front >= self.back {
            return None;
        }
        match self.log.page(&self.front, &self.back, reverse) {
            Ok(page) => {
                if let Some((last, _)) = page.last() {
                    let last = self.log.full(last);
                    if reverse {
                        self.back = last;
                    } else {
                        self.front = [last.as_slice(), &[0]].concat();
                    }
                } else {
                    // Nothing left between the bounds.
                    self.front = self.back.clone();
                }
                if (page.len() as i64) < PAGE {
                    // A short page: nothing is left between the bounds.
                    self.front = self.back.clone();
                }
                if reverse {
                    self.behind.extend(page);
                } else {
                    self.ahead.extend(page);
                }
                None
            }
            Err(e) => {
                self.failed = true;
                Some(e)
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
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let key = self.full(key);
        let response = self.call(move |mut kv| {
            let key = key.clone();
            async move { kv.get(key, None).await }
        })?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Entries {
        let from = self.full(prefix);
        let to = prefix_end(&from);
        self.entries(from, to)
    }

    fn range_from(&self, start: &[u8]) -> Entries {
        self.entries(self.full(start), Vec::new())
    }

    fn apply(&self, batch: Batch) -> Result<(), StorageError> {
        let ops: Vec<TxnOp> = batch
            .writes()
            .map(|(key, value)| match value {
                Some(value) => TxnOp::put(self.full(key), value.to_vec(), None),
                None => TxnOp::delete(self.full(key), None),
            })
            .collect();
        if ops.is_empty() {
            return Ok(());
        }
        if ops.len() <= MAX_TXN_OPS {
            return self.fenced(ops);
        }
        // Larger than one etcd transaction may be: only ever a batch of deletions (the outbox's sent
        // e-mails), each of which stands alone, so they go in several fenced transactions.
        if batch.writes().any(|(_, value)| value.is_some()) {
            return Err(StorageError::Replicated(format!(
                "a batch of {} writes is more than one etcd transaction takes ({MAX_TXN_OPS})",
                ops.len()
            )));
        }
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            self.fenced(ops.by_ref().take(MAX_TXN_OPS - 1).collect())?;
        }
        Ok(())
    }

    fn update(&self, key: &[u8], change: Change<'_>) -> Result<(), StorageError> {
        let key = self.full(key);
        loop {
            let read = key.clone();
            let current = self.call(move |mut kv| {
                let read = read.clone();
                async move { kv.get(read, None).await }
            })?;
            let (old, revision) = match current.kvs().first() {
                Some(kv) => (Some(kv.value().to_vec()), kv.mod_revision()),
                None => (None, 0),
            };
            let op = match change(old.as_deref()) {
                Some(new) => TxnOp::put(key.clone(), new, None),
                None => TxnOp::delete(key.clone(), None),
            };
            let unchanged = Compare::mod_revision(key.clone(), CompareOp::Equal, revision);
            let txn = Txn::new()
                .when([self.inner.fence.compare(), unchanged])
                .and_then([op]);
            let response = self.call(move |mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })?;
            if response.succeeded() {
                return Ok(());
            }
            // The key changed under us, or the fence moved: only the first is worth another try.
            if !self.still_fenced()? {
                return Err(StorageError::Fenced);
            }
        }
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

impl EtcdLog {
    /// Whether the leader key still has the create revision this process was elected under.
    fn still_fenced(&self) -> Result<bool, StorageError> {
        let key = self.inner.fence.key.clone();
        let response = self.call(move |mut kv| {
            let key = key.clone();
            async move { kv.get(key, None).await }
        })?;
        Ok(response
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == self.inner.fence.create_revision))
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
