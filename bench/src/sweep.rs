//! One run of the sweep: a fresh cluster for one client count, its RPC floor, its users, the load, and
//! the run's figures. Every run starts from nothing (new data directories, new processes, users
//! registered again), so no run inherits another's caches, logs or e-mails.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tpc_harness::{Cluster, ClusterOptions, Service};

use crate::latency::{self, Tally};
use crate::load::{self, LoadOutcome};
use crate::recorder::WINDOW;
use crate::results::{Floors, Run};
use crate::{Config, anomalies, floors, mail_delay, measure, users};
use tpc_common::Strategy;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long the RPC floor is measured at each client count.
const RPC_FLOOR_TIME: Duration = Duration::from_secs(3);

/// Windows per minute, for `per_minute`.
const WINDOWS_PER_MINUTE: usize = (60 / WINDOW.as_secs()) as usize;

/// A cluster as the product runs by default (info logs, e-mail as `.eml` files), but with direct
/// links: no fault proxy between the processes.
pub async fn start_cluster(
    config: &Config,
    dir: &Path,
    strategy: Strategy,
) -> Result<Cluster, BoxError> {
    Cluster::start(ClusterOptions {
        exe: config.exe.clone(),
        dir: dir.to_path_buf(),
        smtp: None,
        rust_log: None,
        owasp_cost: config.owasp(),
        narrate: false,
        direct_links: true,
        // The product's default: the last 100 changes per user.
        history_keep: None,
        strategy,
    })
    .await
}

/// Runs the load at `clients` on a fresh cluster in `dir`.
pub async fn run_at(
    config: &Config,
    floors: &Floors,
    strategy: Strategy,
    clients: usize,
    dir: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<Run, BoxError> {
    bar.set_message("starting the cluster");
    // Dropped on an early return, the cluster kills its processes.
    let mut cluster = start_cluster(config, dir, strategy).await?;
    let channels = load::channels(&cluster.url(Service::Coordinator), clients).await?;
    bar.set_message("measuring the RPC floor");
    let rpc_floor = floors::rpc_per_s(&channels, clients, RPC_FLOOR_TIME).await;

    let accounts = users::assign(config.users, clients);
    let mut names: Vec<String> = accounts.iter().flatten().map(|a| a.user.clone()).collect();
    names.sort();
    bar.set_message(format!("registering {} users", names.len()));
    users::register(&channels, &names).await?;

    let load_began = tpc_common::now_ms();
    let pids: load::Pids = Service::ALL
        .iter()
        .filter_map(|&s| Some((s, cluster.pid(s)?)))
        .collect();
    let outcome = load::drive(
        &channels,
        accounts,
        &pids,
        config.warmup,
        config.duration,
        bar,
    )
    .await;
    drop(channels);
    let mail_dir = cluster.data_dir(Service::Coordinator).join("mail");
    let expected = outcome.recorded.committed_ever;
    bar.set_message("waiting for the e-mails");
    let delays = wait_for_mail(&mail_dir, load_began, expected).await?;
    bar.set_message("counting anomalies at rest");
    // Quiet first: a saga still compensating is not an anomaly at rest yet.
    let _ = cluster.quiesce(QUIESCE_WAIT).await;
    let anomalies = anomalies::count(&cluster, &names, &mail_dir).await?;
    bar.set_message("stopping the cluster");
    cluster.shutdown().await?;

    let data_dirs: Vec<_> = Service::ALL.iter().map(|&s| cluster.data_dir(s)).collect();
    let mut disk = 0;
    for dir in &data_dirs {
        disk += measure::disk_bytes(dir)?;
    }
    let mail = measure::disk_bytes(&cluster.data_dir(Service::Coordinator).join("mail"))?;
    // Registrations are committed transactions too, and their records and e-mails are on disk.
    let committed_total = outcome.recorded.committed_ever + names.len() as u64;
    let mut run = summarize(
        clients,
        names.len(),
        outcome,
        floors,
        rpc_floor,
        Disk {
            bytes: disk,
            mail_bytes: mail,
            committed_total,
        },
    );
    run.mail_delay = Some(mail_delay::summarize(delays, expected));
    run.strategy = strategy.as_str().into();
    run.anomalies = Some(anomalies);
    Ok(run)
}

/// The delays of the load's e-mails, once all `expected` are written or after `MAIL_WAIT`.
async fn wait_for_mail(dir: &Path, since_ms: u64, expected: u64) -> std::io::Result<Vec<u64>> {
    let deadline = tokio::time::Instant::now() + MAIL_WAIT;
    loop {
        let delays = mail_delay::delays_ms(dir, since_ms)?;
        if delays.len() as u64 >= expected || tokio::time::Instant::now() >= deadline {
            return Ok(delays);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long a run waits for the cluster to go quiet before counting anomalies.
const QUIESCE_WAIT: Duration = Duration::from_secs(10);

/// How long a run waits after the load for the outbox to write the last e-mails.
const MAIL_WAIT: Duration = Duration::from_secs(10);

/// The data directories at the end of a run.
pub struct Disk {
    pub bytes: u64,
    pub mail_bytes: u64,
    pub committed_total: u64,
}

/// Per 1,000 committed changes; `None` without any.
pub fn per_1000(total: f64, committed: u64) -> Option<f64> {
    (committed > 0).then(|| total / committed as f64 * 1000.0)
}

/// The run's figures from what was measured.
pub fn summarize(
    clients: usize,
    users: usize,
    outcome: LoadOutcome,
    floors: &Floors,
    rpc_floor: f64,
    disk: Disk,
) -> Run {
    let measured_s = outcome.measured.as_secs_f64();
    let window_s = WINDOW.as_secs_f64();
    let tallies: Vec<Tally> = outcome
        .recorded
        .windows
        .into_iter()
        .enumerate()
        .map(|(i, latencies)| {
            let start_s = i as f64 * window_s;
            Tally {
                start_s,
                length_s: (measured_s - start_s).clamp(0.0, window_s),
                latencies,
                rss_mib: outcome.window_rss.get(i).cloned().unwrap_or_default(),
            }
        })
        .collect();
    let all = latency::merge(&tallies, tallies.len().max(1))
        .pop()
        .map(|t| t.latencies)
        .unwrap_or_else(latency::histogram);
    let committed = all.len();
    let refused_total: u64 = outcome.recorded.refused.values().sum();
    let rate = |n: u64| {
        if measured_s > 0.0 {
            n as f64 / measured_s
        } else {
            0.0
        }
    };
    let committed_per_s = rate(committed);
    let cpu_total: f64 = outcome.cpu_s.values().sum();
    let rpc_bound = floors::bound(rpc_floor, floors.rpcs_per_change);
    Run {
        strategy: "2pc".into(),
        clients,
        faults: "none".into(),
        users,
        measured_s,
        committed,
        committed_per_s,
        refused_per_s: rate(refused_total),
        refused: outcome.recorded.refused,
        p50_ms: latency::quantile_ms(&all, 0.5),
        p90_ms: latency::quantile_ms(&all, 0.9),
        p99_ms: latency::quantile_ms(&all, 0.99),
        max_ms: latency::max_ms(&all),
        cpu_s_per_1000: (outcome.cpu_s.len() == Service::ALL.len())
            .then(|| per_1000(cpu_total, committed))
            .flatten(),
        cpu_s_per_1000_by_service: outcome
            .cpu_s
            .iter()
            .filter_map(|(name, s)| Some((name.clone(), per_1000(*s, committed)?)))
            .collect(),
        loadgen_cpu_s: outcome.loadgen_cpu_s,
        rss_mib: outcome.peak_rss_mib,
        committed_total: disk.committed_total,
        disk_bytes: disk.bytes,
        disk_bytes_per_change: per_1000(disk.bytes as f64, disk.committed_total)
            .map(|x| x / 1000.0),
        disk_bytes_per_change_without_mail: per_1000(
            disk.bytes.saturating_sub(disk.mail_bytes) as f64,
            disk.committed_total,
        )
        .map(|x| x / 1000.0),
        rpc_floor_per_s: rpc_floor,
        of_rpc_bound: floors::fraction(committed_per_s, rpc_bound),
        of_forced_write_bound: floors::fraction(committed_per_s, floors.forced_write_bound_per_s),
        of_argon2_bound: floors::fraction(committed_per_s, floors.argon2_bound_per_s),
        windows: tallies.iter().map(Tally::summary).collect(),
        per_minute: latency::merge(&tallies, WINDOWS_PER_MINUTE)
            .iter()
            .map(Tally::summary)
            .collect(),
        latency_cdf: latency::cdf(&all),
        mail_delay: None,
        anomalies: None,
    }
}

/// The RSS of every service, for a run's table row: `coordinator/password/history`.
pub fn rss_triple(rss: &BTreeMap<String, f64>) -> String {
    Service::ALL
        .iter()
        .map(|s| rss.get(s.name()).map_or("?".into(), |m| format!("{m:.0}")))
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::Recorded;

    fn floors() -> Floors {
        Floors {
            rpc_per_s: BTreeMap::from([(2, 10_000.0)]),
            forced_writes_per_s: 3_000.0,
            forced_writes_1_per_s: 1_000.0,
            argon2_hashes_per_s: 8_000.0,
            rpcs_per_change: 5.0,
            forced_writes_per_change: 3.0,
            hashes_per_change: 8.0,
            forced_write_bound_per_s: 1_000.0,
            argon2_bound_per_s: 1_000.0,
        }
    }

    #[test]
    fn a_run_reads_as_rates_fractions_and_costs_per_change() {
        let mut windows = vec![latency::histogram(), latency::histogram()];
        for _ in 0..1000 {
            latency::record(&mut windows[0], Duration::from_millis(2));
        }
        for _ in 0..500 {
            latency::record(&mut windows[1], Duration::from_millis(4));
        }
        let outcome = LoadOutcome {
            recorded: Recorded {
                windows,
                refused: BTreeMap::from([("conflict".into(), 15)]),
                committed_ever: 1600,
            },
            window_rss: vec![BTreeMap::from([("password".into(), 20.0)])],
            cpu_s: Service::ALL
                .iter()
                .map(|s| (s.name().to_owned(), 0.5))
                .collect(),
            loadgen_cpu_s: Some(0.2),
            peak_rss_mib: BTreeMap::new(),
            measured: Duration::from_secs(15),
        };
        let disk = Disk {
            bytes: 3_000_000,
            mail_bytes: 1_000_000,
            committed_total: 2000,
        };
        let run = summarize(2, 8, outcome, &floors(), 10_000.0, disk);
        assert_eq!(run.committed, 1500);
        assert!((run.committed_per_s - 100.0).abs() < 1e-9);
        assert!((run.refused_per_s - 1.0).abs() < 1e-9);
        assert!((run.p50_ms - 2.0).abs() < 0.01);
        assert!((run.p99_ms - 4.0).abs() < 0.01);
        assert_eq!(run.windows.len(), 2);
        assert_eq!(run.windows[1].length_s, 5.0);
        assert!((run.windows[1].committed_per_s - 100.0).abs() < 1e-9);
        assert_eq!(run.per_minute.len(), 1);
        assert!((run.cpu_s_per_1000.unwrap() - 1.0).abs() < 1e-9);
        assert!((run.cpu_s_per_1000_by_service["history"] - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(run.disk_bytes_per_change, Some(1500.0));
        assert_eq!(run.disk_bytes_per_change_without_mail, Some(1000.0));
        assert!((run.of_rpc_bound - 0.05).abs() < 1e-9);
        assert!((run.of_argon2_bound - 0.1).abs() < 1e-9);
        assert_eq!(rss_triple(&run.windows[0].rss_mib), "?/20/?");
    }
}
