//! What a database costs a process in memory, measured in a process of its own (this file is its own
//! test binary, so nothing else in it touched sled first).
//!
//! sled builds a process-wide set of 46 latency histograms the first time it is used, even with its
//! metrics compiled out, and each wrote 65,536 zeroed counters: 23 MiB resident in every tpc service
//! (vendor/sled/PATCHED.md, item 7).

use tpc_common::open_database;

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    line.split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS in kB")
}

#[test]
fn a_small_database_costs_a_few_mib() {
    let dir = std::env::temp_dir().join(format!("tpc-database-memory-{}", std::process::id()));
    let before = resident_kib();
    let db = open_database(&dir, 8).unwrap();
    for i in 0u32..2_000 {
        db.insert(i.to_be_bytes(), &[7u8; 100][..]).unwrap();
    }
    db.flush().unwrap();
    assert_eq!(db.len(), 2_000);
    let grown_mib = resident_kib().saturating_sub(before) as f64 / 1024.0;
    drop(db);
    std::fs::remove_dir_all(&dir).ok();
    // 2,000 records are ~250 KiB of pages; sled's log buffers and threads a few MiB more.
    assert!(
        grown_mib < 12.0,
        "opening a database and writing 2,000 records grew the process by {grown_mib:.1} MiB"
    );
}
