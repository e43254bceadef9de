use super::*;
use tpc_common::Password;

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn update(name: &str) -> Operation {
    Operation::Update {
        user: user(name),
        current: Password::new("current_password", "old".into()).unwrap(),
        new: Password::new("new_password", "new".into()).unwrap(),
    }
}

fn applied(detail: &str) -> StepResult {
    StepResult::Applied {
        detail: detail.into(),
    }
}

/// Begins a saga for `name` and runs it to its first `Apply`.
fn started(engine: &mut Engine, name: &str, request: &str) -> TxnId {
    let txn = TxnId::generate();
    let out = engine.handle(
        Event::Begin {
            txn,
            request_id: request.into(),
            op: update(name),
        },
        10,
    );
    assert!(
        matches!(&out[..], [Command::ForceStart { txn: t, .. }] if *t == txn),
        "{out:?}"
    );
    let out = engine.handle(Event::StartForced { txn }, 11);
    assert_eq!(
        out,
        [Command::SendApply {
            txn,
            step: Participant::Password,
            op: update(name)
        }]
    );
    txn
}

fn step(txn: TxnId, step: Participant, result: StepResult) -> Event {
    Event::StepDone { txn, step, result }
}

fn compensates(out: &[Command]) -> Vec<Participant> {
    out.iter()
        .filter_map(|c| match c {
            Command::SendCompensate { step, .. } => Some(*step),
            _ => None,
        })
        .collect()
}

fn reply(out: &[Command]) -> Option<&Outcome> {
    out.iter().find_map(|c| match c {
        Command::Reply { outcome, .. } => Some(outcome),
        _ => None,
    })
}

#[test]
fn steps_run_in_order_and_the_email_waits_for_the_last_one() {
    let mut engine = Engine::new(Config::default());
    let txn = started(&mut engine, "alice", "r1");
    let out = engine.handle(
        step(txn, Participant::Password, applied("alice@example.com")),
        12,
    );
    assert_eq!(
        out,
        [Command::SendApply {
            txn,
            step: Participant::History,
            op: update("alice")
        }]
    );
    let out = engine.handle(step(txn, Participant::History, applied("")), 13);
    let [Command::ForceCompleted { record }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(record.email.to_string(), "alice@example.com");
    assert_eq!(record.decided_at, 13);
    let out = engine.handle(Event::CompletedForced { txn }, 14);
    assert!(reply(&out).is_some_and(|o| o.committed && o.txn == txn));

    // A retry of the request gets the same outcome without running again.
    let retry = TxnId::generate();
    let out = engine.handle(
        Event::Begin {
            txn: retry,
            request_id: "r1".into(),
            op: update("alice"),
        },
        15,
    );
    assert!(matches!(&out[..], [Command::Reply { clients, outcome }]
        if clients == &[retry] && outcome.txn == txn && outcome.committed));
}

#[test]
fn a_refused_first_step_aborts_without_compensating() {
    let mut engine = Engine::new(Config::default());
    let txn = started(&mut engine, "alice", "r1");
    let out = engine.handle(
        step(
            txn,
            Participant::Password,
            StepResult::Refused {
                reason: "current password is wrong".into(),
            },
        ),
        12,
    );
    assert!(compensates(&out).is_empty(), "{out:?}");
    assert!(matches!(out[0], Command::LogAborted { .. }));
    assert!(reply(&out).is_some_and(|o| !o.committed && o.reason == "current password is wrong"));
    assert!(!engine.is_running(txn));
}

#[test]
fn a_refused_history_step_compensates_the_password() {
    let mut engine = Engine::new(Config::default());
    let txn = started(&mut engine, "alice", "r1");
    engine.handle(
        step(txn, Participant::Password, applied("alice@example.com")),
        12,
    );
    let out = engine.handle(
        step(
            txn,
            Participant::History,
            StepResult::Refused {
                reason: "password was used recently".into(),
            },
        ),
        13,
    );
    assert!(matches!(out[0], Command::LogCompensating { .. }));
    assert_eq!(compensates(&out), [Participant::Password]);
    assert!(reply(&out).is_some_and(|o| !o.committed));
    assert!(engine.is_running(txn), "until the compensation is acked");
    let out = engine.handle(
        Event::Compensated {
            txn,
            step: Participant::Password,
        },
        14,
    );
    assert_eq!(out, [Command::LogCompensated { txn }]);
    assert!(!engine.is_running(txn));
}

#[test]
fn an_unknown_step_is_compensated_too_and_compensations_are_resent_until_acked() {
    let mut engine = Engine::new(Config::default());
    let txn = started(&mut engine, "alice", "r1");
    engine.handle(
        step(txn, Participant::Password, applied("alice@example.com")),
        12,
    );
    let out = engine.handle(
        step(
            txn,
            Participant::History,
            StepResult::Unknown {
                error: "deadline".into(),
            },
        ),
        13,
    );
    // In reverse order: history first.
    assert_eq!(
        compensates(&out),
        [Participant::History, Participant::Password]
    );
    assert!(reply(&out).is_some_and(|o| o.reason.contains("history participant unavailable")));
    let out = engine.handle(
        Event::CompensateFailed {
            txn,
            step: Participant::History,
            attempt: 0,
        },
        14,
    );
    assert!(
        matches!(&out[..], [Command::SendCompensate { step: Participant::History, attempt: 1, after, .. }]
        if *after > Duration::ZERO)
    );
    engine.handle(
        Event::Compensated {
            txn,
            step: Participant::Password,
        },
        15,
    );
    let out = engine.handle(
        Event::Compensated {
            txn,
            step: Participant::History,
        },
        16,
    );
    assert_eq!(out, [Command::LogCompensated { txn }]);
}

#[test]
fn one_saga_per_user_the_next_starts_when_the_first_is_over() {
    let mut engine = Engine::new(Config::default());
    let first = started(&mut engine, "alice", "r1");
    let second = TxnId::generate();
    let out = engine.handle(
        Event::Begin {
            txn: second,
            request_id: "r2".into(),
            op: update("alice"),
        },
        12,
    );
    assert!(out.is_empty(), "queued behind the first: {out:?}");
    // Another user is not held up.
    started(&mut engine, "bob", "r3");
    let out = engine.handle(
        step(
            first,
            Participant::Password,
            StepResult::Refused {
                reason: "current password is wrong".into(),
            },
        ),
        13,
    );
    assert!(
        matches!(out.last(), Some(Command::ForceStart { txn, .. }) if *txn == second),
        "{out:?}"
    );
}

#[test]
fn a_request_id_joins_its_running_saga_and_is_refused_for_another_request() {
    let mut engine = Engine::new(Config::default());
    let txn = started(&mut engine, "alice", "r1");
    let again = TxnId::generate();
    let out = engine.handle(
        Event::Begin {
            txn: again,
            request_id: "r1".into(),
            op: update("alice"),
        },
        12,
    );
    assert!(out.is_empty());
    let other = TxnId::generate();
    let out = engine.handle(
        Event::Begin {
            txn: other,
            request_id: "r1".into(),
            op: update("bob"),
        },
        12,
    );
    assert!(matches!(
        &out[..],
        [Command::Reject {
            refusal: Refusal::RequestReused(_),
            ..
        }]
    ));
    engine.handle(
        step(txn, Participant::Password, applied("alice@example.com")),
        13,
    );
    engine.handle(step(txn, Participant::History, applied("")), 14);
    let out = engine.handle(Event::CompletedForced { txn }, 15);
    assert!(matches!(&out[..], [Command::Reply { clients, .. }] if clients == &[txn, again]));
}

#[test]
fn after_a_restart_every_unfinished_saga_is_compensated_in_full() {
    let mut engine = Engine::new(Config::default());
    let txn = TxnId::generate();
    let out = engine.handle(
        Event::Recovered {
            unfinished: vec![Unfinished {
                txn,
                request_id: "r1".into(),
                kind: OperationKind::Update,
                user: user("alice"),
                started_at: 5,
            }],
            completed: vec![(
                "r0".into(),
                TxnId::generate(),
                OperationKind::Update,
                user("bob"),
            )],
        },
        20,
    );
    assert_eq!(
        compensates(&out),
        [Participant::History, Participant::Password]
    );
    assert!(reply(&out).is_some_and(|o| o.reason == RESTARTED));
    // A new saga of the same user waits for the compensation.
    let next = TxnId::generate();
    assert!(
        engine
            .handle(
                Event::Begin {
                    txn: next,
                    request_id: "r2".into(),
                    op: update("alice"),
                },
                21
            )
            .is_empty()
    );
    engine.handle(
        Event::Compensated {
            txn,
            step: Participant::History,
        },
        22,
    );
    let out = engine.handle(
        Event::Compensated {
            txn,
            step: Participant::Password,
        },
        23,
    );
    assert!(matches!(out.last(), Some(Command::ForceStart { txn, .. }) if *txn == next));
    // The completed request is remembered.
    let retry = TxnId::generate();
    let out = engine.handle(
        Event::Begin {
            txn: retry,
            request_id: "r0".into(),
            op: update("bob"),
        },
        24,
    );
    assert!(reply(&out).is_some_and(|o| o.committed));
}

#[test]
fn beyond_the_active_limit_requests_are_refused_at_once() {
    let mut engine = Engine::new(Config {
        max_active: 1,
        ..Config::default()
    });
    started(&mut engine, "alice", "r1");
    let out = engine.handle(
        Event::Begin {
            txn: TxnId::generate(),
            request_id: "r2".into(),
            op: update("bob"),
        },
        12,
    );
    assert!(matches!(
        &out[..],
        [Command::Reject {
            refusal: Refusal::Overloaded { .. },
            ..
        }]
    ));
}

#[test]
fn stale_and_duplicate_answers_change_nothing() {
    let mut engine = Engine::new(Config::default());
    let txn = started(&mut engine, "alice", "r1");
    // History answers before it was asked: ignored.
    assert!(
        engine
            .handle(step(txn, Participant::History, applied("")), 12)
            .is_empty()
    );
    engine.handle(
        step(txn, Participant::Password, applied("alice@example.com")),
        13,
    );
    // The password step answers twice: the second is ignored.
    assert!(
        engine
            .handle(
                step(txn, Participant::Password, applied("alice@example.com")),
                14
            )
            .is_empty()
    );
}

#[test]
fn a_request_id_reused_with_another_password_is_refused() {
    let mut engine = Engine::new(Config::default());
    started(&mut engine, "alice", "r1");
    let other = Operation::Update {
        user: user("alice"),
        current: Password::new("current_password", "old".into()).unwrap(),
        new: Password::new("new_password", "another".into()).unwrap(),
    };
    let out = engine.handle(
        Event::Begin {
            txn: TxnId::generate(),
            request_id: "r1".into(),
            op: other,
        },
        12,
    );
    assert!(
        matches!(
            &out[..],
            [Command::Reject {
                refusal: Refusal::RequestReused(_),
                ..
            }]
        ),
        "{out:?}"
    );
}
