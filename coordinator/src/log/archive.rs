//! The archive: finished transactions packed [`BLOCK`] records to a value.
//!
//! Why: sled keeps bookkeeping in memory for every page of its tree, paged out or not (where the
//! page's fragments lie, a slot in its LRU, the segments' lists of pages). With one key per record
//! that came to ~10 bytes of RSS per change, and the log keeps 24 hours of records, so the
//! coordinator's memory grew with every change it ever made (docs/benchmarks.md, "Memory"). Packed
//! 32 to a value, the same records make a thirtieth of the pages.
//!
//! `a/<txn>` → [`Block`]: the finished records of one stretch of the log, oldest first, keyed by the
//! newest of them. Stretches follow each other: a block holds the records after the previous
//! block's key up to its own that were finished when it was written; the others of that stretch
//! stay under `t/` until they are collected. So a record is under `t/<txn>`, or in the first block
//! whose key is at or after its id, or nowhere.
//!
//! Only finished records move (committed with END and the e-mail sent or given up, or aborted), and
//! only once they were decided [`SETTLED_MS`] ago. Nothing writes such a record again, so a record
//! never changes in a block; and every write that made it finished (its END, the outbox entry's
//! removal) was applied long before the archiver reads it.

use serde::{Deserialize, Serialize};
use tpc_common::TxnId;
use tpc_common::storage::Batch;

use super::{GarbageSlice, Log, LogError, TXN, TxnRecord, decode, encode, key};

pub(super) const ARCHIVE: &[u8] = b"a/";

/// Records per block: a block of 32 is ~3.5 KiB, a few sled pages' worth of records. (Blocks of 256
/// made values sled stores apart, and held more memory than one key per record.)
pub const BLOCK: usize = 32;

/// How long after its decision a finished record stays under its own key: the records of the last
/// moments, which retries and status queries read most, stay where a read finds them first, and the
/// records under their own keys stay a few pages (at 2,500 changes a second, ~100,000 records).
pub const SETTLED_MS: u64 = 30_000;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Block {
    /// Oldest first.
    records: Vec<TxnRecord>,
}

/// What one slice of archiving did.
#[derive(Debug)]
pub struct ArchiveSlice {
    /// Records moved into blocks.
    pub archived: usize,
    /// Where the next slice starts, or `None` if the scan reached records too young to move.
    pub resume_after: Option<TxnId>,
}

impl TxnRecord {
    /// Whether nothing will write this record again: its transaction is decided and done with.
    pub(super) fn is_finished(&self) -> bool {
        use super::State;
        match self.state {
            State::Committed => self.email_sent || self.email_error.is_some(),
            State::Aborted => true,
            State::Committing | State::Running | State::Compensating => false,
        }
    }
}

impl Log {
    /// Moves finished records decided before `before` (ms) into blocks, looking at up to `max`
    /// records, oldest first, after `from` (`None`: after the newest block). Blocking: for the
    /// blocking pool, in slices (like garbage collection) so that no pass holds a thread for long.
    ///
    /// A stretch that ends at young records stays for the next pass, which starts again after the
    /// newest block: a block is only written full, or where a slice ends.
    pub fn archive_slice(
        &self,
        from: Option<TxnId>,
        before: u64,
        max: usize,
    ) -> Result<ArchiveSlice, LogError> {
        let mut slice = ArchiveSlice {
            archived: 0,
            resume_after: None,
        };
        if !self.archives {
            return Ok(slice);
        }
        let from = match from {
            Some(txn) => Some(txn),
            None => self.newest_block()?,
        };
        let mut pending: Vec<TxnRecord> = Vec::with_capacity(BLOCK);
        for (looked_at, item) in self.entries_after(TXN, from).enumerate() {
            let (_, raw) = item?;
            if looked_at == max {
                slice.archived += self.write_block(&mut pending)?;
                return Ok(slice);
            }
            // Whether its e-mail waits is read after the record, not from a list read before the scan:
            // under the events strategy the e-mail joins the outbox when it is delivered, which can be
            // long after the decision, and always before the record reads committed.
            let record = self.read(&raw)?;
            if record.txn.created_ms() >= before {
                break;
            }
            slice.resume_after = Some(record.txn);
            if record.is_finished() && record.decided_at < before {
                pending.push(record);
                if pending.len() == BLOCK {
                    slice.archived += self.write_block(&mut pending)?;
                }
            }
        }
        slice.resume_after = None;
        Ok(slice)
    }

    /// Writes `pending` as one block, then deletes their own keys; returns how many moved.
    ///
    /// The block first, in a write of its own: a scan that runs meanwhile (sled's iterators do not
    /// see a batch whole) finds a record in both places for a moment, which the listing drops as a
    /// repeat, and never in neither. Unforced: a crash can leave a record in both, where reads find
    /// it under its own key first and garbage collection takes both copies.
    fn write_block(&self, pending: &mut Vec<TxnRecord>) -> Result<usize, LogError> {
        let Some(newest) = pending.last().map(|r| r.txn) else {
            return Ok(0);
        };
        let records = std::mem::take(pending);
        let mut moved = Batch::default();
        for r in &records {
            moved.remove(key(TXN, r.txn));
        }
        let count = records.len();
        self.db
            .insert(&key(ARCHIVE, newest), &encode(&Block { records }))?;
        self.db.apply(moved)?;
        Ok(count)
    }

    /// The key of the newest block: where archiving goes on, and what a listing compares before and
    /// after its scan to learn whether blocks were written meanwhile ([`Log::archived_since`]).
    pub(super) fn newest_block(&self) -> Result<Option<TxnId>, LogError> {
        if !self.archives {
            return Ok(None);
        }
        match self.db.scan_prefix(ARCHIVE).next_back() {
            Some(item) => block_txn(&item?.0).map(Some),
            None => Ok(None),
        }
    }

    /// Record `txn` if a block holds it.
    pub(super) fn archived(&self, txn: TxnId) -> Result<Option<TxnRecord>, LogError> {
        if !self.archives {
            return Ok(None);
        }
        let Some(item) = self.db.range_from(&key(ARCHIVE, txn)).next() else {
            return Ok(None);
        };
        let (k, raw) = item?;
        if !k.starts_with(ARCHIVE) {
            return Ok(None);
        }
        let mut block: Block = decode(&raw)?;
        Ok(block
            .records
            .binary_search_by_key(&txn, |r| r.txn)
            .ok()
            .map(|at| block.records.swap_remove(at)))
    }

    /// Whether any block exists.
    pub(super) fn has_blocks(&self) -> Result<bool, LogError> {
        Ok(self.archives && self.db.scan_prefix(ARCHIVE).next().transpose()?.is_some())
    }

    /// The records of the blocks, newest first; with `before`, from the block that holds the records
    /// just older than it (the blocks after that one hold only newer records, and are skipped
    /// undecoded).
    pub(super) fn archived_newest_first(
        &self,
        before: Option<TxnId>,
    ) -> Result<impl Iterator<Item = Result<TxnRecord, LogError>> + use<>, LogError> {
        let blocks = if self.archives {
            self.db.scan_prefix(ARCHIVE)
        } else {
            Box::new(std::iter::empty())
        };
        let last = match before.filter(|_| self.archives) {
            Some(before) => match self.db.range_from(&key(ARCHIVE, before)).next() {
                Some(item) => Some(item?.0).filter(|k| k.starts_with(ARCHIVE)),
                None => None,
            },
            None => None,
        };
        let blocks = blocks.rev().skip_while(move |item| match (item, &last) {
            (Ok((k, _)), Some(last)) => k > last,
            _ => false,
        });
        Ok(blocks.flat_map(|item| {
            let records = item
                .map_err(LogError::from)
                .and_then(|(_, raw)| decode::<Block>(&raw))
                .map(|b| b.records);
            match records {
                Ok(records) => records
                    .into_iter()
                    .rev()
                    .map(Ok)
                    .collect::<Vec<_>>()
                    .into_iter(),
                Err(e) => vec![Err(e)].into_iter(),
            }
        }))
    }

    /// The records of the blocks written after block `after` (all blocks, if `None`).
    pub(super) fn archived_since(&self, after: Option<TxnId>) -> Result<Vec<TxnRecord>, LogError> {
        let mut records = Vec::new();
        for item in self.entries_after(ARCHIVE, after) {
            let (_, raw) = item?;
            records.extend(decode::<Block>(&raw)?.records);
        }
        Ok(records)
    }

    /// One slice of garbage collection in the archive: deletes the blocks, oldest first after `from`,
    /// whose every record was decided before `cutoff`, with their request ids; looks at up to about
    /// `max` records. Stops at the first block that began after `cutoff`.
    pub fn collect_archive_slice(
        &self,
        from: Option<TxnId>,
        cutoff: u64,
        max: usize,
    ) -> Result<GarbageSlice, LogError> {
        let mut slice = GarbageSlice {
            collected: Vec::new(),
            resume_after: None,
        };
        if !self.archives {
            return Ok(slice);
        }
        let mut looked_at = 0;
        for item in self.entries_after(ARCHIVE, from) {
            let (k, raw) = item?;
            if looked_at >= max {
                return Ok(slice);
            }
            let Block { records } = decode(&raw)?;
            looked_at += records.len();
            if records.first().is_none_or(|r| r.txn.created_ms() > cutoff) {
                break;
            }
            slice.resume_after = Some(block_txn(&k)?);
            if records.iter().all(|r| r.decided_at < cutoff) {
                // The request ids and the block in one batch: never an entry without its record.
                let mut batch = Batch::default();
                for r in &records {
                    if let Some(request) = self.request_entry(r)? {
                        batch.remove(request);
                    }
                }
                batch.remove(k);
                self.db.apply(batch)?;
                slice.collected.extend(records);
            }
        }
        slice.resume_after = None;
        Ok(slice)
    }
}

fn block_txn(k: &[u8]) -> Result<TxnId, LogError> {
    TxnId::from_bytes(&k[ARCHIVE.len()..])
        .ok_or_else(|| LogError::Corrupt("a block's key holds no transaction id".into()))
}
