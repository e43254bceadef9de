//! The `tpc.v1` wire contract: generated protobuf messages, tonic clients and servers, and the encoded
//! descriptor set that server reflection serves (so `grpcurl list` works against every tpc service).
//!
//! Protobuf stays at the edge: the services convert these types to domain types (`tpc_common`) before
//! the protocol engines see them.

mod redact;

/// Generated code for package `tpc.v1`.
pub mod v1 {
    tonic::include_proto!("tpc.v1");
}

/// The encoded `FileDescriptorSet` of every `.proto` file, for `tonic_reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tpc_descriptor.bin"));

/// Largest request any tpc service decodes. Passwords are capped at 1 KiB, so anything near this size is
/// garbage or abuse and is refused with `RESOURCE_EXHAUSTED` before it reaches a handler.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// Most transactions the coordinator puts in one batched participant call.
pub const MAX_BATCH: usize = 128;

/// Largest request a participant's protocol service decodes: a full batch of the largest requests.
pub const MAX_BATCH_MESSAGE_BYTES: usize = MAX_BATCH * MAX_MESSAGE_BYTES;

/// gRPC metadata key that carries the transaction id across services, so every service's trace span for
/// one transaction carries the same `txn_id`.
pub const TXN_ID_METADATA: &str = "x-tpc-txn-id";

/// How a participant says (with `UNAVAILABLE`) that another request for the transaction is still being
/// worked on, e.g. an `Abort` that came while its `PREPARED` record was being forced: the caller
/// retries, and hears the outcome once the work is done.
pub const IN_PROGRESS: &str = "is being worked on; retry";
