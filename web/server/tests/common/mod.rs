//! Test harness: an appliance in a temp dir served on 127.0.0.1:0, and a minimal HTTPS/1.1
//! client over tokio-rustls that trusts the appliance's own certificate (read from the data
//! dir).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

pub const ADMIN: &str = "admin";
pub const PASSWORD: &str = "correct horse battery";

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub app: Arc<service::Appliance>,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub fingerprint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), webserver::WebError>>>,
}

impl Drop for TestServer {
    /// A job with immutability gives sealed packs the immutable attribute; clear it so that
    /// the temporary directory can be removed.
    fn drop(&mut self) {
        testkit::clear_immutable(self.dir.path());
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub tls_version: Option<rustls::ProtocolVersion>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A signed-in browser: cookie and CSRF token.
#[derive(Debug, Clone)]
pub struct Browser {
    pub cookie: String,
    pub csrf: String,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(service::ApplianceOptions::default()).await
    }

    /// An appliance in dev mode: the sample source and the emulated tape library.
    pub async fn start_dev() -> TestServer {
        TestServer::start_with(service::ApplianceOptions { dev: true, ..Default::default() }).await
    }

    pub async fn start_with(opts: service::ApplianceOptions) -> TestServer {
        TestServer::start_configured(opts, |_| {}).await
    }

    /// A server whose configuration `tune` adjusts (limits, timeouts, a log sink).
    pub async fn start_configured(
        opts: service::ApplianceOptions,
        tune: impl FnOnce(&mut webserver::ServerConfig),
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let opts = service::ApplianceOptions {
            runtime: opts.runtime.clone().or_else(|| Some(tokio::runtime::Handle::current())),
            ..opts
        };
        let app = service::Appliance::open(dir.path(), opts).unwrap();
        let mut cfg = webserver::ServerConfig {
            https: "127.0.0.1:0".parse().unwrap(),
            http_redirect: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        };
        tune(&mut cfg);
        let server = webserver::Server::bind(app.clone(), cfg).await.unwrap();
        let https = server.https_addr();
        let http = server.http_addr().unwrap();
        let fingerprint = server.fingerprint();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        TestServer { dir, app, https, http, fingerprint, stop: Some(tx), task: Some(task) }
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) -> Result<(), webserver::WebError> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }

    pub fn cert_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("tls/cert.pem")).unwrap()
    }

    pub fn host(&self) -> String {
        format!("localhost:{}", self.https.port())
    }

    pub fn client_config(&self, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<rustls::ClientConfig> {
        client_config(&self.cert_pem(), versions)
    }

    /// Sends one request on a new TLS 1.3/1.2 connection.
    pub async fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let cfg = self.client_config(&[&rustls::version::TLS13, &rustls::version::TLS12]);
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.host());
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding"))
            && (!body.is_empty() || method != "GET")
        {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(body);
        self.raw(cfg, &raw).await
    }

    /// Sends raw bytes over a new TLS connection with `cfg` and reads the answer.
    pub async fn raw(&self, cfg: Arc<rustls::ClientConfig>, raw: &[u8]) -> Resp {
        let tcp = TcpStream::connect(self.https).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake");
        let version = tls.get_ref().1.protocol_version();
        // The server may answer (413) before the whole body is sent and close: ignore write errors.
        let _ = tls.write_all(raw).await;
        let _ = tls.flush().await;
        let mut out = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        let mut r = parse_response(&out);
        r.tls_version = version;
        r
    }

    pub async fn get(&self, path: &str, b: &Browser) -> Resp {
        self.req("GET", path, &[("Cookie", &b.cookie)], b"").await
    }

    /// A state-changing JSON request the way the UI sends it.
    pub async fn send(&self, method: &str, path: &str, b: &Browser, body: &serde_json::Value) -> Resp {
        let body = if body.is_null() { Vec::new() } else { serde_json::to_vec(body).unwrap() };
        let origin = format!("https://{}", self.host());
        self.req(
            method,
            path,
            &[
                ("Cookie", &b.cookie),
                ("X-CSRF-Token", &b.csrf),
                ("Origin", &origin),
                ("Content-Type", "application/json"),
                ("Sec-Fetch-Site", "same-origin"),
            ],
            &body,
        )
        .await
    }

    pub async fn login(&self, user: &str, password: &str) -> Resp {
        let body = serde_json::json!({ "user": user, "password": password }).to_string();
        self.req("POST", "/api/v1/login", &[("Content-Type", "application/json")], body.as_bytes()).await
    }

    pub async fn login_ok(&self, user: &str, password: &str) -> Browser {
        let r = self.login(user, password).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let set = r.header("set-cookie").expect("Set-Cookie").to_string();
        let cookie = set.split(';').next().unwrap().to_string();
        Browser { cookie, csrf: r.json()["csrf"].as_str().unwrap().to_string() }
    }

    /// Sets the appliance up with the first admin and signs in.
    pub async fn admin(&self) -> Browser {
        let body =
            serde_json::json!({ "user": ADMIN, "password": PASSWORD, "setup_code": self.setup_code() }).to_string();
        let r = self.req("POST", "/api/v1/setup", &[("Content-Type", "application/json")], body.as_bytes()).await;
        assert_eq!(r.status, 204, "{}", r.text());
        self.login_ok(ADMIN, PASSWORD).await
    }

    /// The one-time setup code the appliance printed (and keeps in its data directory).
    pub fn setup_code(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("setup-code"))
            .expect("a setup code before setup")
            .trim()
            .to_string()
    }

    /// An API token with the `metrics` role, as an `Authorization` header value.
    pub async fn metrics_bearer(&self, admin: &Browser) -> String {
        self.bearer(admin, "prometheus", "metrics").await
    }

    /// A new API token named `name` with `role`, as an `Authorization` header value.
    pub async fn bearer(&self, admin: &Browser, name: &str, role: &str) -> String {
        let r = self.send("POST", "/api/v1/tokens", admin, &serde_json::json!({"name": name, "role": role})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        format!("Bearer {}", r.json()["token"].as_str().expect("the token secret"))
    }

    /// Creates a user with `role` and signs in as them.
    pub async fn user(&self, admin: &Browser, name: &str, role: &str) -> Browser {
        let r = self
            .send(
                "POST",
                "/api/v1/users",
                admin,
                &serde_json::json!({ "name": name, "password": PASSWORD, "role": role }),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        self.login_ok(name, PASSWORD).await
    }
}

pub fn client_config(
    cert_pem: &[u8],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

pub fn parse_response(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[end + 4..].to_vec();
    if let Some(len) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
        body.truncate(len.1.parse().unwrap());
    }
    Resp { status, headers, body, tls_version: None }
}

/// Sends raw bytes over plain TCP (the redirect listener).
pub async fn plain(addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    parse_response(&out)
}
