//! The real servers on turmoil's network: a password change commits across the three hosts, a change
//! cut off by a partition aborts and the next commits once it heals, and a commit survives `kill -9` of
//! every host.

use std::time::Duration;

use tonic::transport::Channel;
use tpc_proto::v1::password_reader_client::PasswordReaderClient;
use tpc_proto::v1::password_service_client::PasswordServiceClient;
use tpc_proto::v1::transaction_result::Outcome;
use tpc_proto::v1::{RegisterUserRequest, UpdatePasswordRequest, VerifyPasswordRequest};
use tpc_sim::cluster::{self, COORDINATOR, HISTORY, PASSWORD};
use tpc_sim::disks::Disks;

fn simulation<'a>(data: &std::path::Path, disks: &Disks) -> turmoil::Sim<'a> {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .build();
    cluster::add_services(&mut sim, data, disks, &Default::default());
    sim
}

fn coordinator() -> PasswordServiceClient<Channel> {
    PasswordServiceClient::new(cluster::public_channel(COORDINATOR))
}

/// Registers `user` with "first password", retrying until it commits (the services start in the
/// simulation too).
async fn register(user: &str) {
    let mut client = coordinator();
    loop {
        let result = client
            .register_user(RegisterUserRequest {
                user_id: user.into(),
                email: format!("{user}@example.com"),
                password: "first password".into(),
                request_id: format!("register-{user}"),
            })
            .await;
        if matches!(&result, Ok(r) if r.get_ref().outcome() == Outcome::Committed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Changes `user`'s password from "first password" to "second password", once.
async fn change(user: &str, request_id: &str) -> Result<Outcome, tonic::Status> {
    Ok(coordinator()
        .update_password(UpdatePasswordRequest {
            user_id: user.into(),
            current_password: "first password".into(),
            new_password: "second password".into(),
            request_id: request_id.into(),
        })
        .await?
        .get_ref()
        .outcome())
}

/// Runs `sim` until the client hosts added so far are done.
fn settle(sim: &mut turmoil::Sim<'_>) -> turmoil::Result {
    while !sim.step()? {}
    Ok(())
}

#[test]
fn a_password_change_commits_across_the_simulated_cluster() -> turmoil::Result {
    let data = tempfile::tempdir().unwrap();
    let mut sim = simulation(data.path(), &Disks::default());
    sim.client("client", async {
        register("alice").await;
        assert_eq!(change("alice", "change-1").await?, Outcome::Committed);
        Ok(())
    });
    sim.run()
}

#[test]
fn a_change_across_a_healed_partition_commits() -> turmoil::Result {
    let data = tempfile::tempdir().unwrap();
    let mut sim = simulation(data.path(), &Disks::default());
    sim.client("client", async {
        register("bob").await;
        Ok(())
    });
    settle(&mut sim)?;
    sim.partition(COORDINATOR, HISTORY);
    sim.client("changer", async {
        assert_eq!(change("bob", "change-1").await?, Outcome::Aborted);
        Ok(())
    });
    for _ in 0..5_000 {
        sim.step()?;
    }
    sim.repair(COORDINATOR, HISTORY);
    sim.client("later", async {
        while change("bob", "change-2").await.ok() != Some(Outcome::Committed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    });
    sim.run()
}

#[test]
fn a_commit_survives_kill_9_of_every_host_losing_what_was_not_forced() -> turmoil::Result {
    let data = tempfile::tempdir().unwrap();
    let disks = Disks::default();
    let mut sim = simulation(data.path(), &disks);
    sim.client("client", async {
        register("carol").await;
        assert_eq!(change("carol", "change-1").await?, Outcome::Committed);
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
            let request = VerifyPasswordRequest {
                user_id: "carol".into(),
                password: "second password".into(),
            };
            match reader.verify_password(request).await {
                Ok(v) => break v.into_inner(),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        assert!(
            verified.valid,
            "the committed change survived: {verified:?}"
        );
        // The same request again: the restarted coordinator remembers it committed.
        assert_eq!(change("carol", "change-1").await?, Outcome::Committed);
        Ok(())
    });
    sim.run()
}
