//! Request ids the engine does not remember: looked up in the log before anything starts, with what
//! the engine remembers bounded however many commit.

use super::requests::KEEP;
use super::test_support::BeginNew;
use super::*;
use tpc_common::Password;

const NOW: u64 = 1_000;

fn user(n: usize) -> UserId {
    UserId::parse(&format!("user{n}")).unwrap()
}

fn update(n: usize, new: &str) -> Operation {
    Operation::Update {
        user: user(n),
        current: Password::new("current_password", "old".into()).unwrap(),
        new: Password::new("new_password", new.into()).unwrap(),
    }
}

fn begin(e: &mut Engine, request_id: &str, op: Operation) -> (TxnId, Vec<Command>) {
    let client = TxnId::generate();
    let out = e.handle(
        Event::Begin {
            txn: client,
            request_id: request_id.into(),
            op,
        },
        NOW,
    );
    (client, out)
}

fn look_up(client: TxnId, request_id: &str) -> Vec<Command> {
    vec![Command::LookUp {
        client,
        request_id: request_id.into(),
    }]
}

fn answer(e: &mut Engine, client: TxnId, logged: Option<LoggedRequest>) -> Vec<Command> {
    e.handle(
        Event::LookedUp {
            client,
            logged: Ok(logged),
        },
        NOW,
    )
}

/// Votes yes, forces the COMMIT record and acknowledges both commits.
fn commit(e: &mut Engine, txn: TxnId) {
    e.handle(
        Event::Voted {
            txn,
            from: Participant::Password,
            vote: Vote::Yes {
                email: Some(Email::parse("someone@example.com").unwrap()),
            },
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
    e.handle(Event::CommitForced { txn }, NOW);
    for from in Participant::ALL {
        e.handle(Event::CommitAcked { txn, from }, NOW);
    }
}

fn committed(client: TxnId, txn: TxnId, request_id: &str) -> Vec<Command> {
    vec![Command::Reply {
        clients: vec![client],
        outcome: Outcome {
            txn,
            request_id: request_id.into(),
            committed: true,
            reason: String::new(),
        },
    }]
}

fn is_prepare(out: &[Command]) -> bool {
    matches!(out.first(), Some(Command::SendPrepare { .. }))
}

#[test]
fn an_unknown_request_id_is_looked_up_and_starts_only_when_the_log_has_none() {
    let mut e = Engine::default();
    let (client, out) = begin(&mut e, "r1", update(1, "a"));
    assert_eq!(
        out,
        look_up(client, "r1"),
        "nothing sent before the log answers"
    );
    assert!(e.active().is_empty());
    assert!(is_prepare(&answer(&mut e, client, None)));
    assert_eq!(e.active().len(), 1);
}

#[test]
fn a_request_id_the_log_committed_gets_the_first_outcome_and_starts_nothing() {
    let mut e = Engine::default();
    let first = TxnId::generate();
    let (client, _) = begin(&mut e, "r1", update(1, "a"));
    let logged = LoggedRequest {
        txn: first,
        kind: OperationKind::Update,
        user: user(1),
    };
    assert_eq!(
        answer(&mut e, client, Some(logged.clone())),
        committed(client, first, "r1")
    );
    assert!(e.active().is_empty());

    // The same id for another user's change: refused, nothing started.
    let (client, _) = begin(&mut e, "r1", update(2, "a"));
    assert_eq!(
        answer(&mut e, client, Some(logged)),
        vec![Command::Reject {
            client,
            refusal: Refusal::RequestReused("r1".into())
        }]
    );
    assert!(e.active().is_empty());
}

#[test]
fn a_log_that_cannot_be_read_refuses_the_request_and_starts_nothing() {
    let mut e = Engine::default();
    let (client, _) = begin(&mut e, "r1", update(1, "a"));
    let out = e.handle(
        Event::LookedUp {
            client,
            logged: Err("disk on fire".into()),
        },
        NOW,
    );
    assert!(
        matches!(out.as_slice(), [Command::Reject { refusal: Refusal::Internal(why), .. }] if why.contains("disk on fire")),
        "{out:?}"
    );
    assert!(e.active().is_empty());
}

#[test]
fn an_answer_for_a_client_not_waiting_is_ignored() {
    let mut e = Engine::default();
    assert_eq!(answer(&mut e, TxnId::generate(), None), vec![]);
}

#[test]
fn a_retry_while_the_first_is_looked_up_joins_it_once_it_runs() {
    let mut e = Engine::default();
    let (first, _) = begin(&mut e, "r1", update(1, "a"));
    let (retry, out) = begin(&mut e, "r1", update(1, "a"));
    assert_eq!(out, look_up(retry, "r1"));
    let out = answer(&mut e, first, None);
    assert!(is_prepare(&out));
    assert_eq!(
        answer(&mut e, retry, None),
        vec![],
        "joined the running one"
    );
    assert_eq!(e.active().len(), 1);
}

#[test]
fn a_commit_while_a_lookup_is_out_is_not_taken_for_never_committed() {
    let mut e = Engine::default();
    let (first, _) = begin(&mut e, "r1", update(0, "a"));
    // A retry arrives before the first starts: its read of the log may run before the commit.
    let (retry, _) = begin(&mut e, "r1", update(0, "a"));
    answer(&mut e, first, None);
    let txn = e.active()[0].txn;
    commit(&mut e, txn);
    // Many more commit meanwhile, more than the engine keeps for quick retries.
    for n in 1..=KEEP + 10 {
        let rid = format!("other-{n}");
        let (client, _) = begin(&mut e, &rid, update(n, "a"));
        answer(&mut e, client, None);
        let other = e.active()[0].txn;
        commit(&mut e, other);
    }
    assert_eq!(
        answer(&mut e, retry, None),
        committed(retry, txn, "r1"),
        "the log's \"none\" predates the commit"
    );
    assert!(e.active().is_empty());
}

#[test]
fn the_engine_remembers_a_bounded_number_of_committed_request_ids() {
    let mut e = Engine::default();
    let mut txns = Vec::new();
    for n in 0..KEEP * 3 {
        let rid = format!("r-{n}");
        let out = e.begin_new(
            Event::Begin {
                txn: TxnId::generate(),
                request_id: rid,
                op: update(n, "a"),
            },
            NOW,
        );
        assert!(is_prepare(&out));
        let txn = e.active()[0].txn;
        commit(&mut e, txn);
        txns.push(txn);
    }
    assert_eq!(e.requests.remembered(), KEEP);
    // The newest are answered from memory, the digest compared: another password is a reuse.
    let newest = format!("r-{}", KEEP * 3 - 1);
    let (client, out) = begin(&mut e, &newest, update(KEEP * 3 - 1, "a"));
    assert_eq!(out, committed(client, txns[KEEP * 3 - 1], &newest));
    let (client, out) = begin(&mut e, &newest, update(KEEP * 3 - 1, "b"));
    assert_eq!(
        out,
        vec![Command::Reject {
            client,
            refusal: Refusal::RequestReused(newest)
        }]
    );
    // The oldest are the log's to answer.
    let (client, out) = begin(&mut e, "r-0", update(0, "a"));
    assert_eq!(out, look_up(client, "r-0"));
}
