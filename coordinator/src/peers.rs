//! gRPC clients of the two participants. Channels connect lazily and reconnect on their own, so a
//! participant that is down at start, or restarts, is simply reached on a later attempt.
//!
//! Every protocol message goes through a [`Batcher`]: whatever is ready for a participant while its
//! calls are busy leaves together in one `PrepareBatch`, `CommitBatch` or `AbortBatch`.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tpc_common::dial::Dialer;
use tpc_common::tls::{Internal, TlsError};
use tpc_common::{Email, Operation, Principal, Strategy, TxnId, UserId};
use tpc_proto::MAX_BATCH;
use tpc_proto::v1::participant_client::ParticipantClient;
use tpc_proto::v1::password_reader_client::PasswordReaderClient;
use tpc_proto::v1::{
    ApplyRequest, BatchStatus, CompensateRequest, GetUserRequest, PrepareBatchRequest,
    PrepareRequest, TxnBatch, apply_response, prepare_response,
};

use crate::batcher::Batcher;
use crate::engine::{Participant, StoreMark, Vote};
use crate::saga::StepResult;

/// Batched calls of each kind in flight to one participant. More than one, so one slow batch (argon2 at
/// full cost, a Prepare waiting for a user's lock) does not hold up every other; few, so that under
/// load each call carries many transactions. Two instead of four cost ~5% less CPU per change at 64
/// clients (alternating `tpc bench` runs, 2026-12-07) and kept the OWASP runs at 96–101% of the argon2
/// bound; one saved a little more again but leaves no second lane.
const IN_FLIGHT: usize = 2;

#[derive(Clone)]
struct Link {
    /// For the saga and events strategies' unary calls.
    client: ParticipantClient<Channel>,
    /// The password participant's read API (the events strategy looks up e-mail addresses).
    reader: PasswordReaderClient<Channel>,
    /// Each vote with the participant's store mark from the same answer.
    prepare: Batcher<PrepareRequest, (Vote, Option<StoreMark>)>,
    /// Each transaction's answer, with the store mark of the batch it went in.
    commit: Batcher<String, Decided>,
    abort: Batcher<String, Decided>,
}

#[derive(Clone)]
pub struct Peers {
    password: Link,
    history: Link,
}

impl Peers {
    /// Must run inside a tokio runtime (it starts the batchers).
    pub fn new(
        dialer: &Dialer,
        internal: &Internal,
        password_url: &str,
        history_url: &str,
        timeout: Duration,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            password: link(
                dialer,
                internal.endpoint(password_url, Principal::Password)?,
                timeout,
            ),
            history: link(
                dialer,
                internal.endpoint(history_url, Principal::History)?,
                timeout,
            ),
        })
    }

    fn link(&self, to: Participant) -> &Link {
        match to {
            Participant::Password => &self.password,
            Participant::History => &self.history,
        }
    }

    pub async fn prepare(
        &self,
        to: Participant,
        txn: TxnId,
        op: &Operation,
    ) -> Result<(Vote, Option<StoreMark>), String> {
        let request = PrepareRequest {
            txn_id: txn.to_string(),
            operation: Some(op.into()),
        };
        self.link(to).prepare.send(request).await
    }

    /// The participant's acknowledgement, and its store mark whether it acknowledged or not (a
    /// participant that refuses because its store lost changes says which store it has).
    pub async fn commit(
        &self,
        to: Participant,
        txn: TxnId,
    ) -> (Result<(), String>, Option<StoreMark>) {
        match self.link(to).commit.send(txn.to_string()).await {
            Ok(answered) => answered,
            Err(error) => (Err(error), None),
        }
    }

    pub async fn abort(&self, to: Participant, txn: TxnId) -> Result<(), String> {
        match self.link(to).abort.send(txn.to_string()).await {
            Ok((answered, _)) => answered,
            Err(error) => Err(error),
        }
    }

    /// A saga step or an events delivery: one `Apply`, as those strategies are usually built (unary,
    /// unbatched).
    pub async fn apply(
        &self,
        to: Participant,
        txn: TxnId,
        strategy: Strategy,
        op: &Operation,
    ) -> Result<StepResult, tonic::Status> {
        let request = ApplyRequest {
            txn_id: txn.to_string(),
            strategy: wire_strategy(strategy).into(),
            operation: Some(op.into()),
        };
        let answer = self
            .link(to)
            .client
            .clone()
            .apply(request)
            .await?
            .into_inner();
        Ok(match answer.outcome() {
            apply_response::Outcome::Applied => StepResult::Applied {
                detail: answer.email,
            },
            apply_response::Outcome::Refused => StepResult::Refused {
                reason: answer.reason,
            },
            apply_response::Outcome::Unspecified => StepResult::Unknown {
                error: "participant sent no outcome".into(),
            },
        })
    }

    pub async fn compensate(
        &self,
        to: Participant,
        txn: TxnId,
        user: &UserId,
    ) -> Result<(), String> {
        let request = CompensateRequest {
            txn_id: txn.to_string(),
            strategy: tpc_proto::v1::Strategy::Saga.into(),
            user_id: user.to_string(),
        };
        self.link(to)
            .client
            .clone()
            .compensate(request)
            .await
            .map(drop)
            .map_err(describe)
    }
}

impl Peers {
    /// The user's e-mail address, as the password participant has it (`None`: unknown user).
    pub async fn email_of(&self, user: &UserId) -> Result<Option<Email>, String> {
        let request = GetUserRequest {
            user_id: user.to_string(),
        };
        match self.password.reader.clone().get_user(request).await {
            Ok(found) => Email::parse(&found.into_inner().email)
                .map(Some)
                .map_err(|e| e.to_string()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(describe(status)),
        }
    }
}

fn wire_strategy(strategy: Strategy) -> tpc_proto::v1::Strategy {
    match strategy {
        Strategy::Saga => tpc_proto::v1::Strategy::Saga,
        Strategy::Events => tpc_proto::v1::Strategy::Events,
        Strategy::TwoPc => tpc_proto::v1::Strategy::Unspecified,
    }
}

fn link(dialer: &Dialer, endpoint: Endpoint, timeout: Duration) -> Link {
    let channel = dialer.connect_lazy(
        endpoint
            .connect_timeout(Duration::from_secs(1))
            // A call never outlives the prepare deadline, and a dead or partitioned connection is noticed
            // by keepalive and replaced, instead of swallowing every later call.
            .timeout(timeout)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(1))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true),
    );
    let reader = PasswordReaderClient::new(channel.clone());
    let client = ParticipantClient::new(channel).max_decoding_message_size(usize::MAX);
    let prepare = {
        let client = client.clone();
        Batcher::start(
            IN_FLIGHT,
            MAX_BATCH,
            move |prepares: Vec<PrepareRequest>| {
                let mut client = client.clone();
                async move {
                    let response = client
                        .prepare_batch(PrepareBatchRequest { prepares })
                        .await
                        .map_err(describe)?
                        .into_inner();
                    let store = response.store.map(store_mark);
                    Ok(response
                        .results
                        .into_iter()
                        .map(|result| {
                            ok(result.status.as_ref())?;
                            let vote = vote(result.vote.ok_or("participant sent no vote")?)?;
                            Ok((vote, store.clone()))
                        })
                        .collect())
                }
            },
        )
    };
    let decide = |commit: bool| {
        let client = client.clone();
        Batcher::start(IN_FLIGHT, MAX_BATCH, move |txn_ids: Vec<String>| {
            let mut client = client.clone();
            async move {
                let batch = TxnBatch { txn_ids };
                let response = if commit {
                    client.commit_batch(batch).await
                } else {
                    client.abort_batch(batch).await
                };
                let response = response.map_err(describe)?.into_inner();
                let store = response.store.map(store_mark);
                Ok(response
                    .results
                    .iter()
                    .map(|status| Ok((ok(Some(status)), store.clone())))
                    .collect())
            }
        })
    };
    let (commit, abort) = (decide(true), decide(false));
    Link {
        client,
        reader,
        prepare,
        commit,
        abort,
    }
}

/// A `Commit` or `Abort` answered: acknowledged or refused, and the store the participant answered from.
type Decided = (Result<(), String>, Option<StoreMark>);

fn store_mark(wire: tpc_proto::v1::StoreMark) -> StoreMark {
    StoreMark {
        id: wire.id,
        boot: wire.boot,
        seq: wire.seq,
        accept_loss: wire.accept_loss,
    }
}

fn vote(response: tpc_proto::v1::PrepareResponse) -> Result<Vote, String> {
    match response.vote() {
        prepare_response::Vote::Yes => Ok(Vote::Yes {
            email: Email::parse(&response.email).ok(),
        }),
        prepare_response::Vote::No => Ok(Vote::No {
            reason: response.reason,
        }),
        prepare_response::Vote::Unspecified => Err("participant sent no vote".into()),
    }
}

/// One transaction's status within a batch answer.
fn ok(status: Option<&BatchStatus>) -> Result<(), String> {
    match status {
        Some(s) if s.code == tonic::Code::Ok as i32 => Ok(()),
        Some(s) => Err(format!("{}: {}", tonic::Code::from(s.code), s.message)),
        None => Err("participant sent no status".into()),
    }
}

fn describe(status: tonic::Status) -> String {
    format!("{}: {}", status.code(), status.message())
}
