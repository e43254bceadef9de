//! etcd's members, used one at a time: every request goes to the member in use, and a request that
//! fails on the way (the member died, its connection broke) moves on to the next member and is sent
//! again. Any member serves any request (followers pass writes to etcd's leader).
//!
//! etcd's client spreads requests over every endpoint it was given, the dead ones too: it finds a
//! member dead only by a request failing on it, and keeps trying it. With a member down a third of the
//! requests failed, and retries on the same client piled up seconds per write.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::Client;

#[derive(Clone)]
pub struct Members {
    clients: Arc<[Client]>,
    in_use: Arc<AtomicUsize>,
}

impl Members {
    /// A client per member (each connects when first used).
    pub async fn connect(endpoints: &[String]) -> Result<Self, etcd_client::Error> {
        let mut clients = Vec::new();
        for endpoint in endpoints {
            clients.push(Client::connect([endpoint], Some(crate::connect_options())).await?);
        }
        if clients.is_empty() {
            return Err(etcd_client::Error::InvalidArgs("no etcd endpoint".into()));
        }
        Ok(Self {
            clients: clients.into(),
            in_use: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The member in use, and a client of it.
    pub fn client(&self) -> (usize, Client) {
        let i = self.in_use.load(Ordering::Relaxed) % self.clients.len();
        (i, self.clients[i].clone())
    }

    /// Member `failed` failed a request: use the next one (unless another request moved on already).
    pub fn failed(&self, failed: usize) {
        let next = (failed + 1) % self.clients.len();
        let _ = self
            .in_use
            .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Sends the request `make` makes to the member in use, moving on to the next on a failure on the
    /// way, until one answers or `limit` has passed (while etcd has no quorum, none does). Every
    /// request tpc sends to etcd lands the same twice, so sending one again is safe.
    pub async fn call<T, F, Fut>(&self, limit: Duration, make: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let attempts = async {
            let mut failures = 0;
            let mut pause = Duration::from_millis(20);
            loop {
                let (i, client) = self.client();
                // A request caught in etcd electing a new leader (the old one died with it) is not
                // failed by etcd for seconds: after ATTEMPT it is sent again, through the next member.
                let answer = tokio::time::timeout(ATTEMPT, make(client))
                    .await
                    .unwrap_or_else(|_| {
                        Err(etcd_client::Error::GRpcStatus(
                            tonic::Status::deadline_exceeded("no answer from this etcd member"),
                        ))
                    });
                match answer {
                    Err(e) if crate::passing(&e) => {
                        self.failed(i);
                        failures += 1;
                        // Every member failed in turn: etcd itself is unavailable for now (electing
                        // its leader, or without a quorum).
                        if failures % self.clients.len() == 0 {
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_millis(250));
                        }
                    }
                    answered => return answered,
                }
            }
        };
        tokio::time::timeout(limit, attempts)
            .await
            .unwrap_or_else(|_| Err(etcd_client::Error::ElectError(NO_ANSWER.into())))
    }
}

/// How long one attempt may take before it is sent again through the next member. etcd answers a
/// healthy request in milliseconds; one in flight when etcd's leader died waits out etcd's own
/// request timeout (about 5 s) before it fails.
const ATTEMPT: Duration = Duration::from_secs(1);

/// What a request that no member answered in time fails with.
pub const NO_ANSWER: &str = "the decision log has no quorum: etcd did not answer in time";
