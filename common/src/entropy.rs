//! Random bytes and fresh ids: from the operating system, or from the seed while a simulation runs
//! (`simulation.rs`).

use uuid::Uuid;

/// Fills `buf` with random bytes.
pub fn fill(buf: &mut [u8]) {
    if !crate::simulation::fill(buf) {
        // Without the system's random source nothing secure can be made: stop, loudly.
        getrandom::getrandom(buf).expect("the system's random source");
    }
}

/// A new UUIDv7: its first 48 bits are the time (ms), so ids sort by creation.
pub fn uuid_v7() -> Uuid {
    let Some(n) = crate::simulation::next_id() else {
        return Uuid::now_v7();
    };
    let mut random = [0u8; 10];
    fill(&mut random);
    // Sorted within a millisecond too, as `now_v7` keeps them: the sequence in the top bits (the
    // version and variant bits the builder sets cover bits 14–15 and 28–31 of it: far more ids than a
    // simulation makes in one millisecond).
    random[..4].copy_from_slice(&n.to_be_bytes());
    uuid::Builder::from_unix_timestamp_millis(crate::now_ms(), &random).into_uuid()
}
