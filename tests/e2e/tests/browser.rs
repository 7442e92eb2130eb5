//! Browser test of the web UI: the real `rackvault serve --dev` driven through Debian's
//! headless Chromium by chromedriver's WebDriver HTTP API.
//!
//! The walk: first-run setup, sign in, add a source (the dev sample disk's path, with a read
//! limit so the backup takes a few seconds), test the connection, back it up and watch the
//! progress bar move and reach 100%, restore the new restore point to a target and read the
//! restore task's log to its completion line, verify the point, cancel a running backup, add a
//! job that destages and run it, then tape: label, load and unload, add a pool, destage the
//! point, see it on the point's own page and restore it from tape byte for byte, delete it from
//! disk and see it offered for restore from tape only; settings, certificate upload, and what an
//! auditor is (not) offered; then the remaining pages. A second test walks the store's life at
//! 1400 px (retention and prune preview, pin, delete refused, garbage collection, the capacity
//! card) and checks that no table scrolls sideways. The tests run one at a time, each on its own
//! appliance (`Ui`). A PNG screenshot of each page goes to
//! `<target>/browser-screenshots/` (printed at the end); a failure saves `failure.png` there and
//! prints the page's banner, the browser's console and the server's log.
//!
//! The WebDriver client is hand-written: HTTP/1.1 over `std::net::TcpStream` with serde_json.
//! Needs `/usr/bin/chromedriver` and `/usr/bin/chromium` (Debian packages chromium-driver and
//! chromium; `CHROMEDRIVER` and `CHROMIUM` override the paths). Without them the test is
//! skipped, or fails when `RACKVAULT_REQUIRE_PEERS=1` (as `tests/run.sh` sets).
//! Build the binary first: `cargo build -p rackvault` (the UI is embedded in it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{rackvault_bin, scratch, target_dir, which};
use serde_json::{json, Value};

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
const ADMIN: &str = "admin";
const PASSWORD: &str = "browser-test-passphrase";

// ---------------------------------------------------------------------------------------------
// Processes we start: killed by PID when dropped (also when the test panics).

struct Proc {
    child: Child,
    what: &'static str,
}

impl Proc {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Panics with `log` if the process has exited.
    fn check_alive(&mut self, log: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early ({status}); its output:\n{}", self.what, tail(log, 60));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM first so the server and chromedriver shut down cleanly, SIGKILL if they linger.
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).stdin(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(what: &'static str, mut cmd: Command, log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("create log file");
    let err = out.try_clone().expect("dup log file");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
    Proc { child, what }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind an ephemeral port").port()
}

fn wait_for_port(port: u16, proc_: &mut Proc, log: &Path, timeout: Duration) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        proc_.check_alive(log);
        assert!(
            Instant::now() < deadline,
            "{} did not listen on port {port} within {timeout:?}; its output:\n{}",
            proc_.what,
            tail(log, 60)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client for the WebDriver JSON API (loopback, plain HTTP).

fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if body.is_some() {
        req.push_str(&format!(
            "Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
            payload.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&payload);
    s.write_all(req.as_bytes()).map_err(|e| format!("send {method} {path}: {e}"))?;

    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let (head_end, status, length, chunked) = loop {
        let n = s.read(&mut buf).map_err(|e| format!("read reply to {method} {path}: {e}"))?;
        if n == 0 {
            return Err(format!("connection closed before the reply headers of {method} {path}"));
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..i]).into_owned();
            let mut lines = head.split("\r\n");
            let status: u16 = lines
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("bad status line in reply to {method} {path}: {head}"))?;
            let mut length = None;
            let mut chunked = false;
            for l in lines {
                let (k, v) = l.split_once(':').unwrap_or((l, ""));
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse::<usize>().ok();
                } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                    chunked = true;
                }
            }
            break (i + 4, status, length, chunked);
        }
    };
    let mut body_bytes = raw.split_off(head_end);
    loop {
        if let Some(len) = length {
            if body_bytes.len() >= len {
                body_bytes.truncate(len);
                break;
            }
        }
        if chunked && body_bytes.ends_with(b"0\r\n\r\n") {
            break;
        }
        let n = s.read(&mut buf).map_err(|e| format!("read reply body of {method} {path}: {e}"))?;
        if n == 0 {
            break;
        }
        body_bytes.extend_from_slice(&buf[..n]);
    }
    if chunked {
        body_bytes = dechunk(&body_bytes);
    }
    let v = if body_bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body_bytes).map_err(|e| {
            format!("reply to {method} {path} is not JSON ({e}): {}", String::from_utf8_lossy(&body_bytes))
        })?
    };
    Ok((status, v))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = i + 2;
        let end = (start + size).min(b.len());
        out.extend_from_slice(&b[start..end]);
        b = &b[(end + 2).min(b.len())..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// WebDriver

struct Browser {
    port: u16,
    session: String,
    shots: PathBuf,
    taken: Vec<PathBuf>,
}

impl Browser {
    fn start(driver_port: u16, chromium: &Path, profile: &Path, shots: PathBuf, width: u32) -> Browser {
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": true,
                    "goog:loggingPrefs": { "browser": "ALL" },
                    "goog:chromeOptions": {
                        "binary": chromium.to_string_lossy(),
                        "args": [
                            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            format!("--user-data-dir={}", profile.display()),
                            format!("--window-size={width},900"), "--ignore-certificate-errors",
                        ]
                    }
                }
            }
        });
        let (status, v) =
            http(driver_port, "POST", "/session", Some(&caps)).unwrap_or_else(|e| panic!("new WebDriver session: {e}"));
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver refused a session (HTTP {status}): {v}"))
            .to_string();
        Browser { port: driver_port, session, shots, taken: Vec::new() }
    }

    /// One WebDriver command: its `value`, or the WebDriver error as text.
    fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let full = format!("/session/{}{path}", self.session);
        let body = body.or_else(|| (method == "POST").then(|| json!({})));
        let (status, v) = http(self.port, method, &full, body.as_ref())?;
        if status == 200 {
            Ok(v["value"].clone())
        } else {
            Err(format!(
                "{method} {path}: HTTP {status}: {} {}",
                v["value"]["error"].as_str().unwrap_or(""),
                v["value"]["message"].as_str().unwrap_or(&v.to_string()).lines().next().unwrap_or("")
            ))
        }
    }

    #[track_caller]
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body).unwrap_or_else(|e| panic!("WebDriver: {e}"))
    }

    fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    fn js(&self, script: &str, args: Value) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({ "script": script, "args": args })))
    }

    fn try_find(&self, css: &str) -> Option<String> {
        let v = self.try_cmd("POST", "/element", Some(json!({ "using": "css selector", "value": css }))).ok()?;
        v[ELEMENT_KEY].as_str().map(str::to_string)
    }

    #[track_caller]
    fn find(&self, css: &str) -> String {
        self.wait(&format!("element {css}"), Duration::from_secs(15), || self.try_find(css))
    }

    /// Polls `f` until it gives `Some`, failing after `timeout` with what was awaited.
    #[track_caller]
    fn wait<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what} (page {})", self.location());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the element; retries while it is stale or covered (the page re-renders while
    /// polling; a sticky top bar covers what scrolled under it, so a covered element is
    /// scrolled to the middle first).
    #[track_caller]
    fn click(&self, css: &str) {
        let mut last = String::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(el) = self.try_find(css) {
                match self.try_cmd("POST", &format!("/element/{el}/click"), None) {
                    Ok(_) => return,
                    Err(e) => {
                        if e.contains("intercepted") {
                            self.js(
                                "const e = document.querySelector(arguments[0]); if (e) e.scrollIntoView({block: 'center'});",
                                json!([css]),
                            );
                        }
                        last = e;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("cannot click {css}: {last}");
    }

    #[track_caller]
    fn fill(&self, css: &str, text: &str) {
        let el = self.find(css);
        self.cmd("POST", &format!("/element/{el}/clear"), None);
        self.cmd("POST", &format!("/element/{el}/value"), Some(json!({ "text": text })));
    }

    /// The current value of the form field matching `css` (the property, not the attribute).
    fn value(&self, css: &str) -> Option<String> {
        self.js("const e = document.querySelector(arguments[0]); return e ? e.value : null;", json!([css]))
            .as_str()
            .map(str::to_string)
    }

    /// Chooses `value` in the `<select>` matching `css`, as a user would (fires `change`).
    #[track_caller]
    fn choose(&self, css: &str, value: &str) {
        self.find(css);
        let ok = self.js(
            "const e = document.querySelector(arguments[0]); \
             if (![...e.options].some((o) => o.value === arguments[1])) return false; \
             e.value = arguments[1]; e.dispatchEvent(new Event('change', { bubbles: true })); return true;",
            json!([css, value]),
        );
        assert_eq!(ok, json!(true), "{css} has no option {value:?}");
    }

    /// Answers the page's next `window.confirm` dialogs with OK (WebDriver's alert handling
    /// races with the page's own polling; replacing the function is deterministic).
    fn accept_confirms(&self) {
        self.js("window.confirm = () => true; return true;", json!([]));
    }

    /// The text of the first element matching `css`, `None` if there is none.
    fn text(&self, css: &str) -> Option<String> {
        self.js("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", json!([css]))
            .as_str()
            .map(str::to_string)
    }

    fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
            json!([css, name]),
        )
        .as_str()
        .map(str::to_string)
    }

    fn location(&self) -> String {
        self.try_cmd("GET", "/url", None).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    }

    fn hash(&self) -> String {
        self.js("return location.hash;", json!([])).as_str().unwrap_or("").to_string()
    }

    /// The visible error banner's text, if any.
    fn banner(&self) -> Option<String> {
        self.js(
            "const b = document.getElementById('banner'); return b && !b.hidden ? (b.className + ': ' + b.textContent) : null;",
            json!([]),
        )
        .as_str()
        .map(str::to_string)
    }

    fn screenshot(&mut self, name: &str) {
        let b64 = self.cmd("GET", "/screenshot", None);
        let png = base64_decode(b64.as_str().expect("screenshot is a base64 string"));
        assert!(png.starts_with(b"\x89PNG"), "screenshot {name} is not a PNG");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self.taken.push(path);
    }

    fn console(&self) -> Vec<Value> {
        self.try_cmd("POST", "/se/log", Some(json!({ "type": "browser" })))
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// Fails when the page broke a CSP rule or threw a script error (since the last call:
    /// reading the log empties it).
    #[track_caller]
    fn assert_clean_console(&self) {
        let bad: Vec<String> = self
            .console()
            .iter()
            .filter_map(|l| l["message"].as_str().map(str::to_string))
            .filter(|m| m.contains("Content Security Policy") || m.contains("Uncaught") || m.contains("Refused to"))
            .collect();
        assert!(bad.is_empty(), "browser console errors:\n{}", bad.join("\n"));
    }

    /// Fails when the page or one of its tables scrolls sideways at the window's width.
    #[track_caller]
    fn assert_no_sideways_scroll(&self, what: &str) {
        let wide = self.js(
            "const out = []; const d = document.documentElement; \
             if (d.scrollWidth > d.clientWidth + 1) out.push(`the page (${d.scrollWidth} > ${d.clientWidth} px)`); \
             for (const w of document.querySelectorAll('.table-wrap')) { \
               if (w.scrollWidth > w.clientWidth + 1) { const t = w.querySelector('table'); \
                 out.push(`table ${t && t.id ? '#' + t.id : '(no id)'} (${w.scrollWidth} > ${w.clientWidth} px)`); } } \
             return out;",
            json!([]),
        );
        assert_eq!(
            wide,
            json!([]),
            "{what} scrolls sideways at {} px",
            self.js("return window.innerWidth;", json!([]))
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session, which makes chromedriver quit this Chromium.
        let _ = http(self.port, "DELETE", &format!("/session/{}", self.session), None);
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// On a panic: a screenshot of the page and what the page, the browser and the server said.
struct FailureReport<'a> {
    browser: &'a std::cell::RefCell<Browser>,
    server_log: PathBuf,
}

impl Drop for FailureReport<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(b) = self.browser.try_borrow() else { return };
        eprintln!("--- browser test failed on {}", b.location());
        if let Some(text) = b.banner() {
            eprintln!("--- banner: {text}");
        }
        if let Ok(png) = b.try_cmd("GET", "/screenshot", None) {
            let path = b.shots.join("failure.png");
            if std::fs::write(&path, base64_decode(png.as_str().unwrap_or(""))).is_ok() {
                eprintln!("--- screenshot: {}", path.display());
            }
        }
        for l in b.console() {
            eprintln!("--- console: {} {}", l["level"].as_str().unwrap_or(""), l["message"].as_str().unwrap_or(""));
        }
        eprintln!("--- server log (tail):\n{}", tail(&self.server_log, 40));
    }
}

// ---------------------------------------------------------------------------------------------
// The test

/// chromedriver and chromium, or `None` (skip) when they are missing and peers are optional.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let find = |var: &str, names: &[&str]| -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(var) {
            return Some(PathBuf::from(p)).filter(|p| p.is_file());
        }
        names.iter().find_map(|n| {
            let p = Path::new("/usr/bin").join(n);
            if p.is_file() {
                Some(p)
            } else {
                which(n)
            }
        })
    };
    let driver = find("CHROMEDRIVER", &["chromedriver"]);
    let chromium = find("CHROMIUM", &["chromium", "chromium-browser"]);
    match (driver, chromium) {
        (Some(d), Some(c)) => Some((d, c)),
        _ if std::env::var("RACKVAULT_REQUIRE_PEERS").as_deref() == Ok("1") => panic!(
            "chromedriver or chromium is missing but RACKVAULT_REQUIRE_PEERS=1; install the Debian packages chromium and chromium-driver"
        ),
        _ => {
            eprintln!("skipped: chromedriver or chromium is missing (apt-get install chromium chromium-driver)");
            None
        }
    }
}

/// Browser tests run one at a time: each drives a server and a Chromium on the same machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What a browser test runs on: `rackvault serve --dev` on a fresh data directory,
/// chromedriver, and a browser session `width` pixels wide. Dropped in field order: the
/// session ends before chromedriver and the server stop.
struct Ui {
    browser: std::cell::RefCell<Browser>,
    _driver: Proc,
    _server: Proc,
    /// `https://127.0.0.1:<port>/`
    base: String,
    data: PathBuf,
    server_log: PathBuf,
    shots: PathBuf,
    dir: tempfile::TempDir,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl Drop for Ui {
    /// A job with immutability makes the appliance give its sealed packs the immutable
    /// attribute; clear it so that the scratch directory can be removed.
    fn drop(&mut self) {
        testkit::clear_immutable(self.dir.path());
    }
}

impl Ui {
    /// `None` (skip) without chromedriver and chromium, unless peers are required.
    fn start(tag: &str, width: u32) -> Option<Ui> {
        let (chromedriver, chromium) = browser_tools()?;
        let one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let bin = rackvault_bin();
        let dir = scratch(tag);
        let data = dir.path().join("data");
        let shots = target_dir().join("browser-screenshots");
        std::fs::create_dir_all(&shots).expect("create the screenshot directory");

        // The appliance.
        let port = free_port();
        let server_log = dir.path().join("server.log");
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"]).arg(&data);
        let mut server = spawn("rackvault serve", cmd, &server_log);
        wait_for_port(port, &mut server, &server_log, Duration::from_secs(60));

        // chromedriver.
        let driver_port = free_port();
        let driver_log = dir.path().join("chromedriver.log");
        let mut cmd = Command::new(&chromedriver);
        cmd.arg(format!("--port={driver_port}"));
        let mut driver = spawn("chromedriver", cmd, &driver_log);
        wait_for_port(driver_port, &mut driver, &driver_log, Duration::from_secs(30));
        let profile = dir.path().join("chromium-profile");
        std::fs::create_dir_all(&profile).expect("create the browser profile directory");

        let browser = std::cell::RefCell::new(Browser::start(driver_port, &chromium, &profile, shots.clone(), width));
        Some(Ui {
            browser,
            _driver: driver,
            _server: server,
            base: format!("https://127.0.0.1:{port}/"),
            data,
            server_log,
            shots,
            dir,
            _one_at_a_time: one_at_a_time,
        })
    }

    /// Prints where the screenshots are.
    fn done(&self, started: Instant) {
        let b = self.browser.borrow();
        println!(
            "browser test passed in {:.1} s; {} screenshots in {}",
            started.elapsed().as_secs_f64(),
            b.taken.len(),
            self.shots.display()
        );
        eprintln!("screenshots: {}", self.shots.display());
    }
}

/// The one-time setup code the daemon printed (and keeps in its data directory).
fn setup_code(data: &Path) -> String {
    std::fs::read_to_string(data.join("setup-code")).expect("the daemon wrote a setup code").trim().to_string()
}

/// First-run setup of the administrator and sign-in, without detours.
fn set_up_and_sign_in(b: &Browser, base: &str, data: &Path) {
    b.goto(base);
    b.fill("#setup-code", &setup_code(data));
    b.fill("#setup-user", ADMIN);
    b.fill("#setup-password", PASSWORD);
    b.fill("#setup-confirm", PASSWORD);
    b.click("#setup-submit");
    b.find("#login-user");
    b.fill("#login-user", ADMIN);
    b.fill("#login-password", PASSWORD);
    b.click("#login-submit");
    b.find("#dashboard .stats");
}

/// A self-signed certificate for 127.0.0.1 made with the `openssl` command: (certificate PEM,
/// key PEM, SHA-256 fingerprint as the UI shows it). `None` (the step is skipped, loudly)
/// without `openssl`, unless `RACKVAULT_REQUIRE_PEERS=1`.
fn make_certificate(dir: &Path) -> Option<(String, String, String)> {
    let Some(openssl) = which("openssl") else {
        assert!(
            std::env::var("RACKVAULT_REQUIRE_PEERS").as_deref() != Ok("1"),
            "openssl is missing but RACKVAULT_REQUIRE_PEERS=1; install the Debian package openssl"
        );
        eprintln!("skipped the certificate upload: no openssl command");
        return None;
    };
    let (cert, key) = (dir.join("upload-cert.pem"), dir.join("upload-key.pem"));
    let made = Command::new(&openssl)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=rackvault browser test", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl req");
    assert!(made.success(), "openssl req failed");
    let out = Command::new(&openssl)
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert)
        .output()
        .expect("run openssl x509");
    let text = String::from_utf8_lossy(&out.stdout);
    let fp = text.trim().rsplit('=').next().unwrap_or_default().to_ascii_uppercase();
    assert_eq!(fp.len(), 95, "openssl printed a SHA-256 fingerprint: {text}");
    Some((std::fs::read_to_string(&cert).unwrap(), std::fs::read_to_string(&key).unwrap(), fp))
}

/// Waits until the task page shows a finished state; panics unless it is `succeeded`. Returns
/// the task id and the progress values seen while waiting.
#[track_caller]
fn wait_task_succeeded(b: &Browser, what: &str, timeout: Duration) -> (u64, Vec<f64>) {
    let id = b.wait(&format!("{what}: the task page"), Duration::from_secs(15), || {
        b.hash().strip_prefix("#/tasks/").and_then(|s| s.parse::<u64>().ok())
    });
    b.find("[data-test=task-progress]");
    let mut seen = Vec::new();
    let state = b.wait(&format!("{what}: task #{id} to finish"), timeout, || {
        if let Some(p) = b.attr("#task-progress", "aria-valuenow").and_then(|p| p.parse::<f64>().ok()) {
            if seen.last() != Some(&p) {
                seen.push(p);
            }
        }
        let st = b.text("#task-state")?;
        (!matches!(st.as_str(), "queued" | "running")).then_some(st)
    });
    if state != "succeeded" {
        panic!(
            "{what}: task #{id} ended {state}: {}",
            b.text("#task-error").unwrap_or_else(|| b.text("#task-log").unwrap_or_default())
        );
    }
    (id, seen)
}

#[test]
fn web_ui_walkthrough() {
    let Some(ui) = Ui::start("browser", 1280) else { return };
    let (browser, base, data, dir) = (&ui.browser, &ui.base, &ui.data, &ui.dir);
    let _report = FailureReport { browser, server_log: ui.server_log.clone() };
    let started = Instant::now();

    // First-run setup: the certificate fingerprint is shown; mismatched passwords are refused
    // with a readable banner.
    {
        let mut b = browser.borrow_mut();
        b.goto(base);
        b.find("#setup-user");
        let fp = b.text("#setup-fingerprint").unwrap_or_default();
        assert_eq!(fp.matches(':').count(), 31, "setup page shows the SHA-256 fingerprint as 32 hex pairs, got {fp:?}");
        b.screenshot("01-setup");
        // A wrong setup code is refused with the API's explanation.
        b.fill("#setup-code", "AAAA-BBBB-CCCC-DDDD");
        b.fill("#setup-user", ADMIN);
        b.fill("#setup-password", PASSWORD);
        b.fill("#setup-confirm", PASSWORD);
        b.click("#setup-submit");
        let banner = b.wait("the wrong-code banner", Duration::from_secs(5), || b.banner());
        assert!(banner.contains("setup code"), "banner: {banner}");
        b.fill("#setup-code", &setup_code(data));
        b.fill("#setup-confirm", "something-else-entirely");
        b.click("#setup-submit");
        let banner =
            b.wait("the mismatch banner", Duration::from_secs(5), || b.banner().filter(|t| t.contains("do not match")));
        assert!(banner.contains("do not match"), "banner: {banner}");
        b.fill("#setup-confirm", PASSWORD);
        b.click("#setup-submit");

        // Sign in: a wrong password shows the API's error, the right one the dashboard.
        b.find("#login-user");
        b.screenshot("02-login");
        b.fill("#login-user", ADMIN);
        b.fill("#login-password", "not-the-password");
        b.click("#login-submit");
        let banner = b.wait("the sign-in error banner", Duration::from_secs(10), || {
            b.banner().filter(|t| t.contains("banner-error"))
        });
        assert!(banner.len() > "banner banner-error: ".len() + 3, "the sign-in error is readable: {banner}");
        b.fill("#login-password", PASSWORD);
        b.click("#login-submit");
        b.find("#dashboard .stats");
        let who = b.text("#current-user").unwrap_or_default();
        assert!(who.contains(ADMIN) && who.contains("Administrator"), "header shows the user and role: {who}");
        std::thread::sleep(Duration::from_millis(300));
        b.screenshot("03-dashboard");

        // Sources: the dev sample disk is configured; add a second source on the same disk.
        b.goto(&format!("{base}#/sources"));
        b.find("#sources-table");
        let sample_url = b.text("#sources-table tbody tr code.url").unwrap_or_default();
        assert!(!sample_url.is_empty(), "dev mode configures a sample source");
        b.screenshot("04-sources");
        b.click("#source-add");
        b.fill("#source-name", "browser-vm");
        b.fill("#source-url", &sample_url);
        // A read limit makes the 256 MiB sample take a few seconds, so the progress bar is
        // seen moving, not only at 0% and 100%.
        b.fill("#source-read-limit", "64");
        b.screenshot("05-source-form");
        b.click("#source-save");
        b.find("#sources-table tr[data-source-name=browser-vm]");
        b.click("#sources-table tr[data-source-name=browser-vm] [data-test=source-test]");
        let probe = b.wait("the connection test result", Duration::from_secs(60), || b.text("#probe-status"));
        assert!(probe.contains("Connection OK"), "connection test of {sample_url}: {probe}");
        b.screenshot("06-source-test");

        // Back it up; the progress bar reaches 100% and the task succeeds.
        b.click("#sources-table tr[data-source-name=browser-vm] [data-test=source-backup]");
        b.find("#task-progress");
        b.screenshot("07-backup-running");
        let (backup_id, seen) = wait_task_succeeded(&b, "backup", Duration::from_secs(300));
        let pct = b.attr("#task-progress", "aria-valuenow").unwrap_or_default();
        assert_eq!(pct, "100.0", "the backup's progress bar ends at 100% (seen {seen:?})");
        assert!(
            seen.iter().any(|p| *p > 0.0 && *p < 100.0),
            "the progress bar showed the backup under way, not only its start and end: {seen:?}"
        );
        let log = b.wait("the backup log", Duration::from_secs(30), || {
            b.text("#task-log").filter(|l| l.contains("backup complete"))
        });
        assert!(log.contains("reads limited to 64 MB/s"), "the source's read limit applied:\n{log}");
        assert!(b.text("#task-progress").unwrap_or_default().contains("100%"), "the bar's label says 100%");
        b.screenshot("08-backup-done");
        eprintln!("backup task #{backup_id}: progress seen {seen:?}");

        // The dashboard now shows the backup among the last results and a non-empty store.
        b.goto(&format!("{base}#/dashboard"));
        b.find("#last-results");
        let last = b.text("#last-results").unwrap_or_default();
        assert!(last.contains("browser-vm"), "last results list the backup: {last}");
        std::thread::sleep(Duration::from_millis(300));
        b.screenshot("09-dashboard-after-backup");

        // Restore points: the new point, restored to a target.
        b.goto(&format!("{base}#/points"));
        b.find("#points-table");
        let row = "#points-table tr[data-point^='browser-vm@']";
        b.find(row);
        let point = b.attr(row, "data-point").unwrap_or_default();
        b.screenshot("10-restore-points");
        b.click(&format!("{row} [data-test=point-restore]"));
        b.fill("#restore-target", "browser-restore");
        b.screenshot("11-restore-form");
        b.click("#restore-submit");
        let (restore_id, _) = wait_task_succeeded(&b, "restore", Duration::from_secs(300));
        assert_ne!(restore_id, backup_id);
        let subject = b.text("#task-card .card-head h2").unwrap_or_default();
        assert!(subject.contains(&point), "the restore task names {point}: {subject}");

        // The task log, read to its end, has the completion line.
        b.wait("the complete task log", Duration::from_secs(30), || {
            (b.attr("#task-log", "data-complete").as_deref() == Some("true")).then_some(())
        });
        let log = b.text("#task-log").unwrap_or_default();
        assert!(
            log.lines().any(|l| l.trim_end().ends_with("] succeeded")),
            "the restore task's log ends with a completion line:\n{log}"
        );
        b.screenshot("12-restore-task-log");
        let restored = data.join("restores").join("browser-restore");
        let files: Vec<_> = std::fs::read_dir(&restored)
            .unwrap_or_else(|e| panic!("restore target {}: {e}", restored.display()))
            .flatten()
            .filter(|e| e.metadata().is_ok_and(|m| m.is_file() && m.len() > 0))
            .collect();
        assert!(!files.is_empty(), "the restore wrote a disk into {}", restored.display());

        // Verify the restore point.
        b.goto(&format!("{base}#/points"));
        b.click(&format!("{row} [data-test=point-verify]"));
        wait_task_succeeded(&b, "verify", Duration::from_secs(120));

        // Cancel a running backup: a tight read limit keeps it running long enough; it ends
        // cancelled and adds no restore point.
        b.goto(&format!("{base}#/points"));
        b.find("#points-table");
        let points_before = b.js("return document.querySelectorAll('#points-table tbody tr').length;", json!([]));
        b.goto(&format!("{base}#/sources"));
        b.find("#sources-table tr[data-source-name=sample-vm]");
        let sample_id = b.attr("#sources-table tr[data-source-name=sample-vm]", "data-source-id");
        b.click("#sources-table tr[data-source-name=browser-vm] a");
        b.fill("#source-read-limit", "4");
        b.click("#source-save");
        b.find("#sources-table tr[data-source-name=browser-vm]");
        let limit = b.text("#sources-table tr[data-source-name=browser-vm]").unwrap_or_default();
        assert!(limit.contains("4 MB/s") && !limit.contains("64 MB/s"), "the edited read limit is listed: {limit}");
        b.click("#sources-table tr[data-source-name=browser-vm] [data-test=source-backup]");
        b.wait("the slow backup to run", Duration::from_secs(30), || {
            (b.text("#task-state").as_deref() == Some("running")).then_some(())
        });
        b.accept_confirms();
        b.click("#task-cancel");
        let state = b.wait("the cancelled state", Duration::from_secs(60), || {
            b.text("#task-state").filter(|s| !matches!(s.as_str(), "queued" | "running"))
        });
        assert_eq!(state, "cancelled", "{}", b.text("#task-error").unwrap_or_default());
        let note = b.js("return document.querySelector('#task-error-kind') === null;", json!([]));
        assert_eq!(note, json!(true), "a cancel is not explained as a transient or permanent failure");
        b.screenshot("13-backup-cancelled");
        b.goto(&format!("{base}#/points"));
        b.find("#points-table");
        let points_after = b.js("return document.querySelectorAll('#points-table tbody tr').length;", json!([]));
        assert_eq!(points_after, points_before, "a cancelled backup commits no restore point");

        // Tape: label a cartridge, load and unload another, add a pool, destage the restore
        // point, and restore it straight from tape.
        b.goto(&format!("{base}#/tape"));
        b.find("#tape-table");
        b.screenshot("14-tape");
        let label_row = "#tape-table tr[data-barcode=RVT001L9]";
        b.click(&format!("{label_row} [data-test=tape-label]"));
        b.fill("#label-pool", "default");
        b.screenshot("15-tape-label");
        b.click("#label-submit");
        b.wait("the labelled cartridge", Duration::from_secs(60), || {
            b.text(label_row).filter(|t| t.contains("labelled") && t.contains("default"))
        });
        b.click("#tape-table tr[data-barcode=RVT002L9] [data-test=tape-load]");
        let drive_row = "#tape-table tr[data-element=drive][data-barcode=RVT002L9]";
        b.find(drive_row);
        b.screenshot("16-tape-loaded");
        b.click(&format!("{drive_row} [data-test=tape-unload]"));
        b.find("#tape-table tr[data-element=slot][data-barcode=RVT002L9]");
        b.click("#pool-add");
        b.fill("#pool-name", "weekly-offsite");
        b.choose("#pool-allocation", "weekly");
        b.fill("#pool-retention", "90");
        b.fill("#pool-max-tapes", "2");
        b.screenshot("17-tape-pool");
        b.click("#pool-save");
        let pool =
            b.wait("the new pool", Duration::from_secs(30), || b.text("#pools-table tr[data-pool=weekly-offsite]"));
        assert!(pool.contains("90 d") && pool.contains("≤ 2"), "the pool's policy is listed: {pool}");

        b.goto(&format!("{base}#/points"));
        b.click(&format!("{row} [data-test=point-destage]"));
        b.choose("#destage-point", &point);
        b.choose("#destage-pool", "default");
        b.screenshot("18-destage-form");
        b.click("#destage-submit");
        wait_task_succeeded(&b, "destage", Duration::from_secs(300));
        // The point's own page: its disks, figures and now a copy on tape.
        b.goto(&format!("{base}#/points"));
        b.click(&format!("{row} [data-test=point-link]"));
        b.find("#point-disks-table");
        b.find("#point-copies-table");
        let where_ = b.text("#point-card [data-test=point-where]").unwrap_or_default();
        assert_eq!(where_, "on disk and on tape", "the point page says where the point is");
        b.screenshot("19-point-detail");
        b.goto(&format!("{base}#/tape"));
        let copy_row = format!("#copies-table tr[data-point='{point}']");
        b.find(&copy_row);
        b.screenshot("20-tape-copies");
        b.click(&format!("{copy_row} [data-test=tape-restore]"));
        b.fill("#tape-restore-target", "browser-from-tape");
        b.click("#tape-restore-submit");
        wait_task_succeeded(&b, "restore from tape", Duration::from_secs(300));
        b.screenshot("21-tape-restore-done");
        let from_tape = data.join("restores").join("browser-from-tape");
        let raw = std::fs::read_dir(&from_tape)
            .unwrap_or_else(|e| panic!("tape restore target {}: {e}", from_tape.display()))
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "raw"))
            .expect("the tape restore wrote a disk");
        assert!(
            std::fs::read(raw.path()).unwrap() == std::fs::read(&sample_url).unwrap(),
            "the disk restored from tape equals the sample disk"
        );

        // Deleted from disk, the point stays listed as on tape only, and offers the restore
        // from tape instead of the disk restore.
        b.goto(&format!("{base}#/points"));
        b.find(&format!("{row} [data-test=flag-on-tape]"));
        b.accept_confirms();
        b.click(&format!("{row} [data-test=point-delete]"));
        b.wait("the deleted notice", Duration::from_secs(15), || b.banner().filter(|t| t.contains("deleted")));
        let tape_only = format!("{row}[data-tape-only=true]");
        b.find(&format!("{tape_only} [data-test=flag-tape-only]"));
        assert!(b.try_find(&format!("{tape_only} [data-test=point-restore]")).is_none(), "no disk restore for {point}");
        b.click(&format!("{tape_only} [data-test=point-tape-restore]"));
        b.find("#tape-restore-form");
        b.screenshot("21b-tape-only-point");
        b.assert_no_sideways_scroll("the restore points page");

        // Jobs: add one on a schedule that copies each backup to tape, and run it now: the
        // backup succeeds and queues the destage, which succeeds too.
        b.goto(&format!("{base}#/jobs"));
        b.click("#job-add");
        b.fill("#job-name", "browser-nightly");
        b.choose("#job-source", sample_id.as_deref().expect("the sample source has an id"));
        b.fill("#job-schedule", "mon..fri 22:00");
        b.fill("#job-retries", "1");
        b.choose("#job-destage-pool", "default");
        b.screenshot("22-job-form");
        b.click("#job-save");
        b.find("#jobs-table tr[data-job-id]");
        let jobs = b.text("#jobs-table").unwrap_or_default();
        assert!(
            jobs.contains("browser-nightly") && jobs.contains("mon..fri 22:00") && jobs.contains("pool default"),
            "the job is listed: {jobs}"
        );
        b.screenshot("23-jobs");
        b.assert_no_sideways_scroll("the jobs page");
        b.click("#jobs-table tr[data-job-id] [data-test=job-run]");
        wait_task_succeeded(&b, "job run", Duration::from_secs(300));
        let log = b.wait("the job's complete log", Duration::from_secs(30), || {
            b.text("#task-log").filter(|l| l.contains("queued as task"))
        });
        let chained: u64 = log
            .split("queued as task ")
            .nth(1)
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the job's log names the destage task:\n{log}"));
        b.goto(&format!("{base}#/tasks/{chained}"));
        wait_task_succeeded(&b, "the job's destage", Duration::from_secs(300));
        b.goto(&format!("{base}#/tape"));
        b.find("#copies-table tr[data-point^='sample-vm@']");

        // The other pages render without errors.
        b.goto(&format!("{base}#/tasks"));
        b.find(&format!("#tasks-table tr[data-task-id='{restore_id}']"));
        b.screenshot("24-tasks");
        b.goto(&format!("{base}#/users"));
        b.find("#users-table tr[data-user=admin]");
        b.screenshot("25-users");
        b.goto(&format!("{base}#/tokens"));
        b.fill("#token-name", "browser-test");
        b.click("#token-create");
        let secret = b.wait("the new token's secret", Duration::from_secs(10), || b.text("#token-secret"));
        assert!(secret.len() >= 16, "a token secret is shown once: {secret:?}");
        b.screenshot("26-tokens");
        // Remotes: the appliance reads the certificate a URL presents (its own here) for the
        // admin to compare; saving needs the comparison confirmed.
        b.goto(&format!("{base}#/remotes"));
        b.find("#remote-form");
        b.fill("#remote-url", base.trim_end_matches('/'));
        b.click("#remote-read-fingerprint");
        let read = b.wait("the fingerprint read from the URL", Duration::from_secs(15), || {
            b.value("#remote-fingerprint").filter(|v| !v.is_empty())
        });
        assert_eq!(read, fp, "reading its own address gives the appliance's own fingerprint");
        b.fill("#remote-name", "self");
        b.fill("#remote-namespace", "self");
        b.fill("#remote-token", "rvt_not_a_real_token");
        b.click("#remote-submit");
        let refused = b.wait("the unconfirmed fingerprint refused", Duration::from_secs(10), || {
            b.banner().filter(|t| t.contains("tick the box"))
        });
        assert!(refused.contains("Compare the fingerprint"), "{refused}");
        b.screenshot("26b-remotes");
        b.assert_no_sideways_scroll("the remotes page");
        // An S3 bucket (the S3 peer): added, tested, its (empty) points listed.
        if let Some(env) = testkit::peers::s3() {
            let bucket = e2e::s3_bucket(&env, false);
            b.fill("#s3-endpoint", &env.endpoint);
            b.fill("#s3-bucket", &bucket);
            b.fill("#s3-access-key", &env.access);
            b.fill("#s3-secret-key", &env.secret);
            b.fill("#s3-name", "cloud");
            b.fill("#s3-namespace", "browser");
            b.click("#s3-submit");
            b.wait("the bucket listed", Duration::from_secs(15), || {
                b.text("#remotes-table").filter(|t| t.contains("S3 bucket") && t.contains(&bucket))
            });
            b.click("[data-test=remote-test]");
            b.wait("the connection test", Duration::from_secs(20), || {
                b.banner().filter(|t| t.contains("takes the credentials"))
            });
            b.click("[data-test=remote-points]");
            b.wait("the bucket's points", Duration::from_secs(20), || {
                b.text("#remote-points-card").filter(|t| t.contains("Nothing there yet"))
            });
            b.screenshot("26c-remotes-s3");
            b.assert_no_sideways_scroll("the remotes page with a bucket");
        }
        b.goto(&format!("{base}#/audit"));
        b.find("#audit-table");
        b.screenshot("27-audit");
        b.goto(&format!("{base}#/settings"));
        let fp2 = b.wait("the settings fingerprint", Duration::from_secs(10), || b.text("#settings-fingerprint"));
        assert_eq!(fp2, fp, "settings show the certificate fingerprint the setup page showed");
        b.screenshot("28-settings");
        // The network card: outside the appliance image it says the settings would not apply
        // (the image test sets a static address for real).
        let net = b.wait("the network card", Duration::from_secs(10), || b.text("#network-state"));
        assert!(net.contains("not the appliance image"), "{net}");

        // Settings: task limits are saved; a tape library address that does not answer is
        // refused with the reason, and the working one stays.
        let changer = b.value("#settings-tape-changer").unwrap_or_default();
        assert!(changer.starts_with("emulated:"), "dev mode's library is configured: {changer:?}");
        b.fill("#settings-max-tasks", "3");
        b.click("#settings-save");
        b.wait("the saved notice", Duration::from_secs(15), || b.banner().filter(|t| t.contains("Settings saved")));
        b.fill("#settings-tape-changer", "iscsi://127.0.0.1:9/iqn.2024-01.test:none/0");
        b.click("#settings-save");
        let refused =
            b.wait("the refusal", Duration::from_secs(30), || b.banner().filter(|t| t.contains("banner-error")));
        assert!(refused.contains("cannot connect to iscsi://127.0.0.1:9"), "the refusal says why: {refused}");
        b.goto(&format!("{base}#/dashboard"));
        b.find("#dashboard .stats");
        b.goto(&format!("{base}#/settings"));
        b.find("#settings-form");
        assert_eq!(b.value("#settings-max-tasks").as_deref(), Some("3"));
        assert_eq!(b.value("#settings-tape-changer").unwrap_or_default(), changer, "the library is unchanged");

        // Install an operator-supplied certificate: the settings page shows its fingerprint,
        // the daemon stores it, and the UI keeps working on new connections.
        if let Some((cert_pem, key_pem, want_fp)) = make_certificate(dir.path()) {
            b.fill("#cert-pem", &cert_pem);
            b.fill("#key-pem", &key_pem);
            b.click("#cert-upload");
            let shown = b.wait("the new fingerprint", Duration::from_secs(15), || {
                b.text("#settings-fingerprint").filter(|t| *t != fp)
            });
            assert_eq!(shown, want_fp, "settings show the uploaded certificate's SHA-256 fingerprint");
            b.screenshot("29-certificate-installed");
            let stored = std::fs::read_to_string(data.join("tls/cert.pem")).unwrap_or_default();
            assert_eq!(stored.trim(), cert_pem.trim(), "the daemon stored the uploaded certificate");
            b.goto(&format!("{base}#/settings"));
            let again = b.wait("the settings page over a new connection", Duration::from_secs(15), || {
                b.text("#settings-fingerprint")
            });
            assert_eq!(again, want_fp, "new connections get the uploaded certificate");
        }

        // Roles: an auditor sees everything and can change nothing; the API refuses too.
        b.goto(&format!("{base}#/users"));
        b.fill("#user-name", "viewer");
        b.fill("#user-password", "viewer-passphrase-1");
        b.fill("#user-confirm", "viewer-passphrase-1");
        b.choose("#user-role", "auditor");
        b.click("#user-add");
        b.find("#users-table tr[data-user=viewer]");
        b.click("#logout");
        b.fill("#login-user", "viewer");
        b.fill("#login-password", "viewer-passphrase-1");
        b.click("#login-submit");
        b.find("#dashboard .stats");
        let who = b.text("#current-user").unwrap_or_default();
        assert!(who.contains("viewer") && who.contains("Auditor"), "header shows the auditor: {who}");
        b.goto(&format!("{base}#/points"));
        b.find("#points-table");
        b.screenshot("30-auditor-points");
        for (page, table, forbidden) in [
            (
                "points",
                "#points-table",
                "[data-test=point-restore], [data-test=point-destage], [data-test=point-tape-restore], \
                 [data-test=point-pin], [data-test=point-delete]",
            ),
            ("sources", "#sources-table", "#source-add, [data-test=source-backup], [data-test=source-delete]"),
            ("tape", "#tape-table", "[data-test=tape-load], [data-test=tape-label], #pool-add"),
            ("jobs", "#jobs-table", "#job-add, [data-test=job-run]"),
        ] {
            b.goto(&format!("{base}#/{page}"));
            b.find(table);
            assert!(b.try_find(forbidden).is_none(), "the auditor is offered {forbidden} on #/{page}");
        }
        let status = b.js(
            "const s = new XMLHttpRequest(); s.open('GET', '/api/v1/session', false); s.send(); \
             const csrf = JSON.parse(s.responseText).csrf; \
             const x = new XMLHttpRequest(); x.open('POST', '/api/v1/backups', false); \
             x.setRequestHeader('Content-Type', 'application/json'); x.setRequestHeader('X-CSRF-Token', csrf); \
             x.send(JSON.stringify({ source: arguments[0] })); return x.status;",
            json!([sample_id.as_deref().unwrap_or("x")]),
        );
        assert_eq!(status, json!(403), "the API refuses an auditor's backup");
        assert!(b.banner().is_none_or(|t| !t.contains("banner-error")), "no error banner at the end: {:?}", b.banner());

        // The page broke no CSP rule and threw no script error.
        b.assert_clean_console();

        // Sign out.
        b.click("#logout");
        b.find("#login-user");
    }

    ui.done(started);
}

/// The store's life in the browser, 1400 px wide: a job that keeps the last point, run twice,
/// leaves one point and previews its prune; a pinned and then an immutable point cannot be
/// deleted and the page says why; settings take the watermarks and the maintenance time, and
/// start a garbage collection whose task shows what it freed; the dashboard shows the capacity
/// with those watermarks. No table added for this scrolls sideways.
#[test]
fn retention_pins_gc_and_capacity_in_the_browser() {
    let Some(ui) = Ui::start("browser-lifecycle", 1400) else { return };
    let (browser, base) = (&ui.browser, &ui.base);
    let _report = FailureReport { browser, server_log: ui.server_log.clone() };
    let started = Instant::now();
    {
        let mut b = browser.borrow_mut();
        set_up_and_sign_in(&b, base, &ui.data);

        // A job on the dev sample that keeps the last restore point only.
        b.goto(&format!("{base}#/jobs"));
        b.click("#job-add");
        b.fill("#job-name", "keep-one");
        b.fill("#job-schedule", "mon..fri 22:00");
        let hint = b.text("#job-retention-hint").unwrap_or_default();
        assert!(hint.contains("keeps every restore point"), "the form says what an empty policy means: {hint}");
        b.fill("#job-keep-last", "1");
        b.screenshot("lifecycle-01-job-retention-form");
        b.click("#job-save");
        let job_row = "#jobs-table tr[data-job-name=keep-one]";
        let keeps = b.wait("the job's retention summary", Duration::from_secs(15), || {
            b.text(&format!("{job_row} [data-test=job-retention]"))
        });
        assert_eq!(keeps, "1 last", "the jobs table summarises the retention");

        // Run it twice: the second backup's retention prunes the first point.
        for run in 1..=2 {
            b.goto(&format!("{base}#/jobs"));
            b.click(&format!("{job_row} [data-test=job-run]"));
            wait_task_succeeded(&b, &format!("run {run} of keep-one"), Duration::from_secs(300));
        }
        let log = b.wait("the retention line", Duration::from_secs(30), || {
            b.text("#task-log").filter(|l| l.contains("retention:"))
        });
        assert!(log.contains("retention: 1 kept, 1 pruned"), "the second run pruned the first point:\n{log}");
        b.goto(&format!("{base}#/points"));
        b.find("#points-table");
        let rows = b.js("return document.querySelectorAll('#points-table tbody tr').length;", json!([]));
        assert_eq!(rows, json!(1), "keep last 1 leaves one restore point");
        let point_row = "#points-table tr[data-point^='sample-vm@']";
        let point = b.attr(point_row, "data-point").unwrap_or_default();

        // The prune preview: the one point, kept, and why; nothing to prune now.
        b.goto(&format!("{base}#/jobs"));
        b.click(&format!("{job_row} [data-test=job-prune-preview]"));
        b.find("#prune-table");
        let item = b.text(&format!("#prune-table tr[data-point='{point}']")).unwrap_or_default();
        assert!(item.contains("keep"), "the preview keeps {point}: {item}");
        let summary = b.text("#prune-summary").unwrap_or_default();
        assert!(summary.contains("1 kept") && summary.contains("0 to prune"), "preview summary: {summary}");
        assert!(b.try_find("#prune-now").is_none(), "nothing to prune, so no Prune now");
        b.screenshot("lifecycle-02-prune-preview");
        b.assert_no_sideways_scroll("the jobs page with the prune preview");

        // Pinned, the point cannot be deleted; the refusal says why. Then unpin it.
        b.goto(&format!("{base}#/points"));
        b.click(&format!("{point_row} [data-test=point-pin]"));
        b.find(&format!("{point_row} [data-test=flag-pinned]"));
        b.accept_confirms();
        b.click(&format!("{point_row} [data-test=point-delete]"));
        let refused =
            b.wait("the refusal", Duration::from_secs(15), || b.banner().filter(|t| t.contains("banner-error")));
        assert!(refused.contains("was not deleted") && refused.contains("pinned"), "the refusal says why: {refused}");
        b.screenshot("lifecycle-03-delete-refused-pinned");
        b.assert_no_sideways_scroll("the restore points page");
        b.click(&format!("{point_row} [data-test=point-unpin]"));
        b.wait("the unpinned point", Duration::from_secs(15), || {
            b.try_find(&format!("{point_row} [data-test=point-pin]"))
        });

        // Immutable for 7 days: the next run's point shows until when, and delete is refused.
        b.goto(&format!("{base}#/jobs"));
        b.click(&format!("{job_row} [data-test=job-edit]"));
        b.fill("#job-immutable-days", "7");
        b.click("#job-save");
        let immutable = b.wait("the job's immutability", Duration::from_secs(15), || {
            b.text(&format!("{job_row} [data-test=job-immutable]"))
        });
        assert_eq!(immutable, "immutable 7 days");
        b.screenshot("lifecycle-04-jobs");
        b.assert_no_sideways_scroll("the jobs page");
        b.click(&format!("{job_row} [data-test=job-run]"));
        wait_task_succeeded(&b, "run 3 of keep-one", Duration::from_secs(300));
        b.goto(&format!("{base}#/points"));
        let flag = b.wait("the immutable flag", Duration::from_secs(15), || {
            b.text(&format!("{point_row} [data-test=flag-immutable]"))
        });
        assert!(flag.starts_with("immutable until 20"), "the flag says until when: {flag}");
        b.accept_confirms();
        b.click(&format!("{point_row} [data-test=point-delete]"));
        let refused =
            b.wait("the refusal", Duration::from_secs(15), || b.banner().filter(|t| t.contains("banner-error")));
        assert!(refused.contains("immutable until 20"), "the refusal says why and until when: {refused}");
        b.screenshot("lifecycle-05-delete-refused-immutable");
        b.assert_no_sideways_scroll("the restore points page with an immutable point");

        // Settings: the store upkeep fields, saved; then a garbage collection, followed to its task.
        b.goto(&format!("{base}#/settings"));
        b.find("#settings-upkeep");
        assert_eq!(b.value("#settings-capacity-high").as_deref(), Some("90"));
        assert_eq!(b.value("#settings-maintenance").as_deref(), Some("03:00"));
        b.fill("#settings-time-zone", "UTC");
        b.fill("#settings-capacity-high", "95");
        b.fill("#settings-capacity-low", "85");
        b.fill("#settings-maintenance", "04:15");
        b.click("#settings-save");
        b.wait("the saved notice", Duration::from_secs(15), || b.banner().filter(|t| t.contains("Settings saved")));
        b.screenshot("lifecycle-06-settings");
        b.click("#gc-run");
        b.click("#gc-task-link");
        wait_task_succeeded(&b, "garbage collection", Duration::from_secs(120));
        let freed =
            b.wait("the GC report", Duration::from_secs(15), || b.text("#gc-result [data-test=result-bytes-freed]"));
        assert!(freed.ends_with(" B") || freed.ends_with("iB"), "bytes freed are shown with a unit: {freed:?}");
        assert!(b.text("#task-card .card-head h2").unwrap_or_default().starts_with("Garbage collection"));
        b.screenshot("lifecycle-07-gc-task");

        // The dashboard's capacity card, with the new watermarks.
        b.goto(&format!("{base}#/dashboard"));
        b.find("#dash-capacity #cap-bar");
        let used = b.text("#cap-used").unwrap_or_default();
        assert!(used.contains(" of ") && used.ends_with("used"), "used of total: {used}");
        let legend = b.text("#cap-legend").unwrap_or_default();
        assert!(
            legend.contains("high watermark 95%") && legend.contains("low watermark 85%"),
            "the watermarks: {legend}"
        );
        let forecast = b.text("#dash-capacity [data-test=cap-forecast]").unwrap_or_default();
        assert!(
            forecast.contains("forecast") || forecast.contains("until full") || forecast.contains("not growing"),
            "{forecast}"
        );
        std::thread::sleep(Duration::from_millis(300));
        b.screenshot("lifecycle-08-dashboard-capacity");
        b.assert_no_sideways_scroll("the dashboard");
        assert!(b.banner().is_none_or(|t| !t.contains("banner-error")), "no error banner at the end: {:?}", b.banner());
        b.assert_clean_console();
    }
    ui.done(started);
}
