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
