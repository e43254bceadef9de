use super::*;

/// Opens a database a handle of this process just dropped. sled's background threads let go of the
/// file's lock a moment after the last handle goes (seen as "could not acquire lock" when the
/// machine is busy), so a reopen waits for that, for a few seconds at most.
fn reopen(dir: &std::path::Path) -> SledStorage {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match SledStorage::open(dir, 1) {
            Ok(db) => return db,
            Err(e)
                if e.to_string().contains("acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// What every storage must do alike.
fn behaves_as_an_ordered_map_with_atomic_batches(db: &dyn Storage) {
    let mut batch = Batch::default();
    for key in ["a/2", "a/1", "b/1", "a/3"] {
        batch.insert(key, key.as_bytes());
    }
    batch.remove("a/3");
    db.apply(batch).unwrap();
    assert_eq!(db.get(b"a/1").unwrap().as_deref(), Some(&b"a/1"[..]));
    assert!(
        !db.contains(b"a/3").unwrap(),
        "a later write of the batch wins"
    );
    let keys = |entries: Entries| -> Vec<String> {
        entries
            .map(|e| String::from_utf8(e.unwrap().0).unwrap())
            .collect()
    };
    assert_eq!(keys(db.scan_prefix(b"a/")), ["a/1", "a/2"]);
    assert_eq!(keys(Box::new(db.scan_prefix(b"a/").rev())), ["a/2", "a/1"]);
    assert_eq!(keys(db.range_from(b"a/2")), ["a/2", "b/1"]);
    db.update(b"b/1", &mut |old| {
        assert_eq!(old, Some(&b"b/1"[..]));
        Some(b"changed".to_vec())
    })
    .unwrap();
    assert_eq!(db.get(b"b/1").unwrap().as_deref(), Some(&b"changed"[..]));
    db.update(b"b/1", &mut |_| None).unwrap();
    db.remove(b"a/2").unwrap();
    db.insert(b"c", b"3").unwrap();
    db.flush().unwrap();
    assert_eq!(keys(db.range_from(b"")), ["a/1", "c"]);
}

#[test]
fn sled_and_memory_behave_alike() {
    let dir = std::env::temp_dir().join(format!("tpc-storage-{}", crate::TxnId::generate()));
    let sled = SledStorage::open(&dir, 1).unwrap();
    behaves_as_an_ordered_map_with_atomic_batches(&sled);
    drop(sled);
    std::fs::remove_dir_all(dir).ok();
    behaves_as_an_ordered_map_with_atomic_batches(&MemoryStorage::new());
}

#[test]
fn a_crash_keeps_what_was_flushed_and_a_prefix_of_the_rest() {
    let db = MemoryStorage::new();
    db.insert(b"forced", b"1").unwrap();
    db.flush().unwrap();
    db.insert(b"later-1", b"1").unwrap();
    db.remove(b"forced").unwrap();
    db.insert(b"later-2", b"2").unwrap();
    assert_eq!(db.unflushed(), 3);

    let lost_all = db.crashed(0);
    assert!(lost_all.contains(b"forced").unwrap());
    assert!(!lost_all.contains(b"later-1").unwrap());
    assert_eq!(lost_all.unflushed(), 0);

    let kept_two = db.crashed(2);
    assert!(kept_two.contains(b"later-1").unwrap());
    assert!(
        !kept_two.contains(b"forced").unwrap(),
        "the removal survived"
    );
    assert!(
        !kept_two.contains(b"later-2").unwrap(),
        "never a write after a lost one"
    );

    // The crashed storage itself is untouched, and a flush makes it all durable.
    db.flush().unwrap();
    assert!(db.crashed(0).contains(b"later-2").unwrap());
}

#[test]
fn injected_failures_change_nothing_and_damage_reads_back_wrong() {
    let db = MemoryStorage::new();
    db.insert(b"k", b"value").unwrap();
    db.fail_writes(1);
    assert!(matches!(
        db.insert(b"k", b"other"),
        Err(StorageError::Injected(_))
    ));
    assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"value"[..]));
    db.fail_flushes(1);
    assert!(db.flush().is_err());
    assert!(
        !db.crashed(0).contains(b"k").unwrap(),
        "a failed flush forced nothing"
    );
    db.flush().unwrap();

    db.damage(b"k");
    assert_ne!(db.get(b"k").unwrap().as_deref(), Some(&b"value"[..]));
    let scanned = db.scan_prefix(b"k").next().unwrap().unwrap().1;
    assert_ne!(scanned, b"value");
    db.insert(b"k", b"new").unwrap();
    assert_eq!(
        db.get(b"k").unwrap().as_deref(),
        Some(&b"new"[..]),
        "rewritten whole"
    );
}

#[test]
fn a_batch_a_crash_interrupted_on_sled_is_finished_when_opened_again() {
    let mut batch = Batch::default();
    batch.insert("user/1", "new hash");
    batch.remove("prepared/7");
    batch.insert("committed/7", "");
    batch.insert("user/1", "newer hash");
    for done in 0..=4 {
        let dir = std::env::temp_dir().join(format!("tpc-batch-{}", crate::TxnId::generate()));
        let db = SledStorage::open(&dir, 1).unwrap();
        db.insert(b"user/1", b"old hash").unwrap();
        db.insert(b"prepared/7", b"promise").unwrap();
        db.apply_interrupted(&batch, done);
        drop(db);

        let db = reopen(&dir);
        let all: Vec<Entry> = db.range_from(b"").map(Result::unwrap).collect();
        assert_eq!(
            all,
            [
                (b"committed/7".to_vec(), b"".to_vec()),
                (b"user/1".to_vec(), b"newer hash".to_vec())
            ],
            "after {done} of the batch's writes"
        );
        // Finished once: a later write is not undone by opening again.
        db.insert(b"user/1", b"later hash").unwrap();
        db.flush().unwrap();
        drop(db);
        let db = reopen(&dir);
        assert_eq!(
            db.get(b"user/1").unwrap().as_deref(),
            Some(&b"later hash"[..])
        );
        drop(db);
        std::fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn a_batch_reads_back_as_it_was_written_and_garbage_does_not() {
    let mut batch = Batch::default();
    batch.insert("", "");
    batch.remove("gone");
    batch.insert("k".repeat(300), vec![0xff; 70_000]);
    let bytes = super::sled_storage::encode_batch(&batch);
    assert_eq!(super::sled_storage::decode_batch(&bytes), Some(batch));
    for cut in [1, 5, bytes.len() - 1] {
        assert_eq!(super::sled_storage::decode_batch(&bytes[..cut]), None);
    }
    assert_eq!(
        super::sled_storage::decode_batch(&[0xff, 0xff, 0xff, 0x7f]),
        None
    );
}

/// Thousands of inserts, overwrites and removals of items from 1 to 300 bytes, enough to split
/// leaves many times over: sled (with the vendored changes to how a write builds a leaf and when a
/// leaf splits, `vendor/sled/PATCHED.md`) reads back what an ordered map holds, before and after it
/// is opened again.
#[test]
fn sled_matches_an_ordered_map_through_many_splits() {
    let dir = std::env::temp_dir().join(format!("tpc-storage-{}", crate::TxnId::generate()));
    let mut model = std::collections::BTreeMap::<Vec<u8>, Vec<u8>>::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    {
        let sled = SledStorage::open(&dir, 1).unwrap();
        // Keys after the sequential range, as the log's store marks follow its records.
        for key in [&b"w/a"[..], b"w/b"] {
            sled.insert(key, b"mark").unwrap();
            model.insert(key.to_vec(), b"mark".to_vec());
        }
        for step in 0..6_000u64 {
            let r = next();
            // Sequential keys in one range (as a log's), random ones in another (as an index's).
            let key = if r % 2 == 0 {
                format!("t/{:08}", step / 3).into_bytes()
            } else {
                format!("r/{:x}", next() % 700).into_bytes()
            };
            if r % 5 == 0 {
                sled.remove(&key).unwrap();
                model.remove(&key);
            } else {
                let value = vec![(step % 251) as u8; 1 + (next() % 300) as usize];
                sled.insert(&key, &value).unwrap();
                model.insert(key, value);
            }
            if step % 997 == 0 {
                let probe = model.keys().nth((r % (model.len() as u64 + 1)) as usize);
                if let Some(k) = probe {
                    assert_eq!(sled.get(k).unwrap().as_ref(), model.get(k));
                }
            }
        }
        let all: Vec<(Vec<u8>, Vec<u8>)> = sled.range_from(b"").map(|e| e.unwrap()).collect();
        assert!(
            all.iter().eq(model
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
                .iter())
        );
        sled.flush().unwrap();
    }
    let sled = reopen(&dir);
    let all: Vec<(Vec<u8>, Vec<u8>)> = sled.range_from(b"").map(|e| e.unwrap()).collect();
    assert_eq!(all.len(), model.len());
    assert!(all.into_iter().eq(model.into_iter()), "after opening again");
    drop(sled);
    std::fs::remove_dir_all(dir).ok();
}

/// How many leaves `tree` has (sled's `Debug` lists every node, level by level, the leaves last).
fn leaves(tree: &sled::Tree) -> usize {
    let listed = format!("{tree:?}");
    let leaf_level = listed.rsplit("level ").next().unwrap_or_default();
    leaf_level.lines().filter(|l| l.starts_with("\t\t")).count()
}

#[test]
fn keys_that_arrive_in_order_fill_their_leaves() {
    let dir = std::env::temp_dir().join(format!("tpc-storage-{}", crate::TxnId::generate()));
    let db = crate::open_database(&dir, 1).unwrap();
    // A log: records keyed in the order they are made, with a few keys of another kind after them.
    db.insert(b"w/a", &b"mark"[..]).unwrap();
    db.insert(b"w/b", &b"mark"[..]).unwrap();
    let records = 4_000u64;
    for n in 0..records {
        let mut key = b"t/".to_vec();
        key.extend_from_slice(&n.to_be_bytes());
        db.insert(key, vec![7u8; 100]).unwrap();
    }
    // Split in the middle, as sled does for keys that arrive in any order, every leaf but the last
    // would keep about half of the ~37 records that fill 4 KiB (21 a leaf, measured without the
    // change).
    let per_leaf = records as f64 / leaves(&db) as f64;
    assert!(
        per_leaf > 28.0,
        "{per_leaf:.1} records per leaf: leaves split in the middle stay half full"
    );
    drop(db);
    std::fs::remove_dir_all(dir).ok();
}
