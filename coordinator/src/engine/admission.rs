//! Admitting requests: request-id deduplication, and one change per user in flight.

use std::collections::HashMap;

use tpc_common::{Operation, TxnId, UserId};

use super::{AbortNote, CONFLICT, Command, Engine, Outcome, Participant, Phase, RequestKey, Txn};

/// Where a user's transactions stand at this coordinator.
enum UserState {
    /// Nothing in flight.
    Free,
    /// A transaction is collecting votes: a new one conflicts.
    Preparing,
    /// Transactions are decided and finishing (or queued behind those): a new one queues.
    Finishing,
}

/// Why a new transaction waits that long for the user's previous one, and gives up.
pub(super) const STILL_FINISHING: &str = "an earlier change of this user is still finishing";

impl Engine {
    pub(super) fn begin(
        &mut self,
        txn: TxnId,
        request_id: String,
        op: Operation,
        now: u64,
    ) -> Vec<Command> {
        let key = RequestKey {
            kind: op.kind(),
            user: op.user().clone(),
        };
        if let Some((first, recorded)) = self.committed.get(&request_id) {
            if *recorded != key {
                return vec![reused(txn, &request_id)];
            }
            return vec![Command::Reply {
                clients: vec![txn],
                outcome: Outcome {
                    txn: *first,
                    request_id,
                    committed: true,
                    reason: String::new(),
                },
            }];
        }
        if let Some(first) = self.running.get(&request_id).copied() {
            let Some(running) = self.txns.get_mut(&first) else {
                // Cannot happen (running and txns change together); never leave a client hanging.
                return vec![Command::Reject {
                    client: txn,
                    reason: "internal error: request in flight but unknown".into(),
                }];
            };
            if running.kind != key.kind || running.user != key.user {
                return vec![reused(txn, &request_id)];
            }
            // The client retried while the first attempt runs: it gets that attempt's outcome.
            running.clients.push(txn);
            return Vec::new();
        }

        let state = self.user_state(&key.user);
        if let UserState::Preparing = state {
            // No-wait, as at the participants: another change of this user is collecting votes.
            // Nothing was sent, so there is nothing to abort: note it and answer.
            let note = AbortNote {
                txn,
                request_id: request_id.clone(),
                kind: key.kind,
                user: key.user,
                reason: CONFLICT.into(),
                started_at: now,
                decided_at: now,
            };
            return vec![
                Command::LogAbort { note },
                Command::Reply {
                    clients: vec![txn],
                    outcome: Outcome {
                        txn,
                        request_id,
                        committed: false,
                        reason: CONFLICT.into(),
                    },
                },
            ];
        }
        let queued = matches!(state, UserState::Finishing);
        let phase = if queued {
            // The operation (with its passwords) is kept in memory only while queued.
            Phase::Queued { op: op.clone() }
        } else {
            Phase::Preparing {
                votes: HashMap::new(),
            }
        };
        self.running.insert(request_id.clone(), txn);
        self.txns.insert(
            txn,
            Txn {
                request_id,
                kind: key.kind,
                user: key.user,
                register_email: match &op {
                    Operation::Register { email, .. } => Some(email.clone()),
                    Operation::Update { .. } => None,
                },
                started_at: now,
                clients: vec![txn],
                round: 0,
                phase,
            },
        );
        let mut out: Vec<Command> = if queued {
            Vec::new()
        } else {
            prepare(txn, &op).collect()
        };
        out.push(Command::StartDeadline {
            txn,
            after: self.config.prepare_deadline,
            round: 0,
        });
        out
    }

    fn user_state(&self, user: &UserId) -> UserState {
        let mut state = UserState::Free;
        for t in self.txns.values().filter(|t| t.user == *user) {
            match t.phase {
                Phase::Preparing { .. } => return UserState::Preparing,
                Phase::Queued { .. }
                | Phase::Forcing
                | Phase::Committing { .. }
                | Phase::Aborting { .. } => state = UserState::Finishing,
            }
        }
        state
    }

    /// Starts the oldest queued transaction of `user` once nothing else of that user is in flight.
    pub(super) fn start_next(&mut self, user: &UserId) -> Vec<Command> {
        let in_flight = self
            .txns
            .values()
            .any(|t| t.user == *user && !matches!(t.phase, Phase::Queued { .. }));
        let next = self
            .txns
            .iter()
            .filter(|(_, t)| t.user == *user && matches!(t.phase, Phase::Queued { .. }))
            .map(|(id, _)| *id)
            .min();
        let (false, Some(next)) = (in_flight, next) else {
            return Vec::new();
        };
        let Some(t) = self.txns.get_mut(&next) else {
            return Vec::new();
        };
        let preparing = Phase::Preparing {
            votes: HashMap::new(),
        };
        let Phase::Queued { op } = std::mem::replace(&mut t.phase, preparing) else {
            return Vec::new();
        };
        // Its wait in the queue is over: preparing gets a full deadline of its own.
        t.round += 1;
        let mut out: Vec<Command> = prepare(next, &op).collect();
        out.push(Command::StartDeadline {
            txn: next,
            after: self.config.prepare_deadline,
            round: t.round,
        });
        out
    }
}

fn reused(client: TxnId, request_id: &str) -> Command {
    Command::Reject {
        client,
        reason: format!("request_id {request_id:?} was already used for a different request"),
    }
}

fn prepare(txn: TxnId, op: &Operation) -> impl Iterator<Item = Command> + '_ {
    Participant::ALL
        .iter()
        .map(move |&to| Command::SendPrepare {
            txn,
            to,
            op: op.clone(),
        })
}
