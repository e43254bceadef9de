//! What the coordinator's runtimes (two-phase commit, saga) share around their engines: the clients
//! waiting for an answer, and the short tasks that report back as events.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};
use tpc_common::TxnId;
use tracing::Instrument;

use crate::engine::{Outcome, Refusal};
use crate::runtime::Answer;

/// Clients waiting for an answer, by the id their request was given.
#[derive(Default)]
pub struct Waiting(HashMap<TxnId, oneshot::Sender<Answer>>);

impl Waiting {
    pub fn insert(&mut self, client: TxnId, reply: oneshot::Sender<Answer>) {
        self.0.insert(client, reply);
    }

    pub fn reply(&mut self, clients: Vec<TxnId>, outcome: &Outcome) {
        for client in clients {
            if let Some(waiter) = self.0.remove(&client) {
                let _ = waiter.send(Ok(outcome.clone()));
            }
        }
    }

    pub fn reject(&mut self, client: TxnId, refusal: Refusal) {
        if let Some(waiter) = self.0.remove(&client) {
            let _ = waiter.send(Err(refusal));
        }
    }
}

/// Runs `work` in its own task (in `span`) and feeds what it returns back to the runtime; weak, so
/// the runtime stops when its last handle is gone.
pub fn spawn_reporting<I: Send + 'static>(
    inputs: &mpsc::WeakUnboundedSender<I>,
    span: tracing::Span,
    work: impl Future<Output = Option<I>> + Send + 'static,
) {
    let inputs = inputs.clone();
    tokio::spawn(
        async move {
            if let Some(input) = work.await
                && let Some(inputs) = inputs.upgrade()
            {
                let _ = inputs.send(input);
            }
        }
        .instrument(span),
    );
}
