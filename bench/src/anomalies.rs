//! What a strategy left wrong at rest, in the password story's own terms: counted after the load, once
//! the cluster is quiet. Two-phase commit must show none; a saga or an event-driven design may.
//!
//! Read from the services themselves: each user's password version (`GetUser`) and history
//! (`GetHistory`), and the e-mail files (`<txn>.eml`, addressed to `<user>@example.com`).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tpc_harness::Cluster;
use tpc_proto::v1::{GetHistoryRequest, GetUserRequest};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomalies {
    /// Users whose current password is not their newest history entry (or who exist on one side
    /// only).
    pub divergent_users: u64,
    /// "Your password was changed" for a change that is not in effect (not in the user's history).
    pub wrong_emails: u64,
    /// Changes in the user's history without an e-mail.
    pub missing_emails: u64,
    /// Users that could not be read at rest (a participant still in doubt, or down).
    pub unreadable_users: u64,
}

impl Anomalies {
    pub fn total(&self) -> u64 {
        self.divergent_users + self.wrong_emails + self.missing_emails + self.unreadable_users
    }
}

/// A user as the participants show it.
#[derive(Debug, Default)]
pub struct AtRest {
    /// The password's version; `None` for a user the password participant does not know.
    pub version: Option<String>,
    /// History entries, newest first; empty for a user the history participant does not know.
    pub history: Vec<String>,
    pub unreadable: bool,
}

/// Reads every user and the e-mail files, and counts.
pub async fn count(
    cluster: &Cluster,
    users: &[String],
    mail_dir: &Path,
) -> Result<Anomalies, BoxError> {
    let mut passwords = cluster.passwords().await?;
    let mut histories = cluster.histories().await?;
    let mut state = BTreeMap::new();
    for user in users {
        let mut at_rest = AtRest::default();
        let version = passwords
            .get_user(GetUserRequest {
                user_id: user.clone(),
            })
            .await;
        match version {
            Ok(u) => at_rest.version = Some(u.into_inner().version),
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(_) => at_rest.unreadable = true,
        }
        let history = histories
            .get_history(GetHistoryRequest {
                user_id: user.clone(),
            })
            .await;
        match history {
            Ok(h) => {
                at_rest.history = h
                    .into_inner()
                    .entries
                    .into_iter()
                    .map(|e| e.txn_id)
                    .collect()
            }
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(_) => at_rest.unreadable = true,
        }
        state.insert(user.clone(), at_rest);
    }
    Ok(judge(&state, &mails(mail_dir)?))
}

/// The e-mails in `dir`: (transaction, user it went to).
pub fn mails(dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(txn) = name.to_str().and_then(|n| n.strip_suffix(".eml")) else {
            continue;
        };
        let raw = std::fs::read_to_string(entry.path())?;
        let to = raw
            .lines()
            .find_map(|l| l.strip_prefix("To: "))
            .and_then(|to| to.trim().trim_matches(['<', '>']).split('@').next())
            .unwrap_or_default()
            .to_owned();
        out.push((txn.to_owned(), to));
    }
    Ok(out)
}

/// The counts from what was read. Pure, for the tests.
pub fn judge(users: &BTreeMap<String, AtRest>, mails: &[(String, String)]) -> Anomalies {
    let mut a = Anomalies::default();
    let mut mailed: HashSet<&str> = HashSet::new();
    for (txn, user) in mails {
        mailed.insert(txn);
        let Some(u) = users.get(user) else { continue };
        // History keeps the newest changes only: an e-mail older than the oldest kept entry cannot be
        // judged.
        let judged = u
            .history
            .last()
            .is_none_or(|oldest| txn.as_str() >= oldest.as_str());
        if judged && !u.history.contains(txn) {
            a.wrong_emails += 1;
        }
    }
    for u in users.values() {
        if u.unreadable {
            a.unreadable_users += 1;
            continue;
        }
        if u.version.as_ref() != u.history.first() {
            a.divergent_users += 1;
        }
        a.missing_emails += u
            .history
            .iter()
            .filter(|t| !mailed.contains(t.as_str()))
            .count() as u64;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(version: Option<&str>, history: &[&str]) -> AtRest {
        AtRest {
            version: version.map(str::to_owned),
            history: history.iter().map(|s| s.to_string()).collect(),
            unreadable: false,
        }
    }

    fn mail(txn: &str, user: &str) -> (String, String) {
        (txn.into(), user.into())
    }

    #[test]
    fn a_consistent_state_has_no_anomaly() {
        let users = BTreeMap::from([("alice".to_owned(), user(Some("t2"), &["t2", "t1"]))]);
        let a = judge(&users, &[mail("t1", "alice"), mail("t2", "alice")]);
        assert_eq!(a, Anomalies::default());
    }

    #[test]
    fn divergence_wrong_and_missing_emails_are_counted() {
        let users = BTreeMap::from([
            // The password took t3, the history refused it; t3 was mailed anyway.
            ("alice".to_owned(), user(Some("t3"), &["t2", "t1"])),
            // t5 in effect, never mailed.
            ("bob".to_owned(), user(Some("t5"), &["t5", "t4"])),
        ]);
        let a = judge(
            &users,
            &[
                mail("t1", "alice"),
                mail("t2", "alice"),
                mail("t3", "alice"),
                mail("t4", "bob"),
            ],
        );
        assert_eq!(
            a,
            Anomalies {
                divergent_users: 1,
                wrong_emails: 1,
                missing_emails: 1,
                unreadable_users: 0,
            }
        );
        assert_eq!(a.total(), 3);
    }

    #[test]
    fn emails_older_than_the_kept_history_are_not_judged() {
        let users = BTreeMap::from([("alice".to_owned(), user(Some("t9"), &["t9", "t8"]))]);
        let a = judge(
            &users,
            &[
                mail("t1", "alice"),
                mail("t8", "alice"),
                mail("t9", "alice"),
            ],
        );
        assert_eq!(a.wrong_emails, 0);
    }
}
