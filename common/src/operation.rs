use serde::{Deserialize, Serialize};

use crate::{Email, Password, UserId};

/// What a transaction does. Both participants receive the same operation in `Prepare`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Operation {
    Register {
        user: UserId,
        email: Email,
        password: Password,
    },
    Update {
        user: UserId,
        current: Password,
        new: Password,
    },
}

/// The kind of an operation, without its secrets: what logs and records keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationKind {
    Register,
    Update,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Register => "register",
            OperationKind::Update => "update",
        }
    }
}

impl Operation {
    pub fn user(&self) -> &UserId {
        match self {
            Operation::Register { user, .. } | Operation::Update { user, .. } => user,
        }
    }

    pub fn kind(&self) -> OperationKind {
        match self {
            Operation::Register { .. } => OperationKind::Register,
            Operation::Update { .. } => OperationKind::Update,
        }
    }

    /// The password the transaction installs.
    pub fn new_password(&self) -> &Password {
        match self {
            Operation::Register { password, .. } => password,
            Operation::Update { new, .. } => new,
        }
    }
}
