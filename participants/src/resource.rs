//! What a participant manages. The engine and the runtime are the same for both participants; a
//! `Resource` supplies the two things that differ: how to check and prepare an operation, and how to
//! apply a prepared change.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tpc_common::{Operation, TxnId, UserId};

use crate::store::{Data, StoreError};

pub trait Resource: Send + Sync + 'static {
    /// The prepared change, as written in the PREPARED record: hashes, never a plaintext.
    type Change: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// What a saga needs to undo an applied change (what the change replaced). Stored in the
    /// participant's own store only.
    type Undo: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// `"password"` or `"history"`, for logs.
    const NAME: &'static str;

    /// Checks the operation against the committed data and does the expensive work (argon2). Runs on
    /// the blocking pool while the user's lock is held, so the data cannot change underneath.
    /// `Ok(Err(reason))` is a no-vote; `Err(StoreError)` a storage failure.
    fn validate(
        &self,
        data: &Data,
        op: &Operation,
    ) -> Result<Result<Self::Change, String>, StoreError>;

    /// Whether [`Resource::validate`] is cheap enough to run on an async worker rather than pay for
    /// the blocking pool's hand-off (`Hasher::runs_in_place`).
    fn validates_in_place(&self) -> bool {
        false
    }

    /// Adds the writes that apply `change` to `batch`; returns what undoes them (two-phase commit
    /// never needs it; a saga's compensation does).
    fn apply(
        &self,
        data: &Data,
        txn: TxnId,
        change: &Self::Change,
        at: u64,
        batch: &mut tpc_common::storage::Batch,
    ) -> Result<Self::Undo, StoreError>;

    /// Adds the writes that undo `txn`'s applied change to `batch`. Runs under the user's lock, after
    /// nothing else changed the user (a saga changes one user one step at a time); if something did,
    /// it leaves the newer state alone and says so with `false`.
    fn compensate(
        &self,
        data: &Data,
        txn: TxnId,
        user: &UserId,
        undo: &Self::Undo,
        batch: &mut tpc_common::storage::Batch,
    ) -> Result<bool, StoreError>;

    /// What the yes-vote tells the coordinator (the password participant: the user's e-mail address).
    fn vote_detail(_change: &Self::Change) -> String {
        String::new()
    }
}
