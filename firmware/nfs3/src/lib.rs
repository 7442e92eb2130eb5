//! `nfs3`: a user-space NFSv3 client over TCP, the appliance's "Direct NFS" ingest path.
//!
//! It reads VM disk files straight from an NFS datastore: no kernel mount, no privileges,
//! no async runtime. Main types: [`Nfs3Client`] (mount, [`lookup_path`](Nfs3Client::lookup_path),
//! [`read_dir`](Nfs3Client::read_dir), pipelined [`read_many`](Nfs3Client::read_many)),
//! [`ClientOptions`], [`FileHandle`], [`FileAttr`], [`DirEntry`] and [`NfsError`].
//! It is a protocol crate: it knows nothing of chunks, images or backups.
//!
//! ## Protocols
//! - ONC RPC v2 over TCP with record marking (RFC 5531), XDR (RFC 4506): [`wire`], [`xdr`].
//! - Portmapper v2 GETPORT (RFC 1833) on port 111, to find the MOUNT v3 and NFS v3 TCP
//!   ports unless [`ClientOptions::nfs_port`] / [`ClientOptions::mount_port`] are given.
//! - MOUNT v3: MNT (root handle; the export must accept AUTH_SYS), UMNT (best effort on
//!   [`Nfs3Client::unmount`]), EXPORT ([`list_exports`], and to tell "no such export"
//!   from "not allowed").
//! - NFS v3 (RFC 1813) with AUTH_SYS (uid/gid from the options, machine name
//!   `rackvault`): NULL, GETATTR, LOOKUP, READ, READDIRPLUS, FSINFO. Reads are issued at
//!   min(rtmax, 1 MiB).
//!
//! We connect from an ordinary (unprivileged) source port. Servers that require a reserved
//! port (Linux knfsd's default `secure` export option, ganesha's `PrivilegedPort`) must be
//! configured with `insecure` / `PrivilegedPort = false` for the appliance; ganesha's
//! default allows it.
//!
//! ## Threading
//! Blocking `std::net::TcpStream`s. Each connection has one reader thread that parses reply
//! records and hands each to the caller waiting on its XID through a channel; callers write
//! whole call records under a per-connection mutex. Each connection allows
//! `max_in_flight` calls at once, and calls are spread round-robin over `connections`
//! connections. [`Nfs3Client`] is `Send + Sync` and cheap to clone (an `Arc` inside); any
//! number of threads may call it at once. Details: `conn.rs` (one connection) and
//! `client.rs` (pipelining, timeouts, reconnect and resend).
//!
//! ## Failures
//! A dropped connection, a server restart or a call without a reply for `io_timeout` makes
//! every call that was in flight on that connection be re-sent on a new one (all the
//! procedures used are idempotent). Refused connects back off (20 ms doubling to 1 s), and
//! so do connections that are accepted but die within a second (a half-started server, a
//! proxy in front of a dead one), so a restart never turns into a reconnect storm. After
//! `reconnect_deadline` the call fails with [`NfsError::ConnectionLost`]. A reply that is garbled or hostile
//! (record over 16 MiB, unknown XID, truncated XDR, lengths past the buffer, a READ with
//! more data than asked, absurd READDIRPLUS pages) fails with [`NfsError::Protocol`]; it
//! never panics and never allocates more than the bytes actually received (capped at
//! 16 MiB per reply). The decoders are fuzzed (`fuzz/`, not a workspace member).
//!
//! ## Invariants
//! - `read_many` returns `Ok` only when every byte of every buffer came from a READ reply
//!   for that offset; reading past end of file is [`NfsError::ShortRead`], never zeros.
//! - Every call in flight gets exactly one outcome: its reply, a re-send, or an error.
//!
//! No dependencies beyond the workspace's `thiserror` and `crossbeam-channel`: the XDR for
//! these few procedures is small enough to write by hand.

mod client;
mod conn;
mod error;
mod types;
pub mod wire;
pub mod xdr;

pub use client::{list_exports, ClientOptions, Nfs3Client, MACHINE_NAME, MAX_DIR_ENTRIES, READ_CAP};
pub use error::NfsError;
pub use types::{DirEntry, FileAttr, FileHandle, FileType, NfsStatus, MAX_FH_LEN};

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}
    #[test]
    fn client_is_send_sync() {
        assert_send_sync::<super::Nfs3Client>();
        assert_send_sync::<super::NfsError>();
    }
}
