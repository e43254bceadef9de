//! A participant actor: the production participant engine, a store that keeps only what was forced
//! across a crash, and a runtime that carries out the engine's commands the moment they come out
//! (a vote is sent when the engine says `Vote`, so an engine that votes too early is caught).

use std::collections::BTreeMap;

use tpc_common::{Fingerprinter, TxnId};
use tpc_coordinator::engine::Participant;
use tpc_participants::engine::{Command, Decision, Engine, Event, Vote};

use crate::network::{Answer, Call, Decided, Msg, Node};
use crate::setup::Setup;
use crate::world::World;

/// A prepared change: the new version of a user's password (its history entry, at the history
/// participant). Version `n + 1` is change `n`'s.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Staged {
    pub user: u8,
    pub version: u8,
}

/// A participant's store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Store {
    pub prepared: BTreeMap<TxnId, Staged>,
    /// COMMITTED records, with when (ms).
    pub committed: BTreeMap<TxnId, u64>,
    /// Per user, every version it had, oldest first (the password participant's current one is the
    /// last).
    pub versions: BTreeMap<u8, Vec<u8>>,
}

/// A write not forced yet: lost in a crash.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Write {
    Prepared(TxnId, Staged),
    /// The change and its COMMITTED record, in one batch.
    Applied(TxnId, Staged, u64),
    /// Deletes the transaction's PREPARED and COMMITTED records.
    Remove(TxnId),
}

impl Store {
    pub fn apply(&mut self, write: &Write) {
        match write {
            Write::Prepared(txn, staged) => {
                self.prepared.insert(*txn, staged.clone());
            }
            Write::Applied(txn, staged, at) => {
                self.prepared.remove(txn);
                self.committed.insert(*txn, *at);
                self.versions
                    .entry(staged.user)
                    .or_default()
                    .push(staged.version);
            }
            Write::Remove(txn) => {
                self.prepared.remove(txn);
                self.committed.remove(txn);
            }
        }
    }

    pub fn newest(&self, user: u8) -> u8 {
        self.versions
            .get(&user)
            .and_then(|v| v.last())
            .copied()
            .unwrap_or(0)
    }
}

/// A forced write waiting for the flush, and what the engine hears when it lands.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Forced {
    Prepared(TxnId),
    Applied(TxnId),
}

/// Who waits for the answer of the request being handled, and which change it is about.
#[derive(Clone, Copy, Debug, Default)]
struct Cx {
    reply: Option<(Node, Call)>,
    change: Option<u8>,
    /// The request is a `Commit`.
    commit: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ParticipantNode {
    pub role: Participant,
    pub up: bool,
    pub engine: Engine<Staged>,
    pub durable: Store,
    pub unforced: Vec<Write>,
    /// Checks running (argon2, in production), with who waits for the vote and the change.
    pub validating: BTreeMap<TxnId, (Option<(Node, Call)>, u8)>,
    forcing: Vec<(Forced, Option<(Node, Call)>)>,
    /// Our `QueryDecision` calls out.
    queries: BTreeMap<Call, TxnId>,
    /// Readers waiting, by call, with the user they read.
    readers: BTreeMap<Call, u8>,
}

fn fingerprinter() -> Fingerprinter {
    Fingerprinter::with_key([7; 32])
}

impl ParticipantNode {
    pub fn new(role: Participant, setup: &Setup) -> Self {
        let users = setup.users();
        Self {
            role,
            up: true,
            engine: Engine::new(setup.participant),
            durable: Store {
                versions: (0..users).map(|u| (u, vec![0])).collect(),
                ..Store::default()
            },
            unforced: Vec::new(),
            validating: BTreeMap::new(),
            forcing: Vec::new(),
            queries: BTreeMap::new(),
            readers: BTreeMap::new(),
        }
    }

    pub fn node(&self) -> Node {
        Node::of(self.role)
    }

    /// What a read sees: the store with its unforced writes (sled serves reads from memory).
    pub fn view(&self) -> Store {
        let mut view = self.durable.clone();
        for write in &self.unforced {
            view.apply(write);
        }
        view
    }

    /// Whether this node still owes an answer to `call` (it is working on it).
    pub fn holds(&self, call: Call) -> bool {
        let waits = |r: &Option<(Node, Call)>| r.is_some_and(|(_, c)| c == call);
        self.validating.values().any(|(r, _)| waits(r))
            || self.forcing.iter().any(|(_, r)| waits(r))
            || self.readers.contains_key(&call)
    }

    pub fn has_forcing(&self) -> bool {
        !self.forcing.is_empty()
    }

    pub fn has_work(&self) -> bool {
        !self.validating.is_empty() || !self.forcing.is_empty()
    }

    pub fn calls(&self) -> impl Iterator<Item = Call> + '_ {
        self.queries.keys().copied()
    }

    pub fn receive(&mut self, from: Node, msg: Msg, setup: &Setup, world: &mut World) {
        let now = world.now;
        match msg {
            Msg::Prepare { call, txn, change } => {
                let op = setup.operation(change);
                let event = Event::PrepareRequested {
                    txn,
                    user: op.user().clone(),
                    wall_ms: now,
                    payload: Some(fingerprinter().of(&op)),
                };
                let cx = Cx {
                    reply: Some((from, call)),
                    change: Some(change),
                    commit: false,
                };
                self.run(event, cx, world);
            }
            Msg::Commit { call, txn } => {
                let cx = Cx {
                    reply: Some((from, call)),
                    change: None,
                    commit: true,
                };
                self.run(Event::CommitRequested { txn }, cx, world);
            }
            Msg::Abort { call, txn } => {
                let cx = Cx {
                    reply: Some((from, call)),
                    change: None,
                    commit: false,
                };
                self.run(Event::AbortRequested { txn, at: now }, cx, world);
            }
            Msg::Read { call, user } => {
                self.readers.insert(call, user);
                let event = Event::ReadRequested {
                    reader: call.into(),
                    user: Setup::user_id(user),
                    at: now,
                };
                self.run(event, Cx::default(), world);
            }
            Msg::Reply { call, answer } => {
                if let Some(txn) = self.queries.remove(&call) {
                    let decision = match answer {
                        Answer::Decision(Decided::Committed) => Decision::Committed,
                        Answer::Decision(Decided::Aborted) => Decision::Aborted,
                        _ => Decision::Pending,
                    };
                    let event = Event::DecisionLearned {
                        txn,
                        decision,
                        at: now,
                    };
                    self.run(event, Cx::default(), world);
                }
            }
            Msg::Begin { .. } | Msg::QueryDecision { .. } => {}
        }
    }

    /// A query of ours got no answer in time: nothing learned.
    pub fn time_out(&mut self, call: Call, world: &mut World) {
        if let Some(txn) = self.queries.remove(&call) {
            let event = Event::DecisionLearned {
                txn,
                decision: Decision::Pending,
                at: world.now,
            };
            self.run(event, Cx::default(), world);
        }
    }

    /// The checks of `txn` finished: `ok`, or a no (a reused password).
    pub fn validated(&mut self, txn: TxnId, ok: bool, setup: &Setup, world: &mut World) {
        let Some((reply, change)) = self.validating.remove(&txn) else {
            return;
        };
        let outcome = if ok {
            Ok(Staged {
                user: setup.user_of(change),
                version: change + 1,
            })
        } else {
            Err("the new password was used recently".to_owned())
        };
        let cx = Cx {
            reply,
            change: Some(change),
            commit: false,
        };
        self.run(Event::Validated { txn, outcome }, cx, world);
    }

    /// The group commit forces everything written so far; the forced writes' events follow.
    pub fn flush(&mut self, world: &mut World) {
        for write in std::mem::take(&mut self.unforced) {
            if let Write::Applied(txn, ..) = &write {
                world.ghost.applied.insert((self.role, *txn));
            }
            self.durable.apply(&write);
        }
        for (forced, reply) in std::mem::take(&mut self.forcing) {
            let at = world.now;
            let (event, commit) = match forced {
                Forced::Prepared(txn) => (Event::PreparedForced { txn, at }, false),
                Forced::Applied(txn) => (Event::CommitApplied { txn, at }, true),
            };
            let cx = Cx {
                reply,
                change: None,
                commit,
            };
            self.run(event, cx, world);
        }
    }

    pub fn tick(&mut self, world: &mut World) {
        if let Some(due) = self.engine.next_due() {
            world.now = world.now.max(due);
        }
        let now = world.now;
        self.run(Event::Tick { now }, Cx::default(), world);
    }

    /// `kill -9`: everything not forced is gone, and so is every call in progress.
    pub fn crash(&mut self, setup: &Setup) {
        let durable = std::mem::take(&mut self.durable);
        *self = Self {
            up: false,
            durable,
            ..Self::new(self.role, setup)
        };
    }

    pub fn restart(&mut self, world: &mut World) {
        self.up = true;
        let prepared = self
            .durable
            .prepared
            .iter()
            .map(|(txn, s)| (*txn, Setup::user_id(s.user), s.clone()))
            .collect();
        let committed = self
            .durable
            .committed
            .iter()
            .map(|(t, at)| (*t, *at))
            .collect();
        let event = Event::Recovered {
            prepared,
            committed,
        };
        self.run(event, Cx::default(), world);
    }

    fn answer(&self, to: Option<(Node, Call)>, answer: Answer, world: &mut World) {
        if let Some((node, call)) = to {
            world.send(self.node(), node, Msg::Reply { call, answer });
        }
    }

    /// Handles `event` and carries out every command that follows, as the runtime does.
    fn run(&mut self, event: Event<Staged>, cx: Cx, world: &mut World) {
        let mut queue: std::collections::VecDeque<_> = self.engine.handle(event).into();
        while let Some(command) = queue.pop_front() {
            match command {
                Command::Validate { txn } => {
                    let change = cx.change.expect("a Prepare carries its change");
                    self.validating.insert(txn, (cx.reply, change));
                }
                Command::ForcePrepared { txn, change, .. } => {
                    self.unforced.push(Write::Prepared(txn, change));
                    self.forcing.push((Forced::Prepared(txn), cx.reply));
                }
                Command::Vote { txn, vote } => {
                    let answer = match vote {
                        Vote::Yes(_) => {
                            world.ghost.voted_yes.insert((self.role, txn));
                            Answer::Yes
                        }
                        Vote::No(_) => Answer::No,
                    };
                    self.answer(cx.reply, answer, world);
                }
                Command::ApplyCommit { txn, change } => {
                    self.unforced.push(Write::Applied(txn, change, world.now));
                    self.forcing.push((Forced::Applied(txn), cx.reply));
                }
                Command::DropPrepared { txn } => {
                    world.ghost.dropped.insert((self.role, txn));
                    self.unforced.push(Write::Remove(txn));
                }
                Command::Forget { txn } => self.unforced.push(Write::Remove(txn)),
                Command::Ack { txn } => {
                    if cx.commit && cx.reply.is_some() {
                        world.ghost.acked_commits.insert((self.role, txn));
                    }
                    self.answer(cx.reply, Answer::Ack, world)
                }
                Command::Refuse { .. } => self.answer(cx.reply, Answer::Refused, world),
                Command::QueryDecision { txn } => {
                    let call = world.call(self.node());
                    self.queries.insert(call, txn);
                    world.send(
                        self.node(),
                        Node::Coordinator,
                        Msg::QueryDecision { call, txn },
                    );
                }
                Command::Read { reader } => {
                    let call = reader as Call;
                    if let Some(user) = self.readers.remove(&call) {
                        let version = self.view().newest(user);
                        self.answer(Some((Node::Reader, call)), Answer::Version(version), world);
                    }
                }
                Command::RefuseRead { reader } => {
                    let call = reader as Call;
                    if self.readers.remove(&call).is_some() {
                        self.answer(Some((Node::Reader, call)), Answer::Unavailable, world);
                    }
                }
            }
        }
    }
}

pub fn show(write: &Write) -> String {
    use crate::world::short;
    match write {
        Write::Prepared(txn, s) => {
            format!("PREPARED {} (user{} v{})", short(txn), s.user, s.version)
        }
        Write::Applied(txn, s, _) => {
            format!(
                "COMMITTED {} (user{} v{} applied)",
                short(txn),
                s.user,
                s.version
            )
        }
        Write::Remove(txn) => format!("delete {}", short(txn)),
    }
}
