//! Where the clients put what they saw. Only answers that arrive inside the measured period count;
//! those of the warm-up are counted apart, as committed work the data directories will hold.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::latency;

/// Length of a window of the measured period.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Distinct refusal reasons kept by name; the rest are counted under [`OTHER_REASONS`]. The reasons are
/// fixed texts, but a status message could carry an id, and the results must stay readable.
const MAX_REASONS: usize = 40;
pub const OTHER_REASONS: &str = "(other reasons)";

pub struct Recorder {
    from: Instant,
    until: Instant,
    /// Live counts of the measured period, for the progress bar.
    pub committed: AtomicU64,
    pub refused: AtomicU64,
    /// Committed at any time, warm-up included.
    pub committed_ever: AtomicU64,
    inner: Mutex<Inner>,
}

struct Inner {
    /// One histogram per window of the measured period.
    windows: Vec<Histogram<u64>>,
    /// Committed per whole second of the measured period, for throughput over time around faults.
    per_second: Vec<u64>,
    reasons: BTreeMap<String, u64>,
}

/// What the recorder holds once the clients are done.
pub struct Recorded {
    pub windows: Vec<Histogram<u64>>,
    pub per_second: Vec<u64>,
    pub refused: BTreeMap<String, u64>,
    pub committed_ever: u64,
}

/// Which window an answer at `offset` into the measured period of length `period` falls in; `None`
/// outside the period.
pub fn window_index(offset: Duration, period: Duration) -> Option<usize> {
    (offset < period).then(|| (offset.as_nanos() / WINDOW.as_nanos()) as usize)
}

/// How many windows cover `period` (the last may be shorter).
pub fn window_count(period: Duration) -> usize {
    period.as_nanos().div_ceil(WINDOW.as_nanos()).max(1) as usize
}

impl Recorder {
    /// Measures answers that arrive in `[from, from + period)`.
    pub fn new(from: Instant, period: Duration) -> Self {
        Self {
            from,
            until: from + period,
            committed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            committed_ever: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                windows: (0..window_count(period))
                    .map(|_| latency::histogram())
                    .collect(),
                per_second: vec![0; period.as_secs_f64().ceil() as usize],
                reasons: BTreeMap::new(),
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A client that panicked mid-record left counts, not broken invariants: keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn window(&self, at: Instant) -> Option<usize> {
        window_index(
            at.checked_duration_since(self.from)?,
            self.until - self.from,
        )
    }

    pub fn committed(&self, at: Instant, latency: Duration) {
        self.committed_ever.fetch_add(1, Ordering::Relaxed);
        if let Some(w) = self.window(at) {
            self.committed.fetch_add(1, Ordering::Relaxed);
            let second = at.duration_since(self.from).as_secs() as usize;
            let mut inner = self.inner();
            latency::record(&mut inner.windows[w], latency);
            if let Some(n) = inner.per_second.get_mut(second) {
                *n += 1;
            }
        }
    }

    pub fn refused(&self, at: Instant, reason: &str) {
        if self.window(at).is_some() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            let mut inner = self.inner();
            let key = if inner.reasons.len() < MAX_REASONS || inner.reasons.contains_key(reason) {
                reason
            } else {
                OTHER_REASONS
            };
            *inner.reasons.entry(key.to_owned()).or_default() += 1;
        }
    }

    pub fn finish(&self) -> Recorded {
        let mut inner = self.inner();
        Recorded {
            windows: std::mem::take(&mut inner.windows),
            per_second: std::mem::take(&mut inner.per_second),
            refused: std::mem::take(&mut inner.reasons),
            committed_ever: self.committed_ever.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_placed_in_ten_second_windows() {
        let period = Duration::from_secs(25);
        assert_eq!(window_count(period), 3);
        assert_eq!(window_count(Duration::from_secs(20)), 2);
        assert_eq!(window_count(Duration::from_secs(3)), 1);
        assert_eq!(window_index(Duration::ZERO, period), Some(0));
        assert_eq!(window_index(Duration::from_millis(9_999), period), Some(0));
        assert_eq!(window_index(Duration::from_secs(10), period), Some(1));
        assert_eq!(window_index(Duration::from_millis(24_999), period), Some(2));
        assert_eq!(window_index(period, period), None);
    }

    #[test]
    fn only_the_measured_period_counts() {
        let from = Instant::now() + Duration::from_secs(5);
        let recorder = Recorder::new(from, Duration::from_secs(10));
        recorder.committed(Instant::now(), Duration::from_millis(3)); // warm-up
        recorder.refused(Instant::now(), "conflict"); // warm-up
        recorder.committed(from + Duration::from_secs(1), Duration::from_millis(3));
        recorder.refused(from + Duration::from_secs(2), "conflict");
        recorder.refused(from + Duration::from_secs(11), "conflict"); // after
        let recorded = recorder.finish();
        assert_eq!(recorded.committed_ever, 2);
        assert_eq!(recorded.windows.len(), 1);
        assert_eq!(recorded.windows[0].len(), 1);
        assert_eq!(recorded.per_second, [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(recorded.refused, BTreeMap::from([("conflict".into(), 1)]));
    }

    #[test]
    fn too_many_distinct_reasons_are_lumped_together() {
        let from = Instant::now();
        let recorder = Recorder::new(from, Duration::from_secs(60));
        for i in 0..MAX_REASONS + 5 {
            recorder.refused(from, &format!("reason {i}"));
        }
        recorder.refused(from, "reason 0");
        let refused = recorder.finish().refused;
        assert_eq!(refused.len(), MAX_REASONS + 1);
        assert_eq!(refused[OTHER_REASONS], 5);
        assert_eq!(refused["reason 0"], 2);
    }
}
