//! Readers: tasks that read users while their passwords are being changed, and count what a strategy
//! lets them see (DESIGN §6.3).
//!
//! Each round a reader picks a change in flight (see [`crate::inflight`]) and
//! 1. reads the user's password version (`GetUser`), then the history (`GetHistory`), then the version
//!    again: when both versions are the same, the newest history entry must be that version; when it
//!    is not, that is a **torn read** (the password of a change whose history entry is missing, or the
//!    reverse). When the version moved between the two reads the observation proves nothing and is
//!    counted apart;
//! 2. tries the change's new password (`VerifyPassword`): if it works, the change is marked, and if the
//!    change then does not take effect, that is a **dirty read** (judged at the end of the run).
//!
//! Readers call the participants directly, as a login page and an account page would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};
use tpc_proto::v1::history_reader_client::HistoryReaderClient;
use tpc_proto::v1::password_reader_client::PasswordReaderClient;
use tpc_proto::v1::{GetHistoryRequest, GetUserRequest, VerifyPasswordRequest};

use crate::inflight::InFlight;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a reader waits for one read (two-phase commit makes readers of an in-doubt user wait).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A reader's pause after a failed read (a participant down or cut off), so it does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What one version-history-version observation shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// The same version twice, and it is the newest history entry.
    Consistent,
    /// The same version twice, and the newest history entry is another (or there is none).
    Torn,
    /// The version changed between the two reads: no conclusion.
    Moved,
}

/// Classifies a reading: version `v1`, newest history entry `newest`, version `v2`.
pub fn observe(v1: &str, newest: Option<&str>, v2: &str) -> Observation {
    if v1 != v2 {
        Observation::Moved
    } else if newest == Some(v1) {
        Observation::Consistent
    } else {
        Observation::Torn
    }
}

/// The readers' counts for one run (measured period only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reads {
    pub readers: usize,
    /// Complete version-history-version observations.
    pub observations: u64,
    /// Observations whose version moved between the two reads (inconclusive).
    pub moved: u64,
    /// Observations that were torn (also in the run's anomalies).
    pub torn: u64,
    /// `VerifyPassword` calls with a change's new password while it was in flight.
    pub verifies: u64,
    /// Of those, how many answered valid (the new password worked before the client heard).
    pub verified_valid: u64,
    /// Reads that failed (timeout, participant down or cut off).
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    observations: AtomicU64,
    moved: AtomicU64,
    torn: AtomicU64,
    verifies: AtomicU64,
    verified_valid: AtomicU64,
    errors: AtomicU64,
}

/// Running readers; [`Readers::finish`] stops them and returns the counts.
pub struct Readers {
    count: usize,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn channel(url: &str) -> Result<Channel, BoxError> {
    // Lazy: a participant that is down now (or later, crashed by the fault schedule) is reconnected
    // to on the next call.
    Ok(Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy())
}

impl Readers {
    /// Starts `count` readers against the participants at `password_url` and `history_url`; they
    /// read from `from` until `until`.
    pub fn start(
        count: usize,
        password_url: &str,
        history_url: &str,
        board: Arc<InFlight>,
        from: Instant,
        until: Instant,
    ) -> Result<Self, BoxError> {
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (passwords, histories) = (channel(password_url)?, channel(history_url)?);
        let tasks = (0..count)
            .map(|id| {
                let reader = Reader {
                    passwords: PasswordReaderClient::new(passwords.clone()),
                    histories: HistoryReaderClient::new(histories.clone()),
                    board: board.clone(),
                    counters: counters.clone(),
                    rng: fastrand::Rng::with_seed(0x5eed_0000 + id as u64),
                };
                tokio::spawn(reader.run(from, until, stop.clone()))
            })
            .collect();
        Ok(Self {
            count,
            counters,
            stop,
            tasks,
        })
    }

    pub async fn finish(self) -> Reads {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(READ_TIMEOUT * 3, task).await.is_err() {
                abort.abort();
            }
        }
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Reads {
            readers: self.count,
            observations: get(&c.observations),
            moved: get(&c.moved),
            torn: get(&c.torn),
            verifies: get(&c.verifies),
            verified_valid: get(&c.verified_valid),
            errors: get(&c.errors),
        }
    }
}

struct Reader {
    passwords: PasswordReaderClient<Channel>,
    histories: HistoryReaderClient<Channel>,
    board: Arc<InFlight>,
    counters: Arc<Counters>,
    rng: fastrand::Rng,
}

impl Reader {
    async fn run(mut self, from: Instant, until: Instant, stop: Arc<AtomicBool>) {
        tokio::time::sleep_until(from.into()).await;
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            let Some(change) = self.board.pick(self.rng.usize(..)) else {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            };
            let counted = Instant::now() < until;
            match self.observe(&change.user).await {
                Ok(o) if counted => {
                    let c = &self.counters;
                    c.observations.fetch_add(1, Ordering::Relaxed);
                    match o {
                        Observation::Consistent => {}
                        Observation::Torn => {
                            c.torn.fetch_add(1, Ordering::Relaxed);
                        }
                        Observation::Moved => {
                            c.moved.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(_) => {}
                Err(()) => {
                    self.failed(counted).await;
                    continue;
                }
            }
            let request = VerifyPasswordRequest {
                user_id: change.user.clone(),
                password: change.new_password.clone(),
            };
            let answer =
                tokio::time::timeout(READ_TIMEOUT, self.passwords.verify_password(request)).await;
            match answer {
                Ok(Ok(reply)) => {
                    if counted {
                        self.counters.verifies.fetch_add(1, Ordering::Relaxed);
                    }
                    if reply.into_inner().valid {
                        if counted {
                            self.counters.verified_valid.fetch_add(1, Ordering::Relaxed);
                        }
                        self.board.saw_valid(&change);
                    }
                }
                _ => self.failed(counted).await,
            }
        }
    }

    async fn failed(&self, counted: bool) {
        if counted {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(ERROR_PAUSE).await;
    }

    /// Version, history, version.
    async fn observe(&mut self, user: &str) -> Result<Observation, ()> {
        let v1 = self.version(user).await?;
        let request = GetHistoryRequest {
            user_id: user.to_owned(),
        };
        let history = tokio::time::timeout(READ_TIMEOUT, self.histories.get_history(request))
            .await
            .map_err(drop)?
            .map_err(drop)?
            .into_inner();
        let newest = history.entries.first().map(|e| e.txn_id.clone());
        let v2 = self.version(user).await?;
        Ok(observe(&v1, newest.as_deref(), &v2))
    }

    async fn version(&mut self, user: &str) -> Result<String, ()> {
        let request = GetUserRequest {
            user_id: user.to_owned(),
        };
        Ok(
            tokio::time::timeout(READ_TIMEOUT, self.passwords.get_user(request))
                .await
                .map_err(drop)?
                .map_err(drop)?
                .into_inner()
                .version,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_read_twice_must_be_the_newest_history_entry() {
        assert_eq!(observe("t2", Some("t2"), "t2"), Observation::Consistent);
        // The password has t3, the history not yet (or the history was compensated first).
        assert_eq!(observe("t3", Some("t2"), "t3"), Observation::Torn);
        // The history has t3, the password was restored to t2 (or not yet changed): also torn.
        assert_eq!(observe("t2", Some("t3"), "t2"), Observation::Torn);
        assert_eq!(observe("t2", None, "t2"), Observation::Torn);
        // The version moved in between: two reads are not a snapshot, nothing is concluded.
        assert_eq!(observe("t2", Some("t2"), "t3"), Observation::Moved);
        assert_eq!(observe("t2", Some("t3"), "t3"), Observation::Moved);
    }
}
