//! The order in which one consumer gets the events: per user, one at a time, oldest first (as a log
//! partitioned by user delivers, Kafka-style); users in parallel. Without it a user's second change
//! could reach the password consumer before the first and be refused for a "wrong" current password
//! that is only not yet current. Pure, for the tests.

use std::collections::{HashMap, VecDeque};

use tpc_common::{TxnId, UserId};

#[derive(Debug, Default)]
pub struct DeliveryQueue {
    /// Per user: the event being delivered first, then those waiting.
    users: HashMap<UserId, VecDeque<TxnId>>,
    user_of: HashMap<TxnId, UserId>,
}

impl DeliveryQueue {
    /// Adds an event; returns it if it can be delivered now (nothing else of its user in flight).
    /// An event already queued is ignored (recovery and the live feed may both hand it over).
    pub fn push(&mut self, txn: TxnId, user: UserId) -> Option<TxnId> {
        if self.user_of.contains_key(&txn) {
            return None;
        }
        self.user_of.insert(txn, user.clone());
        let queue = self.users.entry(user).or_default();
        queue.push_back(txn);
        (queue.len() == 1).then_some(txn)
    }

    /// The event was delivered (applied or refused for good); returns its user's next, if any.
    pub fn done(&mut self, txn: TxnId) -> Option<TxnId> {
        let user = self.user_of.remove(&txn)?;
        let queue = self.users.get_mut(&user)?;
        if queue.front() != Some(&txn) {
            queue.retain(|t| *t != txn);
            return None;
        }
        queue.pop_front();
        match queue.front() {
            Some(next) => Some(*next),
            None => {
                self.users.remove(&user);
                None
            }
        }
    }

    /// Events not yet delivered.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.user_of.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    #[test]
    fn one_event_per_user_in_flight_in_order_users_in_parallel() {
        let mut q = DeliveryQueue::default();
        let (a1, a2, a3, b1) = (
            TxnId::generate(),
            TxnId::generate(),
            TxnId::generate(),
            TxnId::generate(),
        );
        assert_eq!(q.push(a1, user("alice")), Some(a1));
        assert_eq!(q.push(a2, user("alice")), None);
        assert_eq!(q.push(a3, user("alice")), None);
        assert_eq!(
            q.push(b1, user("bob")),
            Some(b1),
            "another user is not held up"
        );
        assert_eq!(q.push(a2, user("alice")), None, "a duplicate is ignored");
        assert_eq!(q.pending(), 4);
        assert_eq!(q.done(a1), Some(a2));
        assert_eq!(q.done(b1), None);
        assert_eq!(q.done(a2), Some(a3));
        assert_eq!(q.done(a3), None);
        assert_eq!(q.pending(), 0);
        assert_eq!(q.done(a3), None, "done twice changes nothing");
        assert_eq!(
            q.push(a1, user("alice")),
            Some(a1),
            "a new round starts at once"
        );
    }
}
