//! The participant's side of two-phase commit (presumed abort), as a pure state machine.
//!
//! Events go in ([`Event`]), commands come out ([`Command`]); the runtime (`node.rs`) does the hashing,
//! the forced writes and the replies, and feeds the results back as events. The engine is generic over
//! the prepared change `C` (a new password hash, a new history entry): it never looks inside.
//!
//! The rules it keeps (DESIGN §3):
//! - one transaction per user at a time, without waiting: a locked user makes `Prepare` vote no;
//! - a yes-vote is given only after the PREPARED record is forced, and is final: from then on the
//!   participant is in doubt and cannot decide alone; it asks the coordinator with backoff;
//! - `Commit` and `Abort` are idempotent; an `Abort` before its `Prepare` leaves a tombstone so the late
//!   `Prepare` votes no (no hanging prepare);
//! - the user's lock is held from `Prepare` until the outcome is applied, and a read of a locked user
//!   waits for the lock (up to `Config::read_wait_ms`, then it is refused), so readers never see a
//!   half-done change.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tpc_common::{Backoff, Fingerprint, TxnId, UserId};

/// A participant's vote. A yes-vote carries the prepared change, from which the runtime takes what the
/// coordinator needs (the password participant's vote carries the user's e-mail address).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Vote<C> {
    Yes(C),
    No(String),
}

/// The coordinator's answer to `QueryDecision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Committed,
    Aborted,
    Pending,
}

/// Why a request cannot be served in the transaction's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Another request for this transaction is being worked on; retry.
    InProgress,
    /// `Abort` or `Prepare` of a committed transaction.
    AlreadyCommitted,
    /// `Commit` of an aborted transaction: the coordinator broke the protocol.
    AlreadyAborted,
    /// `Commit` of a transaction that never voted yes.
    NotPrepared,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Event<C> {
    /// `Prepare` arrived at wall time `wall_ms`, with its payload's keyed digest (`None` where unknown).
    /// The wall clock, because it is compared with the time in the transaction id, which another
    /// process's wall clock wrote; every other time the engine is given is monotonic
    /// (`tpc_common::monotonic_ms`), so that a step of the wall clock moves no timer.
    PrepareRequested {
        txn: TxnId,
        user: UserId,
        wall_ms: u64,
        payload: Option<Fingerprint>,
    },
    /// The expensive checks finished: the change to prepare, or why to vote no.
    Validated {
        txn: TxnId,
        outcome: Result<C, String>,
    },
    /// The PREPARED record is on disk.
    PreparedForced { txn: TxnId, at: u64 },
    /// `Commit` arrived.
    CommitRequested { txn: TxnId },
    /// The change and the COMMITTED record are on disk.
    CommitApplied { txn: TxnId, at: u64 },
    /// `Abort` arrived.
    AbortRequested { txn: TxnId, at: u64 },
    /// The durable log after a restart: prepared (in-doubt) transactions, and committed ones still
    /// remembered, with when they committed (monotonic ms: `Now::mono_of_wall` of the time on record).
    Recovered {
        prepared: Vec<(TxnId, UserId, C)>,
        committed: Vec<(TxnId, u64)>,
    },
    /// The coordinator answered `QueryDecision`, or could not be asked (`Pending`: nothing learned).
    DecisionLearned {
        txn: TxnId,
        decision: Decision,
        at: u64,
    },
    /// A reader (numbered by the runtime) wants `user`'s committed data, at `at` (monotonic ms).
    ReadRequested { reader: u64, user: UserId, at: u64 },
    /// Time passed (monotonic ms): ask about in-doubt transactions, forget old tombstones, refuse
    /// reads that waited too long.
    Tick { now: u64 },
}

impl<C> Event<C> {
    /// The transaction the event is about, if one.
    fn txn(&self) -> Option<TxnId> {
        match self {
            Event::PrepareRequested { txn, .. }
            | Event::Validated { txn, .. }
            | Event::PreparedForced { txn, .. }
            | Event::CommitRequested { txn }
            | Event::CommitApplied { txn, .. }
            | Event::AbortRequested { txn, .. }
            | Event::DecisionLearned { txn, .. } => Some(*txn),
            Event::Recovered { .. } | Event::Tick { .. } | Event::ReadRequested { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Command<C> {
    /// Run the expensive checks for this transaction's operation (argon2), then report `Validated`.
    Validate { txn: TxnId },
    /// Write and force the PREPARED record, then report `PreparedForced`.
    ForcePrepared { txn: TxnId, user: UserId, change: C },
    /// Answer the `Prepare`.
    Vote { txn: TxnId, vote: Vote<C> },
    /// Apply the change, write COMMITTED, force both in one batch, then report `CommitApplied`.
    ApplyCommit { txn: TxnId, change: C },
    /// Delete the PREPARED record (not forced: a resurrected one is resolved as aborted).
    DropPrepared { txn: TxnId },
    /// Delete the remembered COMMITTED record.
    Forget { txn: TxnId },
    /// Answer `Commit` or `Abort` with success.
    Ack { txn: TxnId },
    /// Answer the request with an error.
    Refuse { txn: TxnId, refusal: Refusal },
    /// Ask the coordinator for the outcome, giving up after `Config::query_timeout_ms`, then report
    /// `DecisionLearned` (`Pending` if no answer came).
    QueryDecision { txn: TxnId },
    /// No transaction holds the reader's user: read the committed data and answer.
    Read { reader: u64 },
    /// The reader waited `Config::read_wait_ms` and the user is still locked (in doubt, most likely):
    /// answer `UNAVAILABLE`.
    RefuseRead { reader: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Config {
    /// How long after voting yes the participant starts asking the coordinator (ms). The coordinator
    /// normally sends the outcome well before.
    pub in_doubt_after_ms: u64,
    /// Between two `QueryDecision`s of one transaction.
    pub query_backoff: Backoff,
    /// How long a `QueryDecision` may take (ms). One transaction has at most one query out at a time:
    /// against a slow coordinator, a query every backoff period would pile up calls that all wait. A
    /// query that has not reported back by then is taken as lost and asked again.
    pub query_timeout_ms: u64,
    /// How long committed and aborted transactions are remembered (ms), to answer repeated or late
    /// messages correctly. Longer than `prepare_max_age_ms`, so an `Abort` that overtook its `Prepare`
    /// is remembered until that `Prepare` would be refused for its age anyway.
    pub tombstone_ms: u64,
    /// A `Prepare` of an unknown transaction created longer ago than this (ms; its UUIDv7 id carries
    /// the time) votes no: the coordinator gave up on it long since. This is what lets tombstones be
    /// forgotten after seconds instead of being kept for every transaction of the last minutes.
    pub prepare_max_age_ms: u64,
    /// How long a read of a locked user waits for the lock (ms). A user stays locked while its
    /// transaction is in doubt, for as long as the coordinator is unreachable.
    pub read_wait_ms: u64,
    /// A deliberate mistake, for the checker's tests (`tpc_common::PlantedBug`).
    #[cfg(feature = "planted-bugs")]
    pub planted: Option<tpc_common::PlantedBug>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            in_doubt_after_ms: 300,
            query_backoff: Backoff::new(
                std::time::Duration::from_millis(100),
                std::time::Duration::from_millis(500),
            ),
            query_timeout_ms: 2_000,
            tombstone_ms: 30_000,
            prepare_max_age_ms: 20_000,
            read_wait_ms: 3_000,
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }
}

/// A transaction in flight. Finished ones are only their [`Outcome`], in `Engine::finished`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum State<C> {
    Validating {
        user: UserId,
    },
    Forcing {
        user: UserId,
        change: C,
        abort_requested: bool,
    },
    Prepared {
        user: UserId,
        change: C,
        queries: u32,
        next_query_at: u64,
        /// A `QueryDecision` is out and counts as such until then (monotonic ms).
        asking_until: Option<u64>,
    },
    Committing {
        user: UserId,
    },
}

/// How a finished transaction ended: all its tombstone needs to answer a late or repeated message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Outcome {
    Committed,
    Aborted,
}

const ABORTED_REASON: &str = "transaction was aborted";
const TOO_OLD: &str = "transaction is too old to prepare";
const OTHER_PAYLOAD: &str = "another request was prepared under this transaction id";

/// Ordered maps, and `Hash`: the state is the same value however it was reached, so a model checker
/// can tell states apart and a simulation replays in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Engine<C> {
    config: Config,
    /// Transactions in flight.
    txns: BTreeMap<TxnId, State<C>>,
    /// Finished transactions (tombstones), remembered `tombstone_ms` to answer late and repeated
    /// messages. At full load they are tens of thousands (30 s of transactions), most of what the
    /// engine holds: so each is its outcome and its place in `forget`, ~60 bytes in all, where a
    /// `State` with a timer was ~190.
    finished: BTreeMap<TxnId, Outcome>,
    /// When each tombstone is forgotten, soonest first.
    forget: VecDeque<(u64, TxnId)>,
    locks: BTreeMap<UserId, TxnId>,
    /// The payload digest of each transaction until it is decided: a repeated `Prepare` must carry
    /// the same request. (Not kept across a restart: the digest is never written down.)
    payloads: BTreeMap<TxnId, Fingerprint>,
    /// When each in-doubt transaction next asks the coordinator. A tick looks only at what is due, not
    /// at every transaction. Entries whose transaction moved on are dropped when they come due.
    timers: BTreeSet<(u64, TxnId)>,
    /// Readers waiting for a user's lock, by user, oldest first.
    readers: BTreeMap<UserId, Vec<u64>>,
    /// When each waiting reader gives up.
    read_deadlines: BTreeSet<(u64, u64)>,
}

impl<C: Clone> Engine<C> {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            txns: BTreeMap::new(),
            finished: BTreeMap::new(),
            forget: VecDeque::new(),
            locks: BTreeMap::new(),
            payloads: BTreeMap::new(),
            timers: BTreeSet::new(),
            readers: BTreeMap::new(),
            read_deadlines: BTreeSet::new(),
        }
    }

    /// Whether a transaction holds the user's lock; readers wait while it does.
    pub fn is_locked(&self, user: &UserId) -> bool {
        self.locks.contains_key(user)
    }

    /// Transactions that voted yes and do not know the outcome yet, oldest first.
    pub fn in_doubt(&self) -> Vec<TxnId> {
        let mut txns: Vec<TxnId> = self
            .txns
            .iter()
            .filter(|(_, s)| matches!(s, State::Prepared { .. }))
            .map(|(txn, _)| *txn)
            .collect();
        txns.sort();
        txns
    }

    /// When the engine next needs a `Tick` (monotonic ms), if ever: an in-doubt query, a tombstone to
    /// forget, a reader to refuse. (It may be a timer whose transaction has moved on since; that tick
    /// does nothing.) A model checker ticks exactly then.
    pub fn next_due(&self) -> Option<u64> {
        let timer = self.timers.first().map(|(due, _)| *due);
        let forget = self.forget.front().map(|(due, _)| *due);
        let reader = self.read_deadlines.first().map(|(due, _)| *due);
        timer.into_iter().chain(forget).chain(reader).min()
    }

    /// How many users a transaction holds.
    pub fn locked_users(&self) -> usize {
        self.locks.len()
    }

    /// Releases `user` if `txn` holds it, and lets the readers waiting for it read. (Recovery never
    /// sees two PREPARED records of one user: the second one's forced write also flushes the first
    /// one's earlier deletion.)
    fn unlock(&mut self, user: &UserId, txn: TxnId) -> Vec<Command<C>> {
        if self.locks.get(user) != Some(&txn) {
            return Vec::new();
        }
        self.locks.remove(user);
        self.readers
            .remove(user)
            .unwrap_or_default()
            .into_iter()
            .map(|reader| Command::Read { reader })
            .collect()
    }

    fn read(&mut self, reader: u64, user: UserId, at: u64) -> Vec<Command<C>> {
        if !self.locks.contains_key(&user) {
            return vec![Command::Read { reader }];
        }
        self.readers.entry(user).or_default().push(reader);
        self.read_deadlines
            .insert((at.saturating_add(self.config.read_wait_ms), reader));
        Vec::new()
    }

    /// Readers whose wait ran out by `now`.
    fn refuse_late_readers(&mut self, now: u64) -> Vec<Command<C>> {
        let mut out = Vec::new();
        while let Some(&(due, reader)) = self.read_deadlines.first() {
            if due > now {
                break;
            }
            self.read_deadlines.pop_first();
            // Still waiting (not let through by a release since)?
            let mut found = false;
            self.readers.retain(|_, waiting| {
                if let Some(i) = waiting.iter().position(|r| *r == reader) {
                    waiting.remove(i);
                    found = true;
                }
                !waiting.is_empty()
            });
            if found {
                out.push(Command::RefuseRead { reader });
            }
        }
        out
    }

    pub fn handle(&mut self, event: Event<C>) -> Vec<Command<C>> {
        let txn = event.txn();
        let out = self.handle_event(event);
        // A payload matters until the transaction is decided.
        if let Some(txn) = txn
            && !matches!(
                self.txns.get(&txn),
                Some(State::Validating { .. } | State::Forcing { .. } | State::Prepared { .. })
            )
        {
            self.payloads.remove(&txn);
        }
        out
    }

    fn handle_event(&mut self, event: Event<C>) -> Vec<Command<C>> {
        match event {
            Event::PrepareRequested {
                txn,
                user,
                wall_ms,
                payload,
            } => self.prepare(txn, user, wall_ms, payload),
            Event::Validated { txn, outcome } => self.validated(txn, outcome),
            Event::PreparedForced { txn, at } => self.prepared_forced(txn, at),
            Event::CommitRequested { txn } => self.commit(txn),
            Event::CommitApplied { txn, at } => self.commit_applied(txn, at),
            Event::AbortRequested { txn, at } => self.abort(txn, at),
            Event::Recovered {
                prepared,
                committed,
            } => self.recovered(prepared, committed),
            Event::DecisionLearned { txn, decision, at } => match decision {
                Decision::Committed => self.commit(txn),
                Decision::Aborted => self.abort(txn, at),
                Decision::Pending => {
                    if let Some(State::Prepared { asking_until, .. }) = self.txns.get_mut(&txn) {
                        *asking_until = None;
                    }
                    Vec::new()
                }
            },
            Event::ReadRequested { reader, user, at } => self.read(reader, user, at),
            Event::Tick { now } => {
                let mut out = self.tick(now);
                out.extend(self.refuse_late_readers(now));
                out
            }
        }
    }

    fn prepare(
        &mut self,
        txn: TxnId,
        user: UserId,
        wall_ms: u64,
        payload: Option<Fingerprint>,
    ) -> Vec<Command<C>> {
        match self.finished.get(&txn) {
            Some(Outcome::Aborted) => return vec![vote_no(txn, ABORTED_REASON)],
            Some(Outcome::Committed) => return vec![refuse(txn, Refusal::AlreadyCommitted)],
            None => {}
        }
        match self.txns.get(&txn) {
            // The same transaction id with another payload is not a retry: no, and the prepared change
            // stays as it is.
            Some(State::Prepared { .. })
                if payload.is_some()
                    && self.payloads.get(&txn).is_some_and(|p| Some(*p) != payload) =>
            {
                vec![vote_no(txn, OTHER_PAYLOAD)]
            }
            Some(State::Prepared { change, .. }) => vec![Command::Vote {
                txn,
                vote: Vote::Yes(C::clone(change)),
            }],
            Some(State::Validating { .. } | State::Forcing { .. }) => {
                vec![refuse(txn, Refusal::InProgress)]
            }
            Some(State::Committing { .. }) => vec![refuse(txn, Refusal::AlreadyCommitted)],
            None if txn
                .created_ms()
                .saturating_add(self.config.prepare_max_age_ms)
                < wall_ms =>
            {
                vec![vote_no(txn, TOO_OLD)]
            }
            None if self.locks.contains_key(&user) => vec![vote_no(
                txn,
                "conflict: another transaction is changing this user",
            )],
            None => {
                self.locks.insert(user.clone(), txn);
                self.put(txn, State::Validating { user });
                if let Some(payload) = payload {
                    self.payloads.insert(txn, payload);
                }
                vec![Command::Validate { txn }]
            }
        }
    }

    fn validated(&mut self, txn: TxnId, outcome: Result<C, String>) -> Vec<Command<C>> {
        if self.finished.get(&txn) == Some(&Outcome::Aborted) {
            // Aborted while the checks ran: the lock is already released.
            return vec![vote_no(txn, ABORTED_REASON)];
        }
        match self.txns.get(&txn) {
            Some(State::Validating { user }) => {
                let user = user.clone();
                match outcome {
                    Ok(change) => {
                        self.put(
                            txn,
                            State::Forcing {
                                user: user.clone(),
                                change: change.clone(),
                                abort_requested: false,
                            },
                        );
                        #[cfg(feature = "planted-bugs")]
                        if self.config.planted
                            == Some(tpc_common::PlantedBug::VoteBeforePreparedForced)
                        {
                            return vec![
                                Command::Vote {
                                    txn,
                                    vote: Vote::Yes(change.clone()),
                                },
                                Command::ForcePrepared { txn, user, change },
                            ];
                        }
                        vec![Command::ForcePrepared { txn, user, change }]
                    }
                    Err(reason) => {
                        // A no-vote writes nothing and forgets the transaction.
                        self.txns.remove(&txn);
                        let mut out = vec![vote_no(txn, &reason)];
                        out.extend(self.unlock(&user, txn));
                        out
                    }
                }
            }
            _ => Vec::new(),
        }
    }

    fn prepared_forced(&mut self, txn: TxnId, at: u64) -> Vec<Command<C>> {
        let Some(State::Forcing {
            user,
            change,
            abort_requested,
        }) = self.txns.remove(&txn)
        else {
            return Vec::new();
        };
        if abort_requested {
            // Abort arrived while the record was being forced: undo it now, then let the user go.
            self.bury(txn, Outcome::Aborted, at);
            let mut out = vec![Command::DropPrepared { txn }];
            out.extend(self.unlock(&user, txn));
            out.push(vote_no(txn, ABORTED_REASON));
            return out;
        }
        self.put(
            txn,
            State::Prepared {
                user,
                change: change.clone(),
                queries: 0,
                next_query_at: at + self.config.in_doubt_after_ms,
                asking_until: None,
            },
        );
        vec![Command::Vote {
            txn,
            vote: Vote::Yes(change),
        }]
    }

    fn commit(&mut self, txn: TxnId) -> Vec<Command<C>> {
        match self.finished.get(&txn) {
            Some(Outcome::Committed) => return vec![Command::Ack { txn }],
            Some(Outcome::Aborted) => return vec![refuse(txn, Refusal::AlreadyAborted)],
            None => {}
        }
        match self.txns.get(&txn) {
            Some(State::Prepared { user, change, .. }) => {
                let change = C::clone(change);
                self.txns
                    .insert(txn, State::Committing { user: user.clone() });
                vec![Command::ApplyCommit { txn, change }]
            }
            Some(State::Committing { .. }) => vec![refuse(txn, Refusal::InProgress)],
            // Committed and already forgotten: the coordinator sends Commit only to participants that
            // voted yes, so an unknown transaction is one that committed long ago.
            None => vec![Command::Ack { txn }],
            Some(State::Validating { .. } | State::Forcing { .. }) => {
                vec![refuse(txn, Refusal::NotPrepared)]
            }
        }
    }

    fn commit_applied(&mut self, txn: TxnId, at: u64) -> Vec<Command<C>> {
        let Some(State::Committing { user }) = self.txns.get(&txn) else {
            return Vec::new();
        };
        let user = user.clone();
        self.bury(txn, Outcome::Committed, at);
        let mut out = self.unlock(&user, txn);
        out.push(Command::Ack { txn });
        out
    }

    fn abort(&mut self, txn: TxnId, at: u64) -> Vec<Command<C>> {
        match self.finished.get(&txn) {
            Some(Outcome::Aborted) => return vec![Command::Ack { txn }],
            Some(Outcome::Committed) => return vec![refuse(txn, Refusal::AlreadyCommitted)],
            None => {}
        }
        match self.txns.get_mut(&txn) {
            None => {
                // Abort before Prepare: remember it, so a late Prepare votes no.
                self.bury(txn, Outcome::Aborted, at);
                vec![Command::Ack { txn }]
            }
            Some(State::Forcing {
                abort_requested, ..
            }) => {
                // Undone when the write lands; acknowledged only then, when the lock is free: a
                // coordinator that heard "aborted" earlier would start the user's next change and
                // meet the lock still held.
                *abort_requested = true;
                vec![refuse(txn, Refusal::InProgress)]
            }
            Some(State::Validating { user }) => {
                let user = user.clone();
                self.bury(txn, Outcome::Aborted, at);
                let mut out = self.unlock(&user, txn);
                out.push(Command::Ack { txn });
                out
            }
            Some(State::Prepared { user, .. }) => {
                let user = user.clone();
                self.bury(txn, Outcome::Aborted, at);
                let mut out = vec![Command::DropPrepared { txn }];
                out.extend(self.unlock(&user, txn));
                out.push(Command::Ack { txn });
                out
            }
            Some(State::Committing { .. }) => vec![refuse(txn, Refusal::AlreadyCommitted)],
        }
    }

    fn recovered(
        &mut self,
        prepared: Vec<(TxnId, UserId, C)>,
        committed: Vec<(TxnId, u64)>,
    ) -> Vec<Command<C>> {
        for (txn, at) in committed {
            self.bury(txn, Outcome::Committed, at);
        }
        for (txn, user, change) in prepared {
            // In doubt since before the crash: ask at the first tick.
            self.locks.insert(user.clone(), txn);
            self.put(
                txn,
                State::Prepared {
                    user,
                    change,
                    queries: 0,
                    next_query_at: 0,
                    asking_until: None,
                },
            );
        }
        Vec::new()
    }

    /// Sets `txn`'s state, and its timer if the state has one.
    fn put(&mut self, txn: TxnId, state: State<C>) {
        if let Some(due) = self.due(&state) {
            self.timers.insert((due, txn));
        }
        self.txns.insert(txn, state);
    }

    /// When a transaction in `state` next needs the clock.
    fn due(&self, state: &State<C>) -> Option<u64> {
        match state {
            State::Prepared { next_query_at, .. } => Some(*next_query_at),
            _ => None,
        }
    }

    /// Finishes `txn` as `outcome` at `at`: no longer in flight, remembered until strictly older than
    /// `tombstone_ms`. A transaction finishes once: one already finished keeps its outcome and time.
    fn bury(&mut self, txn: TxnId, outcome: Outcome, at: u64) {
        self.txns.remove(&txn);
        if let std::collections::btree_map::Entry::Vacant(entry) = self.finished.entry(txn) {
            entry.insert(outcome);
            let due = at
                .saturating_add(self.config.tombstone_ms)
                .saturating_add(1);
            // Ordered by time, then id, so that the queue is the same however it was reached.
            // Nearly always at the back: transactions finish in the order of the runtime's clock.
            let place = self.forget.partition_point(|&queued| queued <= (due, txn));
            self.forget.insert(place, (due, txn));
        }
    }

    fn tick(&mut self, now: u64) -> Vec<Command<C>> {
        let backoff = self.config.query_backoff;
        let (mut queries, mut expired, mut again) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(&(due, txn)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            let current = self.txns.get(&txn).and_then(|state| self.due(state));
            if current != Some(due) {
                // The transaction moved on since this timer was set.
                continue;
            }
            if let Some(State::Prepared {
                queries: asked,
                next_query_at,
                asking_until,
                ..
            }) = self.txns.get_mut(&txn)
            {
                // The previous query is still out: wait for its answer, not pile up another.
                if asking_until.is_none_or(|until| until <= now) {
                    queries.push(txn);
                    *asking_until = Some(now + self.config.query_timeout_ms);
                    *asked = asked.saturating_add(1);
                }
                *next_query_at = now + backoff.delay(asked.saturating_sub(1)).as_millis() as u64;
                again.push((*next_query_at, txn));
            }
        }
        self.timers.extend(again);
        while let Some(&(due, txn)) = self.forget.front() {
            if due > now {
                break;
            }
            self.forget.pop_front();
            if let Some(outcome) = self.finished.remove(&txn) {
                expired.push((txn, outcome == Outcome::Committed));
            }
        }
        // A queue never shrinks by itself: after a peak of load it would keep the peak's memory.
        if self.forget.capacity() > 1024 && self.forget.len() < self.forget.capacity() / 4 {
            self.forget.shrink_to(self.forget.len() * 2);
        }
        // Sorted, so the order of commands does not depend on the hash map's.
        queries.sort();
        expired.sort();
        let mut out: Vec<Command<C>> = queries
            .into_iter()
            .map(|txn| Command::QueryDecision { txn })
            .collect();
        for (txn, was_committed) in expired {
            if was_committed {
                out.push(Command::Forget { txn });
            }
        }
        out
    }
}

fn vote_no<C>(txn: TxnId, reason: &str) -> Command<C> {
    Command::Vote {
        txn,
        vote: Vote::No(reason.to_owned()),
    }
}

fn refuse<C>(txn: TxnId, refusal: Refusal) -> Command<C> {
    Command::Refuse { txn, refusal }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
