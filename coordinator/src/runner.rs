//! The strategy the coordinator runs, behind one handle for the gRPC API and the garbage collector.

use tpc_common::{Operation, Strategy, TxnId};

use crate::engine::{self, Active, Decision};
use crate::events::Events;
use crate::runtime::{Answer, Coordinator, Stopped};
use crate::saga::{self, Saga};

#[derive(Clone)]
pub enum Runner {
    TwoPc(Coordinator),
    Saga(Saga),
    Events(Events),
}

impl Runner {
    pub fn strategy(&self) -> Strategy {
        match self {
            Runner::TwoPc(_) => Strategy::TwoPc,
            Runner::Saga(_) => Strategy::Saga,
            Runner::Events(_) => Strategy::Events,
        }
    }

    /// Runs `op` (or joins the run already going for `request_id`).
    pub async fn execute(
        &self,
        txn: TxnId,
        request_id: String,
        op: Operation,
    ) -> Result<Answer, Stopped> {
        match self {
            Runner::TwoPc(c) => c.execute(txn, request_id, op).await,
            Runner::Saga(s) => s.execute(txn, request_id, op).await,
            Runner::Events(e) => e.execute(txn, request_id, op).await,
        }
    }

    /// The answer to a participant's `QueryDecision`. Only two-phase commit leaves participants in
    /// doubt; a saga or an event never prepares, so nothing of theirs can be committed by this answer.
    pub async fn decision(&self, txn: TxnId) -> Result<Decision, Stopped> {
        match self {
            Runner::TwoPc(c) => c.decision(txn).await,
            Runner::Saga(_) | Runner::Events(_) => Ok(Decision::Aborted),
        }
    }

    /// Transactions in memory that the log may not show yet (2PC: collecting votes). Sagas and
    /// events are in the log from their first step.
    pub async fn active(&self) -> Result<Vec<Active>, Stopped> {
        match self {
            Runner::TwoPc(c) => c.active().await,
            Runner::Saga(_) | Runner::Events(_) => Ok(Vec::new()),
        }
    }

    /// The log collected a finished transaction: forget its request id.
    pub fn forgotten(&self, txn: TxnId, request_id: String) {
        match self {
            Runner::TwoPc(c) => c.notify(engine::Event::Forgotten { txn, request_id }),
            Runner::Saga(s) => s.notify(saga::Event::Forgotten { txn, request_id }),
            Runner::Events(e) => e.forgotten(&request_id),
        }
    }
}
