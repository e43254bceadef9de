//! argon2id password hashing. Every call here is CPU-heavy (≈34 ms at OWASP cost) and must run on the
//! blocking pool: callers use `tokio::task::spawn_blocking`, never an async worker.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tpc_common::Password;

/// The argon2id cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cost {
    /// OWASP's recommendation: m=19456 KiB, t=2, p=1.
    #[default]
    Owasp,
    /// m=8 KiB, t=1: INSECURE, for tests and benchmarks only.
    InsecureFast,
}

#[derive(Clone)]
pub struct Hasher {
    argon2: Argon2<'static>,
}

impl Hasher {
    pub fn new(cost: Cost) -> Self {
        let (m, t) = match cost {
            Cost::Owasp => (19_456, 2),
            Cost::InsecureFast => (8, 1),
        };
        // Both parameter sets are within argon2's limits.
        let params = Params::new(m, t, 1, None).expect("valid argon2 parameters");
        Self {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
        }
    }

    /// A PHC string (`$argon2id$v=19$m=…$salt$hash`) with a fresh random salt.
    pub fn hash(&self, password: &Password) -> Result<String, String> {
        let salt = SaltString::generate(&mut OsRng);
        self.argon2
            .hash_password(password.expose(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| format!("hashing failed: {e}"))
    }

    /// Whether `password` matches the PHC string. The parameters come from the string, so hashes made
    /// at another cost still verify.
    pub fn verify(&self, password: &Password, phc: &str) -> bool {
        PasswordHash::new(phc)
            .map(|parsed| {
                self.argon2
                    .verify_password(password.expose(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_never_contain_the_plaintext() {
        let hasher = Hasher::new(Cost::InsecureFast);
        let pw = Password::new("password", "tr0ub4dor&3".into()).unwrap();
        let phc = hasher.hash(&pw).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{phc}");
        assert!(!phc.contains("tr0ub4dor"));
        assert!(hasher.verify(&pw, &phc));
        let other = Password::new("password", "tr0ub4dor&4".into()).unwrap();
        assert!(!hasher.verify(&other, &phc));
        assert!(!hasher.verify(&pw, "garbage"));
        assert_ne!(phc, hasher.hash(&pw).unwrap(), "salted");
    }

    #[test]
    fn owasp_cost_is_the_default() {
        let phc = Hasher::new(Cost::default())
            .hash(&Password::new("password", "x".into()).unwrap())
            .unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    }
}
