//! Logging and tracing setup, and the propagation of a transaction's id between services.
//!
//! Every line about a transaction carries a `txn_id` field, so `grep` can stitch one transaction's
//! lines together across the three processes; the spans per transaction and per protocol call are at
//! debug (at info, building and entering them for every change cost CPU for context the lines carry
//! anyway). Single-transaction calls between services (`QueryDecision`) also carry the id in the
//! `x-tpc-txn-id` gRPC metadata header; the coordinator's batched protocol calls carry each id in the
//! message.

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
    let most = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter).with_filter(store_cap(most)))
        .try_init();
}

/// Whatever `RUST_LOG` asks for, the stores never log below `info`: sled's debug and trace lines
/// print the keys and values it reads and writes, among them argon2id hashes (144 were recovered from
/// one trace log, and one was cracked offline). The protocol's own narration is tpc's, and never holds
/// a secret.
///
/// `most` is the most `RUST_LOG` lets through anywhere. The outermost filter's level is the one
/// tracing checks at every call site, and the one the `log` records of sled are cut at before they
/// are even built: a cap letting everything else through at `trace` had every `debug!` and
/// `debug_span!` of the hot path built and then dropped, and every `trace!` of sled's, ~10% of the
/// coordinator's CPU under load.
fn store_cap(most: LevelFilter) -> Targets {
    Targets::new()
        .with_default(most)
        .with_target("sled", LevelFilter::INFO.min(most))
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

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;
    use tracing_subscriber::layer::Filter;

    #[test]
    fn the_cap_lets_through_no_more_than_rust_log_and_sled_never_below_info() {
        let at_info = store_cap(LevelFilter::INFO);
        assert_eq!(
            Filter::<tracing_subscriber::Registry>::max_level_hint(&at_info),
            Some(LevelFilter::INFO),
            "what tracing checks at every call site"
        );
        assert!(!at_info.would_enable("tpc::protocol", &Level::DEBUG));
        let at_trace = store_cap(LevelFilter::TRACE);
        assert!(at_trace.would_enable("tpc::protocol", &Level::TRACE));
        assert!(!at_trace.would_enable("sled::tree", &Level::DEBUG));
        assert!(at_trace.would_enable("sled::tree", &Level::INFO));
        let at_warn = store_cap(LevelFilter::WARN);
        assert!(!at_warn.would_enable("sled::tree", &Level::INFO));
    }
}
