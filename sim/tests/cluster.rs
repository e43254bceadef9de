//! The real servers on turmoil's network: a password change commits across the three hosts, and
//! survives a partition that heals.

use std::time::Duration;

use tpc_proto::v1::password_service_client::PasswordServiceClient;
use tpc_proto::v1::transaction_result::Outcome;
use tpc_proto::v1::{RegisterUserRequest, UpdatePasswordRequest};
use tpc_sim::cluster::{self, COORDINATOR, HISTORY, PASSWORD};
use tpc_sim::disks::Disks;

#[test]
fn a_password_change_commits_across_the_simulated_cluster() -> turmoil::Result {
    let data = tempfile::tempdir().unwrap();
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .build();
    cluster::add_services(&mut sim, data.path(), &Disks::default());
    sim.client("client", async {
        let mut client = PasswordServiceClient::new(cluster::public_channel(COORDINATOR));
        let registered = loop {
            // The services start in the simulation too: retry until the coordinator answers.
            match client
                .register_user(RegisterUserRequest {
                    user_id: "alice".into(),
                    email: "alice@example.com".into(),
                    password: "first password".into(),
                    request_id: "register-alice".into(),
                })
                .await
            {
                Ok(result) => break result.into_inner(),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        assert_eq!(registered.outcome(), Outcome::Committed, "{registered:?}");
        let changed = client
            .update_password(UpdatePasswordRequest {
                user_id: "alice".into(),
                current_password: "first password".into(),
                new_password: "second password".into(),
                request_id: "change-1".into(),
            })
            .await?
            .into_inner();
        assert_eq!(changed.outcome(), Outcome::Committed, "{changed:?}");
        Ok(())
    });
    sim.run()
}

#[test]
fn a_change_across_a_healed_partition_commits() -> turmoil::Result {
    let data = tempfile::tempdir().unwrap();
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .build();
    cluster::add_services(&mut sim, data.path(), &Disks::default());
    sim.client("client", async {
        let mut client = PasswordServiceClient::new(cluster::public_channel(COORDINATOR));
        loop {
            let result = client
                .register_user(RegisterUserRequest {
                    user_id: "bob".into(),
                    email: "bob@example.com".into(),
                    password: "first password".into(),
                    request_id: "register-bob".into(),
                })
                .await;
            match result {
                Ok(r) if r.get_ref().outcome() == Outcome::Committed => break,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Ok(())
    });
    // Run until the registration committed, then cut the coordinator from the history participant.
    while !sim.step()? {}
    sim.partition(COORDINATOR, HISTORY);
    sim.client("changer", async {
        let mut client = PasswordServiceClient::new(cluster::public_channel(COORDINATOR));
        let first = client
            .update_password(UpdatePasswordRequest {
                user_id: "bob".into(),
                current_password: "first password".into(),
                new_password: "second password".into(),
                request_id: "change-1".into(),
            })
            .await?
            .into_inner();
        assert_eq!(first.outcome(), Outcome::Aborted, "{first:?}");
        Ok(())
    });
    for _ in 0..5_000 {
        sim.step()?;
    }
    sim.repair(COORDINATOR, HISTORY);
    sim.client("later", async {
        let mut client = PasswordServiceClient::new(cluster::public_channel(COORDINATOR));
        loop {
            let result = client
                .update_password(UpdatePasswordRequest {
                    user_id: "bob".into(),
                    current_password: "first password".into(),
                    new_password: "second password".into(),
                    request_id: "change-2".into(),
                })
                .await;
            match result {
                Ok(r) if r.get_ref().outcome() == Outcome::Committed => return Ok(()),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    sim.run()
}

/// Runs `sim` until the client hosts added so far are done.
fn settle(sim: &mut turmoil::Sim<'_>) -> turmoil::Result {
    while !sim.step()? {}
    Ok(())
}

#[test]
fn a_commit_survives_kill_9_of_every_host_losing_what_was_not_forced() -> turmoil::Result {
    use tpc_proto::v1::password_reader_client::PasswordReaderClient;
    use tpc_proto::v1::VerifyPasswordRequest;

    let data = tempfile::tempdir().unwrap();
    let disks = Disks::default();
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .build();
    cluster::add_services(&mut sim, data.path(), &disks);
    sim.client("client", async {
        let mut client = PasswordServiceClient::new(cluster::public_channel(COORDINATOR));
        loop {
            let result = client
                .register_user(RegisterUserRequest {
                    user_id: "carol".into(),
                    email: "carol@example.com".into(),
                    password: "first password".into(),
                    request_id: "register-carol".into(),
                })
                .await;
            if matches!(&result, Ok(r) if r.get_ref().outcome() == Outcome::Committed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let changed = client
            .update_password(UpdatePasswordRequest {
                user_id: "carol".into(),
                current_password: "first password".into(),
                new_password: "second password".into(),
                request_id: "change-1".into(),
            })
            .await?
            .into_inner();
        assert_eq!(changed.outcome(), Outcome::Committed, "{changed:?}");
        Ok(())
    });
    settle(&mut sim)?;
    for host in [COORDINATOR, PASSWORD, HISTORY] {
        disks.crash(host, 0);
        sim.crash(host);
    }
    for host in [COORDINATOR, PASSWORD, HISTORY] {
        sim.bounce(host);
    }
    sim.client("after", async {
        let mut reader = PasswordReaderClient::new(cluster::public_channel(PASSWORD));
        let verified = loop {
            match reader
                .verify_password(VerifyPasswordRequest {
                    user_id: "carol".into(),
                    password: "second password".into(),
                })
                .await
            {
                Ok(v) => break v.into_inner(),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        assert!(verified.valid, "the committed change survived: {verified:?}");
        // The same request again: the restarted coordinator remembers it committed.
        let mut client = PasswordServiceClient::new(cluster::public_channel(COORDINATOR));
        let again = client
            .update_password(UpdatePasswordRequest {
                user_id: "carol".into(),
                current_password: "first password".into(),
                new_password: "second password".into(),
                request_id: "change-1".into(),
            })
            .await?
            .into_inner();
        assert_eq!(again.outcome(), Outcome::Committed, "{again:?}");
        Ok(())
    });
    sim.run()
}
