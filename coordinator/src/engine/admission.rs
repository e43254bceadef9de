//! Admitting requests: request-id deduplication, one change per user in flight, and the admission queue
//! in front of preparing (its limit is `limit.rs`).

use std::collections::BTreeMap;

use tpc_common::{Now, Operation, TxnId, UserId};

use super::requests::{LoggedRequest, Lookup};
use super::{
    AbortNote, Breaker, CONFLICT, Command, Engine, Outcome, Participant, Phase, Refusal,
    RequestKey, StoreMark, Turn, Txn, Verdict,
};

/// Where a user's transactions stand at this coordinator.
enum UserState {
    /// Nothing in flight.
    Free,
    /// A transaction is in flight; `queued` more wait behind it, each for the one before.
    Busy { queued: usize },
}

/// How many changes of one user may wait behind the one in flight; one more conflicts at once.
///
/// Waiting, not conflicting, is what keeps a password guess from spoiling the owner's change: a wrong
/// guess holds the user for one argon2 verification, and the owner's change, arriving meanwhile, runs
/// right after it instead of aborting with `conflict`. The bound keeps the memory of the waiting
/// requests (with their passwords) small whatever is sent; each waits at most one prepare deadline.
pub(super) const MAX_QUEUED_PER_USER: usize = 8;

/// Why a new transaction waits that long for the user's previous one, and gives up.
pub(super) const STILL_FINISHING: &str = "an earlier change of this user is still finishing";

impl Engine {
    pub(super) fn begin(&mut self, txn: TxnId, request_id: String, op: Operation) -> Vec<Command> {
        let key = RequestKey {
            kind: op.kind(),
            user: op.user().clone(),
            fingerprint: Some(self.fingerprints.of(&op)),
        };
        if let Some(out) = self.known(txn, &request_id, &key) {
            return out;
        }
        // Not running, and not among the commits remembered: the log may have committed it earlier.
        self.requests.look_up(txn, request_id.clone(), op, key);
        vec![Command::LookUp {
            client: txn,
            request_id,
        }]
    }

    /// The log answered the lookup of client `txn`'s request.
    pub(super) fn looked_up(
        &mut self,
        txn: TxnId,
        logged: Result<Option<LoggedRequest>, String>,
        now: Now,
    ) -> Vec<Command> {
        let Some(Lookup {
            request_id,
            op,
            key,
            ..
        }) = self.requests.answered(txn)
        else {
            return Vec::new();
        };
        // Started or committed while the log was read (by another request with this id).
        let out = match (self.known(txn, &request_id, &key), logged) {
            (Some(out), _) => out,
            (None, Err(reason)) => vec![Command::Reject {
                client: txn,
                refusal: Refusal::Internal(format!("the log could not be read: {reason}")),
            }],
            (None, Ok(Some(first))) if !first.key().same_request(&key) => {
                vec![reused(txn, &request_id)]
            }
            (None, Ok(Some(first))) => vec![committed(txn, first.txn, request_id)],
            (None, Ok(None)) => self.start(txn, request_id, op, key, now),
        };
        self.requests.forget_old();
        out
    }

    /// What a request whose id is running or remembered as committed gets: `None` if it is neither.
    fn known(&mut self, txn: TxnId, request_id: &str, key: &RequestKey) -> Option<Vec<Command>> {
        if let Some((first, recorded)) = self.requests.committed(request_id) {
            if !recorded.same_request(key) {
                return Some(vec![reused(txn, request_id)]);
            }
            return Some(vec![committed(txn, first, request_id.to_owned())]);
        }
        let first = self.running.get(request_id).copied()?;
        let Some(running) = self.txns.get_mut(&first) else {
            // Cannot happen (running and txns change together); never leave a client hanging.
            return Some(vec![Command::Reject {
                client: txn,
                refusal: Refusal::Internal("request in flight but unknown".into()),
            }]);
        };
        let first_key = RequestKey {
            kind: running.kind,
            user: running.user.clone(),
            fingerprint: running.fingerprint,
        };
        if !first_key.same_request(key) {
            return Some(vec![reused(txn, request_id)]);
        }
        // The client retried while the first attempt runs: it gets that attempt's outcome.
        running.clients.push(txn);
        Some(Vec::new())
    }

    /// Starts a transaction for a request the engine and the log do not know.
    fn start(
        &mut self,
        txn: TxnId,
        request_id: String,
        op: Operation,
        key: RequestKey,
        now: Now,
    ) -> Vec<Command> {
        // A participant known to be unreachable: refused at once, nothing started (one change at a
        // time goes through to find out whether it is back).
        if let Some((participant, retry_after)) = Participant::ALL.into_iter().find_map(|p| {
            self.breakers[&p]
                .refuses(now.mono)
                .map(|retry_after| (p, retry_after))
        }) {
            return vec![Command::Reject {
                client: txn,
                refusal: Refusal::Unavailable {
                    participant,
                    retry_after,
                },
            }];
        }
        // Let through: where a breaker is open, this change is its probe.
        for breaker in self.breakers.values_mut() {
            breaker.admit(txn, now.mono);
        }

        let lost = Participant::ALL
            .into_iter()
            .find_map(|p| self.stores.lost(p))
            .map(str::to_owned);
        let phase = match self.user_state(&key.user) {
            // Too many changes of this user already wait.
            UserState::Busy { queued } if queued >= MAX_QUEUED_PER_USER => {
                return unstarted(txn, request_id, key, CONFLICT.into(), now);
            }
            // The change before it is stuck on a store that lost acknowledged changes (it waits for
            // an operator): waiting behind it is pointless, and the loss is the reason to give.
            UserState::Busy { .. } if lost.is_some() => {
                return unstarted(txn, request_id, key, lost.unwrap_or_default(), now);
            }
            // The operation (with its passwords) is kept in memory only while it waits.
            UserState::Busy { .. } => Phase::Queued { op: op.clone() },
            UserState::Free if self.has_turn() => preparing(&op),
            UserState::Free => match self.limit.admit(self.waiting.len()) {
                Ok(()) => Phase::Admitting { op: op.clone() },
                Err(retry_after) => {
                    return vec![Command::Reject {
                        client: txn,
                        refusal: Refusal::Overloaded { retry_after },
                    }];
                }
            },
        };
        let mut out = Vec::new();
        match phase {
            Phase::Preparing { .. } => {
                self.preparing += 1;
                out.extend(prepare(txn, &op));
            }
            Phase::Admitting { .. } => self.waiting.push_back(txn),
            _ => {}
        }
        self.running.insert(request_id.clone(), txn);
        self.insert_txn(
            txn,
            Txn {
                request_id,
                kind: key.kind,
                user: key.user,
                register_email: match &op {
                    Operation::Register { email, .. } => Some(email.clone()),
                    Operation::Update { .. } => None,
                },
                started_at: now.wall,
                clients: vec![txn],
                round: 0,
                preparing_since: now.mono,
                deadline_at: now.mono + self.config.prepare_deadline.as_millis() as u64,
                fingerprint: key.fingerprint,
                phase,
            },
        );
        // The wait in the admission queue counts against the deadline; the wait behind the user's
        // previous change does not (a queued change gets a fresh deadline when it starts).
        out.push(Command::StartDeadline {
            txn,
            after: self.config.prepare_deadline,
            round: 0,
        });
        out
    }

    /// `from` said how far its store goes.
    pub(super) fn store_reported(&mut self, from: Participant, mark: StoreMark) -> Vec<Command> {
        match self.stores.report(from, mark) {
            Verdict::Same => Vec::new(),
            Verdict::Advanced { id, seq } => vec![Command::SaveStoreMark {
                participant: from,
                id,
                seq,
            }],
            Verdict::Lost(reason) => vec![Command::StoreVerdict {
                participant: from,
                lost: Some(reason),
            }],
            Verdict::Accepted { id, seq } => vec![
                Command::StoreVerdict {
                    participant: from,
                    lost: None,
                },
                Command::SaveStoreMark {
                    participant: from,
                    id,
                    seq,
                },
            ],
        }
    }

    /// `from` answered a call: its breaker closes if it was open.
    pub(super) fn answered(&mut self, from: Participant) -> Vec<Command> {
        match self.breakers.get_mut(&from).and_then(Breaker::answered) {
            Some(Turn::Closed) => vec![Command::BreakerTurned {
                participant: from,
                opened: false,
            }],
            _ => Vec::new(),
        }
    }

    /// A prepare of `txn` could not reach `from`.
    pub(super) fn unreachable(&mut self, txn: TxnId, from: Participant, now: Now) -> Vec<Command> {
        match self
            .breakers
            .get_mut(&from)
            .and_then(|b| b.failed(txn, now.mono))
        {
            Some(Turn::Opened) => vec![Command::BreakerTurned {
                participant: from,
                opened: true,
            }],
            _ => Vec::new(),
        }
    }

    /// Whether a new transaction may start preparing now: under the limit, and nobody queued before it.
    fn has_turn(&self) -> bool {
        self.waiting.is_empty() && self.preparing < self.limit.limit()
    }

    fn user_state(&self, user: &UserId) -> UserState {
        let mut state = UserState::Free;
        for (_, t) in self.txns_of(user) {
            let queued = match state {
                UserState::Free => 0,
                UserState::Busy { queued } => queued,
            };
            let more = usize::from(matches!(t.phase, Phase::Queued { .. }));
            state = UserState::Busy {
                queued: queued + more,
            };
        }
        state
    }

    /// Starts the oldest queued transaction of `user` once nothing else of that user is in flight.
    pub(super) fn start_next(&mut self, user: &UserId, now: Now) -> Vec<Command> {
        let mut next = None;
        for (id, t) in self.txns_of(user) {
            if !matches!(t.phase, Phase::Queued { .. }) {
                return Vec::new();
            }
            next = next.or(Some(id));
        }
        let Some(next) = next else {
            return Vec::new();
        };
        let has_turn = self.has_turn();
        let Some(t) = self.txns.get_mut(&next) else {
            return Vec::new();
        };
        let Phase::Queued { op } = &t.phase else {
            return Vec::new();
        };
        // Its wait behind the user's previous change is over: it gets a full deadline of its own.
        t.round += 1;
        t.deadline_at = now.mono + self.config.prepare_deadline.as_millis() as u64;
        let deadline = Command::StartDeadline {
            txn: next,
            after: self.config.prepare_deadline,
            round: t.round,
        };
        if !has_turn {
            // It already waited for its user; it is not refused now, but goes first in line.
            t.phase = Phase::Admitting { op: op.clone() };
            self.waiting.push_front(next);
            return vec![deadline];
        }
        let mut out: Vec<Command> = prepare(next, op).collect();
        out.push(deadline);
        t.preparing_since = now.mono;
        t.phase = preparing(op);
        self.preparing += 1;
        out
    }

    /// A transaction stopped preparing (decided, or gave up): measure how long it took, and let the
    /// admission queue move.
    pub(super) fn prepare_finished(&mut self, started: u64, now: Now) -> Vec<Command> {
        self.preparing = self.preparing.saturating_sub(1);
        self.limit.finished(started, now.mono);
        let mut out = Vec::new();
        while self.preparing < self.limit.limit() {
            let Some(next) = self.waiting.pop_front() else {
                break;
            };
            let Some(t) = self.txns.get(&next) else {
                continue;
            };
            if !matches!(t.phase, Phase::Admitting { .. }) {
                continue;
            }
            if !self.limit.fits(t.deadline_at.saturating_sub(now.mono)) {
                // Its turn came too late to finish in time: refused, not started to fail.
                out.extend(self.refuse_overloaded(next));
                continue;
            }
            let Some(t) = self.txns.get_mut(&next) else {
                continue;
            };
            let Phase::Admitting { op } = &t.phase else {
                continue;
            };
            out.extend(prepare(next, op));
            t.preparing_since = now.mono;
            t.phase = preparing(op);
            self.preparing += 1;
        }
        out
    }

    /// How long a refused client should wait before retrying, at the current rate.
    pub(super) fn retry_after(&self) -> std::time::Duration {
        self.limit
            .admit(self.waiting.len())
            .err()
            .unwrap_or(std::time::Duration::from_millis(1))
    }
}

/// The answer to a retry of a committed request: the first outcome.
fn committed(client: TxnId, first: TxnId, request_id: String) -> Command {
    Command::Reply {
        clients: vec![client],
        outcome: Outcome {
            txn: first,
            request_id,
            committed: true,
            reason: String::new(),
        },
    }
}

fn reused(client: TxnId, request_id: &str) -> Command {
    Command::Reject {
        client,
        refusal: Refusal::RequestReused(request_id.to_owned()),
    }
}

/// The first `Prepare`s of a transaction. A registration goes to both participants at once. An update
/// goes to the password participant alone: the history participant is asked only once the current
/// password is verified, so a wrong guess costs one argon2 verification, takes no lock at the history
/// participant, and is answered as fast for an unknown user as for a known one.
fn prepare(txn: TxnId, op: &Operation) -> impl Iterator<Item = Command> + '_ {
    let to: &[Participant] = match op {
        Operation::Register { .. } => &Participant::ALL,
        Operation::Update { .. } => &[Participant::Password],
    };
    to.iter().map(move |&to| Command::SendPrepare {
        txn,
        to,
        op: op.clone(),
    })
}

/// The phase that goes with [`prepare`]: no vote yet, and an update's operation kept for the history
/// participant.
fn preparing(op: &Operation) -> Phase {
    Phase::Preparing {
        votes: BTreeMap::new(),
        history_next: match op {
            Operation::Register { .. } => None,
            Operation::Update { .. } => Some(op.clone()),
        },
    }
}

/// A change refused before anything was sent: nothing to abort, so it is noted and answered.
fn unstarted(
    txn: TxnId,
    request_id: String,
    key: RequestKey,
    reason: String,
    now: Now,
) -> Vec<Command> {
    let note = AbortNote {
        txn,
        request_id: request_id.clone(),
        kind: key.kind,
        user: key.user,
        reason: reason.clone(),
        started_at: now.wall,
        decided_at: now.wall,
    };
    vec![
        Command::LogAbort { note },
        Command::Reply {
            clients: vec![txn],
            outcome: Outcome {
                txn,
                request_id,
                committed: false,
                reason,
            },
        },
    ]
}
