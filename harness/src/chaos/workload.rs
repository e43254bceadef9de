//! The chaos clients: register users, change passwords and read, like real users would, recording every
//! operation in the [`History`]. Each client keeps a belief of every user's current password; a belief
//! goes stale when an outcome is unknown or another client changed the user, and is then re-learnt with
//! `VerifyPassword`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::Channel;
use tpc_proto::v1::history_reader_client::HistoryReaderClient;
use tpc_proto::v1::password_reader_client::PasswordReaderClient;
use tpc_proto::v1::password_service_client::PasswordServiceClient;
use tpc_proto::v1::{
    GetHistoryRequest, GetUserRequest, RegisterUserRequest, TransactionResult,
    UpdatePasswordRequest, VerifyPasswordRequest, transaction_result,
};

use crate::history::{Call, Completion, History};

/// Every password a run uses, by index. Plaintext lives only here, in memory; the history and the
/// reports refer to indexes. Each password starts with [`PASSWORD_PREFIX`], so a scan of the data can
/// find any leaked one without knowing which.
pub struct Passwords {
    all: Mutex<Vec<String>>,
    rng: Mutex<fastrand::Rng>,
}

/// Marks every chaos password; argon2 PHC strings and tpc's records never contain `!`.
pub const PASSWORD_PREFIX: &str = "Pw!";
/// Length of every chaos password.
pub const PASSWORD_LEN: usize = PASSWORD_PREFIX.len() + 17;

impl Passwords {
    pub fn new(seed: u64) -> Self {
        Self {
            all: Mutex::new(Vec::new()),
            rng: Mutex::new(fastrand::Rng::with_seed(seed ^ 0x005e_ed0f_9a55)),
        }
    }

    fn fresh(&self) -> usize {
        let text: String = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            (0..PASSWORD_LEN - PASSWORD_PREFIX.len())
                .map(|_| rng.alphanumeric())
                .collect()
        };
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        all.push(format!("{PASSWORD_PREFIX}{text}"));
        all.len() - 1
    }

    pub fn text(&self, index: usize) -> String {
        self.all.lock().unwrap_or_else(|p| p.into_inner())[index].clone()
    }

    pub fn all(&self) -> Vec<String> {
        self.all.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What the clients believe about one user.
#[derive(Default)]
struct Belief {
    /// Believed registered (a registration committed, or was refused as "user exists").
    registered: bool,
    /// The password believed current, if known.
    current: Option<usize>,
    /// Every password tried for this user, oldest first: candidates when the belief is lost.
    tried: Vec<usize>,
}

pub struct Workload {
    pub history: History,
    pub passwords: Passwords,
    pub users: Vec<String>,
    beliefs: Vec<Mutex<Belief>>,
    pub stop: AtomicBool,
    seed: u64,
}

impl Workload {
    pub fn new(seed: u64, users: usize) -> Self {
        Self {
            history: History::new(),
            passwords: Passwords::new(seed),
            users: (0..users).map(|i| format!("user{i}")).collect(),
            beliefs: (0..users).map(|_| Mutex::default()).collect(),
            stop: AtomicBool::new(false),
            seed,
        }
    }

    fn belief(&self, user: usize) -> std::sync::MutexGuard<'_, Belief> {
        self.beliefs[user].lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The clients' connections: straight to the services, not through the fault proxies (a client's
/// network is not what is under test).
#[derive(Clone)]
pub struct Endpoints {
    pub coordinator: Channel,
    pub password: Channel,
    pub history: Channel,
}

/// How long a client waits for any answer before it records the outcome as unknown.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One client: operations until told to stop.
pub async fn client(id: usize, work: Arc<Workload>, endpoints: Endpoints) {
    let mut rng = fastrand::Rng::with_seed(work.seed.wrapping_add(id as u64 * 7919));
    let mut service = PasswordServiceClient::new(endpoints.coordinator.clone());
    let mut reader = PasswordReaderClient::new(endpoints.password.clone());
    let mut histories = HistoryReaderClient::new(endpoints.history.clone());
    let mut n = 0u64;
    while !work.stop.load(Ordering::Relaxed) {
        n += 1;
        let request_id = format!("c{id}-{n}");
        let user = rng.usize(..work.users.len());
        let name = work.users[user].clone();
        let registered = work.belief(user).registered;
        if !registered {
            register(&work, user, &name, &request_id, id, &mut service).await;
        } else if rng.f32() < 0.3 {
            read(&work, &name, &request_id, id, &mut reader, &mut histories).await;
        } else {
            update(
                &work,
                user,
                &name,
                &request_id,
                id,
                &mut rng,
                &mut service,
                &mut reader,
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(10..80))).await;
    }
}

fn outcome(
    result: Result<
        Result<tonic::Response<TransactionResult>, tonic::Status>,
        tokio::time::error::Elapsed,
    >,
) -> Completion {
    match result {
        Ok(Ok(reply)) => {
            let r = reply.into_inner();
            if r.outcome() == transaction_result::Outcome::Committed {
                Completion::Ok { txn: r.txn_id }
            } else {
                Completion::Fail {
                    txn: r.txn_id,
                    reason: r.reason,
                }
            }
        }
        Ok(Err(status)) => Completion::Info {
            error: format!("{:?}: {}", status.code(), status.message()),
        },
        Err(_) => Completion::Info {
            error: "no answer in time".into(),
        },
    }
}

async fn register(
    work: &Workload,
    user: usize,
    name: &str,
    request_id: &str,
    client: usize,
    service: &mut PasswordServiceClient<Channel>,
) {
    let password = work.passwords.fresh();
    work.belief(user).tried.push(password);
    let index = work
        .history
        .invoke(client, name, Call::Register { password }, request_id);
    let request = RegisterUserRequest {
        user_id: name.to_owned(),
        email: format!("{name}@example.com"),
        password: work.passwords.text(password),
        request_id: request_id.to_owned(),
    };
    let completion =
        outcome(tokio::time::timeout(CALL_TIMEOUT, service.register_user(request)).await);
    {
        let mut belief = work.belief(user);
        match &completion {
            Completion::Ok { .. } => {
                belief.registered = true;
                belief.current = Some(password);
            }
            Completion::Fail { reason, .. } if reason == "user exists" => {
                belief.registered = true;
                belief.current = None;
            }
            // Unknown: maybe registered. The next operation finds out.
            Completion::Info { .. } => {
                belief.registered = true;
                belief.current = None;
            }
            _ => {}
        }
    }
    work.history.complete(index, completion);
}

#[allow(clippy::too_many_arguments)]
async fn update(
    work: &Workload,
    user: usize,
    name: &str,
    request_id: &str,
    client: usize,
    rng: &mut fastrand::Rng,
    service: &mut PasswordServiceClient<Channel>,
    reader: &mut PasswordReaderClient<Channel>,
) {
    let believed = work.belief(user).current;
    let current = match believed {
        Some(current) => current,
        None => match relearn(work, user, name, reader).await {
            Some(current) => current,
            None => return,
        },
    };
    // Now and then an old password, which the history participant must refuse.
    let reused = {
        let belief = work.belief(user);
        (rng.f32() < 0.1 && !belief.tried.is_empty())
            .then(|| belief.tried[rng.usize(..belief.tried.len())])
    };
    let new = reused.unwrap_or_else(|| work.passwords.fresh());
    work.belief(user).tried.push(new);
    let index = work
        .history
        .invoke(client, name, Call::Update { current, new }, request_id);
    let request = UpdatePasswordRequest {
        user_id: name.to_owned(),
        current_password: work.passwords.text(current),
        new_password: work.passwords.text(new),
        request_id: request_id.to_owned(),
    };
    let completion =
        outcome(tokio::time::timeout(CALL_TIMEOUT, service.update_password(request)).await);
    {
        let mut belief = work.belief(user);
        match &completion {
            Completion::Ok { .. } => belief.current = Some(new),
            // A wrong password and an unknown user read the same: relearn finds out which.
            Completion::Fail { reason, .. } if reason == "invalid credentials" => {
                belief.current = None;
            }
            Completion::Info { .. } => belief.current = None,
            _ => {}
        }
    }
    work.history.complete(index, completion);
}

/// Finds the user's current password among those tried, newest first.
async fn relearn(
    work: &Workload,
    user: usize,
    name: &str,
    reader: &mut PasswordReaderClient<Channel>,
) -> Option<usize> {
    let candidates: Vec<usize> = work.belief(user).tried.iter().rev().copied().collect();
    for candidate in candidates {
        let request = VerifyPasswordRequest {
            user_id: name.to_owned(),
            password: work.passwords.text(candidate),
        };
        match tokio::time::timeout(CALL_TIMEOUT, reader.verify_password(request)).await {
            Ok(Ok(reply)) if reply.get_ref().valid => {
                work.belief(user).current = Some(candidate);
                return Some(candidate);
            }
            Ok(Ok(_)) => continue,
            // In doubt or unreachable: try another time.
            _ => return None,
        }
    }
    // No password works (a verification says "no" for an unknown user too): is there a user at all?
    let request = tpc_proto::v1::GetUserRequest {
        user_id: name.to_owned(),
    };
    if let Ok(Err(status)) = tokio::time::timeout(CALL_TIMEOUT, reader.get_user(request)).await
        && status.code() == tonic::Code::NotFound
    {
        work.belief(user).registered = false;
    }
    None
}

async fn read(
    work: &Workload,
    name: &str,
    request_id: &str,
    client: usize,
    reader: &mut PasswordReaderClient<Channel>,
    histories: &mut HistoryReaderClient<Channel>,
) {
    let index = work.history.invoke(client, name, Call::Read, request_id);
    let observed = async {
        let version = |r: tpc_proto::v1::User| r.version;
        let first = reader
            .get_user(GetUserRequest {
                user_id: name.to_owned(),
            })
            .await?
            .into_inner();
        let history = histories
            .get_history(GetHistoryRequest {
                user_id: name.to_owned(),
            })
            .await?
            .into_inner();
        let second = reader
            .get_user(GetUserRequest {
                user_id: name.to_owned(),
            })
            .await?
            .into_inner();
        Ok::<_, tonic::Status>(Completion::Read {
            first_version: version(first),
            newest_history: history
                .entries
                .first()
                .map(|e| e.txn_id.clone())
                .unwrap_or_default(),
            second_version: version(second),
        })
    };
    let completion = match tokio::time::timeout(CALL_TIMEOUT, observed).await {
        Ok(Ok(c)) => c,
        Ok(Err(status)) => Completion::ReadFailed {
            error: format!("{:?}: {}", status.code(), status.message()),
        },
        Err(_) => Completion::ReadFailed {
            error: "no answer in time".into(),
        },
    };
    work.history.complete(index, completion);
}
