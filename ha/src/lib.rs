//! Coordinator high availability: the decision log on etcd, one leader elected through an etcd lease,
//! every write fenced with the leader's term, and standbys that take over when the leader's lease
//! expires (docs/high-availability.md).
//!
//! Everything is behind the `etcd` feature: etcd's client generates its gRPC code with `protoc` at
//! build time, and the default build needs nothing but the Rust toolchain.
#![cfg(feature = "etcd")]

mod etcd_log;
mod leadership;
mod members;
mod run;
mod standby;

/// The etcd client these are built on, for tests that play etcd's part (a lease that expired).
pub use etcd_client;
pub use etcd_log::{BACKGROUND_FLUSH, EtcdLog, Fence};
pub use leadership::{Addresses, Elected, Election, Leader};
pub use run::{HaConfig, HaError, run};
pub use standby::LEADER_METADATA;

/// How every etcd client of a coordinator connects: a dead member is noticed within seconds.
fn connect_options() -> etcd_client::ConnectOptions {
    etcd_client::ConnectOptions::default()
        .with_connect_timeout(std::time::Duration::from_millis(500))
        .with_keep_alive(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(2),
        )
        .with_keep_alive_while_idle(true)
}

/// Whether `error` is etcd, or the way to one of its members, being briefly unavailable: worth the
/// same request again (every request tpc sends to etcd lands the same twice). A member that died
/// shows as a broken or refused connection, which tonic reports as `UNAVAILABLE` or `UNKNOWN`.
fn passing(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::DeadlineExceeded
        ),
        _ => false,
    }
}
