//! `cargo bench -p tpc-participants`: the participant engine's cost per transaction (the events of one
//! prepared and committed change, pure, no I/O).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tpc_common::{TxnId, UserId};
use tpc_participants::engine::{Config, Engine, Event};

/// Every event of one committed change at a participant: Prepare, checks done, PREPARED forced,
/// Commit, COMMITTED forced.
fn one_change(engine: &mut Engine<u64>, user: &UserId, now: u64) -> usize {
    let txn = TxnId::generate();
    let events = [
        Event::PrepareRequested {
            txn,
            user: user.clone(),
            wall_ms: now,
            payload: None,
        },
        Event::Validated {
            txn,
            outcome: Ok(7),
        },
        Event::PreparedForced { txn, at: now },
        Event::CommitRequested { txn },
        Event::CommitApplied { txn, at: now },
    ];
    events.into_iter().map(|e| engine.handle(e).len()).sum()
}

fn engine(c: &mut Criterion) {
    let users: Vec<UserId> = (0..64)
        .map(|i| UserId::parse(&format!("user{i}")).unwrap())
        .collect();
    let mut group = c.benchmark_group("participant engine");
    group.throughput(Throughput::Elements(1));
    group.bench_function("one committed change (5 events)", |b| {
        let mut engine = Engine::new(Config::default());
        let mut i = 0usize;
        b.iter(|| {
            i += 1;
            let now = tpc_common::now_ms();
            let done = one_change(&mut engine, &users[i % users.len()], now);
            // The clock's tick forgets tombstones, as in the runtime.
            if i.is_multiple_of(1_000) {
                engine.handle(Event::Tick { now });
            }
            black_box(done)
        });
    });
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
