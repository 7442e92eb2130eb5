//! Listeners and connections: the HTTPS accept loop (TLS handshake with a deadline, then
//! HTTP/1.1 through hyper), the plain-HTTP redirect listener, certificate reloads, and graceful
//! shutdown.
//!
//! Idle clients cannot starve real ones (slowloris): a TLS handshake must finish within
//! [`HANDSHAKE_TIMEOUT`] and request headers arrive within [`HEADER_TIMEOUT`]; and when all
//! `max_connections` slots are taken, a new connection evicts the connection that has been
//! idle longest (in its handshake, or between requests, or still sending headers) instead of
//! waiting for a slot. A connection serving a request is never evicted. The accept loop never
//! blocks on the limit.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::tls::{self, CertPaths};
use crate::{ServerConfig, WebError};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a new connection waits for an evicted one to give back its slot.
const EVICT_WAIT: Duration = Duration::from_millis(500);

/// One open connection, as the eviction sees it.
struct Conn {
    /// Serving a request now: never evicted.
    busy: Arc<std::sync::atomic::AtomicBool>,
    /// When it last became idle (accepted, or finished a request).
    idle_since: Arc<Mutex<std::time::Instant>>,
    evict: Arc<tokio::sync::Notify>,
}

/// The open connections, for eviction when the limit is reached.
#[derive(Default)]
struct Conns {
    next: u64,
    open: std::collections::HashMap<u64, Conn>,
}

impl Conns {
    /// Asks the connection idle longest to close; false when every one is busy.
    fn evict_oldest_idle(&self) -> bool {
        let oldest = self
            .open
            .values()
            .filter(|c| !c.busy.load(std::sync::atomic::Ordering::Relaxed))
            .min_by_key(|c| *lock(&c.idle_since));
        match oldest {
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
    conns: Mutex<Conns>,
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

    /// Registers a new connection for eviction; returns its id and handles.
    fn register(&self) -> (u64, Conn) {
        let conn = Conn {
            busy: Arc::default(),
            idle_since: Arc::new(Mutex::new(std::time::Instant::now())),
            evict: Arc::default(),
        };
        let mut conns = lock(&self.conns);
        conns.next += 1;
        let id = conns.next;
        let handles = Conn { busy: conn.busy.clone(), idle_since: conn.idle_since.clone(), evict: conn.evict.clone() };
        conns.open.insert(id, conn);
        (id, handles)
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
        let shared =
            Arc::new(Shared { app, cfg, tls: Mutex::new((Arc::new(config), fingerprint)), conns: Mutex::default() });
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
        loop {
            let (stream, peer, redirect) = tokio::select! {
                _ = &mut shutdown => break,
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
                    if !lock(&shared.conns).evict_oldest_idle() {
                        continue; // every connection is serving a request: refuse this one
                    }
                    match tokio::time::timeout(EVICT_WAIT, limit.clone().acquire_owned()).await {
                        Ok(Ok(p)) => p,
                        _ => continue,
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
                            serve_redirect(stream, https_port, watcher).await
                        } else {
                            serve_tls(shared.clone(), stream, peer, watcher, conn.busy.clone(), conn.idle_since.clone()).await
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

fn http1() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).keep_alive(true);
    b
}

async fn serve_tls(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
    busy: Arc<std::sync::atomic::AtomicBool>,
    idle_since: Arc<Mutex<std::time::Instant>>,
) {
    let _ = stream.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls_config());
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        // Failed handshakes (scanners, browsers refusing the certificate) are not logged:
        // they are routine and would flood the log.
        Ok(Err(_)) | Err(_) => return,
    };
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (shared, busy, idle_since) = (shared.clone(), busy.clone(), idle_since.clone());
        async move {
            busy.store(true, std::sync::atomic::Ordering::Relaxed);
            let resp = crate::http::handle(shared, req, peer).await;
            *lock(&idle_since) = std::time::Instant::now();
            busy.store(false, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = http1().serve_connection(TokioIo::new(tls), svc);
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

async fn serve_redirect(stream: TcpStream, https_port: u16, watcher: hyper_util::server::graceful::Watcher) {
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
        Ok::<_, Infallible>(redirect(&req, https_port))
    });
    let conn = http1().keep_alive(false).serve_connection(TokioIo::new(stream), svc);
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
