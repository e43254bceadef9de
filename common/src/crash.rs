use std::sync::OnceLock;

/// Environment variable naming the crash points to trigger, comma separated.
pub const CRASH_AT_ENV: &str = "TPC_CRASH_AT";

/// Dies at once, like `kill -9`, if `name` is listed in `TPC_CRASH_AT`.
///
/// Placed at the protocol steps where a crash matters (after the decision is forced, before the reply…),
/// so the demo and the tests can show that recovery finishes what the crash interrupted. `abort` runs no
/// destructors and flushes nothing: whatever was not forced is lost, exactly as in a real crash.
pub fn crash_point(name: &str) {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var(CRASH_AT_ENV)
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
            .unwrap_or_default()
    });
    if armed.iter().any(|a| a == name) {
        eprintln!("crash point {name}: aborting the process");
        std::process::abort();
    }
}
