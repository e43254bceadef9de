//! The history participant's resource: per user, the list of password changes (newest first), with the
//! argon2id hashes of the most recent ones, so a recently used password can be refused.

use serde::{Deserialize, Serialize};
use tpc_common::{Operation, OperationKind, TxnId, UserId};

use crate::hashing::Hasher;
use crate::resource::Resource;
use crate::store::{Data, StoreError};

/// One password change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub txn: TxnId,
    pub changed_at: u64,
    /// Kept for the newest `depth` entries only; older entries keep just the fact of the change.
    pub hash: Option<String>,
}

/// A prepared history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryChange {
    pub user: UserId,
    pub kind: OperationKind,
    pub hash: String,
}

/// How many recent passwords are refused unless configured otherwise.
pub const DEFAULT_DEPTH: usize = 5;

pub struct Histories {
    pub hasher: Hasher,
    /// How many recent passwords are refused.
    pub depth: usize,
}

impl Resource for Histories {
    type Change = HistoryChange;
    const NAME: &'static str = "history";

    fn validate(
        &self,
        data: &Data,
        op: &Operation,
    ) -> Result<Result<HistoryChange, String>, StoreError> {
        let entries: Vec<Entry> = data.get(op.user())?.unwrap_or_default();
        match op {
            Operation::Register { .. } if !entries.is_empty() => {
                return Ok(Err("user exists".into()));
            }
            Operation::Update { .. } if entries.is_empty() => {
                return Ok(Err("unknown user".into()));
            }
            _ => {}
        }
        let new = op.new_password();
        let reused = entries
            .iter()
            .filter_map(|e| e.hash.as_deref())
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
        batch: &mut sled::Batch,
    ) -> Result<(), StoreError> {
        let mut entries: Vec<Entry> = data.get(&change.user)?.unwrap_or_default();
        entries.insert(
            0,
            Entry {
                txn,
                changed_at: at,
                hash: Some(change.hash.clone()),
            },
        );
        for old in entries.iter_mut().skip(self.depth) {
            old.hash = None;
        }
        Data::put(batch, &change.user, &entries);
        Ok(())
    }
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
        let histories = Histories {
            hasher: Hasher::new(Cost::InsecureFast),
            depth: 3,
        };
        let user = UserId::parse("alice").unwrap();
        async fn commit(
            store: &Store<HistoryChange>,
            histories: &Histories,
            op: Operation,
        ) -> Result<(), String> {
            let data = store.data();
            let change = histories.validate(&data, &op).unwrap()?;
            let txn = TxnId::generate();
            let mut batch = sled::Batch::default();
            histories.apply(&data, txn, &change, 0, &mut batch).unwrap();
            store.force_commit(txn, batch, 0).await.unwrap();
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
        let entries: Vec<Entry> = data.get(&user).unwrap().unwrap();
        assert_eq!(entries.len(), 5, "every change is listed");
        assert_eq!(entries.iter().filter(|e| e.hash.is_some()).count(), 3);
    }
}
