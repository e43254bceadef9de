//! Conversions between the `tpc.v1` wire types and the domain types, in one place, so the engines never
//! see protobuf and every service validates input the same way.

use tpc_proto::v1::{self, apply_request, prepare_request};

use crate::UserId;
use crate::{Email, InvalidInput, Operation, Password};

impl TryFrom<Option<prepare_request::Operation>> for Operation {
    type Error = InvalidInput;

    fn try_from(op: Option<prepare_request::Operation>) -> Result<Self, Self::Error> {
        match op.ok_or(InvalidInput::MissingOperation)? {
            prepare_request::Operation::Register(r) => Ok(Operation::Register {
                user: UserId::parse(&r.user_id)?,
                email: Email::parse(&r.email)?,
                password: Password::new("password", r.password)?,
            }),
            prepare_request::Operation::Update(u) => Ok(Operation::Update {
                user: UserId::parse(&u.user_id)?,
                current: Password::new("current_password", u.current_password)?,
                new: Password::new("new_password", u.new_password)?,
            }),
        }
    }
}

/// An `Apply` carries the same operation as a `Prepare`.
impl TryFrom<Option<apply_request::Operation>> for Operation {
    type Error = InvalidInput;

    fn try_from(op: Option<apply_request::Operation>) -> Result<Self, Self::Error> {
        Operation::try_from(op.map(|op| match op {
            apply_request::Operation::Register(r) => prepare_request::Operation::Register(r),
            apply_request::Operation::Update(u) => prepare_request::Operation::Update(u),
        }))
    }
}

impl From<&Operation> for apply_request::Operation {
    fn from(op: &Operation) -> Self {
        match prepare_request::Operation::from(op) {
            prepare_request::Operation::Register(r) => apply_request::Operation::Register(r),
            prepare_request::Operation::Update(u) => apply_request::Operation::Update(u),
        }
    }
}

impl From<&Operation> for prepare_request::Operation {
    fn from(op: &Operation) -> Self {
        // The plaintext crosses the wire to the participants, which hash it; it is never stored.
        let text = |p: &Password| String::from_utf8_lossy(p.expose()).into_owned();
        match op {
            Operation::Register {
                user,
                email,
                password,
            } => prepare_request::Operation::Register(v1::Register {
                user_id: user.to_string(),
                email: email.to_string(),
                password: text(password),
            }),
            Operation::Update { user, current, new } => {
                prepare_request::Operation::Update(v1::Update {
                    user_id: user.to_string(),
                    current_password: text(current),
                    new_password: text(new),
                })
            }
        }
    }
}

/// A Unix-milliseconds timestamp as a protobuf `Timestamp`.
pub fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_round_trips_through_the_wire() {
        let op = Operation::Update {
            user: UserId::parse("alice").unwrap(),
            current: Password::new("current_password", "old secret".into()).unwrap(),
            new: Password::new("new_password", "new secret".into()).unwrap(),
        };
        let wire = prepare_request::Operation::from(&op);
        assert_eq!(Operation::try_from(Some(wire)), Ok(op));
    }

    #[test]
    fn refuses_bad_fields() {
        let wire = prepare_request::Operation::Register(v1::Register {
            user_id: "bob".into(),
            email: "not-an-address".into(),
            password: "pw".into(),
        });
        assert_eq!(
            Operation::try_from(Some(wire)),
            Err(InvalidInput::MalformedEmail)
        );
        assert_eq!(
            Operation::try_from(None::<prepare_request::Operation>),
            Err(InvalidInput::MissingOperation)
        );
    }
}
