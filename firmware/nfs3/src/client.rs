//! [`Nfs3Client`]: mount, lookups, listings and pipelined reads, with reconnect and resend.
//!
//! ## Request pipeline
//! Every NFS call, single or batched, goes through [`Inner::pipeline`]: a queue of calls, a
//! window of `connections × max_in_flight` outstanding ones spread round-robin over the
//! connection slots, and one private completion channel. A completion is either a reply
//! (decoded by the caller's closure, which may queue a follow-up call, e.g. the rest of a
//! short READ) or a connection failure, after which the same call is re-sent with a new
//! XID on a fresh connection. All procedures used are idempotent, so a re-sent call that
//! the old server had already executed does no harm.
//!
//! ## Time limits
//! - A call without a reply for `io_timeout` kills its connection (its siblings there are
//!   re-sent too), so a hung server is treated like a dropped one.
//! - From the first failure without a success since, reconnecting and re-sending go on
//!   with exponential backoff (20 ms .. 1 s) until `reconnect_deadline`; then the call fails
//!   with [`NfsError::ConnectionLost`]. Any successful reply resets the clock.
//! - Without fixed ports, each reconnect asks the portmapper again, since a restarted server
//!   may listen elsewhere.
//!
//! ## Locks
//! Each connection slot is a `Mutex<Option<Arc<Conn>>>`, held only to pick or replace the
//! connection (while reconnecting, other callers of that slot wait for the result). The
//! handle-to-path map used for messages has its own mutex. No lock is held while waiting
//! for replies.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::conn::{Completion, Conn, Failure};
use crate::error::NfsError;
use crate::types::{DirEntry, FileAttr, FileHandle, NfsStatus};
use crate::wire::{self, RpcOutcome};

/// Largest READ we issue, whatever the server allows.
pub const READ_CAP: u32 = 1 << 20;
/// Machine name sent in AUTH_SYS credentials.
pub const MACHINE_NAME: &str = "rackvault";
/// Most entries `read_dir` accepts in one directory (a hostile server could page forever).
pub const MAX_DIR_ENTRIES: usize = 1_000_000;
const READDIR_DIRCOUNT: u32 = 8 << 10;
const READDIR_MAXCOUNT: u32 = 32 << 10;
const PORTMAP_PORT: u16 = 111;
/// Remembered handle names, for error messages only.
const MAX_NAMES: usize = 16 << 10;

/// How to reach the server and how hard to push it.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Server host name or IP address.
    pub host: String,
    /// NFS port; `None` asks the portmapper (port 111).
    pub nfs_port: Option<u16>,
    /// MOUNT port; `None` asks the portmapper.
    pub mount_port: Option<u16>,
    /// AUTH_SYS uid and gid (0/0: root; the export must not squash root then).
    pub uid: u32,
    pub gid: u32,
    /// TCP connections to the NFS port; calls are spread across them.
    pub connections: usize,
    /// Calls in flight per connection.
    pub max_in_flight: usize,
    /// A call without a reply for this long counts as a lost connection.
    pub io_timeout: Duration,
    /// How long to keep reconnecting and re-sending before giving up.
    pub reconnect_deadline: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            host: String::new(),
            nfs_port: None,
            mount_port: None,
            uid: 0,
            gid: 0,
            connections: 2,
            max_in_flight: 32,
            io_timeout: Duration::from_secs(30),
            reconnect_deadline: Duration::from_secs(60),
        }
    }
}

impl ClientOptions {
    /// Timeout for the one-shot portmapper and MOUNT calls.
    fn oneshot_timeout(&self) -> Duration {
        self.io_timeout.min(Duration::from_secs(10))
    }
}

/// A mounted NFSv3 export. `Send + Sync`; clones share the connections.
#[derive(Debug, Clone)]
pub struct Nfs3Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    opts: ClientOptions,
    export: String,
    /// `host:/export`, for messages.
    server: String,
    root: FileHandle,
    read_size: u32,
    mount_port: u16,
    auth: Vec<u8>,
    slots: Vec<Mutex<Option<Arc<Conn>>>>,
    /// Per slot: when its connection was last opened and how many in a row died young.
    /// Paces reconnects when connections are accepted and then dropped at once (a server
    /// half up, a proxy or load balancer in front of a dead server), which a refused
    /// connect's backoff does not cover.
    paces: Vec<Mutex<Pace>>,
    next_slot: AtomicUsize,
    xid: AtomicU32,
    names: Mutex<HashMap<FileHandle, String>>,
    unmounted: AtomicBool,
}

/// A pipeline's reply handler: gets the caller's tag and the procedure results, may return
/// a follow-up call.
type OnReply<'a> = dyn FnMut(usize, &[u8]) -> Result<Option<Call>, NfsError> + 'a;

/// One NFS call of a pipeline; `tag` is the caller's.
#[derive(Debug)]
struct Call {
    proc_: u32,
    args: Vec<u8>,
    tag: usize,
}

// ---- one-shot calls (portmapper, MOUNT) ---------------------------------------------------------

fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, NfsError> {
    let addr = format!("{host}:{port}");
    if host.is_empty() {
        return Err(NfsError::Connect {
            addr,
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no server host configured"),
        });
    }
    let addrs: Vec<SocketAddr> =
        (host, port).to_socket_addrs().map_err(|source| NfsError::Connect { addr: addr.clone(), source })?.collect();
    if addrs.is_empty() {
        return Err(NfsError::Connect {
            addr,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "host name has no address"),
        });
    }
    Ok(addrs)
}

/// Connect to the first address that answers. Our source port is whatever the kernel picks
/// (unprivileged): servers that insist on a reserved port (Linux knfsd's default `secure`,
/// ganesha's `PrivilegedPort = true`) must allow `insecure` for this client.
fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, NfsError> {
    let mut last = None;
    for a in resolve(host, port)? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some((a, e)),
        }
    }
    let (a, source) = last.expect("resolve returns at least one address");
    Err(NfsError::Connect { addr: a.to_string(), source })
}

fn rpc_error(server: &str, program: &'static str, outcome: RpcOutcome) -> NfsError {
    let server = server.to_string();
    let detail = match outcome {
        RpcOutcome::AuthError(s) => return NfsError::AuthRejected { server, detail: wire::auth_stat_name(s).into() },
        RpcOutcome::Success { .. } => "success".into(),
        RpcOutcome::RpcMismatch(l, h) => format!("RPC_MISMATCH (server speaks RPC versions {l}..{h})"),
        RpcOutcome::ProgUnavail => "PROG_UNAVAIL (program not served)".into(),
        RpcOutcome::ProgMismatch(l, h) => format!("PROG_MISMATCH (server has versions {l}..{h}, we need 3)"),
        RpcOutcome::ProcUnavail => "PROC_UNAVAIL (procedure not implemented)".into(),
        RpcOutcome::GarbageArgs => "GARBAGE_ARGS (server could not decode our arguments)".into(),
        RpcOutcome::SystemErr => "SYSTEM_ERR (server-side failure)".into(),
    };
    NfsError::Rpc { server, program, detail }
}

/// Check an RPC reply header; the procedure results start at the returned offset.
fn accepted(server: &str, program: &'static str, rec: &[u8]) -> Result<usize, NfsError> {
    let (_, outcome) =
        wire::decode_rpc_reply(rec).map_err(|e| NfsError::Protocol { server: server.into(), detail: e.0 })?;
    match outcome {
        RpcOutcome::Success { body } => Ok(body),
        other => Err(rpc_error(server, program, other)),
    }
}

/// One call on its own short-lived connection; returns the record and the results offset.
#[allow(clippy::too_many_arguments)]
fn oneshot(
    opts: &ClientOptions,
    server: &str,
    port: u16,
    program: &'static str,
    prog_vers: (u32, u32),
    proc_: u32,
    procedure: &'static str,
    auth: &[u8],
    args: &[u8],
) -> Result<(Vec<u8>, usize), NfsError> {
    let timeout = opts.oneshot_timeout();
    let mut s = connect(&opts.host, port, timeout)?;
    let io = |source: std::io::Error| {
        if matches!(source.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
            NfsError::Timeout { server: server.to_string(), procedure, after: timeout }
        } else {
            NfsError::Connect { addr: format!("{}:{port}", opts.host), source }
        }
    };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let xid = fresh_xid_seed();
    let rec = wire::encode_call(xid, prog_vers.0, prog_vers.1, proc_, auth, args);
    std::io::Write::write_all(&mut s, &rec).map_err(io)?;
    let reply = match wire::read_record(&mut s, wire::MAX_RECORD) {
        Ok(r) => r,
        Err(wire::RecordError::Io(e)) => return Err(io(e)),
        Err(wire::RecordError::Bad(detail)) => return Err(NfsError::Protocol { server: server.into(), detail }),
    };
    if wire::reply_xid(&reply) != Some(xid) {
        return Err(NfsError::Protocol {
            server: server.into(),
            detail: format!("{procedure} reply with the wrong XID"),
        });
    }
    let body = accepted(server, program, &reply)?;
    Ok((reply, body))
}

fn getport(opts: &ClientOptions, prog: u32, program: &'static str) -> Result<u16, NfsError> {
    let server = opts.host.clone();
    let (rec, body) = oneshot(
        opts,
        &server,
        PORTMAP_PORT,
        "portmapper",
        (wire::PMAP_PROG, wire::PMAP_VERS),
        wire::PMAPPROC_GETPORT,
        "portmapper GETPORT",
        &wire::auth_none(),
        &wire::getport_args(prog, 3),
    )?;
    let port =
        wire::decode_getport(&rec[body..]).map_err(|e| NfsError::Protocol { server: server.clone(), detail: e.0 })?;
    match u16::try_from(port) {
        Ok(0) => Err(NfsError::NotRegistered { server, program }),
        Ok(p) => Ok(p),
        Err(_) => Err(NfsError::Protocol { server, detail: format!("portmapper returned port {port}") }),
    }
}

fn mount_port(opts: &ClientOptions) -> Result<u16, NfsError> {
    match opts.mount_port {
        Some(p) => Ok(p),
        None => getport(opts, wire::MOUNT_PROG, "MOUNT"),
    }
}

fn exports_at(opts: &ClientOptions, port: u16) -> Result<Vec<String>, NfsError> {
    let server = opts.host.clone();
    let (rec, body) = oneshot(
        opts,
        &server,
        port,
        "MOUNT",
        (wire::MOUNT_PROG, wire::MOUNT_VERS),
        wire::MOUNTPROC3_EXPORT,
        "MOUNT EXPORT",
        &wire::auth_none(),
        &[],
    )?;
    wire::decode_exports(&rec[body..]).map_err(|e| NfsError::Protocol { server, detail: e.0 })
}

/// The server's export list (MOUNT EXPORT), without mounting: a "test connection".
pub fn list_exports(opts: &ClientOptions) -> Result<Vec<String>, NfsError> {
    exports_at(opts, mount_port(opts)?)
}

fn fresh_xid_seed() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    // Only needs to differ between clients and runs; XIDs just have to be unique in flight.
    (t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(20)) ^ std::process::id().rotate_left(8)
}

fn normalize_export(export: &str) -> String {
    let t = export.trim_end_matches('/');
    if t.is_empty() {
        "/".into()
    } else {
        t.into()
    }
}

// ---- the client ---------------------------------------------------------------------------------

impl Nfs3Client {
    /// Mount `export` (e.g. `/export`): find the ports, MNT, open the connections, FSINFO.
    pub fn mount(opts: &ClientOptions, export: &str) -> Result<Nfs3Client, NfsError> {
        let export = normalize_export(export);
        if !export.starts_with('/') || export.len() > wire::MAX_MOUNT_PATH || export.contains('\0') {
            return Err(NfsError::InvalidPath {
                path: export,
                detail: "an export path starts with '/' and has at most 1024 bytes".into(),
            });
        }
        let server = format!("{}:{export}", opts.host);
        let auth = wire::auth_sys(opts.uid, opts.gid, MACHINE_NAME);
        let mport = mount_port(opts)?;
        let (rec, body) = oneshot(
            opts,
            &server,
            mport,
            "MOUNT",
            (wire::MOUNT_PROG, wire::MOUNT_VERS),
            wire::MOUNTPROC3_MNT,
            "MOUNT MNT",
            &auth,
            &wire::dirpath_args(&export),
        )?;
        let mnt =
            wire::decode_mnt(&rec[body..]).map_err(|e| NfsError::Protocol { server: server.clone(), detail: e.0 })?;
        let (root, flavors) = match mnt {
            Ok(v) => v,
            Err(status) => {
                // Tell "no such export" from "not allowed" by asking for the list.
                let available = exports_at(opts, mport).unwrap_or_default();
                if available.iter().any(|e| normalize_export(e) == export) {
                    return Err(NfsError::MountDenied { server: opts.host.clone(), export, status });
                }
                return Err(NfsError::ExportNotFound { server: opts.host.clone(), export, available });
            }
        };
        if !flavors.is_empty() && !flavors.contains(&wire::AUTH_SYS) {
            return Err(NfsError::AuthRejected {
                server,
                detail: format!("the export accepts only auth flavors {flavors:?} (AUTH_SYS is 1)"),
            });
        }

        let nslots = opts.connections.clamp(1, 64);
        let mut inner = Inner {
            opts: opts.clone(),
            export,
            server,
            root: root.clone(),
            read_size: READ_CAP,
            mount_port: mport,
            auth,
            slots: (0..nslots).map(|_| Mutex::new(None)).collect(),
            paces: (0..nslots).map(|_| Mutex::new(Pace::default())).collect(),
            next_slot: AtomicUsize::new(0),
            xid: AtomicU32::new(fresh_xid_seed()),
            names: Mutex::new(HashMap::new()),
            unmounted: AtomicBool::new(false),
        };
        // Connect every slot now, without retries: a wrong port must fail the mount at once.
        let port = inner.nfs_port()?;
        for slot in &inner.slots {
            let c = inner.open_conn(port)?;
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
        }
        inner.names.lock().unwrap_or_else(|e| e.into_inner()).insert(root.clone(), "(export root)".into());
        let info = inner
            .call1(wire::NFSPROC3_FSINFO, wire::fh_args(&root), |body| wire::decode_fsinfo(body).map_err(|e| e.0))?;
        let info = info.map_err(|st| inner.status_error("FSINFO", st, "(export root)".into()))?;
        let rt = if info.rtmax == 0 { info.rtpref } else { info.rtmax };
        let mut rs = if rt == 0 { 32 << 10 } else { rt.min(READ_CAP) };
        if rs >= 4096 {
            rs &= !4095; // keep large reads page-aligned
        }
        inner.read_size = rs;
        Ok(Nfs3Client { inner: Arc::new(inner) })
    }

    /// The export's root handle.
    pub fn root(&self) -> &FileHandle {
        &self.inner.root
    }

    /// `host:/export`, as used in messages.
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    /// The READ size in use: min(server's rtmax, 1 MiB).
    pub fn read_size(&self) -> u32 {
        self.inner.read_size
    }

    /// NULL procedure: a round trip that checks the NFS service answers.
    pub fn ping(&self) -> Result<Duration, NfsError> {
        let t = Instant::now();
        self.inner.call1(wire::NFSPROC3_NULL, Vec::new(), |_| Ok(()))?;
        Ok(t.elapsed())
    }

    /// Look `name` up in `dir`. `name` is one component (no '/').
    pub fn lookup(&self, dir: &FileHandle, name: &str) -> Result<(FileHandle, FileAttr), NfsError> {
        let dir_path = self.inner.name_of(dir);
        self.inner.lookup(dir, &dir_path, name)
    }

    /// Resolve a '/'-separated path relative to the export root ("" is the root). `.` is
    /// ignored, `..` goes up on our side and may not leave the export. Symlinks are not
    /// followed.
    pub fn lookup_path(&self, path: &str) -> Result<(FileHandle, FileAttr), NfsError> {
        // (handle, export-relative path, attributes from its LOOKUP); the root has none yet.
        let mut stack: Vec<(FileHandle, String, Option<FileAttr>)> =
            vec![(self.inner.root.clone(), String::new(), None)];
        for comp in path.split('/') {
            match comp {
                "" | "." => continue,
                ".." => {
                    if stack.len() == 1 {
                        return Err(NfsError::InvalidPath {
                            path: path.into(),
                            detail: "'..' would leave the export".into(),
                        });
                    }
                    stack.pop();
                }
                name => {
                    let (dir, dir_path, _) = stack.last().cloned().expect("stack never empty");
                    // A non-directory followed by more components fails in the next LOOKUP
                    // (NFS3ERR_NOTDIR), which names it.
                    let (fh, attr) = self.inner.lookup(&dir, &dir_path, name)?;
                    let p = if dir_path.is_empty() { name.to_string() } else { format!("{dir_path}/{name}") };
                    stack.push((fh, p, Some(attr)));
                }
            }
        }
        let (fh, p, attr) = stack.pop().expect("stack never empty");
        let attr = match attr {
            Some(a) => a,
            None => self.inner.getattr(&fh, &p)?,
        };
        Ok((fh, attr))
    }

    /// Attributes of a file.
    pub fn getattr(&self, fh: &FileHandle) -> Result<FileAttr, NfsError> {
        self.inner.getattr(fh, &self.inner.name_of(fh))
    }

    /// All entries of a directory (READDIRPLUS, every page), without "." and "..".
    pub fn read_dir(&self, dir: &FileHandle) -> Result<Vec<DirEntry>, NfsError> {
        self.inner.read_dir(dir)
    }

    /// Fill every buffer with the file's bytes at its offset. Requests of any size are split
    /// into READs of [`read_size`](Self::read_size), issued pipelined across the connections
    /// and completed in any order. A READ that returns fewer bytes than asked without eof is
    /// continued; reaching eof before a buffer is full is [`NfsError::ShortRead`]. On error
    /// the buffers' contents are unspecified.
    pub fn read_many(&self, fh: &FileHandle, reqs: &mut [(u64, &mut [u8])]) -> Result<(), NfsError> {
        self.inner.read_many(fh, reqs)
    }

    /// One read: `read_many` with a single request.
    pub fn read_at(&self, fh: &FileHandle, offset: u64, buf: &mut [u8]) -> Result<(), NfsError> {
        self.inner.read_many(fh, &mut [(offset, buf)])
    }

    /// The server's export list (MOUNT EXPORT).
    pub fn exports(&self) -> Result<Vec<String>, NfsError> {
        exports_at(&self.inner.opts, self.inner.mount_port)
    }

    /// Best-effort UMNT, then close every connection. Later calls fail with
    /// [`NfsError::Unmounted`]; calls in flight fail or finish.
    pub fn unmount(&self) {
        if self.inner.unmounted.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = oneshot(
            &self.inner.opts,
            &self.inner.server,
            self.inner.mount_port,
            "MOUNT",
            (wire::MOUNT_PROG, wire::MOUNT_VERS),
            wire::MOUNTPROC3_UMNT,
            "MOUNT UMNT",
            &self.inner.auth,
            &wire::dirpath_args(&self.inner.export),
        );
        for slot in &self.inner.slots {
            if let Some(c) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                c.kill("unmounted".into());
            }
        }
    }
}

impl Inner {
    fn nfs_port(&self) -> Result<u16, NfsError> {
        match self.opts.nfs_port {
            Some(p) => Ok(p),
            None => getport(&self.opts, wire::NFS_PROG, "NFS"),
        }
    }

    fn open_conn(&self, port: u16) -> Result<Arc<Conn>, NfsError> {
        let s = connect(&self.opts.host, port, self.opts.oneshot_timeout())?;
        Conn::start(s, self.opts.max_in_flight, self.opts.io_timeout)
            .map_err(|source| NfsError::Connect { addr: format!("{}:{port}", self.opts.host), source })
    }

    fn next_xid(&self) -> u32 {
        self.xid.fetch_add(1, Ordering::Relaxed)
    }

    fn name_of(&self, fh: &FileHandle) -> String {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).get(fh).cloned().unwrap_or_else(|| format!("{fh:?}"))
    }

    fn remember(&self, fh: &FileHandle, path: &str) {
        let mut m = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_NAMES {
            m.clear();
            m.insert(self.root.clone(), "(export root)".into());
        }
        m.insert(fh.clone(), path.into());
    }

    fn protocol(&self, detail: impl Into<String>) -> NfsError {
        NfsError::Protocol { server: self.server.clone(), detail: detail.into() }
    }

    /// Map a non-OK status to the error an operator can act on.
    fn status_error(&self, procedure: &'static str, status: NfsStatus, what: String) -> NfsError {
        let server = self.server.clone();
        match status {
            NfsStatus::NOENT => NfsError::NotFound { server, path: what },
            NfsStatus::ACCES | NfsStatus::PERM => NfsError::PermissionDenied { server, path: what, status },
            NfsStatus::STALE | NfsStatus::BADHANDLE => NfsError::Stale { server, what },
            NfsStatus::NOTDIR => NfsError::NotADirectory { server, path: what },
            NfsStatus::ISDIR => NfsError::NotAFile { server, path: what },
            _ => NfsError::Server { server, procedure, what, status },
        }
    }

    /// Get a live connection for slot `i`, reconnecting with backoff if it is dead.
    fn conn(&self, i: usize, first_failure: &mut Option<Instant>, last: &mut String) -> Result<Arc<Conn>, NfsError> {
        let mut slot = self.slots[i].lock().unwrap_or_else(|e| e.into_inner());
        if self.unmounted.load(Ordering::SeqCst) {
            return Err(NfsError::Unmounted { server: self.server.clone() });
        }
        if let Some(c) = slot.as_ref() {
            if !c.is_dead() {
                return Ok(Arc::clone(c));
            }
        }
        let start = *first_failure.get_or_insert_with(Instant::now);
        let deadline = self.opts.reconnect_deadline;
        let mut pace = self.paces[i].lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            // Reconnecting: if the last connection died young, wait before the next one.
            if let Some(wait) = pace.before_reconnect() {
                std::thread::sleep(wait.min(deadline.saturating_sub(start.elapsed())));
            }
        }
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.nfs_port().and_then(|p| self.open_conn(p)) {
                Ok(c) => {
                    pace.last_connect = Some(Instant::now());
                    *slot = Some(Arc::clone(&c));
                    return Ok(c);
                }
                Err(e) => *last = e.to_string(),
            }
            let elapsed = start.elapsed();
            if elapsed >= deadline {
                return Err(self.lost(last));
            }
            std::thread::sleep(backoff.min(deadline - elapsed));
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    fn lost(&self, last: &str) -> NfsError {
        NfsError::ConnectionLost {
            server: self.server.clone(),
            deadline: self.opts.reconnect_deadline,
            detail: last.to_string(),
        }
    }

    /// Run `calls` (and the follow-ups `on_reply` returns) to completion; see the module docs.
    fn pipeline(&self, calls: Vec<Call>, on_reply: &mut OnReply<'_>) -> Result<(), NfsError> {
        let (tx, rx) = crossbeam_channel::unbounded::<Completion>();
        let mut queue: VecDeque<Call> = calls.into();
        // id -> (call, connection it went to, when it was sent)
        let mut out: HashMap<usize, (Call, Arc<Conn>, Instant)> = HashMap::new();
        let window = self.slots.len() * self.opts.max_in_flight.max(1);
        let io_timeout = self.opts.io_timeout;
        let deadline = self.opts.reconnect_deadline;
        let mut first_failure: Option<Instant> = None;
        let mut last = String::new();
        let mut next_id = 0usize;
        loop {
            while out.len() < window {
                let Some(call) = queue.pop_front() else { break };
                let slot = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
                let conn = self.conn(slot, &mut first_failure, &mut last)?;
                let xid = self.next_xid();
                let rec = wire::encode_call(xid, wire::NFS_PROG, wire::NFS_VERS, call.proc_, &self.auth, &call.args);
                let id = next_id;
                next_id += 1;
                match conn.submit(xid, &rec, id, &tx, io_timeout) {
                    Ok(()) => {
                        out.insert(id, (call, conn, Instant::now()));
                    }
                    Err(Failure::Dead(d)) => {
                        let since = *first_failure.get_or_insert_with(Instant::now);
                        last = d;
                        if since.elapsed() >= deadline {
                            return Err(self.lost(&last));
                        }
                        queue.push_front(call);
                    }
                    Err(Failure::Protocol(d)) => return Err(self.protocol(d)),
                }
            }
            let Some(oldest) = out.values().map(|o| o.2).min() else {
                return Ok(()); // nothing outstanding and the queue is empty
            };
            match rx.recv_deadline(oldest + io_timeout) {
                Ok(c) => {
                    let Some((call, _conn, _)) = out.remove(&c.tag) else { continue };
                    match c.result {
                        Ok(rec) => {
                            first_failure = None;
                            let body = accepted(&self.server, "NFS", &rec)?;
                            if let Some(next) = on_reply(call.tag, &rec[body..])? {
                                queue.push_front(next);
                            }
                        }
                        Err(Failure::Dead(d)) => {
                            let since = *first_failure.get_or_insert_with(Instant::now);
                            last = d;
                            if since.elapsed() >= deadline {
                                return Err(self.lost(&last));
                            }
                            queue.push_front(call);
                        }
                        Err(Failure::Protocol(d)) => return Err(self.protocol(d)),
                    }
                }
                Err(_) => {
                    // Kill every connection holding an overdue call; their failures come
                    // back through `rx` (synchronously, from `kill`) and are re-sent.
                    let now = Instant::now();
                    for (call, conn, sent) in out.values() {
                        if now.duration_since(*sent) >= io_timeout {
                            conn.kill(format!("no reply to {} within {io_timeout:?}", wire::nfs_proc_name(call.proc_)));
                        }
                    }
                }
            }
        }
    }

    /// One call; `decode` turns the results into `T` or a protocol complaint.
    fn call1<T>(&self, proc_: u32, args: Vec<u8>, decode: impl Fn(&[u8]) -> Result<T, String>) -> Result<T, NfsError> {
        let mut result = None;
        self.pipeline(vec![Call { proc_, args, tag: 0 }], &mut |_, body| {
            result = Some(decode(body).map_err(|d| self.protocol(format!("{}: {d}", wire::nfs_proc_name(proc_))))?);
            Ok(None)
        })?;
        result.ok_or_else(|| self.protocol("no reply"))
    }

    fn getattr(&self, fh: &FileHandle, what: &str) -> Result<FileAttr, NfsError> {
        self.call1(wire::NFSPROC3_GETATTR, wire::fh_args(fh), |b| wire::decode_getattr(b).map_err(|e| e.0))?
            .map_err(|st| self.status_error("GETATTR", st, what.into()))
    }

    fn lookup(&self, dir: &FileHandle, dir_path: &str, name: &str) -> Result<(FileHandle, FileAttr), NfsError> {
        let path = if dir_path.is_empty() { name.to_string() } else { format!("{dir_path}/{name}") };
        if name.is_empty() || name.contains('/') || name.contains('\0') || name.len() > 255 {
            return Err(NfsError::InvalidPath { path, detail: "a name is 1..255 bytes without '/' or NUL".into() });
        }
        let r = self
            .call1(wire::NFSPROC3_LOOKUP, wire::lookup_args(dir, name), |b| wire::decode_lookup(b).map_err(|e| e.0))?;
        let (fh, attr) = r.map_err(|st| match st {
            NfsStatus::NOTDIR => NfsError::NotADirectory { server: self.server.clone(), path: dir_path.into() },
            st => self.status_error("LOOKUP", st, path.clone()),
        })?;
        self.remember(&fh, &path);
        let attr = match attr {
            Some(a) => a,
            None => self.getattr(&fh, &path)?,
        };
        Ok((fh, attr))
    }

    fn read_dir(&self, dir: &FileHandle) -> Result<Vec<DirEntry>, NfsError> {
        let dir_path = self.name_of(dir);
        let mut out = Vec::new();
        let mut cookie = 0u64;
        let mut verf = [0u8; 8];
        let mut seen = 0usize;
        // An entry takes at least 28 bytes on the wire; a page cannot honestly hold more.
        let max_page = (READDIR_MAXCOUNT / 28) as usize + 1;
        loop {
            let args = wire::readdirplus_args(dir, cookie, verf, READDIR_DIRCOUNT, READDIR_MAXCOUNT);
            let page = self
                .call1(wire::NFSPROC3_READDIRPLUS, args, |b| wire::decode_readdirplus(b, max_page).map_err(|e| e.0))?
                .map_err(|st| self.status_error("READDIRPLUS", st, dir_path.clone()))?;
            if page.entries.is_empty() && !page.eof {
                return Err(self.protocol("READDIRPLUS returned an empty page without eof"));
            }
            seen += page.entries.len();
            if seen > MAX_DIR_ENTRIES {
                return Err(self.protocol(format!("directory {dir_path} has more than {MAX_DIR_ENTRIES} entries")));
            }
            verf = page.cookieverf;
            if let Some(last) = page.entries.last() {
                cookie = last.cookie;
            }
            for e in page.entries {
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                out.push(DirEntry {
                    name: String::from_utf8_lossy(&e.name).into_owned(),
                    fileid: e.fileid,
                    handle: e.handle,
                    attr: e.attr,
                });
            }
            if page.eof {
                return Ok(out);
            }
        }
    }

    fn read_many(&self, fh: &FileHandle, reqs: &mut [(u64, &mut [u8])]) -> Result<(), NfsError> {
        struct Piece {
            req: usize,
            pos: usize,
            len: u32,
        }
        let rs = self.read_size as usize;
        let mut pieces: Vec<Piece> = Vec::new();
        let mut calls = Vec::new();
        for (i, (off, buf)) in reqs.iter().enumerate() {
            let mut pos = 0;
            while pos < buf.len() {
                let len = rs.min(buf.len() - pos);
                calls.push(Call {
                    proc_: wire::NFSPROC3_READ,
                    args: wire::read_args(fh, off.saturating_add(pos as u64), len as u32),
                    tag: pieces.len(),
                });
                pieces.push(Piece { req: i, pos, len: len as u32 });
                pos += len;
            }
        }
        if calls.is_empty() {
            return Ok(());
        }
        let what = || format!("{}: {}", self.server, self.name_of(fh));
        self.pipeline(calls, &mut |tag, body| {
            let (req, pos, len) = {
                let p = &pieces[tag];
                (p.req, p.pos, p.len)
            };
            let r = wire::decode_read(body, len).map_err(|e| self.protocol(format!("READ: {}", e.0)))?;
            let r = r.map_err(|st| self.status_error("READ", st, self.name_of(fh)))?;
            let (off, buf) = &mut reqs[req];
            let n = r.data.len();
            buf[pos..pos + n].copy_from_slice(r.data);
            if n == len as usize {
                return Ok(None);
            }
            if r.eof {
                return Err(NfsError::ShortRead {
                    what: what(),
                    offset: *off,
                    expected: buf.len() as u64,
                    got: (pos + n) as u64,
                });
            }
            if n == 0 {
                return Err(self.protocol("READ returned no data and no eof"));
            }
            // A short READ without eof: ask for the rest.
            let (npos, nlen) = (pos + n, len - n as u32);
            let next = Call {
                proc_: wire::NFSPROC3_READ,
                args: wire::read_args(fh, off.saturating_add(npos as u64), nlen),
                tag: pieces.len(),
            };
            pieces.push(Piece { req, pos: npos, len: nlen });
            Ok(Some(next))
        })
    }
}

/// Reconnect pacing of one connection slot.
#[derive(Debug, Default)]
struct Pace {
    last_connect: Option<Instant>,
    /// Connections in a row that died within [`Pace::YOUNG`] of being opened.
    young_deaths: u32,
}

impl Pace {
    const YOUNG: Duration = Duration::from_secs(1);

    /// How long to wait before replacing a connection that just died: nothing if it lived a
    /// while, else 20 ms doubling per young death, at most 1 s.
    fn before_reconnect(&mut self) -> Option<Duration> {
        match self.last_connect {
            Some(t) if t.elapsed() < Self::YOUNG => {
                self.young_deaths = (self.young_deaths + 1).min(6);
                Some(Duration::from_millis(20) * (1 << (self.young_deaths - 1)))
            }
            _ => {
                self.young_deaths = 0;
                None
            }
        }
    }
}
