//! Coordinator high availability against real processes: three coordinators on a real 3-member etcd
//! cluster (`--log etcd`), the two participants given all three, a real SMTP server. `kill -9` of the
//! leader under load, and a leader frozen (SIGSTOP) past its lease and then woken.
//!
//! Built with `--features etcd` only (`.ci/run` runs it); skipped when no `etcd` binary is installed.
#![cfg(feature = "etcd")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tpc_harness::checker::message_id;
use tpc_harness::etcd::etcd_available;
use tpc_harness::ha::{Follower, HaCluster, HaOptions};
use tpc_proto::v1::transaction_result::Outcome;
use tpc_proto::v1::{RegisterUserRequest, UpdatePasswordRequest, VerifyPasswordRequest};

const LEASE_TTL: Duration = Duration::from_secs(2);
/// How long a client keeps following the leader before it gives up on one call.
const CALL_WITHIN: Duration = Duration::from_secs(20);

/// One cluster at a time: each is eleven processes, and three at once on two cores starve etcd's
/// heartbeats and the leader's keep-alives, which is another test than the one written here.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(dir: &std::path::Path) -> Option<HaCluster> {
    if !etcd_available() {
        eprintln!("SKIPPED: no etcd binary (apt-get install etcd-server, or set TPC_ETCD)");
        return None;
    }
    Some(
        HaCluster::start(HaOptions {
            exe: env!("CARGO_BIN_EXE_tpc").into(),
            dir: dir.to_owned(),
            coordinators: 3,
            lease_ttl: LEASE_TTL,
            owasp_cost: false,
        })
        .await
        .expect("the highly available cluster starts"),
    )
}

/// What the clients were told: each user's password as of its last acknowledged change, and every
/// committed transaction with when it was acknowledged.
#[derive(Default)]
struct Told {
    passwords: HashMap<String, String>,
    committed: Vec<(String, Instant)>,
    aborted: usize,
    /// Why each abort happened, and when it was answered.
    reasons: Vec<(String, Instant)>,
    failed: usize,
}

async fn register(follower: &mut Follower, user: &str, password: &str) -> String {
    let result = follower
        .call(CALL_WITHIN, |mut c| {
            let request = RegisterUserRequest {
                user_id: user.into(),
                email: format!("{user}@example.com"),
                password: password.into(),
                request_id: format!("register-{user}"),
            };
            async move { c.register_user(request).await }
        })
        .await
        .expect("registration answers");
    assert_eq!(result.outcome(), Outcome::Committed, "{result:?}");
    result.txn_id
}

/// One client: changes its users' passwords in turn until `stop`, following the leader.
async fn client(
    urls: Vec<String>,
    users: Vec<String>,
    told: Arc<Mutex<Told>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut follower = Follower::new(urls);
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for user in &users {
            n += 1;
            let current = told.lock().unwrap().passwords[user].clone();
            let new = format!("{user} password {n}");
            let request_id = format!("{user}-change-{n}");
            let result = follower
                .call(CALL_WITHIN, |mut c| {
                    let request = UpdatePasswordRequest {
                        user_id: user.clone(),
                        current_password: current.clone(),
                        new_password: new.clone(),
                        request_id: request_id.clone(),
                    };
                    async move { c.update_password(request).await }
                })
                .await;
            let mut told = told.lock().unwrap();
            match result {
                Ok(r) if r.outcome() == Outcome::Committed => {
                    told.passwords.insert(user.clone(), new);
                    told.committed.push((r.txn_id, Instant::now()));
                }
                Ok(r) => {
                    told.aborted += 1;
                    told.reasons.push((r.reason, Instant::now()));
                }
                // No answer within CALL_WITHIN: the outcome is unknown, and so is the password from
                // here on; this client stops changing this user.
                Err(status) => {
                    eprintln!("{user}: no answer: {status:?}");
                    told.failed += 1;
                    return;
                }
            }
        }
    }
}

/// Users registered for a load, and the clients changing their passwords.
struct Load {
    told: Arc<Mutex<Told>>,
    /// The registrations' transactions (each mails the user too).
    registrations: Vec<String>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Registers `clients * per_client` users named `prefix0…`, then starts `clients` clients, each
    /// changing its own users' passwords until [`Load::finish`].
    async fn start(urls: &[String], prefix: &str, clients: usize, per_client: usize) -> Self {
        let mut follower = Follower::new(urls.to_vec());
        let told = Arc::new(Mutex::new(Told::default()));
        let mut registrations = Vec::new();
        let mut users_of: Vec<Vec<String>> = vec![Vec::new(); clients];
        for u in 0..clients * per_client {
            let user = format!("{prefix}{u}");
            let password = format!("{user} first password");
            registrations.push(register(&mut follower, &user, &password).await);
            told.lock()
                .unwrap()
                .passwords
                .insert(user.clone(), password);
            users_of[u % clients].push(user);
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers = users_of
            .into_iter()
            .map(|users| tokio::spawn(client(urls.to_vec(), users, told.clone(), stop.clone())))
            .collect();
        Self {
            told,
            registrations,
            stop,
            workers,
        }
    }

    /// Stops the clients and waits for the calls they have out.
    async fn finish(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in self.workers.drain(..) {
            w.await.unwrap();
        }
    }
}

/// Waits until no participant has anything in doubt or locked.
async fn quiesce(cluster: &HaCluster, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut busy = None;
        for i in 0..2 {
            match cluster.participant_status(i).await {
                Ok(s) if s.in_doubt.is_empty() && s.locked_users == 0 => {}
                Ok(s) => {
                    busy = Some(format!(
                        "participant {i}: {} in doubt, {} locked",
                        s.in_doubt.len(),
                        s.locked_users
                    ))
                }
                Err(e) => busy = Some(format!("participant {i}: {e}")),
            }
        }
        match busy {
            None => return,
            Some(what) if Instant::now() > deadline => panic!("never quiet: {what}"),
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Every acknowledged password is the one in effect, and every committed change's e-mail arrived.
async fn check_nothing_acknowledged_was_lost(
    cluster: &HaCluster,
    told: &Told,
    registrations: &[String],
) {
    let mut reader = cluster.passwords().await.unwrap();
    for (user, password) in &told.passwords {
        let verified = reader
            .verify_password(VerifyPasswordRequest {
                user_id: user.clone(),
                password: password.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            verified.valid,
            "{user}'s acknowledged password is not in effect"
        );
    }
    let expected: Vec<String> = told
        .committed
        .iter()
        .map(|(txn, _)| txn.clone())
        .chain(registrations.iter().cloned())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let received: std::collections::HashSet<String> = cluster
            .mail
            .mails()
            .iter()
            .filter_map(|m| m.message_id().map(str::to_owned))
            .collect();
        let missing: Vec<&String> = expected
            .iter()
            .filter(|txn| !received.contains(&message_id(txn)))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} committed changes never mailed, e.g. {:?}",
            missing.len(),
            expected.len(),
            missing.first()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_under_load_a_standby_takes_over_and_nothing_acknowledged_is_lost() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cluster) = start(dir.path()).await else {
        return;
    };
    let urls = cluster.coordinator_urls();
    let mut load = Load::start(&urls, "user", 8, 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = cluster.leader().await.expect("a coordinator leads");
    let before = load.told.lock().unwrap().committed.len();
    let killed_at = Instant::now();
    cluster.kill_coordinator(leader).await.unwrap();
    let new_leader = cluster
        .wait_for_leader(Duration::from_secs(15))
        .await
        .expect("a standby takes over");
    let leads_after = killed_at.elapsed();
    // What the participants held in doubt when the new leader took over: how soon it is resolved.
    let mut in_doubt = std::collections::HashSet::new();
    for i in 0..2 {
        in_doubt.extend(cluster.participant_status(i).await.unwrap().in_doubt);
    }
    let doubted = in_doubt.len();
    let resolving = Instant::now();
    while !in_doubt.is_empty() {
        assert!(
            resolving.elapsed() < Duration::from_secs(10),
            "still in doubt 10 s after the new leader: {in_doubt:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut still = std::collections::HashSet::new();
        for i in 0..2 {
            still.extend(cluster.participant_status(i).await.unwrap().in_doubt);
        }
        in_doubt.retain(|txn| still.contains(txn));
    }
    let resolved_after = resolving.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    load.finish().await;
    let registrations = std::mem::take(&mut load.registrations);
    let told = Arc::try_unwrap(load.told)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap();
    let first_commit_after = told
        .committed
        .iter()
        .filter(|(_, at)| *at > killed_at)
        .map(|(_, at)| at.duration_since(killed_at))
        .min()
        .expect("changes commit after the leader died");
    eprintln!(
        "killed coordinator{leader} after {before} commits; coordinator{new_leader} leads after {leads_after:?}, first commit after {first_commit_after:?}; {doubted} transactions in doubt at the participants then, resolved {resolved_after:?} later; {} committed, {} aborted, {} unanswered",
        told.committed.len(),
        told.aborted,
        told.failed
    );
    assert_ne!(new_leader, leader);
    assert_eq!(
        told.failed, 0,
        "every change got an answer within {CALL_WITHIN:?}"
    );
    quiesce(&cluster, Duration::from_secs(10)).await;
    check_nothing_acknowledged_was_lost(&cluster, &told, &registrations).await;

    // The dead leader comes back as a standby.
    cluster.start_coordinator(leader).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cluster.leader().await, Some(new_leader));

    // The command line, pointed at the standby, follows it to the leader.
    let mut cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_tpc"))
        .args([
            "user",
            "add",
            "cli-user",
            "--email",
            "cli@example.com",
            "--password-stdin",
            "--coordinator",
            &urls[leader],
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = cli.stdin.take().unwrap();
        stdin.write_all(b"cli user password\n").await.unwrap();
    }
    let out = cli.wait_with_output().await.unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("sending to the leader"), "{stderr}");
    assert!(stdout.to_lowercase().contains("committed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_frozen_past_its_lease_is_replaced_and_stops_when_it_wakes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cluster) = start(dir.path()).await else {
        return;
    };
    let urls = cluster.coordinator_urls();
    let mut follower = Follower::new(urls.clone());
    let registration = register(&mut follower, "frozen", "first password").await;
    let leader = cluster.leader().await.expect("a coordinator leads");

    cluster.pause_coordinator(leader).unwrap();
    let paused_at = Instant::now();
    // A standby leads once the frozen leader's lease has expired.
    let new_leader = loop {
        let deadline = Duration::from_secs(15);
        assert!(paused_at.elapsed() < deadline, "no standby took over");
        match cluster.leader().await {
            Some(i) if i != leader => break i,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    eprintln!(
        "coordinator{new_leader} leads {:?} after coordinator{leader} froze",
        paused_at.elapsed()
    );
    let changed = Follower::new(vec![urls[new_leader].clone()])
        .call(CALL_WITHIN, |mut c| async move {
            c.update_password(UpdatePasswordRequest {
                user_id: "frozen".into(),
                current_password: "first password".into(),
                new_password: "second password".into(),
                request_id: "frozen-change-1".into(),
            })
            .await
        })
        .await
        .unwrap();
    assert_eq!(changed.outcome(), Outcome::Committed);

    // The old leader wakes: it finds its lease gone and stops, having written nothing.
    cluster.resume_coordinator(leader).unwrap();
    let status = cluster
        .wait_coordinator_exit(leader, Duration::from_secs(10))
        .await
        .expect("the deposed leader stops by itself");
    assert!(!status.success(), "it stops with an error: {status}");
    let log = std::fs::read_to_string(cluster.log_file(&format!("coordinator{leader}"))).unwrap();
    assert!(
        log.contains("lost its leadership") || log.contains("lost the leadership"),
        "{log}"
    );
    assert_eq!(cluster.leader().await, Some(new_leader));

    quiesce(&cluster, Duration::from_secs(10)).await;
    let mut told = Told::default();
    told.passwords
        .insert("frozen".into(), "second password".into());
    told.committed.push((changed.txn_id, Instant::now()));
    check_nothing_acknowledged_was_lost(&cluster, &told, &[registration]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_etcd_member_lost_fails_nothing_and_two_lost_is_a_clear_unavailable_until_one_returns()
{
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cluster) = start(dir.path()).await else {
        return;
    };
    let urls = cluster.coordinator_urls();
    let mut follower = Follower::new(urls.clone());
    let clients = 4;
    let leader = cluster.leader().await.expect("a coordinator leads");

    // One member of three dies under load: etcd keeps its quorum, and nothing fails.
    let mut load = Load::start(&urls, "member-user", clients, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.etcd.kill(0).await.unwrap();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    load.finish().await;
    let (told, registrations) = (load.told, load.registrations);
    {
        let told = told.lock().unwrap();
        let after = told
            .committed
            .iter()
            .filter(|(_, at)| *at > killed_at)
            .count();
        let aborted_after: Vec<&String> = told
            .reasons
            .iter()
            .filter(|(_, at)| *at > killed_at)
            .map(|(reason, _)| reason)
            .collect();
        eprintln!(
            "one etcd member killed: {after} commits after it; aborted after it: {aborted_after:?}; {} unanswered",
            told.failed
        );
        assert!(after > 0, "changes commit with two members of three");
        assert_eq!(told.failed, 0);
        // Only changes in flight when the member died may fail: one per client at most.
        assert!(
            aborted_after.len() <= clients,
            "more changes failed than were in flight: {aborted_after:?}"
        );
    }
    assert_eq!(
        cluster.leader().await,
        Some(leader),
        "the same coordinator leads"
    );

    // A second member dies: no quorum. A change gets a clear UNAVAILABLE and nothing is half-done.
    cluster.etcd.kill(1).await.unwrap();
    let user = "member-user0".to_string();
    let current = told.lock().unwrap().passwords[&user].clone();
    let refused = follower
        .call(Duration::from_secs(12), |mut c| {
            let request = UpdatePasswordRequest {
                user_id: user.clone(),
                current_password: current.clone(),
                new_password: "during the outage".into(),
                request_id: "no-quorum-change".into(),
            };
            async move { c.update_password(request).await }
        })
        .await;
    let status = refused.expect_err("nothing is decided without a quorum");
    eprintln!("without a quorum: {:?} {}", status.code(), status.message());
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("no quorum"),
        "{}",
        status.message()
    );

    // The member returns: a coordinator leads again and changes commit. UNAVAILABLE left the change
    // made during the outage undecided for its client: its COMMIT may have reached a member that had
    // no quorum to agree with, and become the decision once the quorum is back. The same request id
    // tells which (a commit is reported as such; an abort may run again). Until it is decided, the
    // participants hold the user in doubt and another change of that user conflicts.
    cluster.etcd.restart(1).unwrap();
    let back = Instant::now();
    cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a coordinator leads once etcd has its quorum back");
    let outage_change = follower
        .call(CALL_WITHIN, |mut c| {
            let request = UpdatePasswordRequest {
                user_id: user.clone(),
                current_password: current.clone(),
                new_password: "during the outage".into(),
                request_id: "no-quorum-change".into(),
            };
            async move { c.update_password(request).await }
        })
        .await
        .expect("the request asked again answers");
    eprintln!(
        "the change made without a quorum, asked again: {:?} {}",
        outage_change.outcome(),
        outage_change.reason
    );
    let mut registrations = registrations;
    let current = if outage_change.outcome() == Outcome::Committed {
        registrations.push(outage_change.txn_id.clone());
        "during the outage".to_string()
    } else {
        current
    };
    let mut attempt = 0;
    let result = loop {
        attempt += 1;
        let result = follower
            .call(CALL_WITHIN, |mut c| {
                let request = UpdatePasswordRequest {
                    user_id: user.clone(),
                    current_password: current.clone(),
                    new_password: "after the outage".into(),
                    request_id: format!("after-quorum-change-{attempt}"),
                };
                async move { c.update_password(request).await }
            })
            .await
            .unwrap();
        if result.outcome() == Outcome::Committed || back.elapsed() > Duration::from_secs(30) {
            break result;
        }
        eprintln!("after the outage: {}", result.reason);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "quorum back: a coordinator leads and commits {:?} later",
        back.elapsed()
    );
    assert_eq!(result.outcome(), Outcome::Committed, "{result:?}");
    let mut told = Arc::try_unwrap(told).ok().unwrap().into_inner().unwrap();
    told.passwords.insert(user, "after the outage".into());
    told.committed.push((result.txn_id, Instant::now()));
    quiesce(&cluster, Duration::from_secs(20)).await;
    check_nothing_acknowledged_was_lost(&cluster, &told, &registrations).await;
}

/// `tpc chaos --log etcd`: the chaos run's nemesis (kill -9 and fail-point crashes of every process,
/// partitions, latency, pauses, the mail server down) plus etcd members killed, against a coordinator
/// on etcd; the checker finds nothing, and no plaintext password is in etcd's files either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_on_the_etcd_log_keeps_every_invariant() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !etcd_available() {
        eprintln!("SKIPPED: no etcd binary (apt-get install etcd-server, or set TPC_ETCD)");
        return;
    }
    let out = tempfile::Builder::new()
        .prefix("tpc-chaos-etcd-")
        .tempdir()
        .unwrap();
    let report = tpc_harness::chaos::run(tpc_harness::chaos::ChaosConfig {
        exe: env!("CARGO_BIN_EXE_tpc").into(),
        duration: Duration::from_secs(15),
        seed: 20261130,
        clients: 4,
        users: 6,
        out: out.path().to_path_buf(),
        progress: false,
        strategy: tpc_common::Strategy::TwoPc,
        etcd: true,
    })
    .await
    .expect("the chaos run completes");
    eprintln!("{}", report.render());
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert!(
        report.faults.injected.contains_key("etcd member kill -9"),
        "{:?}",
        report.faults.injected
    );
    assert!(report.committed > 0);
}
