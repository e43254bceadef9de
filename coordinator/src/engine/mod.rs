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
//!   an aborted request may run again, since abort means nothing happened; a `request_id` reused for a
//!   different request is refused; a request id the engine does not remember is looked up in the log
//!   before anything starts (`requests.rs`);
//! - one change per user is in flight: a change meeting another of its user waits for it to finish
//!   both phases (so a password guess in flight never makes the owner's change conflict), up to
//!   `MAX_QUEUED_PER_USER` waiting, each for at most a prepare deadline; one more conflicts at once;
//! - only as many transactions collect votes at once as can finish within the deadline (`limit.rs`);
//!   the others wait in a short queue, or are refused at once as overloaded, never started to fail.
//!
//! The handlers live beside this file by phase: `admission.rs` (requests, the per-user queue, the
//! admission queue), `requests.rs` (committed request ids), `phase_one.rs` (votes, abort),
//! `phase_two.rs` (commit, recovery, forgetting).

mod admission;
mod breaker;
mod limit;
mod phase_one;
mod phase_two;
mod requests;
mod stores;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use breaker::{Breaker, Turn};
pub use requests::LoggedRequest;
use requests::Requests;
pub use stores::StoreMark;
use stores::{Stores, Verdict};
use tpc_common::{
    Backoff, Email, Fingerprint, Fingerprinter, Now, Operation, OperationKind, TxnId, UserId,
};

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

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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

use crate::request::RequestKey;
pub use limit::LimitConfig;
use limit::PrepareLimit;

/// Why a request was refused without running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("request_id {0:?} was already used for a different request")]
    RequestReused(String),
    /// More changes are waiting than can prepare within the deadline: retry after this long.
    #[error("overloaded, retry in {} ms", .retry_after.as_millis())]
    Overloaded { retry_after: Duration },
    #[error("internal error: {0}")]
    Internal(String),
    /// A participant failed several prepares in a row: nothing was started; retry after this long.
    #[error("{} participant unreachable, retry in {} ms", .participant.name(), .retry_after.as_millis())]
    Unavailable {
        participant: Participant,
        retry_after: Duration,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A client asked for `op`. `txn` is the id to use if this starts a new transaction; it also names
    /// the client in `Reply` and `Reject`.
    Begin {
        txn: TxnId,
        request_id: String,
        op: Operation,
    },
    /// The log's answer to `LookUp`: the COMMIT record of the request's id, if any, or why the log
    /// could not be read.
    LookedUp {
        client: TxnId,
        logged: Result<Option<LoggedRequest>, String>,
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
    /// The deadline of round `round` of the transaction's preparing passed.
    PrepareDeadline {
        txn: TxnId,
        round: u32,
    },
    /// The `Abort` reached the participant, or failed to (either way the engine stops waiting for it).
    AbortDelivered {
        txn: TxnId,
        to: Participant,
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
    /// The COMMIT records without an END found on start: what recovery must finish. Ended ones need
    /// nothing (the log answers for their request ids), so the runtime does not read them into memory.
    Recovered {
        committing: Vec<CommitRecord>,
    },
    /// The log garbage-collected a finished transaction.
    Forgotten {
        txn: TxnId,
        request_id: String,
    },
    /// A participant said how far its store goes (`mark`), with its answer (`then`).
    Reported {
        from: Participant,
        mark: StoreMark,
        then: Box<Event>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Find the COMMIT record of `request_id` in the log and report `LookedUp` for `client`.
    LookUp { client: TxnId, request_id: String },
    SendPrepare {
        txn: TxnId,
        to: Participant,
        op: Operation,
    },
    /// Report `PrepareDeadline` for this round after this long.
    StartDeadline {
        txn: TxnId,
        after: Duration,
        round: u32,
    },
    /// Write the COMMIT record and the e-mail in one batch, force it, hand the e-mail to the outbox,
    /// report `CommitForced`.
    ForceCommit { record: CommitRecord },
    /// Note the abort in the log, unforced.
    LogAbort { note: AbortNote },
    /// Tell a participant to abort, then report `AbortDelivered`; not retried (an in-doubt participant
    /// asks and learns "aborted").
    SendAbort { txn: TxnId, to: Participant },
    /// Answer the clients (by the id their `Begin` carried) with the outcome.
    Reply {
        clients: Vec<TxnId>,
        outcome: Outcome,
    },
    /// Refuse one client's request without running it.
    Reject { client: TxnId, refusal: Refusal },
    /// Send `Commit` after `after`; `attempt` counts earlier failures.
    SendCommit {
        txn: TxnId,
        to: Participant,
        after: Duration,
        attempt: u32,
    },
    /// Every participant acknowledged: write END (unforced); the record may now be collected.
    LogEnd { txn: TxnId },
    /// Remember how far a participant's store goes (not forced: a lost update only weakens the check).
    SaveStoreMark {
        participant: Participant,
        id: String,
        seq: u64,
    },
    /// A participant's store lost acknowledged changes (`reason`), or an operator accepted that
    /// (`reason` is `None`): for the operator's log.
    StoreVerdict {
        participant: Participant,
        lost: Option<String>,
    },
    /// A participant's circuit breaker opened (it failed prepares in a row) or closed (it answers
    /// again): for the operator's log.
    BreakerTurned {
        participant: Participant,
        opened: bool,
    },
}

/// The answer to a participant's `QueryDecision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Pending,
    Committed,
    Aborted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Config {
    pub prepare_deadline: Duration,
    pub commit_backoff: Backoff,
    pub limit: LimitConfig,
    /// A deliberate mistake, for the checker's tests (`tpc_common::PlantedBug`).
    #[cfg(feature = "planted-bugs")]
    pub planted: Option<tpc_common::PlantedBug>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            prepare_deadline: Duration::from_secs(2),
            commit_backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
            limit: LimitConfig::default(),
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }
}

/// The reason given when too many changes of the same user wait already.
pub const CONFLICT: &str = "conflict: another transaction is changing this user";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Phase {
    /// Waiting for an earlier transaction of the same user to finish both phases: its participants
    /// hold the user's lock until then, so preparing now would only meet a conflict.
    Queued {
        op: Operation,
    },
    /// Waiting in the admission queue for a turn to prepare (too many transactions are preparing).
    Admitting {
        op: Operation,
    },
    Preparing {
        votes: BTreeMap<Participant, Vote>,
        /// An update's operation, kept (in memory only) until the password participant has checked
        /// the current password: only then is the history participant asked (`phase_one.rs`).
        history_next: Option<Operation>,
    },
    /// All voted yes; the COMMIT record is being forced.
    Forcing,
    Committing {
        acked: BTreeSet<Participant>,
    },
    /// Aborted; waiting until the Aborts reached the participants (and so released the user) before the
    /// user's next change starts, lest its Prepare overtake the Abort and meet the old lock.
    Aborting {
        pending: BTreeSet<Participant>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Txn {
    request_id: String,
    kind: OperationKind,
    user: UserId,
    /// The address given at registration (an update takes it from the password participant's vote).
    register_email: Option<Email>,
    started_at: u64,
    /// The clients waiting for the outcome: the ids their `Begin`s carried.
    clients: Vec<TxnId>,
    /// Counts deadlines: 0 while queued or preparing from the start, 1 once a queued transaction starts
    /// preparing with a fresh deadline; a deadline of an earlier round is stale.
    round: u32,
    /// When its `Prepare`s went out (ms), to measure how long preparing takes.
    preparing_since: u64,
    /// When the deadline of the current round passes (ms).
    deadline_at: u64,
    /// The request's payload digest (`None` for a transaction recovered from the log).
    fingerprint: Option<Fingerprint>,
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

/// Ordered maps, and `Hash`: the state is one value however it was reached, so a model checker can tell
/// states apart and a simulation replays in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Engine {
    config: Config,
    txns: BTreeMap<TxnId, Txn>,
    /// The transactions of each user, oldest first: admission looks at one user, never at all.
    by_user: BTreeMap<UserId, BTreeSet<TxnId>>,
    /// Transactions in `Preparing`.
    preparing: usize,
    limit: PrepareLimit,
    /// The admission queue, first come first served.
    waiting: VecDeque<TxnId>,
    /// Request ids of running transactions.
    running: BTreeMap<String, TxnId>,
    /// Committed request ids remembered, and lookups of the log outstanding (`requests.rs`).
    requests: Requests,
    /// Digests request payloads (a key of this process's, never written down).
    fingerprints: Fingerprinter,
    /// Per participant: refuse at once while it is unreachable (`breaker.rs`).
    breakers: BTreeMap<Participant, Breaker>,
    /// Per participant: the store that acknowledged its changes (`stores.rs`).
    stores: Stores,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

impl Engine {
    pub fn new(config: Config) -> Self {
        Self::with_fingerprinter(config, Fingerprinter::new())
    }

    /// An engine whose request digests use a given key: a model checker or a simulation must reach the
    /// same state from the same start, which a fresh random key would prevent.
    pub fn with_fingerprinter(config: Config, fingerprints: Fingerprinter) -> Self {
        Self {
            config,
            txns: BTreeMap::new(),
            by_user: BTreeMap::new(),
            preparing: 0,
            limit: PrepareLimit::new(config.limit, config.prepare_deadline),
            waiting: VecDeque::new(),
            running: BTreeMap::new(),
            requests: Requests::default(),
            fingerprints,
            breakers: Participant::ALL
                .into_iter()
                .map(|p| (p, Breaker::new(config.prepare_deadline)))
                .collect(),
            stores: Stores::default(),
        }
    }

    /// Adds a transaction and indexes it under its user.
    fn insert_txn(&mut self, txn: TxnId, t: Txn) {
        self.by_user.entry(t.user.clone()).or_default().insert(txn);
        self.txns.insert(txn, t);
    }

    /// Removes a transaction and its index entry.
    fn remove_txn(&mut self, txn: TxnId) -> Option<Txn> {
        let t = self.txns.remove(&txn)?;
        if let Some(set) = self.by_user.get_mut(&t.user) {
            set.remove(&txn);
            if set.is_empty() {
                self.by_user.remove(&t.user);
            }
        }
        Some(t)
    }

    /// The user's transactions, oldest first.
    fn txns_of<'a>(&'a self, user: &UserId) -> impl Iterator<Item = (TxnId, &'a Txn)> + 'a {
        self.by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|id| self.txns.get(id).map(|t| (*id, t)))
    }

    pub fn config(&self) -> Config {
        self.config
    }

    /// Whether no participant's store is lost.
    pub fn stores_whole(&self) -> bool {
        Participant::ALL
            .into_iter()
            .all(|p| self.stores.lost(p).is_none())
    }

    /// How far `p`'s store went, as remembered from before a restart.
    pub fn remember_store(&mut self, p: Participant, id: String, seq: u64) {
        self.stores.remember(p, id, seq);
    }

    /// The decision on `txn` if the engine knows it; `None` when the log decides: a transaction no
    /// longer in memory committed if the log holds its COMMIT record, and otherwise it aborted (presumed
    /// abort: no record means it did not commit, and now never will).
    pub fn decision(&self, txn: TxnId) -> Option<Decision> {
        #[cfg(feature = "planted-bugs")]
        if self.config.planted == Some(tpc_common::PlantedBug::AbortedWhileVoting)
            && matches!(
                self.txns.get(&txn).map(|t| &t.phase),
                Some(Phase::Preparing { .. })
            )
        {
            return Some(Decision::Aborted);
        }
        Some(match self.txns.get(&txn).map(|t| &t.phase)? {
            Phase::Queued { .. }
            | Phase::Admitting { .. }
            | Phase::Preparing { .. }
            | Phase::Forcing => Decision::Pending,
            Phase::Committing { .. } => Decision::Committed,
            Phase::Aborting { .. } => Decision::Aborted,
        })
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
                decided: matches!(t.phase, Phase::Committing { .. } | Phase::Aborting { .. }),
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

    /// Handles `event` at `now` (tests pass one number for both clocks).
    pub fn handle(&mut self, event: Event, now: impl Into<Now>) -> Vec<Command> {
        let now = now.into();
        match event {
            Event::Begin {
                txn,
                request_id,
                op,
            } => self.begin(txn, request_id, op),
            Event::LookedUp { client, logged } => self.looked_up(client, logged, now),
            Event::Voted { txn, from, vote } => {
                let mut out = self.answered(from);
                out.extend(self.voted(txn, from, vote, now));
                out
            }
            Event::PrepareFailed { txn, from, error } => {
                let mut out = self.unreachable(txn, from, now);
                out.extend(self.voted(
                    txn,
                    from,
                    Vote::No {
                        reason: format!("{} participant unavailable: {error}", from.name()),
                    },
                    now,
                ));
                out
            }
            Event::PrepareDeadline { txn, round } => self.deadline(txn, round, now),
            Event::AbortDelivered { txn, to } => self.abort_delivered(txn, to, now),
            Event::CommitForced { txn } => self.commit_forced(txn),
            Event::CommitAcked { txn, from } => {
                let mut out = self.answered(from);
                out.extend(self.commit_acked(txn, from, now));
                out
            }
            Event::CommitFailed { txn, from, attempt } => self.commit_failed(txn, from, attempt),
            Event::Recovered { committing } => self.recovered(committing),
            Event::Forgotten { txn, request_id } => self.forgotten(txn, &request_id),
            Event::Reported { from, mark, then } => {
                let mut out = self.store_reported(from, mark);
                out.extend(self.handle(*then, now));
                out
            }
        }
    }
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod breaker_tests;

#[cfg(test)]
mod admission_tests;

#[cfg(test)]
mod requests_tests;
