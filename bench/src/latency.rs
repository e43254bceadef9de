//! Latency arithmetic over hdrhistograms: percentiles, the CDF, and the windows over time.
//!
//! Latencies are recorded in microseconds from 1 µs to a minute with three significant digits, so a
//! percentile is within 0.1% of the true value at any count, and histograms of different windows add
//! up exactly (a per-minute p99 is the p99 of the minute's changes, not an average of p99s).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::results::Window;

/// Longest latency a histogram holds exactly; longer ones are recorded as this (no request waits
/// longer than its 5 s timeout anyway).
const HIGHEST_US: u64 = 60_000_000;

/// An empty latency histogram (µs).
pub fn histogram() -> Histogram<u64> {
    // 1..=60e6 with 3 significant digits are valid bounds: low ≥ 1, high ≥ 2 × low, sigfig ≤ 5.
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

pub fn record(hist: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    hist.saturating_record(us.clamp(1, HIGHEST_US));
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The quantile `q` (0..=1) in milliseconds; 0 for an empty histogram.
pub fn quantile_ms(hist: &Histogram<u64>, q: f64) -> f64 {
    if hist.is_empty() {
        0.0
    } else {
        ms(hist.value_at_quantile(q))
    }
}

pub fn max_ms(hist: &Histogram<u64>) -> f64 {
    if hist.is_empty() { 0.0 } else { ms(hist.max()) }
}

/// `[latency ms, fraction at or below it]`, ascending, thinned to a few hundred points: a point is kept
/// when the fraction has grown by 0.2% or the latency by 5% since the last kept one, so the body keeps
/// its shape and the tail (few changes, wide spread) keeps its steps.
pub fn cdf(hist: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = Vec::new();
    let recorded: Vec<(f64, f64)> = hist
        .iter_recorded()
        .map(|v| {
            (
                ms(hist.highest_equivalent(v.value_iterated_to())),
                v.quantile_iterated_to(),
            )
        })
        .collect();
    for (i, &(at, fraction)) in recorded.iter().enumerate() {
        let last = i + 1 == recorded.len();
        let keep = match points.last() {
            None => true,
            Some(&(prev_at, prev_fraction)) => {
                last || fraction - prev_fraction >= 0.002 || at >= prev_at * 1.05
            }
        };
        if keep {
            points.push((at, fraction));
        }
    }
    points
}

/// The committed changes of one stretch of the measured period.
#[derive(Debug, Clone)]
pub struct Tally {
    pub start_s: f64,
    pub length_s: f64,
    pub latencies: Histogram<u64>,
    /// Resident memory per service when the stretch ended, MiB.
    pub rss_mib: BTreeMap<String, f64>,
}

impl Tally {
    pub fn summary(&self) -> Window {
        let committed = self.latencies.len() as f64;
        Window {
            t_s: self.start_s,
            length_s: self.length_s,
            committed_per_s: if self.length_s > 0.0 {
                committed / self.length_s
            } else {
                0.0
            },
            p99_ms: (!self.latencies.is_empty()).then(|| quantile_ms(&self.latencies, 0.99)),
            rss_mib: self.rss_mib.clone(),
        }
    }
}

/// Consecutive tallies merged `n` at a time (six 10-second windows make a minute). The merged tally
/// keeps the memory reading of its last part, taken when it ended.
pub fn merge(tallies: &[Tally], n: usize) -> Vec<Tally> {
    tallies
        .chunks(n.max(1))
        .map(|chunk| {
            let mut latencies = histogram();
            for t in chunk {
                // Every histogram here comes from `histogram()`, with the same bounds, so every value
                // of one fits the other.
                latencies
                    .add(&t.latencies)
                    .expect("histograms with equal bounds");
            }
            Tally {
                start_s: chunk[0].start_s,
                length_s: chunk.iter().map(|t| t.length_s).sum(),
                latencies,
                rss_mib: chunk.last().map(|t| t.rss_mib.clone()).unwrap_or_default(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(values_ms: &[u64]) -> Histogram<u64> {
        let mut h = histogram();
        for &v in values_ms {
            record(&mut h, Duration::from_millis(v));
        }
        h
    }

    #[test]
    fn percentiles_are_in_milliseconds() {
        let h = filled(&(1..=100).collect::<Vec<_>>());
        assert!((quantile_ms(&h, 0.5) - 50.0).abs() < 0.1);
        assert!((quantile_ms(&h, 0.99) - 99.0).abs() < 0.1);
        assert!((max_ms(&h) - 100.0).abs() < 0.1);
        assert_eq!(quantile_ms(&histogram(), 0.99), 0.0);
    }

    #[test]
    fn the_cdf_rises_to_one_and_is_monotonic() {
        let h = filled(&[1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 1000]);
        let points = cdf(&h);
        assert!(points.len() >= 2);
        assert!(
            points
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        );
        let (last_ms, last_fraction) = points[points.len() - 1];
        assert!((last_fraction - 1.0).abs() < 1e-9);
        assert!((last_ms - 1000.0).abs() < 1.0);
        assert!(cdf(&histogram()).is_empty());
    }

    #[test]
    fn windows_merge_into_minutes_exactly() {
        let windows: Vec<Tally> = (0..8)
            .map(|i| Tally {
                start_s: i as f64 * 10.0,
                length_s: 10.0,
                latencies: filled(&vec![if i == 7 { 500 } else { 5 }; 100]),
                rss_mib: BTreeMap::from([("coordinator".into(), 10.0 + i as f64)]),
            })
            .collect();
        let minutes = merge(&windows, 6);
        assert_eq!(minutes.len(), 2);
        let (first, second) = (minutes[0].summary(), minutes[1].summary());
        assert_eq!((first.t_s, first.length_s), (0.0, 60.0));
        assert!((first.committed_per_s - 10.0).abs() < 1e-9);
        assert!((first.p99_ms.unwrap() - 5.0).abs() < 0.01);
        assert_eq!(first.rss_mib["coordinator"], 15.0);
        assert_eq!((second.t_s, second.length_s), (60.0, 20.0));
        assert!((second.p99_ms.unwrap() - 500.0).abs() < 1.0);
    }

    #[test]
    fn an_empty_window_has_no_p99() {
        let w = Tally {
            start_s: 0.0,
            length_s: 10.0,
            latencies: histogram(),
            rss_mib: BTreeMap::new(),
        }
        .summary();
        assert_eq!(w.committed_per_s, 0.0);
        assert_eq!(w.p99_ms, None);
    }
}
