//! What the engine remembers of committed request ids, and the lookups of the log it is waiting for.
//!
//! A committed request id must answer its first outcome for as long as its record is in the log (24
//! hours by default). Remembering each one in memory made the coordinator's memory grow with the log:
//! ~200 bytes per change, ~35 MiB a minute at 2,500 changes/s. The log indexes its COMMIT records by
//! request id instead, and a request the engine does not know is looked up there before it starts.
//!
//! The engine still remembers two kinds of committed request ids:
//! - the newest [`KEEP`], with their payload digests, so a quick retry is answered without a lookup
//!   and a reuse of the id with another password is refused (the log has no digest to compare: it is
//!   keyed by a secret of this process's and never written down, so an older id is compared by kind
//!   and user, as after a restart);
//! - every one committed since an outstanding lookup was sent: that lookup's read may have run before
//!   the COMMIT record was written, and must not be taken as "never committed".
//!
//! A lookup sent after a commit was reported forced sees its record: the record is applied to the
//! log before it is forced.

use std::collections::{BTreeMap, VecDeque};

use tpc_common::{Operation, OperationKind, TxnId, UserId};

use crate::request::RequestKey;

/// Committed request ids remembered with their digests, however long ago they committed.
pub(super) const KEEP: usize = 1024;

/// A COMMIT record of the log, found by its request id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoggedRequest {
    pub txn: TxnId,
    pub kind: OperationKind,
    pub user: UserId,
}

impl LoggedRequest {
    /// What the log says the request was (no digest: see the module's doc).
    pub fn key(&self) -> RequestKey {
        RequestKey {
            kind: self.kind,
            user: self.user.clone(),
            fingerprint: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Committed {
    txn: TxnId,
    key: RequestKey,
    seq: u64,
}

/// A request waiting for the log's answer, with what it is (its digest made once, when it arrived).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Lookup {
    pub request_id: String,
    pub op: Operation,
    pub key: RequestKey,
    seq: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(super) struct Requests {
    committed: BTreeMap<String, Committed>,
    /// Commit order: (seq, request id), the oldest first.
    order: VecDeque<(u64, String)>,
    /// By the client id the request's `Begin` carried.
    lookups: BTreeMap<TxnId, Lookup>,
    /// Orders commits and lookups.
    seq: u64,
}

impl Requests {
    /// The committed transaction `request_id` stands for, and what it was, if remembered.
    pub fn committed(&self, request_id: &str) -> Option<(TxnId, &RequestKey)> {
        self.committed.get(request_id).map(|c| (c.txn, &c.key))
    }

    /// Remembers that `request_id` committed as `txn`.
    pub fn commit(&mut self, request_id: String, txn: TxnId, key: RequestKey) {
        let seq = self.next();
        self.order.push_back((seq, request_id.clone()));
        self.committed
            .insert(request_id, Committed { txn, key, seq });
        self.forget_old();
    }

    /// Forgets `request_id` if it still stands for `txn` (the log collected `txn`).
    pub fn collected(&mut self, request_id: &str, txn: TxnId) {
        if self.committed.get(request_id).is_some_and(|c| c.txn == txn) {
            self.committed.remove(request_id);
        }
    }

    /// Starts a lookup of `request_id` for client `client`.
    pub fn look_up(&mut self, client: TxnId, request_id: String, op: Operation, key: RequestKey) {
        let seq = self.next();
        self.lookups.insert(
            client,
            Lookup {
                request_id,
                op,
                key,
                seq,
            },
        );
    }

    /// The lookup of client `client`, now answered. What it protected stays remembered until
    /// [`Requests::forget_old`]: the answer must be checked against it first.
    pub fn answered(&mut self, client: TxnId) -> Option<Lookup> {
        self.lookups.remove(&client)
    }

    /// How many committed request ids are remembered (for tests: it must stay bounded).
    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.committed.len()
    }

    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Drops the oldest beyond [`KEEP`], unless an outstanding lookup began before it committed.
    pub fn forget_old(&mut self) {
        let oldest_lookup = self.lookups.values().map(|l| l.seq).min();
        while self.order.len() > KEEP {
            let Some(&(seq, _)) = self.order.front() else {
                break;
            };
            if oldest_lookup.is_some_and(|l| l < seq) {
                break;
            }
            if let Some((seq, request_id)) = self.order.pop_front()
                && self
                    .committed
                    .get(&request_id)
                    .is_some_and(|c| c.seq == seq)
            {
                self.committed.remove(&request_id);
            }
        }
    }
}
