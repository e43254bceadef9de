//! argon2id password hashing. At OWASP cost every call here is CPU-heavy (≈34 ms) and must run on the
//! blocking pool (`tokio::task::spawn_blocking`), never on an async worker. At the insecure cost of
//! tests and benchmarks a hash takes ~11 µs, less than handing it to the blocking pool and back
//! ([`Hasher::runs_in_place`]).

use std::sync::Mutex;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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
    params: Params,
    cost: Cost,
}

/// argon2's working memory, reused. A hash at OWASP cost needs 19 MiB; allocated per call (as
/// `Argon2::hash_password_into` does), every hash paid to fault in and zero fresh pages, and glibc kept
/// the freed blocks in its arenas: participants grew to 1–3 GiB. Here a buffer is taken for one call and
/// put back, so the pool holds one buffer per hash that ever ran at once (the hashing slots bound that).
static MEMORY: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

fn with_memory<T>(blocks: usize, work: impl FnOnce(&mut [Block]) -> T) -> T {
    let take = || MEMORY.lock().unwrap_or_else(|p| p.into_inner()).pop();
    let mut memory = take().unwrap_or_default();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let done = work(&mut memory);
    MEMORY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(memory);
    done
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
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone()),
            params,
            cost,
        }
    }

    /// Whether checks at this hasher's cost may run on an async worker. At the insecure cost a change's
    /// checks (up to six hashes, ~11 µs each) cost less than the blocking pool's hand-off: waking a
    /// pool thread, and the worker again when it is done, was a tenth of a participant's CPU at 64
    /// clients (`docs/benchmarks.md`). At OWASP cost, never. A stored hash of another cost verifies
    /// at its own cost, so a deployment that went from OWASP to the insecure cost would check its old
    /// hashes in place too: that cost is for tests and benchmarks only.
    pub fn runs_in_place(&self) -> bool {
        self.cost == Cost::InsecureFast
    }

    /// A PHC string (`$argon2id$v=19$m=…$salt$hash`) with a fresh random salt.
    pub fn hash(&self, password: &Password) -> Result<String, String> {
        let failed = |e: &dyn std::fmt::Display| format!("hashing failed: {e}");
        let mut random = [0u8; 16];
        tpc_common::entropy::fill(&mut random);
        let salt = SaltString::encode_b64(&random).map_err(|e| failed(&e))?;
        let mut raw_salt = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut raw_salt).map_err(|e| failed(&e))?;
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        with_memory(self.params.block_count(), |memory| {
            self.argon2.hash_password_into_with_memory(
                password.expose(),
                salt_bytes,
                &mut out,
                memory,
            )
        })
        .map_err(|e| failed(&e))?;
        let phc = PasswordHash {
            algorithm: argon2::ARGON2ID_IDENT,
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params).map_err(|e| failed(&e))?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&out).map_err(|e| failed(&e))?),
        };
        Ok(phc.to_string())
    }

    /// Whether `password` matches the PHC string. The parameters come from the string, so hashes made
    /// at another cost still verify. The comparison is constant-time (`Output`'s equality).
    pub fn verify(&self, password: &Password, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return false;
        };
        let (Ok(algorithm), Ok(params)) = (
            Algorithm::try_from(parsed.algorithm),
            Params::try_from(&parsed),
        ) else {
            return false;
        };
        let version = match parsed.version.map(Version::try_from) {
            None => Version::default(),
            Some(Ok(version)) => version,
            Some(Err(_)) => return false,
        };
        let mut raw_salt = [0u8; 64];
        let Ok(salt_bytes) = salt.decode_b64(&mut raw_salt) else {
            return false;
        };
        let mut out = vec![0u8; expected.len()];
        let argon2 = Argon2::new(algorithm, version, params.clone());
        let hashed = with_memory(params.block_count(), |memory| {
            argon2.hash_password_into_with_memory(password.expose(), salt_bytes, &mut out, memory)
        });
        hashed.is_ok() && Output::new(&out).is_ok_and(|out| out == expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product's default cost never hashes on an async worker; only the insecure one may.
    #[test]
    fn only_the_insecure_cost_runs_in_place() {
        assert!(!Hasher::new(Cost::default()).runs_in_place());
        assert!(Hasher::new(Cost::InsecureFast).runs_in_place());
    }

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
    fn agrees_with_argon2s_own_hasher_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let pw = Password::new("password", "correct horse".into()).unwrap();
        let hasher = Hasher::new(Cost::InsecureFast);
        let ours = hasher.hash(&pw).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            hasher
                .argon2
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let theirs = hasher
            .argon2
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert!(hasher.verify(&pw, &theirs));
        // A hash made at another cost verifies with that cost's parameters.
        let other = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(16, 2, 1, None).unwrap(),
        )
        .hash_password(b"correct horse", &salt)
        .unwrap()
        .to_string();
        assert!(hasher.verify(&pw, &other));
        let wrong = Password::new("password", "correct horsf".into()).unwrap();
        assert!(!hasher.verify(&wrong, &other));
    }

    #[test]
    fn owasp_cost_is_the_default() {
        let phc = Hasher::new(Cost::default())
            .hash(&Password::new("password", "x".into()).unwrap())
            .unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    }
}
