//! Notification tests: the webhook against a small receiver in the test, e-mail against a
//! real SMTP server (Debian's python3-aiosmtpd, started and stopped here by PID, with a
//! certificate made by openssl), and hostile SMTP servers.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use super::*;

type Audit = Arc<Mutex<Vec<(String, String)>>>;

/// A notifier whose audit entries land in a vector, with short pauses between attempts.
fn notifier() -> (Notifier, Audit) {
    let audit: Audit = Arc::default();
    let a = audit.clone();
    let n = Notifier::new(
        "testbox".into(),
        Box::new(move |action: &str, detail: &str| lock(&a).push((action.into(), detail.into()))),
    );
    n.set_options(Options {
        retry_delays: vec![Duration::from_millis(50), Duration::from_millis(100)],
        attempt_timeout: Duration::from_secs(5),
        queue_capacity: 8,
    });
    (n, audit)
}

/// Waits up to 15 s for an audit entry with `action`; returns its detail.
fn wait_audit(audit: &Audit, action: &str) -> String {
    for _ in 0..300 {
        if let Some((_, d)) = lock(audit).iter().find(|(a, _)| a == action) {
            return d.clone();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no audit entry {action:?}; entries: {:?}", lock(audit));
}

fn webhook_channel(url: String, secret: Option<&str>) -> Channel {
    Channel::Webhook(WebhookTarget { url, secret: secret.map(|s| Secret::new(s.into())), ca_pem: None })
}

fn job_failed() -> Event {
    Event::JobFailed {
        job: Some("nightly".into()),
        source: "web01".into(),
        task_id: 42,
        task_kind: crate::TaskKind::Backup,
        error_kind: FailureKind::Failed,
        message: "cannot open /vm/web01.raw: no such file\n.a line starting with a dot\nend".into(),
    }
}

// ---- a small webhook receiver -----------------------------------------------------------------

/// One request the receiver got.
#[derive(Debug)]
struct Request {
    request_line: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// Accepts connections on 127.0.0.1 and answers each with `status`; hands every request
/// to the test. Stops after `max` connections.
fn receiver(status: &'static str, max: usize) -> (u16, mpsc::Receiver<Request>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().take(max) {
            let Ok(mut s) = s else { return };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i;
                }
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0 && buf.len() < 64 * 1024, "incomplete request head");
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
            let mut lines = head.split("\r\n");
            let request_line = lines.next().unwrap().to_string();
            let headers: BTreeMap<String, String> = lines
                .map(|l| l.split_once(':').unwrap())
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let len: usize = headers["content-length"].parse().unwrap();
            let mut body = buf[head_end + 4..].to_vec();
            while body.len() < len {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "body cut short");
                body.extend_from_slice(&chunk[..n]);
            }
            let _ =
                s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
            if tx.send(Request { request_line, headers, body }).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

#[test]
fn webhook_delivers_versioned_json_with_a_valid_hmac_signature() {
    let (port, rx) = receiver("200 OK", 1);
    let (n, audit) = notifier();
    n.configure(
        vec![webhook_channel(format!("http://127.0.0.1:{port}/hooks/rv?token=abc"), Some("shared-s3cret"))],
        EventSelection::default(),
    );
    n.notify(job_failed());
    let req = rx.recv_timeout(Duration::from_secs(10)).expect("the receiver got the webhook");
    assert_eq!(req.request_line, "POST /hooks/rv?token=abc HTTP/1.1");
    assert_eq!(req.headers["content-type"], "application/json");
    assert_eq!(req.headers["x-rackvault-event"], "job_failed");
    assert_eq!(req.headers["host"], format!("127.0.0.1:{port}"));
    // The signature is the HMAC-SHA256 of the exact body with the shared secret.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"shared-s3cret");
    let want = format!("sha256={}", crate::hex(ring::hmac::sign(&key, &req.body).as_ref()));
    assert_eq!(req.headers["x-rackvault-signature"], want);
    let sig = req.headers["x-rackvault-signature"].strip_prefix("sha256=").unwrap();
    ring::hmac::verify(&key, &req.body, &crate::unhex(sig).unwrap()).expect("the signature verifies");

    let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["event"], "job_failed");
    assert_eq!(v["appliance"], "testbox");
    assert!(v["unix"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["subject"], "[rackvault testbox] job nightly: backup of web01 failed (task 42)");
    assert!(v["text"].as_str().unwrap().contains("What to do"));
    let d = &v["details"];
    assert_eq!(d["kind"], "job_failed");
    assert_eq!(d["job"], "nightly");
    assert_eq!(d["source"], "web01");
    assert_eq!(d["task_id"], 42);
    assert_eq!(d["task_kind"], "backup");
    assert_eq!(d["error_kind"], "failed");
    assert!(d["message"].as_str().unwrap().starts_with("cannot open /vm/web01.raw"));

    let sent = wait_audit(&audit, "notification sent");
    assert!(sent.contains(&format!("webhook to http://127.0.0.1:{port}")), "{sent}");
    // The URL's query (a token) and the secret stay out of the audit log.
    assert!(!sent.contains("token=abc") && !sent.contains("shared-s3cret"), "{sent}");
}

#[test]
fn webhook_receiver_answering_500_is_retried_then_audited_as_failed() {
    let (port, rx) = receiver("500 Internal Server Error", 3);
    let (n, audit) = notifier();
    n.configure(vec![webhook_channel(format!("http://127.0.0.1:{port}/"), None)], EventSelection::default());
    n.notify(Event::Test);
    let failed = wait_audit(&audit, "notification failed");
    assert!(failed.contains("HTTP 500 Internal Server Error"), "{failed}");
    assert!(failed.contains("after 3 attempts"), "{failed}");
    assert!(failed.contains("check the receiver's log"), "{failed}");
    // Three attempts: the first and two retries.
    for _ in 0..3 {
        let r = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(!r.headers.contains_key("x-rackvault-signature"), "no secret, no signature");
    }
}

#[test]
fn webhook_receiver_answering_404_is_permanent_and_not_retried() {
    let (port, rx) = receiver("404 Not Found", 3);
    let (n, audit) = notifier();
    n.configure(vec![webhook_channel(format!("http://127.0.0.1:{port}/nope"), None)], EventSelection::default());
    n.notify(Event::Test);
    let failed = wait_audit(&audit, "notification failed");
    assert!(failed.contains("HTTP 404") && failed.contains("permanent error"), "{failed}");
    assert!(!failed.contains("attempts"), "{failed}");
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "a permanent failure is not retried");
}

#[test]
fn webhook_to_an_unreachable_port_is_reported_not_panicked() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (n, audit) = notifier();
    n.configure(vec![webhook_channel(format!("http://127.0.0.1:{port}/"), None)], EventSelection::default());
    n.notify(Event::Test);
    let failed = wait_audit(&audit, "notification failed");
    assert!(failed.starts_with(&format!("notification to webhook http://127.0.0.1:{port} failed")), "{failed}");
    assert!(failed.contains("cannot connect") && failed.contains("transient error"), "{failed}");
    // The synchronous test says the same, per channel.
    let out = n.test_now();
    assert_eq!(out.len(), 1);
    assert!(!out[0].ok);
    assert_eq!(out[0].error_kind, Some(ErrorKind::Transient));
    assert!(out[0].error.as_deref().unwrap().contains("check the address"), "{:?}", out[0]);
}

#[test]
fn a_full_queue_drops_the_oldest_event_with_an_audit_note() {
    // A receiver that accepts but never answers keeps the worker busy.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (n, audit) = notifier();
    n.set_options(Options { retry_delays: vec![], attempt_timeout: Duration::from_secs(2), queue_capacity: 2 });
    n.configure(vec![webhook_channel(format!("http://127.0.0.1:{port}/"), None)], EventSelection::default());
    for i in 0..5 {
        n.notify(Event::VerifyDamage { task_id: i, damaged_points: vec![], damaged_records: i });
    }
    let note = wait_audit(&audit, "notification dropped");
    assert!(note.contains("queue was full (2 waiting)"), "{note}");
    drop(l);
}

#[test]
fn events_left_out_in_the_settings_are_not_sent() {
    let (port, rx) = receiver("200 OK", 2);
    let (n, _audit) = notifier();
    let events = EventSelection { job_failed: false, capacity: true, verify_damage: true };
    n.configure(vec![webhook_channel(format!("http://127.0.0.1:{port}/"), None)], events);
    n.notify(job_failed());
    n.notify(Event::CapacityWatermark { used_pct: 91, high_pct: 90, crossed: Crossing::Above });
    let r = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["event"], "capacity_watermark");
    assert_eq!(v["details"]["crossed"], "above");
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}

// ---- a real SMTP server: aiosmtpd -------------------------------------------------------------

/// Debian's interpreter: python3-aiosmtpd installs for it, whatever `python3` is on PATH.
const PYTHON: &str = "/usr/bin/python3";

const SERVER_PY: &str = r#"
import json, os, signal, ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

root, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
maildir = os.path.join(root, "mail")
os.makedirs(maildir, exist_ok=True)

class Handler:
    async def handle_DATA(self, server, session, envelope):
        n = len(os.listdir(maildir))
        rec = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.original_content.decode("utf-8", "replace"),
            "authenticated": bool(session.authenticated),
            "tls": server.transport.get_extra_info("ssl_object") is not None,
        }
        tmp = os.path.join(maildir, f".{n}.tmp")
        with open(tmp, "w") as f:
            json.dump(rec, f)
        os.rename(tmp, os.path.join(maildir, f"{n:03}.json"))
        return "250 Message accepted for delivery"

def authenticator(server, session, envelope, mechanism, auth_data):
    with open(os.path.join(root, "auth.log"), "a") as f:
        f.write(f"{mechanism} {auth_data.login.decode()}\n")
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"alerts" and auth_data.password == b"Corr3ct horse"
    return AuthResult(success=ok, handled=False)

ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(os.path.join(root, "server.pem"), os.path.join(root, "server.key"))
kw = dict(hostname="127.0.0.1", port=port, authenticator=authenticator, auth_require_tls=True)
if mode == "starttls":
    kw.update(tls_context=ctx, require_starttls=True)
elif mode == "implicit":
    # aiosmtpd only counts STARTTLS as TLS for AUTH; this connection is TLS from its first byte.
    kw.update(ssl_context=ctx, auth_require_tls=False)
c = Controller(Handler(), **kw)
c.start()
open(os.path.join(root, "ready"), "w").close()
signal.sigwait({signal.SIGTERM, signal.SIGINT})
c.stop()
"#;

/// Whether a peer program is usable; when not: fails under `RACKVAULT_REQUIRE_PEERS=1`,
/// else says why the test is skipped.
fn peer_available(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    assert!(
        std::env::var("RACKVAULT_REQUIRE_PEERS").as_deref() != Ok("1"),
        "{what} is missing but RACKVAULT_REQUIRE_PEERS=1; install the Debian packages python3-aiosmtpd and openssl"
    );
    eprintln!("skipped: {what} is missing (install the Debian packages python3-aiosmtpd and openssl)");
    false
}

fn run(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it, in `dir`.
fn make_certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(Command::new("openssl").current_dir(dir).args(["req", "-x509"]).args(ec).args([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=rackvault test CA",
    ]));
    run(Command::new("openssl").current_dir(dir).arg("req").args(ec).args([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]));
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    run(Command::new("openssl").current_dir(dir).args([
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]));
}

/// aiosmtpd on 127.0.0.1 in its own temporary directory; stopped by PID when dropped.
struct SmtpPeer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SmtpPeer {
    /// `mode`: `starttls` (required, AUTH only after it), `implicit` or `plain` (no TLS).
    fn start(mode: &str) -> Option<SmtpPeer> {
        let have_aiosmtpd = Command::new(PYTHON)
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let have_openssl =
            Command::new("openssl").arg("version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
        if !peer_available(have_aiosmtpd, "python3-aiosmtpd") || !peer_available(have_openssl, "openssl") {
            return None;
        }
        let dir = tempfile::Builder::new().prefix("rv-smtp-").tempdir().unwrap();
        make_certificates(dir.path());
        std::fs::write(dir.path().join("server.py"), SERVER_PY).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(PYTHON)
            .arg(dir.path().join("server.py"))
            .arg(dir.path())
            .arg(port.to_string())
            .arg(mode)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut peer = SmtpPeer { child, port, dir };
        for _ in 0..200 {
            if peer.dir.path().join("ready").exists() {
                return Some(peer);
            }
            if let Ok(Some(status)) = peer.child.try_wait() {
                panic!("aiosmtpd exited ({status}): {}", peer.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("aiosmtpd did not start within 10 s: {}", peer.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca.pem")).unwrap()
    }

    fn mail(&self) -> Vec<serde_json::Value> {
        let dir: PathBuf = self.dir.path().join("mail");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect())
            .unwrap_or_default();
        names.sort();
        names.iter().map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()).collect()
    }

    fn auth_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("auth.log")).unwrap_or_default()
    }

    fn target(&self, tls: SmtpTls, user: Option<(&str, &str)>) -> SmtpTarget {
        SmtpTarget {
            host: "127.0.0.1".into(),
            port: self.port,
            tls,
            user: user.map(|(u, _)| u.into()),
            password: user.map(|(_, p)| Secret::new(p.into())),
            from: "rackvault@example.test".into(),
            to: vec!["ops@example.test".into(), "oncall@example.test".into()],
            ca_pem: Some(self.ca_pem()),
        }
    }
}

impl Drop for SmtpPeer {
    fn drop(&mut self) {
        // Our own child, by its PID.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        for _ in 0..40 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send_event(t: &SmtpTarget, e: &Event) -> Result<(), NotifyError> {
    Channel::Email(t.clone()).deliver(e, "testbox", Duration::from_secs(10))
}

#[test]
fn email_over_starttls_with_auth_reaches_two_recipients() {
    let Some(peer) = SmtpPeer::start("starttls") else { return };
    let t = peer.target(SmtpTls::Starttls, Some(("alerts", "Corr3ct horse")));
    send_event(&t, &job_failed()).unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", peer.log()));
    let mail = peer.mail();
    assert_eq!(mail.len(), 1, "{mail:?}");
    let m = &mail[0];
    assert_eq!(m["mail_from"], "rackvault@example.test");
    assert_eq!(m["rcpt_tos"], serde_json::json!(["ops@example.test", "oncall@example.test"]));
    assert_eq!(m["authenticated"], true);
    assert_eq!(m["tls"], true);
    assert!(peer.auth_log().starts_with("PLAIN alerts"), "{}", peer.auth_log());
    let data = m["data"].as_str().unwrap();
    let (head, body) = data.split_once("\r\n\r\n").expect("headers, blank line, body");
    let headers: BTreeMap<String, String> = head
        .split("\r\n")
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    assert_eq!(headers["subject"], "[rackvault testbox] job nightly: backup of web01 failed (task 42)");
    assert_eq!(headers["from"], "rackvault <rackvault@example.test>");
    assert_eq!(headers["to"], "ops@example.test, oncall@example.test");
    assert!(headers["message-id"].starts_with('<') && headers["message-id"].ends_with("@example.test>"));
    let date = &headers["date"];
    assert!(date.ends_with(" +0000") && date.len() == 31, "{date}");
    assert_eq!(headers["x-rackvault-event"], "job_failed");
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    // CRLF line ends throughout, and the leading dot survived dot-stuffing.
    assert!(!data.replace("\r\n", "").contains('\n'), "bare LF in {data:?}");
    assert!(body.contains("\r\n.a line starting with a dot\r\n"), "{body}");
    assert!(body.contains("Task:  42 (backup)") && body.contains("What to do"), "{body}");
}

#[test]
fn email_with_a_wrong_password_is_a_clear_permanent_error() {
    let Some(peer) = SmtpPeer::start("starttls") else { return };
    let t = peer.target(SmtpTls::Starttls, Some(("alerts", "wrong password")));
    let e = send_event(&t, &Event::Test).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permanent, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("refused the sign-in") && msg.contains("535"), "{msg}");
    assert!(msg.contains("enter the password again"), "{msg}");
    assert!(!msg.contains("wrong password"), "the password stays out of messages: {msg}");
    assert!(peer.mail().is_empty());
}

#[test]
fn email_server_without_starttls_gets_no_credentials() {
    let Some(peer) = SmtpPeer::start("plain") else { return };
    let t = peer.target(SmtpTls::Starttls, Some(("alerts", "Corr3ct horse")));
    let e = send_event(&t, &Event::Test).unwrap_err();
    assert!(matches!(e, NotifyError::NoStartTls { .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert!(e.to_string().contains("does not offer STARTTLS"), "{e}");
    assert_eq!(peer.auth_log(), "", "no AUTH was attempted");
    assert!(peer.mail().is_empty());
}

#[test]
fn email_over_implicit_tls_is_delivered() {
    let Some(peer) = SmtpPeer::start("implicit") else { return };
    let t = peer.target(SmtpTls::Implicit, Some(("alerts", "Corr3ct horse")));
    send_event(&t, &Event::Test).unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", peer.log()));
    let mail = peer.mail();
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0]["tls"], true);
    assert!(mail[0]["data"].as_str().unwrap().contains("Subject: [rackvault testbox] test notification\r\n"));
}

#[test]
fn email_to_a_server_with_an_untrusted_certificate_is_refused_permanently() {
    let Some(peer) = SmtpPeer::start("starttls") else { return };
    let mut t = peer.target(SmtpTls::Starttls, Some(("alerts", "Corr3ct horse")));
    t.ca_pem = None;
    let e = send_event(&t, &Event::Test).unwrap_err();
    assert!(matches!(e, NotifyError::Tls { .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert!(e.to_string().contains("ca_pem"), "{e}");
    assert_eq!(peer.auth_log(), "");
}

// ---- hostile SMTP servers ---------------------------------------------------------------------

/// A server thread on 127.0.0.1 that writes `greeting` and then `filler` until the client
/// goes away (at most 64 MiB).
fn hostile(greeting: &'static [u8], filler: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _): (TcpStream, _) = l.accept().unwrap();
        let _ = s.write_all(greeting);
        let mut sent = 0usize;
        while sent < 64 << 20 {
            if s.write_all(filler).is_err() {
                return;
            }
            sent += filler.len();
        }
    });
    port
}

fn plain_target(port: u16) -> SmtpTarget {
    SmtpTarget {
        host: "127.0.0.1".into(),
        port,
        tls: SmtpTls::None,
        user: None,
        password: None,
        from: "a@example.test".into(),
        to: vec!["b@example.test".into()],
        ca_pem: None,
    }
}

#[test]
fn hostile_smtp_endless_reply_line_is_a_protocol_error() {
    let port = hostile(b"220 ", &[b'x'; 4096]);
    let e = send_event(&plain_target(port), &Event::Test).unwrap_err();
    assert!(matches!(e, NotifyError::Protocol { .. }), "{e}");
    assert!(e.to_string().contains(&format!("longer than {} bytes", smtp::MAX_LINE)), "{e}");
    assert_eq!(e.kind(), ErrorKind::Permanent);
}

#[test]
fn hostile_smtp_ten_thousand_continuation_lines_is_a_protocol_error() {
    static LINES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let many = LINES.get_or_init(|| b"220-hello\r\n".repeat(10_000));
    let port = hostile(many, b"220-more\r\n");
    let e = send_event(&plain_target(port), &Event::Test).unwrap_err();
    assert!(matches!(e, NotifyError::Protocol { .. }), "{e}");
    assert!(e.to_string().contains(&format!("more than {} lines", smtp::MAX_REPLY_LINES)), "{e}");
}

#[test]
fn hostile_smtp_garbage_and_silence_give_errors_not_hangs() {
    let port = hostile(b"HTTP/1.1 400 Bad Request\r\n", b"");
    let e = send_event(&plain_target(port), &Event::Test).unwrap_err();
    assert!(e.to_string().contains("not an SMTP reply"), "{e}");
    // A server that accepts and says nothing: the attempt's deadline ends it.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let t = plain_target(l.local_addr().unwrap().port());
    let started = Instant::now();
    let e = Channel::Email(t).deliver(&Event::Test, "testbox", Duration::from_millis(500)).unwrap_err();
    assert!(matches!(e, NotifyError::Timeout { .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::Transient);
    assert!(started.elapsed() < Duration::from_secs(3));
}

// ---- pieces -----------------------------------------------------------------------------------

#[test]
fn dot_stuffing_and_encodings_follow_the_rfcs() {
    assert_eq!(smtp::dot_stuff("a\r\n.b\r\n..c\r\n"), b"a\r\n..b\r\n...c\r\n.\r\n");
    assert_eq!(smtp::dot_stuff("."), b"..\r\n.\r\n");
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64(b"\0alerts\0pw"), "AGFsZXJ0cwBwdw==");
    assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
    assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    assert_eq!(rfc5322_date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 +0000");
}

#[test]
fn webhook_urls_are_checked() {
    let u = webhook::Url::parse("https://hooks.example.com/a/b?x=1").unwrap();
    assert_eq!((u.tls, u.host.as_str(), u.port, u.path.as_str()), (true, "hooks.example.com", 443, "/a/b?x=1"));
    assert_eq!(u.origin(), "https://hooks.example.com:443");
    let u = webhook::Url::parse("http://[::1]:8080").unwrap();
    assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("[::1]", 8080, "/"));
    for bad in ["ftp://x/", "http://", "http://user:pw@x/", "http://x:99999/", "http://x y/"] {
        assert!(webhook::Url::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn secrets_are_sealed_kept_removed_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let sealer = Sealer::open(&dir.path().join("k")).unwrap();
    let input = |secret: Option<&str>, password: Option<&str>, tls: SmtpTls| NotificationsInput {
        webhook: Some(WebhookInput {
            url: "https://hooks.example.com/x".into(),
            secret: secret.map(String::from),
            ca_pem: None,
        }),
        smtp: Some(SmtpInput {
            host: "mail.example.com".into(),
            port: None,
            tls,
            user: Some("alerts".into()),
            password: password.map(String::from),
            from: "rv@example.com".into(),
            to: vec!["ops@example.com".into()],
            ca_pem: None,
        }),
        job_failed: true,
        capacity: false,
        verify_damage: true,
    };
    let c = apply_input(
        &NotificationConfig::default(),
        input(Some("hook-secret"), Some("mail-pw"), SmtpTls::Starttls),
        &sealer,
    )
    .unwrap();
    let smtp = c.smtp.as_ref().unwrap();
    assert_eq!(smtp.port, 587);
    let stored = serde_json::to_string(&c).unwrap();
    assert!(!stored.contains("hook-secret") && !stored.contains("mail-pw"), "{stored}");
    assert!(stored.contains("sealed:v1:"));
    let debug = format!("{c:?} {:?}", input(Some("hook-secret"), Some("mail-pw"), SmtpTls::Starttls));
    assert!(!debug.contains("hook-secret") && !debug.contains("mail-pw") && !debug.contains("sealed:"), "{debug}");
    let shown = serde_json::to_string(&info(&c)).unwrap();
    assert!(
        !shown.contains("sealed") && shown.contains("\"has_secret\":true") && shown.contains("\"has_password\":true")
    );
    // Left out: kept. Empty: removed (the webhook's secret; SMTP with a user needs one).
    let kept = apply_input(&c, input(None, None, SmtpTls::Starttls), &sealer).unwrap();
    assert_eq!(kept.webhook, c.webhook);
    assert_eq!(kept.smtp, c.smtp);
    let removed = apply_input(&c, input(Some(""), None, SmtpTls::Starttls), &sealer).unwrap();
    assert!(removed.webhook.unwrap().secret.is_none());
    assert!(apply_input(&c, input(None, Some(""), SmtpTls::Starttls), &sealer).is_err());
    // Credentials are refused without TLS.
    let e = apply_input(&c, input(None, None, SmtpTls::None), &sealer).unwrap_err().to_string();
    assert!(e.contains("never sent without TLS"), "{e}");
    // The channels get the opened secrets.
    let ch = resolve(&c, &sealer);
    match (&ch[0], &ch[1]) {
        (Channel::Webhook(w), Channel::Email(s)) => {
            assert_eq!(w.secret.as_ref().unwrap().expose(), "hook-secret");
            assert_eq!(s.password.as_ref().unwrap().expose(), "mail-pw");
            assert!(!format!("{w:?}{s:?}").contains("mail-pw"));
        }
        other => panic!("{other:?}"),
    }
    // A secret sealed with another key gives a broken channel that says what to do.
    let other = Sealer::open(&dir.path().join("k2")).unwrap();
    match &resolve(&c, &other)[0] {
        Channel::Broken { reason, .. } => assert!(reason.contains("enter it again"), "{reason}"),
        ch => panic!("{ch:?}"),
    }
}
