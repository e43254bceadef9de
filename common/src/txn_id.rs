use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::InvalidInput;

/// A transaction id: a UUIDv7, unique across coordinator restarts (never a counter that restarts) and
/// ordered by creation time, so log keys sort oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TxnId(Uuid);

impl TxnId {
    pub fn generate() -> Self {
        Self(crate::entropy::uuid_v7())
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| InvalidInput::MalformedTxnId(raw.chars().take(64).collect()))
    }

    /// The 16 big-endian bytes: a storage key that sorts by creation time.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Uuid::from_slice(bytes).ok().map(Self)
    }

    /// When the id was made, in ms since the Unix epoch: a UUIDv7 begins with it (48 bits, big-endian).
    pub fn created_ms(&self) -> u64 {
        let b = self.as_bytes();
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sorts_by_time() {
        let a = TxnId::generate();
        let b = TxnId::generate();
        assert!(a < b);
        assert_eq!(TxnId::parse(&a.to_string()), Ok(a));
        assert_eq!(TxnId::from_bytes(a.as_bytes()), Some(a));
        assert!(TxnId::parse("not-a-uuid").is_err());
        let now = crate::now_ms();
        assert!(
            now.abs_diff(a.created_ms()) < 60_000,
            "{} vs {now}",
            a.created_ms()
        );
    }
}
