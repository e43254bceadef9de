//! The changes in flight, where the load clients publish each change they send (user, new password,
//! request id) and readers come to look at them: a reader reads a user that is being changed, and
//! tries the new password while the change is undecided.
//!
//! A change a reader saw working (`VerifyPassword` valid) is kept after its client is done, with the
//! outcome the client heard; at the end of the run [`dirty_reads`] judges them: the password worked,
//! and the change did not take effect (ABORTED, or found aborted at rest when the client never heard).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// What the client that sent a change heard back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// No answer yet.
    Nothing = 0,
    Committed = 1,
    /// ABORTED, or refused before a transaction began: the change is not in effect.
    Aborted = 2,
    /// A timeout or a broken connection: the change may or may not have taken effect.
    Unknown = 3,
}

impl Heard {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Heard::Committed,
            2 => Heard::Aborted,
            3 => Heard::Unknown,
            _ => Heard::Nothing,
        }
    }
}

/// One change as a client sent it.
#[derive(Debug)]
pub struct Change {
    pub user: String,
    pub new_password: String,
    pub request_id: String,
    /// A reader's `VerifyPassword(user, new_password)` answered valid.
    seen_valid: AtomicBool,
    heard: AtomicU8,
}

impl Change {
    pub fn new(user: String, new_password: String, request_id: String) -> Self {
        Self {
            user,
            new_password,
            request_id,
            seen_valid: AtomicBool::new(false),
            heard: AtomicU8::new(Heard::Nothing as u8),
        }
    }

    pub fn heard(&self) -> Heard {
        Heard::from_u8(self.heard.load(Ordering::Acquire))
    }
}

/// The board the clients and the readers share.
#[derive(Default)]
pub struct InFlight {
    /// Changes sent and not yet answered, by request id.
    open: Mutex<HashMap<String, Arc<Change>>>,
    /// Changes a reader saw working, answered or not.
    seen: Mutex<Vec<Arc<Change>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A task that panicked mid-update left a map, not a broken invariant.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl InFlight {
    /// A client is about to send `change`.
    pub fn publish(&self, change: Arc<Change>) {
        lock(&self.open).insert(change.request_id.clone(), change);
    }

    /// The client heard `heard` for `change`; it is no longer in flight.
    pub fn answered(&self, change: &Change, heard: Heard) {
        change.heard.store(heard as u8, Ordering::Release);
        lock(&self.open).remove(&change.request_id);
    }

    /// One of the changes in flight, the `pick`-th in the map's order modulo their number.
    pub fn pick(&self, pick: usize) -> Option<Arc<Change>> {
        let open = lock(&self.open);
        let n = open.len();
        (n > 0)
            .then(|| open.values().nth(pick % n).cloned())
            .flatten()
    }

    /// A reader's `VerifyPassword` with the change's new password answered valid.
    pub fn saw_valid(&self, change: &Arc<Change>) {
        if !change.seen_valid.swap(true, Ordering::AcqRel) {
            lock(&self.seen).push(change.clone());
        }
    }

    /// Every change a reader saw working, with what its client heard.
    pub fn seen_valid(&self) -> Vec<(String, Heard)> {
        lock(&self.seen)
            .iter()
            .map(|c| (c.request_id.clone(), c.heard()))
            .collect()
    }
}

/// How a change ended, as the coordinator's log shows it once the cluster is quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtRest {
    Committed,
    /// Aborted or compensated (or still compensating).
    Undone,
    /// Still running: not judged.
    Running,
}

/// Dirty reads: changes whose new password a reader saw working and that did not take effect. A
/// client's definite answer decides; for a change it never heard about, the coordinator's record at
/// rest does (by request id); a change the coordinator has no record of never took effect.
pub fn dirty_reads(seen: &[(String, Heard)], at_rest: &BTreeMap<String, AtRest>) -> u64 {
    seen.iter()
        .filter(|(request, heard)| match heard {
            Heard::Committed => false,
            Heard::Aborted => true,
            Heard::Unknown | Heard::Nothing => {
                matches!(at_rest.get(request), Some(AtRest::Undone) | None)
            }
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(request: &str) -> Arc<Change> {
        Arc::new(Change::new("u1".into(), "pw".into(), request.into()))
    }

    #[test]
    fn a_change_is_in_flight_until_answered() {
        let board = InFlight::default();
        assert!(board.pick(3).is_none());
        let c = change("c0-1");
        board.publish(c.clone());
        assert_eq!(board.pick(7).unwrap().request_id, "c0-1");
        board.answered(&c, Heard::Committed);
        assert!(board.pick(0).is_none());
        assert_eq!(c.heard(), Heard::Committed);
    }

    #[test]
    fn a_change_seen_working_is_kept_once_with_its_outcome() {
        let board = InFlight::default();
        let c = change("c0-1");
        board.publish(c.clone());
        board.saw_valid(&c);
        board.saw_valid(&c);
        assert_eq!(board.seen_valid(), [("c0-1".into(), Heard::Nothing)]);
        board.answered(&c, Heard::Aborted);
        assert_eq!(board.seen_valid(), [("c0-1".into(), Heard::Aborted)]);
    }

    #[test]
    fn dirty_reads_are_the_changes_seen_working_that_did_not_take_effect() {
        let seen = [
            ("committed".to_owned(), Heard::Committed),
            ("aborted".to_owned(), Heard::Aborted),
            ("lost, committed".to_owned(), Heard::Unknown),
            ("lost, compensated".to_owned(), Heard::Unknown),
            ("lost, never logged".to_owned(), Heard::Unknown),
            ("lost, running".to_owned(), Heard::Nothing),
        ];
        let at_rest = BTreeMap::from([
            ("lost, committed".to_owned(), AtRest::Committed),
            ("lost, compensated".to_owned(), AtRest::Undone),
            ("lost, running".to_owned(), AtRest::Running),
        ]);
        assert_eq!(dirty_reads(&seen, &at_rest), 3);
    }
}
