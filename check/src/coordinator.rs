//! The coordinator actor: the production coordinator engine, a log that keeps only what was forced
//! across a crash, the e-mail outbox, and a runtime that carries out the engine's commands the moment
//! they come out (a reply is sent when the engine says `Reply`, so an engine that replies too early is
//! caught).

use std::collections::{BTreeMap, BTreeSet};

use tpc_common::{Fingerprinter, TxnId};
use tpc_coordinator::engine::{
    Command, CommitRecord, Decision, Engine, Event, LoggedRequest, Participant, Vote,
};

use crate::network::{Answer, Call, Decided, Msg, Node, Told};
use crate::setup::Setup;
use crate::world::World;

/// A COMMIT record in the log, with its outbox entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub record: CommitRecord,
    pub ended: bool,
    pub sent: bool,
}

/// A write not forced yet: lost in a crash.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Write {
    /// The COMMIT record and its e-mail, in one batch.
    Commit(CommitRecord),
    End(TxnId),
    Sent(TxnId),
}

fn apply(log: &mut BTreeMap<TxnId, Entry>, write: &Write) {
    match write {
        Write::Commit(record) => {
            log.insert(
                record.txn,
                Entry {
                    record: record.clone(),
                    ended: false,
                    sent: false,
                },
            );
        }
        Write::End(txn) => {
            if let Some(e) = log.get_mut(txn) {
                e.ended = true;
            }
        }
        Write::Sent(txn) => {
            if let Some(e) = log.get_mut(txn) {
                e.sent = true;
            }
        }
    }
}

/// A call of ours out to a participant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Outgoing {
    Prepare {
        txn: TxnId,
        to: Participant,
        change: u8,
    },
    Commit {
        txn: TxnId,
        to: Participant,
        attempt: u32,
    },
    Abort {
        txn: TxnId,
        to: Participant,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CoordinatorNode {
    pub up: bool,
    pub engine: Engine,
    pub log: BTreeMap<TxnId, Entry>,
    pub unforced: Vec<Write>,
    forcing: Vec<TxnId>,
    /// Prepare deadlines: (due, transaction, round).
    pub timers: BTreeSet<(u64, TxnId, u32)>,
    calls: BTreeMap<Call, Outgoing>,
    /// Clients waiting, by the id their `Begin` was given, with their change.
    clients: BTreeMap<TxnId, u8>,
    /// E-mails handed to the outbox and not sent yet.
    outbox: BTreeSet<TxnId>,
}

fn engine(setup: &Setup) -> Engine {
    Engine::with_fingerprinter(setup.coordinator, Fingerprinter::with_key([3; 32]))
}

impl CoordinatorNode {
    pub fn new(setup: &Setup) -> Self {
        Self {
            up: true,
            engine: engine(setup),
            log: BTreeMap::new(),
            unforced: Vec::new(),
            forcing: Vec::new(),
            timers: BTreeSet::new(),
            calls: BTreeMap::new(),
            clients: BTreeMap::new(),
            outbox: BTreeSet::new(),
        }
    }

    pub fn has_work(&self) -> bool {
        !self.forcing.is_empty()
    }

    pub fn calls(&self) -> impl Iterator<Item = Call> + '_ {
        self.calls.keys().copied()
    }

    pub fn receive(&mut self, from: Node, msg: Msg, setup: &Setup, world: &mut World) {
        match msg {
            Msg::Begin { change } => {
                let client = world.txn();
                self.clients.insert(client, change);
                let event = Event::Begin {
                    txn: client,
                    request_id: Setup::request_id(change),
                    op: setup.operation(change),
                };
                self.run(event, setup, world);
            }
            Msg::QueryDecision { call, txn } => {
                let decided = match self.engine.decision(txn) {
                    Some(Decision::Committed) => Decided::Committed,
                    Some(Decision::Aborted) => Decided::Aborted,
                    Some(Decision::Pending) => Decided::Pending,
                    // Not in the engine's memory: the log decides, as the runtime does.
                    None if self.log.contains_key(&txn) => Decided::Committed,
                    None => Decided::Aborted,
                };
                let answer = Answer::Decision(decided);
                world.send(Node::Coordinator, from, Msg::Reply { call, answer });
            }
            Msg::Reply { call, answer } => {
                let Some(out) = self.calls.remove(&call) else {
                    return;
                };
                let event = match (out, answer) {
                    (Outgoing::Prepare { txn, to, change }, Answer::Yes) => Event::Voted {
                        txn,
                        from: to,
                        // The password participant's yes carries the user's address.
                        vote: Vote::Yes {
                            email: (to == Participant::Password)
                                .then(|| Setup::email(setup.user_of(change))),
                        },
                    },
                    (Outgoing::Prepare { txn, to, .. }, Answer::No) => Event::Voted {
                        txn,
                        from: to,
                        vote: Vote::No {
                            reason: "the participant said no".into(),
                        },
                    },
                    (Outgoing::Prepare { txn, to, .. }, _) => Event::PrepareFailed {
                        txn,
                        from: to,
                        error: "refused".into(),
                    },
                    (Outgoing::Commit { txn, to, .. }, Answer::Ack) => {
                        Event::CommitAcked { txn, from: to }
                    }
                    (Outgoing::Commit { txn, to, attempt }, _) => Event::CommitFailed {
                        txn,
                        from: to,
                        attempt,
                    },
                    (Outgoing::Abort { txn, to }, _) => Event::AbortDelivered { txn, to },
                };
                self.run(event, setup, world);
            }
            Msg::Prepare { .. } | Msg::Commit { .. } | Msg::Abort { .. } | Msg::Read { .. } => {}
        }
    }

    /// A call of ours got no answer in time.
    pub fn time_out(&mut self, call: Call, setup: &Setup, world: &mut World) {
        let Some(out) = self.calls.remove(&call) else {
            return;
        };
        let event = match out {
            Outgoing::Prepare { txn, to, .. } => Event::PrepareFailed {
                txn,
                from: to,
                error: "deadline exceeded".into(),
            },
            Outgoing::Commit { txn, to, attempt } => Event::CommitFailed {
                txn,
                from: to,
                attempt,
            },
            Outgoing::Abort { txn, to } => Event::AbortDelivered { txn, to },
        };
        self.run(event, setup, world);
    }

    pub fn deadline(&mut self, timer: (u64, TxnId, u32), setup: &Setup, world: &mut World) {
        if self.timers.remove(&timer) {
            world.now = world.now.max(timer.0);
            let (_, txn, round) = timer;
            self.run(Event::PrepareDeadline { txn, round }, setup, world);
        }
    }

    /// The group commit forces everything written so far; forced COMMITs go to the outbox and the
    /// engine hears of them.
    pub fn flush(&mut self, setup: &Setup, world: &mut World) {
        for write in std::mem::take(&mut self.unforced) {
            if let Write::Commit(record) = &write {
                world
                    .ghost
                    .commit_records
                    .insert(record.txn, record.request_id.clone());
            }
            apply(&mut self.log, &write);
        }
        for txn in std::mem::take(&mut self.forcing) {
            self.outbox.insert(txn);
            self.run(Event::CommitForced { txn }, setup, world);
        }
        self.send_emails(world);
    }

    /// The outbox sends what it was handed, and notes each sent (unforced: a crash may send one
    /// again). It runs at once rather than as a step of its own: when it runs changes nothing but the
    /// order of e-mails, and each step of its own would multiply the states to explore.
    fn send_emails(&mut self, world: &mut World) {
        for txn in std::mem::take(&mut self.outbox) {
            *world.ghost.emails.entry(txn).or_default() += 1;
            self.unforced.push(Write::Sent(txn));
        }
    }

    pub fn crash(&mut self, setup: &Setup) {
        let log = std::mem::take(&mut self.log);
        *self = Self {
            up: false,
            log,
            ..Self::new(setup)
        };
    }

    pub fn restart(&mut self, setup: &Setup, world: &mut World) {
        self.up = true;
        world
            .ghost
            .recovered
            .extend(self.log.iter().filter(|(_, e)| !e.ended).map(|(t, _)| *t));
        self.outbox = self
            .log
            .iter()
            .filter(|(_, e)| !e.sent)
            .map(|(t, _)| *t)
            .collect();
        let committing = self
            .log
            .values()
            .filter(|e| !e.ended)
            .map(|e| e.record.clone())
            .collect();
        self.run(Event::Recovered { committing }, setup, world);
        self.send_emails(world);
    }

    fn call(
        &mut self,
        out: Outgoing,
        to: Participant,
        msg: impl FnOnce(Call) -> Msg,
        world: &mut World,
    ) {
        let call = world.call(Node::Coordinator);
        self.calls.insert(call, out);
        world.send(Node::Coordinator, Node::of(to), msg(call));
    }

    /// Answers a client. The client counts as told once the answer leaves: a reply lost on the way
    /// changes nothing the properties judge, so the model spares itself delivering it.
    fn tell(&mut self, client: TxnId, txn: TxnId, told: Told, world: &mut World) {
        if let Some(change) = self.clients.remove(&client) {
            world.ghost.told.insert((change, txn, told));
        }
    }

    /// Handles `event` and carries out every command that follows, as the runtime does.
    fn run(&mut self, event: Event, setup: &Setup, world: &mut World) {
        let mut queue: std::collections::VecDeque<_> = self.engine.handle(event, world.now).into();
        while let Some(command) = queue.pop_front() {
            match command {
                // The runtime reads the log on the blocking pool; here the read is at once, from what
                // was forced (a COMMIT applied but not yet forced is still running in the engine).
                Command::LookUp { client, request_id } => {
                    let logged = self
                        .log
                        .values()
                        .find(|e| e.record.request_id == request_id)
                        .map(|e| LoggedRequest {
                            txn: e.record.txn,
                            kind: e.record.kind,
                            user: e.record.user.clone(),
                        });
                    let event = Event::LookedUp {
                        client,
                        logged: Ok(logged),
                    };
                    queue.extend(self.engine.handle(event, world.now));
                }
                Command::SendPrepare { txn, to, op } => {
                    let change = setup.change_of(&op).expect("an operation of the setup");
                    let out = Outgoing::Prepare { txn, to, change };
                    self.call(out, to, |call| Msg::Prepare { call, txn, change }, world);
                }
                Command::StartDeadline { txn, after, round } => {
                    let due = world.now + after.as_millis() as u64;
                    self.timers.insert((due, txn, round));
                }
                Command::ForceCommit { record } => {
                    self.forcing.push(record.txn);
                    self.unforced.push(Write::Commit(record));
                }
                Command::SendAbort { txn, to } => {
                    let out = Outgoing::Abort { txn, to };
                    self.call(out, to, |call| Msg::Abort { call, txn }, world);
                }
                Command::Reply { clients, outcome } => {
                    let told = if outcome.committed {
                        Told::Committed
                    } else {
                        Told::Aborted
                    };
                    for client in clients {
                        self.tell(client, outcome.txn, told, world);
                    }
                }
                Command::Reject { client, .. } => self.tell(client, client, Told::Refused, world),
                Command::SendCommit {
                    txn, to, attempt, ..
                } => {
                    let out = Outgoing::Commit { txn, to, attempt };
                    self.call(out, to, |call| Msg::Commit { call, txn }, world);
                }
                Command::LogEnd { txn } => self.unforced.push(Write::End(txn)),
                // Not part of the protocol: the log of aborts and the store marks are for operators.
                Command::LogAbort { .. }
                | Command::SaveStoreMark { .. }
                | Command::StoreVerdict { .. }
                | Command::BreakerTurned { .. } => {}
            }
        }
        // A deadline of a decided transaction does nothing when it fires (the engine ignores it); it
        // would only move the clock and double the states to explore.
        let undecided: BTreeSet<TxnId> = self
            .engine
            .active()
            .into_iter()
            .filter(|a| !a.decided)
            .map(|a| a.txn)
            .collect();
        self.timers.retain(|(_, txn, _)| undecided.contains(txn));
    }
}

pub fn show(write: &Write) -> String {
    use crate::world::short;
    match write {
        Write::Commit(record) => format!("COMMIT {} + its e-mail", short(&record.txn)),
        Write::End(txn) => format!("END {}", short(txn)),
        Write::Sent(txn) => format!("e-mail of {} sent", short(txn)),
    }
}
