//! The whole modelled system in one value: one client, one coordinator, two participants, a reader,
//! and the world they share. The checker hashes it to tell states apart.

use std::collections::BTreeMap;
use std::sync::Arc;

use tpc_coordinator::engine::Participant;

use crate::coordinator::CoordinatorNode;
use crate::network::{Answer, Call, Msg, Node, Told};
use crate::participant::ParticipantNode;
use crate::setup::Setup;
use crate::world::World;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cluster {
    /// Shared between states until changed: most steps change one process, and the checker keeps
    /// millions of states.
    pub coordinator: Arc<CoordinatorNode>,
    pub password: Arc<ParticipantNode>,
    pub history: Arc<ParticipantNode>,
    pub client: Client,
    pub reader: Reader,
    pub world: World,
}

/// The client: sends its changes, and sends one again (same request id) if it may and heard nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Client {
    /// How many times each change was sent.
    pub sent: BTreeMap<u8, u8>,
}

/// Reads user 0's password version, then its newest history entry, then the password version again
/// (DESIGN §6.3), once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Reader {
    pub started: bool,
    /// The read out, if one is; none once started means the reader is done.
    pub call: Option<Call>,
    pub seen: Vec<u8>,
}

/// Which participant answers the reader's `step`th read.
fn read_target(step: usize) -> Node {
    if step == 1 {
        Node::History
    } else {
        Node::Password
    }
}

impl Cluster {
    pub fn new(setup: &Setup) -> Self {
        Self {
            coordinator: Arc::new(CoordinatorNode::new(setup)),
            password: Arc::new(ParticipantNode::new(Participant::Password, setup)),
            history: Arc::new(ParticipantNode::new(Participant::History, setup)),
            client: Client::default(),
            reader: Reader::default(),
            world: World::new(setup.faults),
        }
    }

    pub fn participant(&self, p: Participant) -> &ParticipantNode {
        match p {
            Participant::Password => &self.password,
            Participant::History => &self.history,
        }
    }

    pub fn participant_and_world(&mut self, p: Participant) -> (&mut ParticipantNode, &mut World) {
        match p {
            Participant::Password => (Arc::make_mut(&mut self.password), &mut self.world),
            Participant::History => (Arc::make_mut(&mut self.history), &mut self.world),
        }
    }

    pub fn is_up(&self, node: Node) -> bool {
        match node {
            Node::Coordinator => self.coordinator.up,
            Node::Password => self.password.up,
            Node::History => self.history.up,
            Node::Client | Node::Reader => true,
        }
    }

    /// The calls `node` has out.
    pub fn calls_of(&self, node: Node) -> Vec<Call> {
        match node {
            Node::Coordinator => self.coordinator.calls().collect(),
            Node::Password => self.password.calls().collect(),
            Node::History => self.history.calls().collect(),
            Node::Reader => self.reader.call.into_iter().collect(),
            Node::Client => Vec::new(),
        }
    }

    /// Whether nobody will ever answer `call` (its messages were lost, or whoever had it crashed):
    /// then its caller's deadline passing is no fault, just the consequence of one.
    pub fn is_dead(&self, call: Call) -> bool {
        !self.world.network.carries(call) && !self.password.holds(call) && !self.history.holds(call)
    }

    pub fn start_read(&mut self) {
        self.reader.started = true;
        self.send_read();
    }

    fn send_read(&mut self) {
        let call = self.world.call(Node::Reader);
        self.reader.call = Some(call);
        let to = read_target(self.reader.seen.len());
        self.world
            .send(Node::Reader, to, Msg::Read { call, user: 0 });
    }

    fn reader_heard(&mut self, call: Call, answer: Answer) {
        if self.reader.call != Some(call) {
            return;
        }
        self.reader.call = None;
        let Answer::Version(version) = answer else {
            return;
        };
        self.reader.seen.push(version);
        if let [before, history, after] = self.reader.seen[..] {
            if before == after && history != before {
                self.world.ghost.torn_reads += 1;
            }
        } else {
            self.send_read();
        }
    }

    pub fn reader_timed_out(&mut self, call: Call) {
        if self.reader.call == Some(call) {
            self.reader.call = None;
        }
    }

    /// Hands a message to its addressee; one for a process that is down is lost (connection refused).
    pub fn deliver(&mut self, from: Node, to: Node, msg: Msg, setup: &Setup) {
        if !self.is_up(to) {
            return;
        }
        let world = &mut self.world;
        match to {
            Node::Coordinator => {
                Arc::make_mut(&mut self.coordinator).receive(from, msg, setup, world)
            }
            Node::Password => Arc::make_mut(&mut self.password).receive(from, msg, setup, world),
            Node::History => Arc::make_mut(&mut self.history).receive(from, msg, setup, world),
            Node::Client => {}
            Node::Reader => {
                if let Msg::Reply { call, answer } = msg {
                    self.reader_heard(call, answer);
                }
            }
        }
    }

    /// Whether the client has heard about `change`.
    pub fn told(&self, change: u8) -> bool {
        self.world.ghost.told.iter().any(|(c, ..)| *c == change)
    }

    /// Whether `change` was told committed.
    pub fn told_committed(&self) -> impl Iterator<Item = tpc_common::TxnId> + '_ {
        self.world
            .ghost
            .told
            .iter()
            .filter(|(_, _, told)| *told == Told::Committed)
            .map(|(_, txn, _)| *txn)
    }

    /// Nothing is in progress: every process is up, the coordinator has no transaction, no participant
    /// holds a lock or is in doubt, and no check or forced write is pending.
    pub fn quiescent(&self) -> bool {
        self.coordinator.up
            && self.coordinator.engine.active().is_empty()
            && !self.coordinator.has_work()
            && [&self.password, &self.history].into_iter().all(|p| {
                p.up && p.engine.locked_users() == 0
                    && p.engine.in_doubt().is_empty()
                    && !p.has_work()
            })
    }
}
