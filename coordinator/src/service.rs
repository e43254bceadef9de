//! The coordinator's gRPC API: `tpc.v1.PasswordService` for clients and `tpc.v1.TransactionManager` for
//! operators and in-doubt participants. Requests are validated here, before any transaction starts.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tpc_common::{Email, Operation, Password, Strategy, TxnId, UserId, wire::timestamp};
use tpc_proto::v1::password_service_server::PasswordService;
use tpc_proto::v1::transaction_manager_server::TransactionManager;
use tpc_proto::v1::{
    GetTransactionRequest, ListTransactionsRequest, ListTransactionsResponse, QueryDecisionRequest,
    QueryDecisionResponse, RegisterUserRequest, Transaction, TransactionResult,
    UpdatePasswordRequest, query_decision_response, transaction, transaction_result,
};
use tracing::{Instrument, debug, debug_span, info};

use crate::engine::{Active, Decision, Participant, Refusal};
use crate::log::{Log, LogError, State, TxnRecord};
use crate::runner::Runner;
use tpc_common::Principal;
use tpc_common::guard::{self, Guard};
use tpc_common::tls::Internal;

/// What a wrong current password and an unknown user both get (the password participant says so).
const INVALID_CREDENTIALS: &str = "invalid credentials";
use crate::runtime::Stopped;

pub struct Api {
    pub coordinator: Runner,
    pub log: Arc<Log>,
    /// Throttles password guesses (`UpdatePassword` checks the current password).
    pub guard: Arc<Guard>,
    /// Who may call the internal service: see [`ADMIN`] and [`PARTICIPANTS`].
    pub access: Internal,
    /// Set when this coordinator is one of several (high availability on etcd).
    pub leadership: Option<Arc<dyn Leadership>>,
}

/// A coordinator elected among several, which may have been deposed without knowing it yet (paused,
/// partitioned from etcd while another was elected).
pub trait Leadership: Send + Sync + 'static {
    /// Whether this process still leads, asked of the replicated store, not remembered.
    fn still_leading(&self) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>>;
}

const MAX_REQUEST_ID: usize = 128;

impl From<Stopped> for Status {
    fn from(e: Stopped) -> Self {
        Status::unavailable(e.to_string())
    }
}

impl Api {
    async fn run(
        &self,
        request_id: String,
        op: Operation,
    ) -> Result<Response<TransactionResult>, Status> {
        if request_id.len() > MAX_REQUEST_ID {
            return Err(Status::invalid_argument(format!(
                "request_id is longer than {MAX_REQUEST_ID} bytes"
            )));
        }
        let request_id = if request_id.is_empty() {
            tpc_common::entropy::uuid_v7().to_string()
        } else {
            request_id
        };
        let txn = TxnId::generate();
        // The span is for debug narration: at info, the one line below carries the same fields, and a
        // span per change cost its fields formatted and a registry entry every time.
        let (kind, user) = (op.kind().as_str(), op.user().clone());
        let span = debug_span!("txn", txn_id = %txn, kind, user = %user);
        let outcome = async {
            debug!(target: "tpc::protocol", request_id, "client → coordinator: {}", op.kind().as_str());
            let outcome = self
                .coordinator
                .execute(txn, request_id, op)
                .await?
                .map_err(refusal_status)?;
            // The coordinator's one line per transaction at info level: every transaction's fate is
            // logged, at a cost that stays small at full load.
            info!(
                target: "tpc::protocol",
                txn_id = %txn,
                kind,
                user = %user,
                request_id = %outcome.request_id,
                committed = outcome.committed,
                reason = %outcome.reason,
                "coordinator → client: {}",
                if outcome.committed { "COMMITTED" } else { "ABORTED" }
            );
            Ok::<_, Status>(outcome)
        }
        .instrument(span)
        .await?;
        Ok(Response::new(TransactionResult {
            txn_id: outcome.txn.to_string(),
            outcome: if outcome.committed {
                transaction_result::Outcome::Committed
            } else {
                transaction_result::Outcome::Aborted
            }
            .into(),
            reason: outcome.reason,
            request_id: outcome.request_id,
        }))
    }
}

#[tonic::async_trait]
impl PasswordService for Api {
    async fn register_user(
        &self,
        request: Request<RegisterUserRequest>,
    ) -> Result<Response<TransactionResult>, Status> {
        let req = request.into_inner();
        let op = Operation::Register {
            user: UserId::parse(&req.user_id)?,
            email: Email::parse(&req.email)?,
            password: Password::new("password", req.password)?,
        };
        self.run(req.request_id, op).await
    }

    async fn update_password(
        &self,
        request: Request<UpdatePasswordRequest>,
    ) -> Result<Response<TransactionResult>, Status> {
        let from = request.remote_addr().map(|a| a.ip());
        let req = request.into_inner();
        let user = UserId::parse(&req.user_id)?;
        let op = Operation::Update {
            user: user.clone(),
            current: Password::new("current_password", req.current_password)?,
            new: Password::new("new_password", req.new_password)?,
        };
        // Refused before any work when this address has guessed too often.
        self.guard.admit(&user, from).map_err(guard::throttled)?;
        let answer = self.run(req.request_id, op).await?;
        let result = answer.get_ref();
        if result.outcome() == transaction_result::Outcome::Committed {
            self.guard.succeeded(&user, from);
        } else if result.reason == INVALID_CREDENTIALS {
            self.guard.failed(&user, from);
        }
        Ok(answer)
    }
}

/// Every user id and request id the coordinator holds: for operators only.
const ADMIN: &[Principal] = &[Principal::Admin];
/// A decision is asked for by the participants in doubt (an operator has `GetTransaction`).
const PARTICIPANTS: &[Principal] = &[Principal::Password, Principal::History];

#[tonic::async_trait]
impl TransactionManager for Api {
    async fn get_transaction(
        &self,
        request: Request<GetTransactionRequest>,
    ) -> Result<Response<Transaction>, Status> {
        self.access.authorize(&request, ADMIN)?;
        let txn = TxnId::parse(&request.get_ref().txn_id)?;
        let active = self.coordinator.active().await?;
        if let Some(a) = active.iter().find(|a| a.txn == txn && !a.decided) {
            return Ok(Response::new(from_active(a)));
        }
        let log = self.log.clone();
        let recorded = tpc_common::blocking::run(move || log.get(txn))
            .await
            .map_err(|_| Status::internal("reading the log failed"))?
            .map_err(internal)?;
        match recorded {
            Some(record) => Ok(Response::new(from_record(&record, &active))),
            None => Err(Status::not_found(format!(
                "no transaction {txn} (unknown, collected, or aborted before a crash)"
            ))),
        }
    }

    async fn list_transactions(
        &self,
        request: Request<ListTransactionsRequest>,
    ) -> Result<Response<ListTransactionsResponse>, Status> {
        self.access.authorize(&request, ADMIN)?;
        let req = request.into_inner();
        let limit = match req.limit {
            0 => 100,
            n => n.min(1_000_000) as usize,
        };
        // An unknown state is a mistake to say so, not "all" (what prost's default would make of it).
        let wanted = transaction::State::try_from(req.state).map_err(|_| {
            Status::invalid_argument(format!(
                "unknown state {}: expected ACTIVE, COMMITTING, COMMITTED, ABORTED or COMPENSATING (or none)",
                req.state
            ))
        })?;
        let before = match req.before.as_str() {
            "" => None,
            id => Some(TxnId::parse(id).map_err(|_| {
                Status::invalid_argument(
                    "before: not a transaction id (the last txn_id of the page before)",
                )
            })?),
        };
        let active = self.coordinator.active().await?;
        let older_than = before.map(|txn| txn.to_string());
        let wants = move |t: &Transaction| {
            (wanted == transaction::State::Unspecified || t.state() == wanted)
                && older_than.as_ref().is_none_or(|id| t.txn_id < *id)
        };
        // On the blocking pool, and only as far back as it takes: after a day at full load the log
        // holds millions of records, and decoding them all stalled the coordinator's workers.
        let log = self.log.clone();
        let transactions = tpc_common::blocking::run(move || {
            // A transaction being forced is active in memory and may already be in the log: list it
            // once.
            let mut all = Vec::new();
            for a in active.iter().filter(|a| !a.decided) {
                let t = from_active(a);
                if wants(&t) && !log.contains(a.txn)? {
                    all.push(t);
                }
            }
            let logged = log.newest(limit, before, |r| wants(&from_record(r, &active)))?;
            all.extend(logged.iter().map(|r| from_record(r, &active)));
            all.sort_by(|a, b| b.txn_id.cmp(&a.txn_id));
            all.truncate(limit);
            Ok::<_, LogError>(all)
        })
        .await
        .map_err(|_| Status::internal("listing failed"))?
        .map_err(internal)?;
        Ok(Response::new(ListTransactionsResponse { transactions }))
    }

    async fn query_decision(
        &self,
        request: Request<QueryDecisionRequest>,
    ) -> Result<Response<QueryDecisionResponse>, Status> {
        self.access.authorize(&request, PARTICIPANTS)?;
        let txn = TxnId::parse(&request.get_ref().txn_id)?;
        let decision = match self.coordinator.decision(txn).await? {
            Decision::Pending => query_decision_response::Decision::Pending,
            Decision::Committed => query_decision_response::Decision::Committed,
            Decision::Aborted => {
                // "Aborted" is mostly presumed: this coordinator never saw a COMMIT for it. That is
                // only true of the leader; a deposed one may not have seen the new leader's commit.
                // (A COMMIT it knows of is a fact whoever leads: it was written under its fence.)
                if let Some(leadership) = &self.leadership
                    && !leadership.still_leading().await
                {
                    return Err(Status::unavailable(
                        "this coordinator no longer leads; ask the others",
                    ));
                }
                query_decision_response::Decision::Aborted
            }
        };
        debug!(target: "tpc::protocol", txn_id = %txn, "participant asked QueryDecision → {}", decision.as_str_name());
        Ok(Response::new(QueryDecisionResponse {
            decision: decision.into(),
        }))
    }
}

/// The status a refused request gets. Overload carries `grpc-retry-pushback-ms`, the gRPC retry
/// policy's hint, so a client (or a gRPC library that honours it) waits before trying again.
fn refusal_status(refusal: Refusal) -> Status {
    match &refusal {
        Refusal::RequestReused(_) => Status::failed_precondition(refusal.to_string()),
        Refusal::Internal(_) => Status::internal(refusal.to_string()),
        Refusal::Unavailable { retry_after, .. } => {
            let mut status = Status::unavailable(refusal.to_string());
            if let Ok(value) = retry_after.as_millis().to_string().parse() {
                status.metadata_mut().insert(RETRY_PUSHBACK, value);
            }
            status
        }
        Refusal::Overloaded { retry_after } => {
            let mut status = Status::resource_exhausted(refusal.to_string());
            if let Ok(value) = retry_after.as_millis().to_string().parse() {
                status.metadata_mut().insert(RETRY_PUSHBACK, value);
            }
            status
        }
    }
}

/// The gRPC retry policy's server pushback header (gRFC A6).
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn from_active(a: &Active) -> Transaction {
    Transaction {
        txn_id: a.txn.to_string(),
        state: transaction::State::Active.into(),
        kind: a.kind.as_str().into(),
        user_id: a.user.to_string(),
        request_id: a.request_id.clone(),
        reason: String::new(),
        started_at: Some(timestamp(a.started_at)),
        decided_at: None,
        acked_by: Vec::new(),
        email_sent: false,
        email_error: String::new(),
        strategy: Strategy::TwoPc.as_str().into(),
    }
}

fn from_record(r: &TxnRecord, active: &[Active]) -> Transaction {
    let state = match r.state {
        State::Committing => transaction::State::Committing,
        State::Committed => transaction::State::Committed,
        State::Aborted => transaction::State::Aborted,
        State::Running => transaction::State::Active,
        State::Compensating => transaction::State::Compensating,
    };
    let acked_by = match r.state {
        State::Committed => Participant::ALL
            .iter()
            .map(|p| p.name().to_owned())
            .collect(),
        State::Committing => active
            .iter()
            .find(|a| a.txn == r.txn)
            .map(|a| a.acked.iter().map(|p| p.name().to_owned()).collect())
            .unwrap_or_default(),
        State::Aborted | State::Running | State::Compensating => Vec::new(),
    };
    Transaction {
        txn_id: r.txn.to_string(),
        state: state.into(),
        kind: r.kind.as_str().into(),
        user_id: r.user.to_string(),
        request_id: r.request_id.clone(),
        reason: r.reason.clone(),
        started_at: Some(timestamp(r.started_at)),
        decided_at: Some(timestamp(r.decided_at)),
        acked_by,
        email_sent: r.email_sent,
        email_error: r.email_error.clone().unwrap_or_default(),
        strategy: r.strategy.as_str().into(),
    }
}
