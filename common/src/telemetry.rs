//! Logging and tracing setup, and the propagation of a transaction's id between services.
//!
//! Every service opens one span per transaction with a `txn_id` field, so a trace collector (or `grep`)
//! can stitch one transaction's lines together across the three processes. Single-transaction calls
//! between services (`QueryDecision`) also carry the id in the `x-tpc-txn-id` gRPC metadata header; the
//! coordinator's batched protocol calls carry each id in the message.

use tracing_subscriber::EnvFilter;

/// Output format of the logs on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for machines.
    Json,
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), output goes to stderr.
/// Calling it twice is harmless (the second call does nothing), which tests rely on.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let builder = builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
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
