//! Phase two: after the commit point, telling the participants until both acknowledged; recovery of
//! unfinished commits after a restart; forgetting collected transactions.

use std::collections::BTreeSet;
use std::time::Duration;

use tpc_common::{Now, TxnId};

use super::{Command, CommitRecord, Engine, Outcome, Participant, Phase, RequestKey, Txn};

impl Engine {
    pub(super) fn commit_forced(&mut self, txn: TxnId) -> Vec<Command> {
        let Some(t) = self.txns.get_mut(&txn) else {
            return Vec::new();
        };
        if !matches!(t.phase, Phase::Forcing) {
            return Vec::new();
        }
        t.phase = Phase::Committing {
            acked: BTreeSet::new(),
        };
        let request_id = t.request_id.clone();
        let key = RequestKey {
            kind: t.kind,
            user: t.user.clone(),
            fingerprint: t.fingerprint,
        };
        let clients = std::mem::take(&mut t.clients);
        self.running.remove(&request_id);
        self.requests.commit(request_id.clone(), txn, key);
        let mut out = vec![Command::Reply {
            clients,
            outcome: Outcome {
                txn,
                request_id,
                committed: true,
                reason: String::new(),
            },
        }];
        out.extend(send_commits(txn));
        out
    }

    pub(super) fn commit_acked(&mut self, txn: TxnId, from: Participant, now: Now) -> Vec<Command> {
        let Some(Txn {
            phase: Phase::Committing { acked },
            ..
        }) = self.txns.get_mut(&txn)
        else {
            return Vec::new();
        };
        acked.insert(from);
        if acked.len() < Participant::ALL.len() {
            return Vec::new();
        }
        let Some(done) = self.remove_txn(txn) else {
            return Vec::new();
        };
        // The participants released the user: start what queued behind this transaction.
        let mut out = vec![Command::LogEnd { txn }];
        out.extend(self.start_next(&done.user, now));
        out
    }

    pub(super) fn commit_failed(
        &mut self,
        txn: TxnId,
        from: Participant,
        attempt: u32,
    ) -> Vec<Command> {
        match self.txns.get(&txn).map(|t| &t.phase) {
            Some(Phase::Committing { acked }) if !acked.contains(&from) => {
                vec![Command::SendCommit {
                    txn,
                    to: from,
                    after: self.config.commit_backoff.delay(attempt),
                    attempt: attempt + 1,
                }]
            }
            _ => Vec::new(),
        }
    }

    pub(super) fn recovered(&mut self, committing: Vec<CommitRecord>) -> Vec<Command> {
        let mut out = Vec::new();
        for record in committing {
            let txn = record.txn;
            self.insert_txn(
                txn,
                Txn {
                    request_id: record.request_id,
                    kind: record.kind,
                    user: record.user,
                    register_email: None,
                    started_at: record.started_at,
                    clients: Vec::new(),
                    round: 0,
                    preparing_since: 0,
                    deadline_at: 0,
                    fingerprint: None,
                    phase: Phase::Committing {
                        acked: BTreeSet::new(),
                    },
                },
            );
            out.extend(send_commits(txn));
        }
        out
    }

    /// The log collected `txn`. Its request id is forgotten only if it still stands for `txn`: a request
    /// that aborted once and committed on retry keeps its committed outcome.
    pub(super) fn forgotten(&mut self, txn: TxnId, request_id: &str) -> Vec<Command> {
        self.requests.collected(request_id, txn);
        Vec::new()
    }
}

fn send_commits(txn: TxnId) -> impl Iterator<Item = Command> {
    Participant::ALL
        .into_iter()
        .map(move |to| Command::SendCommit {
            txn,
            to,
            after: Duration::ZERO,
            attempt: 0,
        })
}
