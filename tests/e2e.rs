//! End to end: the three services as separate processes on real loopback ports, a real SMTP server,
//! driven through gRPC like any client would.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::*;
use tonic::Code;
use tpc_harness::Service;
use tpc_proto::v1::{
    GetTransactionRequest, ListTransactionsRequest, QueryDecisionRequest, RegisterUserRequest,
    query_decision_response, transaction, transaction_result,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_change_reaches_both_services_and_sends_one_mail() -> Result {
    let env = env().await?;
    let reg = env.register("alice", "first-secret-pw").await?;
    assert!(committed(&reg), "{reg:?}");
    let upd = env
        .update("alice", "first-secret-pw", "second-secret-pw", "")
        .await?;
    assert!(committed(&upd), "{upd:?}");

    assert_eq!(env.version("alice").await?, upd.txn_id);
    assert_eq!(
        env.history("alice").await?,
        [upd.txn_id.clone(), reg.txn_id.clone()]
    );
    assert!(env.verify("alice", "second-secret-pw").await?);
    assert!(!env.verify("alice", "first-secret-pw").await?);

    let mails = env.mails_settle(2).await;
    assert_eq!(mails.len(), 2, "{mails:?}");
    let ids: Vec<_> = mails
        .iter()
        .map(|m| m.message_id().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, [message_id(&reg.txn_id), message_id(&upd.txn_id)]);
    assert_eq!(mails[0].header("Subject"), Some("Your account was created"));
    assert_eq!(
        mails[1].header("Subject"),
        Some("Your password was changed")
    );
    assert_eq!(mails[1].to, ["alice@example.com"]);
    assert!(mails[1].data.contains("Not you?"));

    let mut tm = env.cluster.transactions().await?;
    let shown = tm
        .get_transaction(GetTransactionRequest {
            txn_id: upd.txn_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(shown.kind, "update");
    assert_eq!(shown.user_id, "alice");
    // What a participant in doubt asks (with its own certificate).
    let as_participant = env
        .cluster
        .internal_channel(Service::Coordinator, tpc_common::Principal::Password)
        .await?;
    let decision =
        tpc_proto::v1::transaction_manager_client::TransactionManagerClient::new(as_participant)
            .query_decision(QueryDecisionRequest {
                txn_id: upd.txn_id.clone(),
            })
            .await?
            .into_inner();
    assert_eq!(
        decision.decision(),
        query_decision_response::Decision::Committed
    );

    for mail in &mails {
        assert!(!mail.data.contains("secret-pw"), "password in e-mail");
    }
    let mut env = env;
    env.cluster.shutdown().await?;
    assert_no_plaintext(env.cluster.dir(), &["first-secret-pw", "second-secret-pw"]);
    // Every service's log carries the transaction's id, so one change can be followed across them.
    for service in Service::ALL {
        let log = std::fs::read_to_string(env.cluster.log_file(service))?;
        assert!(
            log.contains(&upd.txn_id),
            "{} log lacks txn_id {}",
            service.name(),
            upd.txn_id
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_no_vote_aborts_without_effect_and_without_mail() -> Result {
    let env = env().await?;
    let reg = env.register("bob", "bob-pw-1").await?;
    let upd = env.update("bob", "bob-pw-1", "bob-pw-2", "").await?;
    assert!(committed(&reg) && committed(&upd));
    env.mails_settle(2).await;

    let cases = [
        (
            env.update("bob", "wrong-pw", "bob-pw-3", "").await?,
            "invalid credentials",
        ),
        (
            env.update("bob", "bob-pw-2", "bob-pw-1", "").await?,
            "password was used recently",
        ),
        (
            env.update("bob", "bob-pw-2", "bob-pw-2", "").await?,
            "password was used recently",
        ),
        // The same answer as a wrong password: which user ids exist is nobody's business.
        (
            env.update("nobody", "x", "y", "").await?,
            "invalid credentials",
        ),
        (env.register("bob", "another-pw").await?, "user exists"),
    ];
    for (result, reason) in &cases {
        assert_eq!(
            result.outcome(),
            transaction_result::Outcome::Aborted,
            "{result:?}"
        );
        assert_eq!(result.reason, *reason);
    }
    assert_eq!(env.version("bob").await?, upd.txn_id);
    assert_eq!(
        env.history("bob").await?,
        [upd.txn_id.clone(), reg.txn_id.clone()]
    );
    assert!(env.verify("bob", "bob-pw-2").await?);
    assert_eq!(env.mails_settle(3).await.len(), 2, "no e-mail for an abort");

    let aborted = env
        .cluster
        .transactions()
        .await?
        .list_transactions(ListTransactionsRequest {
            state: transaction::State::Aborted.into(),
            limit: 0,
            ..Default::default()
        })
        .await?
        .into_inner()
        .transactions;
    assert_eq!(aborted.len(), cases.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_returns_the_first_outcome() -> Result {
    let env = env().await?;
    env.register("carol", "carol-pw-1").await?;
    let first = env
        .update("carol", "carol-pw-1", "carol-pw-2", "req-42")
        .await?;
    // The retry carries the old current password: run again, it would abort. It must not run again.
    let retry = env
        .update("carol", "carol-pw-1", "carol-pw-2", "req-42")
        .await?;
    assert!(committed(&first));
    assert_eq!(retry.txn_id, first.txn_id);
    assert!(committed(&retry));
    assert_eq!(retry.request_id, "req-42");
    assert_eq!(env.history("carol").await?.len(), 2);
    // The same key with another new password is another request: refused, not answered "committed"
    // (which would make the caller believe the second password is set).
    let other = env
        .update("carol", "carol-pw-1", "carol-pw-3", "req-42")
        .await
        .unwrap_err()
        .downcast::<tonic::Status>()
        .map_err(|e| e.to_string())?;
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
    assert!(env.verify("carol", "carol-pw-2").await?);
    // The same key for someone else's request is refused, not answered with carol's outcome.
    env.register("dan", "dan-pw-1").await?;
    let reused = env.update("dan", "dan-pw-1", "dan-pw-2", "req-42").await;
    let status = reused
        .unwrap_err()
        .downcast::<tonic::Status>()
        .map_err(|e| e.to_string())?;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        env.verify("dan", "dan-pw-1").await?,
        "dan's password is unchanged"
    );
    let mails = env.mails_settle(4).await;
    assert_eq!(
        mails.len(),
        3,
        "carol's registration and update, dan's registration"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_of_one_user_commit_exactly_once() -> Result {
    let env = std::sync::Arc::new(env().await?);
    env.register("dave", "dave-pw-0").await?;
    let mut tasks = Vec::new();
    for i in 1..=8 {
        let env = env.clone();
        tasks.push(tokio::spawn(async move {
            env.update("dave", "dave-pw-0", &format!("dave-pw-{i}"), "")
                .await
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let result = task.await??;
        if committed(&result) {
            winners.push(result.txn_id);
        } else {
            assert!(
                result.reason.starts_with("conflict") || result.reason == "invalid credentials",
                "{result:?}"
            );
        }
    }
    assert_eq!(winners.len(), 1, "exactly one update commits");
    assert_eq!(env.version("dave").await?, winners[0]);
    assert_eq!(env.history("dave").await?.len(), 2);
    assert_eq!(env.mails_settle(3).await.len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_of_every_service_keeps_committed_data() -> Result {
    let mut env = env().await?;
    let reg = env.register("erin", "erin-pw-1").await?;
    let upd = env.update("erin", "erin-pw-1", "erin-pw-2", "").await?;
    assert!(committed(&reg) && committed(&upd));
    env.mails_settle(2).await;
    for service in Service::ALL {
        env.cluster.kill(service).await?;
    }
    for service in Service::ALL {
        env.cluster.start_service(service).await?;
    }
    assert_eq!(env.version("erin").await?, upd.txn_id);
    assert_eq!(
        env.history("erin").await?,
        [upd.txn_id.clone(), reg.txn_id.clone()]
    );
    assert!(env.verify("erin", "erin-pw-2").await?);
    let retry = env
        .update("erin", "erin-pw-1", "erin-pw-2", &upd.request_id)
        .await?;
    assert_eq!(
        retry.txn_id, upd.txn_id,
        "the request id survives the restart"
    );
    let again = env.update("erin", "erin-pw-2", "erin-pw-3", "").await?;
    assert!(committed(&again), "{again:?}");
    let mails = env.mails_settle(3).await;
    let ids: HashSet<_> = mails.iter().filter_map(|m| m.message_id()).collect();
    assert_eq!(ids.len(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_the_commit_point_is_finished_by_recovery() -> Result {
    let mut env = env().await?;
    env.register("frank", "frank-pw-1").await?;
    env.cluster.stop(Service::Coordinator).await?;
    env.cluster
        .start_with_fail_points(Service::Coordinator, "coord.after_decision_forced=crash")
        .await?;
    let lost = env
        .update("frank", "frank-pw-1", "frank-pw-2", "frank-req")
        .await;
    assert!(
        lost.is_err(),
        "the coordinator died before answering: {lost:?}"
    );
    let status = env
        .cluster
        .wait_exit(Service::Coordinator, Duration::from_secs(5))
        .await?;
    assert!(!status.success());

    // Both participants are in doubt: a reader waits, then gives up.
    assert_eq!(env.get_user_code("frank").await?, Code::Unavailable);

    env.cluster.start_service(Service::Coordinator).await?;
    let retry = env
        .update("frank", "frank-pw-1", "frank-pw-2", "frank-req")
        .await?;
    assert!(committed(&retry), "the forced decision stands: {retry:?}");
    assert_eq!(env.version("frank").await?, retry.txn_id);
    assert!(env.verify("frank", "frank-pw-2").await?);
    let mails = env.mails_settle(2).await;
    let for_txn = mails
        .iter()
        .filter(|m| m.message_id() == Some(&message_id(&retry.txn_id)))
        .count();
    assert_eq!(for_txn, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_waits_in_the_outbox_while_the_smtp_server_is_down() -> Result {
    let mut env = env().await?;
    env.mail.stop();
    let reg = env.register("gina", "gina-pw-1").await?;
    assert!(committed(&reg), "the commit does not wait for e-mail");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.mail.mails().is_empty());
    env.mail.resume().await?;
    let mails = env.mails_settle(1).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(
        mails[0].message_id(),
        Some(message_id(&reg.txn_id).as_str())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_status_and_changes_nothing() -> Result {
    let env = env().await?;
    let mut client = env.cluster.client().await?;
    let register = |user: &str, email: &str, password: String| RegisterUserRequest {
        user_id: user.into(),
        email: email.into(),
        password,
        request_id: String::new(),
    };
    let bad = [
        register("", "a@example.com", "pw".into()),
        register("has space", "a@example.com", "pw".into()),
        register(&"x".repeat(65), "a@example.com", "pw".into()),
        register("ok", "not-an-address", "pw".into()),
        register("ok", "a@example.com", String::new()),
        register("ok", "a@example.com", "p".repeat(1025)),
    ];
    for request in bad {
        let status = client.register_user(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    let huge = client
        .register_user(register("ok", "a@example.com", "p".repeat(100_000)))
        .await;
    let code = huge.map(|_| Code::Ok).unwrap_or_else(|s| s.code());
    assert_eq!(
        code,
        Code::OutOfRange,
        "an oversized message is refused before any handler"
    );

    let mut tm = env.cluster.transactions().await?;
    let status = tm
        .get_transaction(GetTransactionRequest {
            txn_id: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = tm
        .get_transaction(GetTransactionRequest {
            txn_id: uuid_like(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(env.get_user_code("ghost").await?, Code::NotFound);
    // Verifying an unknown user's password is a plain "no", like a wrong password.
    assert!(!env.verify("ghost", "anything").await?);

    // Garbage bytes on every service's socket: the services keep serving.
    for service in Service::ALL {
        use tokio::io::AsyncWriteExt;
        let addr = env
            .cluster
            .url(service)
            .trim_start_matches("http://")
            .to_owned();
        let mut socket = tokio::net::TcpStream::connect(addr).await?;
        socket
            .write_all(b"\x16\x03\x01 GET / HTTP/1.1\r\n\r\n\xff\xfe garbage")
            .await?;
        drop(socket);
    }
    assert!(committed(&env.register("ok", "pw-after-garbage").await?));
    assert_eq!(
        env.cluster
            .transactions()
            .await?
            .list_transactions(ListTransactionsRequest::default())
            .await?
            .into_inner()
            .transactions
            .len(),
        1,
        "only the valid request became a transaction"
    );
    // An unknown enum value is an error, not "all".
    let status = env
        .cluster
        .transactions()
        .await?
        .list_transactions(ListTransactionsRequest {
            state: 42,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    Ok(())
}

/// The listing pages through the log: each page starts below the last id of the one before, and the
/// pages together are the whole log, newest first, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_pages_through_the_whole_log() -> Result {
    let env = env().await?;
    for i in 0..5 {
        assert!(committed(
            &env.register(&format!("page{i}"), "paging-pw-0").await?
        ));
    }
    let mut client = env.cluster.transactions().await?;
    let whole = client
        .list_transactions(ListTransactionsRequest::default())
        .await?
        .into_inner()
        .transactions;
    assert_eq!(whole.len(), 5);
    let mut paged = Vec::new();
    loop {
        let page = client
            .list_transactions(ListTransactionsRequest {
                limit: 2,
                before: paged
                    .last()
                    .map(|t: &tpc_proto::v1::Transaction| t.txn_id.clone())
                    .unwrap_or_default(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .transactions;
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        paged.extend(page);
        assert!(paged.len() <= 5, "a page came again");
    }
    let ids = |ts: &[tpc_proto::v1::Transaction]| -> Vec<String> {
        ts.iter().map(|t| t.txn_id.clone()).collect()
    };
    assert_eq!(ids(&paged), ids(&whole));
    let status = client
        .list_transactions(ListTransactionsRequest {
            before: "not-a-txn".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_in_doubt_learn_presumed_abort_from_the_restarted_coordinator() -> Result {
    let mut env = env().await?;
    let reg = env.register("hana", "hana-pw-1").await?;
    env.mails_settle(1).await;
    env.cluster.stop(Service::Coordinator).await?;
    // Dies with every vote in and nothing forced: both participants prepared, nobody decided.
    env.cluster
        .start_with_fail_points(Service::Coordinator, "coord.after_votes=crash")
        .await?;
    let lost = env
        .update("hana", "hana-pw-1", "hana-pw-2", "hana-req")
        .await;
    assert!(lost.is_err());
    env.cluster
        .wait_exit(Service::Coordinator, Duration::from_secs(5))
        .await?;

    env.cluster.start_service(Service::Coordinator).await?;
    let started = std::time::Instant::now();
    // The participants ask, hear "aborted" (presumed abort), and release the user.
    assert_eq!(env.version("hana").await?, reg.txn_id);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "in doubt for {:?}",
        started.elapsed()
    );
    assert!(env.verify("hana", "hana-pw-1").await?);
    assert_eq!(
        env.history("hana").await?,
        std::slice::from_ref(&reg.txn_id)
    );
    // The request may run again: abort means nothing happened.
    let retry = env
        .update("hana", "hana-pw-1", "hana-pw-2", "hana-req")
        .await?;
    assert!(committed(&retry), "{retry:?}");
    assert_eq!(
        env.mails_settle(2).await.len(),
        2,
        "no e-mail for the forgotten transaction"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_refuse_malformed_protocol_messages() -> Result {
    use tpc_proto::v1::{CommitRequest, PrepareRequest, Register, prepare_request};

    let env = env().await?;
    for service in [Service::Password, Service::History] {
        let mut participant = env.cluster.participant(service).await?;
        let register = prepare_request::Operation::Register(Register {
            user_id: "ivan".into(),
            email: "ivan@example.com".into(),
            password: "pw".into(),
        });
        let cases = [
            PrepareRequest {
                txn_id: "not-a-txn".into(),
                operation: Some(register.clone()),
            },
            PrepareRequest {
                txn_id: uuid_like(),
                operation: None,
            },
            PrepareRequest {
                txn_id: uuid_like(),
                operation: Some(prepare_request::Operation::Register(Register {
                    user_id: "ivan".into(),
                    email: "ivan@example.com".into(),
                    password: String::new(),
                })),
            },
        ];
        for request in cases {
            let status = participant.prepare(request).await.unwrap_err();
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{} {status:?}",
                service.name()
            );
        }
        let status = participant
            .commit(CommitRequest { txn_id: "x".into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    // Nothing was prepared, so ivan is unknown and unlocked.
    assert_eq!(env.get_user_code("ivan").await?, Code::NotFound);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_transaction_on_its_own() -> Result {
    use tpc_proto::v1::{PrepareBatchRequest, PrepareRequest, Register, TxnBatch, prepare_request};

    let env = env().await?;
    env.register("judy", "judys-first-pw").await?;
    let mut participant = env.cluster.participant(Service::Password).await?;
    let register = |user: &str, password: &str| {
        Some(prepare_request::Operation::Register(Register {
            user_id: user.into(),
            email: format!("{user}@example.com"),
            password: password.into(),
        }))
    };
    let (good, exists) = (uuid_like(), uuid_like());
    let prepares = vec![
        PrepareRequest {
            txn_id: good.clone(),
            operation: register("karl", "karls-first-pw"),
        },
        PrepareRequest {
            txn_id: "not-a-txn".into(),
            operation: register("lena", "lenas-first-pw"),
        },
        PrepareRequest {
            txn_id: exists.clone(),
            operation: register("judy", "another-pw"),
        },
    ];
    let results = participant
        .prepare_batch(PrepareBatchRequest { prepares })
        .await?
        .into_inner()
        .results;
    let codes: Vec<i32> = results
        .iter()
        .map(|r| r.status.as_ref().map_or(-1, |s| s.code))
        .collect();
    assert_eq!(
        codes,
        [
            Code::Ok as i32,
            Code::InvalidArgument as i32,
            Code::Ok as i32
        ],
        "{results:?}"
    );
    let votes: Vec<i32> = results
        .iter()
        .map(|r| r.vote.as_ref().map_or(0, |v| v.vote))
        .collect();
    assert_eq!(votes, [1, 0, 2], "yes, none, no (user exists): {results:?}");

    // Phase two in a batch: the good one aborts, an unknown id acks (it may be a late Abort), garbage
    // gets its own INVALID_ARGUMENT.
    let results = participant
        .abort_batch(TxnBatch {
            txn_ids: vec![good, uuid_like(), "garbage".into()],
        })
        .await?
        .into_inner()
        .results;
    let codes: Vec<i32> = results.iter().map(|s| s.code).collect();
    assert_eq!(
        codes,
        [
            Code::Ok as i32,
            Code::Ok as i32,
            Code::InvalidArgument as i32
        ]
    );
    assert_eq!(env.get_user_code("karl").await?, Code::NotFound, "aborted");

    // A batch larger than the limit is refused whole.
    let status = participant
        .commit_batch(TxnBatch {
            txn_ids: (0..=tpc_proto::MAX_BATCH).map(|_| uuid_like()).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_has_health_and_lists_its_services_by_reflection() -> Result {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let env = env().await?;
    let public = tonic::transport::Channel::from_shared;
    // Each listener reports its own services as serving, and lists them by reflection.
    let expected = [
        (Service::Coordinator, false, "tpc.v1.PasswordService"),
        (Service::Coordinator, true, "tpc.v1.TransactionManager"),
        (Service::Password, false, "tpc.v1.PasswordReader"),
        (Service::Password, true, "tpc.v1.Participant"),
        (Service::History, false, "tpc.v1.HistoryReader"),
        (Service::History, true, "tpc.v1.Participant"),
    ];
    for (service, internal, name) in expected {
        let channel = if internal {
            env.cluster
                .internal_channel(service, tpc_common::Principal::Admin)
                .await?
        } else {
            public(env.cluster.url(service))?.connect().await?
        };
        for name in ["", name] {
            let status = HealthClient::new(channel.clone())
                .check(HealthCheckRequest {
                    service: name.into(),
                })
                .await?
                .into_inner();
            assert_eq!(
                status.status(),
                ServingStatus::Serving,
                "{} {name:?}",
                service.name()
            );
        }
        // What `grpcurl list` asks.
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let channel_again = channel.clone();
        let mut replies = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await?
            .into_inner();
        let Some(reply) = replies.message().await? else {
            return Err("no reflection reply".into());
        };
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            return Err("unexpected reflection reply".into());
        };
        let listed: HashSet<String> = list.service.into_iter().map(|s| s.name).collect();
        // The older version, which some tools still speak.
        let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(
                    String::new(),
                ),
            ),
        };
        let mut replies =
            tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(
                channel_again,
            )
            .server_reflection_info(tokio_stream::iter([request]))
            .await?
            .into_inner();
        let Some(reply) = replies.message().await? else {
            return Err("no v1alpha reflection reply".into());
        };
        let Some(
            tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(
                old,
            ),
        ) = reply.message_response
        else {
            return Err("unexpected v1alpha reflection reply".into());
        };
        assert!(
            old.service.iter().any(|s| s.name == name),
            "{} v1alpha lists {:?}",
            service.name(),
            old.service
        );
        for name in [
            name,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                listed.contains(name),
                "{} lists {listed:?}, not {name}",
                service.name()
            );
        }
    }
    Ok(())
}

/// No `RUST_LOG` makes a store log what it stores: at `trace`, the logs hold no argon2 hash and no
/// password (sled's trace lines print the values it reads and writes; tpc caps it at `info`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn even_a_trace_log_holds_no_hash_and_no_password() -> Result {
    let env = env_with(tpc_harness::ClusterOptions {
        rust_log: Some("trace".into()),
        ..Default::default()
    })
    .await?;
    env.register("alice", "trace-secret-0").await?;
    env.update("alice", "trace-secret-0", "trace-secret-1", "")
        .await?;
    assert!(env.verify("alice", "trace-secret-1").await?);
    converge(&env).await;
    for service in tpc_harness::Service::ALL {
        let log = std::fs::read_to_string(env.cluster.log_file(service))?;
        assert!(
            log.contains("TRACE"),
            "{} logged at trace level",
            service.name()
        );
        // As text, or as sled prints a value: its bytes in decimal ("$argon2" = 36, 97, 114, …).
        let as_bytes = "$argon2"
            .bytes()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        for hash in ["$argon2", as_bytes.as_str()] {
            assert!(
                !log.contains(hash),
                "{}'s trace log holds an argon2 hash ({hash})",
                service.name()
            );
        }
        for secret in ["trace-secret-0", "trace-secret-1"] {
            assert!(
                !log.contains(secret),
                "{}'s trace log holds a password",
                service.name()
            );
        }
    }
    Ok(())
}

/// Guessing is throttled per user and client address: after the free wrong passwords, an address
/// waits (`RESOURCE_EXHAUSTED`, with the wait as `grpc-retry-pushback-ms`) and costs no argon2 work;
/// the owner, calling from another address, changes the password at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_are_throttled_per_address_and_the_owner_elsewhere_is_not() -> Result {
    use tpc_proto::v1::UpdatePasswordRequest;
    let env = env_with(tpc_harness::ClusterOptions {
        throttle_guesses: true,
        ..Default::default()
    })
    .await?;
    env.register("erin", "erin-pw-1").await?;
    let guess = |i: usize| UpdatePasswordRequest {
        user_id: "erin".into(),
        current_password: format!("guess-{i}"),
        new_password: "erin-pw-9".into(),
        request_id: String::new(),
    };
    let mut attacker = client_from(&env, 2).await?;
    let mut throttled = 0;
    for i in 0..10 {
        match attacker.update_password(guess(i)).await {
            Ok(r) => {
                let r = r.into_inner();
                assert_eq!(r.reason, "invalid credentials", "guess {i}: {r:?}");
                assert!(i < 6, "guess {i} should have been throttled");
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.metadata().get("grpc-retry-pushback-ms").is_some(),
                    "{status:?}"
                );
                throttled += 1;
            }
        }
    }
    assert_eq!(throttled, 4, "the free guesses, then the wait");
    let mut owner = client_from(&env, 3).await?;
    let changed = owner
        .update_password(UpdatePasswordRequest {
            user_id: "erin".into(),
            current_password: "erin-pw-1".into(),
            new_password: "erin-pw-2".into(),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    assert!(committed(&changed), "{changed:?}");
    Ok(())
}

/// A participant's `Prepare` repeated under the same transaction id with another payload is not a
/// retry: it votes no and the prepared change stays as it was.
/// Wrong guesses in flight for a user (from another address) do not make the owner's change conflict:
/// it waits for them and commits. (Guesses are not throttled here, so that they overlap the owner's
/// change every round; throttling is the test above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_in_flight_never_make_the_owners_change_conflict() -> Result {
    use tpc_proto::v1::UpdatePasswordRequest;
    // At the secure cost a guess holds the user for a whole argon2 verification.
    let env = env_with(tpc_harness::ClusterOptions {
        owasp_cost: true,
        ..Default::default()
    })
    .await?;
    env.register("frank", "frank-pw-0").await?;
    let attacker = client_from(&env, 2).await?;
    let mut owner = client_from(&env, 3).await?;
    for round in 0..4 {
        let guesses: Vec<_> = (0..3)
            .map(|i| {
                let mut attacker = attacker.clone();
                tokio::spawn(async move {
                    attacker
                        .update_password(UpdatePasswordRequest {
                            user_id: "frank".into(),
                            current_password: format!("guess-{round}-{i}"),
                            new_password: "franks-stolen-pw".into(),
                            request_id: String::new(),
                        })
                        .await
                })
            })
            .collect();
        // The guesses are on their way; the owner changes the password meanwhile.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let changed = owner
            .update_password(UpdatePasswordRequest {
                user_id: "frank".into(),
                current_password: format!("frank-pw-{round}"),
                new_password: format!("frank-pw-{}", round + 1),
                request_id: String::new(),
            })
            .await?
            .into_inner();
        assert!(committed(&changed), "round {round}: {changed:?}");
        for guess in guesses {
            let answer = guess.await??.into_inner();
            assert_eq!(answer.reason, "invalid credentials", "{answer:?}");
        }
    }
    assert!(env.verify("frank", "frank-pw-4").await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_prepare_with_another_payload_votes_no() -> Result {
    use tpc_proto::v1::{AbortRequest, PrepareRequest, Update, prepare_request, prepare_response};
    let env = env().await?;
    env.register("fay", "fay-pw-1").await?;
    // The registration's phase two finishes after its client was answered: let it release fay.
    converge(&env).await;
    let mut password = env.cluster.participant(Service::Password).await?;
    let txn = uuid_like();
    let prepare = |new: &str| PrepareRequest {
        txn_id: txn.clone(),
        operation: Some(prepare_request::Operation::Update(Update {
            user_id: "fay".into(),
            current_password: "fay-pw-1".into(),
            new_password: new.into(),
        })),
    };
    let first = password.prepare(prepare("fay-pw-2")).await?.into_inner();
    assert_eq!(first.vote(), prepare_response::Vote::Yes, "{first:?}");
    let retry = password.prepare(prepare("fay-pw-2")).await?.into_inner();
    assert_eq!(
        retry.vote(),
        prepare_response::Vote::Yes,
        "the same request"
    );
    let other = password.prepare(prepare("fay-pw-3")).await?.into_inner();
    assert_eq!(other.vote(), prepare_response::Vote::No, "{other:?}");
    assert!(other.reason.contains("another request"), "{other:?}");
    password
        .abort(AbortRequest {
            txn_id: txn.clone(),
        })
        .await?;
    assert!(env.verify("fay", "fay-pw-1").await?);
    Ok(())
}

/// The outbox: an e-mail the server refuses for good (550) is parked with the reason, shown by
/// `GetTransaction`; one refused for now (451) is retried on its own backoff; neither holds up the
/// e-mails of other changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_e_mail_is_parked_and_never_holds_up_the_others() -> Result {
    use std::time::{Duration, Instant};
    use tpc_proto::v1::RegisterUserRequest;
    let env = env().await?;
    let mut client = env.cluster.client().await?;
    let register = |user: &str, email: String| RegisterUserRequest {
        user_id: user.into(),
        email,
        password: format!("{user}-pw"),
        request_id: String::new(),
    };
    let refused = client
        .register_user(register(
            "mallory",
            format!("{}@example.com", tpc_harness::REFUSED_MAILBOX),
        ))
        .await?
        .into_inner();
    let busy = client
        .register_user(register(
            "oscar",
            format!("{}@example.com", tpc_harness::BUSY_MAILBOX),
        ))
        .await?
        .into_inner();
    assert!(committed(&refused) && committed(&busy));
    // Long enough for the busy e-mail's backoff to reach its cap.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for i in 0..5 {
        let user = format!("peer{i}");
        let started = Instant::now();
        let result = client
            .register_user(register(&user, format!("{user}@example.com")))
            .await?
            .into_inner();
        assert!(committed(&result));
        let to = format!("{user}@example.com");
        while !env.mail.mails().iter().any(|m| m.to.contains(&to)) {
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "{user}'s e-mail waited behind the refused ones"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut tm = env.cluster.transactions().await?;
    let parked = tm
        .get_transaction(GetTransactionRequest {
            txn_id: refused.txn_id.clone(),
        })
        .await?
        .into_inner();
    assert!(!parked.email_sent);
    assert!(
        parked.email_error.contains("refused by the mail server")
            && parked.email_error.contains("550"),
        "{parked:?}"
    );
    let waiting = tm
        .get_transaction(GetTransactionRequest {
            txn_id: busy.txn_id.clone(),
        })
        .await?
        .into_inner();
    assert!(
        !waiting.email_sent && waiting.email_error.is_empty(),
        "{waiting:?}"
    );
    assert_eq!(
        env.mail.mails().len(),
        5,
        "only the five deliverable e-mails"
    );
    Ok(())
}
