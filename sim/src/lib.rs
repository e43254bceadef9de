//! The real tpc servers and clients on [turmoil]'s simulated network: each service is a simulated host
//! running the same `server::run` as `tpc up`, reaching its peers through the same tonic clients, over
//! connections the simulator can delay, drop, partition and sever by crashing a host.
//!
//! `run.rs` is one seeded run (workload, faults, heal, checker); `seeds.rs` runs many, each in a process
//! of its own; `simulation.rs` turns on `tpc_common::simulation` (the simulated clock, randomness from the
//! seed, work in place of threads), which is what makes a seed replay byte for byte. See
//! docs/testing.md for what is simulated and what is not yet.

pub mod cluster;
pub mod disks;
pub mod network;
pub mod run;
pub mod seeds;
pub mod simulation;
