//! Logging and tracing setup, and the propagation of a transaction's id between services.
//!
//! Every service opens one span per transaction with a `txn_id` field, so a trace collector (or `grep`)
//! can stitch one transaction's lines together across the three processes. Single-transaction calls
//! between services (`QueryDecision`) also carry the id in the `x-tpc-txn-id` gRPC metadata header; the
//! coordinator's batched protocol calls carry each id in the message.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Output format of the logs on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for machines.
    Json,
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`, the stores capped at `info`
/// whatever it says), output goes to stderr.
/// Calling it twice is harmless (the second call does nothing), which tests rely on.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter).with_filter(store_cap()))
        .try_init();
}

/// Whatever `RUST_LOG` asks for, the stores never log below `info`: sled's debug and trace lines
/// print the keys and values it reads and writes, among them argon2id hashes (144 were recovered from
/// one trace log, and one was cracked offline). The protocol's own narration is tpc's, and never holds
/// a secret.
fn store_cap() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("sled", LevelFilter::INFO)
}

/// Reads the transaction id a caller put in the request metadata, for the handler's span.
pub fn txn_id_from<T>(request: &tonic::Request<T>) -> Option<String> {
    request
        .metadata()
        .get(tpc_proto::TXN_ID_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Wraps `message` in a request carrying `txn_id` in its metadata.
pub fn request_with_txn_id<T>(message: T, txn_id: &crate::TxnId) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = txn_id.to_string().parse() {
        request
            .metadata_mut()
            .insert(tpc_proto::TXN_ID_METADATA, value);
    }
    request
}
