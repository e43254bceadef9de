//! `tpc chaos`: real processes under a random, seed-driven schedule of faults while clients register,
//! change passwords and read; then heal, wait for quiescence, check every invariant.
//!
//! - `workload`: the clients and the history they record;
//! - `nemesis`: the faults, and the recovery times after restarts;
//! - `observe`: quiescence, the final state, the plaintext scan.

mod nemesis;
pub mod observe;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Mutex;
use tonic::transport::Channel;
use tpc_common::Strategy;

use super::checker::{self, Violation};
use super::etcd::EtcdCluster;
use super::history::Completion;
use super::{Cluster, ClusterOptions, MailServer, Service};
pub use nemesis::FaultLog;
use nemesis::Nemesis;
use tpc_participants::history::DEFAULT_DEPTH;
use workload::{Endpoints, Workload};

/// More changes per user than any chaos run makes, so the history participant lists them all.
const CHECKED_HISTORY: usize = 1_000_000;

#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// The `tpc` binary to run as coordinator and participants.
    pub exe: PathBuf,
    pub duration: Duration,
    pub seed: u64,
    pub clients: usize,
    pub users: usize,
    /// Where the cluster's data, logs, the history and the report go.
    pub out: PathBuf,
    /// Draw a progress bar on stderr (only where it is a terminal).
    pub progress: bool,
    /// The coordinator's strategy. Two-phase commit must keep every invariant; a saga and events are
    /// judged on what they allow (`checker::allowed`), and their anomalies counted.
    pub strategy: Strategy,
    /// The coordinator's decision log on a 3-member etcd cluster (`--log etcd`, a `tpc` built with
    /// `--features etcd`), whose members the nemesis kills too.
    pub etcd: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub strategy: Strategy,
    /// Where the coordinator's decision log lived: "sled" or "etcd".
    pub log: &'static str,
    pub duration_s: f64,
    pub faults: FaultLog,
    /// Operations by outcome (`ok`, `fail`, `info`, `read`, `read failed`).
    pub operations: BTreeMap<&'static str, usize>,
    pub committed: usize,
    pub aborted: usize,
    /// Why transactions aborted, by reason.
    pub abort_reasons: BTreeMap<String, usize>,
    /// E-mails received more than once (same Message-ID; allowed: delivery is at least once).
    pub duplicate_mails: usize,
    pub quiescence_ms: u64,
    /// What was still in flight when the wait for quiescence gave up (the checker then reports it).
    pub unquiet: Option<String>,
    pub violations: Vec<Violation>,
    /// What the strategy allows, counted by kind (always empty for two-phase commit).
    pub anomalies: BTreeMap<&'static str, usize>,
    /// A few of each kind, with the operations of `history.jsonl` involved.
    pub anomaly_examples: Vec<Violation>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub async fn run(config: ChaosConfig) -> Result<Report, BoxError> {
    crate::fresh_output_dir(&config.out)?;
    let started = Instant::now();
    let mail = MailServer::start().await?;
    let etcd = match config.etcd {
        true => Some(EtcdCluster::start(&config.out.join("etcd"), 3).await?),
        false => None,
    };
    let cluster = Cluster::start(ClusterOptions {
        exe: config.exe.clone(),
        dir: config.out.join("cluster"),
        smtp: Some(mail.url()),
        rust_log: Some("info".into()),
        // The checker follows each user's chain of passwords from the registration on.
        history_keep: Some(CHECKED_HISTORY),
        strategy: config.strategy,
        etcd: etcd.as_ref().map(EtcdCluster::endpoints),
        ..ClusterOptions::default()
    })
    .await?;
    let etcd = etcd.map(|etcd| Arc::new(Mutex::new(etcd)));
    let endpoints = Endpoints {
        coordinator: channel(&cluster, Service::Coordinator)?,
        password: channel(&cluster, Service::Password)?,
        history: channel(&cluster, Service::History)?,
    };
    let cluster = Arc::new(Mutex::new(cluster));
    let mail = Arc::new(Mutex::new(mail));
    let work = Arc::new(Workload::new(config.seed, config.users));

    let clients: Vec<_> = (0..config.clients)
        .map(|id| tokio::spawn(workload::client(id, work.clone(), endpoints.clone())))
        .collect();
    let mut nemesis = Nemesis {
        cluster: cluster.clone(),
        mail: mail.clone(),
        work: work.clone(),
        rng: fastrand::Rng::with_seed(config.seed),
        log: FaultLog::default(),
        strategy: config.strategy,
        etcd: etcd.clone(),
    };
    let bar = progress_bar(&config);
    let stopper = {
        let (work, bar) = (work.clone(), bar.clone());
        let duration = config.duration;
        tokio::spawn(async move {
            let begun = Instant::now();
            while begun.elapsed() < duration {
                tokio::time::sleep(Duration::from_millis(250)).await;
                bar.set_position(begun.elapsed().as_secs().min(duration.as_secs()));
                bar.set_message(format!("{} operations", work.history.snapshot().len()));
            }
            work.stop.store(true, Ordering::Relaxed);
        })
    };
    nemesis
        .run(|log| {
            bar.set_prefix(format!(
                "{} faults, {} kills",
                log.injected.values().sum::<usize>(),
                log.kills
            ))
        })
        .await?;
    stopper.await?;
    for client in clients {
        client.await?;
    }
    bar.finish_and_clear();
    let faults = std::mem::take(&mut nemesis.log);
    drop(nemesis);

    // Heal everything, then wait for the cluster to finish what the faults interrupted.
    let mut cluster = Arc::try_unwrap(cluster)
        .map_err(|_| "cluster still shared")?
        .into_inner();
    let mut mail = Arc::try_unwrap(mail)
        .map_err(|_| "mail server still shared")?
        .into_inner();
    cluster.heal();
    mail.resume().await?;
    if let Some(etcd) = &etcd {
        etcd.lock().await.restart_stopped()?;
    }
    for service in Service::ALL {
        if cluster.is_running(service) {
            cluster.resume(service)?;
        } else {
            cluster.start_service(service).await?;
        }
    }
    let (quiescence, unquiet) = observe::quiesce(&cluster, &mail, Duration::from_secs(30)).await;
    work.history
        .write_jsonl(&config.out.join("history.jsonl"))?;

    // Durable means it survives a crash: kill every process once more before looking (etcd's
    // members too, all at once).
    for service in Service::ALL {
        cluster.kill(service).await?;
    }
    if let Some(etcd) = &etcd {
        let mut etcd = etcd.lock().await;
        etcd.kill_all().await?;
        etcd.restart_stopped()?;
        etcd.wait_healthy(Duration::from_secs(20)).await?;
    }
    for service in Service::ALL {
        cluster.start_service(service).await?;
    }
    let _ = cluster.quiesce(Duration::from_secs(10)).await;
    let mut observed = observe::observe(&cluster, &mail, &work.users, DEFAULT_DEPTH).await?;
    observed.ops = work.history.snapshot();
    cluster.shutdown().await?;
    observed.plaintext = observe::find_plaintext(&config.out, &mail, &work.passwords.all())?;
    let verdict = checker::judge(&observed, config.strategy);

    let mut operations: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut abort_reasons: BTreeMap<String, usize> = BTreeMap::new();
    for op in &observed.ops {
        let kind = match &op.completion {
            Some(Completion::Ok { .. }) => "ok (committed)",
            Some(Completion::Fail { reason, .. }) => {
                *abort_reasons.entry(reason.clone()).or_default() += 1;
                "fail (aborted)"
            }
            Some(Completion::Info { .. }) => "info (unknown)",
            Some(Completion::Read { .. }) => "read",
            Some(Completion::ReadFailed { .. }) => "read failed",
            None => "never completed",
        };
        *operations.entry(kind).or_default() += 1;
    }
    let committed = observed
        .transactions
        .iter()
        .filter(|t| t.state == checker::TxnState::Committed)
        .count();
    let aborted = observed
        .transactions
        .iter()
        .filter(|t| t.state == checker::TxnState::Aborted)
        .count();
    let distinct: std::collections::HashSet<&String> = observed.mail_ids.iter().collect();
    let report = Report {
        seed: config.seed,
        strategy: config.strategy,
        log: if config.etcd { "etcd" } else { "sled" },
        duration_s: started.elapsed().as_secs_f64(),
        faults,
        operations,
        committed,
        aborted,
        abort_reasons,
        duplicate_mails: observed.mail_ids.len() - distinct.len(),
        quiescence_ms: quiescence.as_millis() as u64,
        unquiet,
        violations: verdict.violations,
        anomalies: verdict.anomalies,
        anomaly_examples: verdict.examples,
    };
    std::fs::write(
        config.out.join("report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    Ok(report)
}

fn channel(cluster: &Cluster, service: Service) -> Result<Channel, BoxError> {
    Ok(Channel::from_shared(cluster.url(service))?
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy())
}

fn progress_bar(config: &ChaosConfig) -> indicatif::ProgressBar {
    if !config.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(config.duration.as_secs());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} chaos [{bar:30}] {pos}/{len}s  {prefix}  {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

impl Report {
    /// The table `tpc chaos` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!(
            "tpc chaos: {}{}, seed {}, {:.0} s",
            self.strategy,
            if self.log == "sled" { "" } else { " on etcd" },
            self.seed,
            self.duration_s
        ));
        line(String::new());
        line("faults injected".into());
        for (kind, n) in &self.faults.injected {
            line(format!("  {kind:<28} {n:>6}"));
        }
        line(format!(
            "  {:<28} {:>6}",
            "processes killed (total)", self.faults.kills
        ));
        line(String::new());
        line("operations".into());
        for (kind, n) in &self.operations {
            line(format!("  {kind:<28} {n:>6}"));
        }
        line(format!(
            "  {:<28} {:>6}",
            "transactions committed", self.committed
        ));
        line(format!(
            "  {:<28} {:>6}",
            "transactions aborted", self.aborted
        ));
        for (reason, n) in &self.abort_reasons {
            line(format!("    {reason:<40} {n:>6}"));
        }
        line(format!(
            "  {:<28} {:>6}",
            "duplicate e-mails (same id)", self.duplicate_mails
        ));
        line(String::new());
        let mut rec = self.faults.recovery_ms.clone();
        rec.sort_unstable();
        if rec.is_empty() {
            line(
                "recovery (restart → in-doubt cleared): no restart found anything in doubt".into(),
            );
        } else {
            let pct = |p: f64| rec[((rec.len() - 1) as f64 * p).round() as usize];
            line(format!(
                "recovery (restart → in-doubt cleared), {} restarts with transactions in doubt: median {} ms, p90 {} ms, max {} ms",
                rec.len(),
                pct(0.5),
                pct(0.9),
                rec[rec.len() - 1]
            ));
        }
        line(format!(
            "quiescence after healing: {} ms",
            self.quiescence_ms
        ));
        if let Some(what) = &self.unquiet {
            line(format!("  gave up waiting; still in flight: {what}"));
        }
        line(String::new());
        if self.strategy != Strategy::TwoPc {
            let allowed = checker::allowed(self.strategy);
            line(format!(
                "anomalies {} allows (counted, not violations): {}",
                self.strategy,
                allowed
                    .iter()
                    .map(|k| format!("{k} {}", self.anomalies.get(k).unwrap_or(&0)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.violations.is_empty() {
            line("violations: none".into());
        } else {
            line(format!("violations: {}", self.violations.len()));
            for v in &self.violations {
                line(format!(
                    "  [{}] {} (operations {:?})",
                    v.invariant, v.detail, v.ops
                ));
            }
        }
        out
    }
}
