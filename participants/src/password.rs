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
    /// A hash of nothing anyone knows, at the hasher's cost: an unknown user's "current password" is
    /// verified against it, so that an unknown user and a wrong password take the same time.
    decoy: String,
}

/// What a wrong current password and an unknown user both get: telling them apart would let anyone
/// find out which user ids exist.
pub const INVALID_CREDENTIALS: &str = "invalid credentials";

impl Passwords {
    /// The decoy hash (see the field).
    pub fn decoy(&self) -> &str {
        &self.decoy
    }

    pub fn new(hasher: Hasher) -> Self {
        let mut secret = [0u8; 24];
        tpc_common::entropy::fill(&mut secret);
        let text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let decoy = tpc_common::Password::new("decoy", text)
            .ok()
            .and_then(|p| hasher.hash(&p).ok());
        Self {
            // Without a decoy an unknown user is answered sooner, never wrongly.
            decoy: decoy.unwrap_or_default(),
            hasher,
        }
    }
}

impl Resource for Passwords {
    type Change = PasswordChange;
    /// The account the change replaced (`None`: the change registered the user).
    type Undo = Option<Account>;
    const NAME: &'static str = "password";

    fn validates_in_place(&self) -> bool {
        self.hasher.runs_in_place()
    }

    fn validate(
        &self,
        data: &Data,
        op: &Operation,
    ) -> Result<Result<PasswordChange, String>, StoreError> {
        let existing: Option<Account> = data.get(op.user())?;
        let email = match (op, existing) {
            (Operation::Register { .. }, Some(_)) => return Ok(Err("user exists".into())),
            (Operation::Register { email, .. }, None) => email.clone(),
            (Operation::Update { current, .. }, None) => {
                let _ = self.hasher.verify(current, &self.decoy);
                return Ok(Err(INVALID_CREDENTIALS.into()));
            }
            (Operation::Update { current, .. }, Some(account)) => {
                if !self.hasher.verify(current, &account.hash) {
                    return Ok(Err(INVALID_CREDENTIALS.into()));
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
        batch: &mut tpc_common::storage::Batch,
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
        batch: &mut tpc_common::storage::Batch,
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
