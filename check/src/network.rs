//! The model's network: who the actors are, what they say, and the messages in flight.
//!
//! Every message is a value in a multiset, so the checker may deliver any of them next (reordering),
//! drop one (loss) or deliver one twice (duplication). Calls (request and reply) carry a call number, as
//! an RPC does: a reply nobody waits for any more is dropped, as tonic drops it.

use tpc_common::TxnId;
use tpc_coordinator::engine::Participant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Client,
    Coordinator,
    Password,
    History,
    Reader,
}

impl Node {
    pub fn of(p: Participant) -> Node {
        match p {
            Participant::Password => Node::Password,
            Participant::History => Node::History,
        }
    }

    pub fn participant(self) -> Option<Participant> {
        match self {
            Node::Password => Some(Participant::Password),
            Node::History => Some(Participant::History),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Node::Client => "client",
            Node::Coordinator => "coordinator",
            Node::Password => "password",
            Node::History => "history",
            Node::Reader => "reader",
        }
    }
}

/// A call's number, unique in the whole run (also across restarts).
pub type Call = u32;

/// What the client is told about its change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Told {
    Committed,
    Aborted,
    /// Refused without running (overload, a participant known down).
    Refused,
}

/// The coordinator's answer to `QueryDecision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Decided {
    Committed,
    Aborted,
    Pending,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Answer {
    Yes,
    No,
    Ack,
    /// An error status (in progress, already aborted…): the caller sees a failed call.
    Refused,
    Decision(Decided),
    /// A read: the newest version the participant has for the user (0: the one it started with).
    Version(u8),
    /// A read refused: the user stayed locked too long.
    Unavailable,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    /// The client asks for change number `change` of the setup (a password change).
    Begin {
        change: u8,
    },
    Prepare {
        call: Call,
        txn: TxnId,
        change: u8,
    },
    Commit {
        call: Call,
        txn: TxnId,
    },
    Abort {
        call: Call,
        txn: TxnId,
    },
    QueryDecision {
        call: Call,
        txn: TxnId,
    },
    Read {
        call: Call,
        user: u8,
    },
    Reply {
        call: Call,
        answer: Answer,
    },
}

impl Msg {
    /// The call this message belongs to, if it is part of one.
    pub fn call(&self) -> Option<Call> {
        match self {
            Msg::Begin { .. } => None,
            Msg::Prepare { call, .. }
            | Msg::Commit { call, .. }
            | Msg::Abort { call, .. }
            | Msg::QueryDecision { call, .. }
            | Msg::Read { call, .. }
            | Msg::Reply { call, .. } => Some(*call),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Envelope {
    pub from: Node,
    pub to: Node,
    pub msg: Msg,
}

impl std::fmt::Display for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} → {}: {:?}",
            self.from.name(),
            self.to.name(),
            self.msg
        )
    }
}

/// The messages in flight, as a sorted multiset: the same messages are the same state whatever order
/// they were sent in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Network(Vec<Envelope>);

impl Network {
    pub fn send(&mut self, envelope: Envelope) {
        let at = self.0.partition_point(|e| e <= &envelope);
        self.0.insert(at, envelope);
    }

    /// Takes one copy of `envelope` out; false if none is in flight.
    pub fn take(&mut self, envelope: &Envelope) -> bool {
        match self.0.binary_search(envelope) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// The distinct messages in flight.
    pub fn distinct(&self) -> impl Iterator<Item = &Envelope> {
        let mut last: Option<&Envelope> = None;
        self.0.iter().filter(move |e| {
            let new = last != Some(*e);
            last = Some(*e);
            new
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Envelope> {
        self.0.iter()
    }

    /// Whether a request or reply of `call` is in flight.
    pub fn carries(&self, call: Call) -> bool {
        self.0.iter().any(|e| e.msg.call() == Some(call))
    }
}

/// A call number as `coordinator#3`.
pub fn show_call(call: Call) -> String {
    let node = match call >> 24 {
        0 => "client",
        1 => "coordinator",
        2 => "password",
        3 => "history",
        _ => "reader",
    };
    format!("{node}#{}", call & 0xff_ffff)
}

/// A message, with short transaction ids.
pub fn show(msg: &Msg) -> String {
    use crate::world::short;
    let c = |call: &Call| show_call(*call);
    match msg {
        Msg::Begin { change } => format!("Begin change {change}"),
        Msg::Prepare { call, txn, change } => {
            format!("Prepare {} change {change} [call {}]", short(txn), c(call))
        }
        Msg::Commit { call, txn } => format!("Commit {} [call {}]", short(txn), c(call)),
        Msg::Abort { call, txn } => format!("Abort {} [call {}]", short(txn), c(call)),
        Msg::QueryDecision { call, txn } => {
            format!("QueryDecision {} [call {}]", short(txn), c(call))
        }
        Msg::Read { call, user } => format!("Read user{user} [call {}]", c(call)),
        Msg::Reply { call, answer } => format!("{answer:?} [reply to call {}]", c(call)),
    }
}
