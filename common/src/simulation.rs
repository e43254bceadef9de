//! The switch a simulator (`tpc-sim`) turns on, so that one seed replays one run: while it is on, the
//! clock is the simulation's, random bytes come from the seed, and work that would run on another thread
//! runs in place (`blocking.rs`, the group commit). Off, which is every server's case, nothing changes:
//! the system clock, the operating system's random source, threads.
//!
//! It is one switch for the whole process: a simulator runs one simulation at a time.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static ACTIVE: AtomicBool = AtomicBool::new(false);
static STATE: Mutex<Option<Simulated>> = Mutex::new(None);

struct Simulated {
    /// Processes that stopped themselves (see [`abort`]) and are not yet crashed by the simulator.
    aborted: u32,
    /// splitmix64's state.
    rng: u64,
    /// Counts ids made, so they sort in the order they were made.
    ids: u32,
    /// How much simulated time has passed.
    elapsed: fn() -> Duration,
}

/// Turns the simulation on: randomness from `seed`, the clock from `elapsed`.
pub fn enter(seed: u64, elapsed: fn() -> Duration) {
    *lock() = Some(Simulated {
        aborted: 0,
        rng: seed,
        ids: 0,
        elapsed,
    });
    ACTIVE.store(true, Ordering::SeqCst);
}

/// Turns it off again.
pub fn leave() {
    ACTIVE.store(false, Ordering::SeqCst);
    *lock() = None;
}

pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

fn lock() -> std::sync::MutexGuard<'static, Option<Simulated>> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The simulated time passed since the simulation started, if one runs.
pub(crate) fn elapsed() -> Option<Duration> {
    if !active() {
        return None;
    }
    let clock = lock().as_ref().map(|s| s.elapsed)?;
    Some(clock())
}

/// Fills `buf` from the seed, if a simulation runs; returns whether it did.
pub(crate) fn fill(buf: &mut [u8]) -> bool {
    if !active() {
        return false;
    }
    let mut state = lock();
    let Some(sim) = state.as_mut() else {
        return false;
    };
    for chunk in buf.chunks_mut(8) {
        // splitmix64: tiny, and good enough for ids, salts and keys that need only be reproducible.
        sim.rng = sim.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = sim.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
    true
}

/// The next number in the simulation's sequence of ids, if one runs.
pub(crate) fn next_id() -> Option<u32> {
    let mut state = lock();
    let sim = state.as_mut()?;
    sim.ids = sim.ids.wrapping_add(1);
    Some(sim.ids)
}

/// The payload of the unwinding [`abort`] starts in a simulation.
#[derive(Debug)]
pub struct Aborted;

/// Stops this process at once: what a service does when a forced write fails and it can no longer keep
/// its promises. In a real process that is `abort()`. A simulated host shares its process with the
/// simulator, so there it unwinds the task that failed instead (with [`Aborted`], silently: no panic
/// message) and counts the stop; the simulator then crashes the host before it runs again
/// ([`take_aborts`]), so nothing the host does after the failure survives it.
pub fn abort() -> ! {
    if active() {
        if let Some(sim) = lock().as_mut() {
            sim.aborted += 1;
        }
        std::panic::resume_unwind(Box::new(Aborted));
    }
    std::process::abort()
}

/// How many simulated processes stopped themselves since the last call.
pub fn take_aborts() -> u32 {
    lock()
        .as_mut()
        .map_or(0, |sim| std::mem::take(&mut sim.aborted))
}
