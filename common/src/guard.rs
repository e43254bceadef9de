//! Throttling of password guesses: every call that checks a password (`UpdatePassword`,
//! `VerifyPassword`) asks the [`Guard`] first.
//!
//! - Per (user, client address): the first few wrong passwords are free; after them each next attempt
//!   from that address waits 2^n seconds (capped), and a right password resets the count. Keyed on the
//!   address too, so a flood of guesses from one place never throttles the owner elsewhere.
//! - Per client address: a request rate (GCRA, the `governor` crate), so one address cannot spread
//!   its guesses over many users.
//!
//! A throttled attempt is refused before any argon2 work, with the time to wait.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::UserId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardConfig {
    /// Wrong passwords allowed per (user, address) before backing off.
    pub free_failures: u32,
    /// The longest wait after many failures.
    pub max_backoff: Duration,
    /// Password checks per second per client address (0: unlimited).
    pub per_address_per_s: u32,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            free_failures: 5,
            max_backoff: Duration::from_secs(15 * 60),
            per_address_per_s: 20,
        }
    }
}

/// The failures of one (user, address).
#[derive(Debug, Clone, Copy)]
struct Strikes {
    failures: u32,
    blocked_until: Instant,
}

/// Most (user, address) pairs remembered; past it, the ones no longer blocked are forgotten.
const MAX_TRACKED: usize = 100_000;

pub struct Guard {
    config: GuardConfig,
    strikes: Mutex<HashMap<(UserId, Option<IpAddr>), Strikes>>,
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl Guard {
    pub fn new(config: GuardConfig) -> Self {
        let per_address = NonZeroU32::new(config.per_address_per_s)
            .map(|rate| RateLimiter::keyed(Quota::per_second(rate)));
        Self {
            config,
            strikes: Mutex::new(HashMap::new()),
            per_address,
        }
    }

    /// May `addr` try a password of `user` now? `Err` holds how long to wait.
    pub fn admit(&self, user: &UserId, addr: Option<IpAddr>) -> Result<(), Duration> {
        if let Some(wait) = self.blocked(user, addr, Instant::now()) {
            return Err(wait);
        }
        if let (Some(limiter), Some(ip)) = (&self.per_address, addr)
            && let Err(not_until) = limiter.check_key(&ip)
        {
            return Err(not_until.wait_time_from(DefaultClock::default().now()));
        }
        Ok(())
    }

    /// The password was wrong.
    pub fn failed(&self, user: &UserId, addr: Option<IpAddr>) {
        self.failed_at(user, addr, Instant::now());
    }

    /// The password was right: the count starts over.
    pub fn succeeded(&self, user: &UserId, addr: Option<IpAddr>) {
        self.lock().remove(&(user.clone(), addr));
    }

    fn blocked(&self, user: &UserId, addr: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let strikes = self.lock().get(&(user.clone(), addr)).copied()?;
        (strikes.blocked_until > now).then(|| strikes.blocked_until - now)
    }

    fn failed_at(&self, user: &UserId, addr: Option<IpAddr>, now: Instant) {
        let mut all = self.lock();
        if all.len() >= MAX_TRACKED {
            all.retain(|_, s| s.blocked_until > now);
        }
        let strikes = all.entry((user.clone(), addr)).or_insert(Strikes {
            failures: 0,
            blocked_until: now,
        });
        strikes.failures = strikes.failures.saturating_add(1);
        if let Some(beyond) = strikes
            .failures
            .checked_sub(self.config.free_failures.saturating_add(1))
        {
            let wait = Duration::from_secs(1u64 << beyond.min(30)).min(self.config.max_backoff);
            strikes.blocked_until = now + wait;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(UserId, Option<IpAddr>), Strikes>> {
        self.strikes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A throttled attempt: `RESOURCE_EXHAUSTED`, with the time to wait in the message and as the gRPC
/// retry policy's `grpc-retry-pushback-ms` (gRFC A6).
pub fn throttled(wait: Duration) -> tonic::Status {
    let ms = wait.as_millis().max(1);
    let mut status =
        tonic::Status::resource_exhausted(format!("too many password attempts; retry in {ms} ms"));
    if let Ok(value) = ms.to_string().parse() {
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", value);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    fn guard() -> Guard {
        Guard::new(GuardConfig {
            free_failures: 3,
            max_backoff: Duration::from_secs(60),
            per_address_per_s: 0,
        })
    }

    #[test]
    fn failures_beyond_the_free_ones_back_off_exponentially_per_address_up_to_the_cap() {
        let g = guard();
        let t0 = Instant::now();
        for _ in 0..3 {
            g.failed_at(&alice(), ip(2), t0);
            assert_eq!(g.blocked(&alice(), ip(2), t0), None, "free");
        }
        g.failed_at(&alice(), ip(2), t0);
        assert_eq!(g.blocked(&alice(), ip(2), t0), Some(Duration::from_secs(1)));
        g.failed_at(&alice(), ip(2), t0);
        assert_eq!(g.blocked(&alice(), ip(2), t0), Some(Duration::from_secs(2)));
        for _ in 0..20 {
            g.failed_at(&alice(), ip(2), t0);
        }
        assert_eq!(
            g.blocked(&alice(), ip(2), t0),
            Some(Duration::from_secs(60)),
            "capped"
        );
        // The owner, elsewhere, is not held up; nor is another user from the same address.
        assert_eq!(g.blocked(&alice(), ip(3), t0), None);
        assert_eq!(g.blocked(&UserId::parse("bob").unwrap(), ip(2), t0), None);
        assert!(
            g.blocked(&alice(), ip(2), t0 + Duration::from_secs(61))
                .is_none()
        );
        // A right password resets the count.
        g.succeeded(&alice(), ip(2));
        g.failed_at(&alice(), ip(2), t0);
        assert_eq!(g.blocked(&alice(), ip(2), t0), None);
    }

    #[test]
    fn an_address_is_rate_limited_across_users() {
        let g = Guard::new(GuardConfig {
            per_address_per_s: 2,
            ..GuardConfig::default()
        });
        let users: Vec<UserId> = (0..10)
            .map(|i| UserId::parse(&format!("u{i}")).unwrap())
            .collect();
        let admitted = users.iter().filter(|u| g.admit(u, ip(2)).is_ok()).count();
        assert!(admitted <= 2, "{admitted}");
        assert!(g.admit(&users[0], ip(3)).is_ok(), "another address");
        let wait = g.admit(&users[0], ip(2)).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }
}
