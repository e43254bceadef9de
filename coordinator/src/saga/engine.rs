//! The saga orchestrator, as a pure state machine: events in, commands out, like the 2PC engine.
//!
//! A saga runs the change as local transactions, one step after the other: the password participant
//! applies the new hash (in effect at once), then the history participant records it. If a step is
//! refused or its outcome is unknown, the steps that may have applied are compensated (all at once: each undoes its own participant's change),
//! and the client hears ABORTED; the e-mail is queued only when every step applied (DESIGN §5).
//!
//! The rules it keeps:
//! - the saga is logged (forced) before its first step, so a restarted orchestrator knows it began;
//! - a restarted orchestrator compensates every saga it finds unfinished: it cannot redo a step it did
//!   not finish, because the new password is never written down (the participants' barrier makes the
//!   compensation of a step that never applied, or whose `Apply` is still on its way, safe);
//! - a compensation is resent with capped backoff until acknowledged;
//! - one saga per user at a time: a second change of the user waits for the first to finish, as in
//!   2PC, so a compensation never undoes a newer change;
//! - request ids as in 2PC: a retry joins the running saga or gets the committed outcome; a request id
//!   reused for another request is refused.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use tpc_common::{
    Backoff, Email, Fingerprint, Fingerprinter, Operation, OperationKind, TxnId, UserId,
};

use crate::engine::{AbortNote, CommitRecord, Outcome, Participant, Refusal};
use crate::request::RequestKey;

/// The steps, in the order they run (compensations are sent together, the last step's first).
pub const STEPS: [Participant; 2] = [Participant::Password, Participant::History];

/// What came back from a step's `Apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepResult {
    /// In effect; the password step's detail is the user's e-mail address.
    Applied {
        detail: String,
    },
    Refused {
        reason: String,
    },
    /// No answer (timeout, unreachable): it may have applied.
    Unknown {
        error: String,
    },
}

/// A saga the log shows unfinished after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    pub txn: TxnId,
    pub request_id: String,
    pub kind: OperationKind,
    pub user: UserId,
    pub started_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Begin {
        txn: TxnId,
        request_id: String,
        op: Operation,
    },
    /// The saga's start is on disk.
    StartForced {
        txn: TxnId,
    },
    StepDone {
        txn: TxnId,
        step: Participant,
        result: StepResult,
    },
    /// The completion and its e-mail are on disk.
    CompletedForced {
        txn: TxnId,
    },
    Compensated {
        txn: TxnId,
        step: Participant,
    },
    CompensateFailed {
        txn: TxnId,
        step: Participant,
        attempt: u32,
    },
    /// The log after a restart: sagas to compensate, and the request ids of completed ones.
    Recovered {
        unfinished: Vec<Unfinished>,
        completed: Vec<(String, TxnId, OperationKind, UserId)>,
    },
    /// The log collected a finished saga.
    Forgotten {
        txn: TxnId,
        request_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Write and force the saga's start, then report `StartForced`.
    ForceStart {
        txn: TxnId,
        request_id: String,
        kind: OperationKind,
        user: UserId,
        started_at: u64,
    },
    /// Send `Apply` to a step, then report `StepDone`.
    SendApply {
        txn: TxnId,
        step: Participant,
        op: Operation,
    },
    /// Write the completion and the e-mail in one forced batch, hand the e-mail to the outbox, report
    /// `CompletedForced`.
    ForceCompleted {
        record: CommitRecord,
    },
    /// Note (unforced) that the saga is being compensated and why: a crash before it is compensated
    /// anyway, as every unfinished saga is.
    LogCompensating {
        note: AbortNote,
    },
    /// Send `Compensate` to a step after `after`, then report `Compensated` or `CompensateFailed`.
    SendCompensate {
        txn: TxnId,
        step: Participant,
        user: UserId,
        after: Duration,
        attempt: u32,
    },
    /// Every compensation acknowledged: note the saga aborted (unforced).
    LogCompensated {
        txn: TxnId,
    },
    /// The first step refused: nothing to compensate; note the saga aborted (unforced).
    LogAborted {
        note: AbortNote,
    },
    Reply {
        clients: Vec<TxnId>,
        outcome: Outcome,
    },
    Reject {
        client: TxnId,
        refusal: Refusal,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub compensate_backoff: Backoff,
    /// Most sagas running or queued at once; beyond, a request is refused as overloaded.
    pub max_active: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            compensate_backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
            max_active: 4096,
        }
    }
}

/// How long an overloaded client is asked to wait.
const RETRY_AFTER: Duration = Duration::from_millis(100);

#[derive(Debug)]
enum Phase {
    /// Waiting for the user's earlier saga.
    Queued {
        op: Operation,
    },
    Starting {
        op: Operation,
    },
    Applying {
        step: Participant,
        op: Operation,
    },
    Completing,
    Compensating {
        pending: BTreeSet<Participant>,
    },
}

#[derive(Debug)]
struct Saga {
    request_id: String,
    kind: OperationKind,
    user: UserId,
    /// The request's payload digest (`None` after a restart: it is never written down).
    fingerprint: Option<Fingerprint>,
    email: Option<Email>,
    started_at: u64,
    clients: Vec<TxnId>,
    phase: Phase,
}

#[derive(Debug)]
pub struct Engine {
    config: Config,
    sagas: HashMap<TxnId, Saga>,
    /// Sagas of each user in arrival order; the first one runs.
    by_user: HashMap<UserId, VecDeque<TxnId>>,
    running: HashMap<String, TxnId>,
    completed: HashMap<String, (TxnId, RequestKey)>,
    fingerprints: Fingerprinter,
}

impl Engine {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            sagas: HashMap::new(),
            by_user: HashMap::new(),
            running: HashMap::new(),
            completed: HashMap::new(),
            fingerprints: Fingerprinter::new(),
        }
    }

    /// Whether a saga is in flight or was completed, for `QueryDecision` and listings.
    pub fn is_running(&self, txn: TxnId) -> bool {
        self.sagas.contains_key(&txn)
    }

    pub fn handle(&mut self, event: Event, now: u64) -> Vec<Command> {
        match event {
            Event::Begin {
                txn,
                request_id,
                op,
            } => self.begin(txn, request_id, op, now),
            Event::StartForced { txn } => self.start_forced(txn),
            Event::StepDone { txn, step, result } => self.step_done(txn, step, result, now),
            Event::CompletedForced { txn } => self.completed(txn),
            Event::Compensated { txn, step } => self.compensated(txn, step),
            Event::CompensateFailed { txn, step, attempt } => {
                self.compensate_failed(txn, step, attempt)
            }
            Event::Recovered {
                unfinished,
                completed,
            } => self.recovered(unfinished, completed),
            Event::Forgotten { txn, request_id } => {
                if self.completed.get(&request_id).is_some_and(|c| c.0 == txn) {
                    self.completed.remove(&request_id);
                }
                Vec::new()
            }
        }
    }

    fn begin(&mut self, txn: TxnId, request_id: String, op: Operation, now: u64) -> Vec<Command> {
        let (kind, user) = (op.kind(), op.user().clone());
        let this = RequestKey {
            kind,
            user: user.clone(),
            fingerprint: Some(self.fingerprints.of(&op)),
        };
        if let Some((done, first)) = self.completed.get(&request_id) {
            if !first.same_request(&this) {
                return vec![reused(txn, request_id)];
            }
            let outcome = Outcome {
                txn: *done,
                request_id,
                committed: true,
                reason: String::new(),
            };
            return vec![Command::Reply {
                clients: vec![txn],
                outcome,
            }];
        }
        if let Some(running) = self.running.get(&request_id).copied()
            && let Some(saga) = self.sagas.get_mut(&running)
        {
            let first = RequestKey {
                kind: saga.kind,
                user: saga.user.clone(),
                fingerprint: saga.fingerprint,
            };
            if !first.same_request(&this) {
                return vec![reused(txn, request_id)];
            }
            saga.clients.push(txn);
            return Vec::new();
        }
        if self.sagas.len() >= self.config.max_active {
            return vec![Command::Reject {
                client: txn,
                refusal: Refusal::Overloaded {
                    retry_after: RETRY_AFTER,
                },
            }];
        }
        let email = match &op {
            Operation::Register { email, .. } => Some(email.clone()),
            Operation::Update { .. } => None,
        };
        let queue = self.by_user.entry(user.clone()).or_default();
        queue.push_back(txn);
        let first = queue.len() == 1;
        self.running.insert(request_id.clone(), txn);
        self.sagas.insert(
            txn,
            Saga {
                request_id,
                kind,
                user,
                fingerprint: this.fingerprint,
                email,
                started_at: now,
                clients: vec![txn],
                phase: Phase::Queued { op },
            },
        );
        if first { self.start(txn) } else { Vec::new() }
    }

    fn start(&mut self, txn: TxnId) -> Vec<Command> {
        let Some(saga) = self.sagas.get_mut(&txn) else {
            return Vec::new();
        };
        let Phase::Queued { op } = std::mem::replace(&mut saga.phase, Phase::Completing) else {
            return Vec::new();
        };
        saga.phase = Phase::Starting { op };
        vec![Command::ForceStart {
            txn,
            request_id: saga.request_id.clone(),
            kind: saga.kind,
            user: saga.user.clone(),
            started_at: saga.started_at,
        }]
    }

    fn start_forced(&mut self, txn: TxnId) -> Vec<Command> {
        let Some(saga) = self.sagas.get_mut(&txn) else {
            return Vec::new();
        };
        let Phase::Starting { op } = std::mem::replace(&mut saga.phase, Phase::Completing) else {
            return Vec::new();
        };
        let step = STEPS[0];
        saga.phase = Phase::Applying {
            step,
            op: op.clone(),
        };
        vec![Command::SendApply { txn, step, op }]
    }

    fn step_done(
        &mut self,
        txn: TxnId,
        step: Participant,
        result: StepResult,
        now: u64,
    ) -> Vec<Command> {
        let Some(saga) = self.sagas.get_mut(&txn) else {
            return Vec::new();
        };
        let Phase::Applying { step: current, .. } = &saga.phase else {
            return Vec::new();
        };
        if *current != step {
            return Vec::new();
        }
        let index = STEPS.iter().position(|s| *s == step).unwrap_or(0);
        let (reason, may_have_applied) = match result {
            StepResult::Applied { detail } => {
                if step == Participant::Password && saga.email.is_none() {
                    saga.email = Email::parse(&detail).ok();
                }
                if let Some(&next) = STEPS.get(index + 1) {
                    let Phase::Applying { op, .. } =
                        std::mem::replace(&mut saga.phase, Phase::Completing)
                    else {
                        return Vec::new();
                    };
                    saga.phase = Phase::Applying {
                        step: next,
                        op: op.clone(),
                    };
                    return vec![Command::SendApply {
                        txn,
                        step: next,
                        op,
                    }];
                }
                let Some(email) = saga.email.clone() else {
                    // The password step applied but named no address: undo, as for a failed step.
                    return self.compensate(
                        txn,
                        "password participant named no e-mail address".into(),
                        index + 1,
                        now,
                    );
                };
                saga.phase = Phase::Completing;
                return vec![Command::ForceCompleted {
                    record: CommitRecord {
                        txn,
                        request_id: saga.request_id.clone(),
                        kind: saga.kind,
                        user: saga.user.clone(),
                        email,
                        started_at: saga.started_at,
                        decided_at: now,
                    },
                }];
            }
            StepResult::Refused { reason } => (reason, index),
            StepResult::Unknown { error } => (
                format!("{} participant unavailable: {error}", step.name()),
                index + 1,
            ),
        };
        self.compensate(txn, reason, may_have_applied, now)
    }

    /// Compensates the first `steps` steps (those that may have applied), all at once, and tells
    /// the clients the saga aborted.
    fn compensate(&mut self, txn: TxnId, reason: String, steps: usize, now: u64) -> Vec<Command> {
        let Some(saga) = self.sagas.get_mut(&txn) else {
            return Vec::new();
        };
        let pending: BTreeSet<Participant> = STEPS[..steps].iter().copied().collect();
        saga.phase = Phase::Compensating {
            pending: pending.clone(),
        };
        let note = AbortNote {
            txn,
            request_id: saga.request_id.clone(),
            kind: saga.kind,
            user: saga.user.clone(),
            reason: reason.clone(),
            started_at: saga.started_at,
            decided_at: now,
        };
        let mut out = vec![if pending.is_empty() {
            Command::LogAborted { note }
        } else {
            Command::LogCompensating { note }
        }];
        out.extend(
            STEPS[..steps]
                .iter()
                .rev()
                .map(|&step| Command::SendCompensate {
                    txn,
                    step,
                    user: saga.user.clone(),
                    after: Duration::ZERO,
                    attempt: 0,
                }),
        );
        out.push(Command::Reply {
            clients: std::mem::take(&mut saga.clients),
            outcome: Outcome {
                txn,
                request_id: saga.request_id.clone(),
                committed: false,
                reason,
            },
        });
        self.running.remove(&saga.request_id);
        if pending.is_empty() {
            out.extend(self.finish(txn));
        }
        out
    }

    fn completed(&mut self, txn: TxnId) -> Vec<Command> {
        let Some(saga) = self.sagas.get_mut(&txn) else {
            return Vec::new();
        };
        if !matches!(saga.phase, Phase::Completing) {
            return Vec::new();
        }
        let outcome = Outcome {
            txn,
            request_id: saga.request_id.clone(),
            committed: true,
            reason: String::new(),
        };
        let mut out = vec![Command::Reply {
            clients: std::mem::take(&mut saga.clients),
            outcome,
        }];
        self.running.remove(&saga.request_id);
        let first = RequestKey {
            kind: saga.kind,
            user: saga.user.clone(),
            fingerprint: saga.fingerprint,
        };
        self.completed.insert(saga.request_id.clone(), (txn, first));
        out.extend(self.finish(txn));
        out
    }

    fn compensated(&mut self, txn: TxnId, step: Participant) -> Vec<Command> {
        let Some(Saga {
            phase: Phase::Compensating { pending },
            ..
        }) = self.sagas.get_mut(&txn)
        else {
            return Vec::new();
        };
        if !pending.remove(&step) || !pending.is_empty() {
            return Vec::new();
        }
        let mut out = vec![Command::LogCompensated { txn }];
        out.extend(self.finish(txn));
        out
    }

    fn compensate_failed(&mut self, txn: TxnId, step: Participant, attempt: u32) -> Vec<Command> {
        match self.sagas.get(&txn) {
            Some(Saga {
                phase: Phase::Compensating { pending },
                user,
                ..
            }) if pending.contains(&step) => vec![Command::SendCompensate {
                txn,
                step,
                user: user.clone(),
                after: self.config.compensate_backoff.delay(attempt),
                attempt: attempt + 1,
            }],
            _ => Vec::new(),
        }
    }

    /// The saga is over: forget it and start the user's next one.
    fn finish(&mut self, txn: TxnId) -> Vec<Command> {
        let Some(saga) = self.sagas.remove(&txn) else {
            return Vec::new();
        };
        let Some(queue) = self.by_user.get_mut(&saga.user) else {
            return Vec::new();
        };
        queue.retain(|t| *t != txn);
        match queue.front().copied() {
            Some(next) => self.start(next),
            None => {
                self.by_user.remove(&saga.user);
                Vec::new()
            }
        }
    }

    fn recovered(
        &mut self,
        unfinished: Vec<Unfinished>,
        completed: Vec<(String, TxnId, OperationKind, UserId)>,
    ) -> Vec<Command> {
        for (request_id, txn, kind, user) in completed {
            let first = RequestKey {
                kind,
                user,
                fingerprint: None,
            };
            self.completed.insert(request_id, (txn, first));
        }
        let mut out = Vec::new();
        for u in unfinished {
            self.by_user
                .entry(u.user.clone())
                .or_default()
                .push_back(u.txn);
            self.sagas.insert(
                u.txn,
                Saga {
                    request_id: u.request_id,
                    kind: u.kind,
                    user: u.user,
                    fingerprint: None,
                    email: None,
                    started_at: u.started_at,
                    clients: Vec::new(),
                    phase: Phase::Completing,
                },
            );
            // The plaintext is gone with the crash: the saga cannot go forward, only back.
            out.extend(self.compensate(u.txn, RESTARTED.into(), STEPS.len(), u.started_at));
        }
        out
    }
}

/// Why a saga found unfinished after a restart was compensated.
pub const RESTARTED: &str = "the orchestrator restarted before the saga finished";

fn reused(client: TxnId, request_id: String) -> Command {
    Command::Reject {
        client,
        refusal: Refusal::RequestReused(request_id),
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
