//! What the actors share: the network, the clock, the id counters, the fault budget, and the ghost
//! record of what happened (the history the properties are judged on; no actor reads it).

use std::collections::{BTreeMap, BTreeSet};

use tpc_common::TxnId;
use tpc_coordinator::engine::Participant;

use crate::network::{Call, Envelope, Msg, Network, Node, Told};

/// Model time starts here (ms): far enough from 0 that "created 20 s ago" means something.
pub const EPOCH_MS: u64 = 1_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct World {
    pub network: Network,
    /// Both clocks at once (ms): only timers move it, to when they are due.
    pub now: u64,
    /// Per caller, so that two processes making calls in either order reach the same state.
    next_call: [u32; 5],
    next_txn: u16,
    /// The faults still allowed.
    pub faults: Faults,
    pub ghost: Ghost,
}

/// How many faults of each kind may happen (in the setup), or may still happen (in a state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Faults {
    /// `kill -9` of a process.
    pub crashes: u8,
    /// A message lost.
    pub losses: u8,
    /// A message delivered twice.
    pub duplicates: u8,
    /// A call given up on while its answer was still coming (a slow network, a slow disk).
    pub timeouts: u8,
}

/// What happened, as the properties need to know it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ghost {
    /// Yes-votes sent.
    pub voted_yes: BTreeSet<(Participant, TxnId)>,
    /// `Commit`s a participant acknowledged.
    pub acked_commits: BTreeSet<(Participant, TxnId)>,
    /// Changes applied and forced at a participant.
    pub applied: BTreeSet<(Participant, TxnId)>,
    /// Prepared changes dropped (the participant took the transaction as aborted).
    pub dropped: BTreeSet<(Participant, TxnId)>,
    /// COMMIT records that reached the coordinator's disk, with their request ids.
    pub commit_records: BTreeMap<TxnId, String>,
    /// What the client was told: (change, transaction, outcome).
    pub told: BTreeSet<(u8, TxnId, Told)>,
    /// E-mails sent, per transaction.
    pub emails: BTreeMap<TxnId, u8>,
    /// Reads that saw a password version whose history entry was missing, or the reverse.
    pub torn_reads: u8,
    /// Unfinished commits a restarted coordinator found in its log.
    pub recovered: BTreeSet<TxnId>,
}

impl World {
    pub fn new(faults: Faults) -> Self {
        Self {
            network: Network::default(),
            now: EPOCH_MS,
            next_call: [1; 5],
            next_txn: 1,
            faults,
            ghost: Ghost::default(),
        }
    }

    pub fn send(&mut self, from: Node, to: Node, msg: Msg) {
        self.network.send(Envelope { from, to, msg });
    }

    /// A new call number of `caller`'s (its node in the top byte).
    pub fn call(&mut self, caller: Node) -> Call {
        let n = &mut self.next_call[caller as usize];
        let call = (caller as u32) << 24 | *n;
        *n += 1;
        call
    }

    /// A new UUIDv7-shaped transaction id made now: it carries the creation time, as the real ones do
    /// (a participant refuses a Prepare too old by it), and sorts by creation.
    pub fn txn(&mut self) -> TxnId {
        let n = self.next_txn;
        self.next_txn += 1;
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&self.now.to_be_bytes()[2..]);
        bytes[6] = 0x70;
        bytes[8] = 0x80;
        bytes[14..].copy_from_slice(&n.to_be_bytes());
        TxnId::from_bytes(&bytes).expect("16 bytes")
    }
}

/// A model transaction id, short: `t3` for the third one made.
pub fn short(txn: &TxnId) -> String {
    let b = txn.as_bytes();
    format!("t{}", u16::from_be_bytes([b[14], b[15]]))
}
