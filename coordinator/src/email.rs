//! What the user is told when a transaction commits. Composed from the COMMIT record, so it can only
//! contain what that record holds: never a password.

use tpc_common::OperationKind;

use crate::engine::CommitRecord;
use crate::log::OutboxEntry;

/// The e-mail for a committed transaction.
pub fn compose(record: &CommitRecord) -> OutboxEntry {
    let when = rfc3339(record.decided_at);
    let user = &record.user;
    let (subject, body) = match record.kind {
        OperationKind::Register => (
            "Your account was created".to_owned(),
            format!(
                "Hello {user},\n\n\
                 an account named {user} was created with this e-mail address at {when}.\n\n\
                 Not you? Someone else used your address: reply to this e-mail and we will close the account.\n\n\
                 Reference: {txn}\n",
                txn = record.txn
            ),
        ),
        OperationKind::Update => (
            "Your password was changed".to_owned(),
            format!(
                "Hello {user},\n\n\
                 the password of your account {user} was changed at {when}.\n\n\
                 Not you? Someone else knows your password: reset it now and contact support.\n\n\
                 Reference: {txn}\n",
                txn = record.txn
            ),
        ),
    };
    OutboxEntry {
        txn: record.txn,
        to: record.email.to_string(),
        subject,
        body,
        message_id: message_id(record),
    }
}

/// Stable for the transaction, so a resent e-mail is recognisably the same one.
pub fn message_id(record: &CommitRecord) -> String {
    format!("<{}@tpc.local>", record.txn)
}

/// `YYYY-MM-DD HH:MM:SS UTC` from Unix milliseconds (civil-from-days, Howard Hinnant's algorithm).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tpc_common::{Email, TxnId, UserId};

    #[test]
    fn formats_utc_times() {
        assert_eq!(rfc3339(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(rfc3339(1_795_775_351_000), "2026-11-27 10:29:11 UTC");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn update_mail_says_when_and_not_you() {
        let record = CommitRecord {
            txn: TxnId::generate(),
            request_id: "r".into(),
            kind: OperationKind::Update,
            user: UserId::parse("alice").unwrap(),
            email: Email::parse("alice@example.com").unwrap(),
            started_at: 0,
            decided_at: 0,
        };
        let mail = compose(&record);
        assert_eq!(mail.subject, "Your password was changed");
        assert!(mail.body.contains("1970-01-01 00:00:00 UTC"));
        assert!(mail.body.contains("Not you?"));
        assert_eq!(mail.message_id, format!("<{}@tpc.local>", record.txn));
    }
}
