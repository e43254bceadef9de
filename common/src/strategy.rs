use std::fmt;

use serde::{Deserialize, Serialize};

/// How the coordinator makes the three effects of a password change (password, history, e-mail) follow
/// together. Two-phase commit is the product; the other two are the usual answers, built so they can
/// be measured beside it on the same participants (`tpc bench --strategies`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Two-phase commit, presumed abort: all or nothing, readers wait for in-doubt users.
    #[default]
    #[serde(rename = "2pc")]
    TwoPc,
    /// Local commits one step after the other, compensated in reverse when a step fails.
    Saga,
    /// The change is published once, durably, and each consumer applies it on its own.
    Events,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [Strategy::TwoPc, Strategy::Saga, Strategy::Events];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::TwoPc => "2pc",
            Strategy::Saga => "saga",
            Strategy::Events => "events",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_text_and_json() {
        for s in Strategy::ALL {
            assert_eq!(Strategy::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Strategy>(&json).unwrap(), s);
        }
        assert_eq!(Strategy::parse("2PC"), None);
    }
}
