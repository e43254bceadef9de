//! The admission queue in front of preparing: one event in, the exact commands out.

use super::admission::MAX_QUEUED_PER_USER;
use super::test_support::BeginNew;
use super::*;
use tpc_common::Password;

const NOW: u64 = 1_000;

/// An engine that lets one transaction prepare at a time.
fn engine() -> Engine {
    Engine::new(Config {
        limit: LimitConfig {
            initial: 1.0,
            max: 1.0,
            max_waiting: 2,
        },
        ..Config::default()
    })
}

fn update(user: &str) -> Operation {
    Operation::Update {
        user: UserId::parse(user).unwrap(),
        current: Password::new("current_password", "old".into()).unwrap(),
        new: Password::new("new_password", "new".into()).unwrap(),
    }
}

fn begin(e: &mut Engine, user: &str, now: u64) -> (TxnId, Vec<Command>) {
    let txn = TxnId::generate();
    let out = e.begin_new(
        Event::Begin {
            txn,
            request_id: format!("r-{txn}"),
            op: update(user),
        },
        now,
    );
    (txn, out)
}

/// An update's first `Prepare`: to the password participant alone.
fn prepares(txn: TxnId, user: &str) -> Vec<Command> {
    vec![Command::SendPrepare {
        txn,
        to: Participant::Password,
        op: update(user),
    }]
}

fn deadline(txn: TxnId) -> Command {
    Command::StartDeadline {
        txn,
        after: Duration::from_secs(2),
        round: 0,
    }
}

fn no_vote(e: &mut Engine, txn: TxnId, now: u64) -> Vec<Command> {
    e.handle(
        Event::Voted {
            txn,
            from: Participant::Password,
            vote: Vote::No {
                reason: "current password is wrong".into(),
            },
        },
        now,
    )
}

#[test]
fn beyond_the_limit_a_change_waits_without_sending_anything() {
    let mut e = engine();
    let (first, out) = begin(&mut e, "alice", NOW);
    assert_eq!(
        out,
        [prepares(first, "alice"), vec![deadline(first)]].concat()
    );
    let (second, out) = begin(&mut e, "bob", NOW);
    assert_eq!(out, [deadline(second)], "waits: no Prepare yet");
    assert_eq!(e.decision(second), Some(Decision::Pending));
}

#[test]
fn a_waiting_change_prepares_when_a_turn_frees() {
    let mut e = engine();
    let (first, _) = begin(&mut e, "alice", NOW);
    let (second, _) = begin(&mut e, "bob", NOW);
    let out = no_vote(&mut e, first, NOW + 10);
    let turn = out
        .iter()
        .position(|c| matches!(c, Command::SendPrepare { txn, .. } if *txn == second))
        .expect("the second change starts preparing");
    assert_eq!(out[turn..], prepares(second, "bob")[..]);
    assert!(
        out[..turn]
            .iter()
            .any(|c| matches!(c, Command::SendAbort { txn, .. } if *txn == first)),
        "the first one aborts as before: {out:?}"
    );
}

#[test]
fn a_change_that_cannot_prepare_in_time_is_refused_at_once() {
    let mut e = engine();
    let (first, _) = begin(&mut e, "alice", NOW);
    // A prepare took 600 ms: with one turn at a time, a second change would wait 600 ms and then take
    // 600 ms itself, past half the 2 s deadline.
    no_vote(&mut e, first, NOW + 600);
    begin(&mut e, "carol", NOW + 700);
    let (refused, out) = begin(&mut e, "bob", NOW + 700);
    assert_eq!(
        out,
        [Command::Reject {
            client: refused,
            refusal: Refusal::Overloaded {
                retry_after: Duration::from_millis(600)
            },
        }]
    );
    assert_eq!(
        e.decision(refused),
        None,
        "a refused request leaves nothing behind (the log, which holds no COMMIT, decides)"
    );
}

#[test]
fn the_queue_is_bounded() {
    let mut e = engine();
    begin(&mut e, "a", NOW);
    begin(&mut e, "b", NOW);
    begin(&mut e, "c", NOW);
    let (refused, out) = begin(&mut e, "d", NOW);
    assert!(
        matches!(out.as_slice(), [Command::Reject { client, refusal: Refusal::Overloaded { .. } }] if *client == refused),
        "{out:?}"
    );
}

#[test]
fn a_change_still_waiting_at_its_deadline_is_refused_not_aborted() {
    let mut e = engine();
    begin(&mut e, "alice", NOW);
    let (waiting, _) = begin(&mut e, "bob", NOW);
    let out = e.handle(
        Event::PrepareDeadline {
            txn: waiting,
            round: 0,
        },
        NOW + 2_000,
    );
    assert!(
        matches!(out.as_slice(), [Command::Reject { client, refusal: Refusal::Overloaded { .. } }] if *client == waiting),
        "nothing was sent, so nothing to abort or note: {out:?}"
    );
    // Bob's next change is not blocked by the refused one.
    let (next, out) = begin(&mut e, "bob", NOW + 2_001);
    assert_eq!(out, [deadline(next)], "it waits its turn like any other");
}

#[test]
fn changes_of_a_busy_user_wait_behind_it_up_to_a_bound() {
    let mut e = engine();
    begin(&mut e, "alice", NOW);
    begin(&mut e, "bob", NOW);
    for _ in 0..MAX_QUEUED_PER_USER {
        let (queued, out) = begin(&mut e, "bob", NOW);
        assert_eq!(out, [deadline(queued)], "it waits for bob's first change");
    }
    let (one_more, out) = begin(&mut e, "bob", NOW);
    assert!(
        out.iter().any(|c| matches!(c, Command::Reply { clients, outcome } if clients == &[one_more] && outcome.reason == CONFLICT)),
        "{out:?}"
    );
}

#[test]
fn a_change_whose_turn_comes_too_late_is_refused_not_started() {
    let mut e = engine();
    let (first, _) = begin(&mut e, "alice", NOW);
    // Admitted while nothing was measured yet.
    let (late, out) = begin(&mut e, "bob", NOW);
    assert_eq!(out, [deadline(late)]);
    // The first prepare took 1.5 s: bob's turn comes with 0.5 s left, too little for another.
    let out = no_vote(&mut e, first, NOW + 1_500);
    assert!(
        !out.iter()
            .any(|c| matches!(c, Command::SendPrepare { txn, .. } if *txn == late)),
        "{out:?}"
    );
    assert!(
        out.iter().any(|c| matches!(c, Command::Reject { client, refusal: Refusal::Overloaded { .. } } if *client == late)),
        "{out:?}"
    );
}
