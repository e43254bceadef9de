//! One run of the sweep: a fresh cluster for one client count, its RPC floor, its users, the load, and
//! the run's figures. Every run starts from nothing (new data directories, new processes, users
//! registered again), so no run inherits another's caches, logs or e-mails.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tpc_common::{Strategy, TxnId};
use tpc_harness::etcd::EtcdCluster;
use tpc_harness::{Cluster, ClusterOptions, MailServer, Service};

use crate::faults::{self, FaultMode, Processes};
use crate::inflight::{self, InFlight};
use crate::latency::{self, Tally};
use crate::load::{self, LoadOutcome, Workload};
use crate::readers::Readers;
use crate::recorder::WINDOW;
use crate::results::{Floors, Run};
use crate::{Config, DecisionLog, anomalies, floors, mail_delay, measure, users};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long the RPC floor is measured at each client count.
const RPC_FLOOR_TIME: Duration = Duration::from_secs(3);

/// Windows per minute, for `per_minute`.
const WINDOWS_PER_MINUTE: usize = (60 / WINDOW.as_secs()) as usize;

/// A cluster as the product runs by default (info logs), with direct links (no fault proxy between the
/// processes) and e-mail as `.eml` files for a plain run; with fault proxies on every link and e-mail
/// through `smtp` when faults are injected.
pub async fn start_cluster(
    config: &Config,
    dir: &Path,
    strategy: Strategy,
    faults: FaultMode,
    smtp: Option<String>,
    etcd: Option<Vec<String>>,
) -> Result<Cluster, BoxError> {
    Cluster::start(ClusterOptions {
        exe: config.exe.clone(),
        dir: dir.to_path_buf(),
        smtp,
        smtp_ca: None,
        smtp_password: None,
        rust_log: None,
        owasp_cost: config.owasp(),
        narrate: false,
        direct_links: faults == FaultMode::None,
        // The product's default: the last 100 changes per user.
        history_keep: None,
        strategy,
        throttle_guesses: false,
        insecure_internal: config.insecure_internal,
        etcd,
    })
    .await
}

/// One run: a strategy, a fault mode, a decision log and a client count.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub strategy: Strategy,
    pub faults: FaultMode,
    pub log: DecisionLog,
    pub clients: usize,
}

/// Runs the load of `plan` on a fresh cluster in `dir`.
pub async fn run_at(
    config: &Config,
    floors: &Floors,
    plan: Plan,
    dir: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<Run, BoxError> {
    let Plan {
        strategy,
        faults,
        log,
        clients,
    } = plan;
    bar.set_message("starting the cluster");
    // With faults the e-mail goes through a real SMTP server that the schedule can take down.
    let mut mail = match faults {
        FaultMode::None => None,
        _ => Some(MailServer::start().await?),
    };
    // A 3-member etcd cluster on loopback for a decision log on etcd, kept until the run ends.
    let etcd = match log {
        DecisionLog::Sled => None,
        DecisionLog::Etcd => {
            bar.set_message("starting etcd");
            Some(EtcdCluster::start(&dir.join("etcd"), 3).await?)
        }
    };
    // Dropped on an early return, the cluster kills its processes.
    let mut cluster = start_cluster(
        config,
        dir,
        strategy,
        faults,
        mail.as_ref().map(MailServer::url),
        etcd.as_ref().map(EtcdCluster::endpoints),
    )
    .await?;
    let channels = load::channels(&cluster.url(Service::Coordinator), clients).await?;
    bar.set_message("measuring the RPC floor");
    let rpc_floor = floors::rpc_per_s(&channels, clients, RPC_FLOOR_TIME).await;

    let accounts = users::assign(config.users, clients);
    let mut names: Vec<String> = accounts.iter().flatten().map(|a| a.user.clone()).collect();
    names.sort();
    bar.set_message(format!("registering {} users", names.len()));
    users::register(&channels, &names).await?;

    let load_began = tpc_common::now_ms();
    let processes = Processes::of(&cluster);
    let board = (config.readers > 0).then(|| Arc::new(InFlight::default()));
    let workload = Workload {
        board: board.clone(),
        reuse_rate: config.reuse_rate,
        request_ids: config.request_ids,
    };
    let begun = Instant::now();
    let from = begun + config.warmup;
    let readers = match &board {
        Some(board) => Some(Readers::start(
            config.readers,
            &cluster.url(Service::Password),
            &cluster.url(Service::History),
            board.clone(),
            from,
            from + config.duration,
        )?),
        None => None,
    };
    let schedule = faults::schedule(faults, faults::SEED, config.duration);
    let (outcome, fault_events) = tokio::join!(
        load::drive(
            &channels,
            accounts,
            workload,
            &processes,
            begun,
            config.warmup,
            config.duration,
            bar,
        ),
        faults::inject(&mut cluster, mail.as_mut(), &schedule, from, &processes),
    );
    drop(channels);
    let reads = match readers {
        Some(readers) => Some(readers.finish().await),
        None => None,
    };
    let mail_dir = cluster.data_dir(Service::Coordinator).join("mail");
    let expected = outcome.recorded.committed_ever;
    bar.set_message("letting the cluster go quiet");
    // Quiet first: a saga still compensating, or a participant still in doubt after a fault, is not an
    // anomaly at rest yet.
    let not_quiet = cluster.quiesce(QUIESCE_WAIT).await.err();
    bar.set_message("waiting for the e-mails");
    let (delays, mails, duplicate_emails) = match &mail {
        None => {
            let delays = wait_for_mail(&mail_dir, load_began, expected).await?;
            (Some(delays), anomalies::mails(&mail_dir)?, 0)
        }
        Some(server) => {
            let (mails, duplicates) = wait_for_received(server, load_began, expected).await;
            (None, mails, duplicates)
        }
    };
    bar.set_message("counting anomalies at rest");
    let mut anomalies = anomalies::count(&cluster, &names, &mails).await?;
    anomalies.duplicate_emails = duplicate_emails;
    if let Some(reads) = &reads {
        anomalies.torn_reads = reads.torn;
    }
    if let Some(board) = &board {
        let at_rest = anomalies::requests_at_rest(&cluster).await?;
        anomalies.dirty_reads = inflight::dirty_reads(&board.seen_valid(), &at_rest);
    }
    bar.set_message("stopping the cluster");
    cluster.shutdown().await?;
    drop(mail);

    let data_dirs: Vec<_> = Service::ALL.iter().map(|&s| cluster.data_dir(s)).collect();
    let mut disk = 0;
    for dir in &data_dirs {
        disk += measure::disk_bytes(dir)?;
    }
    let mail_bytes = measure::disk_bytes(&mail_dir)?;
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
            mail_bytes,
            committed_total,
        },
    );
    run.mail_delay = delays.map(|d| mail_delay::summarize(d, expected));
    run.strategy = strategy.as_str().into();
    run.faults = faults.as_str().into();
    run.log = log.as_str().into();
    run.anomalies = Some(anomalies);
    run.reads = reads;
    run.fault_events = fault_events;
    run.not_quiet = not_quiet;
    Ok(run)
}

/// The delays of the load's e-mails, once all `expected` are written, or once none has come for
/// `MAIL_STALL` (the outbox has nothing left to send, or cannot send it).
async fn wait_for_mail(dir: &Path, since_ms: u64, expected: u64) -> std::io::Result<Vec<u64>> {
    let mut progress = Progress::new();
    loop {
        let delays = mail_delay::delays_ms(dir, since_ms)?;
        if delays.len() as u64 >= expected || progress.stalled(delays.len()) {
            return Ok(delays);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the mail server received, once it has the `expected` e-mails of changes begun since
/// `since_ms`, or once none has come for `MAIL_STALL`: the distinct messages and the duplicates.
/// After the mail server was down the outbox has a backlog to send, which may take a while.
async fn wait_for_received(
    server: &MailServer,
    since_ms: u64,
    expected: u64,
) -> (Vec<(String, String)>, u64) {
    let mut progress = Progress::new();
    loop {
        let (mails, duplicates) = anomalies::received(&server.mails());
        let of_load = mails
            .iter()
            .filter(|(txn, _)| TxnId::parse(txn).is_ok_and(|t| t.created_ms() >= since_ms))
            .count() as u64;
        if of_load >= expected || progress.stalled(mails.len()) {
            return (mails, duplicates);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether a count stopped growing: no growth for `MAIL_STALL`, or `MAIL_WAIT` in all.
struct Progress {
    began: tokio::time::Instant,
    last: usize,
    since: tokio::time::Instant,
}

impl Progress {
    fn new() -> Self {
        let now = tokio::time::Instant::now();
        Self {
            began: now,
            last: 0,
            since: now,
        }
    }

    fn stalled(&mut self, count: usize) -> bool {
        let now = tokio::time::Instant::now();
        if count > self.last {
            self.last = count;
            self.since = now;
        }
        now - self.since >= MAIL_STALL || now - self.began >= MAIL_WAIT
    }
}

/// How long a run waits for the cluster to go quiet before counting anomalies (after faults, in-doubt
/// participants ask the coordinator and compensations are resent with a backoff of up to 2 s).
const QUIESCE_WAIT: Duration = Duration::from_secs(30);

/// How long a run waits after the load for the outbox to send the last e-mails, at most…
const MAIL_WAIT: Duration = Duration::from_secs(180);

/// …and how long without a new one before it stops waiting.
const MAIL_STALL: Duration = Duration::from_secs(10);

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
        log: "sled".into(),
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
        reads: None,
        fault_events: Vec::new(),
        per_second: outcome.recorded.per_second,
        not_quiet: None,
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
                per_second: vec![100; 15],
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
