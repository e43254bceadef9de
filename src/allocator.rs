//! The allocator of every tpc process: mimalloc.
//!
//! Under load a change allocates and frees on many threads (tokio's workers, the blocking pool, the
//! group commit's threads, sled's I/O threads). glibc's malloc and free were ~10% of the services'
//! CPU; with mimalloc, throughput at 64 clients was ~7% higher in alternating runs on a noisy machine
//! (`docs/benchmarks.md`).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h`: milliseconds before freed memory goes back
/// to the OS. libmimalloc-sys names no constant for it; the test below checks the number still is it.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the OS after 10 ms (mimalloc v2's default), not v3's 1 s: at 64 clients
/// each service's peak memory was 8-12 MiB lower, with CPU per change within the noise. At once (0 ms)
/// was lower still by a few MiB, and cost CPU in every run.
pub fn return_freed_memory_soon() {
    // SAFETY: sets one of mimalloc's options, by value; mimalloc reads it when it next purges.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 10) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_is_the_option_set() {
        // SAFETY: reads one option by value.
        let default = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(default, 1000, "mimalloc v3's default purge delay");
        }
        return_freed_memory_soon();
        // SAFETY: as above.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }, 10);
    }
}
