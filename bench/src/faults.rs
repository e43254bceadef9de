//! The benchmark's faults: a schedule drawn from a fixed seed, the same for every strategy, of
//! participant crashes (`kill -9`, then a restart), partitions between the coordinator and a
//! participant, and the mail server going down; and the task that plays it against a cluster during
//! the measured period, recording when each fault really began and ended.
//!
//! The schedule is pure (a function of the mode, the seed and the measured time) so that every
//! strategy meets the same faults at the same moments and a test can pin it down.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tpc_harness::{Cluster, MailServer, Service};

use crate::measure;

/// The seed of every run's schedule: fixed, so that every strategy meets the same faults.
pub const SEED: u64 = 0x7bc_fa17;

/// Which faults a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FaultMode {
    /// A plain throughput run: direct links, e-mail as files.
    #[default]
    None,
    /// Each participant is killed (`kill -9`) and restarted once.
    Crash,
    /// The coordinator is cut off from each participant once, both ways.
    Partition,
    /// Both of those, and the mail server is down for a while.
    All,
}

impl FaultMode {
    pub const ALL: [FaultMode; 4] = [
        FaultMode::None,
        FaultMode::Crash,
        FaultMode::Partition,
        FaultMode::All,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultMode::None => "none",
            FaultMode::Crash => "crash",
            FaultMode::Partition => "partition",
            FaultMode::All => "all",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// The faults of this mode, before the seed orders and places them.
    fn kinds(self) -> Vec<FaultKind> {
        let crashes = [
            FaultKind::Crash(Participant::Password),
            FaultKind::Crash(Participant::History),
        ];
        let partitions = [
            FaultKind::Partition(Participant::Password),
            FaultKind::Partition(Participant::History),
        ];
        match self {
            FaultMode::None => Vec::new(),
            FaultMode::Crash => crashes.to_vec(),
            FaultMode::Partition => partitions.to_vec(),
            FaultMode::All => [crashes, partitions].concat(),
        }
    }
}

impl std::fmt::Display for FaultMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A participant, the target of a crash or of a partition from the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Participant {
    Password,
    History,
}

impl Participant {
    pub fn service(self) -> Service {
        match self {
            Participant::Password => Service::Password,
            Participant::History => Service::History,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// `kill -9`, restarted when the fault ends.
    Crash(Participant),
    /// No byte between the coordinator and the participant, either way, until healed.
    Partition(Participant),
    /// The SMTP server refuses connections until it resumes.
    SmtpDown,
}

impl FaultKind {
    /// "crash password", "partition coordinator-history", "smtp down".
    pub fn describe(self) -> String {
        match self {
            FaultKind::Crash(p) => format!("crash {}", p.service().name()),
            FaultKind::Partition(p) => format!("partition coordinator-{}", p.service().name()),
            FaultKind::SmtpDown => "smtp down".into(),
        }
    }
}

/// A fault as scheduled: from `at` into the measured period, for `length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub kind: FaultKind,
    pub at: Duration,
    pub length: Duration,
}

/// How long a crashed participant stays down, a partition lasts, and the mail server is away, when
/// the measured period leaves room for it.
const CRASH_DOWN: Duration = Duration::from_secs(2);
const PARTITION_LENGTH: Duration = Duration::from_secs(3);
/// The mail server is down for this fraction of the measured period.
const SMTP_DOWN_FRACTION: f64 = 0.3;

/// The faults of `mode` for a measured period of `period`, in the order they begin. Crashes and
/// partitions come one at a time, in an order the seed draws, each in its own slot of the period
/// between 10% and 80% of it (so the cluster has the last fifth to recover under load); the mail
/// server's outage overlaps them. Deterministic: the same arguments give the same schedule.
pub fn schedule(mode: FaultMode, seed: u64, period: Duration) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut kinds = mode.kinds();
    rng.shuffle(&mut kinds);
    let mut plan = Vec::new();
    if !kinds.is_empty() {
        let first = period.mul_f64(0.1);
        let slot = period.mul_f64(0.7) / kinds.len() as u32;
        for (i, kind) in kinds.into_iter().enumerate() {
            let nominal = match kind {
                FaultKind::Crash(_) => CRASH_DOWN,
                _ => PARTITION_LENGTH,
            };
            let length = nominal.min(slot.mul_f64(0.6));
            let jitter = slot.saturating_sub(length).mul_f64(rng.f64() * 0.5);
            plan.push(Planned {
                kind,
                at: first + slot * i as u32 + jitter,
                length,
            });
        }
    }
    if mode == FaultMode::All {
        plan.push(Planned {
            kind: FaultKind::SmtpDown,
            at: period.mul_f64(0.1 + rng.f64() * 0.3),
            length: period.mul_f64(SMTP_DOWN_FRACTION),
        });
    }
    plan.sort_by_key(|p| p.at);
    plan
}

/// A fault as it happened, in seconds into the measured period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// "crash password", "partition coordinator-history", "smtp down".
    pub kind: String,
    pub start_s: f64,
    /// When it was healed: the process restarted and listening, the link flowing, the server accepting.
    pub end_s: f64,
    /// What went wrong injecting or healing it, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The services' processes as they are now: a crash replaces a process, and the CPU a killed process
/// used must still count for its service.
#[derive(Debug, Default)]
pub struct Processes {
    pub pids: Vec<(Service, u32)>,
    /// CPU seconds of processes killed during the run, by service (read just before the kill).
    pub retired_cpu_s: BTreeMap<String, f64>,
}

pub type SharedProcesses = Arc<Mutex<Processes>>;

impl Processes {
    pub fn of(cluster: &Cluster) -> SharedProcesses {
        Arc::new(Mutex::new(Processes {
            pids: Service::ALL
                .iter()
                .filter_map(|&s| Some((s, cluster.pid(s)?)))
                .collect(),
            retired_cpu_s: BTreeMap::new(),
        }))
    }
}

/// Plays `plan` against the cluster: fault `i` begins at `from + plan[i].at` and ends `length` later.
/// Ends with everything healed, whatever the plan, and returns what happened.
pub async fn inject(
    cluster: &mut Cluster,
    mut mail: Option<&mut MailServer>,
    plan: &[Planned],
    from: Instant,
    processes: &SharedProcesses,
) -> Vec<FaultEvent> {
    // Begin and end points in time order; a begin and an end at the same moment: the end first.
    let mut steps: Vec<(Duration, bool, usize)> = plan
        .iter()
        .enumerate()
        .flat_map(|(i, p)| [(p.at, true, i), (p.at + p.length, false, i)])
        .collect();
    steps.sort_by_key(|&(at, begins, i)| (at, begins, i));
    let mut events: Vec<FaultEvent> = plan
        .iter()
        .map(|p| FaultEvent {
            kind: p.kind.describe(),
            start_s: 0.0,
            end_s: 0.0,
            error: None,
        })
        .collect();
    let since = |now: Instant| now.saturating_duration_since(from).as_secs_f64();
    for (at, begins, i) in steps {
        tokio::time::sleep_until((from + at).into()).await;
        let kind = plan[i].kind;
        let result = if begins {
            events[i].start_s = since(Instant::now());
            begin(cluster, mail.as_deref_mut(), kind, processes).await
        } else {
            let result = end(cluster, mail.as_deref_mut(), kind, processes).await;
            events[i].end_s = since(Instant::now());
            result
        };
        if let Err(e) = result {
            events[i].error.get_or_insert(e.to_string());
        }
    }
    // Whatever failed above: every link flowing, the mail server up, every service running.
    cluster.heal();
    if let Some(mail) = mail {
        let _ = mail.resume().await;
    }
    for service in Service::ALL {
        if !cluster.is_running(service) {
            let _ = restart(cluster, service, processes).await;
        }
    }
    events
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn begin(
    cluster: &mut Cluster,
    mail: Option<&mut MailServer>,
    kind: FaultKind,
    processes: &SharedProcesses,
) -> Result<(), BoxError> {
    match kind {
        FaultKind::Crash(p) => {
            let service = p.service();
            if let Some(pid) = cluster.pid(service)
                && let Some(cpu) = measure::cpu_seconds(Some(pid))
            {
                let mut procs = processes.lock().unwrap_or_else(|p| p.into_inner());
                *procs
                    .retired_cpu_s
                    .entry(service.name().to_owned())
                    .or_default() += cpu;
                procs.pids.retain(|&(s, _)| s != service);
            }
            cluster.kill(service).await
        }
        FaultKind::Partition(p) => {
            cluster.partition(Service::Coordinator, p.service());
            Ok(())
        }
        FaultKind::SmtpDown => {
            if let Some(mail) = mail {
                mail.stop();
            }
            Ok(())
        }
    }
}

async fn end(
    cluster: &mut Cluster,
    mail: Option<&mut MailServer>,
    kind: FaultKind,
    processes: &SharedProcesses,
) -> Result<(), BoxError> {
    match kind {
        FaultKind::Crash(p) => restart(cluster, p.service(), processes).await,
        FaultKind::Partition(_) => {
            // Only one partition at a time is ever scheduled, so healing every link heals this one.
            cluster.heal();
            Ok(())
        }
        FaultKind::SmtpDown => {
            if let Some(mail) = mail {
                mail.resume().await?;
            }
            Ok(())
        }
    }
}

/// Starts `service` again (a few attempts: its port may linger a moment) and records its new pid.
async fn restart(
    cluster: &mut Cluster,
    service: Service,
    processes: &SharedProcesses,
) -> Result<(), BoxError> {
    let mut last = None;
    for _ in 0..3 {
        match cluster.start_service(service).await {
            Ok(()) => {
                if let Some(pid) = cluster.pid(service) {
                    let mut procs = processes.lock().unwrap_or_else(|p| p.into_inner());
                    procs.pids.retain(|&(s, _)| s != service);
                    procs.pids.push((service, pid));
                }
                return Ok(());
            }
            Err(e) => {
                // A process that failed to start may still be recorded as running.
                let _ = cluster.kill(service).await;
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| "restart failed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_the_same_for_the_same_seed() {
        let period = Duration::from_secs(20);
        let a = schedule(FaultMode::All, SEED, period);
        assert_eq!(a, schedule(FaultMode::All, SEED, period));
        assert_ne!(a, schedule(FaultMode::All, SEED + 1, period));
        assert!(schedule(FaultMode::None, SEED, period).is_empty());
    }

    #[test]
    fn each_mode_has_its_faults_inside_the_period() {
        let period = Duration::from_secs(20);
        let kinds = |mode| -> Vec<String> {
            let mut k: Vec<String> = schedule(mode, SEED, period)
                .iter()
                .map(|p| p.kind.describe())
                .collect();
            k.sort();
            k
        };
        assert_eq!(kinds(FaultMode::Crash), ["crash history", "crash password"]);
        assert_eq!(
            kinds(FaultMode::Partition),
            [
                "partition coordinator-history",
                "partition coordinator-password"
            ]
        );
        assert_eq!(kinds(FaultMode::All).len(), 5);
        for mode in FaultMode::ALL {
            let plan = schedule(mode, SEED, period);
            assert!(plan.windows(2).all(|w| w[0].at <= w[1].at), "{plan:?}");
            for p in &plan {
                assert!(p.at >= period.mul_f64(0.1), "{p:?}");
                assert!(p.at + p.length <= period.mul_f64(0.8) + Duration::from_millis(1));
                assert!(!p.length.is_zero());
            }
        }
    }

    #[test]
    fn crashes_and_partitions_never_overlap() {
        for seed in 0..50 {
            for period in [3, 20, 60].map(Duration::from_secs) {
                let plan: Vec<Planned> = schedule(FaultMode::All, seed, period)
                    .into_iter()
                    .filter(|p| p.kind != FaultKind::SmtpDown)
                    .collect();
                for w in plan.windows(2) {
                    assert!(w[0].at + w[0].length <= w[1].at, "{seed}: {plan:?}");
                }
            }
        }
    }

    #[test]
    fn modes_read_and_print_the_same() {
        for mode in FaultMode::ALL {
            assert_eq!(FaultMode::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(FaultMode::parse("everything"), None);
    }
}
