//! The participants' gRPC services: `tpc.v1.Participant` (both), `tpc.v1.PasswordReader` and
//! `tpc.v1.HistoryReader`. Wire types are converted and validated here; the engine sees domain types.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tpc_common::{Operation, Password, TxnId, UserId, now_ms, telemetry, wire};
use tpc_proto::v1::history_reader_server::HistoryReader;
use tpc_proto::v1::participant_server::Participant;
use tpc_proto::v1::password_reader_server::PasswordReader;
use tpc_proto::v1::{
    AbortRequest, Ack, CommitRequest, GetHistoryRequest, GetUserRequest, History,
    ParticipantStatus, PrepareRequest, PrepareResponse, StatusRequest, User, VerifyPasswordRequest,
    VerifyPasswordResponse, history, prepare_response,
};
use tracing::{Instrument, info_span};

use crate::engine::{Event, Vote};
use crate::history::{Histories, entries};
use crate::node::{Node, Reply};
use crate::password::{Account, Passwords};
use crate::resource::Resource;

/// `tpc.v1.Participant` for either resource.
pub struct ParticipantApi<R: Resource>(pub Arc<Node<R>>);

fn txn_span<T>(
    request: &Request<T>,
    rpc: &'static str,
    participant: &'static str,
    txn: &str,
) -> tracing::Span {
    let propagated = telemetry::txn_id_from(request);
    info_span!(
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
        let span = txn_span(&request, "Prepare", R::NAME, &request.get_ref().txn_id);
        let req = request.into_inner();
        let txn = TxnId::parse(&req.txn_id)?;
        let op = Operation::try_from(req.operation)?;
        let event = Event::PrepareRequested {
            txn,
            user: op.user().clone(),
        };
        let reply = self.0.drive(event, Some(op)).instrument(span).await?;
        let response = match reply {
            Reply::Vote(Vote::Yes(change)) => PrepareResponse {
                vote: prepare_response::Vote::Yes.into(),
                reason: String::new(),
                email: R::vote_detail(&change),
            },
            Reply::Vote(Vote::No(reason)) => PrepareResponse {
                vote: prepare_response::Vote::No.into(),
                reason,
                email: String::new(),
            },
            Reply::Ack | Reply::Nothing => {
                return Err(Status::internal("prepare was not answered"));
            }
        };
        Ok(Response::new(response))
    }

    async fn commit(&self, request: Request<CommitRequest>) -> Result<Response<Ack>, Status> {
        let span = txn_span(&request, "Commit", R::NAME, &request.get_ref().txn_id);
        let txn = TxnId::parse(&request.get_ref().txn_id)?;
        self.0
            .drive(Event::CommitRequested { txn }, None)
            .instrument(span)
            .await?;
        Ok(Response::new(Ack {}))
    }

    async fn abort(&self, request: Request<AbortRequest>) -> Result<Response<Ack>, Status> {
        let span = txn_span(&request, "Abort", R::NAME, &request.get_ref().txn_id);
        let txn = TxnId::parse(&request.get_ref().txn_id)?;
        self.0
            .drive(Event::AbortRequested { txn, at: now_ms() }, None)
            .instrument(span)
            .await?;
        Ok(Response::new(Ack {}))
    }

    async fn status(
        &self,
        _: Request<StatusRequest>,
    ) -> Result<Response<ParticipantStatus>, Status> {
        let (in_doubt, locked) = self.0.status();
        Ok(Response::new(ParticipantStatus {
            in_doubt: in_doubt.iter().map(TxnId::to_string).collect(),
            locked_users: locked as u32,
        }))
    }
}

/// `tpc.v1.PasswordReader`.
pub struct PasswordApi(pub Arc<Node<Passwords>>);

#[tonic::async_trait]
impl PasswordReader for PasswordApi {
    async fn verify_password(
        &self,
        request: Request<VerifyPasswordRequest>,
    ) -> Result<Response<VerifyPasswordResponse>, Status> {
        let req = request.into_inner();
        let user = UserId::parse(&req.user_id)?;
        let password = Password::new("password", req.password)?;
        let account: Account = self.0.read(&user).await?;
        // The cost comes from the stored hash, whatever the hasher was made with.
        let hasher = crate::hashing::Hasher::new(Default::default());
        let valid = self
            .0
            .hash_work(move || hasher.verify(&password, &account.hash))
            .await?;
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
        self.0.wait_unlocked(&user).await?;
        let entries = entries(self.0.data(), &user)
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::not_found(format!("unknown user {user}")))?;
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
