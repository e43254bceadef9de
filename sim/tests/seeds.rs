//! Seeded runs of the whole cluster under partitions, delays and crashes, judged by the chaos checker,
//! each seed in a process of its own (this test binary, running `sim_child`).

use std::process::Command;
use std::time::Duration;

use tpc_common::PlantedBug;
use tpc_sim::run::SimConfig;
use tpc_sim::seeds::{self, Summary};

/// How many seeds `cargo test` runs (`tpc sim` runs more).
const SEEDS: u64 = 200;
/// Simulated seconds of faults per seed.
const FAULTS_FOR: Duration = Duration::from_secs(3);

fn child_command(seed: u64, with_log: bool) -> Command {
    planted_child(seed, with_log, "")
}

/// A child running `seed` with the engines' bug `planted` (`""`: none).
fn planted_child(seed: u64, with_log: bool, planted: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("this test binary"));
    command
        .args(["--ignored", "--exact", "sim_child", "--nocapture"])
        .env("TPC_SIM_SEED", seed.to_string())
        .env("TPC_SIM_LOG", if with_log { "1" } else { "0" })
        .env("TPC_SIM_PLANTED", planted);
    command
}

/// The child's side: one seed, its summary printed for the parent.
#[test]
#[ignore = "run by the other tests, in a process of its own per seed"]
fn sim_child() {
    let seed = std::env::var("TPC_SIM_SEED")
        .expect("TPC_SIM_SEED")
        .parse()
        .expect("a seed");
    let mut config = SimConfig::new(seed);
    config.faults_for = FAULTS_FOR;
    match std::env::var("TPC_SIM_PLANTED").as_deref() {
        Ok("reply-before-force") => {
            config.engines.coordinator.planted = Some(PlantedBug::ReplyBeforeCommitForced)
        }
        Ok("vote-before-force") => {
            config.engines.participant.planted = Some(PlantedBug::VoteBeforePreparedForced)
        }
        Ok("aborted-while-voting") => {
            config.engines.coordinator.planted = Some(PlantedBug::AbortedWhileVoting)
        }
        _ => {}
    }
    seeds::child(&config, std::env::var("TPC_SIM_LOG").as_deref() == Ok("1"));
}

#[test]
fn seeded_fault_schedules_leave_no_violation() {
    let started = std::time::Instant::now();
    let summaries = seeds::run_seeds(0..SEEDS, 2, |seed| child_command(seed, false), |_| {});
    let failures: Vec<&Summary> = summaries
        .iter()
        .filter(|s| !s.violations.is_empty())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {SEEDS} seeds failed (replay one with `tpc sim --seeds 1 --start SEED --faults-for 3s`):\n{:#?}",
        failures.len(),
        failures
    );
    let committed: usize = summaries.iter().map(|s| s.committed).sum();
    let faults: usize = summaries.iter().map(|s| s.faults).sum();
    assert!(
        committed > SEEDS as usize,
        "too little committed to mean anything: {committed}"
    );
    println!(
        "{SEEDS} seeds, {committed} commits, {faults} faults, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_seed_replays_byte_for_byte() {
    let runs = seeds::run_seeds([7, 7], 2, |seed| child_command(seed, true), |_| {});
    let (first, second) = (&runs[0], &runs[1]);
    assert!(first.operations > 0 && !first.log.is_empty(), "{first:?}");
    if first.log != second.log {
        let (a, b): (Vec<_>, Vec<_>) = (first.log.lines().collect(), second.log.lines().collect());
        let at = a
            .iter()
            .zip(&b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        panic!(
            "seed 7 ran differently the second time, from line {at}:\n{}\n---\n{}",
            a.get(at).unwrap_or(&"(end)"),
            b.get(at).unwrap_or(&"(end)")
        );
    }
}

/// Runs seeds with a planted bug until one shows a violation; returns the seed and what it found.
fn first_caught(planted: &str, seeds: std::ops::Range<u64>) -> Option<Summary> {
    let seeds: Vec<u64> = seeds.collect();
    seeds.chunks(8).find_map(|chunk| {
        seeds::run_seeds(
            chunk.iter().copied(),
            2,
            |seed| planted_child(seed, false, planted),
            |_| {},
        )
        .into_iter()
        .find(|s| !s.violations.is_empty())
    })
}

#[test]
fn planted_reply_before_the_commit_is_forced_is_caught() {
    let caught = first_caught("reply-before-force", 0..200).expect("no seed of 200 caught it");
    println!("seed {}: {:#?}", caught.seed, caught.violations);
}

#[test]
fn planted_aborted_while_voting_is_caught() {
    let caught = first_caught("aborted-while-voting", 0..60).expect("no seed of 60 caught it");
    println!("seed {}: {:#?}", caught.seed, caught.violations);
}

#[test]
fn planted_vote_before_prepared_is_forced_is_caught() {
    let caught = first_caught("vote-before-force", 0..200).expect("no seed of 200 caught it");
    println!("seed {}: {:#?}", caught.seed, caught.violations);
}
