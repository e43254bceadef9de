//! The checker's view of the cluster: the actions possible in a state (deliveries, faults, timers,
//! flushes, checks finishing) and the state each leads to.

use std::sync::Arc;

use stateright::{Model, Property};
use tpc_common::TxnId;
use tpc_coordinator::engine::Participant;

use crate::cluster::Cluster;
use crate::network::{Call, Envelope, Msg, Node};
use crate::properties;
use crate::setup::Setup;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The client sends change `change` (again, if it was sent before).
    Send {
        change: u8,
    },
    Deliver(Envelope),
    /// The network loses this message (a fault).
    Lose(Envelope),
    /// The network delivers this message and keeps a copy to deliver again (a fault).
    Duplicate(Envelope),
    /// `caller` stops waiting for `call`. A fault if an answer could still come.
    TimeOut {
        caller: Node,
        call: Call,
    },
    /// A participant's checks of `txn` finished, passing or not.
    Validate {
        at: Participant,
        txn: TxnId,
        ok: bool,
    },
    /// The process's group commit forces what was written (and reports the forced writes). Only
    /// while a forced write waits: unforced writes become durable with the next forced one, or are
    /// lost in a crash (sled also flushes them every half second; leaving that out only loses more).
    Flush(Node),
    /// A prepare deadline passes.
    Deadline {
        due: u64,
        txn: TxnId,
        round: u32,
    },
    /// A participant's next timer passes.
    Tick(Participant),
    /// `kill -9` (a fault).
    Crash(Node),
    Restart(Node),
    /// The reader starts reading.
    Read,
}

/// The model: a setup, checked from the cluster's start.
#[derive(Clone, Debug)]
pub struct TpcModel {
    pub setup: Setup,
}

const PROCESSES: [Node; 3] = [Node::Coordinator, Node::Password, Node::History];

impl TpcModel {
    pub fn new(setup: Setup) -> Self {
        Self { setup }
    }

    /// Whether nothing can happen any more.
    pub fn is_terminal(&self, state: &Cluster) -> bool {
        let mut actions = Vec::new();
        self.actions(state, &mut actions);
        actions.is_empty()
    }
}

impl Model for TpcModel {
    type State = Cluster;
    type Action = Action;

    fn init_states(&self) -> Vec<Cluster> {
        vec![Cluster::new(&self.setup)]
    }

    fn actions(&self, s: &Cluster, actions: &mut Vec<Action>) {
        let left = s.world.faults;
        for change in 0..self.setup.changes.len() as u8 {
            let sent = s.client.sent.get(&change).copied().unwrap_or(0);
            if sent == 0 || (sent <= self.setup.retries && !s.told(change)) {
                actions.push(Action::Send { change });
            }
        }
        for e in s.world.network.distinct() {
            actions.push(Action::Deliver(e.clone()));
            if left.losses > 0 {
                actions.push(Action::Lose(e.clone()));
            }
            if left.duplicates > 0 {
                actions.push(Action::Duplicate(e.clone()));
            }
        }
        for caller in [
            Node::Coordinator,
            Node::Password,
            Node::History,
            Node::Reader,
        ] {
            if !s.is_up(caller) {
                continue;
            }
            for call in s.calls_of(caller) {
                if left.timeouts > 0 || s.is_dead(call) {
                    actions.push(Action::TimeOut { caller, call });
                }
            }
        }
        for p in Participant::ALL {
            let node = s.participant(p);
            if !node.up {
                continue;
            }
            for txn in node.validating.keys() {
                actions.push(Action::Validate {
                    at: p,
                    txn: *txn,
                    ok: true,
                });
                if p == Participant::History && self.setup.history_may_refuse {
                    actions.push(Action::Validate {
                        at: p,
                        txn: *txn,
                        ok: false,
                    });
                }
            }
            if node.has_forcing() {
                actions.push(Action::Flush(Node::of(p)));
            }
            if node.engine.next_due().is_some() {
                actions.push(Action::Tick(p));
            }
        }
        let c = &s.coordinator;
        if c.up {
            if c.has_work() {
                actions.push(Action::Flush(Node::Coordinator));
            }
            for &(due, txn, round) in &c.timers {
                actions.push(Action::Deadline { due, txn, round });
            }
        }
        for node in PROCESSES {
            if !s.is_up(node) {
                actions.push(Action::Restart(node));
            } else if left.crashes > 0 && self.setup.crashable.contains(&node) {
                actions.push(Action::Crash(node));
            }
        }
        if self.setup.reader && !s.reader.started {
            actions.push(Action::Read);
        }
    }

    fn next_state(&self, last: &Cluster, action: Action) -> Option<Cluster> {
        let setup = &self.setup;
        let mut s = last.clone();
        match action {
            Action::Send { change } => {
                *s.client.sent.entry(change).or_default() += 1;
                s.world
                    .send(Node::Client, Node::Coordinator, Msg::Begin { change });
            }
            Action::Deliver(e) => {
                s.world.network.take(&e);
                s.deliver(e.from, e.to, e.msg, setup);
            }
            Action::Lose(e) => {
                s.world.faults.losses -= 1;
                s.world.network.take(&e);
            }
            Action::Duplicate(e) => {
                s.world.faults.duplicates -= 1;
                s.deliver(e.from, e.to, e.msg, setup);
            }
            Action::TimeOut { caller, call } => {
                if !s.is_dead(call) {
                    s.world.faults.timeouts -= 1;
                }
                let world = &mut s.world;
                match caller {
                    Node::Coordinator => {
                        Arc::make_mut(&mut s.coordinator).time_out(call, setup, world)
                    }
                    Node::Password => Arc::make_mut(&mut s.password).time_out(call, world),
                    Node::History => Arc::make_mut(&mut s.history).time_out(call, world),
                    Node::Reader => s.reader_timed_out(call),
                    Node::Client => {}
                }
            }
            Action::Validate { at, txn, ok } => {
                let (node, world) = s.participant_and_world(at);
                node.validated(txn, ok, setup, world);
            }
            Action::Flush(node) => {
                let world = &mut s.world;
                match node {
                    Node::Coordinator => Arc::make_mut(&mut s.coordinator).flush(setup, world),
                    Node::Password => Arc::make_mut(&mut s.password).flush(world),
                    Node::History => Arc::make_mut(&mut s.history).flush(world),
                    Node::Client | Node::Reader => {}
                }
            }
            Action::Deadline { due, txn, round } => {
                Arc::make_mut(&mut s.coordinator).deadline((due, txn, round), setup, &mut s.world);
            }
            Action::Tick(p) => {
                let (node, world) = s.participant_and_world(p);
                node.tick(world);
            }
            Action::Crash(node) => {
                s.world.faults.crashes -= 1;
                match node {
                    Node::Coordinator => Arc::make_mut(&mut s.coordinator).crash(setup),
                    Node::Password => Arc::make_mut(&mut s.password).crash(setup),
                    Node::History => Arc::make_mut(&mut s.history).crash(setup),
                    Node::Client | Node::Reader => {}
                }
            }
            Action::Restart(node) => {
                let world = &mut s.world;
                match node {
                    Node::Coordinator => Arc::make_mut(&mut s.coordinator).restart(setup, world),
                    Node::Password => Arc::make_mut(&mut s.password).restart(world),
                    Node::History => Arc::make_mut(&mut s.history).restart(world),
                    Node::Client | Node::Reader => {}
                }
            }
            Action::Read => s.start_read(),
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties::all()
    }
}
