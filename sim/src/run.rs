//! One seeded simulation run: clients change passwords while a seeded schedule partitions links, delays
//! them and crashes hosts (each crash keeping only what its disk had forced, and a random part of the
//! rest); then everything heals, the cluster goes quiet, and the chaos run's checker judges the history
//! and the final state.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::Channel;
use tpc_harness::Inbox;
use tpc_harness::chaos::observe::{coordinator_txn, final_users, leaks, password_set};
use tpc_harness::chaos::workload::{self, Endpoints, Workload};
use tpc_harness::checker::{self, Observed, ParticipantState, Violation};
use tpc_proto::v1::history_reader_client::HistoryReaderClient;
use tpc_proto::v1::participant_client::ParticipantClient;
use tpc_proto::v1::password_reader_client::PasswordReaderClient;
use tpc_proto::v1::transaction_manager_client::TransactionManagerClient;
use tpc_proto::v1::{ListTransactionsRequest, StatusRequest};

use crate::cluster::{self, COORDINATOR, HISTORY, MAIL, PASSWORD};
use crate::disks::Disks;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub clients: usize,
    pub users: usize,
    /// How long (simulated) faults are injected while the clients work.
    pub faults_for: Duration,
    pub engines: cluster::Engines,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            clients: 3,
            users: 4,
            faults_for: Duration::from_secs(10),
            engines: cluster::Engines::default(),
        }
    }
}

#[derive(Debug)]
pub struct SimReport {
    pub seed: u64,
    /// The faults injected, with when (simulated time).
    pub faults: Vec<String>,
    pub operations: usize,
    pub committed: usize,
    pub violations: Vec<Violation>,
    /// Everything the run did and saw, one line each (faults, operations and their outcomes, the
    /// final transactions): the same seed gives the same log, byte for byte.
    pub log: String,
}

const HOSTS: [&str; 4] = [COORDINATOR, PASSWORD, HISTORY, MAIL];

/// A fault to undo later.
enum Undo {
    Repair(&'static str, &'static str),
    Restart(&'static str),
    Latency(&'static str, &'static str),
    /// The link stops losing messages.
    Lossless(&'static str, &'static str),
    /// The host's disk works again (if the host did not crash on it first).
    Heal(&'static str),
}

/// Runs seed `config.seed` and returns what the checker found.
pub fn run(config: &SimConfig) -> Result<SimReport, Box<dyn std::error::Error>> {
    let _simulated = crate::simulation::enter(config.seed);
    let data = tempfile::tempdir()?;
    let disks = Disks::default();
    let mail = Inbox::default();
    let mut sim = turmoil::Builder::new()
        .rng_seed(config.seed)
        .simulation_duration(config.faults_for + Duration::from_secs(300))
        .max_message_latency(Duration::from_millis(20))
        // A link told to lose messages (`set_link_fail_rate`) loses a few in a row, then works again.
        .repair_rate(0.3)
        .build();
    cluster::add_services(&mut sim, data.path(), &disks, &config.engines, &mail);

    let work = Arc::new(Workload::new(config.seed, config.users));
    for id in 0..config.clients {
        let work = work.clone();
        sim.client(format!("client{id}"), async move {
            let endpoints = Endpoints {
                coordinator: cluster::public_channel(COORDINATOR),
                password: cluster::public_channel(PASSWORD),
                history: cluster::public_channel(HISTORY),
            };
            workload::client(id, work, endpoints).await;
            Ok(())
        });
    }

    let mut rng = fastrand::Rng::with_seed(config.seed ^ 0xfa17);
    let mut faults = Vec::new();
    let mut undo: Vec<(Duration, Undo)> = Vec::new();
    let mut next = Duration::from_millis(rng.u64(300..1500));
    // The host whose disk is failing, if one is: a service that stops itself on a failed write
    // (`tpc_common::simulation::abort`) is that host.
    let mut broken: Option<&'static str> = None;
    while sim.elapsed() < config.faults_for {
        sim.step()?;
        let now = sim.elapsed();
        if tpc_common::simulation::take_aborts() > 0 {
            let host = broken
                .take()
                .ok_or("a service stopped itself, and no disk was failing")?;
            let survivors = rng.usize(..=disks.unflushed(host));
            disks.crash(host, survivors);
            sim.crash(host);
            let lasting = Duration::from_millis(rng.u64(200..3000));
            faults.push(format!(
                "{now:?}: {host} stopped itself on its failing disk (keeping {survivors} unforced batch(es)), restart after {lasting:?}"
            ));
            undo.push((now + lasting, Undo::Restart(host)));
        }
        let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut undo)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        undo = later;
        for (_, u) in ready {
            if let Undo::Heal(host) = u {
                if broken == Some(host) {
                    disks.heal(host);
                    broken = None;
                    faults.push(format!("{now:?}: {host}'s disk works again"));
                }
                continue;
            }
            apply_undo(&mut sim, u, &mut faults, now);
        }
        if now < next {
            continue;
        }
        next = now + Duration::from_millis(rng.u64(300..1500));
        let a = HOSTS[rng.usize(..HOSTS.len())];
        let b = HOSTS
            .into_iter()
            .filter(|h| *h != a)
            .nth(rng.usize(..HOSTS.len() - 1))
            .unwrap_or(a);
        let lasting = Duration::from_millis(rng.u64(200..3000));
        match rng.u8(..6) {
            0 => {
                sim.partition(a, b);
                faults.push(format!("{now:?}: partition {a} <-> {b} for {lasting:?}"));
                undo.push((now + lasting, Undo::Repair(a, b)));
            }
            1 => {
                sim.partition_oneway(a, b);
                faults.push(format!("{now:?}: partition {a} -> {b} for {lasting:?}"));
                undo.push((now + lasting, Undo::Repair(a, b)));
            }
            2 if sim.is_host_running(a) => {
                let survivors = rng.usize(..=disks.unflushed(a));
                disks.crash(a, survivors);
                sim.crash(a);
                faults.push(format!(
                    "{now:?}: kill -9 {a} (keeping {survivors} unforced batch(es)), restart after {lasting:?}"
                ));
                undo.push((now + lasting, Undo::Restart(a)));
            }
            3 if a != MAIL && broken.is_none() && sim.is_host_running(a) => {
                let writes = rng.bool();
                disks.break_down(a, writes);
                broken = Some(a);
                faults.push(format!(
                    "{now:?}: {a}'s disk fails every {} for {lasting:?}",
                    if writes { "write" } else { "flush" }
                ));
                undo.push((now + lasting, Undo::Heal(a)));
            }
            4 => {
                let rate = [0.01, 0.05, 0.2][rng.usize(..3)];
                sim.set_link_fail_rate(a, b, rate);
                faults.push(format!(
                    "{now:?}: {a} <-> {b} loses messages (a run starting at {rate} of them) for {lasting:?}"
                ));
                undo.push((now + lasting, Undo::Lossless(a, b)));
            }
            _ => {
                let latency = Duration::from_millis(rng.u64(50..1500));
                sim.set_link_latency(a, b, latency);
                faults.push(format!(
                    "{now:?}: {a} <-> {b} delayed {latency:?} for {lasting:?}"
                ));
                undo.push((now + lasting, Undo::Latency(a, b)));
            }
        }
    }
    // Heal everything, and let the clients finish what they are doing.
    let now = sim.elapsed();
    if let Some(host) = broken.take() {
        disks.heal(host);
    }
    for (_, u) in std::mem::take(&mut undo) {
        apply_undo(&mut sim, u, &mut faults, now);
    }
    for a in HOSTS {
        for b in HOSTS {
            if a != b {
                sim.repair(a, b);
            }
        }
    }
    work.stop.store(true, Ordering::Relaxed);
    // The clients finish what they are doing first: an operation still running when the observer
    // looks would complete after the state it judges was read.
    while !sim.step()? {}
    let observed: Arc<Mutex<Option<Result<Observed, String>>>> = Arc::default();
    {
        let observed = observed.clone();
        let users = work.users.clone();
        let mail = mail.clone();
        sim.client("observer", async move {
            let result = observe(&users, &mail).await.map_err(|e| e.to_string());
            *observed.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
            Ok(())
        });
    }
    sim.run()?;
    if tpc_common::simulation::take_aborts() > 0 {
        return Err("a service stopped itself after every disk was healed".into());
    }

    let mut observed = observed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or("the observer never finished")??;
    observed.ops = work.history.snapshot();
    observed.mail_ids = received(&mail);
    let passwords = work.passwords.all();
    let set = password_set(&passwords);
    observed.plaintext = disks
        .contents()
        .into_iter()
        .filter(|(_, value)| leaks(value, &set))
        .map(|(key, _)| key)
        .collect();
    let committed = observed
        .transactions
        .iter()
        .filter(|t| t.state == checker::TxnState::Committed)
        .count();
    let mut log = String::new();
    for fault in &faults {
        log.push_str(fault);
        log.push('\n');
    }
    for op in &observed.ops {
        log.push_str(&serde_json::to_string(op)?);
        log.push('\n');
    }
    for t in &observed.transactions {
        log.push_str(&serde_json::to_string(t)?);
        log.push('\n');
    }
    let distinct: std::collections::HashSet<&String> = observed.mail_ids.iter().collect();
    log.push_str(&format!(
        "e-mails: {} received, {} of them again (the same Message-ID)\n",
        observed.mail_ids.len(),
        observed.mail_ids.len() - distinct.len()
    ));
    Ok(SimReport {
        seed: config.seed,
        faults,
        operations: observed.ops.len(),
        committed,
        violations: checker::check(&observed),
        log,
    })
}

fn apply_undo(sim: &mut turmoil::Sim<'_>, undo: Undo, faults: &mut Vec<String>, now: Duration) {
    match undo {
        Undo::Repair(a, b) => sim.repair(a, b),
        Undo::Restart(host) => {
            if !sim.is_host_running(host) {
                sim.bounce(host);
                faults.push(format!("{now:?}: {host} restarted"));
            }
        }
        Undo::Latency(a, b) => sim.set_link_latency(a, b, Duration::from_millis(1)),
        Undo::Lossless(a, b) => {
            sim.set_link_fail_rate(a, b, 0.0);
            sim.repair(a, b);
        }
        Undo::Heal(_) => {}
    }
}

/// Waits until nothing is in flight (no participant in doubt or locking a user, no transaction active
/// or committing, every committed transaction's e-mail received), then reads the final state, as the
/// chaos run does.
async fn observe(users: &[String], mail: &Inbox) -> Result<Observed, BoxError> {
    let mut coordinator = TransactionManagerClient::new(cluster::internal_channel(COORDINATOR));
    let mut busy = String::new();
    for _ in 0..600 {
        match in_flight(&mut coordinator, mail).await {
            Ok(None) => {
                busy.clear();
                break;
            }
            Ok(Some(what)) => busy = what,
            Err(e) => busy = format!("cannot observe: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !busy.is_empty() {
        return Err(format!("never quiet: {busy}").into());
    }
    let transactions = transactions(&mut coordinator).await?;
    let mut participants = Vec::new();
    for host in [PASSWORD, HISTORY] {
        let status = status(host).await?;
        participants.push(ParticipantState {
            name: host.into(),
            in_doubt: status.in_doubt,
            locked_users: status.locked_users,
        });
    }
    let mut passwords = PasswordReaderClient::new(cluster::public_channel(PASSWORD));
    let mut histories = HistoryReaderClient::new(cluster::public_channel(HISTORY));
    Ok(Observed {
        ops: Vec::new(),
        users: final_users(&mut passwords, &mut histories, users).await,
        transactions,
        participants,
        mail_ids: Vec::new(),
        plaintext: Vec::new(),
        history_depth: tpc_participants::history::DEFAULT_DEPTH,
    })
}

async fn in_flight(
    coordinator: &mut TransactionManagerClient<Channel>,
    mail: &Inbox,
) -> Result<Option<String>, BoxError> {
    for host in [PASSWORD, HISTORY] {
        let status = status(host).await?;
        if !status.in_doubt.is_empty() || status.locked_users > 0 {
            return Ok(Some(format!(
                "{host}: {} in doubt, {} users locked",
                status.in_doubt.len(),
                status.locked_users
            )));
        }
    }
    let received: std::collections::HashSet<String> = received(mail).into_iter().collect();
    for t in transactions(coordinator).await? {
        if matches!(
            t.state,
            checker::TxnState::Active | checker::TxnState::Committing
        ) {
            return Ok(Some(format!("transaction {} still {:?}", t.txn, t.state)));
        }
        if t.state == checker::TxnState::Committed
            && !received.contains(&checker::message_id(&t.txn))
        {
            return Ok(Some(format!("e-mail for {} not received", t.txn)));
        }
    }
    Ok(None)
}

/// Every transaction the coordinator lists.
async fn transactions(
    coordinator: &mut TransactionManagerClient<Channel>,
) -> Result<Vec<checker::CoordinatorTxn>, BoxError> {
    Ok(coordinator
        .list_transactions(ListTransactionsRequest {
            state: 0,
            limit: 1_000_000,
            ..Default::default()
        })
        .await?
        .into_inner()
        .transactions
        .into_iter()
        .map(coordinator_txn)
        .collect())
}

/// A participant's in-doubt transactions and locked users.
async fn status(host: &str) -> Result<tpc_proto::v1::ParticipantStatus, BoxError> {
    Ok(ParticipantClient::new(cluster::internal_channel(host))
        .status(StatusRequest {})
        .await?
        .into_inner())
}

/// The `Message-ID`s of the e-mails the mail server accepted, duplicates included.
fn received(mail: &Inbox) -> Vec<String> {
    mail.lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(|m| m.message_id().map(str::to_owned))
        .collect()
}
