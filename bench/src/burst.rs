//! The burst: many registrations arriving at the same instant, far more than the cluster can finish
//! within a prepare deadline. What matters is how the excess is turned away: each request should
//! either commit or be refused at once as overloaded, and none should abort as unavailable or past a
//! deadline after having waited for it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Barrier;
use tonic::transport::Channel;
use tpc_proto::v1::RegisterUserRequest;
use tpc_proto::v1::password_service_client::PasswordServiceClient;

use crate::latency;
use crate::load::REQUEST_TIMEOUT;
use crate::outcome::{self, Outcome};
use crate::results::Burst;

/// Fires `requests` registrations of new users at once and waits for every answer.
pub async fn fire(channels: &[Channel], requests: usize) -> Burst {
    // Every task waits here until all are ready, so the requests leave together.
    let start = Arc::new(Barrier::new(requests + 1));
    let tasks: Vec<_> = (0..requests)
        .map(|i| {
            let mut service = PasswordServiceClient::new(channels[i % channels.len()].clone());
            let start = start.clone();
            tokio::spawn(async move {
                let user = format!("burst{i:05}");
                let request = RegisterUserRequest {
                    email: format!("{user}@example.com"),
                    password: format!("pw-{user}-0"),
                    request_id: format!("burst-{i}"),
                    user_id: user,
                };
                start.wait().await;
                let sent = Instant::now();
                let answer =
                    tokio::time::timeout(REQUEST_TIMEOUT, service.register_user(request)).await;
                let outcome =
                    answer.map_or_else(|_| outcome::timed_out(REQUEST_TIMEOUT), outcome::classify);
                (outcome, sent.elapsed())
            })
        })
        .collect();
    start.wait().await;
    let began = Instant::now();
    let mut answers = Vec::with_capacity(requests);
    for task in tasks {
        answers.push(match task.await {
            Ok(answer) => answer,
            Err(e) => (
                Outcome::Refused {
                    reason: format!("client task failed: {e}"),
                    unknown: true,
                    pushback: None,
                },
                Duration::ZERO,
            ),
        });
    }
    tally(&answers, began.elapsed())
}

/// The burst's summary from its answers (pure, for testing).
pub fn tally(answers: &[(Outcome, Duration)], elapsed: Duration) -> Burst {
    let mut committed = 0;
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    let mut latencies = latency::histogram();
    for (outcome, took) in answers {
        latency::record(&mut latencies, *took);
        match outcome {
            Outcome::Committed => committed += 1,
            Outcome::Refused { reason, .. } => *refused.entry(reason.clone()).or_default() += 1,
        }
    }
    Burst {
        requests: answers.len(),
        committed,
        refused,
        elapsed_s: elapsed.as_secs_f64(),
        p50_ms: latency::quantile_ms(&latencies, 0.5),
        max_ms: latency::max_ms(&latencies),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_grouped_by_reason() {
        let overloaded = || Outcome::Refused {
            reason: "ResourceExhausted: overloaded".into(),
            unknown: false,
            pushback: None,
        };
        let answers = [
            (Outcome::Committed, Duration::from_millis(10)),
            (overloaded(), Duration::from_millis(1)),
            (overloaded(), Duration::from_millis(1)),
            (Outcome::Committed, Duration::from_millis(30)),
        ];
        let burst = tally(&answers, Duration::from_millis(31));
        assert_eq!(burst.requests, 4);
        assert_eq!(burst.committed, 2);
        assert_eq!(burst.refused["ResourceExhausted: overloaded"], 2);
        assert!((burst.max_ms - 30.0).abs() < 0.1);
    }
}
