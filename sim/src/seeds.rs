//! Many seeds, each in a process of its own: a seed replays exactly when it runs first in a fresh
//! process (two runs in one process can differ, through state the libraries keep between them), so a
//! failure found here is one `tpc sim --seeds 1 --start SEED` shows again.

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::run::{SimConfig, run};

/// What one seed did, as a child process reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub seed: u64,
    pub operations: usize,
    pub committed: usize,
    pub faults: usize,
    /// `invariant: detail`, one per violation; or why the run itself failed.
    pub violations: Vec<String>,
    /// The run's log, if asked for (`SimConfig`-level replay checks).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log: String,
}

/// Marks the child's answer among whatever else it prints.
const MARK: &str = "TPC-SIM-RESULT ";

/// Runs one seed here and prints its summary for the parent (the child's side).
pub fn child(config: &SimConfig, with_log: bool) {
    let summary = match run(config) {
        Ok(report) => Summary {
            seed: config.seed,
            operations: report.operations,
            committed: report.committed,
            faults: report.faults.len(),
            violations: report
                .violations
                .iter()
                .map(|v| format!("{}: {}", v.invariant, v.detail))
                .collect(),
            log: if with_log { report.log } else { String::new() },
        },
        Err(e) => Summary {
            seed: config.seed,
            operations: 0,
            committed: 0,
            faults: 0,
            violations: vec![format!("the run failed: {e}")],
            log: String::new(),
        },
    };
    let line = serde_json::to_string(&summary).expect("a summary serializes");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{MARK}{line}");
    let _ = out.flush();
}

/// Runs `seeds`, `jobs` child processes at a time, each made by `command(seed)`, and returns their
/// summaries in seed order; `each` sees every summary as it arrives.
pub fn run_seeds(
    seeds: impl IntoIterator<Item = u64>,
    jobs: usize,
    command: impl Fn(u64) -> Command,
    mut each: impl FnMut(&Summary),
) -> Vec<Summary> {
    let mut pending: std::collections::VecDeque<u64> = seeds.into_iter().collect();
    let mut running: Vec<(u64, std::process::Child)> = Vec::new();
    let mut done = Vec::new();
    while !pending.is_empty() || !running.is_empty() {
        while running.len() < jobs.max(1)
            && let Some(seed) = pending.pop_front()
        {
            let child = command(seed)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn();
            match child {
                Ok(child) => running.push((seed, child)),
                Err(e) => done.push(failed(seed, format!("cannot start: {e}"))),
            }
        }
        // Wait for the oldest: the children take about as long as each other.
        let (seed, child) = running.remove(0);
        let summary = match child.wait_with_output() {
            Ok(output) => String::from_utf8_lossy(&output.stdout)
                .lines()
                .find_map(|l| l.strip_prefix(MARK))
                .and_then(|json| serde_json::from_str(json).ok())
                .unwrap_or_else(|| failed(seed, format!("no result ({})", output.status))),
            Err(e) => failed(seed, e.to_string()),
        };
        each(&summary);
        done.push(summary);
    }
    done.sort_by_key(|s| s.seed);
    done
}

fn failed(seed: u64, why: String) -> Summary {
    Summary {
        seed,
        operations: 0,
        committed: 0,
        faults: 0,
        violations: vec![why],
        log: String::new(),
    }
}
