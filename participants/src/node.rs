//! The participant runtime: executes the engine's commands (argon2 on the blocking pool, forced writes
//! through the group commit, replies, `QueryDecision` calls) and feeds the results back as events.
//!
//! The engine sits behind a plain mutex that is never held across an `.await`: every event is handled
//! synchronously, and the slow work happens between events.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::transport::Channel;
use tpc_common::fault::inject;
use tpc_common::{Now, Operation, TxnId, UserId, monotonic_ms, now_ms};
use tpc_proto::v1::QueryDecisionRequest;
use tpc_proto::v1::query_decision_response::Decision as WireDecision;
use tpc_proto::v1::transaction_manager_client::TransactionManagerClient;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::engine::{Command, Config, Decision, Engine, Event, Refusal, Vote};
use crate::resource::Resource;
use crate::store::{Data, Store, StoreError};

mod local;

/// How a request driven through the engine was answered.
#[derive(Debug)]
pub enum Reply<C> {
    Vote(Vote<C>),
    Ack,
    /// Internal events (ticks, learned decisions) answer nobody.
    Nothing,
}

pub struct Node<R: Resource> {
    engine: Mutex<Engine<R::Change>>,
    store: Store<R::Change>,
    data: Data,
    resource: Arc<R>,
    /// Readers waiting for the engine's word that their user is free (`true`) or that they waited
    /// too long (`false`), by the number the engine knows them by.
    readers: Mutex<std::collections::HashMap<u64, tokio::sync::oneshot::Sender<bool>>>,
    next_reader: std::sync::atomic::AtomicU64,
    /// Bounds the argon2 work in flight (each OWASP hash holds 19 MiB): a flood of requests queues here
    /// instead of filling the blocking pool and the memory.
    hashing: Arc<Semaphore>,
    /// Every coordinator of the group (one, unless they run with a leader elected on etcd): an
    /// in-doubt query goes to all of them at once.
    coordinators: Vec<TransactionManagerClient<Channel>>,
    /// Serialize the saga and events operations of a user (`local.rs`).
    user_stripes: Vec<tokio::sync::Mutex<()>>,
    /// A saga step of an unknown transaction older than this is refused (`local.rs`).
    max_step_age_ms: u64,
    /// Digests `Prepare` payloads, so a repeat with another payload can be told apart.
    fingerprints: tpc_common::Fingerprinter,
    /// How long one `QueryDecision` may take (the engine's `query_timeout_ms`).
    query_timeout: Duration,
    /// Why the store cannot be trusted, if it cannot (`witness.rs`): then the node refuses every read
    /// and every protocol call with `DATA_LOSS`, and asks nobody about its in-doubt transactions.
    lost: Option<String>,
}

impl<R: Resource> Node<R> {
    /// The store this participant answers from, and how far its durable history goes.
    pub fn store_mark(&self) -> crate::store::StoreMark {
        self.store.mark()
    }

    /// Opens the store, recovers in-doubt transactions and locks their users.
    pub fn open(
        resource: R,
        store: Store<R::Change>,
        coordinators: Vec<Channel>,
        mut config: Config,
        read_wait: Duration,
        lost: Option<String>,
    ) -> Result<Arc<Self>, StoreError> {
        config.read_wait_ms = read_wait.as_millis() as u64;
        let recovered = store.recover()?;
        let mut engine = Engine::new(config);
        if !recovered.prepared.is_empty() {
            info!(
                participant = R::NAME,
                in_doubt = recovered.prepared.len(),
                "recovered prepared transactions; asking the coordinator for their outcome"
            );
        }
        // Committed records carry wall times; the engine's tombstone timers are monotonic.
        let now = Now::current();
        engine.handle(Event::Recovered {
            prepared: recovered.prepared,
            committed: recovered
                .committed
                .into_iter()
                .map(|(txn, at)| (txn, now.mono_of_wall(at)))
                .collect(),
        });
        Ok(Arc::new(Self {
            engine: Mutex::new(engine),
            data: store.data(),
            store,
            resource: Arc::new(resource),
            readers: Mutex::new(std::collections::HashMap::new()),
            next_reader: std::sync::atomic::AtomicU64::new(0),
            hashing: Arc::new(Semaphore::new(hashing_slots())),
            coordinators: coordinators
                .into_iter()
                .map(TransactionManagerClient::new)
                .collect(),
            user_stripes: (0..local::USER_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            max_step_age_ms: config.prepare_max_age_ms,
            fingerprints: tpc_common::Fingerprinter::new(),
            query_timeout: Duration::from_millis(config.query_timeout_ms),
            lost,
        }))
    }

    /// Why this node's store cannot be trusted, if it cannot.
    pub fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    /// `DATA_LOSS` if the store cannot be trusted: nothing is served from it, and nothing written to it.
    pub fn serving(&self) -> Result<(), Status> {
        match &self.lost {
            None => Ok(()),
            Some(reason) => Err(Status::data_loss(format!(
                "{reason}; this participant serves nothing until an operator repairs its store or restarts it with --accept-data-loss"
            ))),
        }
    }

    /// Keeps the witness up to date with how far the store's durable history goes.
    pub async fn witness_forever(self: Arc<Self>, witness: crate::witness::Witness) {
        let mut every = tokio::time::interval(crate::witness::EVERY);
        let mut recorded = self.store.mark().seq;
        loop {
            every.tick().await;
            let mark = self.store.mark();
            if mark.seq <= recorded {
                continue;
            }
            let (witness, seq) = (witness.clone(), mark.seq);
            match tpc_common::blocking::run(move || witness.record(&mark)).await {
                Ok(Ok(())) => recorded = seq,
                Ok(Err(e)) => {
                    warn!(participant = R::NAME, cause = %e, "cannot bring the store's witness up to date")
                }
                Err(_) => warn!(participant = R::NAME, "the task writing the witness failed"),
            }
        }
    }

    pub fn resource(&self) -> &R {
        &self.resource
    }

    /// The keyed digest of a `Prepare`'s payload (under this process's key).
    pub fn fingerprint(&self, op: &Operation) -> tpc_common::Fingerprint {
        self.fingerprints.of(op)
    }

    /// In-doubt transactions and the number of locked users.
    pub fn status(&self) -> (Vec<TxnId>, usize) {
        let engine = self.engine();
        (engine.in_doubt(), engine.locked_users())
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, Engine<R::Change>> {
        // A panic while holding the lock would be an engine bug; the state is still the best we have.
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles `event`, then every command that follows from it, and answers when the engine says
    /// (its `Vote` or `Ack`): the runtime adds no rule of its own about when a reply may leave.
    pub async fn drive(
        self: &Arc<Self>,
        event: Event<R::Change>,
        op: Option<Operation>,
    ) -> Result<Reply<R::Change>, Status> {
        self.clone().step(event, op).await
    }

    /// The work of [`Node::drive`].
    ///
    /// The chain of commands runs in its own task: if the caller goes away (the coordinator crashed,
    /// the RPC was cancelled), it still runs to its end, so no transaction is left half-way between two
    /// engine states, holding its user's lock forever; and it goes on after the answer left.
    pub async fn step(
        self: Arc<Self>,
        event: Event<R::Change>,
        op: Option<Operation>,
    ) -> Result<Reply<R::Change>, Status> {
        self.serving()?;
        // A Prepare takes the user's lock only once its hashing can start: while it waits for a slot,
        // the user stays free, and an Abort that arrives meanwhile leaves a tombstone, so the Prepare
        // then votes no without doing any work.
        let slot = match &event {
            Event::PrepareRequested { .. } => Some(self.hashing_slot().await?),
            _ => None,
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        let chain = tokio::spawn(
            async move { self.run(event, op.as_ref(), slot, answer).await }.in_current_span(),
        );
        match answered.await {
            Ok(reply) => Ok(reply),
            // No answer: the chain failed (a refusal, an injected lost reply).
            Err(_) => match chain.await {
                Ok(Err(status)) => Err(status),
                Ok(Ok(())) => Ok(Reply::Nothing),
                // A fixed message: a panic's payload could hold anything, and reaches no client.
                Err(_) => Err(Status::internal("participant task failed")),
            },
        }
    }

    async fn run(
        self: &Arc<Self>,
        event: Event<R::Change>,
        op: Option<&Operation>,
        mut slot: Option<OwnedSemaphorePermit>,
        answer: tokio::sync::oneshot::Sender<Reply<R::Change>>,
    ) -> Result<(), Status> {
        self.serving()?;
        let mut queue: VecDeque<_> = self.engine().handle(event).into();
        let mut answer = Some(answer);
        // Set by an `error` fail point after a step that completed: its reply is lost.
        let mut reply_lost = false;
        while let Some(command) = queue.pop_front() {
            let next = match command {
                Command::Validate { txn } => {
                    let Some(op) = op.cloned() else {
                        return Err(Status::internal("validation without an operation"));
                    };
                    let (resource, data) = (self.resource.clone(), self.data.clone());
                    let slot = match slot.take() {
                        Some(slot) => slot,
                        None => self.hashing_slot().await?,
                    };
                    let outcome = if resource.validates_in_place() {
                        let outcome = resource.validate(&data, &op);
                        drop(slot);
                        outcome
                    } else {
                        blocking(slot, move || resource.validate(&data, &op)).await?
                    };
                    let outcome = outcome.unwrap_or_else(|e| {
                            // A read that fails breaks no promise: the change votes no, and the
                            // process keeps serving every other user (a record that cannot be
                            // decoded would otherwise crash it at every retry).
                            error!(participant = R::NAME, txn_id = %txn, cause = %e, "cannot read the user's stored data; voting no");
                            Err(format!("{} participant cannot read this user's stored data: {e}", R::NAME))
                        });
                    match &outcome {
                        Ok(_) => {
                            debug!(target: "tpc::protocol", participant = R::NAME, txn_id = %txn, "{}: checks passed, forcing PREPARED record", R::NAME)
                        }
                        Err(reason) => {
                            info!(target: "tpc::protocol", participant = R::NAME, txn_id = %txn, "{}: votes NO ({reason}); writes nothing", R::NAME)
                        }
                    }
                    Some(Event::Validated { txn, outcome })
                }
                Command::ForcePrepared { txn, user, change } => {
                    if inject("part.before_prepare_forced").await.is_err() {
                        fatal(StoreError::Injected);
                    }
                    if let Err(e) = self
                        .store
                        .force_prepared(txn, &user, &change, now_ms())
                        .await
                    {
                        fatal(e)
                    }
                    reply_lost |= inject("part.after_prepare_forced").await.is_err();
                    debug!(target: "tpc::protocol", participant = R::NAME, txn_id = %txn, "{}: PREPARED record forced, votes YES (now in doubt until told)", R::NAME);
                    Some(Event::PreparedForced {
                        txn,
                        at: monotonic_ms(),
                    })
                }
                Command::ApplyCommit { txn, change } => {
                    if inject("part.before_commit_applied").await.is_err() {
                        fatal(StoreError::Injected);
                    }
                    let at = now_ms();
                    let (resource, data) = (self.resource.clone(), self.data.clone());
                    let committed = self.store.force_commit(txn, at, move |batch| {
                        resource.apply(&data, txn, &change, at, batch).map(drop)
                    });
                    if let Err(e) = committed.await {
                        fatal(e)
                    }
                    // One line per transaction at info level: its outcome here (a no-vote, a commit or an abort).
                    info!(target: "tpc::protocol", participant = R::NAME, txn_id = %txn, "{}: change applied, COMMITTED record forced, lock released", R::NAME);
                    reply_lost |= inject("part.after_commit_forced").await.is_err();
                    Some(Event::CommitApplied {
                        txn,
                        at: monotonic_ms(),
                    })
                }
                Command::DropPrepared { txn } => {
                    info!(target: "tpc::protocol", participant = R::NAME, txn_id = %txn, "{}: aborted, prepared record dropped", R::NAME);
                    self.store.remove(txn);
                    None
                }
                Command::Forget { txn } => {
                    self.store.remove(txn);
                    None
                }
                Command::Vote { vote, .. } => {
                    if !reply_lost && let Some(answer) = answer.take() {
                        let _ = answer.send(Reply::Vote(vote));
                    }
                    None
                }
                Command::Ack { .. } => {
                    if !reply_lost && let Some(answer) = answer.take() {
                        let _ = answer.send(Reply::Ack);
                    }
                    None
                }
                Command::Refuse { txn, refusal } => return Err(refusal_status(txn, refusal)),
                Command::QueryDecision { txn } => {
                    self.spawn_query(txn);
                    None
                }
                Command::Read { reader } => {
                    self.answer_reader(reader, true);
                    None
                }
                Command::RefuseRead { reader } => {
                    self.answer_reader(reader, false);
                    None
                }
            };
            if let Some(event) = next {
                queue.extend(self.engine().handle(event));
            }
        }
        if reply_lost {
            return Err(Status::unavailable("injected: the reply was lost"));
        }
        if let Some(answer) = answer.take() {
            let _ = answer.send(Reply::Nothing);
        }
        Ok(())
    }

    /// [`Node::run`] for an event nobody waits to hear answered (a tick, a learnt decision).
    async fn run_unanswered(self: &Arc<Self>, event: Event<R::Change>) -> Result<(), Status> {
        let (answer, _) = tokio::sync::oneshot::channel();
        self.run(event, None, None, answer).await
    }

    /// Runs argon2 work on the blocking pool, never on an async worker, a bounded number at a time.
    pub async fn hash_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        blocking(self.hashing_slot().await?, work).await
    }

    /// Waits for one of the bounded hashing slots.
    async fn hashing_slot(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.hashing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("shutting down"))
    }

    /// Asks the coordinator for an in-doubt transaction's outcome and applies what it says.
    fn spawn_query(self: &Arc<Self>, txn: TxnId) {
        let node = self.clone();
        let span = info_span!("in_doubt", participant = R::NAME, txn_id = %txn);
        tokio::spawn(
            async move {
                let decision = node.ask_decision(txn).await;
                debug!(target: "tpc::protocol", participant = R::NAME, "{}: in doubt, asked QueryDecision → {decision:?}", R::NAME);
                let event = Event::DecisionLearned {
                    txn,
                    decision,
                    at: monotonic_ms(),
                };
                if let Err(status) = node.run_unanswered(event).await {
                    warn!(%status, "could not apply the learned decision");
                }
            }
            .instrument(span),
        );
    }

    /// Asks every coordinator at once and takes the first decision (committed or aborted): a standby
    /// (or a deposed leader) answers `UNAVAILABLE`, a dead one does not answer, and neither may hold
    /// up the leader's word.
    /// With one coordinator it is one call, as ever.
    async fn ask_decision(&self, txn: TxnId) -> Decision {
        let mut asking = tokio::task::JoinSet::new();
        for (which, client) in self.coordinators.iter().enumerate() {
            let mut client = client.clone();
            let request = tpc_common::telemetry::request_with_txn_id(
                QueryDecisionRequest {
                    txn_id: txn.to_string(),
                },
                &txn,
            );
            let timeout = self.query_timeout;
            asking.spawn(async move {
                let answer = tokio::time::timeout(timeout, client.query_decision(request)).await;
                (which, answer)
            });
        }
        while let Some(answer) = asking.join_next().await {
            match answer {
                Ok((which, Ok(Ok(resp)))) => match resp.into_inner().decision() {
                    WireDecision::Committed => return Decision::Committed,
                    WireDecision::Aborted => return Decision::Aborted,
                    // Not decided yet, as far as this one knows: another may know better (a leader
                    // that lost its lease and has not noticed yet still answers).
                    WireDecision::Pending | WireDecision::Unspecified => {
                        debug!(coordinator = which, "QueryDecision: pending");
                    }
                },
                Ok((which, Ok(Err(status)))) => {
                    debug!(coordinator = which, code = ?status.code(), "coordinator did not answer QueryDecision");
                }
                Ok((which, Err(_))) => debug!(coordinator = which, "QueryDecision timed out"),
                Err(_) => debug!("a QueryDecision task failed"),
            }
        }
        // No answer is reported too: the engine asks again at its next turn, not before.
        Decision::Pending
    }

    /// Runs the engine's clock: in-doubt queries and forgetting old tombstones.
    pub async fn tick_forever(self: Arc<Self>, every: Duration) {
        let mut interval = tokio::time::interval(every);
        loop {
            interval.tick().await;
            if self.lost.is_some() {
                // Its in-doubt transactions stay in doubt: the store they were prepared in is not
                // trusted.
                continue;
            }
            if let Err(status) = self
                .run_unanswered(Event::Tick {
                    now: monotonic_ms(),
                })
                .await
            {
                warn!(%status, "tick failed");
            }
        }
    }

    /// Reads `user`'s committed data once no transaction holds the user (`NOT_FOUND` if there is none).
    pub async fn read<T: serde::de::DeserializeOwned + Send + 'static>(
        self: &Arc<Self>,
        user: &UserId,
    ) -> Result<T, Status> {
        self.read_with(user, |data, user| data.get(user)).await
    }

    /// Reads `user`'s committed data with `read`, on the blocking pool (a read can wait for the disk),
    /// once no transaction holds the user (`NOT_FOUND` if `read` finds nothing).
    pub async fn read_with<T: Send + 'static>(
        self: &Arc<Self>,
        user: &UserId,
        read: impl FnOnce(&Data, &UserId) -> Result<Option<T>, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        self.serving()?;
        self.wait_unlocked(user).await?;
        let (data, owner) = (self.data.clone(), user.clone());
        tpc_common::blocking::run(move || read(&data, &owner))
            .await
            .map_err(|_| Status::internal("the read failed"))?
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::not_found(format!("unknown user {user}")))
    }

    /// Waits until the engine lets a read of `user` go (no transaction holds the user), or refuses it
    /// with `UNAVAILABLE` after the read wait (the coordinator may be down with the user in doubt).
    pub async fn wait_unlocked(self: &Arc<Self>, user: &UserId) -> Result<(), Status> {
        let reader = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.readers).insert(reader, tx);
        let asked = Event::ReadRequested {
            reader,
            user: user.clone(),
            at: monotonic_ms(),
        };
        if let Err(status) = self.run_unanswered(asked).await {
            lock(&self.readers).remove(&reader);
            return Err(status);
        }
        match rx.await {
            Ok(true) => Ok(()),
            _ => Err(Status::unavailable(
                "the user has a transaction in doubt; try again later",
            )),
        }
    }

    fn answer_reader(&self, reader: u64, free: bool) {
        if let Some(waiting) = lock(&self.readers).remove(&reader) {
            // A reader that went away (its call was cancelled) no longer listens.
            let _ = waiting.send(free);
        }
    }
}

/// Runs `work` in a task of its own, which a cancelled caller does not stop.
pub async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(work)
        .await
        // A fixed message: a panic's payload could hold anything, and reaches no client.
        .map_err(|_| Status::internal("participant task failed"))?
}

/// Runs `work` on the blocking pool, holding `slot` until it is done.
async fn blocking<T: Send + 'static>(
    slot: OwnedSemaphorePermit,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    let done = tpc_common::blocking::run(work).await;
    drop(slot);
    done.map_err(|_| Status::internal("hashing task failed"))
}

/// One hash per core. Each OWASP hash works through 19 MiB: with two per core, eight of them on two
/// cores (both participants) evicted each other from the caches, and a change cost 5% more CPU (83–85%
/// of the argon2 bound against 89%, `tpc bench --argon2 owasp`); the memory halves too.
fn hashing_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn refusal_status(txn: TxnId, refusal: Refusal) -> Status {
    match refusal {
        Refusal::InProgress => Status::unavailable(format!("{txn} {}", tpc_proto::IN_PROGRESS)),
        Refusal::AlreadyCommitted => Status::failed_precondition(format!("{txn} is committed")),
        Refusal::AlreadyAborted => Status::failed_precondition(format!("{txn} was aborted")),
        Refusal::NotPrepared => Status::failed_precondition(format!("{txn} is not prepared")),
    }
}

/// A failed forced write leaves the participant unable to keep its promises: stop at once and let
/// recovery start from what is durable (as databases do when fsync fails).
fn fatal(err: StoreError) -> ! {
    error!(cause = %err, "storage failed; aborting the process");
    tpc_common::simulation::abort()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it cannot leave the map half-changed (one insert or remove).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tpc_common::Password;

    use super::*;

    /// A resource whose checks block until released, and which records whose checks ran.
    #[derive(Default)]
    struct Gate {
        open: AtomicBool,
        checked: StdMutex<Vec<UserId>>,
    }

    impl Resource for Arc<Gate> {
        type Change = String;
        type Undo = ();
        const NAME: &'static str = "gate";

        fn validate(&self, _: &Data, op: &Operation) -> Result<Result<String, String>, StoreError> {
            self.checked.lock().unwrap().push(op.user().clone());
            while !self.open.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(Ok("change".into()))
        }

        fn apply(
            &self,
            _: &Data,
            _: TxnId,
            _: &String,
            _: u64,
            _: &mut tpc_common::storage::Batch,
        ) -> Result<(), StoreError> {
            Ok(())
        }

        fn compensate(
            &self,
            _: &Data,
            _: TxnId,
            _: &UserId,
            _: &(),
            _: &mut tpc_common::storage::Batch,
        ) -> Result<bool, StoreError> {
            Ok(true)
        }
    }

    fn update(user: &str) -> Operation {
        Operation::Update {
            user: UserId::parse(user).unwrap(),
            current: Password::new("current_password", "a".into()).unwrap(),
            new: Password::new("new_password", "b".into()).unwrap(),
        }
    }

    fn prepare(
        node: &Arc<Node<Arc<Gate>>>,
        txn: TxnId,
        user: &str,
    ) -> tokio::task::JoinHandle<Result<Reply<String>, Status>> {
        let (node, op) = (node.clone(), update(user));
        tokio::spawn(async move {
            let event = Event::PrepareRequested {
                txn,
                user: op.user().clone(),
                wall_ms: now_ms(),
                payload: None,
            };
            node.drive(event, Some(op)).await
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_prepare_waiting_for_a_hashing_slot_holds_no_lock_and_an_abort_drops_its_work() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate::default());
        let store = Store::open(dir.path(), tpc_common::DEFAULT_CACHE_MIB).unwrap();
        let coordinator =
            vec![tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy()];
        let node = Node::open(
            gate.clone(),
            store,
            coordinator,
            Config::default(),
            Duration::from_secs(1),
            None,
        )
        .unwrap();

        // Every hashing slot busy with another user's checks.
        let busy: Vec<_> = (0..hashing_slots())
            .map(|i| prepare(&node, TxnId::generate(), &format!("busy{i}")))
            .collect();
        while gate.checked.lock().unwrap().len() < busy.len() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let late = TxnId::generate();
        let waiting = prepare(&node, late, "alice");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !node.engine().is_locked(&UserId::parse("alice").unwrap()),
            "waiting for a slot, the Prepare holds no lock"
        );
        let abort = Event::AbortRequested {
            txn: late,
            at: monotonic_ms(),
        };
        assert!(matches!(node.drive(abort, None).await, Ok(Reply::Ack)));

        gate.open.store(true, Ordering::Release);
        for prepared in busy {
            assert!(matches!(
                prepared.await.unwrap(),
                Ok(Reply::Vote(Vote::Yes(_)))
            ));
        }
        let vote = waiting.await.unwrap().unwrap();
        assert!(
            matches!(&vote, Reply::Vote(Vote::No(reason)) if reason.contains("aborted")),
            "{vote:?}"
        );
        assert!(
            !gate
                .checked
                .lock()
                .unwrap()
                .contains(&UserId::parse("alice").unwrap()),
            "the aborted transaction's checks never ran"
        );
    }
}
