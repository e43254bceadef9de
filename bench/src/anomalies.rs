//! What a strategy left wrong at rest, in the password story's own terms: counted after the load, once
//! the cluster is quiet. Two-phase commit must show none; a saga or an event-driven design may.
//!
//! Read from the services themselves: each user's password version (`GetUser`) and history
//! (`GetHistory`), and the e-mails: the files (`<txn>.eml`, addressed to `<user>@example.com`) of a
//! cluster without a mail server, or what the mail server received (Message-ID `<txn@tpc.local>`),
//! where a message received twice is counted as a duplicate.
//!
//! The anomalies seen in flight, torn and dirty reads, are counted by the readers
//! ([`crate::readers`], [`crate::inflight`]) and join these in the same record.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tpc_harness::{Cluster, Mail};
use tpc_proto::v1::{GetHistoryRequest, GetUserRequest, transaction};

use crate::inflight;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every field defaults to 0 when absent, so results written before a field existed still load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Anomalies {
    /// A reader read the same password version twice around the history, and the newest history
    /// entry was another (DESIGN §6.3).
    pub torn_reads: u64,
    /// A change's new password worked for a reader (`VerifyPassword` valid) while the change was in
    /// flight, and the change then did not take effect (aborted or compensated).
    pub dirty_reads: u64,
    /// Users whose current password is not their newest history entry (or who exist on one side
    /// only).
    pub divergent_users: u64,
    /// "Your password was changed" for a change that is not in effect (not in the user's history).
    pub wrong_emails: u64,
    /// Changes in the user's history without an e-mail.
    pub missing_emails: u64,
    /// E-mails received again with a Message-ID already received (delivery is at least once, DESIGN
    /// §4; a receiver drops them by Message-ID). Counted apart from the others.
    pub duplicate_emails: u64,
    /// Users that could not be read at rest (a participant still in doubt, or down).
    pub unreadable_users: u64,
}

impl Anomalies {
    pub fn total(&self) -> u64 {
        self.torn_reads
            + self.dirty_reads
            + self.divergent_users
            + self.wrong_emails
            + self.missing_emails
            + self.duplicate_emails
            + self.unreadable_users
    }

    /// The six kinds the report charts, with their names in `results.json`.
    pub fn kinds(&self) -> [(&'static str, u64); 6] {
        [
            ("torn_reads", self.torn_reads),
            ("dirty_reads", self.dirty_reads),
            ("divergent_users", self.divergent_users),
            ("wrong_emails", self.wrong_emails),
            ("missing_emails", self.missing_emails),
            ("duplicate_emails", self.duplicate_emails),
        ]
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

/// Reads every user and counts against `mails` (transaction, user), received once each.
pub async fn count(
    cluster: &Cluster,
    users: &[String],
    mails: &[(String, String)],
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
    Ok(judge(&state, mails))
}

/// How each request of the load ended, by request id, from the coordinator's log.
pub async fn requests_at_rest(
    cluster: &Cluster,
) -> Result<BTreeMap<String, inflight::AtRest>, BoxError> {
    Ok(cluster
        .list_transactions()
        .await?
        .into_iter()
        .map(|t| {
            let state = match t.state() {
                transaction::State::Committed | transaction::State::Committing => {
                    inflight::AtRest::Committed
                }
                transaction::State::Aborted | transaction::State::Compensating => {
                    inflight::AtRest::Undone
                }
                transaction::State::Active | transaction::State::Unspecified => {
                    inflight::AtRest::Running
                }
            };
            (t.request_id, state)
        })
        .collect())
}

/// What a mail server received: each distinct message as (transaction, user), and how many were
/// received again with a Message-ID already seen.
pub fn received(mails: &[Mail]) -> (Vec<(String, String)>, u64) {
    let mut seen = HashSet::new();
    let mut distinct = Vec::new();
    let mut duplicates = 0;
    for mail in mails {
        let Some(id) = mail.message_id() else {
            continue;
        };
        if !seen.insert(id.to_owned()) {
            duplicates += 1;
            continue;
        }
        let txn = id
            .trim_matches(['<', '>'])
            .split('@')
            .next()
            .unwrap_or_default();
        let user = mail
            .to
            .first()
            .map(|to| to.trim().trim_matches(['<', '>']))
            .and_then(|to| to.split('@').next())
            .unwrap_or_default();
        distinct.push((txn.to_owned(), user.to_owned()));
    }
    (distinct, duplicates)
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
        // A user that could not be read (locked by a transaction in doubt) has no history to judge
        // its e-mails by: they are neither right nor wrong, and the user counts as unreadable.
        let Some(u) = users.get(user).filter(|u| !u.unreadable) else {
            continue;
        };
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
                ..Anomalies::default()
            }
        );
        assert_eq!(a.total(), 3);
    }

    #[test]
    fn the_emails_of_an_unreadable_user_are_not_judged() {
        let locked = AtRest {
            version: None,
            history: Vec::new(),
            unreadable: true,
        };
        let users = BTreeMap::from([("carol".to_owned(), locked)]);
        let a = judge(&users, &[mail("t1", "carol"), mail("t2", "carol")]);
        assert_eq!(
            a,
            Anomalies {
                unreadable_users: 1,
                ..Anomalies::default()
            }
        );
    }

    fn received_mail(txn: &str, to: &str) -> Mail {
        Mail {
            from: "tpc@localhost".into(),
            to: vec![format!("<{to}@example.com>")],
            data: format!("Message-ID: <{txn}@tpc.local>\r\nSubject: changed\r\n\r\nbody\r\n"),
        }
    }

    #[test]
    fn a_message_received_twice_is_a_duplicate_judged_once() {
        let (mails, duplicates) = received(&[
            received_mail("t1", "alice"),
            received_mail("t2", "alice"),
            received_mail("t1", "alice"),
            received_mail("t1", "alice"),
        ]);
        assert_eq!(mails, [mail("t1", "alice"), mail("t2", "alice")]);
        assert_eq!(duplicates, 2);
        let users = BTreeMap::from([("alice".to_owned(), user(Some("t2"), &["t2", "t1"]))]);
        assert_eq!(judge(&users, &mails), Anomalies::default());
    }

    #[test]
    fn old_results_without_the_new_kinds_still_load() {
        let old =
            r#"{"divergent_users":1,"wrong_emails":0,"missing_emails":2,"unreadable_users":0}"#;
        let a: Anomalies = serde_json::from_str(old).unwrap();
        assert_eq!(
            (a.divergent_users, a.missing_emails, a.torn_reads),
            (1, 2, 0)
        );
        let json = serde_json::to_value(Anomalies::default()).unwrap();
        for kind in Anomalies::default().kinds().map(|k| k.0) {
            assert_eq!(json[kind], 0, "{json}");
        }
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
