//! The circuit breakers as the engine uses them: one event in, the commands out.

use super::breaker::OPEN_FOR;
use super::test_support::BeginNew;
use super::*;
use tpc_common::Password;

const NOW: u64 = 1_000;

fn register(user: &str) -> Operation {
    Operation::Register {
        user: UserId::parse(user).unwrap(),
        email: Email::parse(&format!("{user}@example.com")).unwrap(),
        password: Password::new("password", "pw".into()).unwrap(),
    }
}

fn begin(e: &mut Engine, user: &str, now: impl Into<Now>) -> (TxnId, Vec<Command>) {
    let txn = TxnId::generate();
    let out = e.begin_new(
        Event::Begin {
            txn,
            request_id: format!("r-{txn}"),
            op: register(user),
        },
        now,
    );
    (txn, out)
}

fn sends_prepare(out: &[Command], txn: TxnId) -> bool {
    out.iter()
        .any(|c| matches!(c, Command::SendPrepare { txn: t, .. } if *t == txn))
}

/// History cannot be reached by three registrations in a row.
fn history_fails_three_times(e: &mut Engine) -> Vec<Command> {
    let mut out = Vec::new();
    for i in 0..3 {
        let (txn, _) = begin(e, &format!("u{i}"), NOW);
        out = e.handle(
            Event::PrepareFailed {
                txn,
                from: Participant::History,
                error: "connection refused".into(),
            },
            NOW + 1,
        );
    }
    out
}

#[test]
fn failed_prepares_in_a_row_open_the_breaker_and_new_changes_are_refused_at_once() {
    let mut e = Engine::default();
    let out = history_fails_three_times(&mut e);
    assert!(
        out.contains(&Command::BreakerTurned {
            participant: Participant::History,
            opened: true
        }),
        "{out:?}"
    );
    let (refused, out) = begin(&mut e, "ivan", NOW + 100);
    assert_eq!(
        out,
        [Command::Reject {
            client: refused,
            refusal: Refusal::Unavailable {
                participant: Participant::History,
                retry_after: OPEN_FOR - Duration::from_millis(99),
            }
        }],
        "nothing started, nothing logged"
    );
    assert_eq!(e.decision(refused), None, "never known");
}

#[test]
fn after_the_open_period_one_change_probes_and_the_first_answer_closes_the_breaker() {
    let mut e = Engine::default();
    history_fails_three_times(&mut e);
    let later = NOW + 1 + OPEN_FOR.as_millis() as u64;
    let (probe, out) = begin(&mut e, "judy", later);
    assert!(sends_prepare(&out, probe), "the probe is sent: {out:?}");
    let (meanwhile, out) = begin(&mut e, "ken", later + 1);
    assert!(
        matches!(out.as_slice(), [Command::Reject { client, refusal: Refusal::Unavailable { .. } }] if *client == meanwhile),
        "one probe at a time: {out:?}"
    );
    let out = e.handle(
        Event::Voted {
            txn: probe,
            from: Participant::History,
            vote: Vote::Yes { email: None },
        },
        later + 5,
    );
    assert!(
        out.contains(&Command::BreakerTurned {
            participant: Participant::History,
            opened: false
        }),
        "{out:?}"
    );
    let (next, out) = begin(&mut e, "ken", later + 6);
    assert!(sends_prepare(&out, next), "{out:?}");
}

#[test]
fn the_open_period_runs_on_the_monotonic_clock_whatever_the_wall_clock_does() {
    let mut e = Engine::default();
    history_fails_three_times(&mut e);
    let open_for = OPEN_FOR.as_millis() as u64;
    // The wall clock is stepped back (to 1970) while the breaker is open; the monotonic clock goes on.
    let later = Now {
        wall: 0,
        mono: NOW + 1 + open_for,
    };
    let (probe, out) = begin(&mut e, "ivan", later);
    assert!(
        sends_prepare(&out, probe),
        "the open period is over, so one change probes: {out:?}"
    );
    // And a step forward does not end it early.
    let mut e = Engine::default();
    history_fails_three_times(&mut e);
    let jumped = Now {
        wall: NOW + 3_600_000,
        mono: NOW + 2,
    };
    let (refused, out) = begin(&mut e, "ivan", jumped);
    assert!(
        matches!(&out[..], [Command::Reject { client, .. }] if *client == refused),
        "still open: {out:?}"
    );
}
