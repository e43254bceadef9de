//! Seeded runs of the whole cluster under partitions, delays and crashes, judged by the chaos checker.

use tpc_sim::run::{SimConfig, run};

/// How many seeds `cargo test` runs (more with `tpc sim`).
const SEEDS: u64 = 20;

#[test]
fn seeded_fault_schedules_leave_no_violation() {
    let seeds: u64 = std::env::var("TPC_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS);
    let started = std::time::Instant::now();
    let mut committed = 0;
    for seed in 0..seeds {
        let report = run(&SimConfig::new(seed)).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:#?}\nfaults:\n{}",
            report.violations,
            report.faults.join("\n")
        );
        committed += report.committed;
        println!(
            "seed {seed}: {} operations, {} committed, {} faults",
            report.operations,
            report.committed,
            report.faults.len()
        );
    }
    assert!(committed > 0, "nothing ever committed");
    println!("{seeds} seeds in {:.1} s", started.elapsed().as_secs_f64());
}
