//! Domain types and small runtime pieces shared by the tpc coordinator and participants.
//!
//! - Validated domain types: [`UserId`], [`TxnId`], [`Password`] (a secret: it prints `[redacted]`),
//!   [`Operation`] (what a transaction does).
//! - [`open_database`] (sled with a bounded cache) and [`GroupCommit`]: forced writes to sled, batched,
//!   on the blocking pool.
//! - [`Backoff`]: the capped exponential backoff every retry loop uses.
//! - [`fault`]: fail points, where a test makes a process crash, stall or lose a message.
//! - [`tls`], [`Principal`] and [`certs`]: mutual TLS between the services, who may call what, and
//!   development certificates.
//! - [`serve`], [`telemetry`] and [`shutdown`]: what every tpc gRPC server needs around its services.

mod backoff;
pub mod blocking;
pub mod certs;
mod clock;
mod database;
mod decode;
pub mod dial;
mod email;
pub mod entropy;
pub mod fault;
mod fingerprint;
mod greeting;
mod group_commit;
pub mod guard;
mod invalid;
mod operation;
mod password;
#[cfg(feature = "planted-bugs")]
mod planted;
mod principal;
pub mod record;
pub mod serve;
pub mod shutdown;
pub mod simulation;
pub mod storage;
mod strategy;
pub mod telemetry;
pub mod tls;
mod txn_id;
mod user_id;
pub mod wire;

pub use backoff::Backoff;
pub use clock::{Now, monotonic_ms, now_ms};
pub use database::{DEFAULT_CACHE_MIB, open_database};
pub use decode::decode_error;
pub use email::Email;
pub use fingerprint::{Fingerprint, Fingerprinter};
pub use group_commit::{GroupCommit, Seal};
pub use invalid::InvalidInput;
pub use operation::{Operation, OperationKind};
pub use password::Password;
#[cfg(feature = "planted-bugs")]
pub use planted::PlantedBug;
pub use principal::Principal;
pub use strategy::Strategy;
pub use txn_id::TxnId;
pub use user_id::UserId;
