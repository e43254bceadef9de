//! One leader among the coordinators, through etcd: a lease with a short TTL, kept alive by the leader,
//! and a leader key bound to it that only one process can create.
//!
//! The leader key's create revision is the leader's term: every write to the log compares it
//! ([`Fence`]), so a leader that lost its lease without noticing (paused, partitioned) writes nothing
//! once another has been elected. A standby polls the key; when the lease behind it expires, etcd
//! deletes it and the first standby to create it again leads.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::etcd_log::Fence;
use crate::members::Members;

/// Where this coordinator serves, as the leader key's value says it to the others' standbys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    /// For clients (`PasswordService`).
    pub public: String,
    /// For the participants (`QueryDecision`) and the admin calls.
    pub internal: String,
}

impl Addresses {
    fn encode(&self) -> String {
        format!("{} {}", self.public, self.internal)
    }

    fn decode(value: &[u8]) -> Option<Self> {
        let value = std::str::from_utf8(value).ok()?;
        let (public, internal) = value.split_once(' ')?;
        Some(Self {
            public: public.into(),
            internal: internal.into(),
        })
    }
}

/// Who leads, as a standby sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Leader {
    /// Nobody yet: the last leader's lease has not expired, or the election is under way.
    #[default]
    Nobody,
    Known(Addresses),
    /// etcd does not answer: without a quorum nobody can lead.
    NoQuorum,
}

pub struct Election {
    members: Members,
    key: Vec<u8>,
    me: Addresses,
    ttl: Duration,
}

/// This process leads: its writes are fenced with `fence`, and `lost` turns true once its lease is
/// gone (it must stop at once: another may lead already).
pub struct Elected {
    pub fence: Fence,
    pub lost: watch::Receiver<bool>,
    /// Kept alive as long as this is held.
    _lease: KeptLease,
}

/// A lease kept alive by a task of its own, until this is dropped: a campaign that fails lets its
/// lease go, so that a leader key it may have created after all (an answer lost on the way) expires
/// with it, instead of naming a leader that is campaigning again forever.
struct KeptLease {
    id: i64,
    keeper: tokio::task::AbortHandle,
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// How often a standby looks at the leader key, besides when etcd tells it the key changed.
const POLL: Duration = Duration::from_millis(500);

impl Election {
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        me: Addresses,
        ttl: Duration,
    ) -> Result<Self, etcd_client::Error> {
        let members = Members::connect(endpoints).await?;
        Ok(Self {
            members,
            key: format!("{prefix}leader").into_bytes(),
            me,
            ttl,
        })
    }

    /// Who leads now, as far as etcd answers within a lease's time.
    pub async fn leader(&self) -> Leader {
        let key = self.key.clone();
        let read = self.members.call(self.ttl, move |mut client| {
            let key = key.clone();
            async move { client.get(key, None).await }
        });
        match read.await {
            Ok(response) => response
                .kvs()
                .first()
                .and_then(|kv| Addresses::decode(kv.value()))
                .map_or(Leader::Nobody, Leader::Known),
            _ => Leader::NoQuorum,
        }
    }

    /// The leader key's create revision (the leader's term), if anyone leads: a linearizable read.
    pub async fn term(&self) -> Result<Option<i64>, etcd_client::Error> {
        let key = self.key.clone();
        let response = self
            .members
            .call(self.ttl, move |mut client| {
                let key = key.clone();
                async move { client.get(key, None).await }
            })
            .await?;
        Ok(response.kvs().first().map(|kv| kv.create_revision()))
    }

    /// Waits until this process leads; tells `seen` who leads meanwhile. While etcd does not answer
    /// (no quorum) it keeps trying: a standby outlives an etcd outage.
    pub async fn campaign(&self, seen: &watch::Sender<Leader>) -> Elected {
        let mut pause = POLL;
        loop {
            match self.try_to_lead(seen).await {
                Ok(elected) => return elected,
                Err(e) => {
                    warn!(cause = %e, "etcd does not answer; campaigning again");
                    seen.send_replace(Leader::NoQuorum);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    async fn try_to_lead(
        &self,
        seen: &watch::Sender<Leader>,
    ) -> Result<Elected, etcd_client::Error> {
        let (kept, lost) = self.keep_a_lease().await?;
        let lease = kept.id;
        // Told at once when the leader key goes (its lease expired), so a standby need not wait for
        // its next look.
        let key = self.key.clone();
        let mut changes = self
            .members
            .call(self.ttl, move |mut client| {
                let key = key.clone();
                async move { client.watch(key, None).await }
            })
            .await?;
        loop {
            if *lost.borrow() {
                return Err(etcd_client::Error::LeaseKeepAliveError(
                    "the standby's lease expired".into(),
                ));
            }
            let put = TxnOp::put(
                self.key.clone(),
                self.me.encode(),
                Some(PutOptions::new().with_lease(lease)),
            );
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([put])
                .or_else([TxnOp::get(self.key.clone(), None)]);
            let response = self
                .members
                .call(self.ttl, move |mut client| {
                    let txn = txn.clone();
                    async move { client.txn(txn).await }
                })
                .await?;
            // The key may be ours already: an attempt that created it, whose answer was lost, was
            // made again (the key's lease says whose it is).
            let ours = response.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .filter(|kv| kv.lease() == lease)
                    .map(|kv| kv.create_revision()),
                _ => None,
            });
            if response.succeeded() || ours.is_some() {
                let create_revision = ours
                    .unwrap_or_else(|| response.header().map(|h| h.revision()).unwrap_or_default());
                info!(
                    create_revision,
                    lease,
                    "elected: this coordinator leads (its writes are fenced with the leader key's revision)"
                );
                seen.send_replace(Leader::Known(self.me.clone()));
                return Ok(Elected {
                    fence: Fence {
                        key: self.key.clone(),
                        create_revision,
                    },
                    lost,
                    _lease: kept,
                });
            }
            let leader = response
                .op_responses()
                .into_iter()
                .find_map(|r| match r {
                    TxnOpResponse::Get(get) => get
                        .kvs()
                        .first()
                        .and_then(|kv| Addresses::decode(kv.value())),
                    _ => None,
                })
                .map_or(Leader::Nobody, Leader::Known);
            seen.send_if_modified(|current| {
                let changed = *current != leader;
                *current = leader.clone();
                changed
            });
            tokio::select! {
                changed = changes.message() => {
                    if changed?.is_none() {
                        // The watch ended: look again at the usual pace.
                        tokio::time::sleep(POLL).await;
                    }
                }
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Grants a lease of `ttl` and keeps it alive in a task of its own; the receiver turns true once
    /// etcd says the lease expired, or no keep-alive succeeded for twice `ttl`.
    async fn keep_a_lease(&self) -> Result<(KeptLease, watch::Receiver<bool>), etcd_client::Error> {
        let ttl_s = self.ttl.as_secs().max(1) as i64;
        let lease = self
            .members
            .call(self.ttl, move |mut client| async move {
                client.lease_grant(ttl_s, None).await
            })
            .await?
            .id();
        let members = self.members.clone();
        let (lost_tx, lost) = watch::channel(false);
        let ttl = self.ttl;
        let keeper = tokio::spawn(async move {
            let mut every = tokio::time::interval(ttl / 4);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_kept = tokio::time::Instant::now();
            // The keep-alive stream runs over one connection to one etcd member: when that member
            // dies the stream breaks, and a new one is opened on the next member.
            let mut stream = None;
            let mut member = 0;
            loop {
                every.tick().await;
                let kept = tokio::time::timeout(ttl / 4, async {
                    if stream.is_none() {
                        let (i, mut client) = members.client();
                        member = i;
                        stream = Some(client.lease_keep_alive(lease).await?);
                    }
                    let (keeper, answers) = stream.as_mut().expect("just opened");
                    keeper.keep_alive().await?;
                    answers.message().await
                })
                .await;
                match kept {
                    Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                        last_kept = tokio::time::Instant::now();
                    }
                    Ok(Ok(Some(_))) => {
                        warn!(lease, "etcd says the lease expired");
                        break;
                    }
                    Ok(Ok(None)) => {
                        warn!(lease, "the lease keep-alive stream ended; opening another");
                        stream = None;
                        members.failed(member);
                    }
                    Ok(Err(e)) => {
                        warn!(lease, cause = %e, "lease keep-alive failed; opening another stream");
                        stream = None;
                        members.failed(member);
                    }
                    Err(_) => {
                        warn!(lease, "lease keep-alive unanswered; opening another stream");
                        stream = None;
                        members.failed(member);
                    }
                }
                // etcd keeps the lease for a whole TTL after the last keep-alive it saw (longer when
                // its own leader changes); a member dying, or an etcd election, may make a few in a
                // row fail. Only etcd's word, or twice the TTL without one, ends the leadership
                // here. (Safety never rests on this: a leader etcd has deposed cannot write.)
                if last_kept.elapsed() >= 2 * ttl {
                    warn!(
                        lease,
                        "no keep-alive for twice the TTL: the lease must be taken as lost"
                    );
                    break;
                }
            }
            let _ = lost_tx.send(true);
        });
        Ok((
            KeptLease {
                id: lease,
                keeper: keeper.abort_handle(),
            },
            lost,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::Addresses;

    #[test]
    fn addresses_round_trip_through_the_leader_key() {
        let me = Addresses {
            public: "https://127.0.0.1:50051".into(),
            internal: "https://127.0.0.1:50061".into(),
        };
        assert_eq!(Addresses::decode(me.encode().as_bytes()), Some(me));
        assert_eq!(Addresses::decode(b"garbage"), None);
    }
}
