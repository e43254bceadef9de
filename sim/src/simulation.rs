//! One simulation at a time in this process: the switch in `tpc_common::simulation` (the clock, the
//! random source, work in place of threads) is process-wide.

use std::sync::{Mutex, MutexGuard};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Held while a simulation runs; turns the switch off when dropped.
pub struct Entered {
    _one: MutexGuard<'static, ()>,
}

/// Waits for any other simulation in this process to end, then turns the switch on for `seed`, with
/// turmoil's clock.
pub fn enter(seed: u64) -> Entered {
    let one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    tpc_common::simulation::enter(seed, || turmoil::sim_elapsed().unwrap_or_default());
    Entered { _one: one }
}

impl Drop for Entered {
    fn drop(&mut self) {
        tpc_common::simulation::leave();
    }
}
