//! What one request's answer means to a benchmark client: committed, or refused for a reason that goes
//! into the results by name, with the pause the server asked for, if it asked.

use std::time::Duration;

use tpc_proto::v1::{TransactionResult, transaction_result};

/// The metadata key of gRPC's retry pushback: how long the server asks the client to wait before it
/// tries again (milliseconds).
pub const PUSHBACK_KEY: &str = "grpc-retry-pushback-ms";

/// Longest pushback honoured: a bigger one would outlast any run, so it is treated as this.
const MAX_PUSHBACK: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Refused {
        /// The ABORTED reason as the coordinator gave it, or a gRPC status as `Code: message`.
        reason: String,
        /// The outcome is unknown to the client (a timeout or a broken connection): the change may
        /// still have committed.
        unknown: bool,
        /// Wait this long before the next request (RESOURCE_EXHAUSTED with a pushback).
        pushback: Option<Duration>,
    },
}

/// Reason recorded when no answer came within the request timeout.
pub fn timed_out(timeout: Duration) -> Outcome {
    Outcome::Refused {
        reason: format!("no answer within {} s", timeout.as_secs_f64()),
        unknown: true,
        pushback: None,
    }
}

pub fn classify(answer: Result<tonic::Response<TransactionResult>, tonic::Status>) -> Outcome {
    match answer {
        Ok(reply) => {
            let result = reply.into_inner();
            if result.outcome() == transaction_result::Outcome::Committed {
                Outcome::Committed
            } else {
                Outcome::Refused {
                    reason: kind_of(&result.reason),
                    unknown: false,
                    pushback: None,
                }
            }
        }
        Err(status) => {
            let pushback = (status.code() == tonic::Code::ResourceExhausted)
                .then(|| pushback(status.metadata()))
                .flatten();
            Outcome::Refused {
                reason: kind_of(&format!("{:?}: {}", status.code(), status.message())),
                // Only these leave the outcome open; any other status means the coordinator refused
                // the request before starting a transaction.
                unknown: matches!(
                    status.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown
                        | tonic::Code::Internal
                ),
                pushback,
            }
        }
    }
}

/// A reason with its numbers replaced by `N` ("overloaded, retry in N ms"), so refusals of one kind
/// are counted together however long each was asked to wait.
fn kind_of(reason: &str) -> String {
    let mut kind = String::with_capacity(reason.len());
    let mut prev: Option<char> = None;
    let mut in_number = false;
    for c in reason.chars() {
        if c.is_ascii_digit() {
            // Digits that continue a word ("http2") are part of a name, not a number.
            let in_word = prev.is_some_and(char::is_alphanumeric) && !in_number;
            if in_word {
                kind.push(c);
            } else if !in_number {
                kind.push('N');
                in_number = true;
            }
        } else {
            kind.push(c);
            in_number = false;
        }
        prev = Some(c);
    }
    kind
}

fn pushback(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let ms: u64 = metadata
        .get(PUSHBACK_KEY)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms).min(MAX_PUSHBACK))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(outcome: transaction_result::Outcome, reason: &str) -> TransactionResult {
        TransactionResult {
            txn_id: "t".into(),
            outcome: outcome as i32,
            reason: reason.into(),
            request_id: "r".into(),
        }
    }

    #[test]
    fn an_abort_is_refused_with_its_reason() {
        let aborted = classify(Ok(tonic::Response::new(result(
            transaction_result::Outcome::Aborted,
            "prepare deadline exceeded",
        ))));
        assert_eq!(
            aborted,
            Outcome::Refused {
                reason: "prepare deadline exceeded".into(),
                unknown: false,
                pushback: None
            }
        );
        let committed = classify(Ok(tonic::Response::new(result(
            transaction_result::Outcome::Committed,
            "",
        ))));
        assert_eq!(committed, Outcome::Committed);
    }

    #[test]
    fn overload_honours_the_pushback_when_there_is_one() {
        let mut status = tonic::Status::resource_exhausted("overloaded, retry in 20 ms");
        status
            .metadata_mut()
            .insert(PUSHBACK_KEY, "20".parse().unwrap());
        assert_eq!(
            classify(Err(status)),
            Outcome::Refused {
                reason: "ResourceExhausted: overloaded, retry in N ms".into(),
                unknown: false,
                pushback: Some(Duration::from_millis(20)),
            }
        );
        let bare = classify(Err(tonic::Status::resource_exhausted("overloaded")));
        assert!(matches!(bare, Outcome::Refused { pushback: None, .. }));
    }

    #[test]
    fn an_unavailable_coordinator_leaves_the_outcome_unknown() {
        let outcome = classify(Err(tonic::Status::unavailable("connection reset")));
        assert!(matches!(outcome, Outcome::Refused { unknown: true, .. }));
    }

    #[test]
    fn numbers_become_n_but_names_keep_their_digits() {
        assert_eq!(
            kind_of("overloaded, retry in 150 ms"),
            "overloaded, retry in N ms"
        );
        assert_eq!(
            kind_of("http2 error after 3 tries"),
            "http2 error after N tries"
        );
    }
}
