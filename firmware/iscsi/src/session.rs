//! A normal session: one connection at a time, many commands outstanding, reconnect with
//! session reinstatement.
//!
//! # Threads and locks
//! ```text
//!  caller threads (execute_many)            reader thread (one per connection)
//!  ─ reserve a slot: Conn.st + cond         ─ PduReader::read_header() (read timeout = tick)
//!  ─ a read takes a receive buffer from     ─ Data-In: Conn.st: take the task's receive
//!    Session.pool and lends it to the task    buffer (checks: a read, offset = bytes so far,
//!  ─ Conn.tx: assign ITT/CmdSN, register      fits the transfer length); unlocked: read the
//!    the task, write the PDU(s), flush        segment from the socket straight into it;
//!    queued control PDUs                      Conn.st: put it back, or on S end the task
//!  ─ wait on the batch's Mailbox (one event   and send status + buffer (one event per read)
//!    per command, not per PDU): copy the    ─ other PDUs: Conn.st: update ExpCmdSN/MaxCmdSN/
//!    gathered data into the caller's          ExpStatSN, look the task up by ITT, send
//!    buffer, give the buffer back to the      SCSI Response / R2T / Reject to its Mailbox,
//!    pool; answer R2T with Data-Out           wake window waiters
//!    (Conn.tx)                              ─ NOP-In ping → NOP-Out reply queued in Conn.ctrl
//!                                             (flushed by whoever holds Conn.tx; try_lock)
//!                                           ─ idle for nop_interval → our NOP-Out ping
//! ```
//! Lock order: `Session.reconnect` → `Session.conn` → `Conn.tx` → `Conn.st` → `Mailbox.q`;
//! `Conn.ctrl` and `Session.pool` are leaves. The reader never blocks on `Conn.tx` (only
//! `try_lock`), so a caller blocked in a socket write can never stall the reader that drains
//! the target's replies, and it never holds `Conn.st` across a socket read. Caller buffers are
//! only touched by their own thread: the reader fills a buffer the task owns (only the reader
//! touches it while the task is registered) and hands it over with the task's status; the
//! caller copies it once into its own buffer. A `Mailbox` is a `Mutex<VecDeque>` + `Condvar`
//! (no spinning: measured as fast as a crossbeam channel, without its `sched_yield` backoff
//! competing for 2 shared cores).
//!
//! # Invariants
//! - CmdSN is assigned and the PDU written under the same `Conn.tx` hold, so CmdSNs go on the
//!   wire in order; a slot is reserved first only while `CmdSN + reserved <= MaxCmdSN` and
//!   fewer than `queue_depth` commands are in flight, so senders block when the window closes.
//! - Every task registered on a connection ends exactly once: its final PDU (SCSI Response,
//!   Data-In with S, Reject, or a Data-In the reader refuses) removes it, or the connection's
//!   death hands it a `Lost` event. A read's receive buffer goes with it (to the caller, or
//!   dropped with a lost task; a re-issue lends a fresh one).
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

use scsi::{Command, Completion, DataDir, Residual, Sense, Status};

use crate::error::IscsiError;
use crate::login::{self, LoginParams, Negotiated};
use crate::pdu::{op, sn_le, sn_lt, Header, Pdu, PduReader, RESERVED_TAG};
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

/// Read buffers kept by a session for reuse: at most this many bytes in all...
const POOL_MAX_BYTES: usize = 64 << 20;
/// ...and none larger than this.
const POOL_MAX_BUF: usize = 4 << 20;

struct Task {
    reply: Arc<Mailbox>,
    idx: usize,
    /// For a read: where its Data-In lands. Lent by the submitter, filled only by the reader
    /// thread, handed back with the task's status (or dropped with the task).
    rx: Option<RxBuf>,
}

/// A read's Data-In, gathered by the reader thread. With DataPDUInOrder and
/// DataSequenceInOrder (we offer Yes, the result is OR) every Data-In must start where the
/// previous one ended, so `buf[..received]` is exactly what the target sent.
pub(crate) struct RxBuf {
    buf: Vec<u8>,
    /// The command's expected transfer length (`buf` may be longer: pooled buffers are reused).
    len: usize,
    received: usize,
}

/// What a reader hands to a waiting caller: one event per command (its status, an R2T, a
/// rejected Data-In, or the connection's loss).
pub(crate) struct Event {
    gen: u64,
    idx: usize,
    itt: u32,
    kind: EvKind,
}

enum EvKind {
    /// SCSI Response, Data-In with S (header only), R2T or Reject; a read's gathered data comes
    /// back with its status.
    Pdu(Pdu, Option<RxBuf>),
    /// A Data-In the reader refused (the task is gone; the caller fails the batch).
    BadDataIn(BadDataIn),
    Lost,
}

enum BadDataIn {
    NotARead,
    Overrun { off: usize, len: usize, buf_len: usize },
    OutOfOrder { off: usize, expected: usize },
}

/// A batch's completion queue: the reader threads push, the batch's one caller waits.
struct Mailbox {
    q: Mutex<VecDeque<Event>>,
    cond: Condvar,
}

impl Mailbox {
    fn new() -> Mailbox {
        Mailbox { q: Mutex::new(VecDeque::new()), cond: Condvar::new() }
    }

    fn send(&self, ev: Event) {
        lock(&self.q).push_back(ev);
        self.cond.notify_one();
    }

    /// The next event, or `None` after `timeout`.
    fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        let mut q = lock(&self.q);
        loop {
            if let Some(ev) = q.pop_front() {
                return Some(ev);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            q = self.cond.wait_timeout(q, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// Reusable read buffers, so large reads do not page-fault fresh allocations every time.
#[derive(Default)]
struct BufPool {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

impl BufPool {
    /// A buffer of at least `len` bytes (contents unspecified).
    fn take(&mut self, len: usize) -> Vec<u8> {
        let best = self
            .bufs
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= len && b.len() <= len.saturating_mul(4).max(4096))
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let b = self.bufs.swap_remove(i);
                self.bytes -= b.len();
                b
            }
            None => vec![0u8; len],
        }
    }

    fn give(&mut self, b: Vec<u8>) {
        if b.is_empty() || b.len() > POOL_MAX_BUF {
            return;
        }
        while self.bytes + b.len() > POOL_MAX_BYTES {
            // Make room by dropping the smallest buffers first.
            let Some((i, _)) = self.bufs.iter().enumerate().min_by_key(|(_, b)| b.len()) else { return };
            let old = self.bufs.swap_remove(i);
            self.bytes -= old.len();
        }
        self.bytes += b.len();
        self.bufs.push(b);
    }
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
            t.reply.send(Event { gen: self.gen, idx: t.idx, itt, kind: EvKind::Lost });
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
            match r.read_header() {
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
                Ok(Some(h)) => {
                    last_rx = Instant::now();
                    let res = if h.opcode() == op::DATA_IN {
                        self.data_in(&mut r, h)
                    } else {
                        match r.read_data(h.data_len) {
                            Ok(data) => self.dispatch(Pdu { bhs: h.bhs, ahs: h.ahs, data }),
                            Err(e) => Err(e.to_string()),
                        }
                    };
                    if let Err(reason) = res {
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

    /// The sequence-number side of every target PDU: the CmdSN window (RFC 7143 §4.2.2.1:
    /// ignore a MaxCmdSN below ExpCmdSN - 1) and ExpStatSN for status-bearing PDUs.
    fn update_sns(&self, st: &mut ConnState, bhs: &[u8; 48]) {
        let at = |i: usize| u32::from_be_bytes([bhs[i], bhs[i + 1], bhs[i + 2], bhs[i + 3]]);
        let (opc, flags, itt, stat_sn) = (bhs[0] & 0x3f, bhs[1], at(16), at(24));
        if opc != op::LOGIN_RESP {
            let (exp, max) = (at(28), at(32));
            if sn_le(exp.wrapping_sub(1), max) && sn_lt(st.max_cmd_sn, max) {
                st.max_cmd_sn = max;
                self.cond.notify_all();
            }
        }
        let status_pdu = match opc {
            op::SCSI_RESP | op::LOGOUT_RESP | op::TEXT_RESP | op::ASYNC | op::REJECT | op::TMF_RESP => true,
            op::DATA_IN => flags & 0x01 != 0,
            op::NOP_IN => itt != RESERVED_TAG,
            _ => false,
        };
        if status_pdu && sn_le(st.exp_stat_sn, stat_sn) {
            st.exp_stat_sn = stat_sn.wrapping_add(1);
        }
    }

    /// Ends task `itt` (final PDU): frees its window slot and returns it.
    fn finish(&self, st: &mut ConnState, itt: u32) -> Option<Task> {
        let t = st.tasks.remove(&itt)?;
        st.in_flight = st.in_flight.saturating_sub(1);
        self.cond.notify_all();
        Some(t)
    }

    /// A Data-In: its data segment goes straight from the socket into the task's buffer at
    /// its offset (checked: the task reads, the offset continues the data received so far,
    /// the segment fits the expected transfer length). Only the last Data-In (S bit) wakes the
    /// caller, with the status and the gathered buffer. The buffer is taken out of the task
    /// while the socket is read, so `Conn.st` is never held across I/O; only this thread ever
    /// touches a registered task's buffer.
    fn data_in<R: std::io::Read>(&self, r: &mut PduReader<R>, h: Header) -> Result<(), String> {
        let itt = h.itt();
        let (off, len) = (h.u32_at(40) as usize, h.data_len);
        let status = h.flags() & 0x01 != 0;
        let taken = {
            let mut st = lock(&self.st);
            let Some(t) = st.tasks.get_mut(&itt) else {
                return Err(format!(
                    "the target sent a PDU (opcode 0x{:02x}) for task 0x{itt:08x}, which does not exist",
                    op::DATA_IN
                ));
            };
            match t.rx.take() {
                None => Err(BadDataIn::NotARead),
                Some(rx) if off != rx.received => {
                    let expected = rx.received;
                    t.rx = Some(rx);
                    Err(BadDataIn::OutOfOrder { off, expected })
                }
                Some(rx) if off.checked_add(len).is_none_or(|e| e > rx.len) => {
                    let buf_len = rx.len;
                    t.rx = Some(rx);
                    Err(BadDataIn::Overrun { off, len, buf_len })
                }
                Some(rx) => Ok(rx),
            }
        };
        let mut rx = match taken {
            Ok(rx) => rx,
            Err(bad) => {
                // Consume the segment (framing, digest), then fail the command; its caller
                // fails the batch and ends the connection.
                r.read_data(len).map_err(|e| e.to_string())?;
                let mut st = lock(&self.st);
                self.update_sns(&mut st, &h.bhs);
                if let Some(t) = self.finish(&mut st, itt) {
                    t.reply.send(Event { gen: self.gen, idx: t.idx, itt, kind: EvKind::BadDataIn(bad) });
                }
                return Ok(());
            }
        };
        r.read_data_into(&mut rx.buf[off..off + len]).map_err(|e| e.to_string())?;
        rx.received += len;
        let mut st = lock(&self.st);
        self.update_sns(&mut st, &h.bhs);
        if status {
            if let Some(t) = self.finish(&mut st, itt) {
                drop(st);
                let p = Pdu { bhs: h.bhs, ahs: h.ahs, data: Vec::new() };
                t.reply.send(Event { gen: self.gen, idx: t.idx, itt, kind: EvKind::Pdu(p, Some(rx)) });
            }
        } else if let Some(t) = st.tasks.get_mut(&itt) {
            // Absent only when the connection was killed meanwhile (the task got `Lost`).
            if t.rx.is_none() {
                t.rx = Some(rx);
            }
        }
        Ok(())
    }

    /// Routes one target PDU other than Data-In. An `Err` is a protocol violation that ends
    /// the connection.
    fn dispatch(&self, p: Pdu) -> Result<(), String> {
        let opc = p.opcode();
        let itt = p.itt();
        let mut st = lock(&self.st);
        self.update_sns(&mut st, &p.bhs);
        let missing =
            || format!("the target sent a PDU (opcode 0x{opc:02x}) for task 0x{itt:08x}, which does not exist");
        match opc {
            op::SCSI_RESP => {
                let mut t = self.finish(&mut st, itt).ok_or_else(missing)?;
                drop(st);
                let rx = t.rx.take();
                t.reply.send(Event { gen: self.gen, idx: t.idx, itt, kind: EvKind::Pdu(p, rx) });
                Ok(())
            }
            op::R2T => {
                let t = st.tasks.get(&itt).ok_or_else(missing)?;
                t.reply.send(Event { gen: self.gen, idx: t.idx, itt, kind: EvKind::Pdu(p, None) });
                Ok(())
            }
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
                    if let Some(t) = self.finish(&mut st, ritt) {
                        t.reply.send(Event { gen: self.gen, idx: t.idx, itt: ritt, kind: EvKind::Pdu(p, None) });
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
    fn submit(
        &self,
        lun: [u8; 8],
        cmd: &Command<'_>,
        idx: usize,
        reply: &Arc<Mailbox>,
        rx: Option<RxBuf>,
    ) -> Result<u32, ()> {
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
            st.tasks.insert(itt, Task { reply: reply.clone(), idx, rx });
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
    pool: Mutex<BufPool>,
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
            pool: Mutex::new(BufPool::default()),
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
        let mailbox = Arc::new(Mailbox::new());
        let mut slots = vec![Slot::Queued; n];
        let mut issues = vec![0u32; n];
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
                let rx = match &cmds[i].data {
                    DataDir::In(b) => Some(RxBuf { buf: lock(&self.pool).take(b.len()), len: b.len(), received: 0 }),
                    _ => None,
                };
                match conn.submit(lunf, &cmds[i], i, &mailbox, rx) {
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
            let Some(ev) = mailbox.recv_timeout(earliest.saturating_duration_since(now)) else {
                let now = Instant::now();
                let late: Vec<usize> =
                    (0..n).filter(|&i| matches!(slots[i], Slot::Sent { deadline, .. } if deadline <= now)).collect();
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
            };
            if ev.gen != conn.gen {
                continue;
            }
            let i = ev.idx;
            match slots.get(i) {
                Some(Slot::Sent { itt, .. }) if *itt == ev.itt => {}
                _ => continue,
            }
            // Names are for error messages only: computed lazily.
            let cdb = cmds[i].cdb;
            let name = || scsi::cdb::name(cdb);
            let (p, rx) = match ev.kind {
                EvKind::Lost => {
                    let why = conn.dead_reason();
                    recover!(&why);
                    continue;
                }
                EvKind::BadDataIn(bad) => {
                    let detail = match bad {
                        BadDataIn::NotARead => format!("Data-In for {}, which reads no data", name()),
                        BadDataIn::Overrun { off, len, buf_len } => format!(
                            "Data-In of {len} bytes at offset {off} for {} overruns its {buf_len}-byte buffer",
                            name()
                        ),
                        BadDataIn::OutOfOrder { off, expected } => format!(
                            "Data-In at offset {off} for {}, but {expected} bytes had arrived (DataPDUInOrder=Yes)",
                            name()
                        ),
                    };
                    fail!(IscsiError::Protocol { detail });
                }
                EvKind::Pdu(p, rx) => (p, rx),
            };
            // A read's gathered data: into the caller's buffer, the buffer back to the pool.
            let mut received = 0;
            if let Some(rx) = rx {
                if let DataDir::In(buf) = &mut cmds[i].data {
                    received = rx.received.min(buf.len());
                    buf[..received].copy_from_slice(&rx.buf[..received]);
                }
                lock(&self.pool).give(rx.buf);
            }
            match p.opcode() {
                op::DATA_IN => {
                    // The last Data-In (S bit): the reader checked and gathered the data.
                    let len = match &cmds[i].data {
                        DataDir::In(b) => b.len(),
                        _ => 0,
                    };
                    results[i] = Some(completion(&p, Status::from_byte(p.bhs[3]), None, len, received, true));
                    slots[i] = Slot::Done;
                    outstanding -= 1;
                    done += 1;
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
                    results[i] = Some(completion(&p, Status::from_byte(p.bhs[3]), sense, len, received, is_in));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::Digests;

    /// A connection without a login or reader thread: `tx` goes to a local listener.
    fn bare_conn(digests: Digests) -> (Arc<Conn>, std::net::TcpListener) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let w = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let neg = Negotiated {
            digests,
            their_max_recv_data: 8192,
            max_burst: MAX_BURST,
            first_burst: FIRST_BURST,
            initial_r2t: true,
            immediate_data: false,
            tsih: 1,
            cmd_sn: 1,
            exp_cmd_sn: 1,
            max_cmd_sn: 32,
            exp_stat_sn: 1,
        };
        let conn = Arc::new(Conn {
            gen: 7,
            neg,
            tx: Mutex::new(w),
            ctrl: Mutex::new(Vec::new()),
            st: Mutex::new(ConnState {
                cmd_sn: 1,
                max_cmd_sn: 32,
                exp_stat_sn: 1,
                next_itt: 1,
                in_flight: 0,
                reserved: 0,
                tasks: HashMap::new(),
                dead: None,
                logout: None,
                ping: None,
            }),
            cond: Condvar::new(),
            queue_depth: 32,
            io_timeout: Duration::from_secs(5),
            nop_interval: Duration::ZERO,
        });
        (conn, l)
    }

    fn register(conn: &Conn, mb: &Arc<Mailbox>, itt: u32, idx: usize, read_len: Option<usize>) {
        let rx = read_len.map(|len| RxBuf { buf: vec![0xee; len + 100], len, received: 0 });
        let mut st = lock(&conn.st);
        st.in_flight += 1;
        st.tasks.insert(itt, Task { reply: mb.clone(), idx, rx });
    }

    fn data_in_pdu(itt: u32, off: u32, data: &[u8], status: bool, stat_sn: u32) -> Pdu {
        let mut p = Pdu::new(op::DATA_IN, false);
        p.set_flags(if status { 0x81 } else { 0 });
        p.set_itt(itt);
        p.set_u32(24, stat_sn);
        p.set_u32(28, 1);
        p.set_u32(32, 40);
        p.set_u32(40, off);
        p.data = data.to_vec();
        p
    }

    /// Feeds `pdus` through the reader-side routing (Data-In gathering, dispatch).
    fn feed(conn: &Conn, pdus: &[Pdu], digests: Digests) -> Result<(), String> {
        let wire: Vec<u8> = pdus.iter().flat_map(|p| p.encode(digests)).collect();
        let mut r = PduReader::new(&wire[..], MAX_RECV_DATA as usize);
        r.digests = digests;
        loop {
            let h = match r.read_header() {
                Err(crate::pdu::PduError::Eof { mid_pdu: false }) => return Ok(()),
                Err(e) => return Err(e.to_string()),
                Ok(None) => return Ok(()),
                Ok(Some(h)) => h,
            };
            if h.opcode() == op::DATA_IN {
                conn.data_in(&mut r, h)?;
            } else {
                let data = r.read_data(h.data_len).map_err(|e| e.to_string())?;
                conn.dispatch(Pdu { bhs: h.bhs, ahs: h.ahs, data })?;
            }
        }
    }

    #[test]
    fn data_in_is_gathered_into_one_event() {
        for digests in [Digests::default(), Digests { header: true, data: true }] {
            let (conn, _l) = bare_conn(digests);
            let mb = Arc::new(Mailbox::new());
            register(&conn, &mb, 5, 3, Some(20_002));
            let payload: Vec<u8> = (0..20_002u32).map(|i| (i * 7) as u8).collect();
            // Odd sizes exercise padding and the digest over data + padding.
            let pdus = [
                data_in_pdu(5, 0, &payload[..8191], false, 0),
                data_in_pdu(5, 8191, &payload[8191..16000], false, 0),
                data_in_pdu(5, 16000, &payload[16000..], true, 9),
            ];
            feed(&conn, &pdus, digests).unwrap();
            let ev = mb.recv_timeout(Duration::ZERO).expect("one event");
            assert!(mb.recv_timeout(Duration::ZERO).is_none(), "exactly one event per command");
            assert_eq!((ev.gen, ev.idx, ev.itt), (7, 3, 5));
            let EvKind::Pdu(p, Some(rx)) = ev.kind else { panic!("expected status with data") };
            assert_eq!(p.opcode(), op::DATA_IN);
            assert_eq!(p.flags() & 0x01, 1);
            assert_eq!(rx.received, payload.len());
            assert_eq!(&rx.buf[..rx.received], &payload[..]);
            let st = lock(&conn.st);
            assert!(st.tasks.is_empty());
            assert_eq!(st.in_flight, 0);
            assert_eq!(st.exp_stat_sn, 10);
            assert_eq!(st.max_cmd_sn, 40);
        }
    }

    #[test]
    fn scsi_response_returns_the_gathered_data() {
        let (conn, _l) = bare_conn(Digests::default());
        let mb = Arc::new(Mailbox::new());
        register(&conn, &mb, 9, 0, Some(8192));
        let mut resp = Pdu::new(op::SCSI_RESP, false);
        resp.set_flags(0x82); // underflow
        resp.set_itt(9);
        resp.set_u32(44, 4096);
        feed(&conn, &[data_in_pdu(9, 0, &[1; 4096], false, 0), resp], Digests::default()).unwrap();
        let ev = mb.recv_timeout(Duration::ZERO).unwrap();
        let EvKind::Pdu(p, Some(rx)) = ev.kind else { panic!("expected status with data") };
        assert_eq!(p.opcode(), op::SCSI_RESP);
        assert_eq!(rx.received, 4096);
        let c = completion(&p, Status::Good, None, 8192, rx.received, true);
        assert_eq!(c.residual, Residual::Under(4096));
        assert_eq!(c.transferred, 4096);
    }

    #[test]
    fn hostile_data_in_is_refused() {
        let bad = |pdus: &[Pdu], read_len: Option<usize>| {
            let (conn, _l) = bare_conn(Digests::default());
            let mb = Arc::new(Mailbox::new());
            register(&conn, &mb, 1, 0, read_len);
            feed(&conn, pdus, Digests::default()).unwrap();
            assert!(lock(&conn.st).tasks.is_empty(), "a refused task ends");
            match mb.recv_timeout(Duration::ZERO).map(|e| e.kind) {
                Some(EvKind::BadDataIn(b)) => b,
                _ => panic!("expected BadDataIn"),
            }
        };
        // Overrun of the expected transfer length (the pooled buffer itself is longer).
        assert!(matches!(
            bad(&[data_in_pdu(1, 0, &[0; 4096], false, 0), data_in_pdu(1, 4096, &[0; 4097], true, 0)], Some(8192)),
            BadDataIn::Overrun { off: 4096, len: 4097, buf_len: 8192 }
        ));
        assert!(matches!(bad(&[data_in_pdu(1, u32::MAX, &[0; 4], true, 0)], Some(8192)), BadDataIn::OutOfOrder { .. }));
        // A gap, an overlap.
        assert!(matches!(
            bad(&[data_in_pdu(1, 4096, &[0; 4096], true, 0)], Some(8192)),
            BadDataIn::OutOfOrder { off: 4096, expected: 0 }
        ));
        assert!(matches!(
            bad(&[data_in_pdu(1, 0, &[0; 4096], false, 0), data_in_pdu(1, 0, &[0; 4096], true, 0)], Some(8192)),
            BadDataIn::OutOfOrder { off: 0, expected: 4096 }
        ));
        assert!(matches!(bad(&[data_in_pdu(1, 0, &[0; 16], true, 0)], None), BadDataIn::NotARead));
        // Data-In for a task that does not exist ends the connection.
        let (conn, _l) = bare_conn(Digests::default());
        assert!(feed(&conn, &[data_in_pdu(77, 0, &[0; 16], true, 0)], Digests::default()).is_err());
        // A corrupted data digest is an error, not data.
        let (conn, _l) = bare_conn(Digests { header: true, data: true });
        let mb = Arc::new(Mailbox::new());
        register(&conn, &mb, 1, 0, Some(64));
        let mut wire = data_in_pdu(1, 0, &[5; 64], true, 0).encode(Digests { header: true, data: true });
        wire[60] ^= 1;
        let mut r = PduReader::new(&wire[..], 1024);
        r.digests = Digests { header: true, data: true };
        let h = r.read_header().unwrap().unwrap();
        assert!(conn.data_in(&mut r, h).unwrap_err().contains("digest"));
    }

    #[test]
    fn lost_connection_ends_gathering_tasks() {
        let (conn, _l) = bare_conn(Digests::default());
        let mb = Arc::new(Mailbox::new());
        register(&conn, &mb, 1, 0, Some(8192));
        feed(&conn, &[data_in_pdu(1, 0, &[0; 4096], false, 0)], Digests::default()).unwrap();
        conn.kill("test");
        assert!(matches!(mb.recv_timeout(Duration::ZERO).map(|e| e.kind), Some(EvKind::Lost)));
        // A late Data-In after the kill is for a task that no longer exists.
        assert!(feed(&conn, &[data_in_pdu(1, 4096, &[0; 4096], true, 0)], Digests::default()).is_err());
    }

    #[test]
    fn mailbox_times_out_and_keeps_order() {
        let mb = Mailbox::new();
        let t = Instant::now();
        assert!(mb.recv_timeout(Duration::from_millis(30)).is_none());
        assert!(t.elapsed() >= Duration::from_millis(30));
        for idx in 0..3 {
            mb.send(Event { gen: 1, idx, itt: 0, kind: EvKind::Lost });
        }
        let got: Vec<usize> = (0..3).map(|_| mb.recv_timeout(Duration::ZERO).unwrap().idx).collect();
        assert_eq!(got, [0, 1, 2]);
    }

    #[test]
    fn buffer_pool_reuses_and_is_bounded() {
        let mut p = BufPool::default();
        let b = p.take(256 << 10);
        assert_eq!(b.len(), 256 << 10);
        let ptr = b.as_ptr();
        p.give(b);
        let b = p.take(200 << 10);
        assert_eq!(b.as_ptr(), ptr, "reused");
        p.give(b);
        // Far larger than asked for: not handed out for a tiny read.
        assert_eq!(p.take(512).len(), 512);
        p.give(vec![0; POOL_MAX_BUF + 1]);
        assert_eq!(p.bufs.len(), 1);
        for _ in 0..(POOL_MAX_BYTES / POOL_MAX_BUF + 4) {
            p.give(vec![0; POOL_MAX_BUF]);
        }
        assert!(p.bytes <= POOL_MAX_BYTES);
        assert_eq!(p.bytes, p.bufs.iter().map(|b| b.len()).sum::<usize>());
    }
}
