//! The e-mail dispatcher: delivers outbox entries with lettre, at least once.
//!
//! Entries reach the outbox only in the batch that commits their transaction, and are sent only once
//! that batch is on disk (the runtime hands each entry over after the forced write; at start,
//! `Log::outbox` reads what is left), so an aborted transaction never produces mail. An entry leaves the
//! outbox only after the mail server (or the file transport) accepted it; failures are retried with
//! capped exponential backoff. A crash between delivery and marking resends the mail with the same
//! `Message-ID`, which receivers can deduplicate.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::mpsc;
use tpc_common::fault::inject;
use tpc_common::{Backoff, TxnId};
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

/// How many sent e-mails are marked in one forced write, at most.
const MARK_BATCH: usize = 256;

/// Delivers the outbox until the task is dropped: first what the log holds at start, then each entry
/// the runtime hands over once its commit is on disk (`fresh`). No scan of the log and no extra forced
/// write per e-mail: sent e-mails are marked in batches, one forced write per batch.
pub async fn dispatch_forever(
    log: Arc<Log>,
    mailer: Mailer,
    mut fresh: mpsc::UnboundedReceiver<OutboxEntry>,
    backoff: Backoff,
) {
    let mut pending: VecDeque<OutboxEntry> = match log.outbox().await {
        Ok(pending) => pending.into(),
        Err(e) => {
            // Nothing to resend is known; later entries still flow. A restart reads the log again.
            error!(cause = %e, "cannot read the outbox at start");
            VecDeque::new()
        }
    };
    let mut failures = 0u32;
    loop {
        if pending.is_empty() {
            match fresh.recv().await {
                Some(entry) => pending.push_back(entry),
                None => return,
            }
        }
        while let Ok(entry) = fresh.try_recv() {
            pending.push_back(entry);
        }
        let take = pending.len().min(MARK_BATCH);
        let batch: Vec<OutboxEntry> = pending.drain(..take).collect();
        let (sent, failed) = deliver_all(&log, &mailer, batch).await;
        if !sent.is_empty()
            && let Err(cause) = log.mark_sent(&sent).await
        {
            // They will be sent again after a restart, with the same Message-IDs.
            warn!(%cause, "sent, but could not mark the e-mails sent");
        }
        if failed.is_empty() {
            failures = 0;
            continue;
        }
        // Retried first, in order, after a pause.
        for entry in failed.into_iter().rev() {
            pending.push_front(entry);
        }
        tokio::time::sleep(backoff.delay(failures)).await;
        failures = failures.saturating_add(1);
    }
}

/// Sends `batch`, `IN_FLIGHT` at a time; returns the transactions whose e-mail was accepted, and the
/// entries to try again.
async fn deliver_all(
    log: &Arc<Log>,
    mailer: &Mailer,
    batch: Vec<OutboxEntry>,
) -> (Vec<TxnId>, Vec<OutboxEntry>) {
    let (mut sent, mut failed) = (Vec::new(), Vec::new());
    let mut entries = batch.into_iter();
    let mut sends = tokio::task::JoinSet::new();
    loop {
        while sends.len() < IN_FLIGHT {
            let Some(entry) = entries.next() else { break };
            let (log, mailer) = (log.clone(), mailer.clone());
            sends.spawn(async move {
                let delivered = deliver(&log, &mailer, &entry).await;
                (entry, delivered)
            });
        }
        let Some(done) = sends.join_next().await else {
            break;
        };
        match done {
            Ok((entry, Delivery::Sent)) => sent.push(entry.txn),
            Ok((_, Delivery::Parked)) => {}
            Ok((entry, Delivery::Failed)) => failed.push(entry),
            // A send task panicked: its entry is still in the log and goes out after a restart.
            Err(e) => error!(cause = %e, "e-mail task failed"),
        }
    }
    (sent, failed)
}

enum Delivery {
    /// Accepted by the mail server (or the file transport).
    Sent,
    /// Can never be sent; taken out of the outbox with its reason.
    Parked,
    /// Try again later.
    Failed,
}

/// Sends one e-mail.
async fn deliver(log: &Log, mailer: &Mailer, entry: &OutboxEntry) -> Delivery {
    let message = match build(entry) {
        Ok(message) => message,
        Err(cause) => {
            // No retry can fix a message that cannot be built: park it, and say so loudly.
            error!(txn_id = %entry.txn, %cause, "e-mail cannot be built; giving up on it");
            return match log.mark_undeliverable(entry.txn, &cause).await {
                Ok(()) => Delivery::Parked,
                Err(_) => Delivery::Failed,
            };
        }
    };
    if let Err(cause) = mailer.send(message).await {
        warn!(txn_id = %entry.txn, %cause, "e-mail not accepted; will retry");
        return Delivery::Failed;
    }
    debug!(txn_id = %entry.txn, message_id = %entry.message_id, "e-mail sent");
    if let Err(e) = inject("outbox.after_send_before_mark").await {
        // It will be sent again, with the same Message-ID.
        warn!(cause = %e, txn_id = %entry.txn, "sent, but could not mark the e-mail sent");
        return Delivery::Failed;
    }
    Delivery::Sent
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
