//! Model checking of tpc's two-phase commit: the production coordinator and participant engines (the
//! same types the servers run, not a copy) as actors under [stateright], with every interleaving of a
//! small cluster's messages, message loss and duplication, calls that time out, and `kill -9` of any
//! process that keeps only what was forced.
//!
//! The engines are pure (events in, commands out); each actor here is a thin runtime like the real
//! one, minus the I/O: its store keeps forced writes across a crash and loses the rest, its network
//! is a multiset the checker picks from. The properties are DESIGN §6's invariants (`properties.rs`).
//!
//! `tpc check` runs it from the command line; `cargo test` runs a bounded check, and shows that each
//! of three planted protocol bugs is caught.

mod cluster;
mod coordinator;
mod model;
mod network;
mod participant;
mod properties;
mod report;
mod setup;
mod world;

pub use cluster::Cluster;
pub use model::{Action, TpcModel};
pub use network::{Envelope, Msg, Node};
pub use properties::*;
pub use report::{Report, Search, Verdict, check};
pub use setup::{Change, Faults, Setup};
