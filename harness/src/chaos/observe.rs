//! After the faults: wait until the cluster is quiet, then collect what the checker needs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Channel;
use tpc_proto::v1::history_reader_client::HistoryReaderClient;
use tpc_proto::v1::password_reader_client::PasswordReaderClient;
use tpc_proto::v1::{GetHistoryRequest, GetUserRequest, transaction};

use super::workload::{PASSWORD_LEN, PASSWORD_PREFIX};
use crate::checker::{CoordinatorTxn, FinalUser, Observed, ParticipantState, TxnState, message_id};
use crate::{Cluster, MailServer, Service};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn transactions(cluster: &Cluster) -> Result<Vec<CoordinatorTxn>, BoxError> {
    Ok(cluster
        .list_transactions()
        .await?
        .into_iter()
        .map(coordinator_txn)
        .collect())
}

/// A transaction as `ListTransactions` shows it, as the checker takes it.
pub fn coordinator_txn(t: tpc_proto::v1::Transaction) -> CoordinatorTxn {
    CoordinatorTxn {
        state: match t.state() {
            transaction::State::Committing => TxnState::Committing,
            transaction::State::Committed => TxnState::Committed,
            transaction::State::Aborted => TxnState::Aborted,
            transaction::State::Compensating => TxnState::Compensating,
            transaction::State::Active | transaction::State::Unspecified => TxnState::Active,
        },
        txn: t.txn_id,
        request_id: t.request_id,
        user: t.user_id,
        reason: t.reason,
        email_error: t.email_error,
    }
}

async fn participants(cluster: &Cluster) -> Result<Vec<ParticipantState>, BoxError> {
    let mut out = Vec::new();
    for service in [Service::Password, Service::History] {
        let status = cluster.participant_status(service).await?;
        out.push(ParticipantState {
            name: service.name().into(),
            in_doubt: status.in_doubt,
            locked_users: status.locked_users,
        });
    }
    Ok(out)
}

/// Waits until nothing is in flight: no participant in doubt or holding a lock, no transaction active
/// or committing, and every committed transaction's e-mail received. Returns how long that took, and
/// what was still in flight if it never got quiet.
pub async fn quiesce(
    cluster: &Cluster,
    mail: &MailServer,
    within: Duration,
) -> (Duration, Option<String>) {
    let started = Instant::now();
    loop {
        let busy = match still_busy(cluster, mail).await {
            Ok(busy) => busy,
            Err(e) => Some(format!("cannot observe the cluster: {e}")),
        };
        match busy {
            None => return (started.elapsed(), None),
            Some(what) if started.elapsed() > within => return (started.elapsed(), Some(what)),
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn still_busy(cluster: &Cluster, mail: &MailServer) -> Result<Option<String>, BoxError> {
    if let Some(what) = cluster.in_flight().await? {
        return Ok(Some(what));
    }
    let received: std::collections::HashSet<String> = mail
        .mails()
        .iter()
        .filter_map(|m| m.message_id().map(str::to_owned))
        .collect();
    for t in transactions(cluster).await? {
        if t.state == TxnState::Committed && !received.contains(&message_id(&t.txn)) {
            return Ok(Some(format!("e-mail for {} not received", t.txn)));
        }
    }
    Ok(None)
}

/// Collects the final state through the services' APIs.
pub async fn observe(
    cluster: &Cluster,
    mail: &MailServer,
    users: &[String],
    history_depth: usize,
) -> Result<Observed, BoxError> {
    let mut passwords = cluster.passwords().await?;
    let mut histories = cluster.histories().await?;
    Ok(Observed {
        ops: Vec::new(),
        users: final_users(&mut passwords, &mut histories, users).await,
        transactions: transactions(cluster).await?,
        participants: participants(cluster).await?,
        mail_ids: mail
            .mails()
            .iter()
            .filter_map(|m| m.message_id().map(str::to_owned))
            .collect(),
        plaintext: Vec::new(),
        history_depth,
    })
}

/// Every user as the participants' readers show it at rest.
pub async fn final_users(
    passwords: &mut PasswordReaderClient<Channel>,
    histories: &mut HistoryReaderClient<Channel>,
    users: &[String],
) -> BTreeMap<String, FinalUser> {
    let mut finals = BTreeMap::new();
    for user in users {
        let version = passwords
            .get_user(GetUserRequest {
                user_id: user.clone(),
            })
            .await
            .map(|u| u.into_inner().version);
        let history = histories
            .get_history(GetHistoryRequest {
                user_id: user.clone(),
            })
            .await
            .map(|h| {
                h.into_inner()
                    .entries
                    .into_iter()
                    .map(|e| e.txn_id)
                    .collect()
            });
        let absent = |s: &tonic::Status| s.code() == Code::NotFound;
        let state = match (version, history) {
            (Ok(version), Ok(history)) => FinalUser {
                version: Some(version),
                history,
                unreadable: None,
            },
            // Unknown on one side or both: a half-registered user shows as the gap the checker sees.
            (Ok(version), Err(h)) if absent(&h) => FinalUser {
                version: Some(version),
                ..FinalUser::default()
            },
            (Err(v), Ok(history)) if absent(&v) => FinalUser {
                history,
                ..FinalUser::default()
            },
            (Err(v), Err(h)) if absent(&v) && absent(&h) => FinalUser::default(),
            (v, h) => FinalUser {
                unreadable: Some(format!(
                    "password: {}, history: {}",
                    v.err().map_or("ok".into(), |s| s.to_string()),
                    h.err().map_or("ok".into(), |s| s.to_string())
                )),
                ..FinalUser::default()
            },
        };
        finals.insert(user.clone(), state);
    }
    finals
}

/// Places under `dir`, and e-mails, that contain one of `passwords`. Every chaos password starts with
/// [`PASSWORD_PREFIX`], so one pass over the bytes finds candidates, checked against the set.
pub fn find_plaintext(
    dir: &Path,
    mail: &MailServer,
    passwords: &[String],
) -> std::io::Result<Vec<String>> {
    let set = password_set(passwords);
    let leaks = |bytes: &[u8]| leaks(bytes, &set);
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        } else if leaks(&std::fs::read(&path)?) {
            found.push(path.display().to_string());
        }
    }
    for m in mail.mails() {
        if leaks(m.data.as_bytes()) {
            found.push(format!("e-mail {}", m.message_id().unwrap_or("?")));
        }
    }
    Ok(found)
}

/// The passwords to look for, for [`leaks`].
pub fn password_set(passwords: &[String]) -> std::collections::HashSet<&[u8]> {
    passwords.iter().map(|p| p.as_bytes()).collect()
}

/// Whether `bytes` contain one of the passwords (each starts with [`PASSWORD_PREFIX`]).
pub fn leaks(bytes: &[u8], passwords: &std::collections::HashSet<&[u8]>) -> bool {
    bytes
        .windows(PASSWORD_LEN)
        .any(|w| w.starts_with(PASSWORD_PREFIX.as_bytes()) && passwords.contains(w))
}
