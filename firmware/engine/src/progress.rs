//! Progress reporting for long jobs. The engine only counts; the binary draws bars.

/// Receives progress of a job. Called from worker threads, so it must be cheap and `Sync`.
pub trait Progress: Sync {
    /// A job phase starts; `total` is in bytes (0 if unknown).
    fn start(&self, phase: &str, total: u64);
    /// `bytes` more of the total are done.
    fn advance(&self, bytes: u64);
    /// The phase is finished.
    fn finish(&self);
    /// Whether the job should stop: jobs poll this between batches and then fail with
    /// [`EngineError::Cancelled`](crate::EngineError::Cancelled), committing nothing.
    fn cancelled(&self) -> bool {
        false
    }
}

/// Ignores all progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
