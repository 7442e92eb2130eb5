//! [`S3Config`]: where the bucket is and how to talk to it; [`Secret`] keeps the secret key
//! out of `Debug` output.

use std::fmt;
use std::time::Duration;

use crate::error::S3Error;
use crate::retry::RetryPolicy;

/// S3's smallest part (every part but the last must be at least this big).
pub const MIN_PART_SIZE: usize = 5 << 20;
/// S3's largest part.
pub const MAX_PART_SIZE: usize = 5 << 30;
/// S3's most parts in one upload.
pub const MAX_PARTS: usize = 10_000;

/// A secret string: `Debug` and `Display` print `<redacted>`, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for signing only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How to reach one bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// `https://host[:port]` (or `http://` with [`S3Config::allow_http`]); no path.
    pub endpoint: String,
    /// The signing region (`us-east-1` for most non-AWS servers).
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: Secret,
    /// Path-style URLs (`endpoint/bucket/key`) instead of virtual-hosted ones
    /// (`bucket.endpoint/key`). Most on-premises servers need path-style.
    pub path_style: bool,
    /// Allow `http://` endpoints. Only for loopback test servers: credentials are signed,
    /// not encrypted, but the data travels in the clear.
    pub allow_http: bool,
    /// Per-request deadline (one attempt, whole body included).
    pub request_timeout: Duration,
    /// Deadline to establish a connection.
    pub connect_timeout: Duration,
    /// How transient errors are retried.
    pub retry: RetryPolicy,
    /// Part size of multipart uploads ([`MIN_PART_SIZE`]..=[`MAX_PART_SIZE`]).
    pub part_size: usize,
    /// Objects larger than this are uploaded in parts by [`crate::S3Client::upload`].
    pub multipart_threshold: usize,
    /// Parts in flight at once in a multipart upload.
    pub upload_concurrency: usize,
}

impl S3Config {
    /// A configuration with defaults: virtual-hosted style off (path-style on), HTTPS only,
    /// 120 s per request, 10 s to connect, 8 MiB parts above 16 MiB, 4 parts in flight.
    pub fn new(
        endpoint: impl Into<String>,
        region: impl Into<String>,
        bucket: impl Into<String>,
        access_key: impl Into<String>,
        secret_key: Secret,
    ) -> Self {
        S3Config {
            endpoint: endpoint.into(),
            region: region.into(),
            bucket: bucket.into(),
            access_key: access_key.into(),
            secret_key,
            path_style: true,
            allow_http: false,
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            part_size: 8 << 20,
            multipart_threshold: 16 << 20,
            upload_concurrency: 4,
        }
    }

    /// Checks what can be checked without a request.
    pub fn validate(&self) -> Result<(), S3Error> {
        let bad = |detail: String| Err(S3Error::Config { detail });
        let scheme_ok = self.endpoint.starts_with("https://") || self.endpoint.starts_with("http://");
        if !scheme_ok {
            return bad(format!(
                "endpoint {:?} must start with https:// (or http:// for a loopback test server)",
                self.endpoint
            ));
        }
        if self.endpoint.starts_with("http://") && !self.allow_http {
            return bad(format!(
                "endpoint {} is plain HTTP; use https://, or set allow_http for a loopback test server",
                self.endpoint
            ));
        }
        if self.endpoint.trim_end_matches('/').splitn(4, '/').nth(3).is_some_and(|p| !p.is_empty()) {
            return bad(format!("endpoint {} must not have a path; give the bucket separately", self.endpoint));
        }
        if self.bucket.is_empty() || self.bucket.contains('/') {
            return bad(format!("bucket name {:?} is empty or contains '/'", self.bucket));
        }
        if self.region.is_empty() {
            return bad("region is empty; most S3-compatible servers accept us-east-1".into());
        }
        if self.access_key.is_empty() || self.secret_key.expose().is_empty() {
            return bad("the access key or the secret key is empty".into());
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return bad(format!("part size {} is outside S3's limits (5 MiB to 5 GiB)", self.part_size));
        }
        if self.upload_concurrency == 0 {
            return bad("upload concurrency must be at least 1".into());
        }
        if self.retry.max_attempts == 0 {
            return bad("the retry policy must allow at least one attempt".into());
        }
        Ok(())
    }

    /// `endpoint` without a trailing slash.
    pub(crate) fn endpoint(&self) -> &str {
        self.endpoint.trim_end_matches('/')
    }
}

/// Whether `endpoint`'s host is a loopback address (`127.0.0.0/8`, `::1`, `localhost`): the
/// only place callers allow plain `http://` (a test server, or a gateway on this machine).
pub fn is_loopback_endpoint(endpoint: &str) -> bool {
    let rest = endpoint.split_once("://").map(|(_, r)| r).unwrap_or(endpoint);
    let auth = rest.split('/').next().unwrap_or("");
    let host = match auth.strip_prefix('[') {
        Some(h) => h.split(']').next().unwrap_or(h),
        None => auth.rsplit_once(':').map(|(h, _)| h).unwrap_or(auth),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback_endpoint;

    #[test]
    fn only_loopback_hosts_count_as_loopback_endpoints() {
        for yes in ["http://127.0.0.1:8333", "http://localhost", "http://[::1]:9000/", "http://127.9.9.9"] {
            assert!(is_loopback_endpoint(yes), "{yes}");
        }
        for no in ["http://10.0.0.1:8333", "http://s3.example.com", "http://[fe80::1]:80", "http://127.0.0.1.evil.com"]
        {
            assert!(!is_loopback_endpoint(no), "{no}");
        }
    }
}
