//! The real servers on turmoil's network: a password change commits across the three hosts, a change
//! cut off by a partition aborts and the next commits once it heals, a commit survives `kill -9` of
//! every host, and a participant whose disk fails stops itself, its change settling one way everywhere.

use std::time::Duration;

use tonic::transport::Channel;
use tpc_harness::Inbox;
use tpc_proto::v1::password_reader_client::PasswordReaderClient;
use tpc_proto::v1::password_service_client::PasswordServiceClient;
use tpc_proto::v1::transaction_result::Outcome;
use tpc_proto::v1::{RegisterUserRequest, UpdatePasswordRequest, VerifyPasswordRequest};
use tpc_sim::cluster::{self, COORDINATOR, HISTORY, PASSWORD};
use tpc_sim::disks::Disks;

/// A cluster on `disks`, and the simulation switch (one test at a time: it is process-wide).
fn simulation<'a>(
    data: &std::path::Path,
    disks: &Disks,
) -> (turmoil::Sim<'a>, tpc_sim::simulation::Entered) {
    simulation_mailing(data, disks, &Inbox::default())
}

/// The same, its mail server's e-mails in `mail`.
fn simulation_mailing<'a>(
    data: &std::path::Path,
    disks: &Disks,
    mail: &Inbox,
) -> (turmoil::Sim<'a>, tpc_sim::simulation::Entered) {
    let entered = tpc_sim::simulation::enter(7);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .build();
    cluster::add_services(&mut sim, data, disks, &Default::default(), mail);
    (sim, entered)
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
fn a_password_change_commits_across_the_simulated_cluster_and_mails_the_user() -> turmoil::Result {
    let data = tempfile::tempdir().unwrap();
    let mail = Inbox::default();
    let (mut sim, _simulated) = simulation_mailing(data.path(), &Disks::default(), &mail);
    sim.client("client", async {
        register("alice").await;
        assert_eq!(change("alice", "change-1").await?, Outcome::Committed);
        Ok(())
    });
    sim.run()?;
    // The outbox sends after the commit point: wait for the registration's and the change's e-mails.
    sim.client("postman", {
        let mail = mail.clone();
        async move {
            while mail.lock().unwrap().len() < 2 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        }
    });
    sim.run()?;
    let mail = mail.lock().unwrap();
    assert!(
        mail.iter()
            .all(|m| m.to == ["alice@example.com"] && m.message_id().is_some()),
        "{:?}",
        mail.iter().map(|m| &m.to).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn a_change_across_a_healed_partition_commits() -> turmoil::Result {
    let data = tempfile::tempdir().unwrap();
    let (mut sim, _simulated) = simulation(data.path(), &Disks::default());
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
    let (mut sim, _simulated) = simulation(data.path(), &disks);
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

#[test]
fn a_participant_whose_disk_fails_stops_itself_and_its_change_settles_one_way() -> turmoil::Result {
    let data = tempfile::tempdir().unwrap();
    let disks = Disks::default();
    let (mut sim, _simulated) = simulation(data.path(), &disks);
    sim.client("client", async {
        register("dave").await;
        Ok(())
    });
    settle(&mut sim)?;
    assert_eq!(tpc_common::simulation::take_aborts(), 0);

    // The change cannot be forced while the disk fails; the coordinator may prepare it again on the
    // restarted participant within its deadline, so either outcome may come back, as long as the
    // answers and the password in effect agree.
    disks.break_down(PASSWORD, true);
    let first: std::rc::Rc<std::cell::Cell<Option<Outcome>>> = Default::default();
    let answered = first.clone();
    sim.client("changer", async move {
        answered.set(change("dave", "change-1").await.ok());
        Ok(())
    });
    // Under the simulation switch the participant's stop unwinds and is counted, instead of aborting
    // this test's process; the test then crashes it, as the simulator does.
    let mut stopped = false;
    for _ in 0..20_000 {
        sim.step()?;
        if tpc_common::simulation::take_aborts() > 0 {
            stopped = true;
            break;
        }
    }
    assert!(
        stopped,
        "the password participant kept running on a failing disk"
    );
    disks.crash(PASSWORD, 0);
    sim.crash(PASSWORD);
    sim.bounce(PASSWORD);
    settle(&mut sim)?;

    sim.client("later", async move {
        let outcome = loop {
            match change("dave", "change-1").await {
                Ok(outcome) => break outcome,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        // A committed request stays committed; an aborted one may run again (abort means nothing
        // happened: docs/protocol.md).
        if first.get() == Some(Outcome::Committed) {
            assert_eq!(
                outcome,
                Outcome::Committed,
                "a committed request asked again"
            );
        }
        let mut reader = PasswordReaderClient::new(cluster::public_channel(PASSWORD));
        let verified = reader
            .verify_password(VerifyPasswordRequest {
                user_id: "dave".into(),
                password: "second password".into(),
            })
            .await?
            .into_inner();
        assert_eq!(
            verified.valid,
            outcome == Outcome::Committed,
            "change-1 ended {outcome:?}; the new password is in effect: {}",
            verified.valid
        );
        Ok(())
    });
    sim.run()?;
    assert_eq!(tpc_common::simulation::take_aborts(), 0);
    Ok(())
}
