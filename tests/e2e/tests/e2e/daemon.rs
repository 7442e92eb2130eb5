//! The daemon killed with `kill -9` while a backup task runs, at random moments, then
//! restarted on the same data directory: the task reads `interrupted`, the store holds only
//! complete restore points and verifies clean, and the next backup succeeds. And the clean
//! stop: SIGTERM cancels the running task, the daemon exits 0, the task reads `cancelled`.
//!
//! The appliance is the real `rackvault serve --dev`, spoken to over HTTPS on loopback by a
//! small blocking rustls client that trusts the certificate the daemon generated in its data
//! directory. The sample source gets a read limit so the backup runs long enough to be killed
//! in the middle. `CRASH_SEED` replays a run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{rackvault_bin, scratch, verify_clean, Rng};
use rustls::pki_types::pem::PemObject as _;
use serde_json::{json, Value};

pub(crate) const PASSWORD: &str = "daemon-crash-passphrase";

/// A daemon we started; killed by PID when dropped.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind an ephemeral port").port()
}

pub(crate) fn start(data: &Path, log: &Path) -> Daemon {
    start_on(data, log, free_port())
}

/// Starts a daemon listening on `port` (a restart keeps its address).
pub(crate) fn start_on(data: &Path, log: &Path, port: u16) -> Daemon {
    start_with(data, log, port, &[])
}

/// Starts a daemon with more `serve` arguments (`--encrypt-store`).
pub(crate) fn start_with(data: &Path, log: &Path, port: u16, extra: &[&str]) -> Daemon {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("daemon log");
    let child = Command::new(rackvault_bin())
        .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start rackvault serve");
    let mut d = Daemon { child, port };
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err() {
        if let Ok(Some(status)) = d.child.try_wait() {
            panic!("rackvault serve exited with {status}:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "rackvault serve did not listen within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    d
}

/// One HTTPS request on a fresh connection; returns status and JSON body (Null when empty).
pub(crate) struct Client {
    port: u16,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    cookie: String,
    csrf: String,
    /// An API token sent as `Authorization: Bearer` (instead of a session).
    bearer: String,
}

impl Client {
    /// A client that authenticates with an API token.
    pub(crate) fn with_token(data: &Path, port: u16, token: &str) -> Client {
        Client { bearer: token.to_string(), ..Client::new(data, port) }
    }

    pub(crate) fn new(data: &Path, port: u16) -> Client {
        let pem = std::fs::read(data.join("tls/cert.pem")).expect("the daemon wrote its certificate");
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.expect("PEM certificate")).expect("a usable certificate");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Client { port, tls: Arc::new(tls), cookie: String::new(), csrf: String::new(), bearer: String::new() }
    }

    pub(crate) fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\nOrigin: https://localhost:{port}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len(),
            port = self.port
        );
        if !self.cookie.is_empty() {
            head.push_str(&format!("Cookie: {}\r\nX-CSRF-Token: {}\r\n", self.cookie, self.csrf));
        }
        if !self.bearer.is_empty() {
            head.push_str(&format!("Authorization: Bearer {}\r\n", self.bearer));
        }
        head.push_str("\r\n");
        let conn = rustls::ClientConnection::new(self.tls.clone(), "localhost".try_into().unwrap()).unwrap();
        let tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], self.port))).expect("connect to the daemon");
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(head.as_bytes()).and_then(|_| tls.write_all(body.as_bytes())).expect("send the request");
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw);
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP response head");
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code");
        let mut body = &raw[end + 4..];
        if let Some(len) = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        {
            body = &body[..len.parse::<usize>().unwrap().min(body.len())];
        }
        let v = if body.is_empty() { Value::Null } else { serde_json::from_slice(body).unwrap_or(Value::Null) };
        (status, v)
    }

    #[track_caller]
    pub(crate) fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, v) = self.call(method, path, body);
        assert!((200..300).contains(&status), "{method} {path}: {status} {v}");
        v
    }

    /// First-run setup of `admin`, with the setup code the daemon left in its data directory.
    pub(crate) fn set_up(&self, data: &Path) {
        let code = std::fs::read_to_string(data.join("setup-code")).expect("the daemon wrote a setup code");
        let body = json!({ "user": "admin", "password": PASSWORD, "setup_code": code.trim() });
        let (status, v) = self.call("POST", "/api/v1/setup", Some(&body));
        assert_eq!(status, 204, "first-run setup: {v}");
    }

    pub(crate) fn sign_in(&mut self) {
        // The session token is only in the Set-Cookie header, which `call` does not return.
        let body = json!({ "user": "admin", "password": PASSWORD }).to_string();
        let head = format!(
            "POST /api/v1/login HTTP/1.1\r\nHost: localhost:{p}\r\nConnection: close\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len(),
            p = self.port
        );
        let conn = rustls::ClientConnection::new(self.tls.clone(), "localhost".try_into().unwrap()).unwrap();
        let tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], self.port))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(head.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("login response");
        assert!(head.starts_with("HTTP/1.1 200"), "sign-in failed: {text}");
        self.cookie = head
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
            .and_then(|c| c.split(';').next())
            .expect("a session cookie")
            .to_string();
        let v: Value = serde_json::from_str(body.trim()).expect("login JSON");
        self.csrf = v["csrf"].as_str().expect("a CSRF token").to_string();
    }
}

fn wait_state(c: &Client, id: u64, timeout: Duration, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let t = c.ok("GET", &format!("/api/v1/tasks/{id}"), None);
        if want(&t) {
            return t;
        }
        assert!(Instant::now() < deadline, "task {id} never reached the wanted state: {t}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kill_dash_nine_of_the_daemon_during_backups() {
    let seed = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("CRASH_SEED={seed}");
    let mut rng = Rng::new(seed);
    let dir = scratch("daemon-crash");
    let data = dir.path().join("data");
    let log = dir.path().join("daemon.log");

    // First start: set up, and take one complete backup.
    let d = start(&data, &log);
    let mut c = Client::new(&data, d.port);
    c.set_up(&data);
    c.sign_in();
    let src = c.ok("GET", "/api/v1/sources", None)[0].clone();
    let id = src["id"].as_str().unwrap().to_string();
    let t = c.ok("POST", "/api/v1/backups", Some(&json!({ "source": id })));
    let t = wait_state(&c, t["id"].as_u64().unwrap(), Duration::from_secs(120), |t| {
        t["state"] != "queued" && t["state"] != "running"
    });
    assert_eq!(t["state"], "succeeded", "{t}");
    // From now on backups read at 16 MB/s: the 256 MiB sample takes about 16 s.
    let limited = json!({ "name": src["name"], "url": src["url"], "max_read_mbps": 16 });
    c.ok("PUT", &format!("/api/v1/sources/{id}"), Some(&limited));
    let mut daemon = Some(d);

    for round in 0..3 {
        let d = daemon.take().unwrap();
        let t = c.ok("POST", "/api/v1/backups", Some(&json!({ "source": id })));
        let task = t["id"].as_u64().unwrap();
        wait_state(&c, task, Duration::from_secs(60), |t| t["bytes_done"].as_u64().unwrap_or(0) > 0);
        let delay = Duration::from_millis(rng.below(3000));
        std::thread::sleep(delay);
        let mut d = d;
        // SIGKILL to our own child, by PID: no chance to clean up.
        d.child.kill().expect("kill -9 the daemon");
        let _ = d.child.wait();
        eprintln!("round {round}: killed the daemon {delay:?} into backup task {task}");
        drop(d);

        // The store is consistent without the daemon: only complete points, no damage.
        verify_clean(&data.join("store"));

        let d = start(&data, &log);
        c.port = d.port;
        c.sign_in();
        let t = c.ok("GET", &format!("/api/v1/tasks/{task}"), None);
        assert_eq!(t["state"], "interrupted", "after a restart the killed task reads interrupted: {t}");
        assert!(t["error"].as_str().unwrap_or("").contains("Run it again"), "{t}");
        let points = c.ok("GET", "/api/v1/points", None);
        assert_eq!(points.as_array().unwrap().len(), 1, "a killed backup adds no restore point: {points}");
        daemon = Some(d);
    }

    // The appliance still works: an unthrottled backup succeeds and the store verifies.
    let unlimited = json!({ "name": src["name"], "url": src["url"] });
    c.ok("PUT", &format!("/api/v1/sources/{id}"), Some(&unlimited));
    let t = c.ok("POST", "/api/v1/backups", Some(&json!({ "source": id })));
    let t = wait_state(&c, t["id"].as_u64().unwrap(), Duration::from_secs(120), |t| {
        t["state"] != "queued" && t["state"] != "running"
    });
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(c.ok("GET", "/api/v1/points", None).as_array().unwrap().len(), 2);
    drop(daemon);
    verify_clean(&data.join("store"));
}

/// SIGTERM while a backup runs: the daemon cancels the task, waits for it, stops the web
/// server and exits 0 well within its shutdown timeout; after a restart the task reads
/// `cancelled` (not `interrupted`) and no restore point was added.
#[test]
fn sigterm_cancels_the_running_tasks_and_exits_0_before_its_deadline() {
    let dir = scratch("daemon-sigterm");
    let data = dir.path().join("data");
    let log = dir.path().join("daemon.log");
    let mut d = start(&data, &log);
    let mut c = Client::new(&data, d.port);
    c.set_up(&data);
    c.sign_in();
    let src = c.ok("GET", "/api/v1/sources", None)[0].clone();
    let id = src["id"].as_str().unwrap().to_string();
    // 256 MiB at 4 MB/s: over a minute of reading, longer than the whole test may take.
    let limited = json!({ "name": src["name"], "url": src["url"], "max_read_mbps": 4 });
    c.ok("PUT", &format!("/api/v1/sources/{id}"), Some(&limited));
    let t = c.ok("POST", "/api/v1/backups", Some(&json!({ "source": id })));
    let task = t["id"].as_u64().unwrap();
    wait_state(&c, task, Duration::from_secs(60), |t| t["bytes_done"].as_u64().unwrap_or(0) > 0);

    let sent = Instant::now();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(d.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM to the daemon");
    // The default --shutdown-timeout is 60 s; a cancelled backup stops in a second or two.
    let status = loop {
        if let Some(status) = d.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(60),
            "the daemon did not exit within 60 s of SIGTERM:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = sent.elapsed();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "the daemon exited with {status} after SIGTERM:\n{text}");
    assert!(took < Duration::from_secs(30), "the daemon took {took:?} to stop:\n{text}");
    assert!(text.contains("shutting down: cancelling 1 task(s)"), "{text}");
    assert!(text.contains("all tasks ended"), "{text}");
    drop(d);

    let d = start(&data, &log);
    c.port = d.port;
    c.sign_in();
    let t = c.ok("GET", &format!("/api/v1/tasks/{task}"), None);
    assert_eq!(t["state"], "cancelled", "after a clean stop the task reads cancelled: {t}");
    assert_eq!(t["error_kind"], "cancelled", "{t}");
    assert!(t["error"].as_str().unwrap_or("").contains("shutting down"), "{t}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("marked interrupted"), "no task was left interrupted:\n{text}");
    assert_eq!(c.ok("GET", "/api/v1/points", None).as_array().unwrap().len(), 0, "a cancelled backup adds no point");
    drop(d);
    verify_clean(&data.join("store"));
}
