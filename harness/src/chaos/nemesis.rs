//! The nemesis: a seed-driven schedule of faults against a running cluster: `kill -9`, crashes at fail
//! points, partitions (both ways and one way), latency, dropped connections, paused processes, and the
//! mail server going down. After every restart it measures how long the restarted process (or, for
//! the coordinator, the participants) stayed in doubt.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tpc_common::Strategy;

use tokio::sync::Mutex;
use tpc_common::fault::FAIL_POINTS;

use super::workload::Workload;
use crate::etcd::EtcdCluster;
use crate::{Cluster, LinkFaults, MailServer, Service};

/// What the nemesis did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct FaultLog {
    /// Faults injected, by kind.
    pub injected: BTreeMap<&'static str, usize>,
    /// Processes that died abruptly (`kill -9` or a crash at a fail point).
    pub kills: usize,
    /// Restart → every transaction that was in doubt at the restart resolved, in milliseconds.
    pub recovery_ms: Vec<u64>,
}

impl FaultLog {
    fn count(&mut self, kind: &'static str) {
        *self.injected.entry(kind).or_default() += 1;
    }
}

const PARTICIPANTS: [Service; 2] = [Service::Password, Service::History];

pub struct Nemesis {
    pub cluster: Arc<Mutex<Cluster>>,
    pub mail: Arc<Mutex<MailServer>>,
    pub work: Arc<Workload>,
    pub rng: fastrand::Rng,
    pub log: FaultLog,
    /// Which fail points exist depends on the strategy the coordinator runs.
    pub strategy: Strategy,
    /// The etcd cluster the coordinator's log is on, if it is.
    pub etcd: Option<Arc<Mutex<EtcdCluster>>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Nemesis {
    /// Injects faults until the workload stops.
    pub async fn run(&mut self, on_fault: impl Fn(&FaultLog)) -> Result<(), BoxError> {
        while !self.work.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(self.rng.u64(150..600))).await;
            if self.work.stop.load(Ordering::Relaxed) {
                break;
            }
            if self.etcd.is_some() && self.rng.u32(0..100) < 15 {
                self.etcd_member_outage().await?;
                on_fault(&self.log);
                continue;
            }
            if self.etcd.is_some() && self.rng.u32(0..100) < 10 {
                self.etcd_member_cut_off().await?;
                on_fault(&self.log);
                continue;
            }
            match self.rng.u32(0..100) {
                0..45 => self.kill().await?,
                45..60 => self.crash_at_fail_point().await?,
                60..70 => self.partition(false).await,
                70..76 => self.partition(true).await,
                76..82 => self.latency().await,
                82..88 => self.drop_connections().await,
                88..94 => self.pause().await?,
                _ => self.mail_outage().await?,
            }
            on_fault(&self.log);
        }
        Ok(())
    }

    fn any_service(&mut self) -> Service {
        Service::ALL[self.rng.usize(..3)]
    }

    fn any_participant(&mut self) -> Service {
        PARTICIPANTS[self.rng.usize(..2)]
    }

    async fn kill(&mut self) -> Result<(), BoxError> {
        let service = self.any_service();
        self.cluster.lock().await.kill(service).await?;
        self.log.count("kill -9");
        self.log.kills += 1;
        tokio::time::sleep(Duration::from_millis(self.rng.u64(50..500))).await;
        self.restart(service).await
    }

    /// Restarts a process with one fail point armed to crash once, waits for a transaction to hit it.
    async fn crash_at_fail_point(&mut self) -> Result<(), BoxError> {
        let service = self.any_service();
        let prefix = match (service, self.strategy) {
            (Service::Coordinator, Strategy::TwoPc) => ["coord.", "outbox."],
            (Service::Coordinator, Strategy::Saga) => ["saga.", "outbox."],
            (Service::Coordinator, Strategy::Events) => ["outbox.", "outbox."],
            (_, Strategy::TwoPc) => ["part.", "part."],
            // The participants' fail points are in two-phase commit's steps only.
            (_, Strategy::Saga | Strategy::Events) => return self.kill().await,
        };
        let points: Vec<&str> = FAIL_POINTS
            .iter()
            .map(|(name, ..)| *name)
            .filter(|name| prefix.iter().any(|p| name.starts_with(p)))
            .collect();
        let point = points[self.rng.usize(..points.len())];
        let spec = format!("{point}=1*crash");
        let mut cluster = self.cluster.lock().await;
        cluster.kill(service).await?;
        // Recovery itself may reach the step and crash the process while it starts: that counts too.
        let _ = cluster.start_with_fail_points(service, &spec).await;
        self.log.count("fail point crash (armed)");
        match cluster.wait_exit(service, Duration::from_secs(3)).await {
            Ok(_) => {
                self.log.count("fail point crash (hit)");
                self.log.kills += 1;
            }
            // No transaction reached that step in time: stop it the hard way.
            Err(_) => {
                cluster.kill(service).await?;
                self.log.kills += 1;
            }
        }
        drop(cluster);
        self.restart(service).await
    }

    /// Restarts `service` and measures how long what was in doubt at that moment stays in doubt.
    async fn restart(&mut self, service: Service) -> Result<(), BoxError> {
        let mut cluster = self.cluster.lock().await;
        cluster.start_service(service).await?;
        let restarted = Instant::now();
        let watched: Vec<Service> = if service == Service::Coordinator {
            PARTICIPANTS.to_vec()
        } else {
            vec![service]
        };
        let mut waiting: HashSet<(Service, String)> = HashSet::new();
        for p in &watched {
            for txn in in_doubt(&cluster, *p).await.unwrap_or_default() {
                waiting.insert((*p, txn));
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        let deadline = restarted + Duration::from_secs(10);
        while Instant::now() < deadline {
            let mut still = HashSet::new();
            for p in &watched {
                for txn in in_doubt(&cluster, *p).await.unwrap_or_default() {
                    still.insert((*p, txn));
                }
            }
            waiting.retain(|w| still.contains(w));
            if waiting.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.log
            .recovery_ms
            .push(restarted.elapsed().as_millis() as u64);
        drop(cluster);
        Ok(())
    }

    async fn partition(&mut self, one_way: bool) {
        let participant = self.any_participant();
        let hold = Duration::from_millis(self.rng.u64(200..1500));
        let cluster = self.cluster.lock().await;
        if one_way {
            let (from, to) = if self.rng.bool() {
                (Service::Coordinator, participant)
            } else {
                (participant, Service::Coordinator)
            };
            cluster.partition_one_way(from, to);
            self.log.count("one-way partition");
        } else {
            cluster.partition(Service::Coordinator, participant);
            self.log.count("partition");
        }
        drop(cluster);
        tokio::time::sleep(hold).await;
        self.cluster.lock().await.heal();
    }

    async fn latency(&mut self) {
        let latency = Duration::from_millis(self.rng.u64(20..200));
        let hold = Duration::from_millis(self.rng.u64(300..1500));
        let cluster = self.cluster.lock().await;
        for (from, to) in crate::LINKS {
            cluster.link(from, to).set(LinkFaults {
                latency,
                ..LinkFaults::default()
            });
        }
        drop(cluster);
        self.log.count("latency");
        tokio::time::sleep(hold).await;
        self.cluster.lock().await.heal();
    }

    async fn drop_connections(&mut self) {
        let (from, to) = crate::LINKS[self.rng.usize(..4)];
        self.cluster.lock().await.link(from, to).drop_connections();
        self.log.count("dropped connections");
    }

    async fn pause(&mut self) -> Result<(), BoxError> {
        let service = self.any_service();
        let hold = Duration::from_millis(self.rng.u64(200..1000));
        self.cluster.lock().await.pause(service)?;
        self.log.count("pause (SIGSTOP)");
        tokio::time::sleep(hold).await;
        self.cluster.lock().await.resume(service)?;
        Ok(())
    }

    /// `kill -9` of one etcd member, started again a moment later: etcd keeps its quorum.
    async fn etcd_member_outage(&mut self) -> Result<(), BoxError> {
        let Some(etcd) = self.etcd.clone() else {
            return Ok(());
        };
        let member = self.rng.usize(..3);
        let hold = Duration::from_millis(self.rng.u64(300..1500));
        etcd.lock().await.kill(member).await?;
        self.log.count("etcd member kill -9");
        tokio::time::sleep(hold).await;
        etcd.lock().await.restart(member)?;
        Ok(())
    }

    /// One etcd member frozen (SIGSTOP) for a while: cut off from the others and from every client,
    /// as a partition would, without a proxy on etcd's links.
    async fn etcd_member_cut_off(&mut self) -> Result<(), BoxError> {
        let Some(etcd) = self.etcd.clone() else {
            return Ok(());
        };
        let member = self.rng.usize(..3);
        let hold = Duration::from_millis(self.rng.u64(300..2500));
        etcd.lock().await.pause(member)?;
        self.log.count("etcd member cut off (SIGSTOP)");
        tokio::time::sleep(hold).await;
        etcd.lock().await.resume(member)?;
        Ok(())
    }

    async fn mail_outage(&mut self) -> Result<(), BoxError> {
        let hold = Duration::from_millis(self.rng.u64(300..1500));
        self.mail.lock().await.stop();
        self.log.count("SMTP server down");
        tokio::time::sleep(hold).await;
        self.mail.lock().await.resume().await?;
        Ok(())
    }
}

/// The in-doubt transactions of a participant, via its Status RPC.
async fn in_doubt(cluster: &Cluster, participant: Service) -> Result<Vec<String>, BoxError> {
    Ok(cluster.participant_status(participant).await?.in_doubt)
}
