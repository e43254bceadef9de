//! How many transactions may collect votes at once: an adaptive limit, so that every change the
//! coordinator starts can finish preparing within the deadline.
//!
//! Without it, a load beyond what the participants can hash in time collapsed: at OWASP cost 16 clients
//! got 0.1 changes/s, every prepare missed its deadline, and the CPU went to argon2 work for transactions
//! already aborted. With it, the changes beyond the limit wait in a short queue or are refused at once
//! (`RESOURCE_EXHAUSTED` with a retry hint), and the admitted ones finish.
//!
//! The limit follows the time a prepare takes (all votes in) the way TCP's congestion window follows
//! round-trip times. It starts small, since nothing says yet how fast the participants hash, and grows by
//! one per fast completion (doubling each round: slow start) until the first slow one; from then on it
//! grows by about one per `limit` fast completions (additive increase). A prepare slower than half the
//! deadline cuts it to 70%, at most once per typical prepare time, so one burst of slow completions is
//! one cut, not many.
//! The queue admits a change only if, at the current rate (`limit` prepares per typical prepare time), its
//! turn and its own prepare come within half the deadline.

use std::time::Duration;

/// The share of the prepare deadline that admission plans to use; the rest is the safety margin for
/// a prepare slower than the typical one.
const PLANNED_SHARE: f64 = 0.5;
/// A prepare faster than this share of the deadline lets the limit grow.
const FAST_SHARE: f64 = 0.25;
/// What the limit is multiplied by after a slow prepare.
const DECREASE: f64 = 0.7;
/// Weight of the newest prepare time in the moving average.
const SMOOTHING: f64 = 0.2;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitConfig {
    /// The limit at start, before any prepare was measured.
    pub initial: f64,
    /// The limit never goes below one (some change always makes progress) nor above this.
    pub max: f64,
    /// The bound of the admission queue, whatever the estimate says.
    pub max_waiting: usize,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            initial: 4.0,
            max: 1024.0,
            max_waiting: 4096,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PrepareLimit {
    config: LimitConfig,
    deadline_ms: f64,
    limit: f64,
    /// Moving average of how long a prepare takes (ms); `None` until one finished.
    typical_ms: Option<f64>,
    /// When the limit was last cut (ms), so one slow burst cuts it once; `None` during slow start.
    last_cut_at: Option<u64>,
}

impl PrepareLimit {
    pub fn new(config: LimitConfig, deadline: Duration) -> Self {
        Self {
            config,
            deadline_ms: deadline.as_millis() as f64,
            limit: config.initial.clamp(1.0, config.max),
            typical_ms: None,
            last_cut_at: None,
        }
    }

    /// How many transactions may prepare at once now.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// A prepare that started at `started` finished (all votes in, a no-vote, or the deadline) at `now`.
    pub fn finished(&mut self, started: u64, now: u64) {
        let took = now.saturating_sub(started) as f64;
        let typical = match self.typical_ms {
            Some(avg) => avg + SMOOTHING * (took - avg),
            None => took,
        };
        self.typical_ms = Some(typical);
        if took > PLANNED_SHARE * self.deadline_ms {
            let cooled = self
                .last_cut_at
                .is_none_or(|at| now.saturating_sub(at) as f64 >= typical);
            if cooled {
                self.limit = (self.limit * DECREASE).max(1.0);
                self.last_cut_at = Some(now);
            }
        } else if took < FAST_SHARE * self.deadline_ms {
            let step = match self.last_cut_at {
                None => 1.0,
                Some(_) => 1.0 / self.limit,
            };
            self.limit = (self.limit + step).min(self.config.max);
        }
    }

    /// Whether a prepare started now can finish, at twice the typical prepare time, in `remaining` ms:
    /// a change whose turn comes too late is refused instead of started only to miss its deadline.
    pub fn fits(&self, remaining: u64) -> bool {
        self.typical_ms
            .is_none_or(|typical| 2.0 * typical <= remaining as f64)
    }

    /// Whether a change that would wait behind `ahead` others can still finish preparing within the
    /// planned share of the deadline; if not, how long the caller should wait before retrying.
    pub fn admit(&self, ahead: usize) -> Result<(), Duration> {
        let typical = self.typical_ms.unwrap_or(0.0);
        // `limit` prepares finish per `typical` ms: the wait for a turn, then one prepare.
        let wait = (ahead + 1) as f64 / self.limit * typical;
        if ahead < self.config.max_waiting && wait + typical <= PLANNED_SHARE * self.deadline_ms {
            Ok(())
        } else {
            // At least a millisecond, so a client never retries in a tight loop.
            Err(Duration::from_millis(wait.ceil().max(1.0) as u64))
        }
    }
}

// The estimates are floats, never NaN (sums and products of finite, non-negative measurements): equal
// bits are equal values, so the limit can be part of a state a model checker hashes.
impl Eq for LimitConfig {}

impl std::hash::Hash for LimitConfig {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.initial.to_bits().hash(state);
        self.max.to_bits().hash(state);
        self.max_waiting.hash(state);
    }
}

impl Eq for PrepareLimit {}

impl std::hash::Hash for PrepareLimit {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.config.hash(state);
        self.deadline_ms.to_bits().hash(state);
        self.limit.to_bits().hash(state);
        self.typical_ms.map(f64::to_bits).hash(state);
        self.last_cut_at.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit() -> PrepareLimit {
        PrepareLimit::new(
            LimitConfig {
                initial: 4.0,
                max: 8.0,
                max_waiting: 100,
            },
            Duration::from_millis(2000),
        )
    }

    #[test]
    fn fast_prepares_raise_the_limit_up_to_the_maximum() {
        let mut l = limit();
        l.finished(0, 5);
        l.finished(0, 5);
        assert_eq!(l.limit(), 6, "slow start: one more per completion");
        for i in 0..1000 {
            l.finished(i, i + 5);
        }
        assert_eq!(l.limit(), 8);
    }

    #[test]
    fn after_the_first_slow_prepare_the_limit_grows_by_one_per_round() {
        let mut l = limit();
        l.finished(0, 5);
        l.finished(0, 5);
        l.finished(10, 1_500); // 6 × 0.7 = 4.2
        assert_eq!(l.limit(), 4);
        for i in 0..4 {
            l.finished(2_000 + i, 2_005 + i);
        }
        assert_eq!(l.limit(), 5, "about `limit` completions add one");
    }

    #[test]
    fn a_burst_of_slow_prepares_cuts_the_limit_once() {
        let mut l = limit();
        l.finished(0, 1500);
        assert_eq!(l.limit(), 2, "4 × 0.7");
        // More slow completions within one typical prepare time: no further cut.
        l.finished(10, 1510);
        l.finished(20, 1520);
        assert_eq!(l.limit(), 2);
        // Later, still slow: cut again, but never below one.
        l.finished(3000, 4500);
        l.finished(6000, 7500);
        l.finished(9000, 10500);
        assert_eq!(l.limit(), 1);
    }

    #[test]
    fn prepares_between_fast_and_slow_hold_the_limit() {
        let mut l = limit();
        l.finished(0, 700);
        assert_eq!(l.limit(), 4);
    }

    #[test]
    fn admission_plans_the_wait_within_half_the_deadline() {
        let mut l = limit();
        assert_eq!(l.admit(50), Ok(()), "nothing measured yet");
        l.finished(0, 600); // typical 600 ms, limit 4: a turn comes every 150 ms
        assert_eq!(l.admit(0), Ok(()), "150 + 600 ≤ 1000");
        assert_eq!(l.admit(1), Ok(()), "300 + 600 ≤ 1000");
        assert_eq!(
            l.admit(2),
            Err(Duration::from_millis(450)),
            "450 + 600 > 1000"
        );
        assert!(l.admit(100).is_err(), "the queue's hard bound");
        assert!(l.fits(1200));
        assert!(!l.fits(1199), "twice the typical prepare must fit");
    }
}
