//! The events strategy against real processes: the change is published once and delivered to each
//! consumer on its own, at least once, across consumer outages and a coordinator killed with deliveries
//! waiting; and the anomaly the design allows (a consumer refuses what the other applied) shows.

mod support;

use std::time::Duration;

use support::*;
use tpc_common::Strategy;
use tpc_harness::Service;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_change_reaches_every_consumer_and_the_mail_server() -> Result {
    let env = env_for(Strategy::Events).await?;
    let registered = env.register("alice", "pw-0").await?;
    assert!(committed(&registered), "{registered:?}");
    let changed = env.update("alice", "pw-0", "pw-1", "r1").await?;
    assert!(committed(&changed), "{changed:?}");
    env.assert_at_rest("alice", &[&changed.txn_id, &registered.txn_id])
        .await?;
    assert_eq!(env.mails_settle(2).await.len(), 2);
    let retry = env.update("alice", "pw-0", "pw-1", "r1").await?;
    assert_eq!(retry.txn_id, changed.txn_id);
    // The publisher checks nothing: a change of an unknown user is accepted, and each consumer
    // refuses it on its own (the e-mail consumer after looking for the address a few seconds).
    let unknown = env.update("bob", "x", "y", "").await?;
    assert!(committed(&unknown), "{unknown:?}");
    converge(&env).await;
    let listed = env.cluster.list_transactions().await?;
    let t = listed.iter().find(|t| t.txn_id == unknown.txn_id).unwrap();
    assert!(
        t.reason.contains("password refused: invalid credentials")
            && t.reason.contains("history refused: unknown user"),
        "{t:?}"
    );
    assert!(!t.email_error.is_empty(), "{t:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_refuses_leaves_the_user_divergent_and_the_email_wrong() -> Result {
    let env = env_for(Strategy::Events).await?;
    let registered = env.register("alice", "pw-0").await?;
    // A recently used password: the client hears "accepted"; the password consumer applies it, the
    // history consumer refuses it. Nothing undoes the first.
    let reused = env.update("alice", "pw-0", "pw-0", "").await?;
    assert!(committed(&reused), "{reused:?}");
    converge(&env).await;
    assert_eq!(env.version("alice").await?, reused.txn_id);
    assert_eq!(
        env.history("alice").await?,
        std::slice::from_ref(&registered.txn_id)
    );
    let mails = env.mails_settle(2).await;
    assert!(
        mails
            .iter()
            .any(|m| m.message_id() == Some(message_id(&reused.txn_id).as_str())),
        "the e-mail announces a change the history never took"
    );
    let listed = env.cluster.list_transactions().await?;
    let t = listed.iter().find(|t| t.txn_id == reused.txn_id).unwrap();
    assert!(t.reason.contains("history refused"), "{t:?}");
    assert_eq!(t.strategy, "events");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_wait_out_a_consumer_outage_and_a_coordinator_crash() -> Result {
    let mut env = env_for(Strategy::Events).await?;
    let registered = env.register("alice", "pw-0").await?;
    converge(&env).await;
    env.cluster.stop(Service::History).await?;
    let changed = env.update("alice", "pw-0", "pw-1", "").await?;
    assert!(committed(&changed), "accepted while a consumer is down");
    // Torn while it propagates: the password changed, the history not.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while env.version("alice").await? != changed.txn_id {
        assert!(
            tokio::time::Instant::now() < deadline,
            "password never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The coordinator dies with the history delivery waiting in its log.
    env.cluster.kill(Service::Coordinator).await?;
    env.cluster.start_service(Service::History).await?;
    assert_eq!(
        env.history("alice").await?,
        std::slice::from_ref(&registered.txn_id)
    );
    env.cluster.start_service(Service::Coordinator).await?;
    converge(&env).await;
    assert_eq!(
        env.history("alice").await?,
        [changed.txn_id.clone(), registered.txn_id.clone()]
    );
    assert_eq!(env.version("alice").await?, changed.txn_id);
    // The sealed delivery never put the password on disk in the clear.
    assert_no_plaintext(env.cluster.dir(), &["pw-0", "pw-1"]);
    Ok(())
}
