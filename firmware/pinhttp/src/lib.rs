//! `pinhttp`: a small blocking HTTPS/1.1 client for one purpose: one appliance talking to
//! another (replication). It knows nothing of what travels.
//!
//! ## What it guarantees
//! - **The peer is the one the admin confirmed.** There is no certificate authority between
//!   two appliances: the server's certificate is pinned by the SHA-256 fingerprint of its DER
//!   (the form both appliances print and show in their UI). A handshake with any other
//!   certificate fails with [`HttpError::Fingerprint`] before a byte of the request is sent.
//!   The peer must still prove it holds the certificate's key (the TLS signature is checked
//!   with rustls' own algorithms). [`fetch_fingerprint`] reads a server's fingerprint for
//!   trust on first use; the caller shows it to the admin to confirm.
//! - **Bounded.** Every read and write has a deadline ([`Client::timeout`]); an answer's
//!   head is at most 64 KiB and its body at most [`MAX_BODY`]; a malformed answer is an
//!   error, never a panic.
//! - **Errors carry a kind.** [`HttpError::is_transient`]: a refused or cut connection and a
//!   timeout may succeed when tried again; a wrong fingerprint or a malformed answer will not.
//!   The connection is dropped after any error and opened again by the next request.
//! - **Secrets.** The bearer token is never in `Debug` output or in an error.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

/// Largest answer body read.
pub const MAX_BODY: usize = 80 << 20;
const MAX_HEAD: usize = 64 << 10;

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {addr}: {source}; check the address and that the appliance there is running")]
    Connect { addr: String, source: std::io::Error },
    #[error("{addr} presented a certificate with SHA-256 fingerprint {got}, not the pinned {expected}; if the remote's certificate was replaced on purpose, confirm the new fingerprint in its settings")]
    Fingerprint { addr: String, expected: String, got: String },
    #[error("TLS with {addr} failed: {detail}")]
    Tls { addr: String, detail: String },
    #[error("{addr} did not answer within {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("the connection to {addr} broke: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("{addr} sent a malformed answer: {detail}")]
    Protocol { addr: String, detail: String },
    #[error("{0}")]
    Invalid(String),
}

impl HttpError {
    /// Whether trying again later may succeed as it is.
    pub fn is_transient(&self) -> bool {
        matches!(self, HttpError::Connect { .. } | HttpError::Timeout { .. } | HttpError::Io { .. })
    }
}

/// SHA-256 over a certificate's DER, as upper-case hex pairs joined by ':'.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Normalises a fingerprint as typed or pasted (any case, with or without ':' or spaces)
/// to the canonical form; `None` if it is not 32 bytes of hex.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| !matches!(c, ':' | ' ' | '-')).collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let up = hex.to_ascii_uppercase();
    Some(up.as_bytes().chunks(2).map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>().join(":"))
}

/// Accepts exactly the pinned certificate (or, without a pin, any, recording what it saw).
#[derive(Debug)]
struct Pinned {
    expected: Option<String>,
    seen: Mutex<Option<String>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint_sha256(end_entity.as_ref());
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(got.clone());
        match &self.expected {
            Some(want) if *want != got => Err(rustls::Error::General("certificate fingerprint mismatch".into())),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    /// `Set-Cookie` values, as sent (a session's cookie).
    pub set_cookies: Vec<String>,
    pub body: Vec<u8>,
}

/// A client for one server (`host:port`), with one keep-alive connection.
pub struct Client {
    addr: String,
    fingerprint: String,
    token: Option<String>,
    /// Sent with every request (a session's cookie and CSRF token); never in `Debug`.
    headers: Vec<(String, String)>,
    timeout: Duration,
    conn: Option<StreamOwned<ClientConnection, TcpStream>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("fingerprint", &self.fingerprint)
            .field("token", &self.token.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

/// Splits `https://host:port[/]` (or `host:port`) into `host:port`.
pub fn parse_base(url: &str) -> Result<String, HttpError> {
    let rest = url.strip_prefix("https://").unwrap_or(url).trim_end_matches('/');
    let ok = !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
        && rest.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(rest.to_string())
    } else {
        Err(HttpError::Invalid(format!("{url:?} is not an appliance address: use https://HOST:PORT")))
    }
}

fn tls_config(expected: Option<String>) -> (Arc<rustls::ClientConfig>, Arc<Pinned>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pinned = Arc::new(Pinned { expected, seen: Mutex::new(None), provider: provider.clone() });
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.dangerous().with_custom_certificate_verifier(pinned.clone()).with_no_client_auth());
    // The ring provider supports the safe defaults; should that ever fail, fall back to the
    // process default, which pins the same way.
    let cfg = cfg.unwrap_or_else(|_| {
        rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(pinned.clone())
            .with_no_client_auth()
    });
    (Arc::new(cfg), pinned)
}

fn connect(
    addr: &str,
    expected: Option<String>,
    timeout: Duration,
) -> Result<(StreamOwned<ClientConnection, TcpStream>, Arc<Pinned>), HttpError> {
    let want = expected.clone();
    let (cfg, pinned) = tls_config(expected);
    let sock = addr
        .to_socket_addrs()
        .map_err(|source| HttpError::Connect { addr: addr.into(), source })?
        .next()
        .ok_or_else(|| HttpError::Connect { addr: addr.into(), source: std::io::ErrorKind::NotFound.into() })?;
    let tcp = TcpStream::connect_timeout(&sock, timeout)
        .map_err(|source| HttpError::Connect { addr: addr.into(), source })?;
    let _ = tcp.set_nodelay(true);
    tcp.set_read_timeout(Some(timeout)).map_err(|source| HttpError::Io { addr: addr.into(), source })?;
    tcp.set_write_timeout(Some(timeout)).map_err(|source| HttpError::Io { addr: addr.into(), source })?;
    // The pin is what is checked; the name only goes into SNI.
    let host = addr.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or(addr);
    let name = ServerName::try_from(host.to_string())
        .or_else(|_| ServerName::try_from("localhost".to_string()))
        .map_err(|e| HttpError::Invalid(format!("{host}: {e}")))?;
    let conn =
        ClientConnection::new(cfg, name).map_err(|e| HttpError::Tls { addr: addr.into(), detail: e.to_string() })?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
            let seen = pinned.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
            return Err(match (want, seen) {
                (Some(expected), Some(got)) if expected != got => {
                    HttpError::Fingerprint { addr: addr.into(), expected, got }
                }
                _ => io_error(addr, e, timeout),
            });
        }
    }
    Ok((stream, pinned))
}

fn io_error(addr: &str, e: std::io::Error, timeout: Duration) -> HttpError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            HttpError::Timeout { addr: addr.into(), secs: timeout.as_secs().max(1) }
        }
        std::io::ErrorKind::InvalidData => HttpError::Tls { addr: addr.into(), detail: e.to_string() },
        _ => HttpError::Io { addr: addr.into(), source: e },
    }
}

/// Connects to `url` (`https://host:port`) and returns the SHA-256 fingerprint of the
/// certificate it presents, without trusting it: for the admin to compare and confirm.
pub fn fetch_fingerprint(url: &str, timeout: Duration) -> Result<String, HttpError> {
    let addr = parse_base(url)?;
    let (_, pinned) = connect(&addr, None, timeout)?;
    let seen = pinned.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    seen.ok_or_else(|| HttpError::Tls { addr, detail: "the server presented no certificate".into() })
}

impl Client {
    /// A client for `url` (`https://host:port`) that trusts only the certificate with
    /// `fingerprint` and sends `token` as a bearer token.
    pub fn new(url: &str, fingerprint: &str, token: Option<String>) -> Result<Client, HttpError> {
        let addr = parse_base(url)?;
        let fingerprint = normalize_fingerprint(fingerprint).ok_or_else(|| {
            HttpError::Invalid(format!("{fingerprint:?} is not a SHA-256 fingerprint (32 hex bytes)"))
        })?;
        Ok(Client { addr, fingerprint, token, headers: Vec::new(), timeout: Duration::from_secs(60), conn: None })
    }

    /// Sends `name: value` with every request (a session cookie, a CSRF token). Refused when
    /// either holds a line break or the name is not a token.
    pub fn header(mut self, name: &str, value: &str) -> Result<Client, HttpError> {
        let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !name_ok || value.contains(['\r', '\n']) {
            return Err(HttpError::Invalid(format!("bad header {name:?}")));
        }
        self.headers.push((name.to_string(), value.to_string()));
        Ok(self)
    }

    /// Sets the deadline of every connect, read and write.
    pub fn timeout(mut self, t: Duration) -> Client {
        self.timeout = t;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one request and reads its answer. On any error the connection is closed; the
    /// next request opens a new one.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let r = self.try_request(method, path, content_type, body);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Response, HttpError> {
        if !path.starts_with('/') || path.contains([' ', '\r', '\n']) || method.contains([' ', '\r', '\n']) {
            return Err(HttpError::Invalid(format!("bad request target {method} {path}")));
        }
        let addr = self.addr.clone();
        let timeout = self.timeout;
        if self.conn.is_none() {
            self.conn = Some(connect(&addr, Some(self.fingerprint.clone()), timeout)?.0);
        }
        let Some(stream) = self.conn.as_mut() else { return Err(HttpError::Invalid("no connection".into())) };
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
        if !content_type.is_empty() {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).map_err(|e| io_error(&addr, e, timeout))?;
        stream.write_all(body).map_err(|e| io_error(&addr, e, timeout))?;
        stream.flush().map_err(|e| io_error(&addr, e, timeout))?;
        let (resp, keep) = read_response(stream, &addr, timeout)?;
        if !keep {
            self.conn = None;
        }
        Ok(resp)
    }
}

/// Parses a complete answer (head and body) as [`Client::request`] reads one: for the fuzz
/// target and tests.
pub fn parse_response(bytes: &[u8]) -> Result<Response, HttpError> {
    read_response(&mut &bytes[..], "peer", Duration::from_secs(1)).map(|(r, _)| r)
}

fn read_response<R: Read>(r: &mut R, addr: &str, timeout: Duration) -> Result<(Response, bool), HttpError> {
    let bad = |detail: String| HttpError::Protocol { addr: addr.into(), detail };
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad(format!("an answer head longer than {MAX_HEAD} bytes")));
        }
        let n = r.read(&mut chunk).map_err(|e| io_error(addr, e, timeout))?;
        if n == 0 {
            return Err(HttpError::Io { addr: addr.into(), source: std::io::ErrorKind::UnexpectedEof.into() });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("an answer head that is not text".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("status line {status_line:?}")));
    }
    let status: u16 = code
        .parse()
        .ok()
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| bad(format!("status line {status_line:?}")))?;
    let (mut len, mut content_type, mut keep) = (None, String::new(), version == "HTTP/1.1");
    let mut set_cookies = Vec::new();
    for line in lines {
        let Some((k, v)) = line.split_once(':') else { return Err(bad(format!("header line {line:?}"))) };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                len = Some(v.parse::<usize>().map_err(|_| bad(format!("Content-Length {v:?}")))?);
            }
            "content-type" => content_type = v.to_string(),
            "set-cookie" if set_cookies.len() < 16 => set_cookies.push(v.to_string()),
            "connection" if v.eq_ignore_ascii_case("close") => keep = false,
            "transfer-encoding" => {
                return Err(bad(format!("Transfer-Encoding {v} (only Content-Length is understood)")))
            }
            _ => {}
        }
    }
    let mut body = buf[head_end + 4..].to_vec();
    // 1xx, 204 and 304 answers have no body whatever their headers say (RFC 9112, 6.3): read
    // past the head and a kept-alive connection would wait for a close that never comes.
    if (100..200).contains(&status) || status == 204 || status == 304 {
        if !body.is_empty() {
            return Err(bad(format!("a {status} answer with a body")));
        }
        return Ok((Response { status, content_type, set_cookies, body }, keep));
    }
    match len {
        Some(n) if n > MAX_BODY => return Err(bad(format!("an answer of {n} bytes (more than {MAX_BODY})"))),
        Some(n) => {
            if body.len() > n {
                return Err(bad("more bytes than its Content-Length".into()));
            }
            let mut rest = vec![0u8; n - body.len()];
            r.read_exact(&mut rest).map_err(|e| io_error(addr, e, timeout))?;
            body.extend_from_slice(&rest);
        }
        None => {
            keep = false;
            r.take((MAX_BODY + 1) as u64).read_to_end(&mut body).map_err(|e| io_error(addr, e, timeout))?;
            if body.len() > MAX_BODY {
                return Err(bad(format!("an answer of more than {MAX_BODY} bytes")));
            }
        }
    }
    Ok((Response { status, content_type, set_cookies, body }, keep))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_204_answer_without_content_length_ends_at_its_head_and_keeps_the_connection() {
        let mut wire: &[u8] = b"HTTP/1.1 204 No Content\r\nx-a: b\r\n\r\n";
        let (r, keep) = read_response(&mut wire, "t", Duration::from_secs(1)).expect("a 204 answer");
        assert_eq!((r.status, r.body.len(), keep), (204, 0, true));
        let mut bodied: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\nextra";
        assert!(read_response(&mut bodied, "t", Duration::from_secs(1)).is_err(), "a 204 with a body is refused");
    }

    #[test]
    fn fingerprints_are_normalised_from_any_common_spelling() {
        let canon = fingerprint_sha256(b"x");
        assert_eq!(normalize_fingerprint(&canon.to_lowercase()).as_deref(), Some(canon.as_str()));
        assert_eq!(normalize_fingerprint(&canon.replace(':', "")).as_deref(), Some(canon.as_str()));
        assert_eq!(normalize_fingerprint("AB:CD"), None);
        assert_eq!(normalize_fingerprint(&"Z".repeat(64)), None);
    }

    #[test]
    fn only_https_host_port_addresses_are_accepted() {
        assert_eq!(parse_base("https://127.0.0.1:8443/").unwrap(), "127.0.0.1:8443");
        assert_eq!(parse_base("backup.example:443").unwrap(), "backup.example:443");
        for bad in ["https://x", "https://:1", "https://a:0", "https://a:1/path", "https://u@a:1", ""] {
            assert!(parse_base(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostile_answers_are_errors_not_panics_or_huge_allocations() {
        let addr = "peer:1";
        let t = Duration::from_secs(1);
        let cases: &[&[u8]] = &[
            b"",
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0\r\n\r\n",
            b"HTTP/1.1 999 Bad\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        ];
        for c in cases {
            let r = read_response(&mut &c[..], addr, t);
            assert!(r.is_err(), "{:?} -> {r:?}", String::from_utf8_lossy(c));
        }
        let long_head = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &vec![b'a'; MAX_HEAD + 10]].concat();
        assert!(read_response(&mut &long_head[..], addr, t).is_err());
        let (ok, keep) = read_response(
            &mut &b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"[..],
            addr,
            t,
        )
        .unwrap();
        assert_eq!(
            (ok.status, ok.content_type.as_str(), ok.body.as_slice(), keep),
            (201, "application/json", &b"{}"[..], true)
        );
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let c = Client::new("https://127.0.0.1:1", &fingerprint_sha256(b"x"), Some("rvt_secret".into())).unwrap();
        assert!(!format!("{c:?}").contains("rvt_secret"));
    }
}
