//! The command line against servers that do not answer: it gives up after its deadline, says which
//! server did not answer, and for a change says the outcome is unknown and how to learn it.

mod support;

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use support::*;
use tpc_harness::Service;

fn tpc(args: &[&str], stdin: &str) -> Output {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tpc"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_sent_to_a_frozen_coordinator_is_reported_unknown_with_its_request_id() -> Result {
    let env = env().await?;
    env.register("grace", "graces-pw-1").await?;
    let url = env.cluster.url(Service::Coordinator);
    env.cluster.pause(Service::Coordinator)?;

    let started = Instant::now();
    let passwd = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            tpc(
                &[
                    "passwd",
                    "grace",
                    "--password-stdin",
                    "--timeout",
                    "1",
                    "--coordinator",
                    &url,
                ],
                "graces-pw-1\ngraces-pw-2\n",
            )
        })
        .await?
    };
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&passwd.stderr);
    assert_eq!(passwd.status.code(), Some(3), "{stderr}");
    assert!(took < Duration::from_secs(5), "gave up after {took:?}");
    assert!(
        stderr.contains("outcome is unknown") && stderr.contains(&url),
        "{stderr}"
    );
    let request_id = stderr
        .split("--request-id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or("no request id")?
        .to_owned();

    // The admin listing gives up the same way.
    let certs = env.cluster.certs_dir();
    let internal = env.cluster.internal_url(Service::Coordinator);
    let listing = tokio::task::spawn_blocking(move || {
        tpc(
            &[
                "txn",
                "list",
                "--timeout",
                "1",
                "--internal",
                &internal,
                "--certs",
                certs.to_str().unwrap(),
            ],
            "",
        )
    })
    .await?;
    assert_eq!(listing.status.code(), Some(2), "{listing:?}");

    // Thawed, the coordinator makes the change it had received; the same command with the printed
    // request id learns that it committed, and makes no second change.
    env.cluster.resume(Service::Coordinator)?;
    let again = tokio::task::spawn_blocking(move || {
        tpc(
            &[
                "passwd",
                "grace",
                "--password-stdin",
                "--json",
                "--request-id",
                &request_id,
                "--coordinator",
                &url,
            ],
            "graces-pw-1\ngraces-pw-2\n",
        )
    })
    .await?;
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert_eq!(again.status.code(), Some(0), "{again:?}");
    assert!(stdout.contains("COMMITTED"), "{stdout}");
    assert!(env.verify("grace", "graces-pw-2").await?);
    assert_eq!(env.history("grace").await?.len(), 2, "one change, not two");
    Ok(())
}

/// SIGTERM stops a server within a few seconds even when a peer holding a connection to it is frozen
/// (it would never close that connection, and a graceful shutdown waits for connections to close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_server_promptly_even_with_a_frozen_peer() -> Result {
    let mut env = env().await?;
    env.register("heidi", "heidis-pw-1").await?;
    // The coordinator holds connections to both participants; it freezes.
    env.cluster.pause(Service::Coordinator)?;
    let pid = env.cluster.pid(Service::Password).ok_or("no pid")?;
    let started = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(killed.success());
    let status = env
        .cluster
        .wait_exit(Service::Password, Duration::from_secs(15))
        .await?;
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(8), "took {took:?} to stop");
    env.cluster.resume(Service::Coordinator)?;
    Ok(())
}

/// `tpc up` derives five more ports from `--port`: one that would wrap past 65535, or start at the
/// privileged 0, 1, 2…, is refused before anything starts.
#[test]
fn tpc_up_refuses_ports_out_of_range_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    for port in ["65535", "65531", "0"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tpc"))
            .args(["up", "--port", port, "--data-dir"])
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--port {port}: {stderr}");
        assert!(stderr.contains("65530"), "--port {port}: {stderr}");
        assert!(
            !dir.path().join("data").exists(),
            "--port {port} started something"
        );
    }
}

/// A server started with a low soft limit on open files raises it, and one that runs out of
/// descriptors anyway keeps serving the connections it has, says so in its log, and does not spin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_out_of_file_descriptors_says_so_and_recovers() -> Result {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let dir = tempfile::tempdir()?;
    let log = dir.path().join("participant.log");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?.port()
    };
    // A hard limit of 64 descriptors: the process cannot raise it, and runs out.
    let script = format!(
        "ulimit -n 64; exec {} participant password --listen 127.0.0.1:{port} \
         --internal-listen 127.0.0.1:0 --coordinator http://127.0.0.1:9 --argon2 fast --data-dir {}",
        env!("CARGO_BIN_EXE_tpc"),
        dir.path().join("data").display()
    );
    let mut server = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let health = async |url: String| {
        let channel = tonic::transport::Endpoint::from_shared(url)?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .connect()
            .await?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(url.clone()).await.is_err() {
        assert!(Instant::now() < deadline, "the participant did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One channel that stays connected, then more connections than descriptors.
    let kept = tonic::transport::Endpoint::from_shared(url.clone())?
        .connect()
        .await?;
    let mut flood = Vec::new();
    for _ in 0..100 {
        if let Ok(socket) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            flood.push(socket);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    HealthClient::new(kept.clone())
        .check(HealthCheckRequest::default())
        .await?;
    let logged = std::fs::read_to_string(&log)?;
    assert!(logged.contains("cannot accept connections"), "{logged}");
    assert_eq!(
        logged.matches("cannot accept connections").count(),
        1,
        "warned once, not per attempt"
    );
    // The flood leaves: new clients are served again.
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(5);
    while health(url.clone()).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "new clients were not served again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill().await?;
    Ok(())
}

/// `tpc up` says it is up only once all three services serve: a bad `--smtp` fails first, and nothing
/// claims otherwise.
#[test]
fn tpc_up_says_up_only_when_it_is() {
    let dir = tempfile::tempdir().unwrap();
    // Below the ephemeral range, where no client socket takes it meanwhile.
    let port = (20_000 + std::process::id() % 10_000).to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tpc"))
        .args([
            "up",
            "--port",
            &port,
            "--argon2",
            "fast",
            "--smtp",
            "smtps://tpc:pw@mail.local",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(!stdout.contains("tpc is up"), "{stdout}");
    assert!(
        stderr.contains("a password in the URL is refused"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(":pw@"),
        "the URL's password is never printed: {stderr}"
    );
}

#[test]
fn tpc_check_reports_every_property_and_exits_zero_when_all_hold() {
    let out = tpc(&["check", "--depth", "12", "--threads", "1"], "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("unique, depth 12"), "{stdout}");
    for property in [
        "agreement",
        "durability",
        "atomic visibility",
        "termination",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with("holds") && l.contains(property)),
            "{property}:\n{stdout}"
        );
    }
    assert!(!stdout.contains("BROKEN"), "{stdout}");
}
