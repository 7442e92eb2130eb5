//! A normal session: one connection at a time, many commands outstanding, reconnect with
//! session reinstatement.
//!
//! # Threads and locks
//! ```text
//!  caller threads (execute_many)            reader thread (one per connection)
//!  ─ reserve a slot: Conn.st + cond         ─ PduReader::next() (socket read timeout = tick)
//!  ─ Conn.tx: assign ITT/CmdSN, register    ─ Conn.st: update ExpCmdSN/MaxCmdSN/ExpStatSN,
//!    the task, write the PDU(s), flush        look the task up by ITT, send the PDU to the
//!    queued control PDUs                      task's channel, wake window waiters
//!  ─ wait on the batch's channel: copy       ─ NOP-In ping → NOP-Out reply queued in Conn.ctrl
//!    Data-In into the caller's buffer,        (flushed by whoever holds Conn.tx; try_lock)
//!    answer R2T with Data-Out (Conn.tx)      ─ idle for nop_interval → our NOP-Out ping
//! ```
//! Lock order: `Session.reconnect` → `Session.conn` → `Conn.tx` → `Conn.st`; `Conn.ctrl` is a
//! leaf. The reader never blocks on `Conn.tx` (only `try_lock`), so a caller blocked in a
//! socket write can never stall the reader that drains the target's replies. Caller buffers
//! are only touched by their own thread: the reader hands over owned data segments.
//!
//! # Invariants
//! - CmdSN is assigned and the PDU written under the same `Conn.tx` hold, so CmdSNs go on the
//!   wire in order; a slot is reserved first only while `CmdSN + reserved <= MaxCmdSN` and
//!   fewer than `queue_depth` commands are in flight, so senders block when the window closes.
//! - Every task registered on a connection ends exactly once: its final PDU (SCSI Response,
//!   Data-In with S, Reject) removes it, or the connection's death hands it a `Lost` event.
//! - Events carry the connection generation; a caller ignores events of older generations, so
//!   a re-issued command never mixes data of two connections.
//!
//! # Recovery (ERL 0)
//! Any connection failure (EOF, socket error, digest error, hostile PDU, Async logout request,
//! a command timeout, unanswered NOP-Out pings) kills the connection: every outstanding task
//! gets `Lost`. The first caller to notice logs in again with the same ISID and TSIH 0 (session
//! reinstatement: the target drops the old session's tasks), retrying with exponential backoff
//! until `reconnect_deadline`; other callers wait on `Session.reconnect` and reuse the new
//! connection. Each caller then re-issues its commands that had no status: READs are
//! idempotent, and a WRITE without status is simply written again.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use scsi::{Command, Completion, DataDir, Residual, Sense, Status};

use crate::error::IscsiError;
use crate::login::{self, LoginParams, Negotiated};
use crate::pdu::{op, sn_le, sn_lt, Pdu, PduReader, RESERVED_TAG};
use crate::SessionConfig;

/// Our MaxRecvDataSegmentLength: the largest data segment we accept (and allocate).
pub const MAX_RECV_DATA: u32 = 256 * 1024;
/// What we offer as MaxBurstLength.
pub const MAX_BURST: u32 = 1024 * 1024;
/// What we offer as FirstBurstLength.
pub const FIRST_BURST: u32 = 256 * 1024;
/// How many times one command may be issued (first issue plus re-issues after reconnects).
pub const MAX_ISSUES: u32 = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge the session: the protected state stays consistent
    // because every critical section is short and panic-free by construction.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves "host:port", "host", "[v6]:port", "[v6]" or a bare IPv6 literal (port 3260 when
/// absent).
pub(crate) fn resolve(portal: &str) -> Result<Vec<std::net::SocketAddr>, IscsiError> {
    let bad = || IscsiError::Config { detail: format!("portal {portal:?} is not host:port, host, or [ipv6]:port") };
    let s = portal.trim();
    let with_port = if let Some(rest) = s.strip_prefix('[') {
        let (_, after) = rest.split_once(']').ok_or_else(bad)?;
        if after.is_empty() {
            format!("{s}:3260")
        } else if after.starts_with(':') {
            s.to_string()
        } else {
            return Err(bad());
        }
    } else if s.matches(':').count() > 1 {
        format!("[{s}]:3260")
    } else if s.contains(':') {
        s.to_string()
    } else if s.is_empty() {
        return Err(bad());
    } else {
        format!("{s}:3260")
    };
    let addrs: Vec<_> = with_port
        .to_socket_addrs()
        .map_err(|e| IscsiError::Connect { portal: portal.to_string(), source: e })?
        .collect();
    if addrs.is_empty() {
        return Err(bad());
    }
    Ok(addrs)
}

/// Opens a TCP connection to the portal within `timeout`.
pub(crate) fn connect(portal: &str, timeout: Duration) -> Result<TcpStream, IscsiError> {
    let mut last = None;
    for a in resolve(portal)? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(IscsiError::Connect {
        portal: portal.to_string(),
        source: last.unwrap_or_else(|| std::io::Error::other("no address")),
    })
}

/// Connects and logs in one connection (normal or discovery), returning the socket halves.
pub(crate) fn open_connection(
    cfg: &SessionConfig,
    target: Option<&str>,
    isid: [u8; 6],
) -> Result<(TcpStream, PduReader<TcpStream>, Negotiated), IscsiError> {
    let mut w = connect(&cfg.portal, cfg.io_timeout)?;
    let io = |what: &str, e: std::io::Error| IscsiError::Io { what: what.to_string(), source: e };
    w.set_read_timeout(Some(cfg.io_timeout)).map_err(|e| io("socket read timeout", e))?;
    w.set_write_timeout(Some(cfg.io_timeout)).map_err(|e| io("socket write timeout", e))?;
    let r = w.try_clone().map_err(|e| io("socket clone", e))?;
    let mut r = PduReader::new(r, MAX_RECV_DATA as usize);
    r.stall = cfg.io_timeout;
    let p = LoginParams {
        portal: &cfg.portal,
        initiator: &cfg.initiator,
        target,
        isid,
        tsih: 0,
        cmd_sn: 1,
        chap: cfg.chap.as_ref(),
        mutual: cfg.mutual_chap.as_ref(),
        header_digest: cfg.header_digest,
        data_digest: cfg.data_digest,
        max_recv_data: MAX_RECV_DATA,
        max_burst: MAX_BURST,
        first_burst: FIRST_BURST,
    };
    let neg = login::login(&mut w, &mut r, &p)?;
    r.digests = neg.digests;
    Ok((w, r, neg))
}

struct Task {
    reply: Sender<Event>,
    idx: usize,
}

/// What a reader hands to a waiting caller.
pub(crate) struct Event {
    gen: u64,
    idx: usize,
    itt: u32,
    kind: EvKind,
}

enum EvKind {
    Pdu(Pdu),
    Lost,
}

struct ConnState {
    cmd_sn: u32,
    max_cmd_sn: u32,
    exp_stat_sn: u32,
    next_itt: u32,
    in_flight: usize,
    reserved: usize,
    tasks: HashMap<u32, Task>,
    dead: Option<String>,
    logout: Option<Pdu>,
    ping: Option<(u32, Instant)>,
}

impl ConnState {
    fn alloc_itt(&mut self) -> u32 {
        loop {
            let t = self.next_itt;
            self.next_itt = self.next_itt.wrapping_add(1);
            if t != RESERVED_TAG && !self.tasks.contains_key(&t) {
                return t;
            }
        }
    }
}

/// One logged-in connection.
struct Conn {
    gen: u64,
    neg: Negotiated,
    tx: Mutex<TcpStream>,
    ctrl: Mutex<Vec<Vec<u8>>>,
    st: Mutex<ConnState>,
    cond: Condvar,
    queue_depth: usize,
    io_timeout: Duration,
    nop_interval: Duration,
}

impl Conn {
    fn start(cfg: &SessionConfig, isid: [u8; 6], gen: u64) -> Result<Arc<Conn>, IscsiError> {
        let (w, r, neg) = open_connection(cfg, Some(&cfg.target), isid)?;
        let tick = if cfg.nop_interval.is_zero() {
            Duration::from_secs(1)
        } else {
            (cfg.nop_interval / 2).clamp(Duration::from_millis(50), Duration::from_secs(1))
        };
        r.get_ref()
            .set_read_timeout(Some(tick))
            .map_err(|e| IscsiError::Io { what: "socket read timeout".into(), source: e })?;
        let conn = Arc::new(Conn {
            gen,
            neg,
            tx: Mutex::new(w),
            ctrl: Mutex::new(Vec::new()),
            st: Mutex::new(ConnState {
                cmd_sn: neg.cmd_sn,
                max_cmd_sn: neg.max_cmd_sn,
                exp_stat_sn: neg.exp_stat_sn,
                next_itt: 1,
                in_flight: 0,
                reserved: 0,
                tasks: HashMap::new(),
                dead: None,
                logout: None,
                ping: None,
            }),
            cond: Condvar::new(),
            queue_depth: cfg.queue_depth.max(1),
            io_timeout: cfg.io_timeout,
            nop_interval: cfg.nop_interval,
        });
        let c2 = conn.clone();
        std::thread::Builder::new()
            .name(format!("iscsi-rx-{gen}"))
            .spawn(move || c2.reader(r))
            .map_err(|e| IscsiError::Io { what: "starting the iSCSI reader thread".into(), source: e })?;
        Ok(conn)
    }

    fn is_dead(&self) -> bool {
        lock(&self.st).dead.is_some()
    }

    /// Marks the connection dead (first reason wins), shuts the socket so the reader stops, and
    /// hands every outstanding task a `Lost` event.
    fn kill(&self, reason: &str) {
        let tasks: Vec<(u32, Task)> = {
            let mut st = lock(&self.st);
            if st.dead.is_none() {
                st.dead = Some(reason.to_string());
            }
            st.in_flight = 0;
            st.tasks.drain().collect()
        };
        self.cond.notify_all();
        for (itt, t) in tasks {
            let _ = t.reply.send(Event { gen: self.gen, idx: t.idx, itt, kind: EvKind::Lost });
        }
        // A clone of the socket shares the descriptor: shutting any clone down wakes the reader.
        if let Ok(s) = self.tx.try_lock() {
            let _ = s.shutdown(Shutdown::Both);
        } else if let Ok(s) = lock(&self.tx).try_clone() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn dead_reason(&self) -> String {
        lock(&self.st).dead.clone().unwrap_or_else(|| "connection closed".into())
    }

    /// Writes queued control PDUs (NOP-Out replies, pings) while holding `tx`.
    fn flush_ctrl(&self, tx: &mut TcpStream) -> std::io::Result<()> {
        let pending: Vec<Vec<u8>> = std::mem::take(&mut *lock(&self.ctrl));
        for p in pending {
            tx.write_all(&p)?;
        }
        Ok(())
    }

    fn queue_ctrl(&self, p: Vec<u8>) {
        lock(&self.ctrl).push(p);
        if let Ok(mut tx) = self.tx.try_lock() {
            if let Err(e) = self.flush_ctrl(&mut tx) {
                drop(tx);
                self.kill(&format!("write failed: {e}"));
            }
        }
    }

    fn nop_out(&self, itt: u32, ttt: u32, lun: [u8; 8]) -> Vec<u8> {
        let st = lock(&self.st);
        let mut p = Pdu::new(op::NOP_OUT, true);
        p.set_flags(0x80);
        p.set_lun(lun);
        p.set_itt(itt);
        p.set_u32(20, ttt);
        p.set_u32(24, st.cmd_sn);
        p.set_u32(28, st.exp_stat_sn);
        p.encode(self.neg.digests)
    }

    fn reader(self: Arc<Self>, mut r: PduReader<TcpStream>) {
        let mut last_rx = Instant::now();
        loop {
            if !lock(&self.ctrl).is_empty() {
                if let Ok(mut tx) = self.tx.try_lock() {
                    if let Err(e) = self.flush_ctrl(&mut tx) {
                        drop(tx);
                        self.kill(&format!("write failed: {e}"));
                        return;
                    }
                }
            }
            if self.is_dead() {
                self.kill("connection closed");
                return;
            }
            match r.read_pdu() {
                Ok(None) => {
                    let ping = lock(&self.st).ping;
                    match ping {
                        Some((_, t)) if t.elapsed() > self.io_timeout.max(self.nop_interval) => {
                            self.kill("the target stopped answering NOP-Out pings");
                            return;
                        }
                        None if !self.nop_interval.is_zero() && last_rx.elapsed() >= self.nop_interval => {
                            let itt = {
                                let mut st = lock(&self.st);
                                let itt = st.alloc_itt();
                                st.ping = Some((itt, Instant::now()));
                                itt
                            };
                            let p = self.nop_out(itt, RESERVED_TAG, [0; 8]);
                            self.queue_ctrl(p);
                        }
                        _ => {}
                    }
                }
                Ok(Some(p)) => {
                    last_rx = Instant::now();
                    if let Err(reason) = self.dispatch(p) {
                        self.kill(&reason);
                        return;
                    }
                }
                Err(e) => {
                    self.kill(&e.to_string());
                    return;
                }
            }
        }
    }

    /// Routes one target PDU. An `Err` is a protocol violation that ends the connection.
    fn dispatch(&self, p: Pdu) -> Result<(), String> {
        let opc = p.opcode();
        let itt = p.itt();
        let mut st = lock(&self.st);
        // Window update (RFC 7143 §4.2.2.1): ignore a MaxCmdSN below ExpCmdSN - 1.
        if opc != op::LOGIN_RESP {
            let (exp, max) = (p.exp_cmd_sn(), p.max_cmd_sn());
            if sn_le(exp.wrapping_sub(1), max) && sn_lt(st.max_cmd_sn, max) {
                st.max_cmd_sn = max;
                self.cond.notify_all();
            }
        }
        let status_pdu = match opc {
            op::SCSI_RESP | op::LOGOUT_RESP | op::TEXT_RESP | op::ASYNC | op::REJECT | op::TMF_RESP => true,
            op::DATA_IN => p.flags() & 0x01 != 0,
            op::NOP_IN => itt != RESERVED_TAG,
            _ => false,
        };
        if status_pdu && sn_le(st.exp_stat_sn, p.stat_sn()) {
            st.exp_stat_sn = p.stat_sn().wrapping_add(1);
        }
        let deliver = |st: &mut ConnState, final_: bool| -> Result<(), String> {
            let t = if final_ {
                st.tasks.remove(&itt)
            } else {
                st.tasks.get(&itt).map(|t| Task { reply: t.reply.clone(), idx: t.idx })
            };
            let Some(t) = t else {
                return Err(format!(
                    "the target sent a PDU (opcode 0x{opc:02x}) for task 0x{itt:08x}, which does not exist"
                ));
            };
            if final_ {
                st.in_flight = st.in_flight.saturating_sub(1);
                self.cond.notify_all();
            }
            let _ = t.reply.send(Event { gen: self.gen, idx: t.idx, itt, kind: EvKind::Pdu(p.clone()) });
            Ok(())
        };
        match opc {
            op::SCSI_RESP => deliver(&mut st, true),
            op::DATA_IN => deliver(&mut st, p.flags() & 0x01 != 0),
            op::R2T => deliver(&mut st, false),
            op::NOP_IN => {
                if itt == RESERVED_TAG {
                    if p.ttt() != RESERVED_TAG {
                        drop(st);
                        let reply = self.nop_out(RESERVED_TAG, p.ttt(), p.lun());
                        self.queue_ctrl(reply);
                    }
                } else if st.ping.is_some_and(|(t, _)| t == itt) {
                    st.ping = None;
                }
                Ok(())
            }
            op::ASYNC => match p.bhs[36] {
                1 => Err("the target asked us to log out (Async Message)".into()),
                2 | 3 => Err("the target announced it drops the connection (Async Message)".into()),
                _ => Ok(()),
            },
            op::REJECT => {
                if p.data.len() >= 48 {
                    let ritt = u32::from_be_bytes([p.data[16], p.data[17], p.data[18], p.data[19]]);
                    if let Some(t) = st.tasks.remove(&ritt) {
                        st.in_flight = st.in_flight.saturating_sub(1);
                        self.cond.notify_all();
                        let _ = t.reply.send(Event { gen: self.gen, idx: t.idx, itt: ritt, kind: EvKind::Pdu(p) });
                    }
                }
                Ok(())
            }
            op::LOGOUT_RESP => {
                st.logout = Some(p);
                self.cond.notify_all();
                Ok(())
            }
            op::TMF_RESP | op::TEXT_RESP => Ok(()),
            other => Err(format!("the target sent an unexpected PDU (opcode 0x{other:02x})")),
        }
    }

    /// Reserves a window slot, then registers and sends the command. `Err` when the connection
    /// died (the caller recovers).
    fn submit(&self, lun: [u8; 8], cmd: &Command<'_>, idx: usize, reply: &Sender<Event>) -> Result<u32, ()> {
        {
            let mut st = lock(&self.st);
            loop {
                if st.dead.is_some() {
                    return Err(());
                }
                if st.in_flight + st.reserved < self.queue_depth
                    && sn_le(st.cmd_sn.wrapping_add(st.reserved as u32), st.max_cmd_sn)
                {
                    st.reserved += 1;
                    break;
                }
                st = self.cond.wait_timeout(st, Duration::from_millis(200)).unwrap_or_else(|e| e.into_inner()).0;
            }
        }
        let mut tx = lock(&self.tx);
        let (itt, cmd_sn, exp_stat_sn) = {
            let mut st = lock(&self.st);
            st.reserved -= 1;
            if st.dead.is_some() {
                return Err(());
            }
            let itt = st.alloc_itt();
            let sn = st.cmd_sn;
            st.cmd_sn = sn.wrapping_add(1);
            st.in_flight += 1;
            st.tasks.insert(itt, Task { reply: reply.clone(), idx });
            (itt, sn, st.exp_stat_sn)
        };
        let n = &self.neg;
        let mut p = Pdu::new(op::SCSI_CMD, false);
        let (mut flags, len) = match &cmd.data {
            DataDir::None => (0u8, 0usize),
            DataDir::In(b) => (0x40, b.len()),
            DataDir::Out(b) => (0x20, b.len()),
        };
        flags |= 0x01; // task attribute SIMPLE
        let mut wire = Vec::new();
        if let DataDir::Out(b) = &cmd.data {
            let imm = if n.immediate_data {
                b.len().min(n.first_burst as usize).min(n.their_max_recv_data as usize)
            } else {
                0
            };
            p.data = b[..imm].to_vec();
            let unsolicited_end = if n.initial_r2t { imm } else { b.len().min(n.first_burst as usize) };
            if unsolicited_end == imm {
                flags |= 0x80;
            }
            p.set_flags(flags);
            p.set_lun(lun);
            p.set_itt(itt);
            p.set_u32(20, len as u32);
            p.set_u32(24, cmd_sn);
            p.set_u32(28, exp_stat_sn);
            p.bhs[32..32 + cmd.cdb.len()].copy_from_slice(cmd.cdb);
            wire.extend_from_slice(&p.encode(n.digests));
            if unsolicited_end > imm {
                self.data_out(&mut wire, lun, itt, RESERVED_TAG, exp_stat_sn, b, imm, unsolicited_end - imm);
            }
        } else {
            p.set_flags(flags | 0x80);
            p.set_lun(lun);
            p.set_itt(itt);
            p.set_u32(20, len as u32);
            p.set_u32(24, cmd_sn);
            p.set_u32(28, exp_stat_sn);
            p.bhs[32..32 + cmd.cdb.len()].copy_from_slice(cmd.cdb);
            wire = p.encode(n.digests);
        }
        let res = tx.write_all(&wire).and_then(|_| self.flush_ctrl(&mut tx));
        drop(tx);
        if let Err(e) = res {
            self.kill(&format!("write failed: {e}"));
            return Err(());
        }
        Ok(itt)
    }

    /// Appends Data-Out PDUs for `buf[offset..offset+len]` (one sequence, DataSN from 0, each
    /// PDU at most the target's MaxRecvDataSegmentLength, F on the last).
    #[allow(clippy::too_many_arguments)]
    fn data_out(
        &self,
        wire: &mut Vec<u8>,
        lun: [u8; 8],
        itt: u32,
        ttt: u32,
        exp_stat_sn: u32,
        buf: &[u8],
        offset: usize,
        len: usize,
    ) {
        let max = self.neg.their_max_recv_data as usize;
        let end = offset + len;
        let mut pos = offset;
        let mut sn = 0u32;
        while pos < end {
            let n = max.min(end - pos);
            let mut p = Pdu::new(op::DATA_OUT, false);
            p.set_flags(if pos + n == end { 0x80 } else { 0 });
            p.set_lun(lun);
            p.set_itt(itt);
            p.set_u32(20, ttt);
            p.set_u32(28, exp_stat_sn);
            p.set_u32(36, sn);
            p.set_u32(40, pos as u32);
            p.data = buf[pos..pos + n].to_vec();
            wire.extend_from_slice(&p.encode(self.neg.digests));
            pos += n;
            sn += 1;
        }
    }

    /// Answers an R2T.
    fn send_r2t_data(&self, lun: [u8; 8], itt: u32, ttt: u32, buf: &[u8], offset: usize, len: usize) -> Result<(), ()> {
        let exp_stat_sn = lock(&self.st).exp_stat_sn;
        let mut wire = Vec::with_capacity(len + 64);
        self.data_out(&mut wire, lun, itt, ttt, exp_stat_sn, buf, offset, len);
        let mut tx = lock(&self.tx);
        let res = tx.write_all(&wire).and_then(|_| self.flush_ctrl(&mut tx));
        drop(tx);
        res.map_err(|e| self.kill(&format!("write failed: {e}")))
    }
}

/// A logged-in iSCSI session to one target. `Send + Sync`: share it in an `Arc` and call it from
/// many threads.
pub struct Session {
    cfg: SessionConfig,
    isid: [u8; 6],
    conn: Mutex<Arc<Conn>>,
    reconnect: Mutex<()>,
    failed: Mutex<Option<String>>,
    closed: AtomicBool,
    reconnects: AtomicU64,
    next_gen: AtomicU64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("portal", &self.cfg.portal)
            .field("target", &self.cfg.target)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
enum Slot {
    Queued,
    Sent { itt: u32, deadline: Instant },
    Done,
}

impl Session {
    /// Connects, logs in (CHAP as configured) and starts the reader thread.
    pub fn login(cfg: SessionConfig) -> Result<Arc<Session>, IscsiError> {
        if cfg.queue_depth == 0 {
            return Err(IscsiError::Config { detail: "queue depth must be at least 1".into() });
        }
        let mut isid = [0u8; 6];
        crate::chap::random_bytes(&mut isid)
            .map_err(|e| IscsiError::Io { what: "reading /dev/urandom".into(), source: e })?;
        // ISID type 10b: random (RFC 7143 §11.12.5).
        isid[0] = 0x80 | (isid[0] & 0x3f);
        let conn = match Conn::start(&cfg, isid, 1) {
            Ok(c) => c,
            Err(IscsiError::LoginFailed { portal, target, status_class: 2, status_detail: 3, meaning, hint }) => {
                // Say which targets the portal does offer, when discovery works.
                let list = crate::discover(&cfg.portal, &cfg.initiator, cfg.chap.as_ref())
                    .map(|t| t.into_iter().map(|t| t.name).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default();
                let hint = if list.is_empty() { hint } else { format!("{hint}; this portal offers: {list}") };
                return Err(IscsiError::LoginFailed {
                    portal,
                    target,
                    status_class: 2,
                    status_detail: 3,
                    meaning,
                    hint,
                });
            }
            Err(e) => return Err(e),
        };
        Ok(Arc::new(Session {
            cfg,
            isid,
            conn: Mutex::new(conn),
            reconnect: Mutex::new(()),
            failed: Mutex::new(None),
            closed: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            next_gen: AtomicU64::new(2),
        }))
    }

    /// `iscsi://portal/target` (no secrets).
    pub fn describe(&self) -> String {
        format!("iscsi://{}/{}", self.cfg.portal, self.cfg.target)
    }

    /// How many times the session logged in again after losing its connection.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// What was negotiated on the current connection: (header digest, data digest, the target's
    /// MaxRecvDataSegmentLength, MaxBurstLength, FirstBurstLength, InitialR2T, ImmediateData).
    pub fn negotiated(&self) -> Negotiated {
        lock(&self.conn).neg
    }

    /// A SCSI transport for logical unit `lun` of this session.
    pub fn lun(self: &Arc<Self>, lun: u64) -> crate::LunTransport {
        crate::LunTransport { session: self.clone(), lun }
    }

    /// REPORT LUNS (sent to LUN 0).
    pub fn report_luns(self: &Arc<Self>) -> Result<Vec<u64>, scsi::ScsiError> {
        let mut buf = vec![0u8; 4096];
        let cdb = scsi::cdb::spc::report_luns(4096);
        let mut cmds = [Command::read(&cdb, &mut buf)];
        let c = self.execute_many(0, &mut cmds).map_err(scsi::TransportError::from)?.remove(0);
        if c.status != Status::Good {
            return Err(match c.sense {
                Some(sense) => scsi::ScsiError::Check {
                    device: self.describe(),
                    command: "REPORT LUNS".into(),
                    opcode: cdb[0],
                    sense,
                    hint: "",
                },
                None => scsi::ScsiError::Status {
                    device: self.describe(),
                    command: "REPORT LUNS".into(),
                    opcode: cdb[0],
                    status: c.status,
                    hint: "",
                },
            });
        }
        let n = c.transferred.min(buf.len());
        scsi::parse::report_luns(&buf[..n]).map_err(|e| scsi::ScsiError::Malformed {
            device: self.describe(),
            command: "REPORT LUNS".into(),
            detail: e.to_string(),
        })
    }

    /// Logs out (best effort, bounded by the I/O timeout) and closes the connection. Later
    /// commands fail with [`IscsiError::Closed`].
    pub fn logout(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let conn = lock(&self.conn).clone();
        if conn.is_dead() {
            return;
        }
        let wire = {
            let mut st = lock(&conn.st);
            let itt = st.alloc_itt();
            let mut p = Pdu::new(op::LOGOUT_REQ, true);
            p.set_flags(0x80); // reason 0: close the session
            p.set_itt(itt);
            p.set_u32(24, st.cmd_sn);
            p.set_u32(28, st.exp_stat_sn);
            p.encode(conn.neg.digests)
        };
        let ok = {
            let mut tx = lock(&conn.tx);
            tx.write_all(&wire).is_ok()
        };
        if ok {
            let deadline = Instant::now() + conn.io_timeout.min(Duration::from_secs(5));
            let mut st = lock(&conn.st);
            while st.logout.is_none() && st.dead.is_none() {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                st = conn.cond.wait_timeout(st, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
            }
        }
        conn.kill("logged out");
    }

    /// Cuts the current connection as if the network failed (tests, operator "reconnect").
    pub fn drop_connection(&self) {
        lock(&self.conn).clone().kill("connection dropped on request");
    }

    fn current(&self) -> Result<Arc<Conn>, IscsiError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(IscsiError::Closed { target: self.cfg.target.clone() });
        }
        let c = lock(&self.conn).clone();
        if c.is_dead() {
            self.reconnect(c.gen)
        } else {
            Ok(c)
        }
    }

    /// Replaces the dead connection `failed_gen` (once, whoever comes first), logging in again
    /// with the same ISID and TSIH 0 until the reconnect deadline.
    fn reconnect(&self, failed_gen: u64) -> Result<Arc<Conn>, IscsiError> {
        let _g = lock(&self.reconnect);
        let old = lock(&self.conn).clone();
        if old.gen != failed_gen && !old.is_dead() {
            return Ok(old);
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(IscsiError::Closed { target: self.cfg.target.clone() });
        }
        if let Some(msg) = lock(&self.failed).clone() {
            return Err(IscsiError::ConnectionLost {
                target: self.cfg.target.clone(),
                after: self.cfg.reconnect_deadline,
                last: msg,
            });
        }
        old.kill("replaced");
        let start = Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut last;
        loop {
            let gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
            match Conn::start(&self.cfg, self.isid, gen) {
                Ok(c) => {
                    *lock(&self.conn) = c.clone();
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                    return Ok(c);
                }
                Err(e) => last = e.to_string(),
            }
            if start.elapsed() + delay > self.cfg.reconnect_deadline {
                *lock(&self.failed) = Some(last.clone());
                return Err(IscsiError::ConnectionLost {
                    target: self.cfg.target.clone(),
                    after: self.cfg.reconnect_deadline,
                    last,
                });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Runs a batch on `lun`, keeping up to `queue_depth` commands outstanding, surviving
    /// connection loss by reconnecting and re-issuing (see the module docs).
    pub(crate) fn execute_many(&self, lun: u64, cmds: &mut [Command<'_>]) -> Result<Vec<Completion>, IscsiError> {
        for c in cmds.iter() {
            if c.cdb.is_empty() || c.cdb.len() > 16 {
                return Err(IscsiError::Config {
                    detail: format!("CDB of {} bytes: only 1..16 bytes are supported", c.cdb.len()),
                });
            }
            if c.data.len() > u32::MAX as usize {
                return Err(IscsiError::Config { detail: "data buffer larger than 4 GiB".into() });
            }
        }
        let n = cmds.len();
        let lunf = scsi::parse::encode_lun(lun);
        let (etx, erx) = crossbeam_channel::unbounded::<Event>();
        let mut slots = vec![Slot::Queued; n];
        let mut issues = vec![0u32; n];
        let mut received = vec![0usize; n];
        let mut results: Vec<Option<Completion>> = vec![None; n];
        let mut queue: VecDeque<usize> = (0..n).collect();
        let (mut outstanding, mut done) = (0usize, 0usize);
        let qd = self.cfg.queue_depth.max(1);
        let mut conn = self.current()?;

        // Moves every sent command back to the queue and gets a live connection.
        macro_rules! recover {
            ($why:expr) => {{
                conn.kill($why);
                for i in 0..n {
                    if let Slot::Sent { .. } = slots[i] {
                        slots[i] = Slot::Queued;
                        received[i] = 0;
                        queue.push_front(i);
                    }
                }
                outstanding = 0;
                conn = self.reconnect(conn.gen)?;
            }};
        }
        // Fails the batch, ending the connection when commands are still outstanding on it.
        macro_rules! fail {
            ($e:expr) => {{
                if outstanding > 0 {
                    conn.kill("a batch failed with commands outstanding");
                }
                return Err($e);
            }};
        }

        while done < n {
            while outstanding < qd {
                let Some(&i) = queue.front() else { break };
                issues[i] += 1;
                if issues[i] > MAX_ISSUES {
                    fail!(IscsiError::ConnectionLost {
                        target: self.cfg.target.clone(),
                        after: self.cfg.reconnect_deadline,
                        last: format!(
                            "{} was issued {MAX_ISSUES} times without completing",
                            scsi::cdb::name(cmds[i].cdb)
                        ),
                    });
                }
                match conn.submit(lunf, &cmds[i], i, &etx) {
                    Ok(itt) => {
                        queue.pop_front();
                        let t = cmds[i].timeout.unwrap_or(self.cfg.io_timeout);
                        slots[i] = Slot::Sent { itt, deadline: Instant::now() + t };
                        outstanding += 1;
                    }
                    Err(()) => {
                        issues[i] -= 1;
                        let why = conn.dead_reason();
                        recover!(&why);
                    }
                }
            }
            if outstanding == 0 {
                continue;
            }
            let now = Instant::now();
            let earliest = slots
                .iter()
                .filter_map(|s| match s {
                    Slot::Sent { deadline, .. } => Some(*deadline),
                    _ => None,
                })
                .min()
                .unwrap_or(now);
            let ev = match erx.recv_timeout(earliest.saturating_duration_since(now)) {
                Ok(ev) => ev,
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let late: Vec<usize> = (0..n)
                        .filter(|&i| matches!(slots[i], Slot::Sent { deadline, .. } if deadline <= now))
                        .collect();
                    if late.is_empty() {
                        continue;
                    }
                    let first = late[0];
                    if issues[first] >= 3 {
                        let after = cmds[first].timeout.unwrap_or(self.cfg.io_timeout);
                        fail!(IscsiError::Timeout {
                            what: format!("{} on {}", scsi::cdb::name(cmds[first].cdb), self.describe()),
                            after
                        });
                    }
                    recover!(&format!("{} timed out", scsi::cdb::name(cmds[first].cdb)));
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => unreachable_disconnected()?,
            };
            if ev.gen != conn.gen {
                continue;
            }
            let i = ev.idx;
            match slots.get(i) {
                Some(Slot::Sent { itt, .. }) if *itt == ev.itt => {}
                _ => continue,
            }
            let p = match ev.kind {
                EvKind::Lost => {
                    let why = conn.dead_reason();
                    recover!(&why);
                    continue;
                }
                EvKind::Pdu(p) => p,
            };
            let cdb_name = scsi::cdb::name(cmds[i].cdb);
            let name = || cdb_name.clone();
            match p.opcode() {
                op::DATA_IN => {
                    let off = p.u32_at(40) as usize;
                    let DataDir::In(buf) = &mut cmds[i].data else {
                        fail!(IscsiError::Protocol { detail: format!("Data-In for {}, which reads no data", name()) });
                    };
                    let end = off.checked_add(p.data.len()).filter(|&e| e <= buf.len());
                    let Some(end) = end else {
                        fail!(IscsiError::Protocol {
                            detail: format!(
                                "Data-In of {} bytes at offset {off} for {} overruns its {}-byte buffer",
                                p.data.len(),
                                name(),
                                buf.len()
                            ),
                        });
                    };
                    buf[off..end].copy_from_slice(&p.data);
                    received[i] += p.data.len();
                    if p.flags() & 0x01 != 0 {
                        let len = buf.len();
                        results[i] = Some(completion(&p, Status::from_byte(p.bhs[3]), None, len, received[i], true));
                        slots[i] = Slot::Done;
                        outstanding -= 1;
                        done += 1;
                    }
                }
                op::SCSI_RESP => {
                    if p.bhs[2] != 0 {
                        fail!(IscsiError::Rejected {
                            detail: format!(
                                "the target could not execute {} (iSCSI response 0x{:02x}: target failure)",
                                name(),
                                p.bhs[2]
                            ),
                        });
                    }
                    let sense = if p.data.len() >= 2 {
                        let sl = u16::from_be_bytes([p.data[0], p.data[1]]) as usize;
                        Sense::parse(&p.data[2..(2 + sl).min(p.data.len())])
                    } else {
                        None
                    };
                    let (len, is_in) = match &cmds[i].data {
                        DataDir::In(b) => (b.len(), true),
                        DataDir::Out(b) => (b.len(), false),
                        DataDir::None => (0, false),
                    };
                    results[i] = Some(completion(&p, Status::from_byte(p.bhs[3]), sense, len, received[i], is_in));
                    slots[i] = Slot::Done;
                    outstanding -= 1;
                    done += 1;
                }
                op::R2T => {
                    let (off, len) = (p.u32_at(40) as usize, p.u32_at(44) as usize);
                    let DataDir::Out(buf) = &cmds[i].data else {
                        fail!(IscsiError::Protocol { detail: format!("R2T for {}, which writes no data", name()) });
                    };
                    if off.checked_add(len).is_none_or(|e| e > buf.len()) || len == 0 {
                        fail!(IscsiError::Protocol {
                            detail: format!(
                                "R2T for {len} bytes at offset {off} outside the {}-byte buffer of {}",
                                buf.len(),
                                name()
                            ),
                        });
                    }
                    if conn.send_r2t_data(lunf, ev.itt, p.ttt(), buf, off, len).is_err() {
                        let why = conn.dead_reason();
                        recover!(&why);
                    }
                }
                op::REJECT => {
                    fail!(IscsiError::Rejected { detail: format!("{} rejected (reason 0x{:02x})", name(), p.bhs[2]) });
                }
                other => fail!(IscsiError::Protocol { detail: format!("unexpected PDU opcode 0x{other:02x}") }),
            }
        }
        Ok(results.into_iter().map(|c| c.unwrap_or_else(|| Completion::good(0))).collect())
    }
}

fn unreachable_disconnected() -> Result<Event, IscsiError> {
    // We hold a sender for the whole batch, so the channel cannot disconnect.
    Err(IscsiError::Protocol { detail: "internal: event channel closed".into() })
}

/// Builds a completion from a status-bearing PDU (SCSI Response or Data-In with S): residual
/// flags O (0x04) / U (0x02) with the count at bytes 44..48.
fn completion(p: &Pdu, status: Status, sense: Option<Sense>, len: usize, received: usize, is_in: bool) -> Completion {
    let count = p.u32_at(44) as usize;
    let residual = if p.flags() & 0x02 != 0 {
        Residual::Under(count)
    } else if p.flags() & 0x04 != 0 {
        Residual::Over(count)
    } else {
        Residual::None
    };
    let transferred = if is_in {
        let by_residual = match residual {
            Residual::Under(c) => len.saturating_sub(c),
            _ => len,
        };
        received.min(by_residual)
    } else {
        match residual {
            Residual::Under(c) => len.saturating_sub(c),
            _ => len,
        }
    };
    Completion { status, sense, residual, transferred }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.logout();
    }
}
