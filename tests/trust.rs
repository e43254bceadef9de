//! Trust boundaries, against real processes: the protocol and the admin calls only on the internal
//! listeners, each only for the certificates that need it; TLS for clients on the public listener.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tpc_common::Principal;
use tpc_harness::Service;
use tpc_proto::v1::participant_client::ParticipantClient;
use tpc_proto::v1::transaction_manager_client::TransactionManagerClient;
use tpc_proto::v1::{
    AbortRequest, CommitRequest, GetTransactionRequest, ListTransactionsRequest, PrepareRequest,
    QueryDecisionRequest, Register, StatusRequest, prepare_request,
};

fn prepare_mallory(txn_id: &str) -> PrepareRequest {
    PrepareRequest {
        txn_id: txn_id.into(),
        operation: Some(prepare_request::Operation::Register(Register {
            user_id: "mallory".into(),
            email: "mallory@example.com".into(),
            password: "mallorys-pw".into(),
        })),
    }
}

/// Everything a stranger could try on a participant: each call must fail with `expected`.
async fn participant_calls_fail(mut participant: ParticipantClient<Channel>, expected: Code) {
    let txn = uuid_like();
    let codes = [
        participant.prepare(prepare_mallory(&txn)).await.map(drop),
        participant
            .commit(CommitRequest {
                txn_id: txn.clone(),
            })
            .await
            .map(drop),
        participant
            .abort(AbortRequest {
                txn_id: txn.clone(),
            })
            .await
            .map(drop),
        participant.status(StatusRequest {}).await.map(drop),
    ];
    for (call, result) in ["Prepare", "Commit", "Abort", "Status"].iter().zip(codes) {
        let status = result.expect_err(call);
        assert_eq!(status.code(), expected, "{call}: {status:?}");
    }
}

/// The admin and decision calls of the coordinator: each must fail with `expected`.
async fn coordinator_calls_fail(mut tm: TransactionManagerClient<Channel>, expected: Code) {
    let codes = [
        tm.list_transactions(ListTransactionsRequest::default())
            .await
            .map(drop),
        tm.get_transaction(GetTransactionRequest {
            txn_id: uuid_like(),
        })
        .await
        .map(drop),
        tm.query_decision(QueryDecisionRequest {
            txn_id: uuid_like(),
        })
        .await
        .map(drop),
    ];
    for (call, result) in ["ListTransactions", "GetTransaction", "QueryDecision"]
        .iter()
        .zip(codes)
    {
        let status = result.expect_err(call);
        assert_eq!(status.code(), expected, "{call}: {status:?}");
    }
}

/// Nothing any refused call could have left: mallory unknown, nothing in doubt, nothing locked.
async fn nothing_changed(env: &Env) -> Result {
    assert_eq!(env.get_user_code("mallory").await?, Code::NotFound);
    for service in [Service::Password, Service::History] {
        let status = env.cluster.participant_status(service).await?;
        assert!(status.in_doubt.is_empty(), "{status:?}");
        assert_eq!(status.locked_users, 0, "{status:?}");
    }
    Ok(())
}

async fn public_channel(env: &Env, service: Service) -> Result<Channel> {
    Ok(Channel::from_shared(env.cluster.url(service))?
        .connect()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_and_the_admin_calls_are_not_on_the_public_listeners() -> Result {
    let env = env().await?;
    for service in [Service::Password, Service::History] {
        let participant = ParticipantClient::new(public_channel(&env, service).await?);
        participant_calls_fail(participant, Code::Unimplemented).await;
    }
    let tm = TransactionManagerClient::new(public_channel(&env, Service::Coordinator).await?);
    coordinator_calls_fail(tm, Code::Unimplemented).await;
    nothing_changed(&env).await
}

/// A TLS client of `service`'s internal listener that trusts the cluster's CA and presents
/// `identity`, if any.
async fn internal_with(
    env: &Env,
    service: Service,
    identity: Option<Identity>,
) -> std::result::Result<Channel, tonic::transport::Error> {
    let certs = env.cluster.certs_dir();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(certs.join("ca.pem")).unwrap(),
        ))
        .domain_name(service.principal().dns_name());
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Endpoint::from_shared(env.cluster.internal_url(service))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

fn identity(dir: &Path, principal: Principal) -> Identity {
    let read =
        |ext: &str| std::fs::read(dir.join(format!("{}.{ext}", principal.file_stem()))).unwrap();
    Identity::from_pem(read("pem"), read("key"))
}

/// A call that never gets to the service: the handshake or the connection fails. The code depends on
/// where it broke, so only "not OK and not the service's answer" is checked, by the caller.
fn refused_before_the_service(result: std::result::Result<(), tonic::Status>, what: &str) {
    let status = result.expect_err(what);
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
        ),
        "{what}: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_listener_admits_only_the_certificates_each_call_needs() -> Result {
    let env = env().await?;
    env.register("alice", "alices-pw").await?;
    let stranger_dir = tempfile::tempdir()?;
    tpc_common::certs::issue(stranger_dir.path(), &[])?;

    for service in [Service::Password, Service::History] {
        // No client certificate: the handshake is refused (or the first call, with TLS 1.3).
        if let Ok(channel) = internal_with(&env, service, None).await {
            let result = ParticipantClient::new(channel)
                .prepare(prepare_mallory(&uuid_like()))
                .await
                .map(drop);
            refused_before_the_service(result, "no client certificate");
        }
        // A coordinator certificate from another CA.
        let other = identity(stranger_dir.path(), Principal::Coordinator);
        if let Ok(channel) = internal_with(&env, service, Some(other)).await {
            let result = ParticipantClient::new(channel)
                .prepare(prepare_mallory(&uuid_like()))
                .await
                .map(drop);
            refused_before_the_service(result, "a certificate from another CA");
        }
        // Plaintext h2c to a TLS listener.
        let plain = env
            .cluster
            .internal_url(service)
            .replace("https://", "http://");
        if let Ok(channel) = Channel::from_shared(plain)?
            .timeout(Duration::from_secs(5))
            .connect()
            .await
        {
            let result = ParticipantClient::new(channel)
                .prepare(prepare_mallory(&uuid_like()))
                .await
                .map(drop);
            refused_before_the_service(result, "plaintext");
        }
        // The cluster's own certificates, but not the coordinator's: the protocol is refused, and the
        // status is for operators only.
        for caller in [Principal::Password, Principal::History, Principal::Admin] {
            let channel = env.cluster.internal_channel(service, caller).await?;
            let mut participant = ParticipantClient::new(channel);
            for result in [
                participant
                    .prepare(prepare_mallory(&uuid_like()))
                    .await
                    .map(drop),
                participant
                    .commit(CommitRequest {
                        txn_id: uuid_like(),
                    })
                    .await
                    .map(drop),
                participant
                    .abort(AbortRequest {
                        txn_id: uuid_like(),
                    })
                    .await
                    .map(drop),
            ] {
                let status = result.unwrap_err();
                assert_eq!(
                    status.code(),
                    Code::PermissionDenied,
                    "{caller}: {status:?}"
                );
            }
            let status = participant.status(StatusRequest {}).await;
            assert_eq!(
                status.is_ok(),
                caller == Principal::Admin,
                "Status by {caller}: {status:?}"
            );
        }
    }

    // The coordinator's internal listener: the log for operators, decisions for participants.
    for caller in Principal::ALL {
        let channel = env
            .cluster
            .internal_channel(Service::Coordinator, caller)
            .await?;
        let mut tm = TransactionManagerClient::new(channel);
        let listed = tm
            .list_transactions(ListTransactionsRequest::default())
            .await;
        assert_eq!(
            listed.is_ok(),
            caller == Principal::Admin,
            "{caller}: {listed:?}"
        );
        if let Err(status) = listed {
            assert_eq!(status.code(), Code::PermissionDenied);
        }
        let decision = tm
            .query_decision(QueryDecisionRequest {
                txn_id: uuid_like(),
            })
            .await;
        assert_eq!(
            decision.is_ok(),
            matches!(caller, Principal::Password | Principal::History),
            "{caller}: {decision:?}"
        );
    }

    // The coordinator's own calls work, and none of the above changed anything.
    assert!(committed(
        &env.update("alice", "alices-pw", "alices-new-pw", "")
            .await?
    ));
    assert!(env.verify("alice", "alices-new-pw").await?);
    nothing_changed(&env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_listener_off_loopback_needs_tls_or_an_explicit_opt_out() -> Result {
    let dir = tempfile::tempdir()?;
    let exposed = std::process::Command::new(env!("CARGO_BIN_EXE_tpc"))
        .args(["participant", "password", "--listen", "127.0.0.1:0"])
        .args(["--internal-listen", "0.0.0.0:0"])
        .args(["--coordinator", "http://127.0.0.1:9"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()?;
    assert!(!exposed.status.success());
    let stderr = String::from_utf8_lossy(&exposed.stderr);
    assert!(
        stderr.contains("without TLS") && stderr.contains("--certs"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("password").exists(),
        "it refused before opening its store"
    );
    Ok(())
}

/// Reads the first "listening" line's public address from a server's log on stderr.
async fn listening_addr(stderr: tokio::process::ChildStderr) -> Result<String> {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let read = async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.split(" addr=Some(").nth(1) {
                return Ok::<_, std::io::Error>(rest.split(')').next().unwrap_or("").to_owned());
            }
        }
        Ok(String::new())
    };
    let addr = tokio::time::timeout(Duration::from_secs(10), read).await??;
    if addr.is_empty() {
        return Err("the server exited before listening".into());
    }
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_a_tls_public_listener_with_the_ca_file() -> Result {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_tpc"))
        .args(["certs", "--out"])
        .arg(&certs)
        .output()?;
    assert!(made.status.success(), "{made:?}");

    // A coordinator alone: its participants are unreachable, so a change aborts, but the call and its
    // answer cross TLS.
    let mut coordinator = tokio::process::Command::new(env!("CARGO_BIN_EXE_tpc"))
        .args(["coordinator", "--listen", "127.0.0.1:0"])
        .args(["--internal-listen", "127.0.0.1:0"])
        .args([
            "--password",
            "https://127.0.0.1:9",
            "--history",
            "https://127.0.0.1:9",
        ])
        .arg("--certs")
        .arg(&certs)
        .arg("--tls-cert")
        .arg(certs.join("public.pem"))
        .arg("--tls-key")
        .arg(certs.join("public.key"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let addr = listening_addr(coordinator.stderr.take().ok_or("no stderr")?).await?;
    let port = addr.rsplit(':').next().ok_or("no port")?.to_owned();

    let add = |url: String, ca: Option<&Path>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tpc"));
        cmd.args(["user", "add", "trent", "--email", "trent@example.com"])
            .args(["--password-stdin", "--json", "--coordinator", &url]);
        if let Some(ca) = ca {
            cmd.arg("--ca").arg(ca);
        }
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"trents-pw\n")
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let https = format!("https://localhost:{port}");
    let plain_url = format!("http://127.0.0.1:{port}");
    let with_ca = tokio::task::spawn_blocking({
        let https = https.clone();
        let ca = certs.join("ca.pem");
        move || add(https, Some(&ca))
    })
    .await?;
    let stdout = String::from_utf8_lossy(&with_ca.stdout);
    assert!(stdout.contains("\"outcome\":\"ABORTED\""), "{with_ca:?}");

    // Without the CA file the server's certificate is not trusted: no answer at all.
    let without_ca = tokio::task::spawn_blocking(move || add(https, None)).await?;
    assert_eq!(without_ca.status.code(), Some(2), "{without_ca:?}");
    // And plaintext to a TLS listener is no way around it.
    let plain = tokio::task::spawn_blocking(move || add(plain_url, None)).await?;
    assert_ne!(plain.status.code(), Some(0), "{plain:?}");
    coordinator.kill().await?;
    Ok(())
}

/// E-mail through a relay that requires TLS and AUTH, as a real one does: implicit TLS and STARTTLS,
/// verified against the relay's CA, the password from the environment. A wrong password delivers
/// nothing (the e-mail waits in the outbox), and the password is in no log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_mail_leaves_through_a_tls_relay_with_auth() -> Result {
    use tpc_harness::{Cluster, ClusterOptions, MailSecurity, MailServer};
    let relay_password = "relay-pw-7f3a91";
    for (implicit, given_password) in [
        (true, relay_password),
        (false, relay_password),
        (true, "wrong-pw"),
    ] {
        let dir = tempfile::tempdir()?;
        let relay_certs = dir.path().join("relay-certs");
        tpc_common::certs::issue(&relay_certs, &[])?;
        let read = |name: &str| std::fs::read(relay_certs.join(name));
        let mail = MailServer::start_with(MailSecurity {
            tls: Some((read("public.pem")?, read("public.key")?)),
            implicit,
            auth: Some(("tpc".into(), relay_password.into())),
        })
        .await?;
        let cluster = Cluster::start(ClusterOptions {
            exe: env!("CARGO_BIN_EXE_tpc").into(),
            dir: dir.path().join("cluster"),
            smtp: Some(mail.url()),
            smtp_ca: Some(relay_certs.join("ca.pem")),
            smtp_password: Some(given_password.into()),
            ..Default::default()
        })
        .await?;
        let result = cluster
            .client()
            .await?
            .register_user(tpc_proto::v1::RegisterUserRequest {
                user_id: "peggy".into(),
                email: "peggy@example.com".into(),
                password: "peggys-pw".into(),
                request_id: String::new(),
            })
            .await?
            .into_inner();
        assert!(committed(&result), "{result:?}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let expect_mail = given_password == relay_password;
        while mail.mails().is_empty() && tokio::time::Instant::now() < deadline && expect_mail {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !expect_mail {
            // Long enough for several attempts of the outbox.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let mails = mail.mails();
        assert_eq!(
            mails.len(),
            usize::from(expect_mail),
            "{} relay, password {}: {mails:?}",
            if implicit { "TLS" } else { "STARTTLS" },
            if expect_mail { "right" } else { "wrong" }
        );
        let log = std::fs::read_to_string(cluster.log_file(Service::Coordinator))?;
        assert!(!log.contains(given_password), "the password is in the log");
        assert!(!log.contains("peggys-pw"));
    }
    Ok(())
}

/// Opens a connection to `url`'s address and says nothing; returns how long until the server closed it
/// (`None`: still open after `wait`).
async fn silent_connection_lasts(url: &str, wait: Duration) -> Result<Option<Duration>> {
    use tokio::io::AsyncReadExt;
    let addr = url
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    let opened = std::time::Instant::now();
    // Whatever the server says first (an HTTP/2 server sends its SETTINGS at once) is read and
    // ignored, until it closes the connection (EOF or reset).
    let closed = async {
        let mut buf = [0u8; 256];
        while let Ok(n) = socket.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    Ok(tokio::time::timeout(wait, closed)
        .await
        .ok()
        .map(|()| opened.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_speak_are_closed_and_the_services_go_on_serving() -> Result {
    let env = env().await?;
    let within = tpc_common::serve::GREETING_WITHIN;
    let mut urls = Vec::new();
    for service in [Service::Coordinator, Service::Password, Service::History] {
        urls.push(env.cluster.url(service));
        urls.push(env.cluster.internal_url(service));
    }
    // All at once: the public listeners (plaintext here) and the internal ones (mutual TLS).
    let closed: Vec<_> = urls
        .iter()
        .map(|url| {
            let url = url.clone();
            tokio::spawn(async move {
                silent_connection_lasts(&url, within + Duration::from_secs(10))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    for (url, lasted) in urls.iter().zip(closed) {
        let lasted = lasted.await??;
        // Closed by the greeting deadline, or sooner by the TLS handshake timeout; not at once.
        assert!(
            lasted.is_some_and(|d| d >= Duration::from_secs(1)),
            "{url}: a silent connection should be closed within ~{within:?}, was {lasted:?}"
        );
    }
    // Nothing else was disturbed.
    assert!(committed(&env.register("quiet", "pw-quiet-1").await?));
    Ok(())
}
