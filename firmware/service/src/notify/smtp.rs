//! A small SMTP submission client: RFC 5321 (EHLO, MAIL, RCPT, DATA with dot-stuffing),
//! RFC 3207 STARTTLS (required unless `tls: "none"`), implicit TLS (port 465) and RFC 4954
//! AUTH PLAIN/LOGIN, only ever over TLS. Replies are untrusted: a line is at most
//! [`MAX_LINE`] bytes and a reply at most [`MAX_REPLY_LINES`] lines.

use std::time::Instant;

use super::net::{self, Conn, LineError, Lines};
use super::{base64, one_line, rfc5322_date, Event, NotifyError, SmtpTarget, SmtpTls};

/// Longest reply line accepted (RFC 5321 allows 512 with the CRLF; some servers send more).
pub(crate) const MAX_LINE: usize = 2048;
/// Most lines in one (multi-line) reply.
pub(crate) const MAX_REPLY_LINES: usize = 100;

/// A server reply: its code and its text lines.
#[derive(Debug)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn text(&self) -> String {
        let t = self.lines.join(" / ");
        t.chars().take(300).collect()
    }
}

/// An e-mail ready for DATA: headers and body with CRLF line ends, not yet dot-stuffed.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) text: String,
}

impl Message {
    pub(crate) fn new(t: &SmtpTarget, event: &Event, appliance: &str) -> Message {
        let unix = crate::now_unix();
        let subject = event.subject(appliance);
        let body = event.body(appliance);
        let domain = t.from.rsplit('@').next().unwrap_or("rackvault.invalid");
        let mut h = String::new();
        h.push_str(&format!("Date: {}\r\n", rfc5322_date(unix)));
        h.push_str(&format!("From: rackvault <{}>\r\n", t.from));
        h.push_str(&format!("To: {}\r\n", t.to.join(", ")));
        h.push_str(&format!("Subject: {}\r\n", encode_header(&subject)));
        h.push_str(&format!("Message-ID: <{}.{unix}@{domain}>\r\n", crate::random_hex(12)));
        h.push_str("MIME-Version: 1.0\r\n");
        h.push_str("Content-Type: text/plain; charset=utf-8\r\n");
        h.push_str(&format!("X-Rackvault-Event: {}\r\n", event.kind()));
        let plain = body.is_ascii() && body.lines().all(|l| l.len() <= 998);
        if plain {
            h.push_str("Content-Transfer-Encoding: 7bit\r\n\r\n");
            for l in body.lines() {
                h.push_str(l);
                h.push_str("\r\n");
            }
        } else {
            h.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
            let b = base64(body.replace('\n', "\r\n").as_bytes());
            for chunk in b.as_bytes().chunks(76) {
                h.push_str(&String::from_utf8_lossy(chunk));
                h.push_str("\r\n");
            }
        }
        Message { text: h }
    }
}

/// A header value: as is when ASCII, else RFC 2047 encoded words.
fn encode_header(s: &str) -> String {
    let s = one_line(s);
    if s.is_ascii() {
        return s;
    }
    let mut words = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        if cur.len() + c.len_utf8() > 45 {
            words.push(format!("=?UTF-8?B?{}?=", base64(cur.as_bytes())));
            cur.clear();
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        words.push(format!("=?UTF-8?B?{}?=", base64(cur.as_bytes())));
    }
    words.join("\r\n ")
}

/// Dot-stuffs `text` (CRLF lines) and appends the end-of-data line.
pub(crate) fn dot_stuff(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 8);
    for line in text.split("\r\n") {
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // `split` gives an empty last piece after the final CRLF: drop its extra CRLF.
    if text.ends_with("\r\n") {
        out.truncate(out.len() - 2);
    }
    out.extend_from_slice(b".\r\n");
    out
}

struct Session {
    io: Option<Lines<Conn>>,
    target: String,
    host: String,
}

impl Session {
    fn io(&mut self) -> Result<&mut Lines<Conn>, NotifyError> {
        self.io
            .as_mut()
            .ok_or_else(|| NotifyError::Protocol { target: self.target.clone(), reason: "no connection".into() })
    }

    fn send(&mut self, line: &str, during: &'static str) -> Result<(), NotifyError> {
        let (target, host) = (self.target.clone(), self.host.clone());
        self.io()?.write_all(format!("{line}\r\n").as_bytes()).map_err(|e| net::io_error(&target, &host, during, e))
    }

    fn reply(&mut self, during: &'static str) -> Result<Reply, NotifyError> {
        let (target, host) = (self.target.clone(), self.host.clone());
        let io = self.io()?;
        let proto = |reason: String| NotifyError::Protocol { target: target.clone(), reason };
        let mut lines = Vec::new();
        let mut code = None;
        for _ in 0..MAX_REPLY_LINES {
            let line = io.read_line(MAX_LINE).map_err(|e| match e {
                LineError::Io(e) => net::io_error(&target, &host, during, e),
                LineError::Closed => NotifyError::Io {
                    target: target.clone(),
                    during,
                    source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"),
                },
                LineError::TooLong(n) => proto(format!("a reply line longer than {n} bytes {during}")),
            })?;
            let b = line.as_bytes();
            if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || (b.len() > 3 && b[3] != b' ' && b[3] != b'-') {
                return Err(proto(format!(
                    "not an SMTP reply {during} ({:?})",
                    line.chars().take(80).collect::<String>()
                )));
            }
            let c: u16 = line[..3].parse().unwrap_or(0);
            if *code.get_or_insert(c) != c {
                return Err(proto(format!("a reply mixing codes {} and {c} {during}", code.unwrap_or(0))));
            }
            lines.push(line.get(4..).unwrap_or("").to_string());
            if b.len() == 3 || b[3] == b' ' {
                return Ok(Reply { code: c, lines });
            }
        }
        Err(proto(format!("a reply of more than {MAX_REPLY_LINES} lines {during}")))
    }

    /// Sends `line` (None: only reads) and expects a reply code in `ok`.
    fn step(
        &mut self,
        line: Option<&str>,
        stage: &'static str,
        ok: &[u16],
        hint: &'static str,
    ) -> Result<Reply, NotifyError> {
        if let Some(l) = line {
            self.send(l, stage)?;
        }
        let r = self.reply(stage)?;
        if ok.contains(&r.code) {
            Ok(r)
        } else {
            let hint =
                if (400..500).contains(&r.code) { "the server is busy or limiting; it is retried" } else { hint };
            Err(NotifyError::Smtp { target: self.target.clone(), stage, code: r.code, text: r.text(), hint })
        }
    }
}

/// What EHLO said the server can do.
#[derive(Debug, Default)]
struct Extensions {
    starttls: bool,
    auth_plain: bool,
    auth_login: bool,
}

fn extensions(r: &Reply) -> Extensions {
    let mut e = Extensions::default();
    for l in r.lines.iter().skip(1) {
        let mut words = l.split_whitespace().map(str::to_ascii_uppercase);
        match words.next().as_deref() {
            Some("STARTTLS") => e.starttls = true,
            Some("AUTH") => {
                for m in words {
                    e.auth_plain |= m == "PLAIN";
                    e.auth_login |= m == "LOGIN";
                }
            }
            _ => {}
        }
    }
    e
}

/// Sends `msg` to every recipient of `t` by `deadline`.
pub(super) fn send(t: &SmtpTarget, msg: &Message, deadline: Instant) -> Result<(), NotifyError> {
    let target = format!("{}:{}", t.host, t.port);
    let tcp = net::connect(&t.host, t.port, &target, deadline)?;
    let conn = match t.tls {
        SmtpTls::Implicit => Conn::Tls(Box::new(net::tls(tcp, &t.host, t.ca_pem.as_deref(), &target)?)),
        SmtpTls::Starttls | SmtpTls::None => Conn::Plain(tcp),
    };
    let mut s = Session { io: Some(Lines::new(conn)), target: target.clone(), host: t.host.clone() };
    let r = conversation(&mut s, t, msg);
    if r.is_ok() {
        // Politeness only: the mail is accepted already.
        let _ = s.send("QUIT", "QUIT").and_then(|_| s.reply("QUIT"));
    }
    r
}

fn conversation(s: &mut Session, t: &SmtpTarget, msg: &Message) -> Result<(), NotifyError> {
    let ehlo = format!("EHLO {}", ehlo_name());
    s.step(None, "the connection", &[220], "the server does not accept mail from this appliance now")?;
    let mut ext = extensions(&s.step(Some(&ehlo), "EHLO", &[250], "check that this is an SMTP server")?);
    let mut encrypted = t.tls == SmtpTls::Implicit;
    if t.tls == SmtpTls::Starttls {
        if !ext.starttls {
            return Err(NotifyError::NoStartTls { target: s.target.clone() });
        }
        s.step(
            Some("STARTTLS"),
            "STARTTLS",
            &[220],
            "the server offered STARTTLS but refused it; check its TLS setup",
        )?;
        let io =
            s.io.take()
                .ok_or_else(|| NotifyError::Protocol { target: s.target.clone(), reason: "no connection".into() })?;
        if io.buffered() > 0 {
            return Err(NotifyError::Protocol {
                target: s.target.clone(),
                reason: "data was sent after the STARTTLS answer, before TLS began (an injection attempt?)".into(),
            });
        }
        let Conn::Plain(tcp) = io.into_inner() else {
            return Err(NotifyError::Protocol { target: s.target.clone(), reason: "STARTTLS inside TLS".into() });
        };
        let tls = net::tls(tcp, &t.host, t.ca_pem.as_deref(), &s.target)?;
        s.io = Some(Lines::new(Conn::Tls(Box::new(tls))));
        encrypted = true;
        ext = extensions(&s.step(Some(&ehlo), "EHLO after STARTTLS", &[250], "check the server's TLS setup")?);
    }
    if let (Some(user), Some(password)) = (&t.user, &t.password) {
        if !encrypted {
            // The settings refuse this; never send credentials in the clear regardless.
            return Err(NotifyError::Config(format!(
                "{}: credentials are only sent over TLS; set tls to \"starttls\" or \"implicit\"",
                s.target
            )));
        }
        const AUTH_HINT: &str = "the server refused the user name or password; check the user and enter the \
                                 password again in the settings";
        if ext.auth_plain {
            let token = base64(format!("\0{user}\0{}", password.expose()).as_bytes());
            s.step(Some(&format!("AUTH PLAIN {token}")), "the sign-in (AUTH PLAIN)", &[235], AUTH_HINT)?;
        } else if ext.auth_login {
            s.step(Some("AUTH LOGIN"), "the sign-in (AUTH LOGIN)", &[334], AUTH_HINT)?;
            s.step(Some(&base64(user.as_bytes())), "the sign-in (AUTH LOGIN)", &[334], AUTH_HINT)?;
            s.step(Some(&base64(password.expose().as_bytes())), "the sign-in (AUTH LOGIN)", &[235], AUTH_HINT)?;
        } else {
            return Err(NotifyError::Config(format!(
                "{} offers neither AUTH PLAIN nor AUTH LOGIN; remove the user if the server needs no sign-in, or \
                 enable one of them on the server",
                s.target
            )));
        }
    }
    s.step(
        Some(&format!("MAIL FROM:<{}>", t.from)),
        "the sender (MAIL FROM)",
        &[250],
        "use a sender address this server lets you send as",
    )?;
    for to in &t.to {
        s.step(
            Some(&format!("RCPT TO:<{to}>")),
            "a recipient (RCPT TO)",
            &[250, 251],
            "check the recipient addresses, and that the server relays for this sender",
        )?;
    }
    s.step(Some("DATA"), "DATA", &[354], "the server does not take the message; check its log")?;
    let data = dot_stuff(&msg.text);
    let (target, host) = (s.target.clone(), s.host.clone());
    s.io()?.write_all(&data).map_err(|e| net::io_error(&target, &host, "sending the message", e))?;
    s.step(None, "the message", &[250], "the server refused the message; check its log")?;
    Ok(())
}

/// The name given in EHLO: the host name when it looks like one, else an address literal.
fn ehlo_name() -> String {
    let n = super::host_name();
    if n.contains('.') {
        n
    } else {
        "[127.0.0.1]".into()
    }
}
