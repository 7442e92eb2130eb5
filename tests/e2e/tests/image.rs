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
    /// Forwarded to the guest's HTTPS port at the address DHCP gives (10.0.2.15).
    port: u16,
    /// Forwarded to the guest's HTTPS port at [`STATIC_ADDRESS`], which the test sets.
    static_port: u16,
    serial: PathBuf,
    powered_on: Instant,
}

/// The static address the test gives the appliance in qemu's user network (10.0.2.0/24, the
/// host's side at 10.0.2.2).
const STATIC_ADDRESS: &str = "10.0.2.16";
/// Where the guest finds the NFS peer: qemu forwards this address's NFS and MOUNT ports (and
/// nothing else) to the peer on the host's loopback.
const NFS_GUEST_ADDRESS: &str = "10.0.2.100";

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
        std::fs::copy(OVMF_VARS, dir.join("OVMF_VARS.fd")).expect("copy the UEFI variable store");
        Vm::power_on(dir, "serial.log")
    }

    /// Powers on the machine whose disk and UEFI variables are in `dir` (again), its console
    /// in `serial_name`.
    fn power_on(dir: &Path, serial_name: &str) -> Vm {
        let disk = dir.join("disk.qcow2");
        let vars = dir.join("OVMF_VARS.fd");
        let free =
            || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let (port, static_port) = (free(), free());
        // The guest reaches nothing but what is forwarded (restrict=on): the HTTPS port from
        // the host's loopback (at either address), and from the guest the NFS peer's two
        // ports, each connection relayed by socat to the peer on the host's loopback.
        let mut net = format!(
            "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:443,hostfwd=tcp:127.0.0.1:{static_port}-{STATIC_ADDRESS}:443"
        );
        if let Some(env) = e2e::peer_env("nfs-ganesha") {
            assert!(testkit::qemu::which("socat").is_some(), "socat is not installed (apt-get install socat)");
            for key in ["RV_NFS_PORT", "RV_NFS_MOUNT_PORT"] {
                let p = &env[key];
                net.push_str(&format!(",guestfwd=tcp:{NFS_GUEST_ADDRESS}:{p}-cmd:socat - TCP:127.0.0.1:{p}"));
            }
        }
        let serial = dir.join(serial_name);
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", "q35", "-accel", "tcg", "-m", "1024", "-smp", "2", "-nodefaults"])
            .args(["-display", "none", "-monitor", "none", "-vga", "none"])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
            .arg("-netdev")
            .arg(net)
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::options().create(true).append(true).open(dir.join("qemu.log")).expect("qemu log"))
            .spawn()
            .expect("start qemu-system-x86_64");
        Vm { child, port, static_port, serial, powered_on: Instant::now() }
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

    let mut vm = vm;
    a_static_address_and_a_backup_over_nfs(&mut vm, &served);
    updates_apply_and_a_broken_one_rolls_back(&image, scratch.path(), vm, &served, version.trim());
}

/// Waits for task `id` to end; it must have succeeded.
fn wait_task(s: &Session, id: &Value, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let (status, t) = s.call("GET", &format!("/api/v1/tasks/{id}"), "", &[]);
        assert_eq!(status, 200, "{t}");
        if t["state"] != "queued" && t["state"] != "running" {
            if t["state"] != "succeeded" {
                let (_, log) = s.call("GET", &format!("/api/v1/tasks/{id}/log"), "", &[]);
                panic!("task {id} ended {}: {t}\nits log: {log}", t["state"]);
            }
            return t;
        }
        assert!(started.elapsed() < within, "task {id} did not end within {within:?}: {t}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The admin gives the appliance a static address and a time server from the API, as the UI
/// does: the system applies them within seconds and the appliance answers at the new address.
/// Then the appliance backs up a disk served over NFS by the peer on the host, restores it
/// and verifies the point, all inside the guest.
fn a_static_address_and_a_backup_over_nfs(vm: &mut Vm, fingerprint: &str) {
    let url = format!("https://127.0.0.1:{}", vm.port);
    let s = Session::sign_in(&url, fingerprint);
    let (status, v) = s.call("GET", "/api/v1/system/network", "", &[]);
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["settings"]["mode"].as_str(), v["state"].as_str()), (Some("dhcp"), Some("applied")), "{v}");
    assert!(v["addresses"].as_array().is_some_and(|a| a.contains(&json!("10.0.2.15"))), "{v}");
    // Refused with the reason, and nothing changes.
    let bad = json!({ "mode": "static", "address": format!("{STATIC_ADDRESS}/24"), "gateway": "10.0.3.1" });
    let (status, v) = s.call("PUT", "/api/v1/system/network", "application/json", bad.to_string().as_bytes());
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("gateway")), "{v}");
    let settings = json!({
        "mode": "static", "address": format!("{STATIC_ADDRESS}/24"), "gateway": "10.0.2.2",
        "dns": ["10.0.2.3"], "ntp": ["10.0.2.2"],
    });
    let (status, v) = s.call("PUT", "/api/v1/system/network", "application/json", settings.to_string().as_bytes());
    assert_eq!(status, 200, "{v}");
    let set_at = Instant::now();
    let static_url = format!("https://127.0.0.1:{}", vm.static_port);
    wait_up(vm, &static_url, fingerprint, Duration::from_secs(120), "at its static address");
    let s = Session::sign_in(&static_url, fingerprint);
    let v = loop {
        let (_, v) = s.call("GET", "/api/v1/system/network", "", &[]);
        if v["state"] == "applied" || set_at.elapsed() > Duration::from_secs(120) {
            break v;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(v["state"], "applied", "{v}");
    assert!(v["addresses"].as_array().is_some_and(|a| a.contains(&json!(STATIC_ADDRESS))), "{v}");
    assert!(v["message"].as_str().is_some_and(|m| m.contains("time servers 10.0.2.2")), "{v}");
    eprintln!("network: answering at the static address {:.1} s after it was set", set_at.elapsed().as_secs_f64());

    // A backup of a disk on the NFS peer, its restore and a verify, inside the appliance.
    let Some(env) = e2e::peer_env("nfs-ganesha") else { return };
    let rel = format!("image-test-{}.img", std::process::id());
    let local = PathBuf::from(&env["RV_NFS_EXPORT_DIR"]).join(&rel);
    let size: u64 = 48 << 20;
    e2e::make_image(&local, size, 7, e2e::Profile::VM);
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(local.clone());
    let source_url = format!(
        "nfs://{NFS_GUEST_ADDRESS}:{}{}/{rel}?mountport={}",
        env["RV_NFS_PORT"], env["RV_NFS_EXPORT"], env["RV_NFS_MOUNT_PORT"]
    );
    let body = json!({ "name": "nfs-disk", "url": source_url });
    let (status, src) = s.call("POST", "/api/v1/sources", "application/json", body.to_string().as_bytes());
    assert_eq!(status, 200, "{src}");
    let started = Instant::now();
    let body = json!({ "source": src["id"] });
    let (status, t) = s.call("POST", "/api/v1/backups", "application/json", body.to_string().as_bytes());
    assert_eq!(status, 200, "{t}");
    let t = wait_task(&s, &t["id"], Duration::from_secs(300));
    let backed_up = started.elapsed();
    let (_, points) = s.call("GET", "/api/v1/points", "", &[]);
    let point = points
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "nfs-disk"))
        .unwrap_or_else(|| panic!("a restore point of nfs-disk: {points}; the backup: {t}"))
        .clone();
    assert_eq!(point["disks"][0]["size"].as_u64(), Some(size), "{point}");
    let spec = format!("{}@{}", point["name"].as_str().unwrap_or_default(), point["id"]);
    let started = Instant::now();
    let body = json!({ "point": spec, "target": "nfs-disk-check" });
    let (status, t) = s.call("POST", "/api/v1/restores", "application/json", body.to_string().as_bytes());
    assert_eq!(status, 200, "{t}");
    let t = wait_task(&s, &t["id"], Duration::from_secs(300));
    let restored = started.elapsed();
    let outputs = t["result"]["outputs"].as_array().cloned().unwrap_or_default();
    assert!(
        outputs
            .iter()
            .any(|o| o.as_str().is_some_and(|o| o.starts_with("/var/lib/rackvault/data/restores/nfs-disk-check/"))),
        "the restore went to the data partition: {t}"
    );
    let (_, log) = s.call("GET", &format!("/api/v1/tasks/{}/log", t["id"]), "", &[]);
    assert!(
        log.to_string().contains(&format!("restore: finished ({size} bytes)")),
        "the whole disk was restored: {log}"
    );
    let body = json!({ "point": spec });
    let (status, t) = s.call("POST", "/api/v1/verifications", "application/json", body.to_string().as_bytes());
    assert_eq!(status, 200, "{t}");
    wait_task(&s, &t["id"], Duration::from_secs(300));
    eprintln!(
        "nfs: {} MiB backed up over NFS in {:.1} s, restored in {:.1} s (TCG)",
        size >> 20,
        backed_up.as_secs_f64(),
        restored.as_secs_f64()
    );
}

/// A signed-in admin's session on the appliance: every request on a new pinned connection.
struct Session {
    url: String,
    fingerprint: String,
    cookie: String,
    csrf: String,
}

impl Session {
    fn sign_in(url: &str, fingerprint: &str) -> Session {
        let r =
            request(url, fingerprint, "POST", "/api/v1/login", Some(&json!({ "user": "admin", "password": PASSWORD })));
        assert_eq!(r.status, 200, "sign-in: {}", String::from_utf8_lossy(&r.body));
        let cookie = r.set_cookies.first().and_then(|c| c.split(';').next()).expect("a session cookie").to_string();
        let v: Value = serde_json::from_slice(&r.body).expect("the sign-in answer");
        let csrf = v["csrf"].as_str().expect("a CSRF token").to_string();
        Session { url: url.into(), fingerprint: fingerprint.into(), cookie, csrf }
    }

    fn call(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        let mut c = pinhttp::Client::new(&self.url, &self.fingerprint, None)
            .and_then(|c| c.header("Cookie", &self.cookie))
            .and_then(|c| c.header("X-CSRF-Token", &self.csrf))
            .expect("a session client")
            .timeout(Duration::from_secs(900));
        let r = c.request(method, path, content_type, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
    }

    fn system(&self) -> Value {
        let (status, v) = self.call("GET", "/api/v1/system", "", &[]);
        assert_eq!(status, 200, "{v}");
        v
    }

    fn upload(&self, bundle: &[u8], force: bool) -> (u16, Value) {
        let path = if force { "/api/v1/system/update?force=true" } else { "/api/v1/system/update" };
        self.call("POST", path, "application/vnd.rackvault.bundle", bundle)
    }
}

/// Waits until the appliance at `url` answers over HTTPS with `fingerprint` (after a reboot).
fn wait_up(vm: &mut Vm, url: &str, fingerprint: &str, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        if pinhttp::fetch_fingerprint(url, Duration::from_secs(3)).is_ok_and(|f| f == fingerprint) {
            let (status, _) = json_call(url, fingerprint, "GET", "/api/v1/setup", None);
            if status == 200 {
                return started.elapsed();
            }
        }
        if let Ok(Some(status)) = vm.child.try_wait() {
            panic!("the virtual machine stopped ({status}) {what}; its console:\n{}", tail(&vm.console()));
        }
        assert!(
            started.elapsed() < within,
            "the appliance did not come back {what} within {within:?}:\n{}",
            tail(&vm.console())
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The update story, on the machine `vm` set up above: refusals change nothing; an update
/// goes to slot B and runs after a reboot, and is marked good; an update to a slot that
/// cannot boot is tried three times and the appliance goes back by itself, and says so. The
/// appliance is reached at its static address throughout: the network settings survive the
/// update and the rollback.
fn updates_apply_and_a_broken_one_rolls_back(image: &Path, dir: &Path, mut vm: Vm, fingerprint: &str, version: &str) {
    let url = format!("https://127.0.0.1:{}", vm.static_port);
    let s = Session::sign_in(&url, fingerprint);
    let sys = s.system();
    assert_eq!((sys["appliance"].as_bool(), sys["slot"].as_str()), (Some(true), Some("a")), "{sys}");
    assert_eq!(sys["version"].as_str(), Some(version), "{sys}");
    assert!(sys["update"].is_null() && sys["on_trial"] == json!(false), "{sys}");
    let own = std::fs::read(image.join(format!("rackvault-{version}.rvu"))).expect("the image's own bundle");
    let (next_version, next) = std::fs::read_dir(image)
        .expect("the image directory")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find_map(|n| n.strip_prefix("rackvault-")?.strip_suffix(".rvu").filter(|v| *v != version).map(str::to_string))
        .map(|v| {
            let bytes = std::fs::read(image.join(format!("rackvault-{v}.rvu"))).expect("the second bundle");
            (v, bytes)
        })
        .expect("a second bundle (image/build.sh --also-bundle)");

    // Refused, and nothing changes: a bad signature, the running version, a truncated upload.
    let mut forged = next.clone();
    let manifest_len = u32::from_le_bytes(forged[8..12].try_into().unwrap()) as usize;
    forged[12 + manifest_len + 5] ^= 1;
    for (what, bytes, want) in [
        ("a bad signature", &forged[..], "signature"),
        ("the running version", &own[..], "not newer"),
        ("a truncated bundle", &next[..next.len() - 4096], "early"),
    ] {
        let (status, v) = s.upload(bytes, false);
        assert_eq!(status, 400, "{what}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| e.contains(want) && e.contains("either slot")), "{what}: {v}");
        assert!(s.system()["update"].is_null(), "{what}: no update recorded");
    }

    // The update: written to slot B, run after a reboot, marked good by the health check.
    let started = Instant::now();
    let (status, v) = s.upload(&next, false);
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["slot"].as_str(), v["version"].as_str()), (Some("b"), Some(next_version.as_str())), "{v}");
    eprintln!(
        "update: {} MiB uploaded, checked and written in {:.1} s",
        next.len() >> 20,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(s.system()["update"]["state"], "reboot-pending");
    let (status, v) = s.call("POST", "/api/v1/system/reboot", "", &[]);
    assert_eq!(status, 204, "{v}");
    // Down first (the old daemon stops), then up again.
    let down = Instant::now();
    while pinhttp::fetch_fingerprint(&url, Duration::from_secs(3)).is_ok() {
        assert!(down.elapsed() < Duration::from_secs(180), "the appliance did not reboot:\n{}", tail(&vm.console()));
        std::thread::sleep(Duration::from_millis(500));
    }
    let took = wait_up(&mut vm, &url, fingerprint, Duration::from_secs(300), "after the update's reboot");
    eprintln!("update: back after the reboot in {:.1} s", took.as_secs_f64());
    let s = Session::sign_in(&url, fingerprint);
    let deadline = Instant::now() + Duration::from_secs(120);
    let sys = loop {
        let sys = s.system();
        if sys["on_trial"] == json!(false) || Instant::now() > deadline {
            break sys;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    assert_eq!((sys["slot"].as_str(), sys["version"].as_str()), (Some("b"), Some(next_version.as_str())), "{sys}");
    assert_eq!(sys["update"]["state"], "running", "{sys}");
    assert_eq!(sys["on_trial"], json!(false), "the health check marked slot B good: {sys}");

    // An update whose root cannot boot: the old version forced into slot A, then slot A's
    // filesystem destroyed (the machine off). Three tries, then slot B again, by itself.
    let (status, v) = s.upload(&own, true);
    assert_eq!((status, v["slot"].as_str()), (200, Some("a")), "a forced downgrade: {v}");
    drop(vm);
    // Slot A starts after the 1 MiB gap and the 256 MiB EFI partition (image/build.sh).
    testkit::qemu::run(
        Command::new("qemu-io").args(["-f", "qcow2", "-c", "write -z 257M 4M"]).arg(dir.join("disk.qcow2")),
    );
    let mut vm = Vm::power_on(dir, "serial-rollback.log");
    let url = format!("https://127.0.0.1:{}", vm.static_port);
    let took = wait_up(&mut vm, &url, fingerprint, Duration::from_secs(600), "after the broken update");
    let tries = vm.console().matches("Rebooting automatically due to panic=").count();
    eprintln!("rollback: back on the old slot {:.1} s after power-on, after {tries} failed tries", took.as_secs_f64());
    let s = Session::sign_in(&url, fingerprint);
    let sys = s.system();
    assert_eq!((sys["slot"].as_str(), sys["version"].as_str()), (Some("b"), Some(next_version.as_str())), "{sys}");
    assert_eq!(sys["update"]["state"], "rolled-back", "{sys}");
    assert!(sys["update"]["message"].as_str().is_some_and(|m| m.contains("went back to slot b")), "{sys}");
    assert!(tries >= 1, "the broken slot was tried:\n{}", tail(&vm.console()));
}
