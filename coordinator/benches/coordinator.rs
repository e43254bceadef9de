//! `cargo bench -p tpc-coordinator`: the coordinator engine's cost per transaction (the events of one
//! committed change, pure, no I/O), and the log's forced-write path (a COMMIT record and its e-mail,
//! applied and forced through the group commit), alone and with concurrent writers sharing flushes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tpc_common::{Email, Operation, Password, TxnId, UserId};
use tpc_coordinator::email;
use tpc_coordinator::engine::{CommitRecord, Config, Engine, Event, Participant, Vote};
use tpc_coordinator::log::Log;

fn update(user: &UserId) -> Operation {
    Operation::Update {
        user: user.clone(),
        current: Password::new("current_password", "old-password".into()).unwrap(),
        new: Password::new("new_password", "new-password".into()).unwrap(),
    }
}

/// Every event of one committed change: Begin, the log's answer that its request id is new, two
/// yes-votes, the forced record, two acks.
fn one_change(engine: &mut Engine, user: &UserId, email: &Email, now: u64) -> usize {
    let txn = TxnId::generate();
    let mut commands = engine.handle(
        Event::Begin {
            txn,
            request_id: txn.to_string(),
            op: update(user),
        },
        now,
    );
    commands.extend(engine.handle(
        Event::LookedUp {
            client: txn,
            logged: Ok(None),
        },
        now,
    ));
    for (from, email) in [
        (Participant::History, None),
        (Participant::Password, Some(email.clone())),
    ] {
        let vote = Vote::Yes { email };
        commands.extend(engine.handle(Event::Voted { txn, from, vote }, now));
    }
    commands.extend(engine.handle(Event::CommitForced { txn }, now));
    for from in Participant::ALL {
        commands.extend(engine.handle(Event::CommitAcked { txn, from }, now));
    }
    commands.len()
}

fn engine(c: &mut Criterion) {
    let users: Vec<UserId> = (0..64)
        .map(|i| UserId::parse(&format!("user{i}")).unwrap())
        .collect();
    let email = Email::parse("someone@example.com").unwrap();
    let mut group = c.benchmark_group("coordinator engine");
    group.throughput(Throughput::Elements(1));
    group.bench_function("one committed change (7 events)", |b| {
        let mut engine = Engine::new(Config::default());
        let mut i = 0usize;
        b.iter(|| {
            i += 1;
            black_box(one_change(
                &mut engine,
                &users[i % users.len()],
                &email,
                1_000,
            ))
        });
    });
    group.finish();
}

fn record() -> CommitRecord {
    let txn = TxnId::generate();
    CommitRecord {
        txn,
        request_id: txn.to_string(),
        kind: tpc_common::OperationKind::Update,
        user: UserId::parse("alice").unwrap(),
        email: Email::parse("alice@example.com").unwrap(),
        started_at: txn.created_ms(),
        decided_at: txn.created_ms(),
    }
}

fn forced_writes(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(
        runtime
            .block_on(async { Log::open(dir.path(), tpc_common::DEFAULT_CACHE_MIB) })
            .unwrap(),
    );
    let mut group = c.benchmark_group("coordinator log");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    group.bench_function("force COMMIT + e-mail, one writer", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let r = record();
                log.force_commit(&r, &email::compose(&r)).await.unwrap();
            })
        });
    });
    const WRITERS: u64 = 16;
    group.throughput(Throughput::Elements(WRITERS));
    group.bench_function("force COMMIT + e-mail, 16 concurrent writers", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let writers: Vec<_> = (0..WRITERS)
                    .map(|_| {
                        let log = log.clone();
                        tokio::spawn(async move {
                            let r = record();
                            log.force_commit(&r, &email::compose(&r)).await.unwrap();
                        })
                    })
                    .collect();
                for w in writers {
                    w.await.unwrap();
                }
            })
        });
    });
    group.finish();
}

criterion_group!(benches, engine, forced_writes);
criterion_main!(benches);
