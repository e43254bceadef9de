//! What the model checks: which changes the client asks for, how many faults the network and the
//! processes may suffer, and the engines' configurations (the production defaults unless a test says
//! otherwise).

use tpc_common::{Email, Operation, Password, UserId};

use crate::network::Node;
pub use crate::world::Faults;

/// One password change of one of the model's users (user `0` is `user0`, and so on). Every user
/// exists at the start, with version 0 of its password in both participants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub user: u8,
}

#[derive(Clone, Debug)]
pub struct Setup {
    pub changes: Vec<Change>,
    /// How many times the client may send a change again under the same request id, when it has not
    /// heard back.
    pub retries: u8,
    /// How many faults of each kind the checker may inject.
    pub faults: Faults,
    /// The processes that may crash.
    pub crashable: Vec<Node>,
    /// Whether the history participant may vote no (a reused password), besides yes.
    pub history_may_refuse: bool,
    /// Whether a reader reads user 0 (password version, history, password version again) once.
    pub reader: bool,
    pub coordinator: tpc_coordinator::engine::Config,
    pub participant: tpc_participants::engine::Config,
}

impl Setup {
    /// One change, every kind of fault once, a reader and a history participant that may say no.
    pub fn one_change() -> Self {
        Self {
            changes: vec![Change { user: 0 }],
            retries: 0,
            faults: Faults {
                crashes: 1,
                losses: 1,
                duplicates: 1,
                timeouts: 1,
            },
            history_may_refuse: true,
            reader: true,
            crashable: vec![Node::Coordinator, Node::Password, Node::History],
            coordinator: Default::default(),
            participant: Default::default(),
        }
    }

    /// Two changes of the same user at once.
    pub fn same_user() -> Self {
        Self {
            changes: vec![Change { user: 0 }, Change { user: 0 }],
            reader: false,
            history_may_refuse: false,
            ..Self::one_change()
        }
    }

    /// Two changes of different users at once.
    pub fn two_users() -> Self {
        Self {
            changes: vec![Change { user: 0 }, Change { user: 1 }],
            ..Self::same_user()
        }
    }

    pub fn users(&self) -> u8 {
        self.changes.iter().map(|c| c.user + 1).max().unwrap_or(0)
    }

    pub fn user_id(user: u8) -> UserId {
        UserId::parse(&format!("user{user}")).expect("a valid user id")
    }

    pub fn email(user: u8) -> Email {
        Email::parse(&format!("user{user}@example.com")).expect("a valid address")
    }

    pub fn request_id(change: u8) -> String {
        format!("change-{change}")
    }

    /// The operation of change `change`: passwords differ per change, so each is its own request.
    pub fn operation(&self, change: u8) -> Operation {
        let user = self.changes[change as usize].user;
        let password = |text: String| Password::new("password", text).expect("a valid password");
        Operation::Update {
            user: Self::user_id(user),
            current: password("old password".into()),
            new: password(format!("new password {change}")),
        }
    }

    /// Which change an operation is.
    pub fn change_of(&self, op: &Operation) -> Option<u8> {
        (0..self.changes.len() as u8).find(|&c| self.operation(c) == *op)
    }

    pub fn user_of(&self, change: u8) -> u8 {
        self.changes[change as usize].user
    }
}
