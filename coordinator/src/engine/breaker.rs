//! A circuit breaker per participant: once a participant has failed several prepares in a row, new
//! changes are refused at once (`UNAVAILABLE`, with a retry hint) instead of each waiting out a
//! connection timeout or the prepare deadline; one change at a time is let through to probe, and the
//! first answer from the participant closes it again.
//!
//! Pure: the engine tells it what happened and when; it never reads a clock.

use std::time::Duration;

use tpc_common::TxnId;

/// Failed prepares in a row that open the breaker.
pub const THRESHOLD: u32 = 3;
/// How long it stays open before letting a probe through: short, so a participant that is back
/// serves changes within about this long.
pub const OPEN_FOR: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: u64,
    },
    /// One change is finding out; it gives up being the probe at `until` (it may never reach this
    /// participant, e.g. an update whose current password was wrong).
    Probing {
        probe: TxnId,
        until: u64,
    },
}

/// What the breaker says of a new change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Admit {
    Pass,
    /// Let through as the probe.
    Probe,
    Refuse {
        retry_after: Duration,
    },
}

/// A change of state worth telling an operator about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Turn {
    Opened,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Breaker {
    state: State,
    /// How long a probe may take before another is allowed (the prepare deadline).
    probe_for: Duration,
}

impl Breaker {
    pub fn new(probe_for: Duration) -> Self {
        Self {
            state: State::Closed { failures: 0 },
            probe_for,
        }
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }

    /// Whether a change arriving now would be refused, and for how long, without changing anything
    /// (a change needs every participant's breaker to let it through).
    pub fn refuses(&self, now: u64) -> Option<Duration> {
        match self.state {
            State::Closed { .. } => None,
            State::Open { until } | State::Probing { until, .. } if now >= until => None,
            State::Open { until } | State::Probing { until, .. } => {
                Some(Duration::from_millis((until - now).max(1)))
            }
        }
    }

    pub fn admit(&mut self, txn: TxnId, now: u64) -> Admit {
        match self.state {
            State::Closed { .. } => Admit::Pass,
            State::Open { until } | State::Probing { until, .. } if now >= until => {
                self.state = State::Probing {
                    probe: txn,
                    until: now + self.probe_for.as_millis() as u64,
                };
                Admit::Probe
            }
            State::Open { until } | State::Probing { until, .. } => Admit::Refuse {
                retry_after: Duration::from_millis((until - now).max(1)),
            },
        }
    }

    /// The participant answered (a vote of either kind, an acknowledgement): it is reachable.
    pub fn answered(&mut self) -> Option<Turn> {
        let was_open = self.is_open();
        self.state = State::Closed { failures: 0 };
        was_open.then_some(Turn::Closed)
    }

    /// A prepare of `txn` could not reach the participant.
    pub fn failed(&mut self, txn: TxnId, now: u64) -> Option<Turn> {
        let open = State::Open {
            until: now + OPEN_FOR.as_millis() as u64,
        };
        match self.state {
            State::Closed { failures } if failures + 1 >= THRESHOLD => {
                self.state = open;
                Some(Turn::Opened)
            }
            State::Closed { failures } => {
                self.state = State::Closed {
                    failures: failures + 1,
                };
                None
            }
            State::Probing { probe, .. } if probe == txn => {
                self.state = open;
                None
            }
            // A failure of a change let through before it opened: it is open already.
            State::Open { .. } | State::Probing { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(2);

    fn opened(now: u64) -> Breaker {
        let mut b = Breaker::new(DEADLINE);
        assert_eq!(b.failed(TxnId::generate(), now), None);
        assert_eq!(b.failed(TxnId::generate(), now), None);
        assert_eq!(b.failed(TxnId::generate(), now), Some(Turn::Opened));
        b
    }

    #[test]
    fn it_opens_after_the_threshold_of_failures_in_a_row_only() {
        let mut b = Breaker::new(DEADLINE);
        b.failed(TxnId::generate(), 0);
        b.failed(TxnId::generate(), 0);
        assert_eq!(b.answered(), None, "an answer in between resets the count");
        b.failed(TxnId::generate(), 0);
        b.failed(TxnId::generate(), 0);
        assert_eq!(b.admit(TxnId::generate(), 0), Admit::Pass);
        assert!(!b.is_open());
        let b = opened(0);
        assert!(b.is_open());
    }

    #[test]
    fn while_open_changes_are_refused_with_the_time_left() {
        let mut b = opened(1_000);
        assert_eq!(
            b.admit(TxnId::generate(), 1_100),
            Admit::Refuse {
                retry_after: Duration::from_millis(400)
            }
        );
    }

    #[test]
    fn after_the_open_period_one_probe_passes_and_its_answer_closes() {
        let mut b = opened(1_000);
        let probe = TxnId::generate();
        assert_eq!(b.admit(probe, 1_500), Admit::Probe);
        assert!(
            matches!(b.admit(TxnId::generate(), 1_501), Admit::Refuse { .. }),
            "one probe at a time"
        );
        assert_eq!(b.answered(), Some(Turn::Closed));
        assert_eq!(b.admit(TxnId::generate(), 1_502), Admit::Pass);
    }

    #[test]
    fn a_failed_probe_opens_it_again_and_a_lost_probe_is_replaced() {
        let mut b = opened(1_000);
        let probe = TxnId::generate();
        assert_eq!(b.admit(probe, 1_500), Admit::Probe);
        assert_eq!(b.failed(TxnId::generate(), 1_600), None, "not the probe");
        assert!(matches!(
            b.admit(TxnId::generate(), 1_600),
            Admit::Refuse { .. }
        ));
        assert_eq!(b.failed(probe, 1_700), None);
        assert_eq!(
            b.admit(TxnId::generate(), 1_800),
            Admit::Refuse {
                retry_after: Duration::from_millis(400)
            },
            "open again for the full period"
        );
        // A probe that never reaches the participant is replaced once the deadline passed.
        let lost = TxnId::generate();
        assert_eq!(b.admit(lost, 2_200), Admit::Probe);
        assert!(matches!(
            b.admit(TxnId::generate(), 4_199),
            Admit::Refuse { .. }
        ));
        assert_eq!(b.admit(TxnId::generate(), 4_200), Admit::Probe);
    }
}
