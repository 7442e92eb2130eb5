//! The appliance's HTTPS REST API (`web/API.md`, `web/openapi.json`) and the web UI's static
//! files, over the engine's service API (`service::Appliance`); nothing here touches the
//! engine or the store directly.
//!
//! The binary builds the tokio runtime and calls [`Server::bind`] then [`Server::run`] inside
//! it (so it can tell its service manager it is ready in between); this crate spawns tasks on that runtime but never builds one,
//! reads no configuration path and handles no signal: shutdown is the future it is given.
//!
//! Request pipeline (`http.rs`), in order: route lookup (method + path pattern with `{params}`),
//! cross-site refusal (`Sec-Fetch-Site: cross-site`, or an `Origin`/`Referer` that is not
//! `https://<Host>`, on state-changing requests), authentication (the `rv_session` cookie or
//! `Authorization: Bearer <token>`), CSRF (`X-CSRF-Token` equal to the session's token on
//! POST/PUT/DELETE with a cookie session), the route's role, then the body: `Content-Length`
//! and the streamed length both capped (413), `application/json` required (415), nesting depth
//! capped before parsing (400). Handlers call the service on the blocking pool
//! (`spawn_blocking`); the service checks roles again. Every response carries the security
//! headers (CSP, HSTS, nosniff, no referrer, no framing).
//!
//! TLS (`tls.rs`): TLS 1.3 and 1.2 through rustls with the ring provider. The certificate and
//! key are the PEM files at `Appliance::tls_paths()`; [`ensure_certificate`] creates a
//! self-signed ECDSA P-256 pair there on first start. An upload through
//! `PUT /api/v1/settings/certificate` is checked, stored by the service, and used for every
//! connection accepted after it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

mod api;
mod http;
mod server;
mod tls;
mod ui;

pub use api::{routes, RouteInfo};
pub use server::Server;
pub use tls::{certificate_fingerprint, ensure_certificate, fingerprint_sha256, CertPaths};
pub use ui::embedded_files;

/// A sink for the server's operational messages (listening, certificate reloads, accept
/// errors). The binary passes one that writes to its log.
pub type LogFn = Arc<dyn Fn(&str) + Send + Sync>;

/// How the web server listens and what it accepts.
#[derive(Clone)]
pub struct ServerConfig {
    /// The HTTPS listener. Default 127.0.0.1:8443.
    pub https: SocketAddr,
    /// An optional plain-HTTP listener that answers every request with a 308 redirect to the
    /// HTTPS listener. Default none.
    pub http_redirect: Option<SocketAddr>,
    /// The version shown by `GET /api/v1/setup`. Default this crate's version.
    pub version: String,
    /// Largest request body accepted, in bytes (413 above it). Default 1 MiB.
    pub max_body: usize,
    /// Deepest JSON nesting accepted (400 above it). Default 32.
    pub max_json_depth: usize,
    /// Connections open at once. When all are taken, a new connection evicts the one idle
    /// longest; when every one is serving a request, the new one is closed (and counted in
    /// the log). Default 256.
    pub max_connections: usize,
    /// How long a client may take over each step of a request (slowloris defence).
    pub timeouts: Timeouts,
    /// Where operational messages go; none by default.
    pub log: Option<LogFn>,
}

/// Deadlines for a client's side of a connection. A connection that misses one is closed
/// (a body deadline is answered 408 first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From accept to a finished TLS handshake. Default 10 s.
    pub handshake: std::time::Duration,
    /// From the first byte of a request (or the end of the previous one) to its last header
    /// line. Default 20 s.
    pub header: std::time::Duration,
    /// From the headers to the last byte of the body. Default 30 s.
    pub body: std::time::Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: std::time::Duration::from_secs(10),
            header: std::time::Duration::from_secs(20),
            body: std::time::Duration::from_secs(30),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            https: SocketAddr::from(([127, 0, 0, 1], 8443)),
            http_redirect: None,
            version: env!("CARGO_PKG_VERSION").to_string(),
            max_body: 1 << 20,
            max_json_depth: 32,
            max_connections: 256,
            timeouts: Timeouts::default(),
            log: None,
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("https", &self.https)
            .field("http_redirect", &self.http_redirect)
            .field("version", &self.version)
            .field("max_body", &self.max_body)
            .field("max_json_depth", &self.max_json_depth)
            .field("max_connections", &self.max_connections)
            .field("log", &self.log.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

/// What can stop the web server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source} (is another rackvault or web server using the port, or is the address not on this machine?)")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be created, read or used.
    #[error("TLS certificate {}: {reason}", path.display())]
    Certificate {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
}
