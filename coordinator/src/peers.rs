//! gRPC clients of the two participants. Channels connect lazily and reconnect on their own, so a
//! participant that is down at start, or restarts, is simply reached on a later attempt.
//!
//! Every protocol message goes through a [`Batcher`]: whatever is ready for a participant while its
//! calls are busy leaves together in one `PrepareBatch`, `CommitBatch` or `AbortBatch`.

use std::time::Duration;

use tonic::transport::Endpoint;
use tpc_common::{Email, Operation, TxnId};
use tpc_proto::MAX_BATCH;
use tpc_proto::v1::participant_client::ParticipantClient;
use tpc_proto::v1::{BatchStatus, PrepareBatchRequest, PrepareRequest, TxnBatch, prepare_response};

use crate::batcher::Batcher;
use crate::engine::{Participant, Vote};

/// Batched calls of each kind in flight to one participant. More than one, so a slow batch (argon2 at
/// full cost) does not hold up the next; few, so that under load each call carries many transactions.
const IN_FLIGHT: usize = 4;

#[derive(Clone)]
struct Link {
    prepare: Batcher<PrepareRequest, Vote>,
    commit: Batcher<String, ()>,
    abort: Batcher<String, ()>,
}

#[derive(Clone)]
pub struct Peers {
    password: Link,
    history: Link,
}

impl Peers {
    /// Must run inside a tokio runtime (it starts the batchers).
    pub fn new(password_url: &str, history_url: &str, timeout: Duration) -> Result<Self, String> {
        Ok(Self {
            password: link(password_url, timeout)?,
            history: link(history_url, timeout)?,
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
    ) -> Result<Vote, String> {
        let request = PrepareRequest {
            txn_id: txn.to_string(),
            operation: Some(op.into()),
        };
        self.link(to).prepare.send(request).await
    }

    pub async fn commit(&self, to: Participant, txn: TxnId) -> Result<(), String> {
        self.link(to).commit.send(txn.to_string()).await
    }

    pub async fn abort(&self, to: Participant, txn: TxnId) -> Result<(), String> {
        self.link(to).abort.send(txn.to_string()).await
    }
}

fn link(url: &str, timeout: Duration) -> Result<Link, String> {
    let channel = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("{url}: {e}"))?
        .connect_timeout(Duration::from_secs(1))
        // A call never outlives the prepare deadline, and a dead or partitioned connection is noticed
        // by keepalive and replaced, instead of swallowing every later call.
        .timeout(timeout)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(1))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect_lazy();
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
                        .map_err(describe)?;
                    Ok(response
                        .into_inner()
                        .results
                        .into_iter()
                        .map(|result| {
                            ok(result.status.as_ref())?;
                            vote(result.vote.ok_or("participant sent no vote")?)
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
                Ok(response
                    .map_err(describe)?
                    .into_inner()
                    .results
                    .iter()
                    .map(|status| ok(Some(status)))
                    .collect())
            }
        })
    };
    Ok(Link {
        prepare,
        commit: decide(true),
        abort: decide(false),
    })
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
