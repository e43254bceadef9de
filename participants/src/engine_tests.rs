//! One event in, the exact commands out, for every event of the participant engine.

use super::*;

type C = &'static str;

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn engine() -> Engine<C> {
    Engine::new(Config::default())
}

fn yes(txn: TxnId, change: C) -> Command<C> {
    Command::Vote {
        txn,
        vote: Vote::Yes(change),
    }
}

fn no(txn: TxnId, reason: &str) -> Command<C> {
    Command::Vote {
        txn,
        vote: Vote::No(reason.to_owned()),
    }
}

/// Drives one transaction to PREPARED (voted yes) for `name`.
fn prepared(e: &mut Engine<C>, name: &str, change: C) -> TxnId {
    let txn = TxnId::generate();
    e.handle(Event::PrepareRequested {
        txn,
        user: user(name),
        wall_ms: tpc_common::now_ms(),
        payload: None,
    });
    e.handle(Event::Validated {
        txn,
        outcome: Ok(change),
    });
    assert_eq!(
        e.handle(Event::PreparedForced { txn, at: 1_000 }),
        vec![yes(txn, change)]
    );
    txn
}

#[test]
fn prepare_locks_the_user_and_asks_for_validation() {
    let mut e = engine();
    let txn = TxnId::generate();
    assert_eq!(
        e.handle(Event::PrepareRequested {
            txn,
            user: user("alice"),
            wall_ms: tpc_common::now_ms(),
            payload: None,
        }),
        vec![Command::Validate { txn }]
    );
    assert!(e.is_locked(&user("alice")));
}

#[test]
fn validated_change_is_forced_before_the_vote() {
    let mut e = engine();
    let txn = TxnId::generate();
    e.handle(Event::PrepareRequested {
        txn,
        user: user("alice"),
        wall_ms: tpc_common::now_ms(),
        payload: None,
    });
    assert_eq!(
        e.handle(Event::Validated {
            txn,
            outcome: Ok("hash")
        }),
        vec![Command::ForcePrepared {
            txn,
            user: user("alice"),
            change: "hash"
        }]
    );
    assert_eq!(
        e.handle(Event::PreparedForced { txn, at: 5 }),
        vec![yes(txn, "hash")]
    );
    assert_eq!(e.in_doubt(), [txn]);
    assert!(e.is_locked(&user("alice")));
}

#[test]
fn failed_validation_votes_no_and_forgets() {
    let mut e = engine();
    let txn = TxnId::generate();
    e.handle(Event::PrepareRequested {
        txn,
        user: user("alice"),
        wall_ms: tpc_common::now_ms(),
        payload: None,
    });
    assert_eq!(
        e.handle(Event::Validated {
            txn,
            outcome: Err("current password is wrong".into())
        }),
        vec![no(txn, "current password is wrong"),]
    );
    assert!(!e.is_locked(&user("alice")));
    // Forgotten: a later Abort finds nothing and just acks.
    assert_eq!(
        e.handle(Event::AbortRequested { txn, at: 9 }),
        vec![Command::Ack { txn }]
    );
}

#[test]
fn a_locked_user_makes_prepare_vote_no_without_waiting() {
    let mut e = engine();
    prepared(&mut e, "alice", "h1");
    let other = TxnId::generate();
    assert_eq!(
        e.handle(Event::PrepareRequested {
            txn: other,
            user: user("alice"),
            wall_ms: tpc_common::now_ms(),
            payload: None,
        }),
        vec![no(
            other,
            "conflict: another transaction is changing this user"
        )]
    );
    // Other users are not affected.
    let bob = TxnId::generate();
    assert_eq!(
        e.handle(Event::PrepareRequested {
            txn: bob,
            user: user("bob"),
            wall_ms: tpc_common::now_ms(),
            payload: None,
        }),
        vec![Command::Validate { txn: bob }]
    );
}

#[test]
fn repeated_prepare_of_a_prepared_transaction_votes_yes_again() {
    let mut e = engine();
    let txn = prepared(&mut e, "alice", "h1");
    assert_eq!(
        e.handle(Event::PrepareRequested {
            txn,
            user: user("alice"),
            wall_ms: tpc_common::now_ms(),
            payload: None,
        }),
        vec![yes(txn, "h1")]
    );
}

#[test]
fn prepare_while_the_first_prepare_is_running_is_refused_for_retry() {
    let mut e = engine();
    let txn = TxnId::generate();
    e.handle(Event::PrepareRequested {
        txn,
        user: user("alice"),
        wall_ms: tpc_common::now_ms(),
        payload: None,
    });
    assert_eq!(
        e.handle(Event::PrepareRequested {
            txn,
            user: user("alice"),
            wall_ms: tpc_common::now_ms(),
            payload: None,
        }),
        vec![Command::Refuse {
            txn,
            refusal: Refusal::InProgress
        }]
    );
}

#[test]
fn commit_applies_then_releases_and_acks() {
    let mut e = engine();
    let txn = prepared(&mut e, "alice", "h1");
    assert_eq!(
        e.handle(Event::CommitRequested { txn }),
        vec![Command::ApplyCommit { txn, change: "h1" }]
    );
    assert!(
        e.is_locked(&user("alice")),
        "locked until the change is durable"
    );
    assert_eq!(
        e.handle(Event::CommitRequested { txn }),
        vec![Command::Refuse {
            txn,
            refusal: Refusal::InProgress
        }]
    );
    assert_eq!(
        e.handle(Event::CommitApplied { txn, at: 2_000 }),
        vec![Command::Ack { txn }]
    );
    assert!(!e.is_locked(&user("alice")));
    assert!(e.in_doubt().is_empty());
}

#[test]
fn commit_is_idempotent() {
    let mut e = engine();
    let txn = prepared(&mut e, "alice", "h1");
    e.handle(Event::CommitRequested { txn });
    e.handle(Event::CommitApplied { txn, at: 2_000 });
    assert_eq!(
        e.handle(Event::CommitRequested { txn }),
        vec![Command::Ack { txn }]
    );
}

#[test]
fn commit_of_an_unknown_transaction_acks() {
    let mut e = engine();
    let txn = TxnId::generate();
    assert_eq!(
        e.handle(Event::CommitRequested { txn }),
        vec![Command::Ack { txn }]
    );
}

#[test]
fn commit_of_an_aborted_or_unprepared_transaction_is_refused() {
    let mut e = engine();
    let aborted = prepared(&mut e, "alice", "h1");
    e.handle(Event::AbortRequested {
        txn: aborted,
        at: 3,
    });
    assert_eq!(
        e.handle(Event::CommitRequested { txn: aborted }),
        vec![Command::Refuse {
            txn: aborted,
            refusal: Refusal::AlreadyAborted
        }]
    );
    let validating = TxnId::generate();
    e.handle(Event::PrepareRequested {
        txn: validating,
        user: user("bob"),
        wall_ms: tpc_common::now_ms(),
        payload: None,
    });
    assert_eq!(
        e.handle(Event::CommitRequested { txn: validating }),
        vec![Command::Refuse {
            txn: validating,
            refusal: Refusal::NotPrepared
        }]
    );
}

#[test]
fn abort_of_a_prepared_transaction_drops_it() {
    let mut e = engine();
    let txn = prepared(&mut e, "alice", "h1");
    assert_eq!(
        e.handle(Event::AbortRequested { txn, at: 3 }),
        vec![Command::DropPrepared { txn }, Command::Ack { txn }]
    );
    assert!(!e.is_locked(&user("alice")));
    assert_eq!(
        e.handle(Event::AbortRequested { txn, at: 4 }),
        vec![Command::Ack { txn }]
    );
}

#[test]
fn abort_before_prepare_prevents_a_hanging_prepare() {
    let mut e = engine();
    let txn = TxnId::generate();
    assert_eq!(
        e.handle(Event::AbortRequested { txn, at: 1 }),
        vec![Command::Ack { txn }]
    );
    assert_eq!(
        e.handle(Event::PrepareRequested {
            txn,
            user: user("alice"),
            wall_ms: tpc_common::now_ms(),
            payload: None,
        }),
        vec![no(txn, "transaction was aborted")]
    );
    assert!(!e.is_locked(&user("alice")));
}

#[test]
fn abort_during_validation_releases_at_once_and_the_prepare_votes_no() {
    let mut e = engine();
    let txn = TxnId::generate();
    e.handle(Event::PrepareRequested {
        txn,
        user: user("alice"),
        wall_ms: tpc_common::now_ms(),
        payload: None,
    });
    assert_eq!(
        e.handle(Event::AbortRequested { txn, at: 1 }),
        vec![Command::Ack { txn }]
    );
    assert_eq!(
        e.handle(Event::Validated {
            txn,
            outcome: Ok("h1")
        }),
        vec![no(txn, "transaction was aborted")]
    );
}

#[test]
fn abort_during_the_forced_write_undoes_it_when_it_lands() {
    let mut e = engine();
    let txn = TxnId::generate();
    e.handle(Event::PrepareRequested {
        txn,
        user: user("alice"),
        wall_ms: tpc_common::now_ms(),
        payload: None,
    });
    e.handle(Event::Validated {
        txn,
        outcome: Ok("h1"),
    });
    assert_eq!(
        e.handle(Event::AbortRequested { txn, at: 1 }),
        vec![Command::Refuse {
            txn,
            refusal: Refusal::InProgress
        }],
        "not acknowledged while the user is still locked"
    );
    assert!(
        e.is_locked(&user("alice")),
        "held until the record is dropped"
    );
    assert_eq!(
        e.handle(Event::PreparedForced { txn, at: 2 }),
        vec![
            Command::DropPrepared { txn },
            no(txn, "transaction was aborted")
        ]
    );
    assert_eq!(
        e.handle(Event::AbortRequested { txn, at: 3 }),
        vec![Command::Ack { txn }],
        "the retried Abort is acknowledged once the lock is free"
    );
}

#[test]
fn abort_of_a_committed_transaction_is_refused() {
    let mut e = engine();
    let txn = prepared(&mut e, "alice", "h1");
    e.handle(Event::CommitRequested { txn });
    assert_eq!(
        e.handle(Event::AbortRequested { txn, at: 1 }),
        vec![Command::Refuse {
            txn,
            refusal: Refusal::AlreadyCommitted
        }]
    );
    e.handle(Event::CommitApplied { txn, at: 2 });
    assert_eq!(
        e.handle(Event::AbortRequested { txn, at: 3 }),
        vec![Command::Refuse {
            txn,
            refusal: Refusal::AlreadyCommitted
        }]
    );
    assert_eq!(
        e.handle(Event::PrepareRequested {
            txn,
            user: user("alice"),
            wall_ms: tpc_common::now_ms(),
            payload: None,
        }),
        vec![Command::Refuse {
            txn,
            refusal: Refusal::AlreadyCommitted
        }]
    );
}

#[test]
fn recovered_prepared_transactions_are_locked_and_queried_at_once() {
    let mut e = engine();
    let (a, b) = (TxnId::generate(), TxnId::generate());
    let done = TxnId::generate();
    assert_eq!(
        e.handle(Event::Recovered {
            prepared: vec![(a, user("alice"), "h1"), (b, user("bob"), "h2")],
            committed: vec![(done, 50)],
        }),
        vec![]
    );
    assert!(e.is_locked(&user("alice")) && e.is_locked(&user("bob")));
    assert_eq!(e.in_doubt(), [a, b]);
    assert_eq!(e.locked_users(), 2);
    assert_eq!(
        e.handle(Event::Tick { now: 100 }),
        vec![
            Command::QueryDecision { txn: a },
            Command::QueryDecision { txn: b }
        ]
    );
    assert_eq!(
        e.handle(Event::CommitRequested { txn: done }),
        vec![Command::Ack { txn: done }]
    );
}

#[test]
fn in_doubt_queries_back_off_exponentially_up_to_the_cap() {
    let mut e = engine();
    let txn = prepared(&mut e, "alice", "h1"); // prepared at 1_000, in doubt from 1_300
    assert_eq!(e.handle(Event::Tick { now: 1_299 }), vec![]);
    let mut asked_at = Vec::new();
    for now in (1_300..4_000).step_by(10) {
        if !e.handle(Event::Tick { now }).is_empty() {
            asked_at.push(now);
            // The coordinator answers at once: still pending.
            e.handle(Event::DecisionLearned {
                txn,
                decision: Decision::Pending,
                at: now,
            });
        }
    }
    // 100, 200, 400, then the 500 ms cap.
    assert_eq!(&asked_at[..6], &[1_300, 1_400, 1_600, 2_000, 2_500, 3_000]);
}

#[test]
fn one_query_at_a_time_per_transaction_however_slow_the_coordinator() {
    let mut e = engine();
    let txn = prepared(&mut e, "alice", "h1"); // in doubt from 1_300
    let timeout = Config::default().query_timeout_ms;
    let mut asked_at = Vec::new();
    for now in (1_300..1_300 + 2 * timeout + 50).step_by(10) {
        if !e.handle(Event::Tick { now }).is_empty() {
            asked_at.push(now);
        }
    }
    // No answer comes: the next query goes out only once the last one timed out.
    assert_eq!(
        asked_at,
        [1_300, 1_300 + timeout, 1_300 + 2 * timeout],
        "one query out at a time"
    );
    // An answer (here: none could be had) lets the next query go at the backoff's pace again.
    let now = 1_300 + 2 * timeout + 50;
    e.handle(Event::DecisionLearned {
        txn,
        decision: Decision::Pending,
        at: now,
    });
    let next = (now..now + 1_000)
        .step_by(10)
        .find(|&t| !e.handle(Event::Tick { now: t }).is_empty());
    assert!(
        next.is_some_and(|t| t <= now + 500),
        "asked again within the backoff cap: {next:?}"
    );
}

#[test]
fn learned_decisions_finish_the_transaction() {
    let mut e = engine();
    let committed = prepared(&mut e, "alice", "h1");
    let aborted = prepared(&mut e, "bob", "h2");
    let pending = prepared(&mut e, "carol", "h3");
    assert_eq!(
        e.handle(Event::DecisionLearned {
            txn: committed,
            decision: Decision::Committed,
            at: 9
        }),
        vec![Command::ApplyCommit {
            txn: committed,
            change: "h1"
        }]
    );
    assert_eq!(
        e.handle(Event::DecisionLearned {
            txn: aborted,
            decision: Decision::Aborted,
            at: 9
        }),
        vec![
            Command::DropPrepared { txn: aborted },
            Command::Ack { txn: aborted }
        ]
    );
    assert_eq!(
        e.handle(Event::DecisionLearned {
            txn: pending,
            decision: Decision::Pending,
            at: 9
        }),
        vec![]
    );
    assert!(e.is_locked(&user("carol")));
}

#[test]
fn old_tombstones_are_forgotten() {
    let mut e = engine();
    let committed = prepared(&mut e, "alice", "h1");
    e.handle(Event::CommitRequested { txn: committed });
    e.handle(Event::CommitApplied {
        txn: committed,
        at: 1_000,
    });
    let aborted = TxnId::generate();
    e.handle(Event::AbortRequested {
        txn: aborted,
        at: 1_000,
    });
    let retention = Config::default().tombstone_ms;
    assert_eq!(
        e.handle(Event::Tick {
            now: 1_000 + retention
        }),
        vec![]
    );
    assert_eq!(
        e.handle(Event::Tick {
            now: 1_001 + retention
        }),
        vec![Command::Forget { txn: committed }]
    );
    // The aborted tombstone is gone too: a very late Prepare would now run (and be resolved by asking).
    assert_eq!(
        e.handle(Event::PrepareRequested {
            txn: aborted,
            user: user("bob"),
            wall_ms: tpc_common::now_ms(),
            payload: None,
        }),
        vec![Command::Validate { txn: aborted }]
    );
}

#[test]
fn a_tombstone_buried_out_of_order_is_forgotten_at_its_own_time() {
    let mut e = engine();
    let retention = Config::default().tombstone_ms;
    let (late, early) = (TxnId::generate(), TxnId::generate());
    e.handle(Event::AbortRequested {
        txn: late,
        at: 5_000,
    });
    // Recovery hands over transactions that committed before the restart, with their old times.
    let recovered = TxnId::generate();
    e.handle(Event::Recovered {
        prepared: vec![],
        committed: vec![(recovered, 1_000)],
    });
    e.handle(Event::AbortRequested {
        txn: early,
        at: 2_000,
    });
    assert_eq!(e.next_due(), Some(1_001 + retention));
    assert_eq!(
        e.handle(Event::Tick {
            now: 2_000 + retention
        }),
        vec![Command::Forget { txn: recovered }]
    );
    let abort_of = |txn| Event::AbortRequested { txn, at: 9_999 };
    assert_eq!(e.handle(abort_of(early)), vec![Command::Ack { txn: early }]);
    assert_eq!(e.next_due(), Some(2_001 + retention), "early is still due");
    e.handle(Event::Tick {
        now: 2_001 + retention,
    });
    assert_eq!(e.next_due(), Some(5_001 + retention), "early is forgotten");
    assert_eq!(
        e.handle(Event::PrepareRequested {
            txn: late,
            user: user("alice"),
            wall_ms: tpc_common::now_ms(),
            payload: None,
        }),
        vec![no(late, ABORTED_REASON)],
        "late is still remembered"
    );
}

#[test]
fn tombstones_due_at_once_make_the_same_state_in_either_order() {
    // A model checker tells states apart by value: reaching one by two orders must give one state.
    let (a, b) = (TxnId::generate(), TxnId::generate());
    let (mut one, mut other) = (engine(), engine());
    for (e, order) in [(&mut one, [a, b]), (&mut other, [b, a])] {
        for txn in order {
            e.handle(Event::AbortRequested { txn, at: 1_000 });
        }
    }
    assert_eq!(one, other);
}

#[test]
fn resolving_a_transaction_releases_only_a_lock_it_holds() {
    let mut e = engine();
    let (older, newer) = (TxnId::generate(), TxnId::generate());
    // Cannot happen after a real crash (see `unlock`), but the engine must not make it worse.
    e.handle(Event::Recovered {
        prepared: vec![(older, user("alice"), "h1"), (newer, user("alice"), "h2")],
        committed: vec![],
    });
    e.handle(Event::AbortRequested { txn: older, at: 1 });
    assert!(
        e.is_locked(&user("alice")),
        "the newer transaction still holds alice"
    );
    e.handle(Event::AbortRequested { txn: newer, at: 2 });
    assert!(!e.is_locked(&user("alice")));
}

#[test]
fn a_prepare_too_old_for_any_tombstone_votes_no_and_locks_nothing() {
    let mut e = engine();
    let txn = TxnId::generate();
    let late = txn.created_ms() + Config::default().prepare_max_age_ms + 1;
    assert_eq!(
        e.handle(Event::PrepareRequested {
            txn,
            user: user("alice"),
            wall_ms: late,
            payload: None,
        }),
        vec![no(txn, TOO_OLD)]
    );
    assert!(!e.is_locked(&user("alice")));
    assert!(
        Config::default().tombstone_ms > Config::default().prepare_max_age_ms,
        "an Abort that overtook its Prepare outlives the Prepare's acceptance"
    );
}

#[test]
fn a_repeated_prepare_with_another_payload_votes_no_and_changes_nothing() {
    let mut e = engine();
    let f = tpc_common::Fingerprinter::new();
    let op = |new: &str| tpc_common::Operation::Update {
        user: user("alice"),
        current: tpc_common::Password::new("current_password", "old".into()).unwrap(),
        new: tpc_common::Password::new("new_password", new.into()).unwrap(),
    };
    let prepare = |txn, new: &str| Event::PrepareRequested {
        txn,
        user: user("alice"),
        wall_ms: tpc_common::now_ms(),
        payload: Some(f.of(&op(new))),
    };
    let txn = TxnId::generate();
    assert_eq!(e.handle(prepare(txn, "a")), vec![Command::Validate { txn }]);
    e.handle(Event::Validated {
        txn,
        outcome: Ok("h7"),
    });
    e.handle(Event::PreparedForced { txn, at: 1_000 });
    assert_eq!(e.handle(prepare(txn, "a")), vec![yes(txn, "h7")], "a retry");
    assert_eq!(
        e.handle(prepare(txn, "b")),
        vec![no(
            txn,
            "another request was prepared under this transaction id"
        )]
    );
    assert_eq!(e.in_doubt(), vec![txn], "still prepared, as it was");
    // After the decision the digest is forgotten.
    e.handle(Event::CommitRequested { txn });
    e.handle(Event::CommitApplied { txn, at: 1_001 });
    assert!(e.payloads.is_empty());
}

#[test]
fn a_transaction_decided_before_it_was_in_doubt_is_never_asked_about() {
    let mut e = engine();
    let txn = prepared(&mut e, "alice", "h1"); // in doubt from 1_300
    e.handle(Event::CommitRequested { txn });
    e.handle(Event::CommitApplied { txn, at: 1_100 });
    // Its in-doubt timer comes due, and is dropped: the transaction moved on.
    assert_eq!(e.handle(Event::Tick { now: 5_000 }), vec![]);
    let retention = Config::default().tombstone_ms;
    assert_eq!(
        e.handle(Event::Tick {
            now: 1_101 + retention
        }),
        vec![Command::Forget { txn }]
    );
    assert_eq!(
        e.handle(Event::Tick {
            now: 2_000 + retention
        }),
        vec![],
        "forgotten once"
    );
}

fn read(e: &mut Engine<C>, reader: u64, name: &str, at: u64) -> Vec<Command<C>> {
    e.handle(Event::ReadRequested {
        reader,
        user: user(name),
        at,
    })
}

#[test]
fn a_read_of_a_free_user_goes_at_once_and_one_of_a_locked_user_waits_for_the_outcome() {
    let mut e = engine();
    assert_eq!(
        read(&mut e, 1, "alice", 1_000),
        vec![Command::Read { reader: 1 }]
    );
    let txn = prepared(&mut e, "alice", "h1");
    assert_eq!(read(&mut e, 2, "alice", 1_001), vec![], "in doubt: waits");
    assert_eq!(read(&mut e, 3, "alice", 1_002), vec![]);
    assert_eq!(
        read(&mut e, 4, "bob", 1_002),
        vec![Command::Read { reader: 4 }]
    );
    e.handle(Event::CommitRequested { txn });
    assert_eq!(
        e.handle(Event::CommitApplied { txn, at: 1_010 }),
        vec![
            Command::Read { reader: 2 },
            Command::Read { reader: 3 },
            Command::Ack { txn }
        ],
        "the waiting readers read the committed change, oldest first"
    );
    // Nothing left to refuse later (the tick only forgets the committed transaction).
    assert_eq!(
        e.handle(Event::Tick { now: 100_000 }),
        vec![Command::Forget { txn }]
    );
}

#[test]
fn an_abort_lets_the_waiting_readers_read_the_data_as_it_was() {
    let mut e = engine();
    let txn = prepared(&mut e, "alice", "h1");
    read(&mut e, 7, "alice", 1_001);
    assert_eq!(
        e.handle(Event::AbortRequested { txn, at: 1_005 }),
        vec![
            Command::DropPrepared { txn },
            Command::Read { reader: 7 },
            Command::Ack { txn }
        ]
    );
}

#[test]
fn a_reader_of_a_user_in_doubt_is_refused_after_the_read_wait_and_only_then() {
    let mut e = engine();
    let wait = Config::default().read_wait_ms;
    let txn = prepared(&mut e, "alice", "h1");
    read(&mut e, 1, "alice", 2_000);
    read(&mut e, 2, "alice", 2_500);
    let refused = |out: Vec<Command<C>>| -> Vec<u64> {
        out.into_iter()
            .filter_map(|c| match c {
                Command::RefuseRead { reader } => Some(reader),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        refused(e.handle(Event::Tick {
            now: 2_000 + wait - 1
        })),
        Vec::<u64>::new()
    );
    assert_eq!(
        refused(e.handle(Event::Tick { now: 2_000 + wait })),
        vec![1]
    );
    assert!(
        e.is_locked(&user("alice")),
        "the lock is the transaction's, not the reader's"
    );
    // The outcome arrives before the second reader's wait is over: it reads.
    e.handle(Event::DecisionLearned {
        txn,
        decision: Decision::Committed,
        at: 2_600,
    });
    assert_eq!(
        e.handle(Event::CommitApplied { txn, at: 2_601 }),
        vec![Command::Read { reader: 2 }, Command::Ack { txn }]
    );
    assert_eq!(
        refused(e.handle(Event::Tick { now: 2_500 + wait })),
        Vec::<u64>::new()
    );
}

#[test]
fn the_state_is_one_value_whatever_order_independent_events_came_in() {
    use std::hash::{BuildHasher, RandomState};
    let (a, b) = (TxnId::generate(), TxnId::generate());
    let run = |order: [(TxnId, &str); 2]| {
        let mut e = engine();
        for (txn, name) in order {
            e.handle(Event::PrepareRequested {
                txn,
                user: user(name),
                wall_ms: tpc_common::now_ms(),
                payload: None,
            });
        }
        for (txn, _) in order {
            e.handle(Event::Validated {
                txn,
                outcome: Ok("h"),
            });
            e.handle(Event::PreparedForced { txn, at: 1_000 });
        }
        e
    };
    let one = run([(a, "alice"), (b, "bob")]);
    let other = run([(b, "bob"), (a, "alice")]);
    assert_eq!(one, other);
    let hasher = RandomState::new();
    assert_eq!(hasher.hash_one(&one), hasher.hash_one(&other));
}

#[test]
fn next_due_names_the_first_timer_a_tick_would_act_on() {
    let mut e = engine();
    assert_eq!(e.next_due(), None, "an idle engine needs no clock");
    let txn = prepared(&mut e, "alice", "v2");
    let in_doubt_at = 1_000 + Config::default().in_doubt_after_ms;
    assert_eq!(e.next_due(), Some(in_doubt_at));
    assert_eq!(
        e.handle(Event::Tick { now: in_doubt_at }),
        vec![Command::QueryDecision { txn }]
    );
    // The next query, after the first backoff step.
    let backoff = Config::default().query_backoff.delay(0).as_millis() as u64;
    assert_eq!(e.next_due(), Some(in_doubt_at + backoff));
}
