//! The e-mail dispatcher: delivers outbox entries through the [`Mailer`], at least once.
//!
//! Entries reach the outbox only in the batch that commits their transaction, and are sent only once
//! that batch is on disk (the runtime hands each entry over after the forced write; at start,
//! `Log::outbox` reads what is left), so an aborted transaction never produces mail. An entry leaves the
//! outbox only after the mail server (or the file transport) accepted it; failures are retried, each
//! entry with its own capped exponential backoff, and one the server refuses for good (5xx) is parked
//! with the reason. A crash between delivery and marking resends the mail with the same
//! `Message-ID`, which receivers can deduplicate.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::mpsc;
use tpc_common::fault::inject;
use tpc_common::{Backoff, TxnId};
use tracing::{debug, error, warn};

use crate::log::{Log, OutboxEntry};
use crate::mailer::{self, Delivery, Mailer};

/// How many e-mails are handed to an SMTP server at once: enough to keep up with commits when a
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
    // Entries that failed, each waiting out its own backoff: one e-mail the server keeps refusing
    // for now never delays the others.
    let mut retries = Retries::default();
    loop {
        if pending.is_empty() {
            let due = retries.next_due();
            tokio::select! {
                entry = fresh.recv() => match entry {
                    Some(entry) => pending.push_back(entry),
                    None => return,
                },
                _ = sleep_until(due), if due.is_some() => {}
            }
        }
        while let Ok(entry) = fresh.try_recv() {
            pending.push_back(entry);
        }
        pending.extend(retries.take_due(tokio::time::Instant::now()));
        if pending.is_empty() {
            continue;
        }
        let take = pending.len().min(MARK_BATCH);
        let batch: Vec<OutboxEntry> = pending.drain(..take).collect();
        let tried: Vec<TxnId> = batch.iter().map(|e| e.txn).collect();
        let (sent, failed) = deliver_all(&log, &mailer, batch).await;
        if !sent.is_empty()
            && let Err(cause) = log.mark_sent(&sent).await
        {
            // They will be sent again after a restart, with the same Message-IDs.
            warn!(%cause, "sent, but could not mark the e-mails sent");
        }
        // Sent or parked: done with them.
        let again: std::collections::HashSet<TxnId> = failed.iter().map(|e| e.txn).collect();
        for txn in tried.into_iter().filter(|t| !again.contains(t)) {
            retries.forget(txn);
        }
        let now = tokio::time::Instant::now();
        for entry in failed {
            retries.later(entry, now, &backoff);
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Failed entries and when each may be tried again (capped exponential backoff per entry).
#[derive(Default)]
struct Retries {
    waiting: Vec<(tokio::time::Instant, OutboxEntry)>,
    failures: std::collections::HashMap<TxnId, u32>,
}

impl Retries {
    fn later(&mut self, entry: OutboxEntry, now: tokio::time::Instant, backoff: &Backoff) {
        let failures = self.failures.entry(entry.txn).or_default();
        let at = now + backoff.delay(*failures);
        *failures = failures.saturating_add(1);
        self.waiting.push((at, entry));
    }

    fn forget(&mut self, txn: TxnId) {
        self.failures.remove(&txn);
    }

    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.waiting.iter().map(|(at, _)| *at).min()
    }

    /// The entries due by `now`, oldest failure first.
    fn take_due(&mut self, now: tokio::time::Instant) -> Vec<OutboxEntry> {
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.waiting = waiting;
        due.into_iter().map(|(_, entry)| entry).collect()
    }
}

/// Delivers `batch`; returns the transactions whose e-mail was accepted, and the entries to try again.
/// An e-mail that can never be sent is parked in the log with its reason.
async fn deliver_all(
    log: &Arc<Log>,
    mailer: &Mailer,
    batch: Vec<OutboxEntry>,
) -> (Vec<TxnId>, Vec<OutboxEntry>) {
    let done = match mailer {
        Mailer::Files(dir) => {
            let dir = dir.clone();
            let entries = batch.clone();
            match tpc_common::blocking::run(move || mailer::write_files(&dir, &entries)).await {
                Ok(done) => done,
                // A panic's payload is never passed on: it could hold anything.
                Err(_) => vec![Delivery::Failed("e-mail task failed".into()); batch.len()],
            }
        }
        Mailer::Smtp { transport, .. } => {
            send_all(&batch, |entry| {
                let transport = transport.clone();
                async move { Mailer::send_smtp(&transport, &entry).await }
            })
            .await
        }
        Mailer::Dialed(relay) => send_all(&batch, |entry| relay.clone().send(entry)).await,
    };
    let (mut sent, mut failed) = (Vec::new(), Vec::new());
    for (entry, delivery) in batch.into_iter().zip(done) {
        match delivery {
            Delivery::Sent => {
                debug!(txn_id = %entry.txn, message_id = %entry.message_id, "e-mail sent");
                sent.push(entry);
            }
            Delivery::Undeliverable(cause) => {
                // No retry can fix it: park it with the reason (`tpc txn show` says why).
                warn!(txn_id = %entry.txn, %cause, "e-mail can never be delivered; parked");
                if log.mark_undeliverable(entry.txn, &cause).await.is_err() {
                    failed.push(entry);
                }
            }
            Delivery::Failed(cause) => {
                warn!(txn_id = %entry.txn, %cause, "e-mail not accepted; will retry");
                failed.push(entry);
            }
        }
    }
    if !sent.is_empty()
        && let Err(e) = inject("outbox.after_send_before_mark").await
    {
        // They will be sent again, with the same Message-IDs.
        warn!(cause = %e, "sent, but could not mark the e-mails sent");
        failed.append(&mut sent);
    }
    (sent.into_iter().map(|e| e.txn).collect(), failed)
}

/// Hands the e-mails to the SMTP server (`send` sends one), `IN_FLIGHT` at a time; one delivery per
/// entry, in order.
async fn send_all<Sending>(
    batch: &[OutboxEntry],
    send: impl Fn(OutboxEntry) -> Sending,
) -> Vec<Delivery>
where
    Sending: std::future::Future<Output = Delivery> + Send + 'static,
{
    let mut done: Vec<Option<Delivery>> = batch.iter().map(|_| None).collect();
    let mut sends = tokio::task::JoinSet::new();
    let mut next = 0;
    loop {
        while sends.len() < IN_FLIGHT && next < batch.len() {
            let (sending, i) = (send(batch[next].clone()), next);
            sends.spawn(async move { (i, sending.await) });
            next += 1;
        }
        match sends.join_next().await {
            Some(Ok((i, delivery))) => done[i] = Some(delivery),
            // A send task panicked: its entry counts as failed below and is tried again.
            Some(Err(_)) => error!("e-mail task failed"),
            None => break,
        }
    }
    done.into_iter()
        .map(|d| d.unwrap_or_else(|| Delivery::Failed("e-mail task failed".into())))
        .collect()
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
