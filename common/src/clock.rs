use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the timestamps tpc writes into its logs.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
