//! The saga runtime: one task owns the orchestrator engine; every command runs as a short task (an
//! `Apply`, a `Compensate`, a forced write) that reports back as an event. The same shape as the 2PC
//! runtime.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tpc_common::fault::inject;
use tpc_common::{Operation, Strategy, TxnId, now_ms};
use tracing::{debug, debug_span, error, warn};

use super::engine::{Command, Engine, Event, StepResult, Unfinished};
use crate::clients::{Waiting, spawn_reporting};
use crate::email;
use crate::log::{Log, OutboxEntry, State, abort_record};
use crate::peers::Peers;
use crate::runtime::{Answer, Stopped};

enum Input {
    Event(Event),
    Begin {
        txn: TxnId,
        request_id: String,
        op: Operation,
        reply: oneshot::Sender<Answer>,
    },
}

/// Handle to the running saga orchestrator.
#[derive(Clone)]
pub struct Saga {
    inputs: mpsc::UnboundedSender<Input>,
}

impl Saga {
    /// Reads the log, compensates the sagas it finds unfinished, and starts; returns at once.
    pub fn start(
        mut engine: Engine,
        log: Arc<Log>,
        peers: Peers,
        outbox: mpsc::UnboundedSender<OutboxEntry>,
    ) -> Result<Self, crate::log::LogError> {
        let (mut unfinished, mut completed) = (Vec::new(), Vec::new());
        for r in log.records()? {
            match r.state {
                State::Running | State::Compensating => unfinished.push(Unfinished {
                    txn: r.txn,
                    request_id: r.request_id,
                    kind: r.kind,
                    user: r.user,
                    started_at: r.started_at,
                }),
                State::Committed | State::Committing => {
                    completed.push((r.request_id, r.txn, r.kind, r.user))
                }
                State::Aborted => {}
            }
        }
        if !unfinished.is_empty() {
            warn!(target: "tpc::protocol", sagas = unfinished.len(), "recovery: compensating the sagas that were running at the crash");
        }
        let recovered = engine.handle(
            Event::Recovered {
                unfinished,
                completed,
            },
            now_ms(),
        );
        let (inputs, rx) = mpsc::unbounded_channel();
        let actor = Actor {
            engine,
            log,
            peers,
            outbox,
            waiters: Waiting::default(),
            inputs: inputs.downgrade(),
        };
        tokio::spawn(actor.run(rx, recovered));
        Ok(Self { inputs })
    }

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

    pub fn notify(&self, event: Event) {
        let _ = self.inputs.send(Input::Event(event));
    }
}

struct Actor {
    engine: Engine,
    log: Arc<Log>,
    peers: Peers,
    outbox: mpsc::UnboundedSender<OutboxEntry>,
    waiters: Waiting,
    inputs: mpsc::WeakUnboundedSender<Input>,
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
            }
        }
    }

    fn handle(&mut self, event: Event) {
        for command in self.engine.handle(event, now_ms()) {
            self.execute(command);
        }
    }

    fn spawn(&self, txn: TxnId, work: impl Future<Output = Option<Event>> + Send + 'static) {
        let work = async move { work.await.map(Input::Event) };
        spawn_reporting(&self.inputs, debug_span!("saga", txn_id = %txn), work);
    }

    fn execute(&mut self, command: Command) {
        match command {
            Command::ForceStart {
                txn,
                request_id,
                kind,
                user,
                started_at,
            } => {
                let log = self.log.clone();
                self.spawn(txn, async move {
                    let record = crate::log::TxnRecord {
                        txn,
                        strategy: Strategy::Saga,
                        request_id,
                        kind,
                        user,
                        email: None,
                        state: State::Running,
                        reason: String::new(),
                        started_at,
                        decided_at: 0,
                        email_sent: false,
                        email_error: None,
                    };
                    if let Err(e) = log.force(&record).await {
                        fatal(&e.to_string());
                    }
                    if inject("saga.after_start_forced").await.is_err() {
                        fatal("injected failure after the saga's start was forced");
                    }
                    debug!(target: "tpc::protocol", "saga: start forced");
                    Some(Event::StartForced { txn })
                });
            }
            Command::SendApply { txn, step, op } => {
                let peers = self.peers.clone();
                debug!(target: "tpc::protocol", txn_id = %txn, "saga → {}: Apply", step.name());
                self.spawn(txn, async move {
                    let result = match peers.apply(step, txn, Strategy::Saga, &op).await {
                        Ok(result) => result,
                        Err(status) => StepResult::Unknown {
                            error: format!("{}: {}", status.code(), status.message()),
                        },
                    };
                    debug!(target: "tpc::protocol", "{} → saga: {result:?}", step.name());
                    let result = match inject("saga.after_apply").await {
                        Ok(()) => result,
                        Err(_) => StepResult::Unknown {
                            error: "injected: the answer was lost".into(),
                        },
                    };
                    Some(Event::StepDone { txn, step, result })
                });
            }
            Command::ForceCompleted { record } => {
                let (log, outbox) = (self.log.clone(), self.outbox.clone());
                let txn = record.txn;
                self.spawn(txn, async move {
                    let mail = email::compose(&record);
                    let forced = log
                        .force_decision(
                            Strategy::Saga,
                            State::Committed,
                            &record,
                            &mail,
                            tpc_common::storage::Batch::default(),
                        )
                        .await;
                    if let Err(e) = forced {
                        fatal(&e.to_string());
                    }
                    if inject("saga.after_completed_forced").await.is_err() {
                        fatal("injected failure after the completion was forced");
                    }
                    debug!(target: "tpc::protocol", "saga: every step applied; completion + e-mail forced");
                    let _ = outbox.send(mail);
                    Some(Event::CompletedForced { txn })
                });
            }
            Command::LogCompensating { note } => {
                debug!(target: "tpc::protocol", txn_id = %note.txn, reason = %note.reason, "saga: compensating");
                let record = abort_record(Strategy::Saga, State::Compensating, &note);
                // Unawaited (a failure is logged where it happens): recovery compensates a saga left
                // running all the same.
                drop(self.log.insert(&record));
            }
            Command::LogAborted { note } => {
                let record = abort_record(Strategy::Saga, State::Aborted, &note);
                drop(self.log.insert(&record));
            }
            Command::SendCompensate {
                txn,
                step,
                user,
                after,
                attempt,
            } => {
                let peers = self.peers.clone();
                self.spawn(txn, async move {
                    tokio::time::sleep(after).await;
                    debug!(target: "tpc::protocol", attempt, "saga → {}: Compensate", step.name());
                    let sent = match inject("saga.before_compensate").await {
                        Ok(()) => peers.compensate(step, txn, &user).await,
                        Err(_) => Err("injected: the compensation was lost".into()),
                    };
                    match sent {
                        Ok(()) => Some(Event::Compensated { txn, step }),
                        Err(error) => {
                            warn!(txn_id = %txn, participant = step.name(), %error, attempt, "compensation not acknowledged; will resend");
                            Some(Event::CompensateFailed { txn, step, attempt })
                        }
                    }
                });
            }
            Command::LogCompensated { txn } => {
                debug!(target: "tpc::protocol", txn_id = %txn, "saga: compensated");
                drop(self.log.set_state(txn, State::Aborted));
            }
            Command::Reply { clients, outcome } => self.waiters.reply(clients, &outcome),
            Command::Reject { client, refusal } => self.waiters.reject(client, refusal),
        }
    }
}

fn fatal(cause: &str) -> ! {
    error!(%cause, "saga log write failed; aborting the process");
    tpc_common::simulation::abort()
}
