//! The two clocks a tpc process reads, kept apart.
//!
//! Wall time (`now_ms`) is what people and other processes understand: the times written into records
//! and shown by `tpc txn`, and the time inside a UUIDv7 transaction id. But it can jump, both ways,
//! whenever NTP or an operator steps it; a timer measured on it would fire an hour late after a step
//! back of an hour (a circuit breaker kept open, in-doubt transactions never asked about, users kept
//! locked). So every protocol timer runs on the monotonic clock (`monotonic_ms`), and the engines are
//! given both as a [`Now`].

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where a simulation's wall clock starts (2026-01-01T00:00:00Z, in ms since the Unix epoch).
pub const SIMULATION_EPOCH_MS: u64 = 1_767_225_600_000;

/// Milliseconds since the Unix epoch: the timestamps tpc writes into its logs. (In a simulation: the
/// simulated time since [`SIMULATION_EPOCH_MS`].)
pub fn now_ms() -> u64 {
    if let Some(elapsed) = crate::simulation::elapsed() {
        return SIMULATION_EPOCH_MS + elapsed.as_millis() as u64;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds on a clock that never goes backwards and ignores steps of the wall clock, counted from
/// an arbitrary origin in this process: only differences between two readings mean anything.
pub fn monotonic_ms() -> u64 {
    if let Some(elapsed) = crate::simulation::elapsed() {
        return elapsed.as_millis() as u64;
    }
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One reading of both clocks, handed to an engine with each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Wall time (ms since the Unix epoch): for records, display, and comparing with the time in a
    /// transaction id made by another process.
    pub wall: u64,
    /// Monotonic time ([`monotonic_ms`]): for every timer and every duration.
    pub mono: u64,
}

impl Now {
    pub fn current() -> Self {
        Self {
            wall: now_ms(),
            mono: monotonic_ms(),
        }
    }

    /// The monotonic reading at which something that happened at wall time `wall_ms` (read from a record
    /// written before this process started, say) happened, as far as this process can tell: as long ago
    /// on the monotonic clock as it was on the wall clock. Never later than now.
    pub fn mono_of_wall(&self, wall_ms: u64) -> u64 {
        self.mono.saturating_sub(self.wall.saturating_sub(wall_ms))
    }
}

/// Both clocks at the same reading: what tests and simulations use, where no clock is ever stepped.
impl From<u64> for Now {
    fn from(ms: u64) -> Self {
        Self { wall: ms, mono: ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monotonic_clock_never_goes_backwards() {
        let mut last = monotonic_ms();
        for _ in 0..1000 {
            let now = monotonic_ms();
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn a_past_wall_time_maps_to_as_long_ago_on_the_monotonic_clock() {
        let now = Now {
            wall: 1_000_000,
            mono: 5_000,
        };
        assert_eq!(now.mono_of_wall(999_000), 4_000);
        // Older than the monotonic origin: at the origin.
        assert_eq!(now.mono_of_wall(10), 0);
        // "In the future" (the wall clock was stepped back since): now, never later.
        assert_eq!(now.mono_of_wall(2_000_000), 5_000);
    }
}
