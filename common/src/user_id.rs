use std::fmt;

use serde::{Deserialize, Serialize};

use crate::InvalidInput;

/// A user's id: 1 to 64 characters of `[A-Za-z0-9._@-]`, so it is safe as a storage key, in a log line
/// and in an e-mail.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct UserId(String);

/// Read back from tpc's own storage, where it was checked when written: re-checking it would make a
/// rule tightened later turn every old record into an error (or a crash loop). Input from the outside
/// goes through [`UserId::parse`], never through serde.
impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

impl UserId {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let ok = (1..=64).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
        if raw.is_empty() {
            Err(InvalidInput::Empty { field: "user_id" })
        } else if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidInput::MalformedUserId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = InvalidInput;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<UserId> for String {
    fn from(id: UserId) -> Self {
        id.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_id_reads_back_even_if_todays_rule_would_refuse_it() {
        // Written under an older, looser rule: still readable, never a decode error.
        let old: UserId = serde_json::from_str("\"has space\"").unwrap();
        assert_eq!(old.as_str(), "has space");
        assert!(
            UserId::parse("has space").is_err(),
            "input is still checked"
        );
        let round = serde_json::to_string(&UserId::parse("alice").unwrap()).unwrap();
        assert_eq!(
            serde_json::from_str::<UserId>(&round).unwrap().as_str(),
            "alice"
        );
    }

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(UserId::parse("alice.smith_01@example-corp").is_ok());
        assert!(UserId::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn refuses_everything_else() {
        for bad in ["", "a b", "x/y", "ünï", "a\0", "../etc"] {
            assert!(UserId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(UserId::parse(&"a".repeat(65)).is_err());
    }
}
