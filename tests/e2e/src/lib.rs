//! `e2e`: helpers shared by the end-to-end tests in `tests/e2e.rs`.
//!
//! The tests drive the real `rackvault` binary on real files (and real `qemu-img`), so this
//! crate provides:
//! - [`rackvault_bin`]: where the binary is. `CARGO_BIN_EXE_rackvault` only exists inside the
//!   binary's own package, so we look in the workspace's `target/{debug,release}` (or take
//!   `RACKVAULT_BIN`). Build it first: `cargo build -p rackvault` (or `--release`).
//! - [`Rv`] and the [`rv!`] macro: run the binary, capture exit code, stdout and stderr, and
//!   assert on them with the whole context (command line, exit code, stderr) in the message.
//! - Deterministic images: [`make_image`] writes a sparse VM-like disk (holes, zero runs,
//!   text-like and random 1 MiB slots) from a seed, [`mutate_scattered`] overwrites a share of
//!   it in scattered 64 KiB blocks. [`Rng`] is a splitmix64 generator.
//! - [`hash_file`], [`hash_tree`], [`allocated_bytes`]: what a test compares.
//! - [`qemu_img!`], [`which`], [`TmpfsMount`]: the outside world.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use serde_json::Value;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Locating the binary

/// The workspace's target directory: `CARGO_TARGET_DIR` if set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        let d = PathBuf::from(d);
        if d.is_absolute() {
            return d;
        }
        return workspace_root().join(d);
    }
    workspace_root().join("target")
}

/// The workspace root: two levels above this crate's manifest.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn candidate(profile: &str) -> PathBuf {
    target_dir().join(profile).join("rackvault")
}

fn missing_binary() -> ! {
    panic!(
        "the rackvault binary was not found at {} or {}; build it first with `cargo build -p rackvault` \
         (or `cargo build --release -p rackvault`), or point RACKVAULT_BIN at it",
        candidate("debug").display(),
        candidate("release").display()
    )
}

fn from_env() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("RACKVAULT_BIN")?);
    assert!(p.is_file(), "RACKVAULT_BIN={} is not a file; build rackvault or fix the variable", p.display());
    Some(p)
}

fn mtime(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The `rackvault` binary to test: `RACKVAULT_BIN`, else the build of the same profile as
/// this test (debug or release), else the other one. Panics with a clear message if none exists.
pub fn rackvault_bin() -> PathBuf {
    if let Some(p) = from_env() {
        return p;
    }
    let (first, second) = if cfg!(debug_assertions) { ("debug", "release") } else { ("release", "debug") };
    for profile in [first, second] {
        let p = candidate(profile);
        if p.is_file() {
            warn_if_stale(&p);
            return p;
        }
    }
    missing_binary()
}

/// Print (once per binary) a warning when `bin` is older than the newest product source file:
/// the tests would then exercise old code.
fn warn_if_stale(bin: &Path) {
    static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if warned.iter().any(|w| w == bin) {
        return;
    }
    warned.push(bin.to_path_buf());
    fn newest(dir: &Path, best: &mut Option<(std::time::SystemTime, PathBuf)>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if p.is_dir() {
                if name != "target" && name != "tests" && name != "fuzz" && !name.starts_with('.') {
                    newest(&p, best);
                }
            } else if name.ends_with(".rs") || name == "Cargo.toml" {
                if let Some(t) = mtime(&p) {
                    if best.as_ref().is_none_or(|(b, _)| t > *b) {
                        *best = Some((t, p));
                    }
                }
            }
        }
    }
    let mut best = None;
    for d in ["disk", "firmware", "web"] {
        newest(&workspace_root().join(d), &mut best);
    }
    if let (Some(bin_time), Some((src_time, src))) = (mtime(bin), best) {
        if src_time > bin_time {
            eprintln!(
                "warning: {} is older than {}; rebuild it (`cargo build -p rackvault`, with --release for the release binary) to test the current code",
                bin.display(),
                src.display()
            );
        }
    }
}

/// Like [`rackvault_bin`] but prefers the release build when it exists and is not older than
/// the debug build: for timing-sensitive tests (the crash loop).
pub fn rackvault_bin_fast() -> PathBuf {
    if let Some(p) = from_env() {
        return p;
    }
    let (rel, dbg) = (candidate("release"), candidate("debug"));
    match (rel.is_file(), dbg.is_file()) {
        (true, false) => rel,
        (false, true) => dbg,
        (true, true) => {
            let p = if mtime(&rel) >= mtime(&dbg) { rel } else { dbg };
            warn_if_stale(&p);
            p
        }
        (false, false) => missing_binary(),
    }
}

// ---------------------------------------------------------------------------------------------
// Running commands

thread_local! {
    static THREAD_ENV: std::cell::RefCell<Vec<(String, std::ffi::OsString)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A command to run, with a printable command line for failure messages.
#[derive(Debug)]
pub struct Rv {
    cmd: Command,
    shown: Vec<String>,
    envs: Vec<String>,
}

/// Build an [`Rv`] for the `rackvault` binary with the given arguments (anything `AsRef<OsStr>`:
/// `&str`, `&Path`, `String`, ...).
#[macro_export]
macro_rules! rv {
    ($($arg:expr),* $(,)?) => {
        $crate::Rv::new()$(.arg($arg))*
    };
}

impl Default for Rv {
    fn default() -> Self {
        Rv::new()
    }
}

impl Rv {
    /// The `rackvault` binary from [`rackvault_bin`].
    pub fn new() -> Rv {
        Rv::program(rackvault_bin())
    }

    /// Any program (qemu-img, ...). Environment set with [`Rv::thread_env`] on this thread
    /// is added.
    pub fn program(program: impl AsRef<OsStr>) -> Rv {
        let program = program.as_ref();
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null());
        let mut rv = Rv { cmd, shown: vec![program.to_string_lossy().into_owned()], envs: Vec::new() };
        for (k, v) in THREAD_ENV.with(|e| e.borrow().clone()) {
            rv = rv.env(&k, v);
        }
        rv
    }

    /// Give every command this thread builds from now on `key=value` in its environment
    /// (a test running the shared helpers against an encrypted store sets
    /// `RACKVAULT_KEY_FILE`). Test threads do not share it.
    pub fn thread_env(key: &str, value: impl AsRef<OsStr>) {
        THREAD_ENV.with(|e| e.borrow_mut().push((key.to_string(), value.as_ref().to_os_string())));
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Rv {
        let a = a.as_ref();
        self.shown.push(shell_quote(a));
        self.cmd.arg(a);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Rv {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Rv {
        self.envs.push(format!("{key}={}", shell_quote(value.as_ref())));
        self.cmd.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Rv {
        self.envs.push(format!("(cd {})", dir.as_ref().display()));
        self.cmd.current_dir(dir);
        self
    }

    /// The command line as a shell would show it.
    pub fn command_line(&self) -> String {
        let mut parts = self.envs.clone();
        parts.extend(self.shown.iter().cloned());
        parts.join(" ")
    }

    /// Run to completion, capturing stdout and stderr.
    pub fn run(mut self) -> Outcome {
        let cmdline = self.command_line();
        let started = Instant::now();
        let out = self.cmd.output().unwrap_or_else(|e| panic!("cannot run `{cmdline}`: {e}"));
        Outcome {
            cmdline,
            code: out.status.code(),
            signal: std::os::unix::process::ExitStatusExt::signal(&out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }

    /// Start in the background with stdout and stderr captured (read them with
    /// [`Outcome::from_child`]).
    pub fn spawn(mut self) -> (Child, String) {
        let cmdline = self.command_line();
        let child = self
            .cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{cmdline}`: {e}"));
        (child, cmdline)
    }
}

fn shell_quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c)) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A finished command.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub cmdline: String,
    /// Exit code; `None` if a signal ended it.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// Wait for a spawned child and collect what it printed.
    pub fn from_child(child: Child, cmdline: String, started: Instant) -> Outcome {
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("waiting for `{cmdline}`: {e}"));
        Outcome {
            cmdline,
            code: out.status.code(),
            signal: std::os::unix::process::ExitStatusExt::signal(&out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }

    /// Everything worth showing when an assertion about this command fails.
    pub fn context(&self) -> String {
        let status = match (self.code, self.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => "unknown status".into(),
        };
        format!(
            "\n  command: {}\n  status:  {status} after {:.2} s\n  stdout:  {}\n  stderr:  {}\n",
            self.cmdline,
            self.elapsed.as_secs_f64(),
            indent(&self.stdout),
            indent(&self.stderr)
        )
    }

    /// Assert exit code 0.
    #[track_caller]
    pub fn success(self) -> Outcome {
        assert_eq!(self.code, Some(0), "command failed:{}", self.context());
        self
    }

    /// Assert a clean failure: a non-zero exit code, not a signal and not a panic.
    #[track_caller]
    pub fn failure(self) -> Outcome {
        assert!(matches!(self.code, Some(c) if c != 0), "command should have failed:{}", self.context());
        assert!(
            self.code != Some(101) && !self.stderr.contains("panicked"),
            "command panicked instead of failing with a message:{}",
            self.context()
        );
        assert!(!self.stderr.trim().is_empty(), "command failed without saying why:{}", self.context());
        self
    }

    /// Assert a particular exit code.
    #[track_caller]
    pub fn code_is(self, code: i32) -> Outcome {
        assert_eq!(self.code, Some(code), "unexpected exit code:{}", self.context());
        self
    }

    /// Assert stderr contains every one of `needles` (case-insensitive).
    #[track_caller]
    pub fn stderr_has(self, needles: &[&str]) -> Outcome {
        let hay = self.stderr.to_lowercase();
        for n in needles {
            assert!(hay.contains(&n.to_lowercase()), "stderr should mention {n:?}:{}", self.context());
        }
        self
    }

    /// Assert stderr contains at least one of `needles` (case-insensitive).
    #[track_caller]
    pub fn stderr_has_any(self, what: &str, needles: &[&str]) -> Outcome {
        let hay = self.stderr.to_lowercase();
        assert!(
            needles.iter().any(|n| hay.contains(&n.to_lowercase())),
            "stderr should {what} (one of {needles:?}):{}",
            self.context()
        );
        self
    }

    /// stdout parsed as one JSON value.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}):{}", self.context()))
    }
}

fn indent(s: &str) -> String {
    let t = s.trim_end();
    if t.is_empty() {
        "(empty)".into()
    } else {
        t.replace('\n', "\n           ")
    }
}

/// Run `qemu-img` with the given arguments, asserting success; the [`Outcome`].
#[macro_export]
macro_rules! qemu_img {
    ($($arg:expr),* $(,)?) => {
        $crate::Rv::program("qemu-img")$(.arg($arg))*.run().success()
    };
}

/// The full path of `program` on `PATH`, if it is there.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| std::fs::metadata(p).map(|m| m.is_file() && m.mode() & 0o111 != 0).unwrap_or(false))
}

// ---------------------------------------------------------------------------------------------
// Common CLI steps

/// `rackvault backup SRC --store STORE --name NAME --json EXTRA...`, asserting success; the
/// parsed report.
#[track_caller]
pub fn backup(src: &Path, store: &Path, name: &str, extra: &[&str]) -> Value {
    rv!["backup", src, "--store", store, "--name", name, "--json"].args(extra).run().success().json()
}

/// `rackvault restore SPEC --store STORE --to TO --json EXTRA...`, asserting success.
#[track_caller]
pub fn restore(store: &Path, spec: &str, to: &Path, extra: &[&str]) -> Value {
    rv!["restore", spec, "--store", store, "--to", to, "--json"].args(extra).run().success().json()
}

/// `rackvault verify --store STORE --json`, asserting exit 0 and a clean report.
#[track_caller]
pub fn verify_clean(store: &Path) -> Value {
    let out = rv!["verify", "--store", store, "--json"].run();
    let out = out.success();
    let v = out.json();
    assert!(
        v["damaged_records"].as_array().is_some_and(|a| a.is_empty())
            && v["damaged_points"].as_array().is_some_and(|a| a.is_empty()),
        "verify exited 0 but reported damage:{}",
        out.context()
    );
    v
}

/// The restore points `rackvault list --json` shows.
#[track_caller]
pub fn list_points(store: &Path) -> Vec<Value> {
    let v = rv!["list", "--store", store, "--json"].run().success().json();
    v["restore_points"].as_array().cloned().unwrap_or_else(|| panic!("list --json has no restore_points array: {v}"))
}

/// `NAME@ID` of a restore point or backup report.
pub fn spec_of(v: &Value) -> String {
    format!("{}@{}", v["name"].as_str().expect("name"), v["id"].as_u64().expect("id"))
}

/// Restore `spec` to `dir/<unique name>` and assert its blake3 is `want`.
#[track_caller]
pub fn assert_restores_to(store: &Path, spec: &str, want: &str, dir: &Path) {
    let to = dir.join(format!("check-{}.raw", spec.replace('@', "-")));
    let _ = std::fs::remove_file(&to);
    restore(store, spec, &to, &[]);
    let got = hash_file(&to);
    assert_eq!(
        got,
        want,
        "restore point {spec} of {} restored to {} with different content",
        store.display(),
        to.display()
    );
    std::fs::remove_file(&to).expect("remove restored file");
}

// ---------------------------------------------------------------------------------------------
// Deterministic data

pub use testkit::Rng;

/// `len` incompressible bytes from `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Rng::new(seed ^ 0x5EED_0000_0000_0001).fill(&mut out);
    out
}

/// `len` bytes of log-like text (compressible, but not trivially).
pub fn text_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "kernel:",
        "systemd[1]:",
        "Started",
        "Stopped",
        "session",
        "backup",
        "disk",
        "error",
        "warning",
        "connection",
        "from",
        "user",
        "root",
        "service",
        "/var/log",
        "eth0",
        "timeout",
        "retry",
        "ok",
        "nfs",
        "iscsi",
        "volume",
        "sshd[812]:",
        "Accepted",
        "publickey",
        "for",
        "port",
        "mounted",
        "filesystem",
        "ext4",
        "xfs",
        "cron",
    ];
    let mut out = Vec::with_capacity(len + 128);
    while out.len() < len {
        let t = rng.next_u64();
        let (day, hour, min, sec, host) = (1 + t % 28, (t >> 8) % 24, (t >> 16) % 60, (t >> 24) % 60, (t >> 32) % 8);
        out.extend_from_slice(format!("Nov {day:02} {hour:02}:{min:02}:{sec:02} host{host} ").as_bytes());
        for _ in 0..(3 + rng.below(9)) {
            out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(format!("id={:x}\n", rng.next_u64() >> 40).as_bytes());
    }
    out.truncate(len);
    out
}

/// What the 1 MiB slots of a generated image hold, as relative weights.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// Never written: a hole in the file.
    pub hole: u32,
    /// Explicitly written zeros (allocated, but all-zero).
    pub zero: u32,
    /// Log-like text.
    pub text: u32,
    /// Incompressible bytes.
    pub random: u32,
}

impl Profile {
    /// A typical VM disk: a third holes, some zeroed blocks, text and binary data.
    pub const VM: Profile = Profile { hole: 4, zero: 1, text: 3, random: 2 };
    /// A thin disk that is mostly unallocated.
    pub const MOSTLY_HOLES: Profile = Profile { hole: 17, zero: 1, text: 1, random: 1 };
    /// All incompressible data.
    pub const RANDOM: Profile = Profile { hole: 0, zero: 0, text: 0, random: 1 };
}

/// Write a deterministic sparse image of `size` bytes (any size, not only whole MiB).
pub fn make_image(path: &Path, size: u64, seed: u64, profile: Profile) {
    let file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.set_len(size).expect("set_len");
    let mut rng = Rng::new(seed);
    let total = profile.hole + profile.zero + profile.text + profile.random;
    let mut slot = 0u64;
    while slot * MIB < size {
        let off = slot * MIB;
        let len = MIB.min(size - off) as usize;
        let mut pick = rng.below(total as u64) as u32;
        let data = if pick < profile.hole {
            None
        } else {
            pick -= profile.hole;
            if pick < profile.zero {
                Some(vec![0u8; len])
            } else if pick - profile.zero < profile.text {
                Some(text_bytes(&mut rng, len))
            } else {
                Some(random_bytes(rng.next_u64(), len))
            }
        };
        if let Some(d) = data {
            file.write_all_at(&d, off).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        slot += 1;
    }
    file.sync_all().expect("fsync image");
}

/// Overwrite about `percent` % of the image with random data in scattered 64 KiB blocks
/// (64 KiB-aligned, clipped at the end). Returns the offsets written, sorted.
pub fn mutate_scattered(path: &Path, percent: f64, seed: u64) -> Vec<u64> {
    const BLOCK: u64 = 64 * KIB;
    let file = File::options().write(true).open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let size = file.metadata().expect("stat").len();
    let blocks = size.div_ceil(BLOCK);
    let count = ((blocks as f64 * percent / 100.0).round() as u64).clamp(1, blocks);
    let mut rng = Rng::new(seed);
    let mut chosen = std::collections::BTreeSet::new();
    while (chosen.len() as u64) < count {
        chosen.insert(rng.below(blocks));
    }
    let mut offsets = Vec::new();
    for b in chosen {
        let off = b * BLOCK;
        let len = BLOCK.min(size - off) as usize;
        file.write_all_at(&random_bytes(rng.next_u64(), len), off).expect("write mutation");
        offsets.push(off);
    }
    file.sync_all().expect("fsync image");
    offsets
}

// ---------------------------------------------------------------------------------------------
// Looking at files

/// blake3 of a file's bytes, as hex.
pub fn hash_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_hex().to_string()
}

/// Every file below `dir` (relative path → blake3 and size); directories as `"dir"`.
pub fn hash_tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry"))
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(base).expect("below base").to_path_buf();
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                out.insert(rel, "dir".into());
                walk(base, &p, out);
            } else {
                let len = e.metadata().expect("stat").len();
                out.insert(rel, format!("{} ({len} bytes)", hash_file(&p)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Bytes the filesystem allocated for `path` (`st_blocks` × 512).
pub fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).blocks() * 512
}

/// File names in `dir` (empty if it does not exist).
pub fn dir_entries(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.expect("dir entry").file_name()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// blake3 digests of `path` in `chunk_size` pieces, `None` for all-zero pieces: the chunk
/// identities the store should hold for a backup of this image.
pub fn chunk_digests(path: &Path, chunk_size: u64) -> Vec<Option<[u8; 32]>> {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let size = f.metadata().expect("stat").len();
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk_size as usize];
    let mut off = 0;
    while off < size {
        let len = chunk_size.min(size - off) as usize;
        f.read_exact(&mut buf[..len]).expect("read chunk");
        let piece = &buf[..len];
        out.push(if piece.iter().all(|&b| b == 0) { None } else { Some(*blake3::hash(piece).as_bytes()) });
        off += len as u64;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Scratch space, processes, mounts

/// A temporary directory for one test, named after it. Set `E2E_KEEP=1` to keep it.
pub fn scratch(tag: &str) -> tempfile::TempDir {
    let mut d = tempfile::Builder::new().prefix(&format!("rv-e2e-{tag}-")).tempdir().expect("create temp dir");
    if std::env::var_os("E2E_KEEP").is_some() {
        eprintln!("[{tag}] keeping scratch dir {}", d.path().display());
        d.disable_cleanup(true);
    }
    d
}

/// A tmpfs mounted for the lifetime of this value (unmounted on drop, also during a panic).
#[derive(Debug)]
pub struct TmpfsMount {
    dir: PathBuf,
}

impl TmpfsMount {
    /// `mount -t tmpfs -o size=SIZE tmpfs DIR`; `Err` with mount's message if that fails (e.g.
    /// not root).
    pub fn mount(dir: &Path, size: &str) -> Result<TmpfsMount, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`mount -t tmpfs -o size={size} tmpfs {}` failed ({}): {}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(TmpfsMount { dir: dir.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.dir).stdin(Stdio::null()).status().is_ok_and(|s| s.success());
        if !ok {
            // Busy (a process we started still has a file open): detach it lazily instead of
            // leaving a mount behind.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).stdin(Stdio::null()).status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Real peers (tests/peers)

/// The `KEY='value'` lines of a running peer's env file (`tests/peers/start-<peer>.sh` writes
/// `$RV_PEERS_ROOT/<peer>/env`). When the peer is not running: with
/// `RACKVAULT_REQUIRE_PEERS=1` (as `tests/run.sh` sets) the test fails; otherwise it prints
/// why it is skipped and gets `None`.
#[track_caller]
pub fn peer_env(peer: &str) -> Option<BTreeMap<String, String>> {
    let root = std::env::var("RV_PEERS_ROOT").unwrap_or_else(|_| "/tmp/rackvault-peers".into());
    let path = Path::new(&root).join(peer).join("env");
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
                .collect(),
        ),
        Err(_) if std::env::var("RACKVAULT_REQUIRE_PEERS").as_deref() == Ok("1") => panic!(
            "peer {peer} is not running ({} missing) but RACKVAULT_REQUIRE_PEERS=1; start it with tests/peers/start-{peer}.sh",
            path.display()
        ),
        Err(_) => {
            eprintln!("skipped: peer {peer} is not running (start it with tests/peers/start-{peer}.sh)");
            None
        }
    }
}

/// Run `tests/peers/<script>` (a start or stop script), asserting success.
#[track_caller]
pub fn peer_script(script: &str) {
    let path = workspace_root().join("tests/peers").join(script);
    let out = Command::new(&path).stdin(Stdio::null()).output().expect("run peer script");
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Serialises tests that restart a shared peer against the tests that use it: users take it
/// shared, a restart takes it exclusive.
pub fn peer_lock(peer: &str) -> &'static std::sync::RwLock<()> {
    static LOCKS: std::sync::OnceLock<std::sync::Mutex<BTreeMap<String, &'static std::sync::RwLock<()>>>> =
        std::sync::OnceLock::new();
    let mut map = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    map.entry(peer.to_string()).or_insert_with(|| Box::leak(Box::new(std::sync::RwLock::new(()))))
}

/// A new bucket on the S3 peer (`tests/peers/start-s3.sh`), with object lock when `lock`;
/// returns its name.
pub fn s3_bucket(env: &testkit::peers::S3Env, lock: bool) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let bucket = testkit::peers::unique_bucket("e2e");
    let mut cfg = s3::S3Config::new(&env.endpoint, &env.region, &bucket, &env.access, s3::Secret::new(&env.secret));
    cfg.allow_http = true; // the loopback peer
    let client = s3::S3Client::new(cfg).expect("an S3 client");
    rt.block_on(client.create_bucket(lock)).unwrap_or_else(|e| panic!("create bucket {bucket}: {e}"));
    bucket
}
