//! The password and history participants of tpc's two-phase commit.
//!
//! - `barrier`: the saga and events operations' idempotence and ordering rules, pure.
//! - `engine`: the participant protocol as a pure state machine (shared by both participants).
//! - `store`: the durable log (sled, through `tpc_common::storage`): PREPARED and COMMITTED records beside the data they guard.
//! - `resource`: what a participant manages; `password` and `history` are the two resources.
//! - `hashing`: argon2id on the blocking pool.
//! - `node`: the runtime that executes the engine's commands; `api` the gRPC services; `server` wiring.

pub mod api;
pub mod barrier;
pub mod engine;
pub mod hashing;
pub mod history;
pub mod node;
pub mod password;
pub mod resource;
pub mod server;
pub mod store;
pub mod witness;
