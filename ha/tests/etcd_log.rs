//! The log on a real etcd cluster (three members on loopback): the storage contract the coordinator's
//! log relies on, and the fence that keeps a deposed leader from writing.
#![cfg(feature = "etcd")]

use std::time::Duration;

use tokio::sync::watch;
use tpc_common::storage::{Batch, Storage, StorageError};
use tpc_ha::{Addresses, Election, EtcdLog};
use tpc_harness::etcd::{EtcdCluster, etcd_available};

fn me(n: u16) -> Addresses {
    Addresses {
        public: format!("http://127.0.0.1:{n}"),
        internal: format!("http://127.0.0.1:{}", n + 1),
    }
}

async fn cluster(dir: &std::path::Path) -> Option<EtcdCluster> {
    if !etcd_available() {
        eprintln!("SKIPPED: no etcd binary (apt-get install etcd-server, or set TPC_ETCD)");
        return None;
    }
    Some(EtcdCluster::start(dir, 3).await.expect("etcd starts"))
}

async fn elect(endpoints: &[String], prefix: &str, n: u16) -> (Election, tpc_ha::Elected) {
    let election = Election::connect(endpoints, prefix, me(n), Duration::from_secs(2))
        .await
        .unwrap();
    let (seen, _) = watch::channel(tpc_ha::Leader::Nobody);
    let elected = election.campaign(&seen).await;
    (election, elected)
}

fn open(endpoints: &[String], prefix: &str, fence: tpc_ha::Fence) -> EtcdLog {
    EtcdLog::open(endpoints, prefix, fence).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_cannot_write_and_its_successor_can() {
    let dir = tempfile::tempdir().unwrap();
    let Some(etcd) = cluster(dir.path()).await else {
        return;
    };
    let endpoints = etcd.endpoints();
    let prefix = "/fence-test/";
    let (_first, first_term) = elect(&endpoints, prefix, 1).await;
    let first_log = {
        let (e, f) = (endpoints.clone(), first_term.fence.clone());
        tokio::task::spawn_blocking(move || open(&e, prefix, f))
            .await
            .unwrap()
    };
    let log = first_log.clone();
    tokio::task::spawn_blocking(move || {
        log.insert(b"t/1", b"COMMIT by the first leader")?;
        log.flush()
    })
    .await
    .unwrap()
    .unwrap();

    // The first leader's lease is gone (as after a pause longer than its TTL): etcd deletes the
    // leader key, and a standby is elected.
    let mut client = tpc_ha::etcd_client::Client::connect(&endpoints, None)
        .await
        .unwrap();
    client
        .delete(format!("{prefix}leader"), None)
        .await
        .unwrap();
    let (_second, second_term) = elect(&endpoints, prefix, 3).await;
    assert!(second_term.fence.create_revision > first_term.fence.create_revision);

    // The deposed leader applies a COMMIT with its e-mail and changes an earlier record: the flush
    // that would make them durable is refused, and so is every later one.
    let log = first_log.clone();
    let late = tokio::task::spawn_blocking(move || {
        let mut batch = Batch::default();
        batch.insert(b"t/2".to_vec(), b"COMMIT by the deposed leader".to_vec());
        batch.insert(b"o/2".to_vec(), b"its e-mail".to_vec());
        log.apply(batch)?;
        log.update(b"t/1", &mut |_| Some(b"overwritten".to_vec()))?;
        Ok::<_, StorageError>((log.flush(), log.flush()))
    })
    .await
    .unwrap()
    .unwrap();
    assert!(matches!(late.0, Err(StorageError::Fenced)), "{:?}", late.0);
    assert!(matches!(late.1, Err(StorageError::Fenced)), "{:?}", late.1);

    let second_log = {
        let (e, f) = (endpoints.clone(), second_term.fence.clone());
        tokio::task::spawn_blocking(move || open(&e, prefix, f))
            .await
            .unwrap()
    };
    let read = tokio::task::spawn_blocking(move || {
        second_log.insert(b"t/3", b"COMMIT by the new leader")?;
        second_log.flush()?;
        second_log.range_from(b"").collect::<Result<Vec<_>, _>>()
    })
    .await
    .unwrap()
    .unwrap();
    // Nothing of the deposed leader's landed: not its batch, not its update.
    assert_eq!(
        read,
        vec![
            (b"t/1".to_vec(), b"COMMIT by the first leader".to_vec()),
            (b"t/3".to_vec(), b"COMMIT by the new leader".to_vec()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_read_in_pages_from_either_end_and_big_deletions_split() {
    let dir = tempfile::tempdir().unwrap();
    let Some(etcd) = cluster(dir.path()).await else {
        return;
    };
    let endpoints = etcd.endpoints();
    let prefix = "/range-test/";
    let (_leader, term) = elect(&endpoints, prefix, 5).await;
    let log = open(&endpoints, prefix, term.fence.clone());
    tokio::task::spawn_blocking(move || {
        // More keys than one page, in batches one etcd transaction takes.
        let keys: Vec<Vec<u8>> = (0..1_200)
            .map(|i| format!("t/{i:05}").into_bytes())
            .collect();
        for chunk in keys.chunks(100) {
            let mut batch = Batch::default();
            for k in chunk {
                batch.insert(k.clone(), k.clone());
            }
            log.apply(batch).unwrap();
        }
        log.insert(b"u/other", b"x").unwrap();
        log.insert(b"a/before", b"x").unwrap();

        let forward: Vec<_> = log.scan_prefix(b"t/").map(|e| e.unwrap().0).collect();
        assert_eq!(forward, keys);
        let backward: Vec<_> = log.scan_prefix(b"t/").rev().map(|e| e.unwrap().0).collect();
        assert_eq!(backward, keys.iter().rev().cloned().collect::<Vec<_>>());
        // From both ends at once, meeting in the middle: every key exactly once.
        let mut both = log.scan_prefix(b"t/");
        let (mut front, mut back) = (Vec::new(), Vec::new());
        loop {
            match (both.next(), both.next_back()) {
                (None, None) => break,
                (f, b) => {
                    front.extend(f.map(|e| e.unwrap().0));
                    back.extend(b.map(|e| e.unwrap().0));
                }
            }
        }
        back.reverse();
        front.extend(back);
        assert_eq!(front, keys);
        let from: Vec<_> = log.range_from(b"t/01195").map(|e| e.unwrap().0).collect();
        assert_eq!(from.len(), 5 + 1, "t/01195..t/01199 and u/other");

        // A deletion of more keys than one etcd transaction takes.
        let mut batch = Batch::default();
        for k in &keys {
            batch.remove(k.clone());
        }
        log.apply(batch).unwrap();
        assert_eq!(log.scan_prefix(b"t/").count(), 0);
        // A write of more than that is refused whole.
        let mut batch = Batch::default();
        for k in &keys {
            batch.insert(k.clone(), b"v".to_vec());
        }
        assert!(log.apply(batch).is_err());
        assert_eq!(log.scan_prefix(b"t/").count(), 0);

        log.update(b"u/other", &mut |old| {
            assert_eq!(old, Some(&b"x"[..]));
            Some(b"y".to_vec())
        })
        .unwrap();
        // Pending writes read back before and after they reach etcd.
        assert_eq!(log.get(b"u/other").unwrap().as_deref(), Some(&b"y"[..]));
        log.flush().unwrap();
        assert_eq!(log.get(b"u/other").unwrap().as_deref(), Some(&b"y"[..]));
        log.update(b"u/other", &mut |_| None).unwrap();
        assert_eq!(log.get(b"u/other").unwrap(), None);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unforced_writes_reach_etcd_without_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let Some(etcd) = cluster(dir.path()).await else {
        return;
    };
    let endpoints = etcd.endpoints();
    let prefix = "/background-test/";
    let (_leader, term) = elect(&endpoints, prefix, 7).await;
    let (e, f) = (endpoints.clone(), term.fence.clone());
    let log = tokio::task::spawn_blocking(move || open(&e, prefix, f))
        .await
        .unwrap();
    let (e, f) = (endpoints.clone(), term.fence.clone());
    let reader = tokio::task::spawn_blocking(move || open(&e, prefix, f))
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || {
        log.insert(b"t/end", b"END, not forced").unwrap();
        log.update(b"t/end", &mut |_| Some(b"END, updated".to_vec()))
            .unwrap();
        std::thread::sleep(tpc_ha::BACKGROUND_FLUSH * 5);
        // Another process's view: what is in etcd.
        assert_eq!(
            reader.get(b"t/end").unwrap().as_deref(),
            Some(&b"END, updated"[..])
        );
        drop(log);
    })
    .await
    .unwrap();
}
