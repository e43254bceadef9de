//! The saga strategy against real processes: its happy path, compensation when the history step says
//! no, the participants' barrier (duplicate, empty compensation, hanging `Apply`), and the orchestrator
//! killed at each step and restarted.

mod support;

use support::*;
use tonic::Code;
use tpc_common::Strategy;
use tpc_harness::Service;
use tpc_proto::v1::{
    ApplyRequest, CompensateRequest, Update, apply_request, apply_response,
    transaction_result::Outcome,
};

fn apply(txn: &str, strategy: tpc_proto::v1::Strategy, current: &str, new: &str) -> ApplyRequest {
    ApplyRequest {
        txn_id: txn.into(),
        strategy: strategy.into(),
        operation: Some(apply_request::Operation::Update(Update {
            user_id: "alice".into(),
            current_password: current.into(),
            new_password: new.into(),
        })),
    }
}

fn compensate(txn: &str) -> CompensateRequest {
    CompensateRequest {
        txn_id: txn.into(),
        strategy: tpc_proto::v1::Strategy::Saga.into(),
        user_id: "alice".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_commits_step_by_step_and_sends_the_email() -> Result {
    let env = env_for(Strategy::Saga).await?;
    let registered = env.register("alice", "pw-0").await?;
    assert!(committed(&registered), "{registered:?}");
    let changed = env.update("alice", "pw-0", "pw-1", "r1").await?;
    assert!(committed(&changed), "{changed:?}");
    env.assert_at_rest("alice", &[&changed.txn_id, &registered.txn_id])
        .await?;
    assert!(env.verify("alice", "pw-1").await?);
    let mails = env.mails_settle(2).await;
    assert_eq!(mails.len(), 2);
    // The retry gets the first outcome.
    let retry = env.update("alice", "pw-0", "pw-1", "r1").await?;
    assert_eq!(
        (retry.outcome(), retry.txn_id),
        (Outcome::Committed, changed.txn_id)
    );
    let listed = env.cluster.list_transactions().await?;
    assert!(listed.iter().all(|t| t.strategy == "saga"), "{listed:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_history_step_compensates_the_password_and_sends_no_email() -> Result {
    let env = env_for(Strategy::Saga).await?;
    let registered = env.register("alice", "pw-0").await?;
    env.mails_settle(1).await;
    // The password step applies pw-0 again; history refuses a recent password.
    let reused = env.update("alice", "pw-0", "pw-0", "").await?;
    assert_eq!(reused.outcome(), Outcome::Aborted);
    assert!(reused.reason.contains("used recently"), "{reused:?}");
    converge(&env).await;
    assert_eq!(env.version("alice").await?, registered.txn_id);
    assert_eq!(
        env.history("alice").await?,
        std::slice::from_ref(&registered.txn_id)
    );
    assert!(env.verify("alice", "pw-0").await?);
    assert_eq!(
        env.mails_settle(1).await.len(),
        1,
        "no e-mail for the aborted saga"
    );
    let listed = env.cluster.list_transactions().await?;
    let aborted = listed.iter().find(|t| t.txn_id == reused.txn_id).unwrap();
    assert_eq!(aborted.state(), tpc_proto::v1::transaction::State::Aborted);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_barrier_answers_duplicates_records_empty_compensations_and_stops_hanging_applies()
-> Result {
    let env = env_for(Strategy::Saga).await?;
    let registered = env.register("alice", "pw-0").await?;
    let mut history = env.cluster.participant(Service::History).await?;
    let mut password = env.cluster.participant(Service::Password).await?;
    let saga = tpc_proto::v1::Strategy::Saga;

    // Duplicate Apply: applied once, answered twice the same.
    let txn = uuid_like();
    for _ in 0..2 {
        let answer = password
            .apply(apply(&txn, saga, "pw-0", "pw-1"))
            .await?
            .into_inner();
        assert_eq!(answer.outcome(), apply_response::Outcome::Applied);
        assert_eq!(answer.email, "alice@example.com");
    }
    assert_eq!(env.version("alice").await?, txn);
    // Its compensation restores the registration's password; a duplicate does nothing more.
    for _ in 0..2 {
        password.compensate(compensate(&txn)).await?;
    }
    assert_eq!(env.version("alice").await?, registered.txn_id);
    assert!(env.verify("alice", "pw-0").await?);
    // Apply after Compensate (a late duplicate) changes nothing.
    let late = password
        .apply(apply(&txn, saga, "pw-0", "pw-1"))
        .await?
        .into_inner();
    assert_eq!(late.outcome(), apply_response::Outcome::Refused);
    assert_eq!(env.version("alice").await?, registered.txn_id);

    // Empty compensation, then the hanging Apply arrives: nothing changes.
    let hanging = uuid_like();
    history.compensate(compensate(&hanging)).await?;
    let answer = history
        .apply(apply(&hanging, saga, "pw-0", "pw-9"))
        .await?
        .into_inner();
    assert_eq!(answer.outcome(), apply_response::Outcome::Refused);
    assert!(answer.reason.contains("compensated"), "{answer:?}");
    assert_eq!(
        env.history("alice").await?,
        std::slice::from_ref(&registered.txn_id)
    );

    // A saga step of a transaction created long ago, never seen here: its saga gave up long since.
    let ancient = "01000000-0000-7000-8000-000000000000";
    let answer = password
        .apply(apply(ancient, saga, "pw-0", "pw-9"))
        .await?
        .into_inner();
    assert_eq!(answer.outcome(), apply_response::Outcome::Refused);
    assert!(answer.reason.contains("too old"), "{answer:?}");
    // Nor can it be compensated: its record, if it had one, may be gone.
    let compensated = password.compensate(compensate(ancient)).await;
    assert_eq!(compensated.unwrap_err().code(), Code::FailedPrecondition);

    // One strategy never takes another's transaction; two-phase commit has no Apply.
    let events = history
        .apply(apply(
            &hanging,
            tpc_proto::v1::Strategy::Events,
            "pw-0",
            "pw-9",
        ))
        .await;
    assert_eq!(events.unwrap_err().code(), Code::FailedPrecondition);
    let unspecified = password
        .apply(apply(
            &uuid_like(),
            tpc_proto::v1::Strategy::Unspecified,
            "pw-0",
            "pw-9",
        ))
        .await;
    assert_eq!(unspecified.unwrap_err().code(), Code::InvalidArgument);
    Ok(())
}

/// Kills the orchestrator at `fail_point`, restarts it, and checks where the saga ended.
async fn crash_case(fail_point: &str, survives: bool) -> Result {
    let mut env = env_for(Strategy::Saga).await?;
    let registered = env.register("alice", "pw-0").await?;
    env.mails_settle(1).await;
    env.cluster.stop(Service::Coordinator).await?;
    env.cluster
        .start_with_fail_points(Service::Coordinator, fail_point)
        .await?;
    let answer = env.update("alice", "pw-0", "pw-1", "the-change").await;
    assert!(
        answer.is_err(),
        "{fail_point}: the orchestrator died: {answer:?}"
    );
    env.cluster
        .wait_exit(Service::Coordinator, std::time::Duration::from_secs(10))
        .await?;
    env.cluster.start_service(Service::Coordinator).await?;
    converge(&env).await;

    let version = env.version("alice").await?;
    let history = env.history("alice").await?;
    assert_eq!(Some(&version), history.first(), "{fail_point}: at rest");
    if survives {
        assert_ne!(version, registered.txn_id, "{fail_point}");
        assert!(env.verify("alice", "pw-1").await?);
        let retry = env.update("alice", "pw-0", "pw-1", "the-change").await?;
        assert_eq!(
            (retry.outcome(), retry.txn_id),
            (Outcome::Committed, version)
        );
        assert_eq!(env.mails_settle(2).await.len(), 2, "{fail_point}");
    } else {
        assert_eq!(version, registered.txn_id, "{fail_point}: compensated");
        assert_eq!(history.len(), 1, "{fail_point}: {history:?}");
        assert!(env.verify("alice", "pw-0").await?);
        assert_eq!(env.mails_settle(1).await.len(), 1, "{fail_point}");
        let listed = env.cluster.list_transactions().await?;
        assert!(
            listed
                .iter()
                .any(|t| t.state() == tpc_proto::v1::transaction::State::Aborted
                    && t.reason.contains("restarted")),
            "{fail_point}: {listed:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_start_is_forced_compensates_both_steps_empty() -> Result {
    crash_case("saga.after_start_forced=1*crash", false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_password_step_undoes_it() -> Result {
    crash_case("saga.after_apply=1*crash", false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_both_steps_before_completion_undoes_both() -> Result {
    crash_case("saga.after_apply=1*off->1*crash", false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_completion_is_forced_keeps_the_change_and_sends_the_email() -> Result {
    crash_case("saga.after_completed_forced=1*crash", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_keeps_its_strategy() -> Result {
    let mut env = env_for(Strategy::Saga).await?;
    env.register("alice", "pw-0").await?;
    env.cluster.stop(Service::Coordinator).await?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tpc"))
        .args(["coordinator", "--listen", "127.0.0.1:0"])
        .args(["--internal-listen", "127.0.0.1:0", "--password"])
        .arg(env.cluster.internal_url(Service::Password))
        .arg("--history")
        .arg(env.cluster.internal_url(Service::History))
        .arg("--certs")
        .arg(env.cluster.certs_dir())
        .arg("--data-dir")
        .arg(env.cluster.data_dir(Service::Coordinator))
        .args(["--strategy", "2pc"])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("saga strategy"), "{stderr}");
    Ok(())
}
