//! The saga and events operations of a participant: `Apply` (a local transaction, in effect at once)
//! and `Compensate` (its undo), guarded by the barrier (`barrier.rs`). Two-phase commit never comes
//! here.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tonic::Status;
use tpc_common::{Operation, Strategy, TxnId, UserId, now_ms};
use tracing::{info, warn};

use super::{Node, fatal};
use crate::barrier::{self, Applied, ApplyStep, Barrier, CompensateStep};
use crate::resource::Resource;

/// How many locks the users are spread over: a user's `Apply`s and `Compensate`s run one at a time;
/// two users sharing a stripe only wait for each other briefly.
pub(super) const USER_STRIPES: usize = 64;

const TOO_OLD: &str = "saga step is too old: its saga gave up on it";

/// How long barrier records are kept (24 h): far longer than any saga step may arrive late (20 s), and
/// than an events delivery waits for a consumer in any outage the operator would not notice.
pub const BARRIER_RETENTION_MS: u64 = 24 * 3600 * 1000;

/// A Compensate of a transaction this old with no record is refused: its record may be collected
/// by now (an hour of margin before the retention).
const COLLECTABLE_AFTER_MS: u64 = BARRIER_RETENTION_MS - 3600 * 1000;

/// Barrier records deleted per slice of collection.
const BARRIER_SLICE: usize = 1_000;

impl<R: Resource> Node<R> {
    /// `Apply`: checks `op` (argon2 work) and applies it at once, durably; or answers from the barrier.
    pub async fn apply_local(
        self: &Arc<Self>,
        txn: TxnId,
        strategy: Strategy,
        op: Operation,
    ) -> Result<Applied, Status> {
        // The barrier is read under the user's lock only: a first Apply holds it until its record is
        // on disk, so a retry never answers APPLIED from a record a crash could still take back; and a
        // Compensate of this transaction cannot slip in between the read and the apply.
        self.serving()?;
        let _user = self.user_stripe(op.user()).lock().await;
        if let Some(answer) = self.answered_apply(txn, strategy).await? {
            return Ok(answer);
        }
        // A saga step arrives within seconds of its saga's start, or its orchestrator gave up on it long
        // ago (and compensated it): with no record of it, refuse, so that barrier records can be
        // collected without letting a very late Apply hang. Events carry no such limit: a delivery is
        // owed however late it comes.
        if strategy == Strategy::Saga
            && txn.created_ms().saturating_add(self.max_step_age_ms) < now_ms()
        {
            return Ok(Applied::No(TOO_OLD.into()));
        }
        if self.engine().is_locked(op.user()) {
            return Err(Status::unavailable(
                "conflict: a two-phase-commit transaction holds this user; retry",
            ));
        }
        let user = op.user().clone();
        let (resource, data) = (self.resource.clone(), self.data.clone());
        let outcome = self
            .hash_work(move || resource.validate(&data, &op))
            .await?
            .unwrap_or_else(|e| fatal(e));
        let change = match outcome {
            Ok(change) => change,
            Err(reason) => {
                let refused = Barrier::<R::Undo>::Refused {
                    strategy,
                    reason: reason.clone(),
                };
                self.store.note_barrier(txn, &refused);
                info!(target: "tpc::protocol", participant = R::NAME, txn_id = %txn, %strategy, "{}: refuses ({reason}); changes nothing", R::NAME);
                return Ok(Applied::No(reason));
            }
        };
        let at = now_ms();
        let detail = R::vote_detail(&change);
        let (resource, data, recorded) = (self.resource.clone(), self.data.clone(), detail.clone());
        let applied = self.store.force_barrier(txn, move |batch| {
            let undo = resource.apply(&data, txn, &change, at, batch)?;
            Ok(Barrier::Applied {
                strategy,
                user,
                // Events never compensate: keeping what a change replaced (hashes) would only cost
                // space.
                undo: (strategy == Strategy::Saga).then_some(undo),
                detail: recorded,
                at,
            })
        });
        if let Err(e) = applied.await {
            fatal(e)
        }
        info!(target: "tpc::protocol", participant = R::NAME, txn_id = %txn, %strategy, "{}: applied and forced (in effect now)", R::NAME);
        Ok(Applied::Yes(detail))
    }

    async fn answered_apply(
        self: &Arc<Self>,
        txn: TxnId,
        strategy: Strategy,
    ) -> Result<Option<Applied>, Status> {
        let recorded = self.recorded_barrier(txn).await?;
        match barrier::on_apply(recorded.as_ref(), strategy) {
            ApplyStep::Answer(answer) => Ok(Some(answer)),
            ApplyStep::Run => Ok(None),
            ApplyStep::WrongStrategy(other) => Err(wrong_strategy(txn, other)),
        }
    }

    /// `Compensate`: undoes `txn`'s applied change, or records that there was none to undo.
    pub async fn compensate_local(
        self: &Arc<Self>,
        txn: TxnId,
        strategy: Strategy,
        user: UserId,
    ) -> Result<(), Status> {
        if strategy != Strategy::Saga {
            return Err(Status::failed_precondition(format!(
                "only a saga compensates, not {strategy}"
            )));
        }
        self.serving()?;
        let _user = self.user_stripe(&user).lock().await;
        let recorded = self.recorded_barrier(txn).await?;
        let at = now_ms();
        let compensation = match barrier::on_compensate(recorded.as_ref(), strategy) {
            CompensateStep::Ack => return Ok(()),
            CompensateStep::WrongStrategy(other) => return Err(wrong_strategy(txn, other)),
            // No record, and the transaction is old enough that its record may have been collected:
            // whether it applied cannot be told, and acknowledging would leave it in effect. Refuse;
            // the saga stays compensating, in sight of the operator.
            CompensateStep::RecordEmpty
                if recorded.is_none()
                    && txn.created_ms().saturating_add(COLLECTABLE_AFTER_MS) < now_ms() =>
            {
                return Err(Status::failed_precondition(format!(
                    "{txn} is too old to compensate: its barrier record may have been collected, so whether it applied here is unknown"
                )));
            }
            CompensateStep::RecordEmpty => {
                info!(target: "tpc::protocol", participant = R::NAME, txn_id = %txn, "{}: compensation of a step never applied here: recorded, so a late Apply does nothing", R::NAME);
                let record = Barrier::<R::Undo>::Compensated {
                    strategy,
                    user,
                    undone: false,
                    at,
                };
                self.store.force_barrier(txn, move |_| Ok(record)).await
            }
            CompensateStep::Undo { user, undo } => {
                let (resource, data) = (self.resource.clone(), self.data.clone());
                let undone = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let noted = undone.clone();
                let forced = self
                    .store
                    .force_barrier::<R::Undo>(txn, move |batch| {
                        let undone = resource.compensate(&data, txn, &user, &undo, batch)?;
                        noted.store(undone, std::sync::atomic::Ordering::Release);
                        Ok(Barrier::Compensated {
                            strategy,
                            user,
                            undone,
                            at,
                        })
                    })
                    .await;
                if forced.is_ok() {
                    if undone.load(std::sync::atomic::Ordering::Acquire) {
                        info!(target: "tpc::protocol", participant = R::NAME, txn_id = %txn, "{}: compensated (previous state restored)", R::NAME);
                    } else {
                        warn!(participant = R::NAME, txn_id = %txn, "a newer change of the user is in effect; compensation leaves it alone");
                    }
                }
                forced
            }
        };
        if let Err(e) = compensation {
            fatal(e)
        }
        Ok(())
    }

    /// `txn`'s barrier record, read on the blocking pool.
    async fn recorded_barrier(
        self: &Arc<Self>,
        txn: TxnId,
    ) -> Result<Option<Barrier<R::Undo>>, Status> {
        let node = self.clone();
        tpc_common::blocking::run(move || node.store.barrier::<R::Undo>(txn))
            .await
            .map_err(|_| Status::internal("reading the barrier record failed"))?
            .map_err(|e| Status::internal(e.to_string()))
    }

    /// Deletes barrier records older than the retention, once a minute, in slices on the blocking pool.
    pub async fn collect_barriers_forever(self: Arc<Self>) {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            every.tick().await;
            let before = now_ms().saturating_sub(BARRIER_RETENTION_MS);
            loop {
                let node = self.clone();
                let slice = tpc_common::blocking::run(move || {
                    node.store.collect_barriers(before, BARRIER_SLICE)
                })
                .await;
                match slice {
                    Ok(Ok(n)) if n == BARRIER_SLICE => continue,
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) => {
                        warn!(cause = %e, "collecting barrier records failed");
                        break;
                    }
                    Err(_) => {
                        warn!("the task collecting barrier records failed");
                        break;
                    }
                }
            }
        }
    }

    fn user_stripe(&self, user: &UserId) -> &tokio::sync::Mutex<()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut hasher);
        &self.user_stripes[hasher.finish() as usize % self.user_stripes.len()]
    }
}

fn wrong_strategy(txn: TxnId, recorded: Strategy) -> Status {
    Status::failed_precondition(format!("{txn} belongs to the {recorded} strategy"))
}
