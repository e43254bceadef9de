//! `tpc demo`: the whole story in a temporary directory, narrated.
//!
//! Three real processes (the test harness's [`Cluster`]) on loopback ports, each with its own data.
//! Each logs its protocol steps as JSON lines (target `tpc::protocol`); the demo prints them as they
//! arrive, prefixed with the process name, between its own explanations. Step 4 restarts the
//! coordinator with a crash point armed, so it dies right after forcing a commit decision, and step 5
//! shows recovery finishing that transaction and sending its e-mail exactly once.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tpc_harness::{Cluster, ClusterOptions, Service};
use tpc_proto::v1::password_service_client::PasswordServiceClient;
use tpc_proto::v1::{
    GetUserRequest, ListTransactionsRequest, RegisterUserRequest, TransactionResult,
    UpdatePasswordRequest, VerifyPasswordRequest, transaction_result,
};

use crate::Result;

const USER: &str = "alice";
const EMAIL: &str = "alice@example.com";
const FIRST: &str = "correct horse battery staple";
const SECOND: &str = "Tr0ub4dor&3-but-longer";
const THIRD: &str = "a third, never used passphrase";

/// The `.eml` files the coordinator wrote, oldest first.
fn mails(cluster: &Cluster) -> Vec<PathBuf> {
    let dir = cluster.data_dir(Service::Coordinator).join("mail");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "eml"));
    files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    files
}

fn step(n: u32, title: &str) {
    println!(
        "\n── {n}. {title} {}",
        "─".repeat(70usize.saturating_sub(title.len()))
    );
}

fn say(text: &str) {
    println!("   {text}");
}

/// Lets the processes' log lines for the last step arrive before the next heading.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(400)).await;
}

fn outcome(result: &TransactionResult) -> String {
    if result.outcome() == transaction_result::Outcome::Committed {
        format!("COMMITTED (txn {})", result.txn_id)
    } else {
        format!("ABORTED (txn {}): {}", result.txn_id, result.reason)
    }
}

fn header(path: &Path, name: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
        .unwrap_or_default()
}

pub async fn run(keep: bool) -> Result {
    let tmp = tempfile::Builder::new().prefix("tpc-demo-").tempdir()?;
    println!("tpc demo: changing a password atomically with two-phase commit");
    say(&format!("working directory: {}", tmp.path().display()));
    let mut cluster = Cluster::start(ClusterOptions {
        exe: std::env::current_exe()?,
        dir: tmp.path().to_path_buf(),
        owasp_cost: true,
        narrate: true,
        ..ClusterOptions::default()
    })
    .await?;
    say("three separate processes, each with its own sled log:");
    say(&format!(
        "  coordinator  {}  runs 2PC, keeps the decision log and the e-mail outbox",
        cluster.url(Service::Coordinator)
    ));
    say(&format!(
        "  password     {}  stores argon2id hashes (OWASP cost)",
        cluster.url(Service::Password)
    ));
    say(&format!(
        "  history      {}  remembers the last 5 hashes, refuses reuse",
        cluster.url(Service::History)
    ));
    say("the protocol runs between their internal listeners, over mutual TLS:");
    say(&format!(
        "  coordinator {}, password {}, history {}",
        cluster.internal_url(Service::Coordinator),
        cluster.internal_url(Service::Password),
        cluster.internal_url(Service::History)
    ));
    say(&format!(
        "  each with a certificate from a CA made just now ({}); a participant takes",
        cluster.certs_dir().display()
    ));
    say("  Prepare and Commit only from the coordinator's certificate.");

    let mut client = cluster.client().await?;
    let mut reader = cluster.passwords().await?;

    step(1, "Register alice");
    say("One transaction: both participants must vote yes before anything is decided.");
    let r = client
        .register_user(RegisterUserRequest {
            user_id: USER.into(),
            email: EMAIL.into(),
            password: FIRST.into(),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    settle().await;
    say(&format!("→ {}", outcome(&r)));

    step(2, "Change alice's password");
    let r = client
        .update_password(UpdatePasswordRequest {
            user_id: USER.into(),
            current_password: FIRST.into(),
            new_password: SECOND.into(),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    settle().await;
    say(&format!("→ {}", outcome(&r)));
    for mail in mails(&cluster) {
        say(&format!(
            "e-mail {}: \"{}\" {}",
            mail.file_name().unwrap_or_default().to_string_lossy(),
            header(&mail, "Subject"),
            header(&mail, "Message-ID"),
        ));
    }

    step(3, "Try to go back to the first password");
    say(
        "The history participant finds it among the last 5 hashes and votes no: the coordinator aborts.",
    );
    let before = mails(&cluster).len();
    let r = client
        .update_password(UpdatePasswordRequest {
            user_id: USER.into(),
            current_password: SECOND.into(),
            new_password: FIRST.into(),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    settle().await;
    say(&format!("→ {}", outcome(&r)));
    say(&format!(
        "e-mails: still {} (an aborted transaction never produces one)",
        mails(&cluster).len().min(before)
    ));

    step(4, "Crash the coordinator at the commit point");
    say(
        "Restarting the coordinator with TPC_FAILPOINTS=coord.after_decision_forced=crash: it will abort",
    );
    say("(no flush, no destructors, like kill -9) right after the COMMIT record is on disk,");
    say("before it answers the client or tells any participant.");
    cluster.stop(Service::Coordinator).await?;
    cluster
        .start_with_fail_points(Service::Coordinator, "coord.after_decision_forced=crash")
        .await?;
    let mut client: PasswordServiceClient<_> = cluster.client().await?;
    let crashed = client
        .update_password(UpdatePasswordRequest {
            user_id: USER.into(),
            current_password: SECOND.into(),
            new_password: THIRD.into(),
            request_id: "demo-crash".into(),
        })
        .await;
    settle().await;
    match crashed {
        Ok(r) => say(&format!(
            "→ unexpectedly answered: {}",
            outcome(&r.into_inner())
        )),
        Err(status) => say(&format!(
            "→ the connection dropped ({:?}): the client does not know the outcome",
            status.code()
        )),
    }
    let status = cluster
        .wait_exit(Service::Coordinator, Duration::from_secs(5))
        .await?;
    say(&format!("coordinator process: {status}"));
    say("Both participants voted yes, so they are in doubt: they may not decide alone.");
    say("A reader of alice waits for the outcome instead of seeing a half-done change:");
    let started = std::time::Instant::now();
    match reader
        .get_user(GetUserRequest {
            user_id: USER.into(),
        })
        .await
    {
        Ok(u) => say(&format!(
            "→ GetUser answered version {}",
            u.into_inner().version
        )),
        Err(status) => say(&format!(
            "→ GetUser waited {:.1} s, then {:?}: {}",
            started.elapsed().as_secs_f32(),
            status.code(),
            status.message()
        )),
    }

    step(5, "Restart the coordinator: recovery");
    say(
        "On start it finds the COMMIT record without END, resends Commit, and sends the queued e-mail.",
    );
    let mails_before = mails(&cluster).len();
    cluster.start_service(Service::Coordinator).await?;
    let user = reader
        .get_user(GetUserRequest {
            user_id: USER.into(),
        })
        .await?
        .into_inner();
    settle().await;
    say(&format!(
        "→ GetUser answers at once: version {}",
        user.version
    ));
    let valid = reader
        .verify_password(VerifyPasswordRequest {
            user_id: USER.into(),
            password: THIRD.into(),
        })
        .await?
        .into_inner()
        .valid;
    say(&format!("→ the new password verifies: {valid}"));
    for _ in 0..50 {
        if mails(&cluster).len() > mails_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mails = mails(&cluster);
    let recovered: Vec<_> = mails
        .iter()
        .filter(|m| header(m, "Message-ID").contains(&user.version))
        .collect();
    say(&format!(
        "→ e-mails: {} in all; {} for the recovered transaction ({})",
        mails.len(),
        recovered.len(),
        recovered
            .first()
            .map(|m| header(m, "Message-ID"))
            .unwrap_or_default()
    ));

    step(6, "The coordinator's log");
    let mut tm = cluster.transactions().await?;
    let list = tm
        .list_transactions(ListTransactionsRequest {
            state: 0,
            limit: 10,
            ..Default::default()
        })
        .await?
        .into_inner();
    for t in list.transactions.iter().rev() {
        say(&format!(
            "{}  {:<10} {:<8} {}  {}",
            t.txn_id,
            t.state().as_str_name(),
            t.kind,
            if t.email_sent {
                "e-mail sent"
            } else {
                "no e-mail  "
            },
            t.reason
        ));
    }

    let ok = valid && recovered.len() == 1 && mails.len() == 3;
    println!();
    if ok {
        say("Every committed change reached both services and sent exactly one e-mail;");
        say("the aborted one changed nothing; the crash at the commit point was recovered.");
    } else {
        say("Something did not go as the protocol promises: see the lines above.");
    }
    cluster.shutdown().await?;
    if keep {
        let path = tmp.keep();
        say(&format!("kept {}", path.display()));
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
