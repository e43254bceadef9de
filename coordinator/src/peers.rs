//! gRPC clients of the two participants. Channels connect lazily and reconnect on their own, so a
//! participant that is down at start, or restarts, is simply reached on a later attempt.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tpc_common::{Email, Operation, TxnId, telemetry::request_with_txn_id};
use tpc_proto::v1::participant_client::ParticipantClient;
use tpc_proto::v1::{AbortRequest, CommitRequest, PrepareRequest, prepare_response};

use crate::engine::{Participant, Vote};

#[derive(Clone)]
pub struct Peers {
    password: ParticipantClient<Channel>,
    history: ParticipantClient<Channel>,
    timeout: Duration,
}

impl Peers {
    pub fn new(password_url: &str, history_url: &str, timeout: Duration) -> Result<Self, String> {
        let channel = |url: &str| -> Result<Channel, String> {
            Ok(Endpoint::from_shared(url.to_owned())
                .map_err(|e| format!("{url}: {e}"))?
                .connect_timeout(Duration::from_secs(1))
                // A call never outlives the prepare deadline, and a dead or partitioned connection is
                // noticed by keepalive and replaced, instead of swallowing every later call.
                .timeout(timeout)
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(1))
                .keep_alive_while_idle(true)
                .tcp_nodelay(true)
                .connect_lazy())
        };
        Ok(Self {
            password: ParticipantClient::new(channel(password_url)?),
            history: ParticipantClient::new(channel(history_url)?),
            timeout,
        })
    }

    fn client(&self, to: Participant) -> ParticipantClient<Channel> {
        match to {
            Participant::Password => self.password.clone(),
            Participant::History => self.history.clone(),
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
        let mut client = self.client(to);
        let mut request = request_with_txn_id(request, &txn);
        request.set_timeout(self.timeout);
        let response = client
            .prepare(request)
            .await
            .map_err(describe)?
            .into_inner();
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

    pub async fn commit(&self, to: Participant, txn: TxnId) -> Result<(), String> {
        let mut request = request_with_txn_id(
            CommitRequest {
                txn_id: txn.to_string(),
            },
            &txn,
        );
        request.set_timeout(self.timeout);
        self.client(to)
            .commit(request)
            .await
            .map(drop)
            .map_err(describe)
    }

    pub async fn abort(&self, to: Participant, txn: TxnId) -> Result<(), String> {
        let mut request = request_with_txn_id(
            AbortRequest {
                txn_id: txn.to_string(),
            },
            &txn,
        );
        request.set_timeout(self.timeout);
        self.client(to)
            .abort(request)
            .await
            .map(drop)
            .map_err(describe)
    }
}

fn describe(status: tonic::Status) -> String {
    format!("{}: {}", status.code(), status.message())
}
