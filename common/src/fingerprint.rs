use std::fmt;

use blake2::Blake2bMac;
use blake2::digest::consts::U16;
use blake2::digest::{KeyInit, Mac};

use crate::Operation;

/// Tells a retried request from a different one that reuses its `request_id` (as payment APIs do with
/// idempotency keys): a keyed digest of the operation's whole payload, passwords included.
///
/// The key is made at start and lives in this process's memory only; no digest is ever written down.
/// A digest on disk would let whoever reads it test password guesses offline at the speed of a hash,
/// not of argon2. After a restart, requests committed before it are told apart by kind and user only.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Fingerprinter {
    key: [u8; 32],
}

/// The digest of one operation under one process's key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 16]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only equality matters; the bytes are nobody's business.
        f.write_str("Fingerprint(..)")
    }
}

impl fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprinter([redacted])")
    }
}

impl Default for Fingerprinter {
    fn default() -> Self {
        Self::new()
    }
}

impl Fingerprinter {
    /// A fingerprinter with a fresh random key.
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        crate::entropy::fill(&mut key);
        Self { key }
    }

    /// A fingerprinter with a given key: for a model checker or a simulation, which must reach the same
    /// state from the same start. A server always uses [`Fingerprinter::new`].
    pub fn with_key(key: [u8; 32]) -> Self {
        Self { key }
    }

    pub fn of(&self, op: &Operation) -> Fingerprint {
        let mut mac = <Blake2bMac<U16> as KeyInit>::new_from_slice(&self.key)
            .expect("a 32-byte key fits blake2b");
        let mut field = |bytes: &[u8]| {
            // Length-prefixed, so no two payloads feed the same bytes.
            mac.update(&(bytes.len() as u64).to_le_bytes());
            mac.update(bytes);
        };
        match op {
            Operation::Register {
                user,
                email,
                password,
            } => {
                field(b"register");
                field(user.as_str().as_bytes());
                field(email.to_string().as_bytes());
                field(password.expose());
            }
            Operation::Update { user, current, new } => {
                field(b"update");
                field(user.as_str().as_bytes());
                field(current.expose());
                field(new.expose());
            }
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&mac.finalize().into_bytes());
        Fingerprint(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Password, UserId};

    fn update(current: &str, new: &str) -> Operation {
        Operation::Update {
            user: UserId::parse("alice").unwrap(),
            current: Password::new("current_password", current.into()).unwrap(),
            new: Password::new("new_password", new.into()).unwrap(),
        }
    }

    #[test]
    fn the_same_payload_matches_another_does_not_and_keys_differ_per_process() {
        let f = Fingerprinter::new();
        assert_eq!(f.of(&update("a", "b")), f.of(&update("a", "b")));
        assert_ne!(f.of(&update("a", "b")), f.of(&update("a", "c")));
        // The length prefix keeps ("ab", "c") apart from ("a", "bc").
        assert_ne!(f.of(&update("ab", "c")), f.of(&update("a", "bc")));
        assert_ne!(
            Fingerprinter::new().of(&update("a", "b")),
            f.of(&update("a", "b"))
        );
        assert_eq!(format!("{:?}", f.of(&update("a", "b"))), "Fingerprint(..)");
    }
}
