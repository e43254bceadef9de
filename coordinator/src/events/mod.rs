//! The events strategy (`--strategy events`): the question's own design, built as well as that design
//! can be built. The coordinator publishes the change once, durably (one forced batch: the record, the
//! e-mail and one sealed delivery per consumer), answers the client at once, and then delivers it at
//! least once to each consumer independently: the password participant, the history participant and
//! the mail server. Consumers are idempotent by transaction id (the participants' barrier record) and
//! apply or refuse on their own; nobody votes and nothing is compensated.
//!
//! - `queue`: per-user ordered delivery (pure);
//! - `seal`: the sealed deliveries (the consumers need the plaintext passwords; the log never holds
//!   them in the clear).
//!
//! What it allows, by design: a reader sees the password changed before the history (torn reads); a
//! consumer that refuses what the other applied leaves the user divergent for good (a reused password:
//! the password consumer applies it, the history consumer refuses it); the e-mail goes out for a change
//! that did not take effect.

mod queue;
mod seal;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tpc_common::{
    Backoff, Fingerprint, Fingerprinter, Operation, OperationKind, Strategy, TxnId, UserId, now_ms,
};
use tracing::{debug, error, info, warn};

use crate::email;
use crate::engine::{CommitRecord, Outcome, Participant, Refusal};
use crate::log::TxnRecord;
use crate::log::{Log, OutboxEntry, State, delivery_key};
use crate::peers::Peers;
use crate::runtime::{Answer, Stopped};
use crate::saga::StepResult;
use queue::DeliveryQueue;
pub use seal::{SealError, Sealer};

/// Who receives a published change. The e-mail is a consumer like the others: it gets the event on
/// its own, looks up the address, and sends, whatever the other two make of the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consumer {
    Password,
    History,
    Mail,
}

impl Consumer {
    pub const ALL: [Consumer; 3] = [Consumer::Password, Consumer::History, Consumer::Mail];
    const NAMES: [&'static str; 3] = ["password", "history", "mail"];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// Most deliveries waiting at once (their operations are held in memory until delivered); beyond,
/// new changes are refused as overloaded.
const MAX_UNDELIVERED: usize = 100_000;

/// How long an overloaded client is asked to wait.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// A change published and waiting for one consumer.
struct Delivery {
    txn: TxnId,
    user: UserId,
    op: Operation,
}

/// A request id's first change, so a retry gets its outcome and a reuse for another change is refused.
struct Published {
    txn: TxnId,
    kind: OperationKind,
    user: UserId,
    /// The payload's keyed digest (`None` after a restart: it is never written down).
    fingerprint: Option<Fingerprint>,
    /// True once the change is durable (a retry that arrives while it is being forced waits for it).
    durable: watch::Receiver<bool>,
}

struct Inner {
    log: Arc<Log>,
    peers: Peers,
    sealer: Sealer,
    outbox: mpsc::UnboundedSender<OutboxEntry>,
    consumers: HashMap<Consumer, mpsc::UnboundedSender<Delivery>>,
    requests: Mutex<HashMap<String, Published>>,
    fingerprints: Fingerprinter,
    undelivered: AtomicUsize,
    /// Deliveries in flight to each consumer: after an outage, a backlog is worked off a bounded
    /// number at a time instead of all at once (each would time out behind the others and be retried,
    /// piling up at the consumer).
    in_flight: HashMap<Consumer, Arc<Semaphore>>,
}

/// Deliveries in flight to one consumer at most.
const IN_FLIGHT: usize = 32;

/// Handle to the running publisher and its delivery tasks.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

impl Events {
    /// Starts one delivery task per consumer, each resuming what the log holds for it.
    pub fn start(
        log: Arc<Log>,
        peers: Peers,
        sealer: Sealer,
        outbox: mpsc::UnboundedSender<OutboxEntry>,
    ) -> Result<Self, crate::log::LogError> {
        let mut requests = HashMap::new();
        for r in log.records()? {
            // Every consumer had it, but noting that (unforced) was lost in a crash after the last
            // delivery's removal had reached the disk: note it now, or it would stay "committing".
            if r.state == State::Committing {
                let mut waiting = false;
                for c in Consumer::ALL {
                    waiting |= log.awaits(c.name(), r.txn)?;
                }
                if !waiting {
                    drop(log.set_state(r.txn, State::Committed));
                }
            }
            if matches!(r.state, State::Committing | State::Committed) {
                let (_, durable) = watch::channel(true);
                requests.insert(
                    r.request_id.clone(),
                    Published {
                        txn: r.txn,
                        kind: r.kind,
                        user: r.user,
                        fingerprint: None,
                        durable,
                    },
                );
            }
        }
        let mut consumers = HashMap::new();
        let mut feeds = Vec::new();
        for to in Consumer::ALL {
            let (tx, rx) = mpsc::unbounded_channel();
            consumers.insert(to, tx);
            feeds.push((to, rx));
        }
        let inner = Arc::new(Inner {
            log,
            peers,
            sealer,
            outbox,
            consumers,
            requests: Mutex::new(requests),
            fingerprints: Fingerprinter::new(),
            undelivered: AtomicUsize::new(0),
            in_flight: Consumer::ALL
                .into_iter()
                .map(|c| (c, Arc::new(Semaphore::new(IN_FLIGHT))))
                .collect(),
        });
        for (to, rx) in feeds {
            tokio::spawn(deliver_forever(to, inner.clone(), rx));
        }
        Ok(Self { inner })
    }

    /// Publishes `op` and answers COMMITTED once it is durable ("accepted"): what the consumers make
    /// of it, the client never hears.
    pub async fn execute(
        &self,
        txn: TxnId,
        request_id: String,
        op: Operation,
    ) -> Result<Answer, Stopped> {
        let inner = &self.inner;
        let (kind, user) = (op.kind(), op.user().clone());
        let fingerprint = inner.fingerprints.of(&op);
        let done = watch::channel(false);
        let earlier = {
            let mut requests = lock(&inner.requests);
            match requests.get(&request_id) {
                Some(p)
                    if p.kind != kind
                        || p.user != user
                        || p.fingerprint.is_some_and(|f| f != fingerprint) =>
                {
                    return Ok(Err(Refusal::RequestReused(request_id)));
                }
                Some(p) => Some((p.txn, p.durable.clone())),
                None => {
                    requests.insert(
                        request_id.clone(),
                        Published {
                            txn,
                            kind,
                            user: user.clone(),
                            fingerprint: Some(fingerprint),
                            durable: done.1,
                        },
                    );
                    None
                }
            }
        };
        if let Some((first, mut durable)) = earlier {
            if durable.wait_for(|d| *d).await.is_err() {
                return Err(Stopped);
            }
            return Ok(Ok(committed(first, request_id)));
        }
        let answer = self.publish(txn, &request_id, op).await;
        match &answer {
            Ok(outcome) if outcome.committed => {
                let _ = done.0.send(true);
            }
            // Nothing was published: the request id may run again.
            _ => {
                lock(&inner.requests).remove(&request_id);
            }
        }
        Ok(answer)
    }

    async fn publish(&self, txn: TxnId, request_id: &str, op: Operation) -> Answer {
        let inner = &self.inner;
        if inner.undelivered.load(Ordering::Relaxed) >= MAX_UNDELIVERED {
            return Err(Refusal::Overloaded {
                retry_after: RETRY_AFTER,
            });
        }
        let record = TxnRecord {
            txn,
            strategy: Strategy::Events,
            request_id: request_id.to_owned(),
            kind: op.kind(),
            user: op.user().clone(),
            // Known now for a registration; the e-mail consumer looks it up for an update.
            email: match &op {
                Operation::Register { email, .. } => Some(email.clone()),
                Operation::Update { .. } => None,
            },
            state: State::Committing,
            reason: String::new(),
            started_at: txn.created_ms(),
            decided_at: now_ms(),
            email_sent: false,
            email_error: None,
        };
        let mut batch = tpc_common::storage::Batch::default();
        for to in Consumer::ALL {
            batch.insert(
                delivery_key(to.name(), txn),
                inner.sealer.seal(txn, to.name(), &op),
            );
        }
        let forced = inner.log.force_with(&record, batch).await;
        if let Err(e) = forced {
            error!(cause = %e, "cannot force the published change; aborting the process");
            tpc_common::simulation::abort();
        }
        debug!(target: "tpc::protocol", txn_id = %txn, "events: change published (record and deliveries forced)");
        for (to, feed) in &inner.consumers {
            inner.undelivered.fetch_add(1, Ordering::Relaxed);
            let delivery = Delivery {
                txn,
                user: op.user().clone(),
                op: op.clone(),
            };
            if feed.send(delivery).is_err() {
                warn!(
                    consumer = to.name(),
                    "delivery task gone; the delivery waits in the log"
                );
            }
        }
        Ok(committed(txn, request_id.to_owned()))
    }

    /// The log collected a finished change.
    pub fn forgotten(&self, request_id: &str) {
        lock(&self.inner.requests).remove(request_id);
    }
}

fn committed(txn: TxnId, request_id: String) -> Outcome {
    Outcome {
        txn,
        request_id,
        committed: true,
        reason: String::new(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Delivers every change to `to`: first those the log holds, then each one published; per user in
/// order, users in parallel; each retried with capped backoff until the consumer answers for good.
async fn deliver_forever(
    to: Consumer,
    inner: Arc<Inner>,
    mut fresh: mpsc::UnboundedReceiver<Delivery>,
) {
    let mut queue = DeliveryQueue::default();
    let mut waiting: HashMap<TxnId, Delivery> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<TxnId>();
    let start = |d: &Delivery| {
        tokio::spawn(deliver_one(
            to,
            inner.clone(),
            d.txn,
            d.op.clone(),
            done_tx.clone(),
        ));
    };
    match inner.log.deliveries(to.name()).await {
        Ok(pending) => {
            if !pending.is_empty() {
                info!(target: "tpc::protocol", consumer = to.name(), pending = pending.len(), "recovery: resuming deliveries");
            }
            for (txn, sealed) in pending {
                match inner.sealer.open(txn, to.name(), &sealed) {
                    Ok(op) => {
                        inner.undelivered.fetch_add(1, Ordering::Relaxed);
                        let d = Delivery {
                            txn,
                            user: op.user().clone(),
                            op,
                        };
                        if queue.push(txn, d.user.clone()).is_some() {
                            start(&d);
                        }
                        waiting.insert(txn, d);
                    }
                    Err(e) => {
                        error!(txn_id = %txn, consumer = to.name(), cause = %e, "a delivery cannot be opened; it stays in the log")
                    }
                }
            }
        }
        Err(e) => error!(consumer = to.name(), cause = %e, "cannot read the deliveries at start"),
    }
    loop {
        tokio::select! {
            Some(d) = fresh.recv() => {
                if waiting.contains_key(&d.txn) {
                    // Found in the log at start as well: one delivery is enough.
                    inner.undelivered.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                if queue.push(d.txn, d.user.clone()).is_some() {
                    start(&d);
                }
                waiting.insert(d.txn, d);
            }
            Some(txn) = done_rx.recv() => {
                waiting.remove(&txn);
                inner.undelivered.fetch_sub(1, Ordering::Relaxed);
                if let Some(next) = queue.done(txn)
                    && let Some(d) = waiting.get(&next)
                {
                    start(d);
                }
            }
            else => return,
        }
    }
}

/// How long between two attempts of one delivery, at most.
const RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

async fn deliver_one(
    to: Consumer,
    inner: Arc<Inner>,
    txn: TxnId,
    op: Operation,
    done: mpsc::UnboundedSender<TxnId>,
) {
    let Ok(_slot) = inner.in_flight[&to].clone().acquire_owned().await else {
        return;
    };
    let refusal = match to {
        Consumer::Password => apply_until_answered(&inner, Participant::Password, txn, &op).await,
        Consumer::History => apply_until_answered(&inner, Participant::History, txn, &op).await,
        Consumer::Mail => mail_until_sent(&inner, txn, &op).await,
    };
    if let Some(reason) = &refusal {
        info!(target: "tpc::protocol", txn_id = %txn, consumer = to.name(), %reason, "events: {} refused the change", to.name());
        if let Err(e) = inner
            .log
            .note_refusal(txn, &format!("{} refused: {reason}", to.name()))
            .await
        {
            warn!(cause = %e, "could not note the refusal");
        }
    }
    match inner.log.delivered(to.name(), txn, &Consumer::NAMES).await {
        Ok(true) => {
            if let Err(e) = inner.log.set_state(txn, State::Committed).await {
                warn!(cause = %e, "could not note the change delivered");
            }
        }
        Ok(false) => {}
        Err(e) => warn!(cause = %e, "could not note the delivery"),
    }
    let _ = done.send(txn);
}

/// Sends `Apply` until the participant applies or refuses; returns the refusal.
async fn apply_until_answered(
    inner: &Inner,
    to: Participant,
    txn: TxnId,
    op: &Operation,
) -> Option<String> {
    let mut attempt = 0;
    loop {
        match inner.peers.apply(to, txn, Strategy::Events, op).await {
            Ok(StepResult::Applied { .. }) => return None,
            Ok(StepResult::Refused { reason }) => return Some(reason),
            Ok(StepResult::Unknown { error }) => {
                debug!(txn_id = %txn, consumer = to.name(), %error, "delivery not acknowledged; will retry");
            }
            // Answers no retry can change: give up on this delivery, loudly.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                ) =>
            {
                error!(txn_id = %txn, consumer = to.name(), %status, "delivery refused for good");
                return Some(format!("{}: {}", status.code(), status.message()));
            }
            Err(status) => {
                debug!(txn_id = %txn, consumer = to.name(), %status, "delivery failed; will retry");
            }
        }
        tokio::time::sleep(RETRY.delay(attempt)).await;
        attempt += 1;
    }
}

/// How many times the e-mail consumer looks for the address of a user the directory does not know (its
/// registration may still be on its way) before it gives up: about 6 seconds.
const MAIL_LOOKUPS: u32 = 10;

/// The e-mail consumer: finds the address, then hands the e-mail to the outbox (which sends it at
/// least once). Returns why it gave up, if it did.
async fn mail_until_sent(inner: &Inner, txn: TxnId, op: &Operation) -> Option<String> {
    let mut attempt = 0;
    let address = loop {
        let found = match op {
            Operation::Register { email, .. } => Ok(Some(email.clone())),
            Operation::Update { user, .. } => inner.peers.email_of(user).await,
        };
        // The directory may only be behind: give up on an unknown user only once the password
        // consumer has answered for this change (so its registration is not still on the way).
        let password_answered = !inner
            .log
            .still_awaits(Consumer::Password.name(), txn)
            .await
            .unwrap_or(true);
        match found {
            Ok(Some(address)) => break address,
            Ok(None) if password_answered && attempt + 1 >= MAIL_LOOKUPS => {
                let reason = "unknown user: no address to write to".to_owned();
                if let Err(e) = inner.log.note_mail_error(txn, &reason).await {
                    warn!(cause = %e, "could not note the e-mail error");
                }
                return Some(reason);
            }
            Ok(None) => {}
            Err(e) => debug!(txn_id = %txn, cause = %e, "address lookup failed; will retry"),
        }
        tokio::time::sleep(RETRY.delay(attempt)).await;
        attempt += 1;
    };
    let record = CommitRecord {
        txn,
        request_id: String::new(),
        kind: op.kind(),
        user: op.user().clone(),
        email: address.clone(),
        started_at: txn.created_ms(),
        decided_at: txn.created_ms(),
    };
    let mail = email::compose(&record);
    let mut attempt = 0;
    while let Err(e) = inner
        .log
        .queue_mail(Consumer::Mail.name(), &mail, &address)
        .await
    {
        warn!(cause = %e, attempt, "could not queue the e-mail; retrying");
        tokio::time::sleep(RETRY.delay(attempt)).await;
        attempt += 1;
    }
    let _ = inner.outbox.send(mail);
    None
}
