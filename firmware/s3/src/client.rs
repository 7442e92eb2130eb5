//! [`S3Client`]: the operations, each one attempt at a time through object_store (or a
//! hand-signed request, see `signed.rs`), classified into [`S3Error`] and retried by
//! [`crate::retry`].

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredential};
use object_store::client::{ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind, ReqwestConnector};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use crate::config::{S3Config, MAX_PARTS};
use crate::error::S3Error;
use crate::probe::{self, Fault, ProbeConnector};
use crate::retry::{retry, RetryStats};

/// Object lock retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` may still delete or shorten it.
    Governance,
    /// Nobody can delete the version or shorten its retention before it ends, not even the
    /// bucket's owner.
    Compliance,
}

impl LockMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<LockMode> {
        match s {
            "GOVERNANCE" => Some(LockMode::Governance),
            "COMPLIANCE" => Some(LockMode::Compliance),
            _ => None,
        }
    }
}

/// An object version's retention: it cannot be deleted before `retain_until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub mode: LockMode,
    /// Sent rounded up to the next whole second, so the window is never shorter than asked.
    pub retain_until: SystemTime,
}

/// What a successful upload created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub e_tag: Option<String>,
    /// The version id, when the bucket has versioning (always with object lock).
    pub version: Option<String>,
}

/// One object as HEAD or LIST describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub e_tag: Option<String>,
    pub version: Option<String>,
    pub last_modified: SystemTime,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ObjectInfo>,
    /// Pass it to the next [`S3Client::list_page`] call; `None` on the last page.
    pub next: Option<String>,
}

/// A client for one bucket. Cheap to clone (clones share connections and counters).
#[derive(Debug, Clone)]
pub struct S3Client {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) cfg: S3Config,
    pub(crate) store: AmazonS3,
    /// For the hand-signed requests (object lock, versions, buckets).
    pub(crate) http: HttpClient,
    pub(crate) credential: AwsCredential,
    pub(crate) stats: RetryStats,
    /// Set by any successful answer: the bucket existed and took our credentials, so a
    /// bodiless 404 to a HEAD afterwards means the key, and needs no bucket check.
    pub(crate) bucket_seen: AtomicBool,
}

/// Checks a key: `[A-Za-z0-9._-]` segments joined by `/`, no empty, `.` or `..` segment,
/// at most 1024 bytes. Keys are chosen by our own code; this keeps them the same in
/// object_store's paths, in signed URLs and on every S3 implementation.
pub fn validate_key(key: &str) -> Result<(), S3Error> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let ok = !key.is_empty()
        && key.len() <= 1024
        && key.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != ".." && seg.chars().all(ok_char));
    if ok {
        Ok(())
    } else {
        Err(S3Error::Config {
            detail: format!(
                "object key {key:?} is not allowed: use [A-Za-z0-9._-] segments separated by '/', at most 1024 bytes"
            ),
        })
    }
}

/// Checks a listing prefix: empty, or a key optionally followed by `/`.
fn validate_prefix(prefix: &str) -> Result<(), S3Error> {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if prefix.is_empty() || validate_key(trimmed).is_ok() {
        Ok(())
    } else {
        Err(S3Error::Config {
            detail: format!("listing prefix {prefix:?} is not allowed: use a key prefix of [A-Za-z0-9._-/]"),
        })
    }
}

impl S3Client {
    /// A client for `cfg.bucket`. Sends nothing yet; needs no runtime to be created (its
    /// methods need one: see [`crate::BlockingS3`] for callers on plain threads).
    pub fn new(cfg: S3Config) -> Result<S3Client, S3Error> {
        cfg.validate()?;
        // reqwest is built without a TLS provider of its own (to keep aws-lc-rs out); the
        // workspace's rustls uses ring. Err means a provider is installed already: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = ClientOptions::new()
            .with_allow_http(cfg.allow_http)
            .with_timeout(cfg.request_timeout)
            .with_connect_timeout(cfg.connect_timeout);
        let no_retries = RetryConfig { max_retries: 0, ..RetryConfig::default() };
        let store = AmazonS3Builder::new()
            .with_endpoint(cfg.endpoint())
            .with_region(&cfg.region)
            .with_bucket_name(&cfg.bucket)
            .with_access_key_id(&cfg.access_key)
            .with_secret_access_key(cfg.secret_key.expose())
            .with_virtual_hosted_style_request(!cfg.path_style)
            .with_allow_http(cfg.allow_http)
            .with_retry(no_retries)
            .with_client_options(options.clone())
            .with_http_connector(ProbeConnector)
            .build()
            .map_err(|e| S3Error::Config {
                detail: format!("cannot set up the S3 client for {}: {e}", cfg.endpoint()),
            })?;
        let http = ReqwestConnector::default().connect(&options).map_err(|e| S3Error::Config {
            detail: format!("cannot set up the HTTP client for {}: {e}", cfg.endpoint()),
        })?;
        let credential = AwsCredential {
            key_id: cfg.access_key.clone(),
            secret_key: cfg.secret_key.expose().to_string(),
            token: None,
        };
        Ok(S3Client {
            inner: Arc::new(Inner {
                cfg,
                store,
                http,
                credential,
                stats: RetryStats::default(),
                bucket_seen: AtomicBool::new(false),
            }),
        })
    }

    pub fn config(&self) -> &S3Config {
        &self.inner.cfg
    }

    /// Retries made so far by this client and its clones (attempts beyond the first).
    pub fn retries(&self) -> u64 {
        self.inner.stats.retries.load(Ordering::Relaxed)
    }

    pub(crate) fn what(&self, verb: &str, key: &str) -> String {
        format!("{verb} s3://{}/{key}", self.inner.cfg.bucket)
    }

    /// Runs one object_store call under the probe and maps its error.
    pub(crate) async fn attempt<T, Fut>(&self, what: &str, key: &str, fut: Fut) -> Result<T, S3Error>
    where
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let (out, fault) = probe::observe(fut).await;
        match out {
            Ok(v) => {
                self.inner.bucket_seen.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => Err(self.classify(what, key, &e, fault)),
        }
    }

    /// Turns an object_store error (and what the probe saw) into an [`S3Error`].
    fn classify(&self, what: &str, key: &str, e: &object_store::Error, fault: Option<Fault>) -> S3Error {
        if let Some(f) = fault {
            return self.classify_fault(what, key, f);
        }
        if let Some(h) = find_http_error(e) {
            return self.classify_transport(what, h);
        }
        match e {
            object_store::Error::NotFound { .. } => {
                S3Error::NotFound { bucket: self.inner.cfg.bucket.clone(), key: key.to_string() }
            }
            _ => S3Error::Protocol {
                what: what.to_string(),
                endpoint: self.inner.cfg.endpoint().to_string(),
                detail: e.to_string(),
            },
        }
    }

    /// Classifies an answer the server refused.
    pub(crate) fn classify_fault(&self, what: &str, key: &str, f: Fault) -> S3Error {
        let cfg = &self.inner.cfg;
        let endpoint = cfg.endpoint().to_string();
        let what = what.to_string();
        match (f.status, f.code.as_str()) {
            (
                _,
                "SignatureDoesNotMatch"
                | "InvalidAccessKeyId"
                | "InvalidSecurity"
                | "ExpiredToken"
                | "InvalidToken"
                | "TokenRefreshRequired",
            ) => S3Error::Credentials { endpoint, code: f.code },
            (401, _) => S3Error::Credentials { endpoint, code: if f.code.is_empty() { "401".into() } else { f.code } },
            (_, "NoSuchBucket") => S3Error::NoSuchBucket { bucket: cfg.bucket.clone(), endpoint },
            (_, "NoSuchKey" | "NoSuchVersion") | (404, "") => {
                S3Error::NotFound { bucket: cfg.bucket.clone(), key: key.to_string() }
            }
            (403, _) => {
                S3Error::AccessDenied { what, endpoint, code: if f.code.is_empty() { "403".into() } else { f.code } }
            }
            (_, "SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded") | (429 | 503, _) => {
                S3Error::Throttled { what, status: f.status, code: f.code }
            }
            (s, _) if s >= 500 => S3Error::Server { what, status: s, code: f.code, message: f.message },
            (_, "RequestTimeout") => S3Error::Timeout { what, endpoint, after: cfg.request_timeout },
            _ => S3Error::Rejected { what, status: f.status, code: f.code, message: f.message },
        }
    }

    /// Classifies a transport failure (no answer, or an answer cut short).
    pub(crate) fn classify_transport(&self, what: &str, h: &HttpError) -> S3Error {
        let cfg = &self.inner.cfg;
        let endpoint = cfg.endpoint().to_string();
        let what = what.to_string();
        let detail = |s: &str| format!("{s}: {}", chain(h));
        match h.kind() {
            HttpErrorKind::Timeout => S3Error::Timeout { what, endpoint, after: cfg.request_timeout },
            HttpErrorKind::Connect => S3Error::Connection { what, endpoint, detail: detail("cannot connect") },
            HttpErrorKind::Request => S3Error::Connection {
                what,
                endpoint,
                detail: detail("the connection closed before the answer was complete"),
            },
            HttpErrorKind::Interrupted => {
                S3Error::Connection { what, endpoint, detail: detail("the connection was cut") }
            }
            HttpErrorKind::Decode => {
                S3Error::Protocol { what, endpoint, detail: detail("the answer could not be decoded") }
            }
            // Unknown: a failure of the transport whose cause reqwest did not classify (a
            // cut while the body was being sent shows up here); no answer was received.
            _ => S3Error::Connection { what, endpoint, detail: detail("the transfer failed") },
        }
    }

    // ---- operations ------------------------------------------------------------------------

    /// Uploads `data` as `key`: one PUT up to [`S3Config::multipart_threshold`], a multipart
    /// upload of [`S3Config::part_size`] parts above it.
    pub async fn upload(&self, key: &str, data: Bytes) -> Result<PutOutcome, S3Error> {
        if data.len() > self.inner.cfg.multipart_threshold {
            self.put_multipart(key, data, self.inner.cfg.part_size).await
        } else {
            self.put(key, data).await
        }
    }

    /// One PUT of the whole object (S3 takes up to 5 GiB this way).
    pub async fn put(&self, key: &str, data: Bytes) -> Result<PutOutcome, S3Error> {
        validate_key(key)?;
        let what = self.what("PUT", key);
        let path = Path::from(key);
        let payload = PutPayload::from(data);
        let r = retry(&self.inner.cfg.retry, &self.inner.stats, &what, || {
            self.attempt(&what, key, self.inner.store.put_opts(&path, payload.clone(), Default::default()))
        })
        .await?;
        Ok(PutOutcome { e_tag: r.e_tag, version: r.version })
    }

    /// A multipart upload of `data` in parts of `part_size` bytes (the last may be shorter),
    /// [`S3Config::upload_concurrency`] parts in flight, each retried on its own. On failure
    /// the upload is aborted, so no parts are left behind.
    pub async fn put_multipart(&self, key: &str, data: Bytes, part_size: usize) -> Result<PutOutcome, S3Error> {
        self.multipart(key, data, part_size, None).await
    }

    pub(crate) async fn multipart(
        &self,
        key: &str,
        data: Bytes,
        part_size: usize,
        retention: Option<Retention>,
    ) -> Result<PutOutcome, S3Error> {
        validate_key(key)?;
        let cfg = &self.inner.cfg;
        if !(crate::config::MIN_PART_SIZE..=crate::config::MAX_PART_SIZE).contains(&part_size) {
            return Err(S3Error::Config {
                detail: format!("part size {part_size} is outside S3's limits (5 MiB to 5 GiB)"),
            });
        }
        let parts = data.len().div_ceil(part_size).max(1);
        if parts > MAX_PARTS {
            return Err(S3Error::Config {
                detail: format!("{} bytes in {part_size}-byte parts make {parts} parts, more than S3's {MAX_PARTS}; use larger parts", data.len()),
            });
        }
        let path = Path::from(key);
        let what = self.what("multipart upload of", key);
        let id = match retention {
            None => {
                retry(&cfg.retry, &self.inner.stats, &what, || {
                    self.attempt(&what, key, self.inner.store.create_multipart(&path))
                })
                .await?
            }
            Some(r) => self.create_multipart_locked(key, r).await?,
        };
        match self.upload_parts(key, &path, &id, &data, part_size, parts).await {
            Ok(part_ids) => {
                let mut attempts = 0u32;
                let size = data.len() as u64;
                let done = retry(&cfg.retry, &self.inner.stats, &what, || {
                    attempts += 1;
                    let again = attempts > 1;
                    let (what, path, id, parts) = (&what, &path, &id, part_ids.clone());
                    async move {
                        match self.attempt(what, key, self.inner.store.complete_multipart(path, id, parts)).await {
                            // A repeated complete of an upload the server already completed
                            // (its first answer was lost): the object is there if its size
                            // is ours.
                            Err(S3Error::Rejected { code, .. }) if again && code == "NoSuchUpload" => {
                                let h = self.head(key).await?;
                                if h.size == size {
                                    Ok(PutOutcome { e_tag: h.e_tag, version: h.version })
                                } else {
                                    Err(S3Error::Protocol {
                                        what: what.clone(),
                                        endpoint: self.inner.cfg.endpoint().to_string(),
                                        detail: "the upload vanished before it was completed".into(),
                                    })
                                }
                            }
                            r => r.map(|r| PutOutcome { e_tag: r.e_tag, version: r.version }),
                        }
                    }
                })
                .await;
                match done {
                    Ok(outcome) => Ok(outcome),
                    Err(e) => {
                        self.abort(&path, &id).await;
                        Err(e)
                    }
                }
            }
            Err(e) => {
                self.abort(&path, &id).await;
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        path: &Path,
        id: &str,
        data: &Bytes,
        part_size: usize,
        parts: usize,
    ) -> Result<Vec<PartId>, S3Error> {
        let mut ids: Vec<Option<PartId>> = vec![None; parts];
        let mut set = tokio::task::JoinSet::new();
        let mut next = 0usize;
        loop {
            while next < parts && set.len() < self.inner.cfg.upload_concurrency {
                let idx = next;
                next += 1;
                let chunk = data.slice(idx * part_size..((idx + 1) * part_size).min(data.len()));
                let this = self.clone();
                let (key, path, id) = (key.to_string(), path.clone(), id.to_string());
                set.spawn(async move {
                    let what = format!("{} (part {} of {parts})", this.what("upload of", &key), idx + 1);
                    let payload = PutPayload::from(chunk);
                    let cfg = &this.inner.cfg;
                    let r = retry(&cfg.retry, &this.inner.stats, &what, || {
                        this.attempt(&what, &key, this.inner.store.put_part(&path, &id, idx, payload.clone()))
                    })
                    .await;
                    (idx, r)
                });
            }
            let Some(joined) = set.join_next().await else { break };
            match joined {
                Ok((idx, Ok(part))) => ids[idx] = Some(part),
                Ok((_, Err(e))) => {
                    set.abort_all();
                    return Err(e);
                }
                Err(join) => {
                    set.abort_all();
                    return Err(S3Error::Protocol {
                        what: self.what("multipart upload of", key),
                        endpoint: self.inner.cfg.endpoint().to_string(),
                        detail: format!("a part upload task ended abnormally: {join}"),
                    });
                }
            }
        }
        ids.into_iter()
            .enumerate()
            .map(|(i, p)| {
                p.ok_or_else(|| S3Error::Protocol {
                    what: self.what("multipart upload of", key),
                    endpoint: self.inner.cfg.endpoint().to_string(),
                    detail: format!("part {} was never uploaded", i + 1),
                })
            })
            .collect()
    }

    /// Best effort: a failed abort leaves parts the bucket's lifecycle rules must clean up.
    async fn abort(&self, path: &Path, id: &str) {
        let id = id.to_string();
        let _ = probe::observe(self.inner.store.abort_multipart(path, &id)).await;
    }

    /// The whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes, S3Error> {
        validate_key(key)?;
        self.get_inner(key, None).await
    }

    /// Bytes `range` of the object (S3 clips a range that runs past the end).
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, S3Error> {
        validate_key(key)?;
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        self.get_inner(key, Some(range)).await
    }

    async fn get_inner(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes, S3Error> {
        let what = match &range {
            Some(r) => format!("{} bytes {}..{}", self.what("GET", key), r.start, r.end),
            None => self.what("GET", key),
        };
        let path = Path::from(key);
        retry(&self.inner.cfg.retry, &self.inner.stats, &what, || {
            let opts = GetOptions { range: range.clone().map(GetRange::Bounded), ..Default::default() };
            let fut = async {
                let r = self.inner.store.get_opts(&path, opts).await?;
                r.bytes().await
            };
            self.attempt(&what, key, fut)
        })
        .await
    }

    /// Size, ETag, version and modification time.
    pub async fn head(&self, key: &str) -> Result<ObjectInfo, S3Error> {
        validate_key(key)?;
        let what = self.what("HEAD", key);
        let path = Path::from(key);
        let r = retry(&self.inner.cfg.retry, &self.inner.stats, &what, || {
            self.attempt(&what, key, self.inner.store.head(&path))
        })
        .await;
        match r {
            Ok(m) => Ok(info(m)),
            // A HEAD answer has no body, so 403 and 404 carry no S3 code: ask the bucket
            // whether the credentials or the bucket are the cause (for a 404, only until
            // the bucket has answered once).
            Err(e @ S3Error::NotFound { .. }) if self.inner.bucket_seen.load(Ordering::Relaxed) => Err(e),
            Err(e @ (S3Error::NotFound { .. } | S3Error::AccessDenied { .. })) => {
                Err(crate::signed::diagnose(self).await.unwrap_or(e))
            }
            Err(e) => Err(e),
        }
    }

    /// One page of the objects whose keys start with `prefix` (all of them, at any depth),
    /// at most `max_keys` (S3 caps it at 1000), from `page_token` (the previous page's
    /// [`ListPage::next`]; `None` for the first page).
    pub async fn list_page(
        &self,
        prefix: &str,
        page_token: Option<String>,
        max_keys: usize,
    ) -> Result<ListPage, S3Error> {
        validate_prefix(prefix)?;
        let what = format!("LIST s3://{}/{prefix}*", self.inner.cfg.bucket);
        let r = retry(&self.inner.cfg.retry, &self.inner.stats, &what, || {
            let opts = PaginatedListOptions {
                max_keys: Some(max_keys.clamp(1, 1000)),
                page_token: page_token.clone(),
                ..Default::default()
            };
            let p = (!prefix.is_empty()).then_some(prefix);
            self.attempt(&what, prefix, self.inner.store.list_paginated(p, opts))
        })
        .await?;
        Ok(ListPage { objects: r.result.objects.into_iter().map(info).collect(), next: r.page_token })
    }

    /// Every object under `prefix`, page by page.
    pub async fn list_all(&self, prefix: &str) -> Result<Vec<ObjectInfo>, S3Error> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self.list_page(prefix, token, 1000).await?;
            out.extend(page.objects);
            match page.next {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// Deletes `key`. In a versioned bucket (object lock) this adds a delete marker and
    /// keeps every version; [`S3Client::delete_version`] removes a version for good.
    /// Deleting a key that does not exist succeeds (S3 semantics).
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        validate_key(key)?;
        let what = self.what("DELETE", key);
        let path = Path::from(key);
        retry(&self.inner.cfg.retry, &self.inner.stats, &what, || {
            self.attempt(&what, key, self.inner.store.delete(&path))
        })
        .await
    }
}

fn info(m: ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        key: m.location.to_string(),
        size: m.size,
        e_tag: m.e_tag,
        version: m.version,
        last_modified: SystemTime::from(m.last_modified),
    }
}

/// The first [`HttpError`] in `e`'s source chain.
fn find_http_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a HttpError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<HttpError>() {
            return Some(h);
        }
        cur = err.source();
    }
    None
}

/// `e` and its sources, joined by ": " (what reqwest and hyper say about a transport error).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let t = err.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = err.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_segments_of_a_safe_alphabet() {
        for k in ["packs/00/abc.pack", "index/vm-1_2.idx", "a"] {
            assert!(validate_key(k).is_ok(), "{k}");
        }
        for k in ["", "/a", "a/", "a//b", "a/../b", "a b", "a?b", "ü", &"x".repeat(1025)] {
            assert!(validate_key(k).is_err(), "{k:?}");
        }
        assert!(validate_prefix("").is_ok());
        assert!(validate_prefix("packs/").is_ok());
        assert!(validate_prefix("packs/0").is_ok());
        assert!(validate_prefix("/").is_err());
    }
}
