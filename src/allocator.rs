//! glibc's allocator, set for what a tpc server allocates.

/// The allocation size from which glibc maps memory from the system and unmaps it on free.
const MMAP_THRESHOLD: libc::c_int = 1 << 20;

/// argon2 at OWASP cost allocates 19 MiB per hash, on the blocking pool's threads. glibc serves the first
/// such block with `mmap`, and when it is freed raises its mmap threshold (up to 32 MiB), so that later
/// blocks come from per-thread arenas, which keep the memory after `free`: under load a participant
/// grew to 1–3 GiB for four hashes at a time. Fixing the threshold turns that adjustment off: blocks of
/// 1 MiB or more are mapped and unmapped, and go back to the system at once.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
