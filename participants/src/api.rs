//! The participants' gRPC services: `tpc.v1.Participant` (both; each step singly or in batches),
//! `tpc.v1.PasswordReader` and `tpc.v1.HistoryReader`. Wire types are converted and validated here; the
//! engine sees domain types.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tpc_common::{
    Operation, Password, Strategy, TxnId, UserId, monotonic_ms, now_ms, telemetry, wire,
};
use tpc_proto::MAX_BATCH;
use tpc_proto::v1::history_reader_server::HistoryReader;
use tpc_proto::v1::participant_server::Participant;
use tpc_proto::v1::password_reader_server::PasswordReader;
use tpc_proto::v1::{
    AbortRequest, Ack, ApplyRequest, ApplyResponse, BatchResults, BatchStatus, CommitRequest,
    CompensateRequest, GetHistoryRequest, GetUserRequest, History, ParticipantStatus,
    PrepareBatchRequest, PrepareBatchResponse, PrepareRequest, PrepareResponse, PrepareResult,
    StatusRequest, TxnBatch, User, VerifyPasswordRequest, VerifyPasswordResponse, apply_response,
    history, prepare_response,
};
use tracing::{Instrument, debug_span};

use crate::barrier::Applied;
use crate::engine::{Event, Vote};
use crate::history::{Histories, entries};
use crate::node::{Node, Reply, detached};
use crate::password::{Account, Passwords};
use crate::resource::Resource;
use tpc_common::Principal;
use tpc_common::guard::Guard;
use tpc_common::tls::Internal;

/// `tpc.v1.Participant` for either resource, on the internal listener.
pub struct ParticipantApi<R: Resource> {
    pub node: Arc<Node<R>>,
    /// Who may call: the protocol is the coordinator's alone, the status an operator's.
    pub access: Internal,
    /// Started with `--accept-data-loss`: tell the coordinator to start again from this store.
    pub accept_data_loss: bool,
}

impl<R: Resource> ParticipantApi<R> {
    fn store_mark(&self) -> tpc_proto::v1::StoreMark {
        store_mark(&self.node, self.accept_data_loss)
    }
}

fn store_mark<R: Resource>(node: &Node<R>, accept_loss: bool) -> tpc_proto::v1::StoreMark {
    let mark = node.store_mark();
    tpc_proto::v1::StoreMark {
        id: mark.id,
        boot: mark.boot,
        seq: mark.seq,
        accept_loss,
    }
}

/// The protocol's callers: a participant that let anyone else Prepare or Commit would let a client
/// change a password the coordinator never heard of.
const DRIVER: &[Principal] = &[Principal::Coordinator];
/// In-doubt transactions and lock counts: for operators, not for the public.
const OBSERVER: &[Principal] = &[Principal::Admin];

fn txn_span<T>(
    request: &Request<T>,
    rpc: &'static str,
    participant: &'static str,
    txn: &str,
) -> tracing::Span {
    let propagated = telemetry::txn_id_from(request);
    debug_span!(
        "rpc",
        rpc,
        participant,
        txn_id = propagated.as_deref().unwrap_or(txn)
    )
}

#[tonic::async_trait]
impl<R: Resource> Participant for ParticipantApi<R> {
    async fn prepare(
        &self,
        request: Request<PrepareRequest>,
    ) -> Result<Response<PrepareResponse>, Status> {
        self.access.authorize(&request, DRIVER)?;
        let span = txn_span(&request, "Prepare", R::NAME, &request.get_ref().txn_id);
        let node = self.node.clone();
        let work = async move { prepare_one(&node, request.into_inner()).await };
        detached(work.instrument(span)).await.map(Response::new)
    }

    async fn commit(&self, request: Request<CommitRequest>) -> Result<Response<Ack>, Status> {
        self.access.authorize(&request, DRIVER)?;
        let span = txn_span(&request, "Commit", R::NAME, &request.get_ref().txn_id);
        let node = self.node.clone();
        let work = async move { decide(&node, &request.get_ref().txn_id, Decide::Commit).await };
        detached(work.instrument(span)).await?;
        Ok(Response::new(Ack {}))
    }

    async fn abort(&self, request: Request<AbortRequest>) -> Result<Response<Ack>, Status> {
        self.access.authorize(&request, DRIVER)?;
        let span = txn_span(&request, "Abort", R::NAME, &request.get_ref().txn_id);
        let node = self.node.clone();
        let work = async move { decide(&node, &request.get_ref().txn_id, Decide::Abort).await };
        detached(work.instrument(span)).await?;
        Ok(Response::new(Ack {}))
    }

    async fn prepare_batch(
        &self,
        request: Request<PrepareBatchRequest>,
    ) -> Result<Response<PrepareBatchResponse>, Status> {
        self.access.authorize(&request, DRIVER)?;
        let prepares = request.into_inner().prepares;
        check_batch(prepares.len())?;
        let results = each(&self.node, prepares, |node, req| async move {
            let span =
                debug_span!("rpc", rpc = "Prepare", participant = R::NAME, txn_id = %req.txn_id);
            match prepare_one(&node, req).instrument(span).await {
                Ok(vote) => PrepareResult {
                    vote: Some(vote),
                    status: Some(ok()),
                },
                Err(status) => PrepareResult {
                    vote: None,
                    status: Some(failure(&status)),
                },
            }
        })
        .await?;
        // Read after the batch's work: the mark covers every vote in it.
        Ok(Response::new(PrepareBatchResponse {
            results,
            store: Some(self.store_mark()),
        }))
    }

    async fn commit_batch(
        &self,
        request: Request<TxnBatch>,
    ) -> Result<Response<BatchResults>, Status> {
        self.access.authorize(&request, DRIVER)?;
        let mut answer = decide_batch(&self.node, request.into_inner(), Decide::Commit).await?;
        answer.get_mut().store = Some(self.store_mark());
        Ok(answer)
    }

    async fn abort_batch(
        &self,
        request: Request<TxnBatch>,
    ) -> Result<Response<BatchResults>, Status> {
        self.access.authorize(&request, DRIVER)?;
        let mut answer = decide_batch(&self.node, request.into_inner(), Decide::Abort).await?;
        answer.get_mut().store = Some(self.store_mark());
        Ok(answer)
    }

    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        self.access.authorize(&request, DRIVER)?;
        let span = txn_span(&request, "Apply", R::NAME, &request.get_ref().txn_id);
        let node = self.node.clone();
        let work = async move {
            let req = request.into_inner();
            let txn = TxnId::parse(&req.txn_id)?;
            let strategy = local_strategy(req.strategy)?;
            let op = Operation::try_from(req.operation)?;
            node.apply_local(txn, strategy, op).await
        };
        let (outcome, reason, email) = match detached(work.instrument(span)).await? {
            Applied::Yes(detail) => (apply_response::Outcome::Applied, String::new(), detail),
            Applied::No(reason) => (apply_response::Outcome::Refused, reason, String::new()),
        };
        Ok(Response::new(ApplyResponse {
            outcome: outcome.into(),
            reason,
            email,
        }))
    }

    async fn compensate(
        &self,
        request: Request<CompensateRequest>,
    ) -> Result<Response<Ack>, Status> {
        self.access.authorize(&request, DRIVER)?;
        let span = txn_span(&request, "Compensate", R::NAME, &request.get_ref().txn_id);
        let node = self.node.clone();
        let work = async move {
            let req = request.into_inner();
            let txn = TxnId::parse(&req.txn_id)?;
            let strategy = local_strategy(req.strategy)?;
            let user = UserId::parse(&req.user_id)?;
            node.compensate_local(txn, strategy, user).await
        };
        detached(work.instrument(span)).await?;
        Ok(Response::new(Ack {}))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<ParticipantStatus>, Status> {
        self.access.authorize(&request, OBSERVER)?;
        let (in_doubt, locked) = self.node.status();
        Ok(Response::new(ParticipantStatus {
            in_doubt: in_doubt.iter().map(TxnId::to_string).collect(),
            locked_users: locked as u32,
        }))
    }
}

/// The strategy of an `Apply` or `Compensate`: saga or events (two-phase commit prepares instead).
fn local_strategy(wire: i32) -> Result<Strategy, Status> {
    match tpc_proto::v1::Strategy::try_from(wire) {
        Ok(tpc_proto::v1::Strategy::Saga) => Ok(Strategy::Saga),
        Ok(tpc_proto::v1::Strategy::Events) => Ok(Strategy::Events),
        _ => Err(Status::invalid_argument(
            "strategy must be SAGA or EVENTS (two-phase commit uses Prepare)",
        )),
    }
}

/// Phase one for one transaction: what `Prepare` does, and each item of `PrepareBatch`.
async fn prepare_one<R: Resource>(
    node: &Arc<Node<R>>,
    req: PrepareRequest,
) -> Result<PrepareResponse, Status> {
    let txn = TxnId::parse(&req.txn_id)?;
    let op = Operation::try_from(req.operation)?;
    // A store that lost acknowledged changes votes no, saying why: its answer is worth nothing, and a
    // failed call would read as "unreachable" to the coordinator.
    if let Err(lost) = node.serving() {
        return Ok(PrepareResponse {
            vote: prepare_response::Vote::No.into(),
            reason: lost.message().to_owned(),
            email: String::new(),
        });
    }
    let event = Event::PrepareRequested {
        txn,
        user: op.user().clone(),
        wall_ms: now_ms(),
        payload: Some(node.fingerprint(&op)),
    };
    match node.clone().step(event, Some(op)).await? {
        Reply::Vote(Vote::Yes(change)) => Ok(PrepareResponse {
            vote: prepare_response::Vote::Yes.into(),
            reason: String::new(),
            email: R::vote_detail(&change),
        }),
        Reply::Vote(Vote::No(reason)) => Ok(PrepareResponse {
            vote: prepare_response::Vote::No.into(),
            reason,
            email: String::new(),
        }),
        Reply::Ack | Reply::Nothing => Err(Status::internal("prepare was not answered")),
    }
}

#[derive(Clone, Copy)]
enum Decide {
    Commit,
    Abort,
}

/// Phase two for one transaction: what `Commit` and `Abort` do, and each item of their batches.
async fn decide<R: Resource>(node: &Arc<Node<R>>, txn: &str, how: Decide) -> Result<(), Status> {
    let txn = TxnId::parse(txn)?;
    let event = match how {
        Decide::Commit => Event::CommitRequested { txn },
        Decide::Abort => Event::AbortRequested {
            txn,
            at: monotonic_ms(),
        },
    };
    node.clone().step(event, None).await.map(drop)
}

async fn decide_batch<R: Resource>(
    node: &Arc<Node<R>>,
    batch: TxnBatch,
    how: Decide,
) -> Result<Response<BatchResults>, Status> {
    check_batch(batch.txn_ids.len())?;
    let rpc = match how {
        Decide::Commit => "Commit",
        Decide::Abort => "Abort",
    };
    let results = each(node, batch.txn_ids, move |node, txn| async move {
        let span = debug_span!("rpc", rpc, participant = R::NAME, txn_id = %txn);
        match decide(&node, &txn, how).instrument(span).await {
            Ok(()) => ok(),
            Err(status) => failure(&status),
        }
    })
    .await?;
    Ok(Response::new(BatchResults {
        results,
        store: None,
    }))
}

fn check_batch(len: usize) -> Result<(), Status> {
    if len > MAX_BATCH {
        return Err(Status::invalid_argument(format!(
            "a batch holds at most {MAX_BATCH} transactions, not {len}"
        )));
    }
    Ok(())
}

/// Runs `work` for every item at once, each in a task of its own (a transaction proceeds on its own,
/// as with single calls, and runs to its end even if the batch's caller goes away), and returns the
/// results in the items' order.
async fn each<R, T, O, F, Fut>(
    node: &Arc<Node<R>>,
    items: Vec<T>,
    work: F,
) -> Result<Vec<O>, Status>
where
    R: Resource,
    T: Send + 'static,
    O: Send + 'static,
    F: Fn(Arc<Node<R>>, T) -> Fut,
    Fut: Future<Output = O> + Send + 'static,
{
    let running: Vec<_> = items
        .into_iter()
        .map(|item| tokio::spawn(work(node.clone(), item)))
        .collect();
    let mut results = Vec::with_capacity(running.len());
    for done in running {
        results.push(
            done.await
                .map_err(|_| Status::internal("batch item failed"))?,
        );
    }
    Ok(results)
}

fn ok() -> BatchStatus {
    BatchStatus {
        code: tonic::Code::Ok as i32,
        message: String::new(),
    }
}

fn failure(status: &Status) -> BatchStatus {
    BatchStatus {
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

/// `tpc.v1.PasswordReader`.
pub struct PasswordApi(pub Arc<Node<Passwords>>, pub Arc<Guard>);

#[tonic::async_trait]
impl PasswordReader for PasswordApi {
    async fn verify_password(
        &self,
        request: Request<VerifyPasswordRequest>,
    ) -> Result<Response<VerifyPasswordResponse>, Status> {
        let from = request.remote_addr().map(|a| a.ip());
        let req = request.into_inner();
        let user = UserId::parse(&req.user_id)?;
        let password = Password::new("password", req.password)?;
        // A guess like any other: throttled before any work.
        self.1
            .admit(&user, from)
            .map_err(tpc_common::guard::throttled)?;
        // An unknown user is verified against the decoy: "no", in the same time as a wrong password,
        // so the answer tells nobody which user ids exist.
        let hash = match self.0.read::<Account>(&user).await {
            Ok(account) => account.hash,
            Err(status) if status.code() == tonic::Code::NotFound => {
                self.0.resource().decoy().to_owned()
            }
            Err(status) => return Err(status),
        };
        // The cost comes from the stored hash, whatever the hasher was made with.
        let hasher = crate::hashing::Hasher::new(Default::default());
        let valid = self
            .0
            .hash_work(move || hasher.verify(&password, &hash))
            .await?;
        if valid {
            self.1.succeeded(&user, from);
        } else {
            self.1.failed(&user, from);
        }
        Ok(Response::new(VerifyPasswordResponse { valid }))
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let user = UserId::parse(&request.get_ref().user_id)?;
        let account: Account = self.0.read(&user).await?;
        Ok(Response::new(User {
            user_id: user.to_string(),
            email: account.email.to_string(),
            version: account.version.to_string(),
        }))
    }
}

/// `tpc.v1.HistoryReader`.
pub struct HistoryApi(pub Arc<Node<Histories>>);

#[tonic::async_trait]
impl HistoryReader for HistoryApi {
    async fn get_history(
        &self,
        request: Request<GetHistoryRequest>,
    ) -> Result<Response<History>, Status> {
        let user = UserId::parse(&request.get_ref().user_id)?;
        let entries = self.0.read_with(&user, entries).await?;
        Ok(Response::new(History {
            entries: entries
                .into_iter()
                .map(|e| history::Entry {
                    txn_id: e.txn.to_string(),
                    changed_at: Some(wire::timestamp(e.changed_at)),
                })
                .collect(),
        }))
    }
}
