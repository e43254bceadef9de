//! Whether each participant still answers from the store that acknowledged its changes.
//!
//! A participant whose data directory was deleted starts empty; one whose file was damaged comes back
//! with its log truncated (sled treats a bad segment like a torn tail). Either way it would go on
//! voting and acknowledging as if nothing happened, and committed changes it had acknowledged would be
//! silently gone. So each participant reports its store's identity and how many promises (forced writes)
//! it holds, and the coordinator keeps the highest it was told: a store with another identity, or a new
//! run of the participant with fewer promises than it already reported, is *lost*, and changes are
//! refused until an operator restarts that participant with `--accept-data-loss`.
//!
//! Pure: the engine feeds it reports, it answers what they mean.

use std::collections::{BTreeMap, BTreeSet};

use super::Participant;

/// What a participant reports with its answers (`tpc.v1.StoreMark`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreMark {
    /// Made when the store was created.
    pub id: String,
    /// Made when the participant's process started.
    pub boot: String,
    /// Promises on disk.
    pub seq: u64,
    /// The operator accepts what this store lost.
    pub accept_loss: bool,
}

/// What a report means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing new.
    Same,
    /// Further than known: worth remembering (`id`, `seq`).
    Advanced { id: String, seq: u64 },
    /// The store is not the one that acknowledged changes, or went back: the reason.
    Lost(String),
    /// An operator accepted the loss: start again from this mark.
    Accepted { id: String, seq: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Known {
    id: String,
    /// The run whose reports are current; empty after the coordinator restarted.
    boot: String,
    seq: u64,
    /// Earlier runs: a report of theirs still in flight says nothing new.
    past_boots: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Stores {
    known: BTreeMap<Participant, Known>,
    lost: BTreeMap<Participant, String>,
}

impl Stores {
    /// What the coordinator remembered from before it restarted.
    pub fn remember(&mut self, from: Participant, id: String, seq: u64) {
        self.known.insert(
            from,
            Known {
                id,
                boot: String::new(),
                seq,
                past_boots: BTreeSet::new(),
            },
        );
    }

    /// Why `p`'s store is refused, if it is.
    pub fn lost(&self, p: Participant) -> Option<&str> {
        self.lost.get(&p).map(String::as_str)
    }

    pub fn report(&mut self, from: Participant, mark: StoreMark) -> Verdict {
        let Some(known) = self.known.get_mut(&from) else {
            self.lost.remove(&from);
            let verdict = Verdict::Advanced {
                id: mark.id.clone(),
                seq: mark.seq,
            };
            self.known.insert(from, fresh(mark));
            return verdict;
        };
        if self.lost.contains_key(&from) && !mark.accept_loss {
            // Said once; refused until an operator acts.
            return Verdict::Same;
        }
        let same_run = mark.boot == known.boot;
        if !same_run && known.past_boots.contains(&mark.boot) {
            return Verdict::Same;
        }
        let problem = if mark.id != known.id {
            Some(format!(
                "{} participant answers from another store ({}) than the one that acknowledged changes ({}): its data was deleted or replaced; changes abort until an operator repairs it or restarts it with --accept-data-loss",
                from.name(),
                mark.id,
                known.id
            ))
        } else if !same_run && mark.seq < known.seq {
            Some(format!(
                "{} participant's store came back with {} forced writes after {} were acknowledged: acknowledged changes were lost (a damaged file truncated at restart?); changes abort until an operator repairs it or restarts it with --accept-data-loss",
                from.name(),
                mark.seq,
                known.seq
            ))
        } else {
            None
        };
        if mark.accept_loss && (problem.is_some() || self.lost.contains_key(&from)) {
            self.lost.remove(&from);
            let verdict = Verdict::Accepted {
                id: mark.id.clone(),
                seq: mark.seq,
            };
            self.known.insert(from, fresh(mark));
            return verdict;
        }
        match problem {
            Some(reason) => {
                self.lost.insert(from, reason.clone());
                Verdict::Lost(reason)
            }
            None if self.lost.contains_key(&from) => Verdict::Same,
            None => {
                if !same_run {
                    let old = std::mem::replace(&mut known.boot, mark.boot);
                    known.past_boots.insert(old);
                }
                if mark.seq > known.seq {
                    known.seq = mark.seq;
                    Verdict::Advanced {
                        id: mark.id,
                        seq: mark.seq,
                    }
                } else {
                    Verdict::Same
                }
            }
        }
    }
}

fn fresh(mark: StoreMark) -> Known {
    Known {
        id: mark.id,
        boot: mark.boot,
        seq: mark.seq,
        past_boots: BTreeSet::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Participant = Participant::History;

    fn mark(id: &str, boot: &str, seq: u64) -> StoreMark {
        StoreMark {
            id: id.into(),
            boot: boot.into(),
            seq,
            accept_loss: false,
        }
    }

    #[test]
    fn reports_of_one_run_only_advance_whatever_their_order() {
        let mut s = Stores::default();
        assert_eq!(
            s.report(P, mark("s1", "b1", 5)),
            Verdict::Advanced {
                id: "s1".into(),
                seq: 5
            }
        );
        assert_eq!(
            s.report(P, mark("s1", "b1", 9)),
            Verdict::Advanced {
                id: "s1".into(),
                seq: 9
            }
        );
        assert_eq!(
            s.report(P, mark("s1", "b1", 7)),
            Verdict::Same,
            "a late report"
        );
        assert_eq!(s.lost(P), None);
    }

    #[test]
    fn a_new_run_with_fewer_promises_is_lost_until_the_loss_is_accepted() {
        let mut s = Stores::default();
        s.report(P, mark("s1", "b1", 9));
        assert_eq!(
            s.report(P, mark("s1", "b2", 9)),
            Verdict::Same,
            "a restart that kept everything"
        );
        assert_eq!(
            s.report(P, mark("s1", "b1", 3)),
            Verdict::Same,
            "a report of the old run"
        );
        let Verdict::Lost(reason) = s.report(P, mark("s1", "b3", 4)) else {
            panic!("not lost");
        };
        assert!(
            reason.contains("came back with 4 forced writes after 9"),
            "{reason}"
        );
        assert!(s.lost(P).is_some());
        assert_eq!(
            s.report(P, mark("s1", "b3", 5)),
            Verdict::Same,
            "still lost"
        );
        assert!(s.lost(P).is_some());
        let accepted = StoreMark {
            accept_loss: true,
            ..mark("s1", "b4", 4)
        };
        assert_eq!(
            s.report(P, accepted),
            Verdict::Accepted {
                id: "s1".into(),
                seq: 4
            }
        );
        assert_eq!(s.lost(P), None);
        assert_eq!(
            s.report(P, mark("s1", "b4", 6)),
            Verdict::Advanced {
                id: "s1".into(),
                seq: 6
            }
        );
    }

    #[test]
    fn another_store_is_lost_and_so_is_one_behind_what_was_remembered() {
        let mut s = Stores::default();
        s.report(P, mark("s1", "b1", 2));
        assert!(
            matches!(s.report(P, mark("s2", "b2", 0)), Verdict::Lost(r) if r.contains("another store"))
        );

        let mut after_restart = Stores::default();
        after_restart.remember(P, "s1".into(), 9);
        assert!(matches!(
            after_restart.report(P, mark("s1", "b7", 8)),
            Verdict::Lost(_)
        ));
        let mut fine = Stores::default();
        fine.remember(P, "s1".into(), 9);
        assert_eq!(fine.report(P, mark("s1", "b7", 9)), Verdict::Same);
    }
}
