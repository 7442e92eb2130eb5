//! Blocking TCP and TLS with a deadline per delivery attempt, and a bounded line reader for
//! untrusted servers.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::NotifyError;

/// A TCP stream whose every read and write ends by `deadline`.
#[derive(Debug)]
pub(super) struct TimedStream {
    tcp: TcpStream,
    deadline: Instant,
}

impl TimedStream {
    fn left(&self) -> std::io::Result<std::time::Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the attempt's deadline passed"))
        } else {
            Ok(left)
        }
    }
}

impl Read for TimedStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.read(buf)
    }
}

impl Write for TimedStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_write_timeout(Some(left))?;
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// Connects to `host:port`, trying each address until `deadline`.
pub(super) fn connect(host: &str, port: u16, target: &str, deadline: Instant) -> Result<TimedStream, NotifyError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<_> = (bare, port)
        .to_socket_addrs()
        .map_err(|e| NotifyError::Connect { target: target.into(), source: e })?
        .collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host} has no address"));
    for a in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NotifyError::Timeout { target: target.into() });
        }
        match TcpStream::connect_timeout(&a, left) {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return Ok(TimedStream { tcp, deadline });
            }
            Err(e) => last = e,
        }
    }
    if last.kind() == std::io::ErrorKind::TimedOut {
        return Err(NotifyError::Timeout { target: target.into() });
    }
    Err(NotifyError::Connect { target: target.into(), source: last })
}

/// The certificates of a PEM text (an extra CA for an internal server).
pub(super) fn parse_ca_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate ({e}); paste the CA certificate (-----BEGIN CERTIFICATE-----)"))?;
    if certs.is_empty() {
        return Err("no certificate in it; paste the CA certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    let mut store = RootCertStore::empty();
    for c in &certs {
        store.add(c.clone()).map_err(|e| format!("a certificate cannot be used as a CA: {e}"))?;
    }
    Ok(certs)
}

/// The system's CA certificates (read once).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

fn client_config(ca_pem: Option<&str>, target: &str) -> Result<Arc<ClientConfig>, NotifyError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(pem) = ca_pem {
        for c in parse_ca_pem(pem).map_err(|e| NotifyError::Config(format!("ca_pem of {target}: {e}")))? {
            roots.add(c).map_err(|e| NotifyError::Config(format!("ca_pem of {target}: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(NotifyError::Config(format!(
            "no CA certificate to check {target} with: install the system's CA certificates or set ca_pem"
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NotifyError::Config(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Explains a TLS failure; certificate problems are permanent.
pub(super) fn tls_error(target: &str, host: &str, e: &rustls::Error) -> NotifyError {
    use rustls::CertificateError as C;
    let reason = match e {
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            format!("the server's certificate is not valid for {host}; use the name the certificate was issued for")
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => "the server's certificate is not signed by a trusted \
             CA; for an internal CA, paste its certificate into ca_pem"
            .into(),
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the server's certificate has expired; renew it on the server".into()
        }
        rustls::Error::InvalidCertificate(c) => format!("the server's certificate was refused ({c:?})"),
        other => format!("{other}; check that the server speaks TLS on this port"),
    };
    NotifyError::Tls { target: target.into(), reason }
}

/// An I/O error of an established connection: TLS errors inside are permanent, timeouts
/// and resets transient.
pub(super) fn io_error(target: &str, host: &str, during: &'static str, e: std::io::Error) -> NotifyError {
    if let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return tls_error(target, host, t);
    }
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => NotifyError::Timeout { target: target.into() },
        _ => NotifyError::Io { target: target.into(), during, source: e },
    }
}

/// Wraps `tcp` in TLS for `host` and completes the handshake.
pub(super) fn tls(
    mut tcp: TimedStream,
    host: &str,
    ca_pem: Option<&str>,
    target: &str,
) -> Result<StreamOwned<ClientConnection, TimedStream>, NotifyError> {
    let cfg = client_config(ca_pem, target)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(bare.to_string())
        .map_err(|_| NotifyError::Config(format!("{host} is not a valid host name for TLS")))?;
    let mut conn = ClientConnection::new(cfg, name).map_err(|e| tls_error(target, host, &e))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| io_error(target, host, "in the TLS handshake", e))?;
    }
    Ok(StreamOwned::new(conn, tcp))
}

/// A plain or TLS connection.
#[derive(Debug)]
pub(super) enum Conn {
    Plain(TimedStream),
    Tls(Box<StreamOwned<ClientConnection, TimedStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// Why a line could not be read.
#[derive(Debug)]
pub(super) enum LineError {
    Io(std::io::Error),
    /// The peer closed the connection.
    Closed,
    /// No line end within the limit.
    TooLong(usize),
}

/// Reads CRLF (or LF) terminated lines of at most a given length from an untrusted peer; never
/// holds more than about the limit plus one read in memory.
#[derive(Debug)]
pub(super) struct Lines<S> {
    inner: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> Lines<S> {
    pub(super) fn new(inner: S) -> Lines<S> {
        Lines { inner, buf: Vec::new() }
    }

    pub(super) fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Bytes received but not yet read as lines.
    pub(super) fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub(super) fn into_inner(self) -> S {
        self.inner
    }

    /// The next line without its line end, lossily decoded.
    pub(super) fn read_line(&mut self, max: usize) -> Result<String, LineError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                if pos > max + 1 {
                    return Err(LineError::TooLong(max));
                }
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.buf.len() > max + 1 {
                return Err(LineError::TooLong(max));
            }
            let mut chunk = [0u8; 1024];
            let n = self.inner.read(&mut chunk).map_err(LineError::Io)?;
            if n == 0 {
                return Err(LineError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub(super) fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(data)?;
        self.inner.flush()
    }
}
