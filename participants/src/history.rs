//! The history participant's resource: per user, the list of password changes (newest first), and the
//! argon2id hashes of the most recent passwords, so a recently used one can be refused.
//!
//! Stored as a small per-user record ([`Recent`]: the last `depth` hashes and the next sequence number)
//! plus one key per change ([`Entry`]), so a change writes two small keys and deletes the one that fell
//! out of the kept window, instead of rewriting the user's whole history (which grew the database by the
//! whole history on every change: 6 GB for 64 MB of live data after half a million changes).

use serde::{Deserialize, Serialize};
use tpc_common::{Operation, OperationKind, TxnId, UserId};

use crate::hashing::Hasher;
use crate::resource::Resource;
use crate::store::{Data, StoreError};

/// One password change, as listed by `GetHistory`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub txn: TxnId,
    pub changed_at: u64,
}

/// What a new password is checked against: the user's most recent hashes (newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recent {
    pub hashes: Vec<String>,
    /// The sequence number of the next entry; also how many changes the user ever had.
    pub next: u64,
}

/// A prepared history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryChange {
    pub user: UserId,
    pub kind: OperationKind,
    pub hash: String,
}

/// What undoes one applied history change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryUndo {
    /// The user's record before (`None`: the change registered the user).
    pub previous: Option<Recent>,
    /// The sequence number of the entry the change added.
    pub seq: u64,
    /// The entry that fell out of the kept window, with its sequence number.
    pub dropped: Option<(u64, Entry)>,
}

/// How many recent passwords are refused unless configured otherwise.
pub const DEFAULT_DEPTH: usize = 5;

/// How many changes per user are listed unless configured otherwise.
pub const DEFAULT_KEEP: usize = 100;

pub struct Histories {
    pub hasher: Hasher,
    /// How many recent passwords are refused.
    pub depth: usize,
    /// How many changes per user are kept for listing (at least `depth`).
    pub keep: usize,
}

impl Resource for Histories {
    type Change = HistoryChange;
    type Undo = HistoryUndo;
    const NAME: &'static str = "history";

    fn validates_in_place(&self) -> bool {
        self.hasher.runs_in_place()
    }

    fn validate(
        &self,
        data: &Data,
        op: &Operation,
    ) -> Result<Result<HistoryChange, String>, StoreError> {
        let recent: Option<Recent> = data.get(op.user())?;
        match (op, &recent) {
            (Operation::Register { .. }, Some(_)) => return Ok(Err("user exists".into())),
            (Operation::Update { .. }, None) => return Ok(Err("unknown user".into())),
            _ => {}
        }
        let new = op.new_password();
        let reused = recent
            .iter()
            .flat_map(|r| r.hashes.iter().take(self.depth))
            .any(|hash| self.hasher.verify(new, hash));
        if reused {
            return Ok(Err("password was used recently".into()));
        }
        Ok(self.hasher.hash(new).map(|hash| HistoryChange {
            user: op.user().clone(),
            kind: op.kind(),
            hash,
        }))
    }

    fn apply(
        &self,
        data: &Data,
        txn: TxnId,
        change: &HistoryChange,
        at: u64,
        batch: &mut tpc_common::storage::Batch,
    ) -> Result<HistoryUndo, StoreError> {
        let previous: Option<Recent> = data.get(&change.user)?;
        let mut recent = previous.clone().unwrap_or_default();
        recent.hashes.insert(0, change.hash.clone());
        recent.hashes.truncate(self.depth);
        let seq = recent.next;
        recent.next += 1;
        Data::put(batch, &change.user, &recent);
        Data::append(
            batch,
            &change.user,
            seq,
            &Entry {
                txn,
                changed_at: at,
            },
        );
        let keep = self.keep.max(self.depth) as u64;
        let mut dropped = None;
        if let Some(old) = seq.checked_sub(keep) {
            dropped = data.item(&change.user, old)?.map(|entry| (old, entry));
            Data::drop_item(batch, &change.user, old);
        }
        Ok(HistoryUndo {
            previous,
            seq,
            dropped,
        })
    }

    fn compensate(
        &self,
        data: &Data,
        _txn: TxnId,
        user: &UserId,
        undo: &HistoryUndo,
        batch: &mut tpc_common::storage::Batch,
    ) -> Result<bool, StoreError> {
        match data.get::<Recent>(user)? {
            Some(current) if current.next == undo.seq + 1 => {}
            _ => return Ok(false),
        }
        match &undo.previous {
            Some(previous) => Data::put(batch, user, previous),
            None => Data::remove(batch, user),
        }
        Data::drop_item(batch, user, undo.seq);
        if let Some((seq, entry)) = &undo.dropped {
            Data::append(batch, user, *seq, entry);
        }
        Ok(true)
    }
}

/// `user`'s listed changes, newest first (`None` for a user the participant does not know).
pub fn entries(data: &Data, user: &UserId) -> Result<Option<Vec<Entry>>, StoreError> {
    if data.get::<Recent>(user)?.is_none() {
        return Ok(None);
    }
    data.items(user).map(Some)
}

#[cfg(test)]
mod tests {
    use tpc_common::Password;

    use super::*;
    use crate::hashing::Cost;
    use crate::store::Store;

    fn pw(s: &str) -> Password {
        Password::new("password", s.into()).unwrap()
    }

    #[tokio::test]
    async fn refuses_the_last_depth_passwords_and_forgets_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store: Store<HistoryChange> =
            Store::open(dir.path(), tpc_common::DEFAULT_CACHE_MIB).unwrap();
        let data = store.data();
        let histories = std::sync::Arc::new(Histories {
            hasher: Hasher::new(Cost::InsecureFast),
            depth: 3,
            keep: 4,
        });
        let user = UserId::parse("alice").unwrap();
        async fn commit(
            store: &Store<HistoryChange>,
            histories: &std::sync::Arc<Histories>,
            op: Operation,
        ) -> Result<(), String> {
            let data = store.data();
            let change = histories.validate(&data, &op).unwrap()?;
            let txn = TxnId::generate();
            let (histories, data) = (histories.clone(), data.clone());
            store
                .force_commit(txn, 0, move |batch| {
                    histories.apply(&data, txn, &change, 0, batch).map(drop)
                })
                .await
                .unwrap();
            Ok(())
        }
        let register = Operation::Register {
            user: user.clone(),
            email: tpc_common::Email::parse("a@example.com").unwrap(),
            password: pw("p0"),
        };
        commit(&store, &histories, register.clone()).await.unwrap();
        assert_eq!(
            commit(&store, &histories, register).await,
            Err("user exists".into())
        );
        let update = |new: &str| Operation::Update {
            user: user.clone(),
            current: pw("ignored by history"),
            new: pw(new),
        };
        commit(&store, &histories, update("p1")).await.unwrap();
        commit(&store, &histories, update("p2")).await.unwrap();
        // p0, p1, p2 are the last three.
        assert_eq!(
            commit(&store, &histories, update("p0")).await,
            Err("password was used recently".into())
        );
        assert_eq!(
            commit(&store, &histories, update("p2")).await,
            Err("password was used recently".into())
        );
        commit(&store, &histories, update("p3")).await.unwrap();
        // p0 fell out of the window.
        commit(&store, &histories, update("p0")).await.unwrap();
        // Five changes (p0, p1, p2, p3, p0); the newest four are kept, newest first.
        let listed = entries(&data, &user).unwrap().unwrap();
        assert_eq!(listed.len(), 4, "the oldest changes fell out: {listed:?}");
        let recent: Recent = data.get(&user).unwrap().unwrap();
        assert_eq!(recent.next, 5);
        assert_eq!(recent.hashes.len(), 3);
        assert!(
            listed.windows(2).all(|w| w[0].txn > w[1].txn),
            "newest first"
        );
        assert_eq!(
            entries(&data, &UserId::parse("bob").unwrap()).unwrap(),
            None
        );
    }
}
