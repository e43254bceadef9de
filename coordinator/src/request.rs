//! What a `request_id` stands for, so a retry gets the first outcome and a reuse of the id for another
//! request is refused: shared by every strategy's engine.

use tpc_common::{Fingerprint, OperationKind, UserId};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub kind: OperationKind,
    pub user: UserId,
    /// The whole payload's keyed digest, passwords included; `None` after a restart (the digest is
    /// never written down), when kind and user are all there is to compare.
    pub fingerprint: Option<Fingerprint>,
}

impl RequestKey {
    /// Whether a request with `other` may be the same request again (a retry).
    pub fn same_request(&self, other: &RequestKey) -> bool {
        self.kind == other.kind
            && self.user == other.user
            && match (self.fingerprint, other.fingerprint) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}
