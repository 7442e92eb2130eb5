//! One multiplexed RPC connection: many calls in flight, replies matched by XID.
//!
//! ## Threads and locks
//! - **Senders** (any caller thread) take a slot in `pending` (waiting while
//!   `max_in_flight` calls are outstanding), register `xid -> Waiter` there, then write the
//!   whole call record under the `writer` mutex, so records never interleave.
//! - **One reader thread** per connection reads records, removes the waiter for the XID
//!   under the `pending` lock, and sends the record through the waiter's channel (unbounded,
//!   so the reader never blocks on a slow caller). A waiter whose caller went away is simply
//!   dropped.
//! - Lock order: `pending` is never held while writing or while `writer` is held.
//!
//! ## Death
//! A connection dies once: on EOF or an I/O error (the waiters get [`Failure::Dead`] and
//! re-send elsewhere), on a garbled stream or an unknown XID ([`Failure::Protocol`], not
//! retried), or when a caller [`kill`](Conn::kill)s it after an I/O timeout. Death is
//! recorded in `pending.dead` first, then every waiter is failed, then the socket is shut
//! down, which makes the reader thread exit. After death, [`Conn::submit`] fails at once.
//! Invariant: every registered waiter gets exactly one completion, either its reply or a
//! failure, unless `submit` itself returned an error for it.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::wire::{self, RecordError};

/// Why a call on a connection did not get a reply.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The connection is gone; the call may be re-sent on another one.
    Dead(String),
    /// The server sent something that is not RPC; do not retry.
    Protocol(String),
}

/// A completion as delivered to a caller: its tag and the reply record or a failure.
#[derive(Debug)]
pub(crate) struct Completion {
    pub tag: usize,
    pub result: Result<Vec<u8>, Failure>,
}

#[derive(Debug)]
struct Waiter {
    tag: usize,
    tx: Sender<Completion>,
}

#[derive(Debug, Default)]
struct Pending {
    waiters: HashMap<u32, Waiter>,
    dead: Option<Failure>,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when a slot frees up or the connection dies.
    slot_freed: Condvar,
    /// A handle used only to shut the socket down (wakes the reader).
    sock: TcpStream,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so poisoning is ignored.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mark the connection dead (first reason wins), fail every waiter, close the socket.
    fn die(&self, why: Failure) {
        let (waiters, why) = {
            let mut p = self.lock();
            let why = p.dead.get_or_insert(why).clone();
            (std::mem::take(&mut p.waiters), why)
        };
        for (_, w) in waiters {
            let _ = w.tx.send(Completion { tag: w.tag, result: Err(why.clone()) });
        }
        self.slot_freed.notify_all();
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

/// A connected, multiplexed RPC connection.
#[derive(Debug)]
pub(crate) struct Conn {
    shared: Arc<Shared>,
    writer: Mutex<TcpStream>,
    max_in_flight: usize,
}

impl Conn {
    /// Start the reader thread on an established stream.
    pub fn start(stream: TcpStream, max_in_flight: usize, io_timeout: Duration) -> std::io::Result<Arc<Conn>> {
        stream.set_nodelay(true)?;
        // A server that stops reading must not block a sender forever.
        stream.set_write_timeout(Some(io_timeout))?;
        let read_half = stream.try_clone()?;
        let shared =
            Arc::new(Shared { pending: Mutex::default(), slot_freed: Condvar::new(), sock: stream.try_clone()? });
        let reader_shared = Arc::clone(&shared);
        std::thread::Builder::new().name("nfs3-reader".into()).spawn(move || reader_loop(read_half, &reader_shared))?;
        Ok(Arc::new(Conn { shared, writer: Mutex::new(stream), max_in_flight: max_in_flight.max(1) }))
    }

    pub fn is_dead(&self) -> bool {
        self.shared.lock().dead.is_some()
    }

    /// Kill the connection (e.g. no reply in time); its waiters are failed with `Dead`.
    pub fn kill(&self, why: String) {
        self.shared.die(Failure::Dead(why));
    }

    /// Register `xid` for `tag` and send `record`. On `Ok`, exactly one completion for `tag`
    /// will arrive on `tx`; on `Err`, none will. Waits at most `wait` for a free slot.
    pub fn submit(
        &self,
        xid: u32,
        record: &[u8],
        tag: usize,
        tx: &Sender<Completion>,
        wait: Duration,
    ) -> Result<(), Failure> {
        {
            let deadline = Instant::now() + wait;
            let mut p = self.shared.lock();
            loop {
                if let Some(why) = &p.dead {
                    return Err(why.clone());
                }
                if p.waiters.len() < self.max_in_flight {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    drop(p);
                    let why = format!("no reply to {} outstanding calls within {wait:?}", self.max_in_flight);
                    self.kill(why.clone());
                    return Err(Failure::Dead(why));
                }
                p = self.shared.slot_freed.wait_timeout(p, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
            }
            p.waiters.insert(xid, Waiter { tag, tx: tx.clone() });
        }
        let res = {
            let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            w.write_all(record)
        };
        if let Err(e) = res {
            // If our waiter is still registered, take it back and report the error here;
            // if it is gone, the reader already failed it and a completion is on its way.
            let ours = self.shared.lock().waiters.remove(&xid).is_some();
            self.kill(format!("send failed: {e}"));
            if ours {
                return Err(Failure::Dead(format!("send failed: {e}")));
            }
        }
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The reader thread holds only `Shared`; closing the socket makes it exit.
        self.shared.die(Failure::Dead("client closed".into()));
    }
}

fn reader_loop(stream: TcpStream, shared: &Shared) {
    let mut r = BufReader::with_capacity(256 << 10, stream);
    loop {
        let rec = match wire::read_record(&mut r, wire::MAX_RECORD) {
            Ok(rec) => rec,
            Err(RecordError::Io(e)) => {
                let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    "the server closed the connection".to_string()
                } else {
                    format!("connection error: {e}")
                };
                shared.die(Failure::Dead(why));
                return;
            }
            Err(RecordError::Bad(d)) => {
                shared.die(Failure::Protocol(d));
                return;
            }
        };
        let Some(xid) = wire::reply_xid(&rec) else {
            shared.die(Failure::Protocol(format!("reply record of {} bytes has no XID", rec.len())));
            return;
        };
        let waiter = {
            let mut p = shared.lock();
            if p.dead.is_some() {
                return;
            }
            p.waiters.remove(&xid)
        };
        match waiter {
            Some(w) => {
                shared.slot_freed.notify_one();
                let _ = w.tx.send(Completion { tag: w.tag, result: Ok(rec) });
            }
            None => {
                shared.die(Failure::Protocol(format!("reply with XID {xid:#010x} that matches no call")));
                return;
            }
        }
    }
}
