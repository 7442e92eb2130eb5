//! Listeners and connections: the HTTPS accept loop (TLS handshake with a deadline, then
//! HTTP/1.1 through hyper), the plain-HTTP redirect listener, certificate reloads, and graceful
//! shutdown.
//!
//! Idle clients cannot starve real ones (slowloris): a TLS handshake must finish within
//! `timeouts.handshake`, request headers arrive within `timeouts.header` and a body within
//! `timeouts.body` (see [`crate::Timeouts`]); and when all `max_connections` slots are taken,
//! a new connection evicts the connection whose socket has been silent longest (no byte read
//! or written: in its handshake, between requests, or a client that stopped reading its
//! answer) instead of waiting for a slot. A connection whose request is being handled is
//! never evicted, nor is one that is sending or receiving bytes: a request that has just
//! started, or an answer still being written, counts as activity. The accept loop never
//! blocks on the limit; connections refused because every slot is serving a request are
//! counted and logged once a minute.
//!
//! The self-signed certificate is renewed when it has less than 30 days left, at start and
//! by a check every 12 hours; an uploaded certificate is never replaced, only warned about
//! (see [`tls::check_renewal`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::tls::{self, CertPaths};
use crate::{ServerConfig, WebError};

/// How long a new connection waits for an evicted one to give back its slot.
const EVICT_WAIT: Duration = Duration::from_millis(500);
/// How often the certificate's remaining lifetime is checked.
const CERT_CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);

/// One open connection, as the eviction sees it.
#[derive(Clone)]
struct Conn {
    /// Handling a request now: never evicted.
    busy: Arc<AtomicBool>,
    /// When a byte last moved on its socket, in milliseconds since the server started.
    last_io: Arc<AtomicU64>,
    evict: Arc<tokio::sync::Notify>,
}

/// The open connections, for eviction when the limit is reached.
#[derive(Default)]
struct Conns {
    next: u64,
    open: std::collections::HashMap<u64, Conn>,
}

impl Conns {
    /// Asks the connection silent longest to close; false when every one is busy. The chosen
    /// one leaves the table at once, so a burst of new connections never picks it twice
    /// (each eviction frees its own slot).
    fn evict_oldest_idle(&mut self) -> bool {
        let oldest = self
            .open
            .iter()
            .filter(|(_, c)| !c.busy.load(Ordering::Relaxed))
            .min_by_key(|(_, c)| c.last_io.load(Ordering::Relaxed))
            .map(|(id, _)| *id);
        match oldest.and_then(|id| self.open.remove(&id)) {
            Some(c) => {
                c.evict.notify_one();
                true
            }
            None => false,
        }
    }
}
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared by every connection.
pub(crate) struct Shared {
    pub(crate) app: Arc<service::Appliance>,
    pub(crate) cfg: ServerConfig,
    tls: Mutex<(Arc<rustls::ServerConfig>, String)>,
    paths: CertPaths,
    conns: Mutex<Conns>,
    /// The clock of `Conn::last_io`.
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn log(&self, msg: &str) {
        if let Some(log) = &self.cfg.log {
            log(msg);
        }
    }

    /// The SHA-256 fingerprint of the certificate in use.
    pub(crate) fn fingerprint(&self) -> String {
        lock(&self.tls).1.clone()
    }

    fn tls_config(&self) -> Arc<rustls::ServerConfig> {
        lock(&self.tls).0.clone()
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Registers a new connection for eviction; returns its id and handles.
    fn register(&self) -> (u64, Conn) {
        let conn =
            Conn { busy: Arc::default(), last_io: Arc::new(AtomicU64::new(self.now_ms())), evict: Arc::default() };
        let mut conns = lock(&self.conns);
        conns.next += 1;
        let id = conns.next;
        conns.open.insert(id, conn.clone());
        (id, conn)
    }

    /// Renews the self-signed certificate when it is due and installs it; warns about an
    /// uploaded one that is running out.
    async fn check_certificate(self: &Arc<Self>) {
        let paths = self.paths.clone();
        let checked =
            tokio::task::spawn_blocking(move || tls::check_renewal(&paths, std::time::SystemTime::now())).await;
        match checked {
            Ok(Ok(tls::Renewal::Renewed)) => match tls::load(&self.paths).and_then(|id| {
                let fp = tls::fingerprint_sha256(&id.certs[0]);
                tls::build_server_config(&id)
                    .map(|c| (c, fp))
                    .map_err(|reason| WebError::Certificate { path: self.paths.cert.clone(), reason })
            }) {
                Ok((config, fp)) => {
                    self.log("the self-signed certificate had less than 30 days left and was renewed");
                    self.install(config, fp);
                }
                Err(e) => self.log(&format!("the renewed certificate cannot be loaded: {e}")),
            },
            Ok(Ok(tls::Renewal::Warn(why))) => self.log(&why),
            Ok(Ok(tls::Renewal::Fine)) => {}
            Ok(Err(e)) => self.log(&format!("checking the certificate's lifetime failed: {e}")),
            Err(e) => self.log(&format!("checking the certificate's lifetime failed: {e}")),
        }
    }

    /// Installs a new certificate for connections accepted from now on.
    pub(crate) fn install(&self, config: rustls::ServerConfig, fingerprint: String) {
        *lock(&self.tls) = (Arc::new(config), fingerprint.clone());
        self.log(&format!("TLS certificate replaced; new connections use SHA-256 fingerprint {fingerprint}"));
    }
}

/// A bound web server, not yet serving: [`Server::run`] serves it.
pub struct Server {
    shared: Arc<Shared>,
    https: TcpListener,
    http: Option<TcpListener>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("https", &self.https_addr()).field("http", &self.http_addr()).finish()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, WebError> {
    TcpListener::bind(addr).await.map_err(|source| WebError::Bind { addr, source })
}

impl Server {
    /// Makes sure a certificate exists (see [`crate::ensure_certificate`]), loads it, and binds
    /// the listeners. Port 0 binds a free port; [`Server::https_addr`] tells which.
    pub async fn bind(app: Arc<service::Appliance>, cfg: ServerConfig) -> Result<Server, WebError> {
        let (cert, key) = app.tls_paths();
        let paths = CertPaths { cert, key };
        let fingerprint = {
            let p = paths.clone();
            tokio::task::spawn_blocking(move || tls::ensure_certificate(&p)).await.unwrap_or_else(|e| {
                Err(WebError::Certificate {
                    path: paths.cert.clone(),
                    reason: format!("certificate set-up failed: {e}"),
                })
            })?
        };
        let id = tls::load(&paths)?;
        let config = tls::build_server_config(&id)
            .map_err(|reason| WebError::Certificate { path: paths.cert.clone(), reason })?;
        let https = bind(cfg.https).await?;
        let http = match cfg.http_redirect {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let shared = Arc::new(Shared {
            app,
            cfg,
            tls: Mutex::new((Arc::new(config), fingerprint)),
            paths,
            conns: Mutex::default(),
            started: Instant::now(),
        });
        Ok(Server { shared, https, http })
    }

    /// The address the HTTPS listener is bound to.
    pub fn https_addr(&self) -> SocketAddr {
        self.https.local_addr().unwrap_or(self.shared.cfg.https)
    }

    /// The address the redirect listener is bound to, if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|l| l.local_addr().ok()).unwrap_or(self.shared.cfg.http_redirect)
    }

    /// The SHA-256 fingerprint of the certificate in use.
    pub fn fingerprint(&self) -> String {
        self.shared.fingerprint()
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets open connections finish
    /// their requests (at most 10 s).
    pub async fn run<F>(self, shutdown: F) -> Result<(), WebError>
    where
        F: Future + Send,
    {
        let Server { shared, https, http } = self;
        shared.log(&format!(
            "serving https://{} (certificate SHA-256 {}){}",
            https.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            shared.fingerprint(),
            http.as_ref()
                .and_then(|l| l.local_addr().ok())
                .map(|a| format!(", redirecting http://{a}"))
                .unwrap_or_default()
        ));
        let graceful = GracefulShutdown::new();
        let limit = Arc::new(Semaphore::new(shared.cfg.max_connections.max(1)));
        let https_port = https.local_addr().map(|a| a.port()).unwrap_or(shared.cfg.https.port());
        let shutdown = std::pin::pin!(shutdown);
        let mut shutdown = shutdown;
        let mut cert_check = tokio::time::interval_at(tokio::time::Instant::now() + CERT_CHECK_EVERY, CERT_CHECK_EVERY);
        let mut refused = Refusals::default();
        // At start too: an uploaded certificate that runs out is reported in the log.
        shared.check_certificate().await;
        loop {
            let (stream, peer, redirect) = tokio::select! {
                _ = &mut shutdown => break,
                _ = cert_check.tick() => { shared.check_certificate().await; continue; }
                r = https.accept() => match r {
                    Ok((stream, peer)) => (stream, peer, false),
                    Err(e) => { accept_failed(&shared, &e).await; continue; }
                },
                r = accept_opt(http.as_ref()) => match r {
                    Ok((stream, peer)) => (stream, peer, true),
                    Err(e) => { accept_failed(&shared, &e).await; continue; }
                },
            };
            // A slot, taking one from the longest-idle connection when all are in use.
            let permit = match limit.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    let evicted = lock(&shared.conns).evict_oldest_idle();
                    let permit = match evicted {
                        true => tokio::time::timeout(EVICT_WAIT, limit.clone().acquire_owned())
                            .await
                            .ok()
                            .and_then(|p| p.ok()),
                        false => None,
                    };
                    match permit {
                        Some(p) => p,
                        None => {
                            // Every connection is handling a request: refuse this one.
                            refused.count(&shared, peer);
                            continue;
                        }
                    }
                }
            };
            let watcher = graceful.watcher();
            let shared = shared.clone();
            tokio::spawn(async move {
                let (id, conn) = shared.register();
                tokio::select! {
                    _ = conn.evict.notified() => {}
                    _ = async {
                        if redirect {
                            serve_redirect(stream, https_port, watcher, shared.cfg.timeouts.header).await
                        } else {
                            serve_tls(shared.clone(), stream, peer, watcher, conn.clone()).await
                        }
                    } => {}
                }
                lock(&shared.conns).open.remove(&id);
                drop(permit);
            });
        }
        drop(https);
        drop(http);
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(DRAIN_TIMEOUT) => shared.log("connections still open after 10 s; closing them"),
        }
        shared.log("web server stopped");
        Ok(())
    }
}

async fn accept_opt(l: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn accept_failed(shared: &Shared, e: &std::io::Error) {
    // EMFILE and the like: back off instead of spinning.
    shared.log(&format!("accept failed: {e}"));
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Connections refused because every slot was handling a request, logged at most once a
/// minute so that a flood cannot flood the log too.
#[derive(Default)]
struct Refusals {
    since_log: u64,
    last_peer: Option<SocketAddr>,
    logged_at: Option<Instant>,
}

impl Refusals {
    fn count(&mut self, shared: &Shared, peer: SocketAddr) {
        self.since_log += 1;
        self.last_peer = Some(peer);
        if self.logged_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            shared.log(&format!(
                "connection limit reached ({} connections, every one handling a request): refused {} connection(s) since the last report, the latest from {}; raise max_connections if this is real load",
                shared.cfg.max_connections,
                self.since_log,
                peer
            ));
            self.since_log = 0;
            self.logged_at = Some(Instant::now());
        }
    }
}

fn http1(header_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
    b
}

/// A socket that notes when a byte last moved through it, for the eviction.
struct Watched<T> {
    inner: T,
    last_io: Arc<AtomicU64>,
    shared: Arc<Shared>,
}

impl<T> Watched<T> {
    fn touch(&self) {
        self.last_io.store(self.shared.now_ms(), Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn serve_tls(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
    conn: Conn,
) {
    let _ = stream.set_nodelay(true);
    let stream = Watched { inner: stream, last_io: conn.last_io.clone(), shared: shared.clone() };
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls_config());
    let timeouts = shared.cfg.timeouts;
    let tls = match tokio::time::timeout(timeouts.handshake, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        // Failed handshakes (scanners, browsers refusing the certificate) are not logged:
        // they are routine and would flood the log.
        Ok(Err(_)) | Err(_) => return,
    };
    let busy = conn.busy;
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (shared, busy) = (shared.clone(), busy.clone());
        async move {
            busy.store(true, Ordering::Relaxed);
            let resp = crate::http::handle(shared, req, peer).await;
            // From here the answer is being written: socket activity protects it.
            busy.store(false, Ordering::Relaxed);
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = http1(timeouts.header).serve_connection(TokioIo::new(tls), svc);
    let _ = watcher.watch(conn).await;
}

/// The host part of a Host header value, if it is a plausible host name or address.
pub(crate) fn host_only(host: &str) -> Option<&str> {
    let valid = !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if !valid {
        return None;
    }
    if let Some(rest) = host.strip_prefix('[') {
        let end = rest.find(']')?;
        return Some(&host[..end + 2]);
    }
    Some(host.split(':').next().unwrap_or(host))
}

fn redirect(req: &Request<Incoming>, https_port: u16) -> Response<Full<Bytes>> {
    let host = req.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()).and_then(host_only);
    let mut resp = Response::new(Full::new(Bytes::new()));
    match host {
        Some(host) => {
            let port = if https_port == 443 { String::new() } else { format!(":{https_port}") };
            let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
            *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
            if let Ok(v) = format!("https://{host}{port}{path}").parse() {
                resp.headers_mut().insert(hyper::header::LOCATION, v);
            }
        }
        None => {
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            *resp.body_mut() = Full::new(Bytes::from_static(b"missing or invalid Host header; use https://\n"));
        }
    }
    resp.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
    resp
}

async fn serve_redirect(
    stream: TcpStream,
    https_port: u16,
    watcher: hyper_util::server::graceful::Watcher,
    header_timeout: Duration,
) {
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
        Ok::<_, Infallible>(redirect(&req, https_port))
    });
    let conn = http1(header_timeout).keep_alive(false).serve_connection(TokioIo::new(stream), svc);
    let _ = watcher.watch(conn).await;
}

#[cfg(test)]
mod tests {
    use super::host_only;

    #[test]
    fn host_only_strips_ports_and_refuses_junk() {
        assert_eq!(host_only("example.org:80"), Some("example.org"));
        assert_eq!(host_only("10.0.0.5"), Some("10.0.0.5"));
        assert_eq!(host_only("[::1]:8080"), Some("[::1]"));
        assert_eq!(host_only("evil\r\nx"), None);
        assert_eq!(host_only("a/b"), None);
        assert_eq!(host_only(""), None);
    }
}
