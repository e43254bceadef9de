/// Input a tpc service refuses before it touches any state. Mapped to `INVALID_ARGUMENT` at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} is longer than {max} bytes")]
    TooLong { field: &'static str, max: usize },
    #[error("user id may only contain A-Z a-z 0-9 . _ @ - (1 to 64 characters)")]
    MalformedUserId,
    #[error("transaction id is not a UUID: {0:?}")]
    MalformedTxnId(String),
    #[error("e-mail address is malformed")]
    MalformedEmail,
    #[error("request has no operation")]
    MissingOperation,
}

impl From<InvalidInput> for tonic::Status {
    fn from(err: InvalidInput) -> Self {
        tonic::Status::invalid_argument(err.to_string())
    }
}
