//! What a coordinator that does not lead serves: every call to `PasswordService` or
//! `TransactionManager` is answered `UNAVAILABLE` at once, naming the leader in the message and in the
//! `tpc-leader` metadata (the CLI and the harness follow it), and health says NOT_SERVING, so a load
//! balancer sends nobody here. It never forwards: a client that follows the leader pays one round trip
//! once, and a standby stays a process that holds nothing.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

use crate::leadership::{Addresses, Leader};

/// The metadata key that carries the leader's URL.
pub const LEADER_METADATA: &str = "tpc-leader";

/// Which listener a standby service answers on, and so which of the leader's addresses it names.
pub trait Listener: Send + Sync + 'static {
    const SERVICE: &'static str;
    fn address(leader: &Addresses) -> &str;
}

pub struct Public;
pub struct Internal;

impl Listener for Public {
    const SERVICE: &'static str = "tpc.v1.PasswordService";
    fn address(leader: &Addresses) -> &str {
        &leader.public
    }
}

impl Listener for Internal {
    const SERVICE: &'static str = "tpc.v1.TransactionManager";
    fn address(leader: &Addresses) -> &str {
        &leader.internal
    }
}

pub struct Standby<L> {
    leader: watch::Receiver<Leader>,
    listener: PhantomData<L>,
}

impl<L> Standby<L> {
    pub fn new(leader: watch::Receiver<Leader>) -> Self {
        Self {
            leader,
            listener: PhantomData,
        }
    }
}

impl<L> Clone for Standby<L> {
    fn clone(&self) -> Self {
        Self::new(self.leader.clone())
    }
}

impl<L: Listener> NamedService for Standby<L> {
    const NAME: &'static str = L::SERVICE;
}

/// The answer a standby gives to every call.
pub fn not_the_leader<L: Listener>(leader: &Leader) -> tonic::Status {
    match leader {
        Leader::Known(leader) => {
            let url = L::address(leader);
            let mut status = tonic::Status::unavailable(format!(
                "this coordinator is a standby; the leader is {url}"
            ));
            if let Ok(value) = url.parse() {
                status.metadata_mut().insert(LEADER_METADATA, value);
            }
            status
        }
        Leader::Nobody => tonic::Status::unavailable(
            "this coordinator is a standby and no coordinator leads yet; retry in a moment",
        ),
        Leader::NoQuorum => tonic::Status::unavailable(
            "the decision log has no quorum (etcd does not answer): no coordinator can lead until it does",
        ),
    }
}

impl<L: Listener> tower_service::Service<http::Request<Body>> for Standby<L> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<Body>) -> Self::Future {
        let status = not_the_leader::<L>(&self.leader.borrow());
        std::future::ready(Ok(status.into_http()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_names_the_leader_for_the_listener_asked() {
        let leader = Addresses {
            public: "http://127.0.0.1:1".into(),
            internal: "https://127.0.0.1:2".into(),
        };
        let leader = Leader::Known(leader);
        let public = not_the_leader::<Public>(&leader);
        assert_eq!(public.code(), tonic::Code::Unavailable);
        assert_eq!(
            public.metadata().get(LEADER_METADATA).unwrap(),
            "http://127.0.0.1:1"
        );
        let internal = not_the_leader::<Internal>(&leader);
        assert!(internal.message().contains("https://127.0.0.1:2"));
        let nobody = not_the_leader::<Public>(&Leader::Nobody);
        assert_eq!(nobody.code(), tonic::Code::Unavailable);
        assert!(nobody.metadata().get(LEADER_METADATA).is_none());
        let no_quorum = not_the_leader::<Internal>(&Leader::NoQuorum);
        assert!(no_quorum.message().contains("no quorum"));
    }
}
