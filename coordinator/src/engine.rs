//! The coordinator's side of two-phase commit with presumed abort, as a pure state machine.
//!
//! Events go in ([`Event`]) with the current time, commands come out ([`Command`]); the runtime
//! (`runtime.rs`) sends the RPCs, forces the log and answers the clients, and feeds results back.
//!
//! The rules it keeps (DESIGN §3):
//! - `Prepare` goes to both participants at once, with a deadline;
//! - the COMMIT record (with the outbox e-mail) is forced before anyone hears "committed": that write is
//!   the commit point; an abort writes nothing that must survive (presumed abort);
//! - `Commit` is resent with capped exponential backoff until every participant acknowledged; then END;
//! - `QueryDecision` answers `pending` while votes are outstanding, so a transaction that could still
//!   commit is never reported aborted; after a crash it is forgotten and can never commit;
//! - a `request_id` seen again returns the first outcome (committed) or joins the running transaction;
//!   an aborted request may run again, since abort means nothing happened.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tpc_common::{Backoff, Email, Operation, OperationKind, TxnId, UserId};

/// The two participants every transaction spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Participant {
    Password,
    History,
}

impl Participant {
    pub const ALL: [Participant; 2] = [Participant::Password, Participant::History];

    pub fn name(self) -> &'static str {
        match self {
            Participant::Password => "password",
            Participant::History => "history",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vote {
    /// The password participant's yes carries the user's e-mail address.
    Yes {
        email: Option<Email>,
    },
    No {
        reason: String,
    },
}

/// What the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub txn: TxnId,
    pub request_id: String,
    pub committed: bool,
    pub reason: String,
}

/// The forced COMMIT record: everything needed to finish the transaction and send its e-mail after a
/// crash. No secrets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitRecord {
    pub txn: TxnId,
    pub request_id: String,
    pub kind: OperationKind,
    pub user: UserId,
    pub email: Email,
    pub started_at: u64,
    pub decided_at: u64,
}

/// The unforced ABORT note, kept only so `tpc txn list` can show aborted transactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbortNote {
    pub txn: TxnId,
    pub request_id: String,
    pub kind: OperationKind,
    pub user: UserId,
    pub reason: String,
    pub started_at: u64,
    pub decided_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A client asked for `op`. `txn` is the id to use if this starts a new transaction.
    Begin {
        txn: TxnId,
        request_id: String,
        op: Operation,
    },
    Voted {
        txn: TxnId,
        from: Participant,
        vote: Vote,
    },
    /// `Prepare` failed to reach the participant or was refused.
    PrepareFailed {
        txn: TxnId,
        from: Participant,
        error: String,
    },
    PrepareDeadline {
        txn: TxnId,
    },
    /// The COMMIT record and its outbox entry are on disk.
    CommitForced {
        txn: TxnId,
    },
    CommitAcked {
        txn: TxnId,
        from: Participant,
    },
    CommitFailed {
        txn: TxnId,
        from: Participant,
        attempt: u32,
    },
    /// COMMIT records found on start; `ended` ones need nothing but their request id remembered.
    Recovered {
        records: Vec<(CommitRecord, bool)>,
    },
    /// The log garbage-collected a finished transaction.
    Forgotten {
        txn: TxnId,
        request_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    SendPrepare {
        txn: TxnId,
        to: Participant,
        op: Operation,
    },
    /// Report `PrepareDeadline` after this long.
    StartDeadline { txn: TxnId, after: Duration },
    /// Write the COMMIT record and the e-mail in one batch, force it, report `CommitForced`.
    ForceCommit { record: CommitRecord },
    /// Note the abort in the log, unforced.
    LogAbort { note: AbortNote },
    /// Tell a participant to abort; not retried (an in-doubt participant asks and learns "aborted").
    SendAbort { txn: TxnId, to: Participant },
    /// Answer every client waiting on this request id.
    Reply { outcome: Outcome },
    /// Send `Commit` after `after`; `attempt` counts earlier failures.
    SendCommit {
        txn: TxnId,
        to: Participant,
        after: Duration,
        attempt: u32,
    },
    /// Every participant acknowledged: write END (unforced); the record may now be collected.
    LogEnd { txn: TxnId },
    /// Wake the e-mail dispatcher.
    DispatchOutbox,
}

/// The answer to a participant's `QueryDecision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Pending,
    Committed,
    Aborted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub prepare_deadline: Duration,
    pub commit_backoff: Backoff,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            prepare_deadline: Duration::from_secs(2),
            commit_backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
        }
    }
}

/// The reason given when another change of the same user is being prepared.
pub const CONFLICT: &str = "conflict: another transaction is changing this user";

enum UserState {
    /// Nothing in flight.
    Free,
    /// A transaction is collecting votes: a new one conflicts.
    Preparing,
    /// Decided transactions are finishing phase two (or others queue behind them): a new one queues.
    Finishing,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for an earlier transaction of the same user to finish phase two: its participants still
    /// hold the user's lock, so preparing now would only meet a conflict.
    Queued {
        op: Operation,
    },
    Preparing {
        votes: HashMap<Participant, Vote>,
    },
    /// All voted yes; the COMMIT record is being forced.
    Forcing,
    Committing {
        acked: HashSet<Participant>,
    },
}

#[derive(Debug)]
struct Txn {
    request_id: String,
    kind: OperationKind,
    user: UserId,
    /// The address given at registration (an update takes it from the password participant's vote).
    register_email: Option<Email>,
    started_at: u64,
    phase: Phase,
}

/// A transaction the engine is working on, for `ListTransactions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Active {
    pub txn: TxnId,
    pub request_id: String,
    pub kind: OperationKind,
    pub user: UserId,
    pub started_at: u64,
    pub decided: bool,
    pub acked: Vec<Participant>,
}

#[derive(Debug, Default)]
pub struct Engine {
    config: Config,
    txns: HashMap<TxnId, Txn>,
    /// Request ids of running transactions.
    running: HashMap<String, TxnId>,
    /// Request ids of committed transactions still in the log, with their outcome.
    committed: HashMap<String, TxnId>,
    committed_txns: HashSet<TxnId>,
}

impl Engine {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    pub fn config(&self) -> Config {
        self.config
    }

    pub fn decision(&self, txn: TxnId) -> Decision {
        match self.txns.get(&txn).map(|t| &t.phase) {
            Some(Phase::Queued { .. } | Phase::Preparing { .. } | Phase::Forcing) => {
                Decision::Pending
            }
            Some(Phase::Committing { .. }) => Decision::Committed,
            None if self.committed_txns.contains(&txn) => Decision::Committed,
            // Presumed abort: no record means it did not commit, and now never will.
            None => Decision::Aborted,
        }
    }

    pub fn active(&self) -> Vec<Active> {
        let mut active: Vec<Active> = self
            .txns
            .iter()
            .map(|(txn, t)| Active {
                txn: *txn,
                request_id: t.request_id.clone(),
                kind: t.kind,
                user: t.user.clone(),
                started_at: t.started_at,
                decided: matches!(t.phase, Phase::Committing { .. }),
                acked: match &t.phase {
                    Phase::Committing { acked } => {
                        let mut a: Vec<_> = acked.iter().copied().collect();
                        a.sort();
                        a
                    }
                    _ => Vec::new(),
                },
            })
            .collect();
        active.sort_by_key(|a| a.txn);
        active
    }

    pub fn handle(&mut self, event: Event, now: u64) -> Vec<Command> {
        match event {
            Event::Begin {
                txn,
                request_id,
                op,
            } => self.begin(txn, request_id, op, now),
            Event::Voted { txn, from, vote } => self.voted(txn, from, vote, now),
            Event::PrepareFailed { txn, from, error } => self.voted(
                txn,
                from,
                Vote::No {
                    reason: format!("{} participant unavailable: {error}", from.name()),
                },
                now,
            ),
            Event::PrepareDeadline { txn } => match self.txns.get(&txn).map(|t| &t.phase) {
                Some(Phase::Preparing { .. }) => {
                    self.abort(txn, "prepare deadline exceeded".into(), now)
                }
                Some(Phase::Queued { .. }) => self.abort(
                    txn,
                    "an earlier change of this user is still being committed".into(),
                    now,
                ),
                _ => Vec::new(),
            },
            Event::CommitForced { txn } => self.commit_forced(txn),
            Event::CommitAcked { txn, from } => self.commit_acked(txn, from),
            Event::CommitFailed { txn, from, attempt } => match self.txns.get(&txn) {
                Some(Txn {
                    phase: Phase::Committing { acked },
                    ..
                }) if !acked.contains(&from) => vec![Command::SendCommit {
                    txn,
                    to: from,
                    after: self.config.commit_backoff.delay(attempt),
                    attempt: attempt + 1,
                }],
                _ => Vec::new(),
            },
            Event::Recovered { records } => self.recovered(records),
            Event::Forgotten { txn, request_id } => {
                self.committed.remove(&request_id);
                self.committed_txns.remove(&txn);
                Vec::new()
            }
        }
    }

    fn begin(&mut self, txn: TxnId, request_id: String, op: Operation, now: u64) -> Vec<Command> {
        if let Some(first) = self.committed.get(&request_id) {
            return vec![Command::Reply {
                outcome: Outcome {
                    txn: *first,
                    request_id,
                    committed: true,
                    reason: String::new(),
                },
            }];
        }
        if self.running.contains_key(&request_id) {
            // The client retried while the first attempt runs: it gets that attempt's outcome.
            return Vec::new();
        }
        self.running.insert(request_id.clone(), txn);
        let mut out = Vec::new();
        let phase = match self.user_state(op.user()) {
            UserState::Free => {
                out.extend(prepare(txn, &op));
                Phase::Preparing {
                    votes: HashMap::new(),
                }
            }
            UserState::Finishing => Phase::Queued { op: op.clone() },
            UserState::Preparing => Phase::Preparing {
                votes: HashMap::new(),
            },
        };
        let conflict = matches!(self.user_state(op.user()), UserState::Preparing);
        out.push(Command::StartDeadline {
            txn,
            after: self.config.prepare_deadline,
        });
        // The operation (with its passwords) goes out in the Prepares and is not kept after.
        self.txns.insert(
            txn,
            Txn {
                request_id,
                kind: op.kind(),
                user: op.user().clone(),
                register_email: match &op {
                    Operation::Register { email, .. } => Some(email.clone()),
                    Operation::Update { .. } => None,
                },
                started_at: now,
                phase,
            },
        );
        if conflict {
            // No-wait, as at the participants: another change of this user is being prepared.
            return self.abort(txn, CONFLICT.into(), now);
        }
        out
    }

    /// Where the user's transactions stand at this coordinator.
    fn user_state(&self, user: &UserId) -> UserState {
        let mut state = UserState::Free;
        for t in self.txns.values().filter(|t| t.user == *user) {
            match t.phase {
                Phase::Preparing { .. } => return UserState::Preparing,
                Phase::Queued { .. } | Phase::Forcing | Phase::Committing { .. } => {
                    state = UserState::Finishing
                }
            }
        }
        state
    }

    /// Starts the oldest queued transaction of `user` once nothing else of that user is in flight.
    fn start_next(&mut self, user: &UserId) -> Vec<Command> {
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
        match std::mem::replace(
            &mut t.phase,
            Phase::Preparing {
                votes: HashMap::new(),
            },
        ) {
            Phase::Queued { op } => prepare(next, &op).collect(),
            _ => Vec::new(),
        }
    }

    fn voted(&mut self, txn: TxnId, from: Participant, vote: Vote, now: u64) -> Vec<Command> {
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

    fn abort(&mut self, txn: TxnId, reason: String, now: u64) -> Vec<Command> {
        let Some(t) = self.txns.remove(&txn) else {
            return Vec::new();
        };
        self.running.remove(&t.request_id);
        let mut out = vec![Command::LogAbort {
            note: AbortNote {
                txn,
                request_id: t.request_id.clone(),
                kind: t.kind,
                user: t.user.clone(),
                reason: reason.clone(),
                started_at: t.started_at,
                decided_at: now,
            },
        }];
        // Both, not only the yes-voters: a Prepare still in flight must meet a tombstone.
        out.extend(
            Participant::ALL
                .iter()
                .map(|&to| Command::SendAbort { txn, to }),
        );
        out.push(Command::Reply {
            outcome: Outcome {
                txn,
                request_id: t.request_id,
                committed: false,
                reason,
            },
        });
        out.extend(self.start_next(&t.user));
        out
    }

    fn commit_forced(&mut self, txn: TxnId) -> Vec<Command> {
        let Some(t) = self.txns.get_mut(&txn) else {
            return Vec::new();
        };
        if !matches!(t.phase, Phase::Forcing) {
            return Vec::new();
        }
        t.phase = Phase::Committing {
            acked: HashSet::new(),
        };
        let request_id = t.request_id.clone();
        self.running.remove(&request_id);
        self.committed.insert(request_id.clone(), txn);
        self.committed_txns.insert(txn);
        let mut out = vec![Command::Reply {
            outcome: Outcome {
                txn,
                request_id,
                committed: true,
                reason: String::new(),
            },
        }];
        out.extend(Participant::ALL.iter().map(|&to| Command::SendCommit {
            txn,
            to,
            after: Duration::ZERO,
            attempt: 0,
        }));
        out.push(Command::DispatchOutbox);
        out
    }

    fn commit_acked(&mut self, txn: TxnId, from: Participant) -> Vec<Command> {
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
        let Some(done) = self.txns.remove(&txn) else {
            return Vec::new();
        };
        // The participants released the user: start what queued behind this transaction.
        let mut out = vec![Command::LogEnd { txn }];
        out.extend(self.start_next(&done.user));
        out
    }

    fn recovered(&mut self, records: Vec<(CommitRecord, bool)>) -> Vec<Command> {
        let mut out = Vec::new();
        for (record, ended) in records {
            self.committed.insert(record.request_id.clone(), record.txn);
            self.committed_txns.insert(record.txn);
            if ended {
                continue;
            }
            let txn = record.txn;
            self.txns.insert(
                txn,
                Txn {
                    request_id: record.request_id.clone(),
                    kind: record.kind,
                    user: record.user.clone(),
                    register_email: None,
                    started_at: record.started_at,
                    phase: Phase::Committing {
                        acked: HashSet::new(),
                    },
                },
            );
            out.extend(Participant::ALL.iter().map(|&to| Command::SendCommit {
                txn,
                to,
                after: Duration::ZERO,
                attempt: 0,
            }));
        }
        if !out.is_empty() {
            out.push(Command::DispatchOutbox);
        }
        out
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

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
