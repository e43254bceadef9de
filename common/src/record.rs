//! How tpc's own stores write a record: `[format][CRC-32 of the body, big-endian][body]`.
//!
//! The checksum catches a byte flipped on disk when the record is read (sled checks its own log, not
//! what a value says), instead of a damaged hash or decision being served as if it were sound.
//!
//! The body is postcard: serde without field names, integers as varints, a transaction id as its 16
//! bytes. A coordinator's COMMIT record is 82–102 bytes where its JSON was 278–298, and that
//! matters beyond the disk: sled keeps a few hundred bytes of bookkeeping in memory for every page
//! of every tree, paged out or not, so the smaller the records, the fewer the pages a day of them
//! needs. postcard is not self-describing: fields are never skipped when written (no
//! `skip_serializing_if`), a new field goes with a new format byte, and an enum's variants keep
//! their order (a variant is its index).
//!
//! Records written before are read as they were: JSON behind format 1 (the participants' stores), or
//! bare JSON with no format byte at all (the first stores, and the coordinator's log until postcard).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// `[1][CRC-32][JSON]`: read, no longer written.
const JSON: u8 = 1;
/// `[2][CRC-32][postcard]`.
const POSTCARD: u8 = 2;

/// `value` as a record.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serializing into a vector fails only for what postcard cannot express (sequences of unknown
    // length), which no stored type holds: a programming error.
    let mut out =
        postcard::to_extend(value, vec![POSTCARD, 0, 0, 0, 0]).expect("records serialize");
    let sum = crc32fast::hash(&out[5..]);
    out[1..5].copy_from_slice(&sum.to_be_bytes());
    out
}

/// Why a record could not be read. It never quotes the record: one may hold a password hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("empty")]
    Empty,
    #[error("cut short")]
    CutShort,
    #[error("checksum mismatch: the record was damaged on disk")]
    Checksum,
    #[error("unknown record format {0}")]
    UnknownFormat(u8),
    /// What was wrong with the body, as [`crate::decode_error`] or postcard (whose messages name the
    /// kind of error only) said it.
    #[error("{0}")]
    Body(String),
}

/// The record `raw` as a `T`.
pub fn decode<T: DeserializeOwned>(raw: &[u8]) -> Result<T, RecordError> {
    let (format, body) = match raw.first() {
        None => return Err(RecordError::Empty),
        Some(&format @ (JSON | POSTCARD)) => {
            if raw.len() < 5 {
                return Err(RecordError::CutShort);
            }
            let (sum, body) = raw[1..].split_at(4);
            if crc32fast::hash(body) != u32::from_be_bytes([sum[0], sum[1], sum[2], sum[3]]) {
                return Err(RecordError::Checksum);
            }
            (format, body)
        }
        // Written before records had a format byte.
        Some(b'{' | b'[' | b'"') => (JSON, raw),
        Some(&other) => return Err(RecordError::UnknownFormat(other)),
    };
    if format == JSON {
        return serde_json::from_slice(body)
            .map_err(|e| RecordError::Body(crate::decode_error(&e)));
    }
    match postcard::take_from_bytes(body) {
        Ok((value, [])) => Ok(value),
        Ok(_) => Err(RecordError::Body("bytes left over after the record".into())),
        Err(e) => Err(RecordError::Body(format!("not the expected shape ({e})"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Account {
        user: crate::UserId,
        txn: crate::TxnId,
        hash: String,
        email: Option<crate::Email>,
        at: u64,
    }

    fn account() -> Account {
        Account {
            user: crate::UserId::parse("alice").unwrap(),
            txn: crate::TxnId::generate(),
            hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            email: Some(crate::Email::parse("alice@example.com").unwrap()),
            at: 1_764_000_000_000,
        }
    }

    #[test]
    fn a_record_reads_back_as_written_and_is_smaller_than_its_json() {
        let value = account();
        let raw = encode(&value);
        assert_eq!(raw[0], POSTCARD);
        assert_eq!(decode::<Account>(&raw).unwrap(), value);
        let json = serde_json::to_vec(&value).unwrap();
        assert!(
            raw.len() * 3 < json.len() * 2,
            "{} against {}",
            raw.len(),
            json.len()
        );
    }

    #[test]
    fn records_written_as_json_still_read() {
        let value = account();
        let json = serde_json::to_vec(&value).unwrap();
        assert_eq!(decode::<Account>(&json).unwrap(), value, "bare JSON");
        let mut framed = vec![JSON];
        framed.extend(crc32fast::hash(&json).to_be_bytes());
        framed.extend(&json);
        assert_eq!(decode::<Account>(&framed).unwrap(), value, "format 1");
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let raw = encode(&account());
        for i in 0..raw.len() {
            for bit in [0x01, 0x80] {
                let mut damaged = raw.clone();
                damaged[i] ^= bit;
                assert!(
                    decode::<Account>(&damaged).is_err(),
                    "byte {i} bit {bit:#x}"
                );
            }
        }
    }

    #[test]
    fn damage_is_described_without_the_data() {
        let raw = encode(&account());
        assert_eq!(decode::<Account>(&[]), Err(RecordError::Empty));
        assert_eq!(decode::<Account>(&raw[..3]), Err(RecordError::CutShort));
        assert_eq!(
            decode::<Account>(&[9, 1, 2]),
            Err(RecordError::UnknownFormat(9))
        );
        // A well-formed record of another shape: every message names a kind of error, never a value.
        let other = encode(&("$argon2id$secret", 7u8));
        let said = decode::<Account>(&other).unwrap_err().to_string();
        assert!(
            !said.contains("argon2") && !said.contains("secret"),
            "{said}"
        );
        let cut = {
            let mut raw = raw[..raw.len() - 3].to_vec();
            let sum = crc32fast::hash(&raw[5..]);
            raw[1..5].copy_from_slice(&sum.to_be_bytes());
            raw
        };
        assert!(matches!(decode::<Account>(&cut), Err(RecordError::Body(_))));
        let mut long = raw.clone();
        long.push(0);
        let sum = crc32fast::hash(&long[5..]);
        long[1..5].copy_from_slice(&sum.to_be_bytes());
        assert!(matches!(
            decode::<Account>(&long),
            Err(RecordError::Body(_))
        ));
    }
}
