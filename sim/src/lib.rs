//! The real tpc servers and clients on [turmoil]'s simulated network: each service is a simulated host
//! running the same `server::run` as `tpc up`, reaching its peers through the same tonic clients, over
//! connections the simulator can delay, drop, partition and sever by crashing a host.
//!
//! What this crate has so far is the wiring (`network.rs`) and a cluster of the three services
//! (`cluster.rs`); the seeded workload, the fault schedule and the determinism that makes a seed replay
//! exactly are still to come (docs/testing.md).

pub mod cluster;
pub mod disks;
pub mod network;
pub mod run;
