//! Fail points: named protocol steps where a test (or `tpc demo`, or `tpc chaos`) makes a process crash,
//! stall or lose a message, to show that recovery keeps every invariant.
//!
//! They are configured per process by the environment, e.g.
//! `TPC_FAILPOINTS="coord.after_decision_forced=crash;part.after_commit_forced=50%error"`.
//! Each entry is `name=action[->action…]`, an action `[p%][count*]task` with task `crash` (abort at once:
//! no flush, no destructors, like `kill -9`), `error` (the step fails: see [`FAIL_POINTS`]),
//! `delay(ms)` or `off`. The `fail` crate evaluates them; built without the `failpoints` feature, every
//! fail point compiles to nothing and `TPC_FAILPOINTS` is refused.

use std::time::Duration;

/// Environment variable holding the fail point configuration.
pub const FAILPOINTS_ENV: &str = "TPC_FAILPOINTS";

/// Every fail point: its name, what a crash there tests, and what `error` does there.
pub const FAIL_POINTS: &[(&str, &str, &str)] = &[
    (
        "coord.before_prepare",
        "a transaction the coordinator started but never sent: nothing is prepared; the client sees an error and a retry runs anew",
        "the Prepare is lost: the transaction aborts",
    ),
    (
        "coord.after_votes",
        "all votes in, nothing forced: prepared participants ask after the restart and learn 'aborted' (presumed abort)",
        "the forced write fails: the process stops",
    ),
    (
        "coord.after_decision_forced",
        "decision durable, nobody told: recovery resends Commit and sends the e-mail; a retry of the request returns COMMITTED",
        "the forced write fails after landing: the process stops",
    ),
    (
        "coord.after_first_commit_sent",
        "one participant committed, the other not yet told: recovery resends Commit to both (idempotent)",
        "the acknowledgement is lost: Commit is resent",
    ),
    (
        "coord.before_end",
        "every participant acked, END not written: recovery resends Commit, which is acked again",
        "END is not written: recovery resends Commit",
    ),
    (
        "outbox.after_send_before_mark",
        "the mail server accepted the e-mail, the outbox entry is still there: it is resent with the same Message-ID",
        "marking fails: the e-mail is resent",
    ),
    (
        "saga.after_start_forced",
        "saga logged, no step sent: recovery compensates both steps, each an empty compensation the participants record",
        "the forced write fails after landing: the process stops",
    ),
    (
        "saga.after_apply",
        "a step applied (the first time the password step, `1*off->crash` the history step), the next not sent or the completion not forced: recovery compensates the applied steps",
        "the step's answer is lost: it counts as unknown and is compensated",
    ),
    (
        "saga.after_completed_forced",
        "every step applied and the completion forced, client not told: the e-mail is sent at recovery; a retry returns COMMITTED",
        "the forced write fails after landing: the process stops",
    ),
    (
        "saga.before_compensate",
        "a compensation about to be sent: recovery compensates the saga again (idempotent)",
        "the compensation is lost: it is resent",
    ),
    (
        "part.before_prepare_forced",
        "checks done, PREPARED not forced: the participant never voted; the coordinator's deadline aborts",
        "the forced write fails: the process stops",
    ),
    (
        "part.after_prepare_forced",
        "PREPARED forced, vote not sent: after the restart the participant is in doubt, locks the user and asks",
        "the yes-vote is lost: the coordinator aborts, the participant learns it by asking",
    ),
    (
        "part.before_commit_applied",
        "Commit received, not applied: still prepared after the restart; Commit is resent and applied",
        "the forced write fails: the process stops",
    ),
    (
        "part.after_commit_forced",
        "COMMITTED forced, ack not sent: the resent Commit is acknowledged again, the change is applied once",
        "the acknowledgement is lost: Commit is resent and acked again",
    ),
];

/// An injected failure at a fail point configured with `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("injected failure at a fail point")]
pub struct Injected;

/// Evaluates fail point `name`: aborts the process for `crash`, sleeps for `delay(ms)`, returns
/// `Err(Injected)` for `error`, and does nothing otherwise.
pub async fn inject(name: &'static str) -> Result<(), Injected> {
    debug_assert!(
        FAIL_POINTS.iter().any(|(n, ..)| *n == name),
        "unknown fail point {name}"
    );
    match evaluate(name).as_deref() {
        None => Ok(()),
        Some("crash") => {
            eprintln!("fail point {name}: crash (aborting the process)");
            std::process::abort();
        }
        Some("error") => {
            tracing::warn!(fail_point = name, "fail point: injected error");
            Err(Injected)
        }
        Some(other) => {
            if let Some(ms) = other.strip_prefix("delay:").and_then(|ms| ms.parse().ok()) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Ok(())
        }
    }
}

#[cfg(feature = "failpoints")]
fn evaluate(name: &str) -> Option<String> {
    fail::fail_point!(name, |arg| arg);
    None
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
fn evaluate(_name: &str) -> Option<String> {
    None
}

/// Whether this build has fail points.
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// Configures the fail points listed in `TPC_FAILPOINTS`. Call once at process start.
pub fn setup_from_env() -> Result<(), String> {
    match std::env::var(FAILPOINTS_ENV) {
        Ok(spec) if !spec.trim().is_empty() => setup(&spec),
        _ => Ok(()),
    }
}

/// Configures fail points from a `name=actions;…` string.
pub fn setup(spec: &str) -> Result<(), String> {
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, actions) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?}: expected name=action"))?;
        let name = name.trim();
        if !FAIL_POINTS.iter().any(|(n, ..)| *n == name) {
            return Err(format!(
                "unknown fail point {name:?} (see `tpc failpoints`)"
            ));
        }
        let translated = actions
            .split("->")
            .map(translate)
            .collect::<Result<Vec<_>, _>>()?
            .join("->");
        configure(name, &translated)?;
    }
    Ok(())
}

/// `[p%][cnt*]crash|error|delay(ms)|off` → the `fail` crate's `[p%][cnt*]return(…)` form.
fn translate(action: &str) -> Result<String, String> {
    let action = action.trim();
    let split = action.rfind(['%', '*']).map_or(0, |i| i + 1);
    let (prefix, task) = action.split_at(split);
    let task = match task {
        "crash" | "error" => format!("return({task})"),
        "off" => "off".to_owned(),
        _ => match task
            .strip_prefix("delay(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|ms| ms.parse::<u64>().ok())
        {
            Some(ms) => format!("return(delay:{ms})"),
            None => {
                return Err(format!(
                    "{action:?}: action must be crash, error, delay(ms) or off"
                ));
            }
        },
    };
    Ok(format!("{prefix}{task}"))
}

#[cfg(feature = "failpoints")]
fn configure(name: &str, actions: &str) -> Result<(), String> {
    fail::cfg(name, actions)
}

#[cfg(not(feature = "failpoints"))]
fn configure(_name: &str, _actions: &str) -> Result<(), String> {
    Err(format!(
        "{FAILPOINTS_ENV} is set, but this build has no fail points (build with the `failpoints` feature)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_actions_to_the_fail_crate() {
        assert_eq!(translate("crash"), Ok("return(crash)".into()));
        assert_eq!(translate("50%error"), Ok("50%return(error)".into()));
        assert_eq!(translate("2*delay(300)"), Ok("2*return(delay:300)".into()));
        assert_eq!(translate("25%3*crash"), Ok("25%3*return(crash)".into()));
        assert!(translate("explode").is_err());
        assert!(translate("delay(soon)").is_err());
    }

    #[test]
    fn refuses_unknown_points() {
        assert!(
            setup("coord.nowhere=crash")
                .unwrap_err()
                .contains("unknown fail point")
        );
        assert!(setup("coord.before_end").is_err());
    }

    #[cfg(feature = "failpoints")]
    #[tokio::test]
    async fn configured_points_fire_as_told() {
        setup("outbox.after_send_before_mark=1*error->delay(1)").unwrap();
        assert_eq!(inject("outbox.after_send_before_mark").await, Err(Injected));
        let started = std::time::Instant::now();
        assert_eq!(inject("outbox.after_send_before_mark").await, Ok(()));
        assert!(started.elapsed() >= Duration::from_millis(1));
        setup("outbox.after_send_before_mark=off").unwrap();
        assert_eq!(inject("outbox.after_send_before_mark").await, Ok(()));
    }
}
