//! A read bandwidth limit for sources, so a backup does not swamp the datastore or the
//! hypervisor it reads from while production VMs run on it.
//!
//! [`RateLimiter`] is a shared pacer (the generic cell rate algorithm): every read of `n`
//! bytes pushes a theoretical arrival time forward by `n / rate`; a read that would run more
//! than one `burst` ahead of the clock sleeps the difference first. One limiter is shared by
//! all disks of a source, so the limit holds for the source as a whole, whatever the number
//! of readers. The lock is held only to update the arrival time, never while sleeping.
//!
//! Only bytes actually read are paced: extents that the allocation map reports as holes or
//! zeros cost nothing, as they are never read.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{BlockSource, ByteRange, Extent, IoHints, ReadRequest, SourceError};

/// A shared bandwidth limit.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_s: u64,
    /// How far ahead of the clock reads may run before they wait.
    burst: Duration,
    /// Theoretical arrival time of the next byte.
    tat: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// A limit of `bytes_per_s` (at least 1), allowing bursts of 250 ms worth of bytes.
    pub fn new(bytes_per_s: u64) -> Arc<RateLimiter> {
        Arc::new(RateLimiter {
            bytes_per_s: bytes_per_s.max(1),
            burst: Duration::from_millis(250),
            tat: Mutex::new(None),
        })
    }

    pub fn bytes_per_s(&self) -> u64 {
        self.bytes_per_s
    }

    /// How long the caller must wait before reading `n` bytes; books them.
    fn book(&self, n: u64, now: Instant) -> Duration {
        let cost = Duration::from_secs_f64(n as f64 / self.bytes_per_s as f64);
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let start = tat.map_or(now, |t| t.max(now));
        let next = start + cost;
        *tat = Some(next);
        (next - now).saturating_sub(self.burst)
    }

    /// Blocks until `n` more bytes may be read.
    pub fn acquire(&self, n: u64) {
        let wait = self.book(n, Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// A source whose reads are paced by a [`RateLimiter`].
pub struct RateLimited<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
}

impl<S> RateLimited<S> {
    pub fn new(inner: S, limiter: Arc<RateLimiter>) -> RateLimited<S> {
        RateLimited { inner, limiter }
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimited<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimited")
            .field("inner", &self.inner)
            .field("bytes_per_s", &self.limiter.bytes_per_s)
            .finish()
    }
}

impl<S: BlockSource> BlockSource for RateLimited<S> {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    /// The inner source's: a read limit is how it was read, not what it is, so it stays out
    /// of restore-point metadata.
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn format(&self) -> &'static str {
        self.inner.format()
    }

    fn io_hints(&self) -> IoHints {
        self.inner.io_hints()
    }

    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>, SourceError> {
        self.inner.allocation(offset, len)
    }

    fn changed_ranges(&self, checkpoint: &str) -> Result<Option<Vec<ByteRange>>, SourceError> {
        self.inner.changed_ranges(checkpoint)
    }

    fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), SourceError> {
        self.limiter.acquire(reqs.iter().map(|r| r.buf.len() as u64).sum());
        self.inner.read_many(reqs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemSource;

    #[test]
    fn pacing_books_time_and_allows_a_burst() {
        let l = RateLimiter::new(1_000_000);
        let t0 = Instant::now();
        // 200 ms worth fits in the 250 ms burst.
        assert_eq!(l.book(200_000, t0), Duration::ZERO);
        // The next 300 ms worth runs 500 ms ahead: wait 250 ms.
        assert_eq!(l.book(300_000, t0), Duration::from_millis(250));
        // Much later, the debt is gone.
        assert_eq!(l.book(100_000, t0 + Duration::from_secs(10)), Duration::ZERO);
    }

    #[test]
    fn reads_are_limited_and_shared() {
        let l = RateLimiter::new(8 << 20);
        let a = RateLimited::new(MemSource::new("a", vec![7u8; 4 << 20]), l.clone());
        let b = RateLimited::new(MemSource::new("b", vec![9u8; 4 << 20]), l);
        let started = Instant::now();
        let mut buf = vec![0u8; 1 << 20];
        for i in 0..4u64 {
            a.read_at(i << 20, &mut buf).unwrap();
            assert!(buf.iter().all(|&x| x == 7));
            b.read_at(i << 20, &mut buf).unwrap();
            assert!(buf.iter().all(|&x| x == 9));
        }
        // 8 MiB through one 8 MiB/s limit, less the 250 ms burst.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(700), "8 MiB at 8 MiB/s took only {took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_eq!(a.describe(), MemSource::new("a", Vec::new()).describe());
    }
}
