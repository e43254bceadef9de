//! Opening a sled database with a bounded page cache.

use std::path::Path;

/// The page cache of each database unless configured otherwise, in MiB. sled's own default is 1 GiB per
/// database, so a process with a log and a store grew without a plateau towards gigabytes under load;
/// the records tpc reads back (prepared records, the user being changed) are few and recent. 8 MiB
/// did as well as 16 at 64 clients (alternating `tpc bench` runs) and kept each service ~8 MiB smaller.
pub const DEFAULT_CACHE_MIB: u64 = 8;

/// Opens (or creates) the database in `dir`, whose page cache may hold `cache_mib` MiB.
pub fn open_database(dir: &Path, cache_mib: u64) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(dir)
        .cache_capacity(cache_mib.saturating_mul(1024 * 1024))
        .open()
}
