//! Phase one: collecting votes, deciding to commit (forcing the record) or to abort.

use std::collections::HashSet;

use tpc_common::TxnId;

use super::admission::STILL_FINISHING;
use super::{AbortNote, Command, CommitRecord, Engine, Outcome, Participant, Phase, Vote};

impl Engine {
    pub(super) fn voted(
        &mut self,
        txn: TxnId,
        from: Participant,
        vote: Vote,
        now: u64,
    ) -> Vec<Command> {
        let Some(t) = self.txns.get_mut(&txn) else {
            return Vec::new();
        };
        let Phase::Preparing { votes } = &mut t.phase else {
            return Vec::new();
        };
        if let Vote::No { reason } = &vote {
            let reason = reason.clone();
            return self.abort(txn, reason, now);
        }
        votes.insert(from, vote);
        if votes.len() < Participant::ALL.len() {
            return Vec::new();
        }
        let email = match (votes.get(&Participant::Password), &t.register_email) {
            (Some(Vote::Yes { email: Some(email) }), _) => email.clone(),
            (_, Some(email)) => email.clone(),
            _ => {
                return self.abort(
                    txn,
                    "password participant did not report the user's e-mail address".into(),
                    now,
                );
            }
        };
        let record = CommitRecord {
            txn,
            request_id: t.request_id.clone(),
            kind: t.kind,
            user: t.user.clone(),
            email,
            started_at: t.started_at,
            decided_at: now,
        };
        t.phase = Phase::Forcing;
        vec![Command::ForceCommit { record }]
    }

    pub(super) fn deadline(&mut self, txn: TxnId, round: u32, now: u64) -> Vec<Command> {
        match self
            .txns
            .get(&txn)
            .filter(|t| t.round == round)
            .map(|t| &t.phase)
        {
            Some(Phase::Preparing { .. }) => {
                self.abort(txn, "prepare deadline exceeded".into(), now)
            }
            Some(Phase::Queued { .. }) => self.abort(txn, STILL_FINISHING.into(), now),
            _ => Vec::new(),
        }
    }

    /// Decides abort: nothing forced (presumed abort), an unforced note for `tpc txn list`, the client
    /// told, and, if the `Prepare`s went out, `Abort` to both participants, even to one that has not
    /// answered, so a late `Prepare` meets a tombstone. The user's next change waits for the `Abort`s.
    pub(super) fn abort(&mut self, txn: TxnId, reason: String, now: u64) -> Vec<Command> {
        let Some(t) = self.txns.get_mut(&txn) else {
            return Vec::new();
        };
        let prepared = matches!(t.phase, Phase::Preparing { .. });
        if !prepared && !matches!(t.phase, Phase::Queued { .. }) {
            return Vec::new();
        }
        let mut out = vec![
            Command::LogAbort {
                note: AbortNote {
                    txn,
                    request_id: t.request_id.clone(),
                    kind: t.kind,
                    user: t.user.clone(),
                    reason: reason.clone(),
                    started_at: t.started_at,
                    decided_at: now,
                },
            },
            Command::Reply {
                clients: std::mem::take(&mut t.clients),
                outcome: Outcome {
                    txn,
                    request_id: t.request_id.clone(),
                    committed: false,
                    reason,
                },
            },
        ];
        self.running.remove(&t.request_id);
        if prepared {
            t.phase = Phase::Aborting {
                pending: Participant::ALL.into_iter().collect::<HashSet<_>>(),
            };
            out.extend(
                Participant::ALL
                    .iter()
                    .map(|&to| Command::SendAbort { txn, to }),
            );
            return out;
        }
        let user = t.user.clone();
        self.txns.remove(&txn);
        out.extend(self.start_next(&user));
        out
    }

    pub(super) fn abort_delivered(&mut self, txn: TxnId, to: Participant) -> Vec<Command> {
        let Some(t) = self.txns.get_mut(&txn) else {
            return Vec::new();
        };
        let Phase::Aborting { pending } = &mut t.phase else {
            return Vec::new();
        };
        pending.remove(&to);
        if !pending.is_empty() {
            return Vec::new();
        }
        let user = t.user.clone();
        self.txns.remove(&txn);
        self.start_next(&user)
    }
}
