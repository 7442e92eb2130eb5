//! The calls object_store does not offer, as requests we build and sign ourselves with
//! object_store's public SigV4 signer ([`AwsAuthorizer`]) and send on a plain object_store
//! HTTP client:
//!
//! - PUT and CreateMultipartUpload with `x-amz-object-lock-mode` and
//!   `x-amz-object-lock-retain-until-date`: object_store's `Attributes` are a closed set
//!   (content type, cache control, ..., and `x-amz-meta-*` user metadata), so it cannot send
//!   object lock headers per object; a header added after signing would be refused by AWS
//!   (every `x-amz-*` header must be signed);
//! - GetObjectRetention and PutObjectRetention (`?retention`): not in object_store;
//! - DELETE of one version (`?versionId=`): object_store deletes keys, not versions, and in
//!   a versioned bucket deleting a key only adds a delete marker, which object lock allows;
//! - CreateBucket with `x-amz-bucket-object-lock-enabled` and the bucket probe that tells a
//!   missing bucket from wrong credentials when a HEAD answer had no body.
//!
//! Each is one attempt here, wrapped in [`crate::retry`] by its caller.

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Method};
use md5::{Digest, Md5};
use object_store::aws::AwsAuthorizer;
use object_store::client::HttpRequestBody;

use crate::client::{validate_key, LockMode, PutOutcome, Retention, S3Client};
use crate::error::S3Error;
use crate::probe::{read_bounded, Fault};
use crate::retry::retry;
use crate::xml;

/// Answers we read in full (retention documents, upload ids) are at most this big.
const MAX_ANSWER: usize = 1 << 20;

/// A successful answer.
struct Answer {
    headers: HeaderMap,
    body: Bytes,
}

/// What to send.
struct Req<'a> {
    method: Method,
    /// `None` for a request on the bucket itself.
    key: Option<&'a str>,
    /// `(name, value)`; an empty value is sent as a bare `name`.
    query: Vec<(&'static str, String)>,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

impl S3Client {
    /// The URL of `key` (or of the bucket) with `query`.
    fn url(&self, key: Option<&str>, query: &[(&'static str, String)]) -> String {
        let cfg = &self.inner.cfg;
        let endpoint = cfg.endpoint();
        let mut url = if cfg.path_style {
            format!("{endpoint}/{}", cfg.bucket)
        } else {
            let (scheme, host) = endpoint.split_once("://").unwrap_or(("https", endpoint));
            format!("{scheme}://{}.{host}", cfg.bucket)
        };
        if let Some(k) = key {
            url.push('/');
            url.push_str(k); // validate_key: only unreserved characters and '/'
        } else if !cfg.path_style {
            url.push('/');
        }
        for (i, (name, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(name);
            if !value.is_empty() {
                url.push('=');
                url.push_str(&percent_encode(value));
            }
        }
        url
    }

    /// One signed request; non-2xx answers become errors through [`S3Client::classify_fault`].
    async fn send(&self, what: &str, req: Req<'_>) -> Result<Answer, S3Error> {
        let endpoint = self.inner.cfg.endpoint().to_string();
        let protocol =
            |detail: String| S3Error::Protocol { what: what.to_string(), endpoint: endpoint.clone(), detail };
        let mut builder = http::Request::builder().method(req.method).uri(self.url(req.key, &req.query));
        for (name, value) in &req.headers {
            builder = builder.header(*name, value);
        }
        let mut request = builder
            .body(HttpRequestBody::from(req.body))
            .map_err(|e| protocol(format!("cannot build the request: {e}")))?;
        AwsAuthorizer::new(&self.inner.credential, "s3", &self.inner.cfg.region)
            .try_authorize(&mut request, None)
            .map_err(|e| protocol(format!("cannot sign the request: {e}")))?;
        let resp = self.inner.http.execute(request).await.map_err(|e| self.classify_transport(what, &e))?;
        let (parts, mut body) = resp.into_parts();
        let bytes = read_bounded(&mut body, MAX_ANSWER).await.map_err(|e| self.classify_transport(what, &e))?;
        if parts.status.is_success() {
            self.inner.bucket_seen.store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(Answer { headers: parts.headers, body: bytes });
        }
        let text = String::from_utf8_lossy(&bytes);
        let fault = Fault {
            status: parts.status.as_u16(),
            code: xml::field(&text, "Code").unwrap_or_default(),
            message: xml::field(&text, "Message").unwrap_or_default(),
        };
        Err(self.classify_fault(what, req.key.unwrap_or(""), fault))
    }

    /// Uploads `data` as `key` with object lock `retention` set atomically with the upload
    /// (one PUT, or a multipart upload above [`crate::S3Config::multipart_threshold`]). The
    /// bucket must have object lock enabled.
    pub async fn put_with_retention(
        &self,
        key: &str,
        data: Bytes,
        retention: Retention,
    ) -> Result<PutOutcome, S3Error> {
        validate_key(key)?;
        if data.len() > self.inner.cfg.multipart_threshold {
            return self.multipart(key, data, self.inner.cfg.part_size, Some(retention)).await;
        }
        let what = self.what("PUT (object lock)", key);
        let mut headers = lock_headers(retention)?;
        headers.push(("content-md5", content_md5(&data)));
        let a = retry(&self.inner.cfg.retry, &self.inner.stats, &what, || {
            self.send(
                &what,
                Req {
                    method: Method::PUT,
                    key: Some(key),
                    query: vec![],
                    headers: headers.clone(),
                    body: data.clone(),
                },
            )
        })
        .await?;
        Ok(PutOutcome { e_tag: header(&a.headers, "etag"), version: header(&a.headers, "x-amz-version-id") })
    }

    /// The retention of `key` (its current version, or `version`); `None` when it has none.
    pub async fn retention(&self, key: &str, version: Option<&str>) -> Result<Option<Retention>, S3Error> {
        validate_key(key)?;
        let what = self.what("GET retention of", key);
        let mut query = vec![("retention", String::new())];
        if let Some(v) = version {
            query.push(("versionId", v.to_string()));
        }
        let r = retry(&self.inner.cfg.retry, &self.inner.stats, &what, || {
            self.send(
                &what,
                Req { method: Method::GET, key: Some(key), query: query.clone(), headers: vec![], body: Bytes::new() },
            )
        })
        .await;
        let a = match r {
            Ok(a) => a,
            // AWS says NoSuchObjectLockConfiguration, SeaweedFS ObjectLockConfigurationNotFoundError
            Err(S3Error::Rejected { ref code, .. })
                if code == "NoSuchObjectLockConfiguration" || code == "ObjectLockConfigurationNotFoundError" =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        parse_retention(&String::from_utf8_lossy(&a.body)).map_err(|detail| S3Error::Protocol {
            what,
            endpoint: self.inner.cfg.endpoint().to_string(),
            detail,
        })
    }

    /// Sets (or extends) the retention of one version. Shortening a COMPLIANCE retention
    /// is refused by the server ([`S3Error::ObjectLocked`]).
    pub async fn set_retention(&self, key: &str, version: Option<&str>, retention: Retention) -> Result<(), S3Error> {
        validate_key(key)?;
        let what = self.what("PUT retention of", key);
        let body = Bytes::from(format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            retention.mode.as_str(),
            xml::escape(&retain_until(retention.retain_until)?)
        ));
        let mut query = vec![("retention", String::new())];
        if let Some(v) = version {
            query.push(("versionId", v.to_string()));
        }
        let headers = vec![("content-md5", content_md5(&body))];
        let r = retry(&self.inner.cfg.retry, &self.inner.stats, &what, || {
            self.send(
                &what,
                Req {
                    method: Method::PUT,
                    key: Some(key),
                    query: query.clone(),
                    headers: headers.clone(),
                    body: body.clone(),
                },
            )
        })
        .await;
        match r {
            Err(S3Error::AccessDenied { .. }) => {
                Err(self.locked_or_denied(&what, key, version.unwrap_or(""), r.err()).await)
            }
            r => r.map(|_| ()),
        }
    }

    /// Deletes one version of `key` for good. Inside its retention the server refuses, and
    /// the error is [`S3Error::ObjectLocked`] (checked by reading the retention back, since
    /// S3 answers a plain `AccessDenied`).
    pub async fn delete_version(&self, key: &str, version: &str) -> Result<(), S3Error> {
        validate_key(key)?;
        let what = format!("{} version {version}", self.what("DELETE", key));
        let query = vec![("versionId", version.to_string())];
        let r = retry(&self.inner.cfg.retry, &self.inner.stats, &what, || {
            self.send(
                &what,
                Req {
                    method: Method::DELETE,
                    key: Some(key),
                    query: query.clone(),
                    headers: vec![],
                    body: Bytes::new(),
                },
            )
        })
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(e @ S3Error::AccessDenied { .. }) => Err(self.locked_or_denied(&what, key, version, Some(e)).await),
            Err(e) => Err(e),
        }
    }

    /// After a 403 on a version: [`S3Error::ObjectLocked`] when the version has a retention
    /// that has not ended, else the original error.
    async fn locked_or_denied(&self, what: &str, key: &str, version: &str, original: Option<S3Error>) -> S3Error {
        let v = (!version.is_empty()).then_some(version);
        if let Ok(Some(r)) = self.retention(key, v).await {
            if r.retain_until > SystemTime::now() {
                let until = retain_until(r.retain_until).unwrap_or_default();
                return S3Error::ObjectLocked {
                    what: what.to_string(),
                    key: key.to_string(),
                    version: if version.is_empty() { "current".into() } else { version.to_string() },
                    detail: format!("{} retention until {until}", r.mode.as_str()),
                };
            }
        }
        original.unwrap_or_else(|| S3Error::Protocol {
            what: what.to_string(),
            endpoint: self.inner.cfg.endpoint().to_string(),
            detail: "refused without an error".into(),
        })
    }

    /// Creates the bucket of this client's configuration, with object lock (and so
    /// versioning) enabled when `object_lock`. Object lock can only be chosen at creation.
    pub async fn create_bucket(&self, object_lock: bool) -> Result<(), S3Error> {
        let what = format!("create bucket {}", self.inner.cfg.bucket);
        let mut headers = vec![];
        if object_lock {
            headers.push(("x-amz-bucket-object-lock-enabled", "true".to_string()));
        }
        retry(&self.inner.cfg.retry, &self.inner.stats, &what, || {
            self.send(
                &what,
                Req { method: Method::PUT, key: None, query: vec![], headers: headers.clone(), body: Bytes::new() },
            )
        })
        .await
        .map(|_| ())
    }

    /// Lists at most one key of the bucket, to learn whether the credentials or the bucket
    /// are wrong: `Some` with that error, `None` when the bucket answers.
    pub(crate) async fn check_bucket(&self) -> Option<S3Error> {
        let what = format!("LIST s3://{}", self.inner.cfg.bucket);
        let query = vec![("list-type", "2".to_string()), ("max-keys", "1".to_string())];
        match self.send(&what, Req { method: Method::GET, key: None, query, headers: vec![], body: Bytes::new() }).await
        {
            Err(e @ (S3Error::Credentials { .. } | S3Error::NoSuchBucket { .. })) => Some(e),
            _ => None,
        }
    }

    /// Sends a CreateMultipartUpload with the object lock headers and returns its UploadId.
    pub(crate) async fn create_multipart_locked(&self, key: &str, retention: Retention) -> Result<String, S3Error> {
        let what = self.what("multipart upload (object lock) of", key);
        let headers = lock_headers(retention)?;
        let query = vec![("uploads", String::new())];
        let a = retry(&self.inner.cfg.retry, &self.inner.stats, &what, || {
            self.send(
                &what,
                Req {
                    method: Method::POST,
                    key: Some(key),
                    query: query.clone(),
                    headers: headers.clone(),
                    body: Bytes::new(),
                },
            )
        })
        .await?;
        xml::field(&String::from_utf8_lossy(&a.body), "UploadId").filter(|id| !id.is_empty()).ok_or_else(|| {
            S3Error::Protocol {
                what,
                endpoint: self.inner.cfg.endpoint().to_string(),
                detail: "CreateMultipartUpload answered without an UploadId".into(),
            }
        })
    }
}

/// After a bodiless 403/404 (HEAD): the bucket-level cause if there is one.
pub(crate) async fn diagnose(client: &S3Client) -> Option<S3Error> {
    client.check_bucket().await
}

/// Reads a GetObjectRetention answer; `Ok(None)` when it names no mode or date.
pub(crate) fn parse_retention(text: &str) -> Result<Option<Retention>, String> {
    let Some((mode, retain_until)) = xml::retention(text)? else { return Ok(None) };
    let mode = LockMode::parse(&mode).ok_or_else(|| format!("unknown retention mode {mode:?}"))?;
    Ok(Some(Retention { mode, retain_until }))
}

fn lock_headers(r: Retention) -> Result<Vec<(&'static str, String)>, S3Error> {
    Ok(vec![
        ("x-amz-object-lock-mode", r.mode.as_str().to_string()),
        ("x-amz-object-lock-retain-until-date", retain_until(r.retain_until)?),
    ])
}

/// `t` as S3 wants it (ISO 8601, UTC, whole seconds), rounded up.
fn retain_until(t: SystemTime) -> Result<String, S3Error> {
    let ts = jiff::Timestamp::try_from(t)
        .map_err(|e| S3Error::Config { detail: format!("retain-until time out of range: {e}") })?;
    let up = if ts.subsec_nanosecond() > 0 {
        jiff::Timestamp::from_second(ts.as_second().saturating_add(1))
            .map_err(|e| S3Error::Config { detail: format!("retain-until time out of range: {e}") })?
    } else {
        ts
    };
    Ok(up.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Base64 of the MD5 of `data` (the Content-MD5 header S3 requires on object lock PUTs).
fn content_md5(data: &[u8]) -> String {
    base64(&Md5::digest(data))
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters (as SigV4 wants).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn content_md5_is_base64_of_the_md5() {
        // RFC 1321 test vector "abc" = 900150983cd24fb0d6963f7d28e17f72
        assert_eq!(content_md5(b"abc"), "kAFQmDzST7DWlj99KOF/cg==");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    #[test]
    fn retain_until_is_iso8601_utc_rounded_up_to_the_second() {
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(retain_until(t).unwrap(), "2027-01-15T08:00:00Z");
        assert_eq!(retain_until(t + Duration::from_millis(1)).unwrap(), "2027-01-15T08:00:01Z");
    }

    #[test]
    fn a_retention_answer_parses_and_garbage_is_an_error_not_a_panic() {
        let doc = "<?xml version=\"1.0\"?><Retention><Mode>COMPLIANCE</Mode>\
                   <RetainUntilDate>2027-01-15T08:00:00.5Z</RetainUntilDate></Retention>";
        let r = parse_retention(doc).unwrap().unwrap();
        assert_eq!(r.mode, LockMode::Compliance);
        assert_eq!(r.retain_until, UNIX_EPOCH + Duration::from_millis(1_800_000_000_500));
        assert_eq!(parse_retention("<Retention></Retention>").unwrap(), None);
        assert!(parse_retention("<Mode>FOREVER</Mode><RetainUntilDate>2027-01-15T08:00:00Z</RetainUntilDate>").is_err());
        assert!(
            parse_retention("<Mode>GOVERNANCE</Mode><RetainUntilDate>1900-01-01T00:00:00Z</RetainUntilDate>").is_err()
        );
        let mut rng = testkit::Rng::new(0x7e7);
        for _ in 0..20_000 {
            let mut b = doc.as_bytes().to_vec();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len() as u64) as usize;
                b[i] = rng.next_u64() as u8;
            }
            let _ = parse_retention(&String::from_utf8_lossy(&b));
        }
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent_encode("a b/c+d~"), "a%20b%2Fc%2Bd~");
    }
}
