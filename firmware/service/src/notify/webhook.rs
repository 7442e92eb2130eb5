//! The webhook: one HTTP/1.1 POST of the JSON document ([`WebhookPayload`]) per event, over
//! plain TCP or TLS; a 2xx status is success. With a shared secret, the body's HMAC-SHA256 is
//! sent as `X-Rackvault-Signature: sha256=<hex>`.

use std::time::Instant;

use super::net::{self, Conn, LineError, Lines};
use super::{Event, NotifyError, WebhookPayload, WebhookTarget, WEBHOOK_VERSION};

/// Longest status line read from a receiver.
const MAX_STATUS_LINE: usize = 8 * 1024;

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    pub(crate) tls: bool,
    /// Host as written (IPv6 in brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Path and query, at least `/`.
    pub(crate) path: String,
}

impl Url {
    pub(crate) fn parse(s: &str) -> Result<Url, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("{s:?} must start with http:// or https://"));
        };
        if s.len() > 2048 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("at most 2048 characters, without spaces".into());
        }
        let (auth, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        let path = if path.starts_with('?') { format!("/{path}") } else { path };
        let path = path.split('#').next().unwrap_or("/").to_string();
        if auth.contains('@') {
            return Err("no user or password in the URL (it is shown and logged); use the secret field".into());
        }
        let (host, port) = if let Some(h) = auth.strip_prefix('[') {
            let (h, after) = h.split_once(']').ok_or("an IPv6 address needs its closing ]")?;
            (format!("[{h}]"), after.strip_prefix(':'))
        } else {
            match auth.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (auth.to_string(), None),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err("the URL has no host".into());
        }
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or(format!("port {p:?} is not a port number"))?,
            None if tls => 443,
            None => 80,
        };
        Ok(Url { tls, host, port, path })
    }

    /// `scheme://host:port`: where it goes, without path or query (they may hold tokens).
    pub(crate) fn origin(&self) -> String {
        format!("{}://{}:{}", if self.tls { "https" } else { "http" }, self.host, self.port)
    }

    fn host_header(&self) -> String {
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => self.host.clone(),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// The JSON body of `event`.
pub(crate) fn payload(event: &Event, appliance: &str) -> Vec<u8> {
    let p = WebhookPayload {
        version: WEBHOOK_VERSION,
        event: event.kind(),
        appliance,
        unix: crate::now_unix(),
        subject: event.subject(appliance),
        text: event.body(appliance),
        details: event,
    };
    // A struct of strings, numbers and enums always serialises.
    serde_json::to_vec(&p).unwrap_or_default()
}

/// `sha256=<hex HMAC-SHA256 of body>`.
pub(crate) fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    format!("sha256={}", crate::hex(ring::hmac::sign(&key, body).as_ref()))
}

/// Posts `event` to the webhook; Ok on a 2xx answer.
pub(super) fn post(w: &WebhookTarget, event: &Event, appliance: &str, deadline: Instant) -> Result<(), NotifyError> {
    let url =
        Url::parse(&w.url).map_err(|e| NotifyError::Config(format!("webhook url: {e}; fix it in the settings")))?;
    let target = url.origin();
    let body = payload(event, appliance);
    let tcp = net::connect(&url.host, url.port, &target, deadline)?;
    let conn = if url.tls {
        Conn::Tls(Box::new(net::tls(tcp, &url.host, w.ca_pem.as_deref(), &target)?))
    } else {
        Conn::Plain(tcp)
    };
    let mut io = Lines::new(conn);
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: rackvault-notify/{WEBHOOK_VERSION}\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\nConnection: close\r\nX-Rackvault-Event: {}\r\n",
        url.path,
        url.host_header(),
        body.len(),
        event.kind()
    );
    if let Some(s) = &w.secret {
        head.push_str(&format!("X-Rackvault-Signature: {}\r\n", signature(s.expose(), &body)));
    }
    head.push_str("\r\n");
    let mut req = head.into_bytes();
    req.extend_from_slice(&body);
    io.write_all(&req).map_err(|e| net::io_error(&target, &url.host, "sending the request", e))?;
    let line = io.read_line(MAX_STATUS_LINE).map_err(|e| match e {
        LineError::Io(e) => net::io_error(&target, &url.host, "reading the answer", e),
        LineError::Closed => NotifyError::Io {
            target: target.clone(),
            during: "reading the answer",
            source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed without an answer"),
        },
        LineError::TooLong(n) => {
            NotifyError::Protocol { target: target.clone(), reason: format!("a status line longer than {n} bytes") }
        }
    })?;
    if let Conn::Tls(s) = io.get_mut() {
        s.conn.send_close_notify();
        let _ = std::io::Write::flush(s);
    }
    let mut parts = line.splitn(3, ' ');
    let (version, status, reason) =
        (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let status: u16 = match status.parse() {
        Ok(s) if version.starts_with("HTTP/1.") && (100..600).contains(&s) => s,
        _ => {
            return Err(NotifyError::Protocol {
                target,
                reason: format!("not an HTTP answer ({:?})", line.chars().take(80).collect::<String>()),
            })
        }
    };
    if (200..300).contains(&status) {
        return Ok(());
    }
    let hint = match status {
        300..=399 => "the URL redirects; put the final URL in the settings",
        401 | 403 => "the receiver refused the request; check the URL's token and the shared secret",
        404 | 410 => "the receiver has no such endpoint; check the URL's path",
        408 | 425 | 429 | 500 | 502 | 503 | 504 => {
            "the receiver is in trouble; it is retried, check the receiver's log"
        }
        _ => "check the receiver's log for why it refused the notification",
    };
    Err(NotifyError::Http { target, status, reason: reason.chars().take(200).collect(), hint })
}
