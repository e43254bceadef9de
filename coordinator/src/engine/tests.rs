//! One event in, the exact commands out, for every event of the coordinator engine.

use super::test_support::BeginNew;
use super::*;
use tpc_common::Password;

const NOW: u64 = 1_000;

fn user() -> UserId {
    UserId::parse("alice").unwrap()
}

fn email() -> Email {
    Email::parse("alice@example.com").unwrap()
}

fn update() -> Operation {
    Operation::Update {
        user: user(),
        current: Password::new("current_password", "old".into()).unwrap(),
        new: Password::new("new_password", "new".into()).unwrap(),
    }
}

fn begin(e: &mut Engine, request_id: &str) -> TxnId {
    let txn = TxnId::generate();
    e.begin_new(
        Event::Begin {
            txn,
            request_id: request_id.into(),
            op: update(),
        },
        NOW,
    );
    txn
}

/// Both vote yes: the password participant first (an update's history `Prepare` goes out only then).
fn yes(e: &mut Engine, txn: TxnId) -> Vec<Command> {
    e.handle(
        Event::Voted {
            txn,
            from: Participant::Password,
            vote: Vote::Yes {
                email: Some(email()),
            },
        },
        NOW + 5,
    );
    e.handle(
        Event::Voted {
            txn,
            from: Participant::History,
            vote: Vote::Yes { email: None },
        },
        NOW + 10,
    )
}

fn aborts_delivered(e: &mut Engine, txn: TxnId) {
    for to in Participant::ALL {
        e.handle(Event::AbortDelivered { txn, to }, NOW);
    }
}

fn record(txn: TxnId, request_id: &str) -> CommitRecord {
    CommitRecord {
        txn,
        request_id: request_id.into(),
        kind: OperationKind::Update,
        user: user(),
        email: email(),
        started_at: NOW,
        decided_at: NOW + 10,
    }
}

fn send_commit(txn: TxnId, to: Participant) -> Command {
    Command::SendCommit {
        txn,
        to,
        after: Duration::ZERO,
        attempt: 0,
    }
}

fn committed(client: TxnId, txn: TxnId, request_id: &str) -> Command {
    Command::Reply {
        clients: vec![client],
        outcome: Outcome {
            txn,
            request_id: request_id.into(),
            committed: true,
            reason: String::new(),
        },
    }
}

#[test]
fn an_update_prepares_the_password_participant_first_then_the_history_with_one_deadline() {
    let mut e = Engine::default();
    let txn = TxnId::generate();
    let out = e.begin_new(
        Event::Begin {
            txn,
            request_id: "r1".into(),
            op: update(),
        },
        NOW,
    );
    assert_eq!(
        out,
        vec![
            Command::SendPrepare {
                txn,
                to: Participant::Password,
                op: update()
            },
            Command::StartDeadline {
                txn,
                after: Duration::from_secs(2),
                round: 0,
            },
        ]
    );
    assert_eq!(e.decision(txn), Some(Decision::Pending));
    // A history vote before the history was asked is no vote about this transaction.
    let early = Event::Voted {
        txn,
        from: Participant::History,
        vote: Vote::Yes { email: None },
    };
    assert_eq!(e.handle(early, NOW + 1), vec![]);
    // The current password checked out: now the history participant may lock and hash.
    let out = e.handle(
        Event::Voted {
            txn,
            from: Participant::Password,
            vote: Vote::Yes {
                email: Some(email()),
            },
        },
        NOW + 5,
    );
    assert_eq!(
        out,
        vec![Command::SendPrepare {
            txn,
            to: Participant::History,
            op: update()
        }]
    );
}

#[test]
fn a_registration_prepares_both_in_parallel() {
    let mut e = Engine::default();
    let txn = TxnId::generate();
    let register = Operation::Register {
        user: user(),
        email: email(),
        password: Password::new("password", "pw".into()).unwrap(),
    };
    let out = e.begin_new(
        Event::Begin {
            txn,
            request_id: "r1".into(),
            op: register.clone(),
        },
        NOW,
    );
    let to: Vec<Participant> = out
        .iter()
        .filter_map(|c| match c {
            Command::SendPrepare { to, .. } => Some(*to),
            _ => None,
        })
        .collect();
    assert_eq!(to, Participant::ALL);
}

#[test]
fn all_yes_forces_the_commit_record_before_anything_else() {
    let mut e = Engine::default();
    let txn = begin(&mut e, "r1");
    assert_eq!(
        yes(&mut e, txn),
        vec![Command::ForceCommit {
            record: record(txn, "r1")
        }]
    );
    // Not committed until the record is durable.
    assert_eq!(e.decision(txn), Some(Decision::Pending));
}

#[test]
fn one_yes_waits_for_the_other() {
    let mut e = Engine::default();
    let txn = begin(&mut e, "r1");
    let out = e.handle(
        Event::Voted {
            txn,
            from: Participant::History,
            vote: Vote::Yes { email: None },
        },
        NOW,
    );
    assert_eq!(out, vec![]);
}

#[test]
fn commit_forced_replies_then_sends_commit() {
    let mut e = Engine::default();
    let txn = begin(&mut e, "r1");
    yes(&mut e, txn);
    assert_eq!(
        e.handle(Event::CommitForced { txn }, NOW + 20),
        vec![
            committed(txn, txn, "r1"),
            send_commit(txn, Participant::Password),
            send_commit(txn, Participant::History),
        ]
    );
    assert_eq!(e.decision(txn), Some(Decision::Committed));
}

#[test]
fn a_no_vote_aborts_everywhere_and_replies_with_the_reason() {
    let mut e = Engine::default();
    let txn = begin(&mut e, "r1");
    e.handle(
        Event::Voted {
            txn,
            from: Participant::Password,
            vote: Vote::Yes {
                email: Some(email()),
            },
        },
        NOW + 5,
    );
    let out = e.handle(
        Event::Voted {
            txn,
            from: Participant::History,
            vote: Vote::No {
                reason: "password was used recently".into(),
            },
        },
        NOW + 7,
    );
    assert_eq!(
        out,
        vec![
            Command::LogAbort {
                note: AbortNote {
                    txn,
                    request_id: "r1".into(),
                    kind: OperationKind::Update,
                    user: user(),
                    reason: "password was used recently".into(),
                    started_at: NOW,
                    decided_at: NOW + 7,
                }
            },
            Command::Reply {
                clients: vec![txn],
                outcome: Outcome {
                    txn,
                    request_id: "r1".into(),
                    committed: false,
                    reason: "password was used recently".into(),
                }
            },
            Command::SendAbort {
                txn,
                to: Participant::Password
            },
            Command::SendAbort {
                txn,
                to: Participant::History
            },
        ]
    );
    assert_eq!(e.decision(txn), Some(Decision::Aborted));
    // A late yes changes nothing.
    let late = e.handle(
        Event::Voted {
            txn,
            from: Participant::Password,
            vote: Vote::Yes {
                email: Some(email()),
            },
        },
        NOW + 8,
    );
    assert_eq!(late, vec![]);
}

#[test]
fn an_unreachable_participant_aborts() {
    let mut e = Engine::default();
    let txn = begin(&mut e, "r1");
    let out = e.handle(
        Event::PrepareFailed {
            txn,
            from: Participant::Password,
            error: "connection refused".into(),
        },
        NOW,
    );
    assert!(out.iter().any(|c| matches!(
        c,
        Command::Reply { outcome, .. } if !outcome.committed
            && outcome.reason == "password participant unavailable: connection refused"
    )));
}

#[test]
fn the_prepare_deadline_aborts_only_while_preparing() {
    let mut e = Engine::default();
    let txn = begin(&mut e, "r1");
    let out = e.handle(Event::PrepareDeadline { txn, round: 0 }, NOW + 2_000);
    assert_eq!(out.len(), 4, "{out:?}");
    assert!(
        matches!(&out[1], Command::Reply { outcome, .. } if outcome.reason == "prepare deadline exceeded")
    );

    aborts_delivered(&mut e, txn);
    let decided = begin(&mut e, "r2");
    yes(&mut e, decided);
    assert_eq!(
        e.handle(
            Event::PrepareDeadline {
                txn: decided,
                round: 0
            },
            NOW + 2_000
        ),
        vec![]
    );
}

#[test]
fn every_ack_ends_the_transaction() {
    let mut e = Engine::default();
    let txn = begin(&mut e, "r1");
    yes(&mut e, txn);
    e.handle(Event::CommitForced { txn }, NOW);
    assert_eq!(
        e.handle(
            Event::CommitAcked {
                txn,
                from: Participant::History
            },
            NOW
        ),
        vec![]
    );
    assert_eq!(
        e.handle(
            Event::CommitAcked {
                txn,
                from: Participant::Password
            },
            NOW
        ),
        vec![Command::LogEnd { txn }]
    );
    assert!(e.active().is_empty());
    assert_eq!(
        e.decision(txn),
        None,
        "finished: the log, which holds its COMMIT record, decides"
    );
}

#[test]
fn a_failed_commit_is_resent_with_capped_backoff() {
    let mut e = Engine::default();
    let txn = begin(&mut e, "r1");
    yes(&mut e, txn);
    e.handle(Event::CommitForced { txn }, NOW);
    let delays: Vec<Duration> = (0..8)
        .map(|attempt| {
            match e
                .handle(
                    Event::CommitFailed {
                        txn,
                        from: Participant::History,
                        attempt,
                    },
                    NOW,
                )
                .as_slice()
            {
                [
                    Command::SendCommit {
                        after,
                        attempt: next,
                        to: Participant::History,
                        ..
                    },
                ] => {
                    assert_eq!(*next, attempt + 1);
                    *after
                }
                other => panic!("{other:?}"),
            }
        })
        .collect();
    let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
    // Once acked, a stale failure is not resent.
    e.handle(
        Event::CommitAcked {
            txn,
            from: Participant::History,
        },
        NOW,
    );
    assert_eq!(
        e.handle(
            Event::CommitFailed {
                txn,
                from: Participant::History,
                attempt: 9
            },
            NOW
        ),
        vec![]
    );
}

#[test]
fn a_retried_request_joins_the_running_transaction() {
    let mut e = Engine::default();
    begin(&mut e, "r1");
    let again = TxnId::generate();
    assert_eq!(
        e.begin_new(
            Event::Begin {
                txn: again,
                request_id: "r1".into(),
                op: update()
            },
            NOW
        ),
        vec![]
    );
}

#[test]
fn a_retried_request_gets_the_recorded_commit() {
    let mut e = Engine::default();
    let txn = begin(&mut e, "r1");
    yes(&mut e, txn);
    e.handle(Event::CommitForced { txn }, NOW);
    let again = TxnId::generate();
    assert_eq!(
        e.begin_new(
            Event::Begin {
                txn: again,
                request_id: "r1".into(),
                op: update()
            },
            NOW
        ),
        vec![committed(again, txn, "r1")]
    );
}

#[test]
fn an_aborted_request_may_run_again() {
    let mut e = Engine::default();
    let txn = begin(&mut e, "r1");
    e.handle(Event::PrepareDeadline { txn, round: 0 }, NOW);
    aborts_delivered(&mut e, txn);
    let again = TxnId::generate();
    let out = e.begin_new(
        Event::Begin {
            txn: again,
            request_id: "r1".into(),
            op: update(),
        },
        NOW,
    );
    assert_eq!(out.len(), 2, "prepares again: {out:?}");
}

#[test]
fn recovery_drives_unfinished_commits_and_leaves_ended_ones_to_the_log() {
    let mut e = Engine::default();
    let (open, ended) = (TxnId::generate(), TxnId::generate());
    assert_eq!(
        e.handle(
            Event::Recovered {
                committing: vec![record(open, "r-open")]
            },
            NOW
        ),
        vec![
            send_commit(open, Participant::Password),
            send_commit(open, Participant::History),
        ]
    );
    assert_eq!(e.decision(open), Some(Decision::Committed));
    assert_eq!(e.decision(ended), None, "the log decides");
    let client = TxnId::generate();
    assert_eq!(
        e.handle(
            Event::Begin {
                txn: client,
                request_id: "r-ended".into(),
                op: update()
            },
            NOW
        ),
        vec![Command::LookUp {
            client,
            request_id: "r-ended".into()
        }]
    );
    assert_eq!(
        e.handle(
            Event::LookedUp {
                client,
                logged: Ok(Some(LoggedRequest {
                    txn: ended,
                    kind: OperationKind::Update,
                    user: user()
                }))
            },
            NOW
        ),
        vec![committed(client, ended, "r-ended")]
    );
}

#[test]
fn a_transaction_unknown_after_a_crash_is_presumed_aborted() {
    let e = Engine::default();
    // Not in memory: the log decides (no COMMIT record, so aborted: presumed abort).
    assert_eq!(e.decision(TxnId::generate()), None);
}

#[test]
fn forgotten_transactions_leave_no_trace() {
    let mut e = Engine::default();
    let txn = TxnId::generate();
    e.handle(
        Event::Recovered {
            committing: vec![record(txn, "r1")],
        },
        NOW,
    );
    for from in Participant::ALL {
        e.handle(Event::CommitAcked { txn, from }, NOW);
    }
    assert_eq!(
        e.handle(
            Event::Forgotten {
                txn,
                request_id: "r1".into()
            },
            NOW
        ),
        vec![]
    );
    assert_eq!(e.decision(txn), None);
}

#[test]
fn registration_takes_the_address_from_the_request() {
    let mut e = Engine::default();
    let txn = TxnId::generate();
    let op = Operation::Register {
        user: user(),
        email: email(),
        password: Password::new("password", "pw".into()).unwrap(),
    };
    e.begin_new(
        Event::Begin {
            txn,
            request_id: "r1".into(),
            op,
        },
        NOW,
    );
    e.handle(
        Event::Voted {
            txn,
            from: Participant::History,
            vote: Vote::Yes { email: None },
        },
        NOW,
    );
    let out = e.handle(
        Event::Voted {
            txn,
            from: Participant::Password,
            vote: Vote::Yes { email: None },
        },
        NOW,
    );
    assert!(
        matches!(&out[..], [Command::ForceCommit { record }] if record.email == email() && record.kind == OperationKind::Register)
    );
}

#[test]
fn a_change_of_a_user_still_committing_queues_until_phase_two_ends() {
    let mut e = Engine::default();
    let first = begin(&mut e, "r1");
    yes(&mut e, first);
    e.handle(Event::CommitForced { txn: first }, NOW);
    // The client already heard COMMITTED and sends the next change at once.
    let second = TxnId::generate();
    assert_eq!(
        e.begin_new(
            Event::Begin {
                txn: second,
                request_id: "r2".into(),
                op: update()
            },
            NOW
        ),
        vec![Command::StartDeadline {
            txn: second,
            after: Duration::from_secs(2),
            round: 0,
        }]
    );
    assert_eq!(e.decision(second), Some(Decision::Pending));
    e.handle(
        Event::CommitAcked {
            txn: first,
            from: Participant::Password,
        },
        NOW,
    );
    assert_eq!(
        e.handle(
            Event::CommitAcked {
                txn: first,
                from: Participant::History
            },
            NOW
        ),
        vec![
            Command::LogEnd { txn: first },
            Command::SendPrepare {
                txn: second,
                to: Participant::Password,
                op: update()
            },
            Command::StartDeadline {
                txn: second,
                after: Duration::from_secs(2),
                round: 1,
            },
        ]
    );
    // The queue's deadline no longer applies; preparing has its own.
    assert_eq!(
        e.handle(
            Event::PrepareDeadline {
                txn: second,
                round: 0
            },
            NOW + 2_000
        ),
        vec![]
    );
    let out = e.handle(
        Event::PrepareDeadline {
            txn: second,
            round: 1,
        },
        NOW + 4_000,
    );
    assert!(
        out.iter().any(|c| matches!(c, Command::Reply { outcome, .. } if outcome.reason == "prepare deadline exceeded")),
        "{out:?}"
    );
}

#[test]
fn a_queued_change_gives_up_at_the_deadline() {
    let mut e = Engine::default();
    let first = begin(&mut e, "r1");
    yes(&mut e, first);
    e.handle(Event::CommitForced { txn: first }, NOW);
    let second = begin(&mut e, "r2");
    let out = e.handle(
        Event::PrepareDeadline {
            txn: second,
            round: 0,
        },
        NOW + 2_000,
    );
    assert!(
        matches!(
            out.as_slice(),
            [Command::LogAbort { .. }, Command::Reply { outcome, .. }] if !outcome.committed
                && outcome.reason == "an earlier change of this user is still finishing"
        ),
        "never prepared, so nothing to abort: {out:?}"
    );
    assert_eq!(e.decision(second), None, "forgotten: the log decides");
}

#[test]
fn a_second_change_while_the_first_collects_votes_waits_and_starts_after_it() {
    // A wrong guess (the first) in flight must not make the owner's change (the second) conflict.
    let mut e = Engine::default();
    let guess = begin(&mut e, "r1");
    let owner = TxnId::generate();
    let out = e.begin_new(
        Event::Begin {
            txn: owner,
            request_id: "r2".into(),
            op: update(),
        },
        NOW,
    );
    assert!(
        matches!(out.as_slice(), [Command::StartDeadline { txn, .. }] if *txn == owner),
        "it waits, nothing sent: {out:?}"
    );
    assert_eq!(e.decision(owner), Some(Decision::Pending));
    e.handle(
        Event::Voted {
            txn: guess,
            from: Participant::Password,
            vote: Vote::No {
                reason: "invalid credentials".into(),
            },
        },
        NOW + 30,
    );
    e.handle(
        Event::AbortDelivered {
            txn: guess,
            to: Participant::Password,
        },
        NOW + 31,
    );
    let out = e.handle(
        Event::AbortDelivered {
            txn: guess,
            to: Participant::History,
        },
        NOW + 32,
    );
    assert!(
        out.iter().any(|c| matches!(c, Command::SendPrepare { txn, to: Participant::Password, .. } if *txn == owner)),
        "the owner's change starts once the guess is over: {out:?}"
    );
}

#[test]
fn queued_changes_start_one_at_a_time() {
    let mut e = Engine::default();
    let first = begin(&mut e, "r1");
    yes(&mut e, first);
    e.handle(Event::CommitForced { txn: first }, NOW);
    let second = begin(&mut e, "r2");
    let third = begin(&mut e, "r3");
    e.handle(
        Event::CommitAcked {
            txn: first,
            from: Participant::Password,
        },
        NOW,
    );
    let out = e.handle(
        Event::CommitAcked {
            txn: first,
            from: Participant::History,
        },
        NOW,
    );
    assert_eq!(
        out.len(),
        3,
        "END, the second's first Prepare and its deadline: {out:?}"
    );
    assert!(
        out.iter()
            .all(|c| !matches!(c, Command::SendPrepare { txn, .. } if *txn == third))
    );
    // The second aborts: the third starts once both participants have heard the Abort.
    let out = e.handle(
        Event::Voted {
            txn: second,
            from: Participant::Password,
            vote: Vote::No {
                reason: "no".into(),
            },
        },
        NOW,
    );
    assert!(
        !out.iter().any(|c| matches!(c, Command::SendPrepare { .. })),
        "{out:?}"
    );
    assert_eq!(e.decision(second), Some(Decision::Aborted));
    let out = e.handle(
        Event::AbortDelivered {
            txn: second,
            to: Participant::History,
        },
        NOW,
    );
    assert_eq!(out, vec![]);
    let out = e.handle(
        Event::AbortDelivered {
            txn: second,
            to: Participant::Password,
        },
        NOW,
    );
    let prepared: Vec<_> = out
        .iter()
        .filter_map(|c| match c {
            Command::SendPrepare { txn, .. } => Some(*txn),
            _ => None,
        })
        .collect();
    assert_eq!(prepared, [third], "its first Prepare");
}

#[test]
fn a_retry_that_joins_a_running_transaction_gets_its_outcome_too() {
    let mut e = Engine::default();
    let txn = begin(&mut e, "r1");
    let again = TxnId::generate();
    e.begin_new(
        Event::Begin {
            txn: again,
            request_id: "r1".into(),
            op: update(),
        },
        NOW,
    );
    yes(&mut e, txn);
    let out = e.handle(Event::CommitForced { txn }, NOW);
    assert!(
        matches!(&out[0], Command::Reply { clients, outcome } if *clients == [txn, again] && outcome.committed)
    );
}

#[test]
fn a_request_id_reused_for_another_request_is_refused() {
    let mut e = Engine::default();
    let txn = begin(&mut e, "r1");
    let other_user = Operation::Update {
        user: UserId::parse("mallory").unwrap(),
        current: Password::new("current_password", "x".into()).unwrap(),
        new: Password::new("new_password", "y".into()).unwrap(),
    };
    let client = TxnId::generate();
    let out = e.begin_new(
        Event::Begin {
            txn: client,
            request_id: "r1".into(),
            op: other_user.clone(),
        },
        NOW,
    );
    assert!(
        matches!(out.as_slice(), [Command::Reject { client: c, .. }] if *c == client),
        "while running: {out:?}"
    );
    yes(&mut e, txn);
    e.handle(Event::CommitForced { txn }, NOW);
    let out = e.begin_new(
        Event::Begin {
            txn: client,
            request_id: "r1".into(),
            op: other_user,
        },
        NOW,
    );
    assert!(
        matches!(out.as_slice(), [Command::Reject { .. }]),
        "after commit: {out:?}"
    );
}

#[test]
fn a_request_id_reused_with_another_password_is_refused_while_running_and_after_commit() {
    let mut e = Engine::default();
    let txn = begin(&mut e, "r1");
    // Same user, same kind, another new password: not a retry.
    let Operation::Update { user, current, .. } = update() else {
        unreachable!()
    };
    let other_password = Operation::Update {
        user,
        current,
        new: Password::new("new_password", "something else".into()).unwrap(),
    };
    for phase in ["while running", "after commit"] {
        if phase == "after commit" {
            yes(&mut e, txn);
            e.handle(Event::CommitForced { txn }, NOW);
        }
        let client = TxnId::generate();
        let out = e.begin_new(
            Event::Begin {
                txn: client,
                request_id: "r1".into(),
                op: other_password.clone(),
            },
            NOW,
        );
        assert!(
            matches!(out.as_slice(), [Command::Reject { client: c, refusal: Refusal::RequestReused(_) }] if *c == client),
            "{phase}: {out:?}"
        );
    }
    // The true retry still gets the first outcome.
    let retry = TxnId::generate();
    let out = e.begin_new(
        Event::Begin {
            txn: retry,
            request_id: "r1".into(),
            op: update(),
        },
        NOW,
    );
    assert!(
        matches!(out.as_slice(), [Command::Reply { outcome, .. }] if outcome.txn == txn && outcome.committed),
        "{out:?}"
    );
}

#[test]
fn collecting_an_aborted_attempt_keeps_the_committed_retry() {
    let mut e = Engine::default();
    let aborted = begin(&mut e, "r1");
    e.handle(
        Event::PrepareDeadline {
            txn: aborted,
            round: 0,
        },
        NOW,
    );
    aborts_delivered(&mut e, aborted);
    let retry = begin(&mut e, "r1");
    yes(&mut e, retry);
    e.handle(Event::CommitForced { txn: retry }, NOW);
    e.handle(
        Event::Forgotten {
            txn: aborted,
            request_id: "r1".into(),
        },
        NOW,
    );
    let client = TxnId::generate();
    assert_eq!(
        e.begin_new(
            Event::Begin {
                txn: client,
                request_id: "r1".into(),
                op: update()
            },
            NOW
        ),
        vec![committed(client, retry, "r1")]
    );
}

#[test]
fn a_change_behind_one_stuck_on_a_lost_store_is_refused_at_once_with_the_loss() {
    let mut e = Engine::default();
    let stuck = begin(&mut e, "r1");
    yes(&mut e, stuck);
    e.handle(Event::CommitForced { txn: stuck }, NOW + 11);
    // The history participant comes back from another store: its Commit will not be acknowledged
    // until an operator acts, so the user's change stays unfinished.
    let mark = |id: &str| StoreMark {
        id: id.into(),
        boot: id.into(),
        seq: 1,
        accept_loss: false,
    };
    e.handle(
        Event::Reported {
            from: Participant::History,
            mark: mark("s1"),
            then: Box::new(Event::CommitAcked {
                txn: stuck,
                from: Participant::Password,
            }),
        },
        NOW + 12,
    );
    e.handle(
        Event::Reported {
            from: Participant::History,
            mark: mark("s2"),
            then: Box::new(Event::CommitFailed {
                txn: stuck,
                from: Participant::History,
                attempt: 0,
            }),
        },
        NOW + 13,
    );
    let next = TxnId::generate();
    let out = e.begin_new(
        Event::Begin {
            txn: next,
            request_id: "r2".into(),
            op: update(),
        },
        NOW + 14,
    );
    let reply = out.iter().find_map(|c| match c {
        Command::Reply { outcome, .. } => Some(outcome.clone()),
        _ => None,
    });
    assert!(
        reply
            .as_ref()
            .is_some_and(|o| !o.committed && o.reason.contains("another store")),
        "answered at once with the loss, not queued behind the stuck change: {out:?}"
    );
    assert!(
        !out.iter().any(|c| matches!(c, Command::SendPrepare { .. })),
        "{out:?}"
    );
}

#[test]
fn the_state_is_one_value_whatever_order_independent_events_came_in() {
    use std::hash::{BuildHasher, RandomState};
    let register = |name: &str| Operation::Register {
        user: UserId::parse(name).unwrap(),
        email: Email::parse(&format!("{name}@example.com")).unwrap(),
        password: Password::new("password", "pw".into()).unwrap(),
    };
    let (a, b) = (TxnId::generate(), TxnId::generate());
    // One engine cloned: the same process, so the same fingerprint key.
    let base = Engine::default();
    let run = |order: [(TxnId, &str); 2]| {
        let mut e = base.clone();
        for (txn, name) in order {
            e.begin_new(
                Event::Begin {
                    txn,
                    request_id: format!("r-{name}"),
                    op: register(name),
                },
                NOW,
            );
        }
        for (txn, _) in order {
            for from in Participant::ALL {
                e.handle(
                    Event::Voted {
                        txn,
                        from,
                        vote: Vote::Yes { email: None },
                    },
                    NOW + 1,
                );
            }
        }
        e
    };
    let one = run([(a, "alice"), (b, "bob")]);
    let other = run([(b, "bob"), (a, "alice")]);
    assert_eq!(one, other);
    let hasher = RandomState::new();
    assert_eq!(hasher.hash_one(&one), hasher.hash_one(&other));
}
