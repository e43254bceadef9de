//! The events strategy must keep a change until both consumers have it, and the consumers need the
//! plaintext passwords (the password consumer checks the current one, the history consumer compares the
//! new one with the recent hashes). The plaintext is never written down (DESIGN §6.8): a delivery waiting
//! in the log is sealed with XChaCha20-Poly1305 under a key of this coordinator
//! (`<data-dir>/events.key`, mode 0600), bound to its transaction and consumer, and deleted once
//! delivered. Whoever takes both the log and the key can read the changes not yet delivered: one of the
//! costs of this design, which two-phase commit does not have (its participants get the plaintext in
//! `Prepare` and keep only hashes).

use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use prost::Message;
use tpc_common::{Operation, TxnId};
use tpc_proto::v1::ApplyRequest;

const NONCE: usize = 24;

pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("events key {0}: {1}")]
    Key(String, std::io::Error),
    #[error(
        "events key {0} is missing, but deliveries sealed with it wait in the log: restore the key (it was made when the data directory was first used)"
    )]
    Missing(String),
    #[error("events key {0} is not 32 bytes")]
    KeyLength(String),
    #[error("a sealed delivery does not open (wrong key, or damaged)")]
    Open,
    #[error("a sealed delivery holds no valid operation: {0}")]
    Operation(String),
}

impl Sealer {
    /// Reads the key at `path`, or makes one (readable by the owner only) if there is none and
    /// `may_create` (no delivery sealed with an earlier key is waiting: a new key would leave them
    /// unreadable, so a lost key is an error to fix, not to paper over).
    pub fn open_or_create(path: &Path, may_create: bool) -> Result<Self, SealError> {
        let shown = path.display().to_string();
        let key = match std::fs::read(path) {
            Ok(key) => key,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !may_create => {
                return Err(SealError::Missing(shown));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = XChaCha20Poly1305::generate_key(&mut OsRng).to_vec();
                write_private(path, &key).map_err(|e| SealError::Key(shown.clone(), e))?;
                key
            }
            Err(e) => return Err(SealError::Key(shown, e)),
        };
        if key.len() != 32 {
            return Err(SealError::KeyLength(shown));
        }
        Ok(Self {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    /// `op`, sealed for delivery `txn` to consumer `to`: nonce, then ciphertext and tag.
    pub fn seal(&self, txn: TxnId, to: &str, op: &Operation) -> Vec<u8> {
        let plain = ApplyRequest {
            operation: Some(op.into()),
            ..Default::default()
        }
        .encode_to_vec();
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = aad(txn, to);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            // Encryption fails only for messages beyond 256 GiB.
            .expect("a small message seals");
        [nonce.as_slice(), &sealed].concat()
    }

    pub fn open(&self, txn: TxnId, to: &str, sealed: &[u8]) -> Result<Operation, SealError> {
        if sealed.len() < NONCE {
            return Err(SealError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE);
        let aad = aad(txn, to);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Open)?;
        let request = ApplyRequest::decode(plain.as_slice())
            .map_err(|e| SealError::Operation(e.to_string()))?;
        Operation::try_from(request.operation).map_err(|e| SealError::Operation(e.to_string()))
    }
}

/// Binds a sealed delivery to its transaction and consumer: moved elsewhere, it does not open.
fn aad(txn: TxnId, to: &str) -> Vec<u8> {
    [txn.as_bytes().as_slice(), b"/", to.as_bytes()].concat()
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    // The new name too, before anything is sealed with the key.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tpc_common::{Password, UserId};

    use super::*;

    #[test]
    fn a_sealed_delivery_opens_only_for_its_transaction_and_consumer_and_hides_the_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.key");
        assert!(matches!(
            Sealer::open_or_create(&path, false),
            Err(SealError::Missing(_))
        ));
        let sealer = Sealer::open_or_create(&path, true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 32);
        let op = Operation::Update {
            user: UserId::parse("alice").unwrap(),
            current: Password::new("current_password", "old secret".into()).unwrap(),
            new: Password::new("new_password", "new secret".into()).unwrap(),
        };
        let txn = TxnId::generate();
        let sealed = sealer.seal(txn, "history", &op);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        // The same key after a restart opens it.
        let again = Sealer::open_or_create(&path, false).unwrap();
        assert_eq!(again.open(txn, "history", &sealed).unwrap(), op);
        assert!(again.open(txn, "password", &sealed).is_err());
        assert!(again.open(TxnId::generate(), "history", &sealed).is_err());
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(again.open(txn, "history", &damaged).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
