//! Fault injection against real processes: a crash at every fail point in every process that has it,
//! injected errors, `kill -9`, partitions, one-way partitions, latency, dropped connections, paused
//! processes; and the blocking property of 2PC. After each fault heals, the cluster converges and the
//! invariants hold, from the client's view too.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tonic::Code;
use tpc_harness::{LINKS, LinkFaults, Service};
use tpc_proto::v1::{TransactionResult, UpdatePasswordRequest, transaction_result::Outcome};

/// The password change every case runs, from `OLD` to `NEW`.
const OLD: &str = "old-password-0";
const NEW: &str = "new-password-1";

/// How the client saw the change that met the fault.
#[derive(Debug)]
enum Seen {
    Committed(String),
    Aborted(String),
    Unknown(String),
}

async fn change(env: &Env, request_id: &str) -> Seen {
    match env.update("alice", OLD, NEW, request_id).await {
        Ok(r) if r.outcome() == Outcome::Committed => Seen::Committed(r.txn_id),
        Ok(r) => Seen::Aborted(r.reason),
        Err(e) => Seen::Unknown(e.to_string()),
    }
}

/// Starts the change in the background, for a fault to land while it runs.
async fn spawn_change(
    env: &Env,
) -> Result<
    tokio::task::JoinHandle<std::result::Result<tonic::Response<TransactionResult>, tonic::Status>>,
> {
    let mut client = env.cluster.client().await?;
    Ok(tokio::spawn(async move {
        client
            .update_password(UpdatePasswordRequest {
                user_id: "alice".into(),
                current_password: OLD.into(),
                new_password: NEW.into(),
                request_id: "the-change".into(),
            })
            .await
    }))
}

/// After convergence: the change happened entirely or not at all, as the client was told, and the
/// e-mails match the commits. Returns whether it committed.
async fn assert_all_or_nothing(env: &Env, registered: &str, seen: &Seen) -> Result<bool> {
    converge(env).await;
    let version = env.version("alice").await?;
    let history = env.history("alice").await?;
    assert_eq!(
        Some(&version),
        history.first(),
        "password and history agree"
    );
    let committed = version != registered;
    if committed {
        assert_eq!(history.len(), 2, "{history:?}");
        assert!(env.verify("alice", NEW).await?);
    } else {
        assert_eq!(history, [registered.to_owned()]);
        assert!(env.verify("alice", OLD).await?);
    }
    match seen {
        Seen::Committed(txn) => assert_eq!(&version, txn, "a COMMITTED change is durable"),
        Seen::Aborted(reason) => assert!(!committed, "an ABORTED change ({reason}) took effect"),
        Seen::Unknown(error) => {
            eprintln!("unknown outcome ({error}) resolved: committed = {committed}")
        }
    }
    // A retry with the same request id agrees with what happened.
    let retry = env.update("alice", OLD, NEW, "the-change").await?;
    if committed {
        assert_eq!(
            (retry.outcome(), retry.txn_id.as_str()),
            (Outcome::Committed, version.as_str())
        );
    }
    converge(env).await;
    let version = env.version("alice").await?;
    let expected: std::collections::HashSet<String> = env
        .history("alice")
        .await?
        .iter()
        .map(|t| message_id(t))
        .collect();
    let mails = env.mails_settle(expected.len()).await;
    let received: std::collections::HashSet<String> = mails
        .iter()
        .filter_map(|m| m.message_id().map(str::to_owned))
        .collect();
    assert_eq!(
        received, expected,
        "one e-mail per committed transaction, none for others"
    );
    assert_eq!(env.history("alice").await?.first(), Some(&version));
    Ok(committed)
}

/// Arms `point` with `action` in `process`, runs the change, lets the process die if it does, restarts
/// it, and checks the outcome.
async fn fail_point_case(point: &str, process: Service, action: &str) -> Result {
    let mut env = env().await?;
    let registered = env.register("alice", OLD).await?;
    assert!(committed(&registered), "{registered:?}");
    env.mails_settle(1).await;
    converge(&env).await;

    env.cluster.stop(process).await?;
    let spec = format!("{point}=1*{action}");
    env.cluster.start_with_fail_points(process, &spec).await?;
    let seen = change(&env, "the-change").await;
    if action == "crash" {
        let status = env
            .cluster
            .wait_exit(process, Duration::from_secs(10))
            .await?;
        assert!(!status.success(), "{point}: the process crashed ({status})");
        env.cluster.start_service(process).await?;
    }
    let committed = assert_all_or_nothing(&env, &registered.txn_id, &seen).await?;
    eprintln!(
        "{point} {action} in {}: client saw {seen:?}, committed: {committed}",
        process.name()
    );
    Ok(())
}

macro_rules! fail_point_tests {
    ($($name:ident: $point:literal in $process:ident, $action:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> Result {
            fail_point_case($point, Service::$process, $action).await
        }
    )*};
}

fail_point_tests! {
    crash_coord_before_prepare: "coord.before_prepare" in Coordinator, "crash";
    crash_coord_after_votes: "coord.after_votes" in Coordinator, "crash";
    crash_coord_after_decision_forced: "coord.after_decision_forced" in Coordinator, "crash";
    crash_coord_after_first_commit_sent: "coord.after_first_commit_sent" in Coordinator, "crash";
    crash_coord_before_end: "coord.before_end" in Coordinator, "crash";
    crash_outbox_after_send_before_mark: "outbox.after_send_before_mark" in Coordinator, "crash";
    crash_password_before_prepare_forced: "part.before_prepare_forced" in Password, "crash";
    crash_password_after_prepare_forced: "part.after_prepare_forced" in Password, "crash";
    crash_password_before_commit_applied: "part.before_commit_applied" in Password, "crash";
    crash_password_after_commit_forced: "part.after_commit_forced" in Password, "crash";
    crash_history_before_prepare_forced: "part.before_prepare_forced" in History, "crash";
    crash_history_after_prepare_forced: "part.after_prepare_forced" in History, "crash";
    crash_history_before_commit_applied: "part.before_commit_applied" in History, "crash";
    crash_history_after_commit_forced: "part.after_commit_forced" in History, "crash";
    error_coord_before_prepare: "coord.before_prepare" in Coordinator, "error";
    error_coord_after_first_commit_sent: "coord.after_first_commit_sent" in Coordinator, "error";
    error_coord_before_end: "coord.before_end" in Coordinator, "error";
    error_outbox_after_send_before_mark: "outbox.after_send_before_mark" in Coordinator, "error";
    error_password_after_prepare_forced: "part.after_prepare_forced" in Password, "error";
    error_history_after_commit_forced: "part.after_commit_forced" in History, "error";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_coordinator_mid_transaction_resolves_all_or_nothing() -> Result {
    let mut env = env().await?;
    let registered = env.register("alice", OLD).await?;
    converge(&env).await;
    // Slow the participants' votes so the kill lands while the transaction is open.
    for p in [Service::Password, Service::History] {
        env.cluster.stop(p).await?;
        env.cluster
            .start_with_fail_points(p, "part.after_prepare_forced=delay(300)")
            .await?;
    }
    let update = spawn_change(&env).await?;
    tokio::time::sleep(Duration::from_millis(150)).await;
    env.cluster.kill(Service::Coordinator).await?;
    let seen = match update.await? {
        Ok(r) if r.get_ref().outcome() == Outcome::Committed => {
            Seen::Committed(r.into_inner().txn_id)
        }
        Ok(r) => Seen::Aborted(r.into_inner().reason),
        Err(e) => Seen::Unknown(e.to_string()),
    };
    assert!(
        matches!(seen, Seen::Unknown(_)),
        "the coordinator died before answering: {seen:?}"
    );
    env.cluster.start_service(Service::Coordinator).await?;
    assert!(
        !assert_all_or_nothing(&env, &registered.txn_id, &seen).await?,
        "killed before the commit point"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_coordinator_down_readers_wait_and_the_lock_clears_within_a_second_of_its_return()
-> Result {
    let mut env = env().await?;
    let registered = env.register("alice", OLD).await?;
    converge(&env).await;
    env.cluster.stop(Service::Coordinator).await?;
    // Both participants prepare; the coordinator dies before deciding.
    env.cluster
        .start_with_fail_points(Service::Coordinator, "coord.after_votes=crash")
        .await?;
    let seen = change(&env, "the-change").await;
    env.cluster
        .wait_exit(Service::Coordinator, Duration::from_secs(5))
        .await?;

    // Blocked: the participants may not decide alone, and readers may not see a half-done change.
    let asked = Instant::now();
    assert_eq!(env.get_user_code("alice").await?, Code::Unavailable);
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "the read waited for the outcome first"
    );
    let status = env.cluster.participant_status(Service::History).await?;
    assert_eq!((status.in_doubt.len(), status.locked_users), (1, 1));

    env.cluster.start_service(Service::Coordinator).await?;
    let back = Instant::now();
    loop {
        let status = env.cluster.participant_status(Service::Password).await?;
        let history = env.cluster.participant_status(Service::History).await?;
        if status.locked_users == 0 && history.locked_users == 0 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(1),
            "lock still held {:?} after the coordinator returned",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "in doubt cleared {:?} after the coordinator's restart",
        back.elapsed()
    );
    assert!(
        !assert_all_or_nothing(&env, &registered.txn_id, &seen).await?,
        "presumed abort"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_participant_makes_the_change_abort_and_nothing_is_left_behind() -> Result {
    let env = env().await?;
    let registered = env.register("alice", OLD).await?;
    converge(&env).await;
    env.cluster
        .partition(Service::Coordinator, Service::History);
    let started = Instant::now();
    let seen = change(&env, "the-change").await;
    assert!(matches!(&seen, Seen::Aborted(_)), "{seen:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the prepare deadline decided"
    );
    env.cluster.heal();
    assert!(!assert_all_or_nothing(&env, &registered.txn_id, &seen).await?);
    // The link works again: the retry that ran anew after healing committed.
    assert_ne!(env.version("alice").await?, registered.txn_id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_partition_after_the_vote_leaves_the_participant_in_doubt_until_healed() -> Result
{
    let mut env = env().await?;
    let registered = env.register("alice", OLD).await?;
    converge(&env).await;
    env.cluster.stop(Service::Password).await?;
    env.cluster
        .start_with_fail_points(Service::Password, "part.after_prepare_forced=1*delay(500)")
        .await?;
    let update = spawn_change(&env).await?;
    // While the password participant holds its vote, cut the way from the coordinator to it: the vote
    // still gets out, Commit (and the answers to its questions) do not get in.
    tokio::time::sleep(Duration::from_millis(250)).await;
    env.cluster
        .partition_one_way(Service::Coordinator, Service::Password);
    let result = update.await??.into_inner();
    assert_eq!(result.outcome(), Outcome::Committed);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = env.cluster.participant_status(Service::Password).await?;
    assert_eq!(
        status.in_doubt,
        std::slice::from_ref(&result.txn_id),
        "in doubt while cut off"
    );
    assert_eq!(env.get_user_code("alice").await?, Code::Unavailable);

    env.cluster.heal();
    let seen = Seen::Committed(result.txn_id);
    assert!(assert_all_or_nothing(&env, &registered.txn_id, &seen).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_slows_commits_without_breaking_them() -> Result {
    let env = env().await?;
    let registered = env.register("alice", OLD).await?;
    converge(&env).await;
    for (from, to) in LINKS {
        env.cluster.link(from, to).set(LinkFaults {
            latency: Duration::from_millis(150),
            ..LinkFaults::default()
        });
    }
    let started = Instant::now();
    let seen = change(&env, "the-change").await;
    assert!(matches!(seen, Seen::Committed(_)), "{seen:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "a round trip through the proxy each way"
    );
    env.cluster.heal();
    assert!(assert_all_or_nothing(&env, &registered.txn_id, &seen).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_and_a_paused_participant_are_survived() -> Result {
    let env = env().await?;
    let mut expected_version = env.register("alice", OLD).await?.txn_id;
    converge(&env).await;
    let passwords = [OLD, NEW, "third-password-2", "fourth-password-3"];
    let mut current = 0;
    for round in 0..6 {
        for (from, to) in LINKS {
            env.cluster.link(from, to).drop_connections();
        }
        if round == 3 {
            env.cluster.pause(Service::History)?;
        }
        let next = (current + 1) % passwords.len();
        let result = env
            .update(
                "alice",
                passwords[current],
                passwords[next],
                &format!("round-{round}"),
            )
            .await;
        if round == 3 {
            let result = result?;
            assert_eq!(
                result.outcome(),
                Outcome::Aborted,
                "a frozen participant cannot vote"
            );
            env.cluster.resume(Service::History)?;
        } else if let Ok(r) = result
            && committed(&r)
        {
            expected_version = r.txn_id;
            current = next;
        }
        converge(&env).await;
        assert_eq!(
            env.version("alice").await?,
            expected_version,
            "round {round}"
        );
        assert_eq!(env.history("alice").await?.first(), Some(&expected_version));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_run_keeps_every_invariant() -> Result {
    let report = chaos_run(tpc_common::Strategy::TwoPc).await?;
    assert!(report.anomalies.is_empty(), "{:?}", report.anomalies);
    Ok(())
}

/// A saga and events keep what they promise under the same faults (nothing lost, nothing stuck, a
/// saga consistent at rest); their anomalies are counted, not failed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_run_of_a_saga_keeps_what_a_saga_promises() -> Result {
    chaos_run(tpc_common::Strategy::Saga).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_run_of_events_keeps_what_events_promise() -> Result {
    chaos_run(tpc_common::Strategy::Events).await.map(drop)
}

async fn chaos_run(strategy: tpc_common::Strategy) -> Result<tpc_harness::chaos::Report> {
    use tpc_harness::chaos::{self, ChaosConfig};
    let out = tempfile::Builder::new()
        .prefix("tpc-chaos-test-")
        .tempdir()?;
    let report = chaos::run(ChaosConfig {
        exe: env!("CARGO_BIN_EXE_tpc").into(),
        duration: Duration::from_secs(12),
        seed: 20261127,
        clients: 4,
        users: 6,
        out: out.path().to_path_buf(),
        progress: false,
        strategy,
        etcd: false,
    })
    .await?;
    eprintln!("{}", report.render());
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert!(
        report.faults.kills >= 3,
        "faults were injected: {:?}",
        report.faults
    );
    assert!(report.committed > 10, "work was done");
    assert!(out.path().join("history.jsonl").exists());
    Ok(report)
}

/// The circuit breaker: with a participant killed, a few changes fail finding out, then each is refused
/// at once (`UNAVAILABLE`, with a retry hint) instead of trying; once the participant serves again,
/// changes commit within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_participant_down_changes_are_refused_at_once_and_commit_again_when_it_is_back()
-> Result {
    use tpc_proto::v1::RegisterUserRequest;
    let mut env = env().await?;
    env.register("olivia", "olivias-pw").await?;
    env.cluster.kill(Service::History).await?;
    let mut client = env.cluster.client().await?;
    let register = |i: usize| RegisterUserRequest {
        user_id: format!("down{i}"),
        email: format!("down{i}@example.com"),
        password: format!("down{i}-pw"),
        request_id: String::new(),
    };
    let (mut aborted, mut refused, mut fast) = (0, 0, 0);
    for i in 0..30 {
        let started = Instant::now();
        let answer = client.register_user(register(i)).await;
        let took = started.elapsed();
        match answer {
            Ok(result) => {
                let result = result.into_inner();
                assert!(
                    !committed(&result)
                        && result.reason.contains("history participant unavailable"),
                    "{result:?}"
                );
                aborted += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    status.message().contains("history participant unreachable"),
                    "{status:?}"
                );
                assert!(
                    status.metadata().get("grpc-retry-pushback-ms").is_some(),
                    "{status:?}"
                );
                refused += 1;
                fast += usize::from(took < Duration::from_millis(50));
            }
        }
    }
    assert!(
        aborted >= 3,
        "the breaker opens after failures, not before: {aborted} aborted"
    );
    assert!(
        refused >= 20,
        "then it refuses: {refused} refused, {aborted} aborted"
    );
    assert!(
        fast * 10 >= refused * 9,
        "{fast} of {refused} refusals within 50 ms"
    );
    for i in 0..30 {
        assert_eq!(
            env.get_user_code(&format!("down{i}")).await?,
            Code::NotFound
        );
    }

    env.cluster.start_service(Service::History).await?;
    let serving = Instant::now();
    let mut i = 100;
    loop {
        if let Ok(result) = client.register_user(register(i)).await
            && committed(&result.into_inner())
        {
            break;
        }
        assert!(
            serving.elapsed() < Duration::from_secs(1),
            "no change committed within 1 s of the participant serving again"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A user's stored record that no longer decodes (damaged, or written by a build whose format this one
/// does not read): that user's changes vote no with a clear reason that quotes none of the data, and
/// the participant keeps serving everyone else (it used to abort, and crash again at every retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_does_not_decode_refuses_its_user_and_crashes_nothing() -> Result {
    let mut env = env().await?;
    env.register("rita", "ritas-pw-1").await?;
    env.register("sam", "sams-pw-1").await?;
    env.cluster.stop(Service::Password).await?;
    {
        let db = sled::open(env.cluster.data_dir(Service::Password).join("password"))?;
        let key = db
            .scan_prefix(b"d/")
            .keys()
            .filter_map(|k| k.ok())
            .find(|k| k.ends_with(b"rita"))
            .ok_or("rita's record")?;
        db.insert(key, br#"{"hash": ["$argon2id$not-a-record"]}"#.to_vec())?;
        db.flush()?;
    }
    env.cluster.start_service(Service::Password).await?;
    let refused = env.update("rita", "ritas-pw-1", "ritas-pw-2", "").await?;
    assert!(!committed(&refused));
    assert!(
        refused
            .reason
            .contains("cannot read this user's stored data")
            && refused.reason.contains("d/rita"),
        "{refused:?}"
    );
    assert!(!refused.reason.contains("argon2"), "{refused:?}");
    // The participant is still up, and serves the others.
    assert!(committed(
        &env.update("sam", "sams-pw-1", "sams-pw-2", "").await?
    ));
    assert!(env.verify("sam", "sams-pw-2").await?);
    Ok(())
}

/// An Abort that reaches a participant while its PREPARED record is still being forced is acknowledged
/// only once the write has landed and been undone: the user's next change, waiting at the coordinator,
/// then finds the user unlocked (it used to start at once and vote `conflict`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_change_waits_for_an_abort_that_lands_during_the_forced_write() -> Result {
    let mut env = env().await?;
    env.register("quinn", "quinns-pw-1").await?;
    env.cluster.stop(Service::Password).await?;
    // The next PREPARED write takes longer than the coordinator's 2 s deadline.
    env.cluster
        .start_with_fail_points(
            Service::Password,
            "part.before_prepare_forced=1*delay(2500)",
        )
        .await?;
    let env = std::sync::Arc::new(env);
    let first = {
        let env = env.clone();
        tokio::spawn(async move { env.update("quinn", "quinns-pw-1", "quinns-pw-2", "").await })
    };
    // Sent while the first is preparing; it waits for it (at most its own 2 s).
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let second = env
        .update("quinn", "quinns-pw-1", "quinns-pw-3", "")
        .await?;
    let first = first.await??;
    assert!(!committed(&first), "{first:?}");
    assert!(first.reason.contains("deadline"), "{first:?}");
    assert!(
        committed(&second),
        "the next change met a held lock: {second:?}"
    );
    assert!(env.verify("quinn", "quinns-pw-3").await?);
    Ok(())
}

/// Storage that goes backwards is noticed, never served as current: a participant whose store was
/// deleted comes back empty, and every change is refused with the reason (nothing half-applied), until
/// an operator restarts it with `--accept-data-loss`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_whose_store_was_deleted_is_refused_until_an_operator_accepts_the_loss()
-> Result {
    let mut env = env().await?;
    env.register("uma", "umas-pw-1").await?;
    env.register("victor", "victors-pw-1").await?;
    env.cluster.kill(Service::Password).await?;
    std::fs::remove_dir_all(env.cluster.data_dir(Service::Password).join("password"))?;
    env.cluster.start_service(Service::Password).await?;

    // The first change meets the new store: refused with the reason, and so is every one after.
    let mut refused = Vec::new();
    for user in ["victor", "wendy", "uma"] {
        let result = if user == "wendy" {
            env.register(user, "wendys-pw-1").await
        } else {
            env.update(user, &format!("{user}s-pw-1"), &format!("{user}s-pw-2"), "")
                .await
        };
        match result {
            Ok(r) => {
                assert!(!committed(&r), "{user}: {r:?}");
                refused.push(r.reason);
            }
            Err(e) => refused.push(e.to_string()),
        }
    }
    assert!(
        refused.iter().all(|r| r.contains("another store")),
        "{refused:?}"
    );
    assert_eq!(
        env.history("victor").await?.len(),
        1,
        "nothing half-applied"
    );
    let log = std::fs::read_to_string(env.cluster.log_file(Service::Coordinator))?;
    assert!(
        log.contains("participant lost acknowledged changes"),
        "{log}"
    );
    assert_eq!(
        password_service_health(&env).await?,
        ServingStatus::NotServing
    );
    // The participant knows too, from its store's witness: it serves no read from the empty store
    // (every user would be "unknown"), and its own health says so.
    assert_eq!(env.get_user_code("uma").await?, Code::DataLoss);
    assert!(!env.verify("uma", "umas-pw-1").await.unwrap_or(false));
    assert_eq!(
        participant_health(&env, Service::Password).await?,
        ServingStatus::NotServing
    );
    let log = std::fs::read_to_string(env.cluster.log_file(Service::Password))?;
    assert!(
        log.contains("deleted or replaced") && log.contains("serves nothing"),
        "{log}"
    );

    // The operator accepts the loss: changes are made again (the users it lost are unknown to it).
    env.cluster.stop(Service::Password).await?;
    env.cluster
        .start_with_args(Service::Password, &["--accept-data-loss"])
        .await?;
    let again = env.register("wendy", "wendys-pw-1").await?;
    assert!(committed(&again), "{again:?}");
    assert!(health_becomes(&env, ServingStatus::Serving).await?);
    assert_eq!(env.get_user_code("uma").await?, Code::NotFound);
    assert_eq!(
        participant_health(&env, Service::Password).await?,
        ServingStatus::Serving
    );
    // And the store it accepted is the one witnessed from now on: a plain restart serves it.
    env.cluster.stop(Service::Password).await?;
    env.cluster.start_service(Service::Password).await?;
    assert!(env.verify("wendy", "wendys-pw-1").await?);
    Ok(())
}

/// What `service`'s own health service says of the whole server.
async fn participant_health(env: &Env, service: Service) -> Result<ServingStatus> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Channel::from_shared(env.cluster.url(service))?
        .connect()
        .await?;
    Ok(HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner()
        .status())
}

use tonic_health::pb::health_check_response::ServingStatus;

/// Whether the coordinator's health service comes to say `wanted` of `tpc.v1.PasswordService` (it
/// follows the engine a moment later).
async fn health_becomes(env: &Env, wanted: ServingStatus) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if password_service_health(env).await? == wanted {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the coordinator's health service says of `tpc.v1.PasswordService`.
async fn password_service_health(env: &Env) -> Result<ServingStatus> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Channel::from_shared(env.cluster.url(Service::Coordinator))?
        .connect()
        .await?;
    Ok(HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "tpc.v1.PasswordService".into(),
        })
        .await?
        .into_inner()
        .status())
}

/// The damaged-file case: bytes flipped in the history participant's database file. sled recovers by
/// cutting its log at the first bad record, so the participant may come back without acknowledged
/// changes. It must never go on as if nothing happened: either nothing it acknowledged is missing, or
/// it serves no read (its witness) and every change aborts with the reason (or it refuses to start at
/// all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_that_lost_acknowledged_changes_is_never_used_as_if_whole() -> Result {
    let mut env = env().await?;
    let users: Vec<String> = (0..24).map(|i| format!("dmg{i}")).collect();
    for user in &users {
        assert!(committed(
            &env.register(user, &format!("{user}-pw-1")).await?
        ));
    }
    for user in &users {
        let changed = env
            .update(user, &format!("{user}-pw-1"), &format!("{user}-pw-2"), "")
            .await?;
        assert!(committed(&changed), "{changed:?}");
    }
    env.cluster.kill(Service::History).await?;
    let file = env
        .cluster
        .data_dir(Service::History)
        .join("history")
        .join("db");
    let mut bytes = std::fs::read(&file)?;
    let len = bytes.len();
    for k in 1..8 {
        for b in &mut bytes[len * k / 8..(len * k / 8 + 3).min(len)] {
            *b ^= 0x5a;
        }
    }
    std::fs::write(&file, &bytes)?;
    if env.cluster.start_service(Service::History).await.is_err() {
        // Refusing to start on a damaged file is loud, not silent: fine.
        return Ok(());
    }
    // The participant knows its store went back when its witness saw further (every 100 ms), and then
    // serves nothing from it; a loss within the witness's last moment is caught by the coordinator
    // alone (below), and those reads are served short.
    let (mut refused, mut short) = (0, 0);
    for user in &users {
        match env.history(user).await {
            Ok(history) if history.len() >= 2 => {}
            Ok(_) => short += 1,
            Err(e) => {
                assert!(
                    e.to_string().contains("acknowledged changes were lost"),
                    "{e}"
                );
                refused += 1;
            }
        }
    }
    assert!(
        refused == 0 || refused == users.len(),
        "the participant serves all or nothing: {refused} refused"
    );
    let missing = refused + short;
    let mut outcomes = Vec::new();
    for user in &users {
        let r = env
            .update(user, &format!("{user}-pw-2"), &format!("{user}-pw-3"), "")
            .await?;
        outcomes.push(r);
    }
    if missing > 0 {
        for r in &outcomes {
            assert!(
                !committed(r) && r.reason.contains("acknowledged changes were lost"),
                "{missing} users lost acknowledged history, yet: {r:?}"
            );
        }
    } else {
        assert!(outcomes.iter().all(committed), "{outcomes:?}");
    }
    eprintln!(
        "damaged store: {missing} of {} users lost history; the participant refused {refused} reads",
        users.len()
    );
    Ok(())
}

/// One byte of a stored hash damaged on disk, the JSON still well formed: the record's checksum
/// catches it. The user's changes abort saying so and reads are `INTERNAL` naming the record, instead
/// of the damaged hash being served as the user's ("invalid credentials" for the right password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_damaged_on_disk_is_reported_not_served() -> Result {
    let mut env = env().await?;
    env.register("xena", "xenas-pw-1").await?;
    env.register("yuri", "yuris-pw-1").await?;
    env.cluster.stop(Service::Password).await?;
    {
        let db = sled::open(env.cluster.data_dir(Service::Password).join("password"))?;
        let key = db
            .scan_prefix(b"d/")
            .keys()
            .filter_map(|k| k.ok())
            .find(|k| k.ends_with(b"xena"))
            .ok_or("xena's record")?;
        let mut value = db.get(&key)?.ok_or("no value")?.to_vec();
        // A character of the argon2 string, well inside the JSON: it stays valid JSON.
        let at = value
            .windows(7)
            .position(|w| w == b"$argon2")
            .ok_or("no hash")?
            + 20;
        value[at] = if value[at] == b'A' { b'B' } else { b'A' };
        db.insert(key, value)?;
        db.flush()?;
    }
    env.cluster.start_service(Service::Password).await?;
    let refused = env.update("xena", "xenas-pw-1", "xenas-pw-2", "").await?;
    assert!(!committed(&refused));
    assert!(refused.reason.contains("checksum mismatch"), "{refused:?}");
    assert_eq!(env.get_user_code("xena").await?, Code::Internal);
    assert!(committed(
        &env.update("yuri", "yuris-pw-1", "yuris-pw-2", "").await?
    ));
    Ok(())
}
