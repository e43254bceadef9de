//! The floors: what this machine can do at best for each resource a password change spends, measured
//! in the same invocation before the load, with nothing else running. A throughput read as a fraction
//! of these bounds means the same on a slow machine and a fast one, the way a systems paper reports a
//! fraction of line rate.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tpc_common::{GroupCommit, Password};
use tpc_participants::hashing::{Cost, Hasher};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Unary RPCs a committed change costs: the client's call to the coordinator, a Prepare to each
/// participant and a Commit to each participant.
pub const RPCS_PER_CHANGE: f64 = 5.0;

/// Forced writes (fsyncs) on the critical path of a committed change (docs/protocol.md): each
/// participant forces its PREPARED record before voting yes, and the coordinator forces the COMMIT
/// decision (with the outbox e-mail) before it answers. The two PREPAREDs happen in parallel, but on
/// different processes and databases, so each is a flush of its own on the one disk. The participants'
/// COMMITTED records are forced after the client has its answer and, under load, share flushes with
/// other changes' PREPAREDs in the same database, so the bound counts only the three a change waits
/// for; it is an upper bound, not a prediction.
pub const FORCED_WRITES_PER_CHANGE: f64 = 3.0;

/// Concurrent writers of the grouped forced-write floor: enough for flushes to coalesce the way they do
/// under load.
pub const GROUPED_WRITERS: usize = 16;

/// argon2 operations (hash or verify, the same cost) per password update at steady state, counted from
/// the participants' code: the password participant verifies the current password and hashes the new
/// one (2); the history participant verifies the new password against each remembered hash (up to
/// `history_depth`, all of them when it is not a reuse) and hashes it (1). With the default depth of 5:
/// 8. A user with fewer changes than the depth costs less, so this bound is conservative early in a run.
pub fn hashes_per_change(history_depth: usize) -> f64 {
    (2 + history_depth + 1) as f64
}

/// Changes per second a floor allows.
pub fn bound(floor_per_s: f64, per_change: f64) -> f64 {
    if per_change > 0.0 {
        floor_per_s / per_change
    } else {
        f64::INFINITY
    }
}

/// A fraction of a bound, 0 when the bound is unknown.
pub fn fraction(per_s: f64, bound_per_s: f64) -> f64 {
    if bound_per_s > 0.0 && bound_per_s.is_finite() {
        per_s / bound_per_s
    } else {
        0.0
    }
}

/// Operations completed per second between `warmup` and `warmup + duration` by workers that bump
/// `done`; then tells them to `stop`. The warm-up keeps connection set-up and cold caches out.
async fn rate(done: &AtomicU64, stop: &AtomicBool, warmup: Duration, duration: Duration) -> f64 {
    tokio::time::sleep(warmup).await;
    let (from, started) = (done.load(Ordering::Relaxed), tokio::time::Instant::now());
    tokio::time::sleep(duration).await;
    let ops = done.load(Ordering::Relaxed) - from;
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    ops as f64 / elapsed
}

/// Bare unary round trips per second: `grpc.health.v1.Health/Check` by `clients` closed-loop callers
/// over the same channels the load will use. A change cannot go faster than a fifth of this.
pub async fn rpc_per_s(channels: &[Channel], clients: usize, duration: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..clients)
        .map(|i| {
            let mut health = HealthClient::new(channels[i % channels.len()].clone());
            let (done, stop) = (done.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let call = health.check(HealthCheckRequest {
                        service: String::new(),
                    });
                    if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), call).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let per_s = rate(&done, &stop, Duration::from_millis(300), duration).await;
    for caller in callers {
        let _ = caller.await;
    }
    per_s
}

/// sled inserts, each made durable with [`GroupCommit::force`] (the services' forced-write path), by
/// `writers` concurrent writers on a fresh database in `dir` (removed afterwards).
pub async fn forced_writes_per_s(
    dir: &Path,
    writers: usize,
    duration: Duration,
) -> Result<f64, BoxError> {
    let db: tpc_common::storage::Db =
        Arc::new(tpc_common::storage::SledStorage::new(sled::open(dir)?)?);
    let group = GroupCommit::start(db.clone());
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..writers as u64)
        .map(|w| {
            let (db, group, done, stop) = (db.clone(), group.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                // About the size of a PREPARED record.
                let value = [0x5au8; 160];
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = [w.to_be_bytes(), n.to_be_bytes()].concat();
                    db.insert(&key, &value)?;
                    group.force().await.map_err(|e| e.to_string())?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), BoxError>(())
            })
        })
        .collect();
    let per_s = rate(&done, &stop, Duration::from_millis(200), duration).await;
    for task in tasks {
        task.await??;
    }
    drop((group, db));
    std::fs::remove_dir_all(dir)?;
    Ok(per_s)
}

/// argon2id hashes per second at `cost` with every core busy, each on the blocking pool as the
/// participants run them.
pub async fn argon2_hashes_per_s(cost: Cost, duration: Duration) -> Result<f64, BoxError> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let password = Password::new("password", "floor-measuring-password".into())?;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (password, done, stop) = (password.clone(), done.clone(), stop.clone());
            tokio::task::spawn_blocking(move || {
                let hasher = Hasher::new(cost);
                while !stop.load(Ordering::Relaxed) {
                    hasher.hash(&password)?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    // At OWASP cost a hash takes tens of milliseconds: the warm-up lets each thread finish its first.
    let per_s = rate(&done, &stop, Duration::from_millis(200), duration).await;
    for worker in workers {
        worker.await??;
    }
    Ok(per_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_costs_eight_hashes_at_the_default_depth() {
        assert_eq!(
            hashes_per_change(tpc_participants::history::DEFAULT_DEPTH),
            8.0
        );
    }

    #[test]
    fn bounds_divide_the_floor_by_the_cost_of_a_change() {
        assert_eq!(bound(20_000.0, RPCS_PER_CHANGE), 4_000.0);
        assert_eq!(bound(12_000.0, FORCED_WRITES_PER_CHANGE), 4_000.0);
        assert_eq!(fraction(1_000.0, 4_000.0), 0.25);
        assert_eq!(fraction(1_000.0, 0.0), 0.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forced_writes_and_hashes_are_counted() {
        let dir = std::env::temp_dir().join(format!("tpc-bench-floor-{}", std::process::id()));
        let per_s = forced_writes_per_s(&dir, 4, Duration::from_millis(200))
            .await
            .unwrap();
        assert!(per_s > 0.0);
        assert!(!dir.exists(), "the database is removed");
        let hashes = argon2_hashes_per_s(Cost::InsecureFast, Duration::from_millis(100))
            .await
            .unwrap();
        assert!(hashes > 0.0);
    }
}
