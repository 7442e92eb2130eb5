//! The one retry helper of this crate: [`retry`] runs an operation again after a transient
//! error ([`crate::ErrorKind::Transient`]), waiting a bounded exponential backoff with full
//! jitter between attempts, and gives up with [`S3Error::RetriesExhausted`] after
//! [`RetryPolicy::max_attempts`] attempts or once [`RetryPolicy::max_elapsed`] has passed.
//!
//! object_store's own retries are switched off (`max_retries = 0`) so that every retry happens
//! here, is counted, and follows one policy. Permanent errors return at once.
//!
//! Only idempotent requests go through it: PUT of a whole object or of one part (sending the
//! same bytes under the same key or part number again gives the same result), GET, HEAD,
//! LIST, DELETE, the retention calls, and CompleteMultipartUpload (repeating it for an upload
//! that already completed is answered with NoSuchUpload, which `client.rs` resolves by a HEAD
//! checking that the object has the uploaded size).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::S3Error;

/// How transient errors are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// The backoff before the second attempt; it doubles for each further one.
    pub base_delay: Duration,
    /// The longest single backoff.
    pub max_delay: Duration,
    /// No new attempt starts after this much time since the first.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    /// 6 attempts, 200 ms doubling to at most 10 s, within 2 minutes.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the backoff before attempt `attempt + 1` (`attempt` >= 1): the
    /// actual wait is uniform in `[0, bound]` (full jitter, so that many clients throttled at
    /// once do not come back in step).
    pub fn backoff_bound(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.base_delay.saturating_mul(1u32 << doublings).min(self.max_delay)
    }
}

/// Counters of one client, shared by its clones.
#[derive(Debug, Default)]
pub(crate) struct RetryStats {
    pub(crate) retries: AtomicU64,
}

/// Runs `op` until it succeeds, fails permanently, or the policy gives up. `what` names the
/// operation for the error message.
pub(crate) async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    stats: &RetryStats,
    what: &str,
    mut op: F,
) -> Result<T, S3Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, S3Error>>,
{
    let start = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let err = match op().await {
            Ok(v) => return Ok(v),
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) => e,
        };
        let wait = jitter(policy.backoff_bound(attempt));
        if attempt >= policy.max_attempts || start.elapsed() + wait > policy.max_elapsed {
            return Err(S3Error::RetriesExhausted {
                what: what.to_string(),
                attempts: attempt,
                elapsed: start.elapsed(),
                last: Box::new(err),
            });
        }
        stats.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
    }
}

/// A uniformly random duration in `[0, bound]`, from a splitmix64 of the clock and a counter
/// (no cryptographic quality needed, only decorrelation between clients and attempts).
fn jitter(bound: Duration) -> Duration {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let mut z = nanos ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let bound_ns = bound.as_nanos().min(u64::MAX as u128) as u64;
    if bound_ns == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(z % (bound_ns + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(60),
        };
        assert_eq!(p.backoff_bound(1), Duration::from_millis(100));
        assert_eq!(p.backoff_bound(2), Duration::from_millis(200));
        assert_eq!(p.backoff_bound(4), Duration::from_millis(800));
        assert_eq!(p.backoff_bound(5), Duration::from_secs(1));
        assert_eq!(p.backoff_bound(60), Duration::from_secs(1));
    }

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            max_elapsed: Duration::from_secs(10),
        }
    }

    fn transient() -> S3Error {
        S3Error::Throttled { what: "PUT x".into(), status: 503, code: "SlowDown".into() }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success_and_counted() {
        let stats = RetryStats::default();
        let mut calls = 0;
        let r = retry(&fast(5), &stats, "PUT x", || {
            calls += 1;
            let fail = calls <= 2;
            async move {
                if fail {
                    Err(transient())
                } else {
                    Ok(7)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls, 3);
        assert_eq!(stats.retries.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn permanent_errors_return_at_once() {
        let stats = RetryStats::default();
        let mut calls = 0;
        let r: Result<(), _> = retry(&fast(5), &stats, "PUT x", || {
            calls += 1;
            async { Err(S3Error::Credentials { endpoint: "e".into(), code: "SignatureDoesNotMatch".into() }) }
        })
        .await;
        assert!(matches!(r, Err(S3Error::Credentials { .. })));
        assert_eq!(calls, 1);
        assert_eq!(stats.retries.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn giving_up_says_how_many_attempts_and_stays_transient() {
        let stats = RetryStats::default();
        let r: Result<(), _> = retry(&fast(3), &stats, "PUT x", || async { Err(transient()) }).await;
        let e = r.unwrap_err();
        assert!(matches!(e, S3Error::RetriesExhausted { attempts: 3, .. }), "{e:?}");
        assert!(e.is_transient());
        assert!(matches!(e.root(), S3Error::Throttled { .. }));
        assert!(e.to_string().contains("gave up after 3 attempts"), "{e}");
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        for _ in 0..1000 {
            assert!(jitter(Duration::from_millis(7)) <= Duration::from_millis(7));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
