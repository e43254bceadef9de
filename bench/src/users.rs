//! The benchmark's users: their names, which client owns which, and their registration before the
//! clock starts.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::Channel;
use tpc_proto::v1::RegisterUserRequest;
use tpc_proto::v1::password_service_client::PasswordServiceClient;

use crate::outcome::{self, Outcome};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Registrations in flight at once: enough to be quick, few enough not to be refused as overload.
pub const REGISTER_CONCURRENCY: usize = 32;

/// Attempts per user before registration gives up (it is not measured, so it may retry freely).
const REGISTER_ATTEMPTS: u32 = 50;

pub fn user_id(i: usize) -> String {
    format!("u{i:05}")
}

pub fn initial_password(user: &str) -> String {
    format!("pw-{user}-0")
}

/// Previous passwords a client remembers per user, to reuse one on purpose (`--reuse-rate`): the history
/// participant refuses the last `DEFAULT_DEPTH` passwords, the current one included, so every one of
/// these is refused.
pub const REUSABLE: usize = tpc_participants::history::DEFAULT_DEPTH - 1;

/// A user as one client sees it: the client alone changes this user's password, so it always knows
/// the current one, except after an answer that never came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user: String,
    pub current: String,
    /// The password of a change whose outcome is unknown (timeout, broken connection): it may be the
    /// current one. Resolved by the next answer for this user.
    pub maybe: Option<String>,
    /// Passwords made for this user so far; the next new one is `pw-{user}-{counter + 1}`, never used.
    pub counter: u64,
    /// The passwords before `current`, oldest first, at most [`REUSABLE`].
    pub previous: VecDeque<String>,
}

impl Account {
    pub fn new(user: String) -> Self {
        Self {
            current: initial_password(&user),
            user,
            maybe: None,
            counter: 0,
            previous: VecDeque::new(),
        }
    }

    pub fn next_password(&mut self) -> String {
        self.counter += 1;
        format!("pw-{}-{}", self.user, self.counter)
    }

    /// One of the recent previous passwords, the `pick`-th modulo their number (the history refuses
    /// it); `None` before the first change.
    pub fn reused_password(&self, pick: usize) -> Option<String> {
        let n = self.previous.len();
        (n > 0).then(|| self.previous[pick % n].clone())
    }

    /// `new` is the password now: the one it replaces becomes a previous one.
    pub fn changed_to(&mut self, new: String) {
        let old = std::mem::replace(&mut self.current, new);
        self.previous.retain(|p| *p != self.current);
        self.previous.push_back(old);
        while self.previous.len() > REUSABLE {
            self.previous.pop_front();
        }
        self.maybe = None;
    }
}

/// User `i` belongs to client `i % clients`; there are at least as many users as clients, so every
/// client has one, and no two clients ever touch the same user (no conflicts from the workload itself).
pub fn assign(users: usize, clients: usize) -> Vec<Vec<Account>> {
    let clients = clients.max(1);
    let mut owned: Vec<Vec<Account>> = vec![Vec::new(); clients];
    for i in 0..users.max(clients) {
        owned[i % clients].push(Account::new(user_id(i)));
    }
    owned
}

/// Registers every user with [`REGISTER_CONCURRENCY`] requests in flight, retrying refusals.
pub async fn register(channels: &[Channel], users: &[String]) -> Result<(), BoxError> {
    let next = Arc::new(AtomicUsize::new(0));
    let users: Arc<[String]> = users.into();
    let workers: Vec<_> = (0..REGISTER_CONCURRENCY.min(users.len()))
        .map(|w| {
            let mut service = PasswordServiceClient::new(channels[w % channels.len()].clone());
            let (next, users) = (next.clone(), users.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(user) = users.get(i) else {
                        return Ok::<(), BoxError>(());
                    };
                    register_one(&mut service, user).await?;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    Ok(())
}

async fn register_one(
    service: &mut PasswordServiceClient<Channel>,
    user: &str,
) -> Result<(), BoxError> {
    let mut last = String::new();
    for attempt in 1..=REGISTER_ATTEMPTS {
        let request = RegisterUserRequest {
            user_id: user.to_owned(),
            email: format!("{user}@example.com"),
            password: initial_password(user),
            // A new id each attempt: a retry with the same id would get the first abort back.
            request_id: format!("register-{user}-{attempt}"),
        };
        let answer =
            tokio::time::timeout(Duration::from_secs(10), service.register_user(request)).await;
        let outcome = answer.map_or_else(
            |_| outcome::timed_out(Duration::from_secs(10)),
            outcome::classify,
        );
        match outcome {
            Outcome::Committed => return Ok(()),
            // An earlier attempt whose answer was lost did it.
            Outcome::Refused { reason, .. } if reason == "user exists" => return Ok(()),
            Outcome::Refused {
                reason, pushback, ..
            } => {
                last = reason;
                let backoff =
                    Duration::from_millis(20 * u64::from(attempt)).min(Duration::from_millis(500));
                tokio::time::sleep(pushback.unwrap_or(backoff)).await;
            }
        }
    }
    Err(format!("could not register {user} in {REGISTER_ATTEMPTS} attempts: {last}").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_has_one_client_and_each_client_a_user() {
        let owned = assign(10, 4);
        assert_eq!(owned.len(), 4);
        assert_eq!(
            owned[1].iter().map(|a| a.user.as_str()).collect::<Vec<_>>(),
            ["u00001", "u00005", "u00009"]
        );
        assert_eq!(owned.iter().map(Vec::len).sum::<usize>(), 10);
        let few = assign(2, 8);
        assert!(
            few.iter().all(|users| users.len() == 1),
            "users raised to the client count"
        );
    }

    #[test]
    fn new_passwords_are_never_reused() {
        let mut account = Account::new(user_id(42));
        assert_eq!(account.current, "pw-u00042-0");
        assert_eq!(account.next_password(), "pw-u00042-1");
        assert_eq!(account.next_password(), "pw-u00042-2");
    }

    #[test]
    fn reused_passwords_are_recent_previous_ones() {
        let mut account = Account::new(user_id(7));
        assert_eq!(account.reused_password(3), None, "nothing to reuse yet");
        for _ in 0..6 {
            let new = account.next_password();
            account.changed_to(new);
        }
        assert_eq!(account.current, "pw-u00007-6");
        assert_eq!(
            account.previous,
            ["pw-u00007-2", "pw-u00007-3", "pw-u00007-4", "pw-u00007-5"]
        );
        assert_eq!(account.reused_password(5).as_deref(), Some("pw-u00007-3"));
        // A reuse that committed after all (answer lost) moves the password out of the previous ones.
        account.changed_to("pw-u00007-3".into());
        assert_eq!(
            account.previous,
            ["pw-u00007-2", "pw-u00007-4", "pw-u00007-5", "pw-u00007-6"]
        );
    }
}
