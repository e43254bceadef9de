//! The password participant's resource: one account per user, holding the argon2id hash of the current
//! password and the transaction that set it.

use serde::{Deserialize, Serialize};
use tpc_common::{Email, Operation, OperationKind, TxnId, UserId};

use crate::hashing::Hasher;
use crate::resource::Resource;
use crate::store::{Data, StoreError};

/// A stored account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    pub email: Email,
    /// PHC string.
    pub hash: String,
    /// The transaction that set the current password.
    pub version: TxnId,
    pub changed_at: u64,
}

/// A prepared password change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordChange {
    pub user: UserId,
    pub kind: OperationKind,
    pub email: Email,
    pub hash: String,
}

pub struct Passwords {
    pub hasher: Hasher,
}

impl Resource for Passwords {
    type Change = PasswordChange;
    /// The account the change replaced (`None`: the change registered the user).
    type Undo = Option<Account>;
    const NAME: &'static str = "password";

    fn validate(
        &self,
        data: &Data,
        op: &Operation,
    ) -> Result<Result<PasswordChange, String>, StoreError> {
        let existing: Option<Account> = data.get(op.user())?;
        let email = match (op, existing) {
            (Operation::Register { .. }, Some(_)) => return Ok(Err("user exists".into())),
            (Operation::Register { email, .. }, None) => email.clone(),
            (Operation::Update { .. }, None) => return Ok(Err("unknown user".into())),
            (Operation::Update { current, .. }, Some(account)) => {
                if !self.hasher.verify(current, &account.hash) {
                    return Ok(Err("current password is wrong".into()));
                }
                account.email
            }
        };
        Ok(self
            .hasher
            .hash(op.new_password())
            .map(|hash| PasswordChange {
                user: op.user().clone(),
                kind: op.kind(),
                email,
                hash,
            }))
    }

    fn apply(
        &self,
        data: &Data,
        txn: TxnId,
        change: &PasswordChange,
        at: u64,
        batch: &mut sled::Batch,
    ) -> Result<Option<Account>, StoreError> {
        let previous = data.get(&change.user)?;
        let account = Account {
            email: change.email.clone(),
            hash: change.hash.clone(),
            version: txn,
            changed_at: at,
        };
        Data::put(batch, &change.user, &account);
        Ok(previous)
    }

    fn compensate(
        &self,
        data: &Data,
        txn: TxnId,
        user: &UserId,
        undo: &Option<Account>,
        batch: &mut sled::Batch,
    ) -> Result<bool, StoreError> {
        match data.get::<Account>(user)? {
            Some(current) if current.version == txn => {}
            _ => return Ok(false),
        }
        match undo {
            Some(previous) => Data::put(batch, user, previous),
            None => Data::remove(batch, user),
        }
        Ok(true)
    }

    fn vote_detail(change: &PasswordChange) -> String {
        change.email.to_string()
    }
}
