//! The saga barrier: what a participant does with an `Apply` or a `Compensate`, given what it recorded
//! for the transaction before. Pure, so every case is tested here one by one.
//!
//! Messages of a saga are retried, duplicated and reordered like any others. The barrier record, one per
//! transaction, written in the same batch as the effect it describes, makes them safe (the "barrier" of
//! DTM and Seata):
//! - a duplicate `Apply` or `Compensate` does nothing and gets the first answer;
//! - a `Compensate` of a transaction never applied here succeeds and is recorded (empty compensation);
//! - an `Apply` that arrives after its `Compensate` does nothing (no hanging): it would otherwise apply a
//!   change whose saga already gave up, and nobody would ever undo it.
//!
//! The events strategy uses the same record for its consumers' idempotence (a redelivered event is
//! answered from it) and never compensates.

use serde::{Deserialize, Serialize};
use tpc_common::{Strategy, UserId};

/// What a participant recorded for one saga or events transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Barrier<U> {
    /// The change is in effect; `undo` restores what it replaced (a saga's only: events never undo).
    Applied {
        strategy: Strategy,
        user: UserId,
        undo: Option<U>,
        /// What the answer told the coordinator (the password participant: the user's e-mail address).
        detail: String,
        at: u64,
    },
    /// The checks failed; nothing changed.
    Refused { strategy: Strategy, reason: String },
    /// Compensated: undone if it had been applied (`undone`), or recorded before any `Apply`.
    Compensated {
        strategy: Strategy,
        user: UserId,
        undone: bool,
        at: u64,
    },
}

impl<U> Barrier<U> {
    pub fn strategy(&self) -> Strategy {
        match self {
            Barrier::Applied { strategy, .. }
            | Barrier::Refused { strategy, .. }
            | Barrier::Compensated { strategy, .. } => *strategy,
        }
    }
}

/// The answer to an `Apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// In effect; carries the detail for the coordinator.
    Yes(String),
    No(String),
}

/// What to do with an `Apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyStep {
    /// Answered before: answer the same again, change nothing.
    Answer(Applied),
    /// New: check the operation and apply it.
    Run,
    /// The transaction id belongs to another strategy.
    WrongStrategy(Strategy),
}

/// The reason an `Apply` after its `Compensate` gets.
pub const COMPENSATED: &str = "the saga was compensated before this step arrived";

pub fn on_apply<U>(recorded: Option<&Barrier<U>>, strategy: Strategy) -> ApplyStep {
    match recorded {
        None => ApplyStep::Run,
        Some(r) if r.strategy() != strategy => ApplyStep::WrongStrategy(r.strategy()),
        Some(Barrier::Applied { detail, .. }) => ApplyStep::Answer(Applied::Yes(detail.clone())),
        Some(Barrier::Refused { reason, .. }) => ApplyStep::Answer(Applied::No(reason.clone())),
        Some(Barrier::Compensated { .. }) => ApplyStep::Answer(Applied::No(COMPENSATED.into())),
    }
}

/// What to do with a `Compensate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompensateStep<U> {
    /// Compensated before: acknowledge.
    Ack,
    /// Undo the applied change, and record that it was undone.
    Undo {
        user: UserId,
        undo: U,
    },
    /// Record an empty compensation, so a late `Apply` does nothing. (Also over a refusal: that record
    /// is not forced, and a crash that lost it must not let a late duplicate `Apply` run.)
    RecordEmpty,
    WrongStrategy(Strategy),
}

pub fn on_compensate<U: Clone>(
    recorded: Option<&Barrier<U>>,
    strategy: Strategy,
) -> CompensateStep<U> {
    match recorded {
        None => CompensateStep::RecordEmpty,
        Some(r) if r.strategy() != strategy => CompensateStep::WrongStrategy(r.strategy()),
        Some(Barrier::Applied {
            user,
            undo: Some(undo),
            ..
        }) => CompensateStep::Undo {
            user: user.clone(),
            undo: undo.clone(),
        },
        // Nothing was kept to undo it with (never for a saga's record).
        Some(Barrier::Applied { undo: None, .. }) => CompensateStep::Ack,
        Some(Barrier::Compensated { .. }) => CompensateStep::Ack,
        Some(Barrier::Refused { .. }) => CompensateStep::RecordEmpty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    fn applied() -> Barrier<u8> {
        Barrier::Applied {
            strategy: Strategy::Saga,
            user: alice(),
            undo: Some(7),
            detail: "alice@example.com".into(),
            at: 1,
        }
    }

    fn compensated(undone: bool) -> Barrier<u8> {
        Barrier::Compensated {
            strategy: Strategy::Saga,
            user: alice(),
            undone,
            at: 2,
        }
    }

    #[test]
    fn a_new_apply_runs_and_a_duplicate_gets_the_first_answer() {
        assert_eq!(on_apply::<u8>(None, Strategy::Saga), ApplyStep::Run);
        assert_eq!(
            on_apply(Some(&applied()), Strategy::Saga),
            ApplyStep::Answer(Applied::Yes("alice@example.com".into()))
        );
        let refused = Barrier::<u8>::Refused {
            strategy: Strategy::Saga,
            reason: "password was used recently".into(),
        };
        assert_eq!(
            on_apply(Some(&refused), Strategy::Saga),
            ApplyStep::Answer(Applied::No("password was used recently".into()))
        );
    }

    #[test]
    fn an_apply_after_its_compensate_does_nothing() {
        for undone in [false, true] {
            assert_eq!(
                on_apply(Some(&compensated(undone)), Strategy::Saga),
                ApplyStep::Answer(Applied::No(COMPENSATED.into()))
            );
        }
    }

    #[test]
    fn compensate_undoes_once_and_records_an_empty_compensation() {
        assert_eq!(
            on_compensate(Some(&applied()), Strategy::Saga),
            CompensateStep::Undo {
                user: alice(),
                undo: 7
            }
        );
        assert_eq!(
            on_compensate::<u8>(None, Strategy::Saga),
            CompensateStep::RecordEmpty
        );
        for done in [compensated(true), compensated(false)] {
            assert_eq!(
                on_compensate(Some(&done), Strategy::Saga),
                CompensateStep::Ack
            );
        }
        let refused = Barrier::<u8>::Refused {
            strategy: Strategy::Saga,
            reason: "unknown user".into(),
        };
        assert_eq!(
            on_compensate(Some(&refused), Strategy::Saga),
            CompensateStep::RecordEmpty
        );
    }

    #[test]
    fn one_strategy_never_takes_another_strategys_record() {
        assert_eq!(
            on_apply(Some(&applied()), Strategy::Events),
            ApplyStep::WrongStrategy(Strategy::Saga)
        );
        assert_eq!(
            on_compensate(Some(&applied()), Strategy::Events),
            CompensateStep::WrongStrategy(Strategy::Saga)
        );
    }
}
