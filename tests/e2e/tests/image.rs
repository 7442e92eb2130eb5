//! The bootable appliance image (`image/build.sh`), booted for real: qemu-system-x86_64 with
//! UEFI firmware (OVMF) under software emulation (TCG), the disk as a qcow2 overlay of the
//! built image, the guest's HTTPS port forwarded to a free loopback port, and its serial
//! console in a file that the test reads as an operator would read the screen.
//!
//! `tests/run.sh` builds the image once and sets `RACKVAULT_IMAGE_DIR` (the build's output
//! directory) and `RACKVAULT_REQUIRE_IMAGE=1`; without them these tests say they are skipped.
//! Build it by hand with `image/build.sh --out DIR`. `E2E_KEEP=1` keeps the scratch directory
//! (serial log, overlay disk).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The bound: the HTTPS UI answers within this long of power-on.
const BOOT_BUDGET: Duration = Duration::from_secs(120);
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const PASSWORD: &str = "image-test-passphrase";

/// The built image's directory, or `None` (the test is skipped) when none was built here.
fn image_dir() -> Option<PathBuf> {
    let required = std::env::var("RACKVAULT_REQUIRE_IMAGE").is_ok_and(|v| v == "1");
    let dir = std::env::var_os("RACKVAULT_IMAGE_DIR").map(PathBuf::from);
    match dir {
        Some(d) if d.join("rackvault.qcow2").exists() => {
            for tool in ["qemu-system-x86_64", "qemu-img"] {
                assert!(
                    testkit::qemu::which(tool).is_some(),
                    "{tool} is not installed (apt-get install qemu-system-x86)"
                );
            }
            assert!(Path::new(OVMF_CODE).exists(), "{OVMF_CODE} is missing (apt-get install ovmf)");
            Some(d)
        }
        _ if required => {
            panic!("RACKVAULT_REQUIRE_IMAGE=1 but no image in RACKVAULT_IMAGE_DIR ({dir:?}): run image/build.sh")
        }
        _ => {
            eprintln!("skipped: no appliance image (set RACKVAULT_IMAGE_DIR to image/build.sh's output directory)");
            None
        }
    }
}

/// A virtual machine we started, killed by PID when dropped.
struct Vm {
    child: Child,
    port: u16,
    serial: PathBuf,
    powered_on: Instant,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    /// Boots a fresh copy of the image (an overlay on it, grown to `disk_gib`) in `dir`.
    fn boot(image: &Path, dir: &Path, disk_gib: u32) -> Vm {
        let disk = dir.join("disk.qcow2");
        testkit::qemu::run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(image.join("rackvault.qcow2").canonicalize().expect("the image"))
                .arg(&disk)
                .arg(format!("{disk_gib}G")),
        );
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars).expect("copy the UEFI variable store");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let serial = dir.join("serial.log");
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", "q35", "-accel", "tcg", "-m", "1024", "-smp", "2", "-nodefaults"])
            .args(["-display", "none", "-monitor", "none", "-vga", "none"])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
            // The guest reaches nothing but the host's forwarded port (restrict=on).
            .arg("-netdev")
            .arg(format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:443"))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("qemu.log")).expect("qemu log"))
            .spawn()
            .expect("start qemu-system-x86_64");
        Vm { child, port, serial, powered_on: Instant::now() }
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits for a console line starting with `label` and returns the rest of the next
    /// non-empty line (the banner puts values on their own line) or of the same line.
    fn wait_console(&mut self, label: &str, deadline: Instant) -> String {
        loop {
            let text = self.console();
            let mut lines = text.lines().map(str::trim);
            while let Some(l) = lines.next() {
                if let Some(rest) = l.strip_prefix(label) {
                    let rest = rest.trim();
                    if !rest.is_empty() {
                        return rest.to_string();
                    }
                    if let Some(next) = lines.find(|n| !n.is_empty()) {
                        return next.to_string();
                    }
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the virtual machine stopped ({status}); its console:\n{}", tail(&text));
            }
            assert!(Instant::now() < deadline, "the console never showed {label:?}; its console:\n{}", tail(&text));
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// One request on a new connection pinned to `fingerprint`.
fn json_call(url: &str, fingerprint: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let r = request(url, fingerprint, method, path, body);
    (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
}

fn request(url: &str, fingerprint: &str, method: &str, path: &str, body: Option<&Value>) -> pinhttp::Response {
    let mut c = pinhttp::Client::new(url, fingerprint, None).expect("a pinned client").timeout(Duration::from_secs(60));
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let ct = if body.is_some() { "application/json" } else { "" };
    c.request(method, path, ct, &bytes).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

#[test]
fn the_image_boots_to_the_https_ui_within_120_s_and_its_console_shows_what_setup_needs() {
    let Some(image) = image_dir() else { return };
    let scratch = e2e::scratch("image-boot");
    let mut vm = Vm::boot(&image, scratch.path(), 8);
    let deadline = vm.powered_on + BOOT_BUDGET;
    let url = format!("https://127.0.0.1:{}", vm.port);

    // Power-on to the first HTTPS answer (the certificate is only known from the console
    // below, so this first contact checks nothing but that TLS is served).
    let up = loop {
        if pinhttp::fetch_fingerprint(&url, Duration::from_secs(3)).is_ok() {
            break vm.powered_on.elapsed();
        }
        if let Ok(Some(status)) = vm.child.try_wait() {
            panic!("the virtual machine stopped ({status}); its console:\n{}", tail(&vm.console()));
        }
        assert!(
            Instant::now() < deadline,
            "the HTTPS UI did not answer within {BOOT_BUDGET:?} of power-on; the console:\n{}",
            tail(&vm.console())
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("boot: the HTTPS UI answered {:.1} s after power-on (TCG)", up.as_secs_f64());

    // What the console shows: the fingerprint the browser will show, and the setup code.
    let late = Instant::now() + Duration::from_secs(60);
    let shown = vm.wait_console("TLS certificate SHA-256 fingerprint (compare it with the browser's):", late);
    let served = pinhttp::fetch_fingerprint(&url, Duration::from_secs(10)).expect("the served certificate");
    assert_eq!(
        pinhttp::normalize_fingerprint(&shown),
        Some(served.clone()),
        "the console shows the served certificate"
    );
    let code = vm.wait_console("Setup code:", late);
    assert!(vm.console().contains("https://10.0.2.15/"), "the console names the address DHCP gave");

    // The system came up whole: the data partition grew to the disk, and no unit failed.
    let console = vm.console();
    let data = vm.wait_console("Data partition:", late);
    // "<n> <unit> in all, …", as `human_bytes` writes it.
    let mut words = data.split(' ');
    let (n, unit) = (words.next().and_then(|n| n.parse::<f64>().ok()), words.next());
    let gib = match (n, unit) {
        (Some(n), Some("GiB")) => n,
        (Some(n), Some("MiB")) => n / 1024.0,
        _ => panic!("a data size in {data:?}"),
    };
    assert!(gib > 5.0, "the data partition (256 MiB in the image) grew to fill the 8 GiB disk at first boot: {data}");
    assert!(!console.contains("Failed to start"), "a unit failed at boot:\n{}", tail(&console));

    // Setup with the code from the console, over a connection pinned to the certificate the
    // console showed; then sign in, and the UI itself is served.
    let (status, v) = json_call(&url, &served, "GET", "/api/v1/setup", None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["needs_setup"], json!(true), "a new appliance asks for setup: {v}");
    let (status, v) = json_call(
        &url,
        &served,
        "POST",
        "/api/v1/setup",
        Some(&json!({ "user": "admin", "password": PASSWORD, "setup_code": code })),
    );
    assert_eq!(status, 204, "setup with the code from the console: {v}");
    let (status, v) =
        json_call(&url, &served, "POST", "/api/v1/login", Some(&json!({ "user": "admin", "password": PASSWORD })));
    assert_eq!(status, 200, "sign-in: {v}");
    let page = request(&url, &served, "GET", "/", None);
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("<html"), "the UI's page is served");
    let (_, v) = json_call(&url, &served, "GET", "/api/v1/setup", None);
    assert_eq!(v["needs_setup"], json!(false), "setup is done: {v}");
    let version = std::fs::read_to_string(image.join("VERSION")).expect("the image's VERSION");
    assert!(
        v["appliance"]["version"].as_str().is_some_and(|s| s.starts_with(version.trim())),
        "the appliance runs the image's version {version}: {v}"
    );
}
