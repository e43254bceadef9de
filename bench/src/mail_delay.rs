//! How long after its transaction began each e-mail reached the mail directory.
//!
//! The coordinator writes each e-mail as `<txn-id>.eml`, and a transaction id (UUIDv7) begins with the
//! time it was made, so a file's name and modification time give the delay from the change's start to
//! its e-mail on disk. That includes preparing and committing (tens of milliseconds under load), so it
//! is an upper bound of the delay from the commit to the e-mail.

use std::path::Path;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use tpc_common::TxnId;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailDelay {
    /// E-mails counted: those of transactions that began at or after the start of the load.
    pub count: u64,
    /// E-mails expected but not written when the run ended (still in the outbox).
    pub missing: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The delays of the e-mails in `dir` whose transaction began at or after `since_ms`.
pub fn delays_ms(dir: &Path, since_ms: u64) -> std::io::Result<Vec<u64>> {
    let mut delays = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(txn) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".eml"))
            .and_then(|id| TxnId::parse(id).ok())
        else {
            continue;
        };
        let began = txn.created_ms();
        if began < since_ms {
            continue;
        }
        let written = entry.metadata()?.modified()?;
        let written_ms = written
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        delays.push(written_ms.saturating_sub(began));
    }
    Ok(delays)
}

/// Percentiles of `delays` (ms); `expected` is how many there should be.
pub fn summarize(mut delays: Vec<u64>, expected: u64) -> MailDelay {
    delays.sort_unstable();
    let at = |q: f64| -> f64 {
        if delays.is_empty() {
            return 0.0;
        }
        let i = ((delays.len() as f64 * q).ceil() as usize).clamp(1, delays.len()) - 1;
        delays[i] as f64
    };
    MailDelay {
        count: delays.len() as u64,
        missing: expected.saturating_sub(delays.len() as u64),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: delays.last().copied().unwrap_or(0) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_missing_mail() {
        let delays: Vec<u64> = (1..=100).collect();
        let d = summarize(delays, 103);
        assert_eq!((d.count, d.missing), (100, 3));
        assert_eq!((d.p50_ms, d.p99_ms, d.max_ms), (50.0, 99.0, 100.0));
        assert_eq!(summarize(Vec::new(), 0).count, 0);
    }

    #[test]
    fn reads_delays_from_names_and_times_and_skips_older_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let before = TxnId::generate();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let since = tpc_common::now_ms();
        let txn = TxnId::generate();
        for name in [
            format!("{before}.eml"),
            format!("{txn}.eml"),
            format!(".{txn}.eml.tmp"),
            "notes.txt".into(),
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let delays = delays_ms(dir.path(), since).unwrap();
        assert_eq!(delays.len(), 1, "only the one transaction begun since");
        assert!(delays[0] < 5_000, "{delays:?}");
    }
}
