//! Work that must not run on an async worker (a blocking read, a file write, argon2): on tokio's
//! blocking pool, or in place while a simulation runs, where another thread would make runs differ.

/// The work panicked.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a blocking task failed")]
pub struct Failed;

/// Runs `work` off the async workers and returns its result.
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failed> {
    if crate::simulation::active() {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work).await.map_err(|_| Failed)
}
