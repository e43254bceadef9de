//! The e-mail dispatcher: delivers outbox entries with lettre, at least once.
//!
//! Entries reach the outbox only in the batch that commits their transaction, and are sent only once
//! that batch is on disk (see `Log::outbox`), so an aborted transaction never produces mail. An entry leaves the outbox only after the mail server (or the file
//! transport) accepted it; failures are retried with capped exponential backoff. A crash between
//! delivery and marking resends the mail with the same `Message-ID`, which receivers can deduplicate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::Notify;
use tpc_common::Backoff;
use tpc_common::fault::inject;
use tracing::{debug, error, warn};

use crate::log::{Log, OutboxEntry};

/// Sender address of every tpc e-mail.
pub const FROM: &str = "tpc <no-reply@tpc.local>";

/// Where e-mail goes.
#[derive(Clone)]
pub enum Mailer {
    /// An SMTP server.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// `.eml` files in a directory.
    Files(AsyncFileTransport<Tokio1Executor>, PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum MailerError {
    #[error("bad SMTP URL: {0}")]
    Url(String),
    #[error("cannot create the mail directory: {0}")]
    Dir(#[from] std::io::Error),
}

impl Mailer {
    /// `smtp://host[:port]` (port 25 by default). Plaintext: this build has no TLS, which keeps it free
    /// of system libraries; point it at a local relay.
    pub fn smtp(url: &str) -> Result<Self, MailerError> {
        let rest = url
            .strip_prefix("smtp://")
            .ok_or_else(|| MailerError::Url(format!("{url}: expected smtp://host:port")))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| MailerError::Url(format!("{url}: bad port")))?,
            ),
            None => (rest, 25),
        };
        if host.is_empty() {
            return Err(MailerError::Url(format!("{url}: no host")));
        }
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(Duration::from_secs(5)))
            .build();
        Ok(Mailer::Smtp(transport))
    }

    pub fn files(dir: PathBuf) -> Result<Self, MailerError> {
        std::fs::create_dir_all(&dir)?;
        Ok(Mailer::Files(AsyncFileTransport::new(&dir), dir))
    }

    pub fn describe(&self) -> String {
        match self {
            Mailer::Smtp(_) => "SMTP".into(),
            Mailer::Files(_, dir) => format!(".eml files in {}", dir.display()),
        }
    }

    async fn send(&self, message: Message) -> Result<(), String> {
        match self {
            Mailer::Smtp(t) => t.send(message).await.map(drop).map_err(|e| e.to_string()),
            Mailer::Files(t, _) => t.send(message).await.map(drop).map_err(|e| e.to_string()),
        }
    }
}

fn build(entry: &OutboxEntry) -> Result<Message, String> {
    Message::builder()
        .from(FROM.parse().map_err(|e| format!("{e}"))?)
        .to(entry.to.parse().map_err(|e| format!("recipient: {e}"))?)
        .subject(entry.subject.clone())
        .message_id(Some(entry.message_id.clone()))
        .header(ContentType::TEXT_PLAIN)
        .body(entry.body.clone())
        .map_err(|e| e.to_string())
}

/// How many e-mails are handed to the mail server at once: enough to keep up with commits when a
/// backlog built up while the server was down.
const IN_FLIGHT: usize = 16;

/// Delivers the outbox until the task is dropped. `wake` is notified after every commit.
pub async fn dispatch_forever(log: Arc<Log>, mailer: Mailer, wake: Arc<Notify>, backoff: Backoff) {
    let mut failures = 0u32;
    loop {
        let pending = match log.outbox().await {
            Ok(pending) => pending,
            Err(e) => {
                warn!(cause = %e, "cannot read the outbox");
                Vec::new()
            }
        };
        if pending.is_empty() {
            // notify_one keeps a permit, so a commit between the scan and this wait is not missed.
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        }
        let mut failed = false;
        for batch in pending.chunks(IN_FLIGHT) {
            let mut sends = tokio::task::JoinSet::new();
            for entry in batch {
                let (log, mailer, entry) = (log.clone(), mailer.clone(), entry.clone());
                sends.spawn(async move { deliver(&log, &mailer, &entry).await });
            }
            while let Some(delivered) = sends.join_next().await {
                failed |= !matches!(delivered, Ok(true));
            }
            if failed {
                break;
            }
        }
        if failed {
            tokio::time::sleep(backoff.delay(failures)).await;
            failures = failures.saturating_add(1);
        } else {
            failures = 0;
        }
    }
}

/// Sends one e-mail and removes it from the outbox; false if it must be tried again.
async fn deliver(log: &Log, mailer: &Mailer, entry: &OutboxEntry) -> bool {
    let message = match build(entry) {
        Ok(message) => message,
        Err(cause) => {
            // No retry can fix a message that cannot be built: park it, and say so loudly.
            error!(txn_id = %entry.txn, %cause, "e-mail cannot be built; giving up on it");
            return log.mark_undeliverable(entry.txn, &cause).await.is_ok();
        }
    };
    let sent = mailer.send(message).await;
    if let Err(cause) = sent {
        warn!(txn_id = %entry.txn, %cause, "e-mail not accepted; will retry");
        return false;
    }
    debug!(txn_id = %entry.txn, message_id = %entry.message_id, "e-mail sent");
    let marked = match inject("outbox.after_send_before_mark").await {
        Ok(()) => log.mark_sent(entry.txn).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(cause) = marked {
        // It will be sent again, with the same Message-ID.
        warn!(%cause, txn_id = %entry.txn, "sent, but could not mark the e-mail sent");
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_message_with_the_stable_id() {
        let entry = OutboxEntry {
            txn: tpc_common::TxnId::generate(),
            to: "alice@example.com".into(),
            subject: "Your password was changed".into(),
            body: "hello".into(),
            message_id: "<x@tpc.local>".into(),
        };
        let raw = String::from_utf8(build(&entry).unwrap().formatted()).unwrap();
        assert!(raw.contains("Message-ID: <x@tpc.local>"), "{raw}");
        assert!(raw.contains("To: alice@example.com"));
    }
}

#[cfg(test)]
mod address_tests {
    use tpc_common::Email;

    /// Every address tpc accepts at registration must be one lettre can send to, or a committed
    /// registration's e-mail would be stuck in the outbox.
    #[test]
    fn every_accepted_address_is_a_lettre_address() {
        let candidates = [
            "alice@example.com",
            "a.b+tag@mail.example-corp.org",
            "x_y@a-b.c1.io",
            "o'neil@example.ie",
            "a!#$%&*+-/=?^_`{|}~@example.com",
            "a..b@example.com",
            "x@a.-b.com",
            "x@a-.com",
            ".a@example.com",
            "a.@example.com",
            "1@2.3",
            "a@b.c.d.e.f",
        ];
        for raw in candidates {
            if Email::parse(raw).is_ok() {
                assert!(
                    raw.parse::<lettre::Address>().is_ok(),
                    "tpc accepts {raw:?}, lettre does not"
                );
            }
        }
    }
}
