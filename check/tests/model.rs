//! Bounded model checks of the production engines (each a few seconds on 2 cores), and the three
//! planted protocol bugs, each of which the checker must catch.

use tpc_check::{
    ABORTS, ACKED_IS_APPLIED, AGREEMENT, AT_REST, COMMIT_POINT, COMMITS, DURABILITY, Faults, Node,
    RECOVERS, Report, Search, Setup, check,
};
use tpc_common::PlantedBug;

const THREADS: usize = 2;

fn faults(crashes: u8, losses: u8, duplicates: u8, timeouts: u8) -> Faults {
    Faults {
        crashes,
        losses,
        duplicates,
        timeouts,
    }
}

/// Checks `setup` to `depth` and fails with the counterexamples if any property broke.
fn holds(setup: Setup, depth: usize) -> Report {
    let report = check(
        setup,
        Search {
            threads: THREADS,
            ..Search::to_depth(depth)
        },
    );
    println!("{report}");
    assert_eq!(report.broken().count(), 0, "{report}");
    report
}

fn reached(report: &Report, name: &str) {
    assert_eq!(
        report.verdict(name),
        Some(&tpc_check::Verdict::Reached),
        "{name} never happened:\n{report}"
    );
}

/// Checks a setup with a planted bug and returns the names of the properties it broke.
fn caught(setup: Setup, depth: usize) -> Vec<&'static str> {
    let report = check(
        setup,
        Search {
            threads: THREADS,
            stop_at_first: true,
            ..Search::to_depth(depth)
        },
    );
    println!("{report}");
    report.broken().map(|(name, _)| name).collect()
}

#[test]
fn one_change_survives_a_crash_of_any_process() {
    let mut setup = Setup::one_change();
    setup.reader = false;
    setup.faults = faults(1, 0, 0, 0);
    let report = holds(setup, 19);
    reached(&report, COMMITS);
    reached(&report, ABORTS);
    reached(&report, RECOVERS);
}

#[test]
fn one_change_survives_lost_duplicated_and_slow_messages() {
    let mut setup = Setup::one_change();
    setup.reader = false;
    setup.faults = faults(0, 1, 1, 1);
    let report = holds(setup, 14);
    reached(&report, COMMITS);
}

#[test]
fn a_reader_never_sees_half_a_change() {
    let mut setup = Setup::one_change();
    setup.faults = faults(0, 0, 0, 0);
    setup.history_may_refuse = false;
    let report = holds(setup, 18);
    reached(&report, COMMITS);
}

#[test]
fn a_retried_request_commits_once() {
    let mut setup = Setup::one_change();
    setup.reader = false;
    setup.history_may_refuse = false;
    setup.retries = 1;
    setup.faults = faults(1, 1, 0, 0);
    setup.crashable = vec![Node::Coordinator];
    let report = holds(setup, 16);
    reached(&report, COMMITS);
}

#[test]
fn two_changes_of_one_user() {
    let mut setup = Setup::same_user();
    setup.faults = faults(1, 0, 0, 0);
    setup.crashable = vec![Node::Coordinator];
    holds(setup, 16);
}

#[test]
fn two_changes_of_two_users() {
    let mut setup = Setup::two_users();
    setup.faults = faults(0, 1, 0, 0);
    holds(setup, 14);
}

/// One change that the history participant always accepts, no reader, and one crash of `crash` if
/// any: the least a planted bug needs to show.
fn for_a_planted_bug(crash: Option<Node>) -> Setup {
    let mut setup = Setup::one_change();
    setup.reader = false;
    setup.history_may_refuse = false;
    setup.faults = faults(u8::from(crash.is_some()), 0, 0, 0);
    setup.crashable = crash.into_iter().collect();
    setup
}

#[test]
fn planted_reply_before_the_commit_is_forced_is_caught() {
    let mut setup = for_a_planted_bug(Some(Node::Coordinator));
    setup.coordinator.planted = Some(PlantedBug::ReplyBeforeCommitForced);
    let broken = caught(setup, 18);
    assert!(
        broken.contains(&COMMIT_POINT) || broken.contains(&DURABILITY),
        "{broken:?}"
    );
}

#[test]
fn planted_vote_before_prepared_is_forced_is_caught() {
    let mut setup = for_a_planted_bug(Some(Node::Password));
    setup.participant.planted = Some(PlantedBug::VoteBeforePreparedForced);
    let broken = caught(setup, 19);
    assert!(
        broken.contains(&ACKED_IS_APPLIED) || broken.contains(&AT_REST),
        "{broken:?}"
    );
}

#[test]
fn planted_aborted_while_voting_is_caught() {
    let mut setup = for_a_planted_bug(None);
    setup.coordinator.planted = Some(PlantedBug::AbortedWhileVoting);
    let broken = caught(setup, 18);
    assert!(
        broken.contains(&AGREEMENT) || broken.contains(&DURABILITY),
        "{broken:?}"
    );
}
