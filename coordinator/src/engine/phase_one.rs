//! Phase one: collecting votes, deciding to commit (forcing the record) or to abort.

use std::collections::BTreeSet;

use tpc_common::{Now, TxnId};

use super::admission::STILL_FINISHING;
use super::{AbortNote, Command, CommitRecord, Engine, Outcome, Participant, Phase, Refusal, Vote};

impl Engine {
    pub(super) fn voted(
        &mut self,
        txn: TxnId,
        from: Participant,
        vote: Vote,
        now: Now,
    ) -> Vec<Command> {
        let Some(t) = self.txns.get_mut(&txn) else {
            return Vec::new();
        };
        let Phase::Preparing {
            votes,
            history_next,
        } = &mut t.phase
        else {
            return Vec::new();
        };
        if from == Participant::History && history_next.is_some() {
            // Not asked yet: no vote of its can be about this transaction.
            return Vec::new();
        }
        if let Some(reason) = self.stores.lost(from) {
            // A store that lost acknowledged changes: its vote is worth nothing, and its answer is
            // not the reason to give (an unknown user there may be one it lost).
            let reason = reason.to_owned();
            return self.abort(txn, reason, now);
        }
        if let Vote::No { reason } = &vote {
            let reason = reason.clone();
            return self.abort(txn, reason, now);
        }
        votes.insert(from, vote);
        if from == Participant::Password
            && let Some(op) = history_next.take()
        {
            // The current password is right: now the history participant may lock and hash.
            return vec![Command::SendPrepare {
                txn,
                to: Participant::History,
                op,
            }];
        }
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
            decided_at: now.wall,
        };
        t.phase = Phase::Forcing;
        let started = t.preparing_since;
        let mut out = vec![Command::ForceCommit { record }];
        #[cfg(feature = "planted-bugs")]
        if self.config.planted == Some(tpc_common::PlantedBug::ReplyBeforeCommitForced) {
            out.push(Command::Reply {
                clients: std::mem::take(&mut t.clients),
                outcome: Outcome {
                    txn,
                    request_id: t.request_id.clone(),
                    committed: true,
                    reason: String::new(),
                },
            });
        }
        out.extend(self.prepare_finished(started, now));
        out
    }

    pub(super) fn deadline(&mut self, txn: TxnId, round: u32, now: Now) -> Vec<Command> {
        match self
            .txns
            .get(&txn)
            .filter(|t| t.round == round)
            .map(|t| &t.phase)
        {
            Some(Phase::Preparing { .. }) => {
                self.abort(txn, "prepare deadline exceeded".into(), now)
            }
            Some(Phase::Queued { .. }) => {
                // The change it waited for is most likely stuck on a lost store: say so.
                let reason = Participant::ALL
                    .into_iter()
                    .find_map(|p| self.stores.lost(p))
                    .unwrap_or(STILL_FINISHING)
                    .to_owned();
                self.abort(txn, reason, now)
            }
            Some(Phase::Admitting { .. }) => self.refuse_overloaded(txn),
            _ => Vec::new(),
        }
    }

    /// A transaction waited in the admission queue until its deadline, which admission planned to
    /// avoid (the participants slowed down): nothing was sent, so it is refused, not aborted.
    pub(super) fn refuse_overloaded(&mut self, txn: TxnId) -> Vec<Command> {
        self.waiting.retain(|&t| t != txn);
        let Some(t) = self.remove_txn(txn) else {
            return Vec::new();
        };
        self.running.remove(&t.request_id);
        let retry_after = self.retry_after();
        t.clients
            .into_iter()
            .map(|client| Command::Reject {
                client,
                refusal: Refusal::Overloaded { retry_after },
            })
            .collect()
    }

    /// Decides abort: nothing forced (presumed abort), an unforced note for `tpc txn list`, the client
    /// told, and, if the `Prepare`s went out, `Abort` to both participants, even to one that has not
    /// answered, so a late `Prepare` meets a tombstone. The user's next change waits for the `Abort`s.
    pub(super) fn abort(&mut self, txn: TxnId, reason: String, now: Now) -> Vec<Command> {
        let Some(t) = self.txns.get_mut(&txn) else {
            return Vec::new();
        };
        let prepared = matches!(t.phase, Phase::Preparing { .. });
        let waiting = matches!(t.phase, Phase::Admitting { .. });
        if !prepared && !waiting && !matches!(t.phase, Phase::Queued { .. }) {
            return Vec::new();
        }
        let started = t.preparing_since;
        let mut out = vec![
            Command::LogAbort {
                note: AbortNote {
                    txn,
                    request_id: t.request_id.clone(),
                    kind: t.kind,
                    user: t.user.clone(),
                    reason: reason.clone(),
                    started_at: t.started_at,
                    decided_at: now.wall,
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
                pending: Participant::ALL.into_iter().collect::<BTreeSet<_>>(),
            };
            out.extend(
                Participant::ALL
                    .iter()
                    .map(|&to| Command::SendAbort { txn, to }),
            );
            out.extend(self.prepare_finished(started, now));
            return out;
        }
        if waiting {
            self.waiting.retain(|&t| t != txn);
        }
        let user = t.user.clone();
        self.remove_txn(txn);
        out.extend(self.start_next(&user, now));
        out
    }

    pub(super) fn abort_delivered(
        &mut self,
        txn: TxnId,
        to: Participant,
        now: Now,
    ) -> Vec<Command> {
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
        self.remove_txn(txn);
        self.start_next(&user, now)
    }
}
