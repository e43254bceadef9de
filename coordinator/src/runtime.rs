//! The coordinator runtime: one task owns the engine and handles its events one at a time; every
//! command is executed by a short task (an RPC, a forced write, a timer) that reports back as an event.
//! Clients wait on a oneshot per request id.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tpc_common::fault::inject;
use tpc_common::{Now, Operation, TxnId};
use tracing::{debug, debug_span, error, warn};

use crate::clients::{Waiting, spawn_reporting};
use crate::email;

use crate::engine::{
    Active, Command, Decision, Engine, Event, Outcome, Participant, Refusal, StoreMark, Vote,
};
use crate::log::{Log, OutboxEntry};
use crate::peers::Peers;

/// `then`, with the store mark the participant sent beside it, if any.
fn reported(from: Participant, store: Option<StoreMark>, then: Event) -> Event {
    match store {
        Some(mark) => Event::Reported {
            from,
            mark,
            then: Box::new(then),
        },
        None => then,
    }
}

/// An `Abort` answered "in progress" is sent again after this, doubling up to `ABORT_RETRY_MAX`, for
/// at most `ABORT_RETRY_FOR` (a forced write takes milliseconds; a participant stuck longer will ask).
const ABORT_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(5);
const ABORT_RETRY_MAX: std::time::Duration = std::time::Duration::from_millis(200);
const ABORT_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(5);

enum Input {
    Event(Event),
    Begin {
        txn: TxnId,
        request_id: String,
        op: Operation,
        reply: oneshot::Sender<Answer>,
    },
    Query {
        txn: TxnId,
        reply: oneshot::Sender<Decision>,
    },
    Active {
        reply: oneshot::Sender<Vec<Active>>,
    },
}

/// What a client is told: the outcome, or why its request was refused without running.
pub type Answer = Result<Outcome, Refusal>;

/// Handle to the running coordinator.
#[derive(Clone)]
pub struct Coordinator {
    inputs: mpsc::UnboundedSender<Input>,
    /// Whether changes can commit: false while a participant's store is lost (health says so).
    serving: tokio::sync::watch::Receiver<bool>,
}

#[derive(Debug, thiserror::Error)]
#[error("the coordinator is shutting down")]
pub struct Stopped;

impl Coordinator {
    /// Starts the runtime with the recovered log; returns at once.
    pub fn start(
        engine: Engine,
        recovered: Vec<Command>,
        log: Arc<Log>,
        peers: Peers,
        outbox: mpsc::UnboundedSender<OutboxEntry>,
    ) -> Self {
        let (inputs, rx) = mpsc::unbounded_channel();
        let (serving_tx, serving) = tokio::sync::watch::channel(true);
        let actor = Actor {
            engine,
            log,
            peers,
            outbox,
            waiters: Waiting::default(),
            inputs: inputs.downgrade(),
            serving: serving_tx,
        };
        tokio::spawn(actor.run(rx, recovered));
        Self { inputs, serving }
    }

    /// Whether changes can commit now, as it changes: what the health service reports.
    pub fn serving(&self) -> tokio::sync::watch::Receiver<bool> {
        self.serving.clone()
    }

    /// Runs `op` as a transaction (or joins the one already running for `request_id`).
    pub async fn execute(
        &self,
        txn: TxnId,
        request_id: String,
        op: Operation,
    ) -> Result<Answer, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.inputs
            .send(Input::Begin {
                txn,
                request_id,
                op,
                reply,
            })
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    pub async fn decision(&self, txn: TxnId) -> Result<Decision, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.inputs
            .send(Input::Query { txn, reply })
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    pub async fn active(&self) -> Result<Vec<Active>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.inputs
            .send(Input::Active { reply })
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Feeds an event from outside the runtime (garbage collection).
    pub fn notify(&self, event: Event) {
        let _ = self.inputs.send(Input::Event(event));
    }
}

struct Actor {
    engine: Engine,
    log: Arc<Log>,
    peers: Peers,
    /// The dispatcher, handed each e-mail once its commit is on disk.
    outbox: mpsc::UnboundedSender<OutboxEntry>,
    /// Clients waiting for an answer, by the id their `Begin` carried.
    waiters: Waiting,
    /// Weak, so the actor stops when every `Coordinator` handle is gone.
    inputs: mpsc::WeakUnboundedSender<Input>,
    /// False while a participant's store is lost.
    serving: tokio::sync::watch::Sender<bool>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>, recovered: Vec<Command>) {
        for command in recovered {
            self.execute(command);
        }
        while let Some(input) = rx.recv().await {
            match input {
                Input::Event(event) => self.handle(event),
                Input::Begin {
                    txn,
                    request_id,
                    op,
                    reply,
                } => {
                    self.waiters.insert(txn, reply);
                    self.handle(Event::Begin {
                        txn,
                        request_id,
                        op,
                    });
                }
                Input::Query { txn, reply } => match self.engine.decision(txn) {
                    Some(decision) => {
                        let _ = reply.send(decision);
                    }
                    None => self.decide_from_log(txn, reply),
                },
                Input::Active { reply } => {
                    let _ = reply.send(self.engine.active());
                }
            }
        }
    }

    fn handle(&mut self, event: Event) {
        for command in self.engine.handle(event, Now::current()) {
            self.execute(command);
        }
    }

    /// Runs `work` in its own task and feeds the event it returns back to the engine.
    fn spawn(&self, txn: TxnId, work: impl Future<Output = Option<Event>> + Send + 'static) {
        let work = async move { work.await.map(Input::Event) };
        spawn_reporting(&self.inputs, debug_span!("txn", txn_id = %txn), work);
    }

    /// Answers a participant's question about a transaction the engine no longer holds: committed if
    /// the log has its COMMIT record, otherwise aborted (presumed abort). A log that cannot be read
    /// answers nothing: the participant asks again.
    fn decide_from_log(&self, txn: TxnId, reply: oneshot::Sender<Decision>) {
        let log = self.log.clone();
        tokio::spawn(async move {
            match read_off_thread(move || log.get(txn)).await {
                Ok(record) => {
                    let committed = record.is_some_and(|r| r.commit_record().is_some());
                    let _ = reply.send(if committed {
                        Decision::Committed
                    } else {
                        Decision::Aborted
                    });
                }
                Err(cause) => {
                    error!(txn_id = %txn, %cause, "the log could not be read for a decision")
                }
            }
        });
    }

    fn execute(&mut self, command: Command) {
        match command {
            // A local read is made here, in microseconds: a task, or a hop to the blocking pool, per
            // change cost more than the read (the hop also grew the blocking pool by dozens of
            // threads, and the coordinator's memory with them).
            Command::LookUp { client, request_id } if self.log.reads_locally() => {
                let logged = self
                    .log
                    .committed_request(&request_id)
                    .map_err(|e| e.to_string());
                self.handle(Event::LookedUp { client, logged });
            }
            Command::LookUp { client, request_id } => {
                let log = self.log.clone();
                self.spawn(client, async move {
                    let logged = read_off_thread(move || log.committed_request(&request_id)).await;
                    Some(Event::LookedUp { client, logged })
                });
            }
            Command::SendPrepare { txn, to, op } => {
                let peers = self.peers.clone();
                debug!(target: "tpc::protocol", txn_id = %txn, "coordinator → {}: Prepare", to.name());
                self.spawn(txn, async move {
                    if inject("coord.before_prepare").await.is_err() {
                        let error = "injected: the Prepare was lost".to_owned();
                        return Some(Event::PrepareFailed { txn, from: to, error });
                    }
                    Some(match peers.prepare(to, txn, &op).await {
                        Ok((vote, store)) => {
                            match &vote {
                                Vote::Yes { .. } => debug!(target: "tpc::protocol", "{} → coordinator: vote YES", to.name()),
                                Vote::No { reason } => debug!(target: "tpc::protocol", "{} → coordinator: vote NO ({reason})", to.name()),
                            }
                            reported(to, store, Event::Voted { txn, from: to, vote })
                        }
                        Err(error) => {
                            warn!(txn_id = %txn, participant = to.name(), %error, "prepare failed");
                            Event::PrepareFailed { txn, from: to, error }
                        }
                    })
                });
            }
            Command::StartDeadline { txn, after, round } => self.spawn(txn, async move {
                tokio::time::sleep(after).await;
                Some(Event::PrepareDeadline { txn, round })
            }),
            Command::ForceCommit { record } => {
                let (log, outbox) = (self.log.clone(), self.outbox.clone());
                let txn = record.txn;
                self.spawn(txn, async move {
                    if inject("coord.after_votes").await.is_err() {
                        fatal("injected failure of the forced write");
                    }
                    let mail = email::compose(&record);
                    if let Err(e) = log.force_commit(&record, &mail).await {
                        fatal(&e.to_string());
                    }
                    debug!(target: "tpc::protocol", "coordinator: COMMIT record + e-mail forced to the log (the commit point)");
                    if inject("coord.after_decision_forced").await.is_err() {
                        fatal("injected failure after the forced write");
                    }
                    // Durable now, so it may be sent. (If the dispatcher is gone, the process is
                    // stopping, and recovery finds the entry in the log.)
                    let _ = outbox.send(mail);
                    Some(Event::CommitForced { txn })
                });
            }
            Command::LogAbort { note } => {
                debug!(target: "tpc::protocol", txn_id = %note.txn, reason = %note.reason, "coordinator: decision ABORT (nothing forced: presumed abort)");
                // Unawaited: the listing's note, not a decision (a failure is logged where it happens).
                drop(self.log.note_abort(&note));
            }
            Command::SendAbort { txn, to } => {
                let peers = self.peers.clone();
                debug!(target: "tpc::protocol", txn_id = %txn, "coordinator → {}: Abort", to.name());
                self.spawn(txn, async move {
                    // A participant still forcing its PREPARED record answers "in progress" and holds
                    // the user until the write lands: wait for that (briefly), so the user's next
                    // change does not meet the lock. Any other failure is not retried: a participant
                    // that prepared will ask, and hear "aborted".
                    let mut pause = ABORT_RETRY_FIRST;
                    let give_up = tokio::time::Instant::now() + ABORT_RETRY_FOR;
                    loop {
                        match peers.abort(to, txn).await {
                            Err(error)
                                if error.contains(tpc_proto::IN_PROGRESS)
                                    && tokio::time::Instant::now() < give_up =>
                            {
                                tokio::time::sleep(pause).await;
                                pause = (pause * 2).min(ABORT_RETRY_MAX);
                            }
                            Err(error) => {
                                debug!(txn_id = %txn, participant = to.name(), %error, "abort not delivered");
                                break;
                            }
                            Ok(()) => break,
                        }
                    }
                    Some(Event::AbortDelivered { txn, to })
                });
            }
            Command::Reply { clients, outcome } => self.waiters.reply(clients, &outcome),
            Command::Reject { client, refusal } => self.waiters.reject(client, refusal),
            Command::SendCommit {
                txn,
                to,
                after,
                attempt,
            } => {
                let peers = self.peers.clone();
                self.spawn(txn, async move {
                    tokio::time::sleep(after).await;
                    debug!(target: "tpc::protocol", attempt, "coordinator → {}: Commit", to.name());
                    let (mut acked, store) = peers.commit(to, txn).await;
                    if acked.is_ok()
                        && to == Participant::ALL[0]
                        && inject("coord.after_first_commit_sent").await.is_err()
                    {
                        acked = Err("injected: the acknowledgement was lost".into());
                    }
                    match acked {
                        Ok(()) => {
                            debug!(target: "tpc::protocol", "{} → coordinator: ack Commit", to.name());
                            Some(reported(to, store, Event::CommitAcked { txn, from: to }))
                        }
                        Err(error) => {
                            warn!(txn_id = %txn, participant = to.name(), %error, attempt, "commit not acknowledged; will resend");
                            Some(reported(to, store, Event::CommitFailed { txn, from: to, attempt }))
                        }
                    }
                });
            }
            Command::SaveStoreMark {
                participant,
                id,
                seq,
            } => {
                // Unawaited (a failure is logged where it happens): a lost mark only makes the check
                // after a crash start from an earlier one.
                drop(self.log.save_store_mark(participant.name(), &id, seq));
            }
            Command::StoreVerdict {
                participant,
                lost: Some(reason),
            } => {
                error!(
                    participant = participant.name(),
                    %reason,
                    "participant lost acknowledged changes: every change aborts until it is repaired, or restarted with --accept-data-loss"
                );
                self.serving.send_replace(self.engine.stores_whole());
            }
            Command::StoreVerdict {
                participant,
                lost: None,
            } => {
                warn!(
                    participant = participant.name(),
                    "an operator accepted the participant's data loss (--accept-data-loss): changes are accepted again"
                );
                self.serving.send_replace(self.engine.stores_whole());
            }
            Command::BreakerTurned {
                participant,
                opened: true,
            } => warn!(
                participant = participant.name(),
                "participant unreachable: prepares failed in a row; new changes are refused at once until it answers again"
            ),
            Command::BreakerTurned {
                participant,
                opened: false,
            } => warn!(
                participant = participant.name(),
                "participant answers again: changes are accepted"
            ),
            Command::LogEnd { txn } => {
                let log = self.log.clone();
                let backoff = self.engine.config().commit_backoff;
                self.spawn(txn, async move {
                    // END is not forced and not needed for correctness (without it, recovery resends
                    // Commit), but without it the record is never collected: retry a while.
                    for attempt in 0..END_ATTEMPTS {
                        let ended = match inject("coord.before_end").await {
                            Ok(()) => log.end(txn).await.map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        match ended {
                            Ok(()) => {
                                debug!(target: "tpc::protocol", "coordinator: END (every participant acknowledged)");
                                return None;
                            }
                            Err(cause) => {
                                warn!(txn_id = %txn, %cause, attempt, "END not written; retrying");
                                tokio::time::sleep(backoff.delay(attempt)).await;
                            }
                        }
                    }
                    warn!(txn_id = %txn, "END not written; recovery will resend Commit");
                    None
                });
            }
        }
    }
}

/// `read` of the log on the blocking pool; its failure, or the pool's, as words.
async fn read_off_thread<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, crate::log::LogError> + Send + 'static,
) -> Result<T, String> {
    match tpc_common::blocking::run(read).await {
        Ok(read) => read.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// How often writing END is tried before leaving it to recovery.
const END_ATTEMPTS: u32 = 10;

/// A forced write that failed leaves no durable decision to stand on: stop, and let recovery start from
/// what is on disk (presumed abort for anything not forced), as databases do when `fsync` fails.
fn fatal(cause: &str) -> ! {
    error!(%cause, "cannot force the COMMIT record; aborting the process");
    tpc_common::simulation::abort()
}
