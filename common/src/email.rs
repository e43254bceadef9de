use std::fmt;

use serde::{Deserialize, Serialize};

use crate::InvalidInput;

/// An e-mail address, checked to be a storage value and an SMTP recipient: `dot-atom@host.name`, at
/// most 254 bytes. Everything accepted here is accepted by lettre (a test in the coordinator checks),
/// so a committed registration can always be mailed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct Email(String);

/// Read back from tpc's own storage, where it was checked when written (see `UserId`'s): a rule
/// tightened later must not make old records unreadable. Input goes through [`Email::parse`].
impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

impl Email {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        if raw.is_empty() {
            return Err(InvalidInput::Empty { field: "email" });
        }
        let Some((local, domain)) = raw.rsplit_once('@') else {
            return Err(InvalidInput::MalformedEmail);
        };
        // RFC 5322 dot-atom: atoms of these characters, joined by single dots.
        let atom_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
        let local_ok = local.len() <= 64
            && local
                .split('.')
                .all(|atom| !atom.is_empty() && atom.chars().all(atom_char));
        // A host name: two or more labels of letters, digits and inner hyphens.
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|label| {
                (1..=63).contains(&label.len())
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if raw.len() <= 254 && local_ok && domain_ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidInput::MalformedEmail)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = InvalidInput;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<Email> for String {
    fn from(email: Email) -> Self {
        email.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses() {
        for ok in [
            "alice@example.com",
            "a.b+tag@mail.example-corp.org",
            "x_y@a-b.c1.io",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_malformed_ones() {
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "alice@localhost",
            "a b@example.com",
            "alice@exa mple.com",
            "alice@example..com",
            "alice@.example.com",
            "a\r\n@x.com",
            "a..b@example.com",
            ".a@example.com",
            "a.@example.com",
            "x@a.-b.com",
            "x@a-.com",
            "a(b)@example.com",
            "a@b@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }
}
