//! S3 object storage client: the protocol layer under offsite replication to a bucket.
//!
//! A protocol crate: it moves named byte strings to and from one bucket and knows nothing of
//! chunks, packs, restore points or tape (the replication engine decides what the objects
//! are). It depends on no other rackvault crate.
//!
//! # What it guarantees
//!
//! - **Retries are bounded and only for transient errors.** Throttling (503 SlowDown, 429),
//!   server errors (5xx), refused or cut connections and timeouts are retried by one helper,
//!   [`retry`](crate::retry), with exponential backoff and full jitter, at most
//!   [`RetryPolicy::max_attempts`] attempts within [`RetryPolicy::max_elapsed`]; then the
//!   error is [`S3Error::RetriesExhausted`] (still [`ErrorKind::Transient`]: a later job may
//!   succeed). Permanent errors (wrong credentials, missing bucket, access denied, object
//!   locked, bad request) are never retried. object_store's own retries are off, so no
//!   request is repeated anywhere else. [`S3Client::retries`] counts the retries made.
//! - **Every retried request is idempotent.** A PUT sends the whole object (or one part
//!   under its fixed part number), so sending it again leaves the same object; GET, HEAD,
//!   LIST, DELETE and the retention calls are idempotent by S3's definition. A multipart
//!   upload retries each part on its own and completes only when every part succeeded; a
//!   failed upload is aborted (best effort), so a key either holds the complete new object
//!   or whatever it held before, never a partial one.
//! - **Object lock is set with the upload, not after it.** [`S3Client::put_with_retention`]
//!   sends the mode and retain-until date in the PUT (or CreateMultipartUpload) itself, so no
//!   moment exists where the object is stored but unprotected. Deleting a version inside its
//!   window is refused by the server; [`S3Client::delete_version`] reports that as
//!   [`S3Error::ObjectLocked`].
//! - **The secret key never leaves in words.** [`Secret`] prints `<redacted>` in `Debug` and
//!   `Display`; errors name the endpoint, bucket, key and the server's error code, never a
//!   credential; nothing is logged.
//! - **Untrusted answers are bounded.** Error bodies are read up to 64 KiB, the few XML
//!   fields we parse ourselves (`xml.rs`) come from at most 1 MiB, and garbage gives
//!   [`S3Error::Protocol`], never a panic.
//!
//! # Errors
//!
//! [`S3Error`] says what happened and what to do; [`S3Error::kind`] says whether a retry can
//! help ([`ErrorKind::Transient`] / [`ErrorKind::Permanent`]), as in the other protocol
//! crates. The classification uses the HTTP status and the S3 error code of the answer (read
//! by the probe in `probe.rs`) or the transport failure, never the message text.
//!
//! # Async, and blocking callers
//!
//! [`S3Client`] is async (object_store runs on tokio). The crate never builds a runtime:
//! async callers use it directly, and callers on plain threads use [`BlockingS3`] with a
//! [`tokio::runtime::Handle`] that the binary, which owns the runtime, passes down.
//!
//! # What object_store does and what we do
//!
//! object_store (features `aws-base`, `reqwest`, `ring`; TLS through rustls with ring) signs
//! and sends PUT, GET, HEAD, LIST, DELETE and the multipart calls. It cannot send object
//! lock headers per object, read or set a retention, delete one version, or create a bucket:
//! `signed.rs` does those with object_store's public SigV4 signer (`AwsAuthorizer`).
//!
//! Keys are `[A-Za-z0-9._-]` segments joined by `/` ([`validate_key`]).

mod blocking;
mod client;
mod config;
mod error;
mod probe;
pub mod retry;
mod signed;
mod xml;

pub use blocking::BlockingS3;
pub use client::{validate_key, ListPage, LockMode, ObjectInfo, PutOutcome, Retention, S3Client};
pub use config::{is_loopback_endpoint, S3Config, Secret, MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE};
pub use error::{ErrorKind, S3Error};
pub use retry::RetryPolicy;
