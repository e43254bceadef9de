use std::fmt;

use crate::InvalidInput;

/// A plaintext password on its way to being hashed.
///
/// It exists only in memory: it is not `Serialize`, and `Debug`/`Display` print `[redacted]`, so no log
/// line, trace or record can carry it by accident. Only the hashing code calls [`Password::expose`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Password(String);

impl Password {
    /// Longest accepted password. Argon2 takes any length, but a megabyte "password" is an attack on the
    /// hashing pool, not a credential.
    pub const MAX_BYTES: usize = 1024;

    pub fn new(field: &'static str, plaintext: String) -> Result<Self, InvalidInput> {
        if plaintext.is_empty() {
            return Err(InvalidInput::Empty { field });
        }
        if plaintext.len() > Self::MAX_BYTES {
            return Err(InvalidInput::TooLong {
                field,
                max: Self::MAX_BYTES,
            });
        }
        Ok(Self(plaintext))
    }

    /// The secret itself, for the hasher.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_secret() {
        let p = Password::new("password", "correct horse".into()).unwrap();
        assert_eq!(format!("{p:?} {p}"), "[redacted] [redacted]");
    }

    #[test]
    fn refuses_empty_and_huge() {
        assert_eq!(
            Password::new("password", String::new()),
            Err(InvalidInput::Empty { field: "password" })
        );
        assert!(Password::new("password", "x".repeat(1025)).is_err());
        assert!(Password::new("password", "x".repeat(1024)).is_ok());
    }
}
