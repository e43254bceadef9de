//! The invariants of DESIGN §6, judged on the ghost record and the stores, as stateright properties.

use std::collections::BTreeSet;

use stateright::Property;
use tpc_common::TxnId;
use tpc_coordinator::engine::Participant;

use crate::cluster::Cluster;
use crate::model::TpcModel;
use crate::network::Told;

pub const AGREEMENT: &str =
    "agreement: no transaction committed at one participant and aborted at another";
pub const VALIDITY: &str = "validity: a change is applied only after both participants voted yes";
pub const ACKED_IS_APPLIED: &str =
    "a participant acknowledges a Commit only once the change is on its disk";
pub const ONCE: &str =
    "exactly once: a request id commits at most one transaction, whatever the retries";
pub const COMMIT_POINT: &str =
    "commit point: the client hears committed only after the COMMIT record is on disk";
pub const DURABILITY: &str = "durability: a change the client heard committed is never undone";
pub const ATOMIC_READS: &str =
    "atomic visibility: a reader never sees a password version without its history entry";
pub const NO_STRAY_EMAIL: &str = "e-mail: none for a transaction that did not commit";
pub const AT_REST: &str = "at rest: every committed change is in both stores, and the stores agree";
pub const NOTHING_STUCK: &str =
    "termination: when nothing more can happen, no lock, no doubt, no unsent e-mail";
pub const COMMITS: &str = "a change commits";
pub const ABORTS: &str = "a change aborts";
pub const RECOVERS: &str =
    "a commit a restarted coordinator found unfinished in its log reaches both participants";

/// Transactions some participant dropped as aborted.
fn dropped(s: &Cluster) -> BTreeSet<TxnId> {
    s.world.ghost.dropped.iter().map(|(_, t)| *t).collect()
}

pub fn agreement(s: &Cluster) -> bool {
    let dropped = dropped(s);
    !s.world
        .ghost
        .applied
        .iter()
        .any(|(_, t)| dropped.contains(t))
}

pub fn validity(s: &Cluster) -> bool {
    let g = &s.world.ghost;
    g.applied.iter().all(|(_, t)| {
        Participant::ALL
            .into_iter()
            .all(|p| g.voted_yes.contains(&(p, *t)))
    })
}

pub fn acked_is_applied(s: &Cluster) -> bool {
    let g = &s.world.ghost;
    g.acked_commits.iter().all(|a| g.applied.contains(a))
}

pub fn once(s: &Cluster) -> bool {
    let requests: BTreeSet<&String> = s.world.ghost.commit_records.values().collect();
    requests.len() == s.world.ghost.commit_records.len()
}

pub fn commit_point(s: &Cluster) -> bool {
    s.told_committed()
        .all(|t| s.world.ghost.commit_records.contains_key(&t))
}

pub fn durability(s: &Cluster) -> bool {
    let dropped = dropped(s);
    s.told_committed().all(|t| !dropped.contains(&t))
}

pub fn atomic_reads(s: &Cluster) -> bool {
    s.world.ghost.torn_reads == 0
}

pub fn no_stray_email(s: &Cluster) -> bool {
    let dropped = dropped(s);
    s.world
        .ghost
        .emails
        .keys()
        .all(|t| s.world.ghost.commit_records.contains_key(t) && !dropped.contains(t))
}

pub fn at_rest(s: &Cluster) -> bool {
    if !s.quiescent() {
        return true;
    }
    let g = &s.world.ghost;
    let applied_everywhere = |t: &TxnId| {
        Participant::ALL
            .into_iter()
            .all(|p| g.applied.contains(&(p, *t)))
    };
    let (password, history) = (s.password.view(), s.history.view());
    g.commit_records.keys().all(applied_everywhere)
        && s.told_committed().all(|t| applied_everywhere(&t))
        && password
            .versions
            .keys()
            .all(|u| password.newest(*u) == history.newest(*u))
}

pub fn nothing_stuck(model: &TpcModel, s: &Cluster) -> bool {
    if !model.is_terminal(s) {
        return true;
    }
    s.quiescent()
        && s.world
            .ghost
            .commit_records
            .keys()
            .all(|t| s.world.ghost.emails.contains_key(t))
}

pub fn all() -> Vec<Property<TpcModel>> {
    vec![
        Property::always(AGREEMENT, |_, s| agreement(s)),
        Property::always(VALIDITY, |_, s| validity(s)),
        Property::always(ACKED_IS_APPLIED, |_, s| acked_is_applied(s)),
        Property::always(ONCE, |_, s| once(s)),
        Property::always(COMMIT_POINT, |_, s| commit_point(s)),
        Property::always(DURABILITY, |_, s| durability(s)),
        Property::always(ATOMIC_READS, |_, s| atomic_reads(s)),
        Property::always(NO_STRAY_EMAIL, |_, s| no_stray_email(s)),
        Property::always(AT_REST, |_, s| at_rest(s)),
        Property::always(NOTHING_STUCK, nothing_stuck),
        Property::sometimes(COMMITS, |_, s: &Cluster| {
            s.world
                .ghost
                .told
                .iter()
                .any(|(_, _, t)| *t == Told::Committed)
        }),
        Property::sometimes(ABORTS, |_, s: &Cluster| {
            s.world
                .ghost
                .told
                .iter()
                .any(|(_, _, t)| *t == Told::Aborted)
        }),
        Property::sometimes(RECOVERS, |_, s: &Cluster| {
            let g = &s.world.ghost;
            g.recovered.iter().any(|t| {
                Participant::ALL
                    .into_iter()
                    .all(|p| g.applied.contains(&(p, *t)))
            })
        }),
    ]
}
