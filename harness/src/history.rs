//! The history of client operations in a chaos run, Jepsen-style: every operation is invoked, then
//! completes `ok` (committed), `fail` (aborted: no effect) or `info` (unknown: the client lost track), or
//! is a read with what it saw. Passwords appear only as numbers: the history is written to disk, and no
//! plaintext password ever is.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// What an operation asks for. Passwords are indexes into the run's in-memory password table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Call {
    Register {
        password: usize,
    },
    Update {
        current: usize,
        new: usize,
    },
    /// GetUser, GetHistory, GetUser again: an observation of atomic visibility.
    Read,
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Completion {
    /// COMMITTED.
    Ok { txn: String },
    /// ABORTED: the transaction must have had no effect.
    Fail { txn: String, reason: String },
    /// The outcome is unknown to the client (the reply was lost); it must resolve all-or-nothing.
    Info { error: String },
    /// A read: the version, the newest history entry, the version again.
    Read {
        first_version: String,
        newest_history: String,
        second_version: String,
    },
    /// A read that could not complete (a user in doubt answers UNAVAILABLE): no observation.
    ReadFailed { error: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub index: usize,
    pub client: usize,
    pub user: String,
    pub call: Call,
    pub request_id: String,
    pub invoked_ms: u64,
    pub completed_ms: Option<u64>,
    pub completion: Option<Completion>,
}

/// One line of the history file.
#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    index: usize,
    client: usize,
    user: &'a str,
    #[serde(flatten)]
    call: &'a Call,
    request_id: &'a str,
    time_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion: Option<&'a Completion>,
}

/// A shared, append-only history.
pub struct History {
    /// When the history began (`tpc_common::monotonic_ms`: simulated time in a simulation).
    start: u64,
    ops: Mutex<Vec<Op>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> Self {
        Self {
            start: tpc_common::monotonic_ms(),
            ops: Mutex::new(Vec::new()),
        }
    }

    fn now(&self) -> u64 {
        tpc_common::monotonic_ms().saturating_sub(self.start)
    }

    fn ops(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the invocation; returns the operation's index.
    pub fn invoke(&self, client: usize, user: &str, call: Call, request_id: &str) -> usize {
        let mut ops = self.ops();
        let index = ops.len();
        ops.push(Op {
            index,
            client,
            user: user.to_owned(),
            call,
            request_id: request_id.to_owned(),
            invoked_ms: self.now(),
            completed_ms: None,
            completion: None,
        });
        index
    }

    pub fn complete(&self, index: usize, completion: Completion) {
        let now = self.now();
        if let Some(op) = self.ops().get_mut(index) {
            op.completed_ms = Some(now);
            op.completion = Some(completion);
        }
    }

    pub fn snapshot(&self) -> Vec<Op> {
        self.ops().clone()
    }

    /// Writes the history as JSON lines: each invocation, then each completion, in time order.
    pub fn write_jsonl(&self, path: &Path) -> std::io::Result<()> {
        let ops = self.snapshot();
        let mut events: Vec<(u64, Event<'_>)> = Vec::new();
        for op in &ops {
            let event = |kind, time_ms, completion| Event {
                kind,
                index: op.index,
                client: op.client,
                user: &op.user,
                call: &op.call,
                request_id: &op.request_id,
                time_ms,
                completion,
            };
            events.push((op.invoked_ms, event("invoke", op.invoked_ms, None)));
            if let (Some(at), Some(c)) = (op.completed_ms, &op.completion) {
                let kind = match c {
                    Completion::Ok { .. } | Completion::Read { .. } => "ok",
                    Completion::Fail { .. } => "fail",
                    Completion::Info { .. } | Completion::ReadFailed { .. } => "info",
                };
                events.push((at, event(kind, at, Some(c))));
            }
        }
        events.sort_by_key(|(t, _)| *t);
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (_, event) in events {
            serde_json::to_writer(&mut out, &event)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }
}
