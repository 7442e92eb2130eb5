//! [`NfsError`]: what went wrong, named by server and path, with what to do about it.

use std::io;
use std::time::Duration;

use crate::types::NfsStatus;

/// Errors of the NFSv3 client. `server` is `host` or `host:/export`; `path` is the
/// export-relative path when known (else a file handle). Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum NfsError {
    /// TCP connect (or name resolution) failed.
    #[error("cannot connect to NFS server {addr}: {source}; is the NFS server running? check the host, the port and any firewall between us")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },

    /// The portmapper answered but has no TCP registration of the program.
    #[error("NFS server {server}: the portmapper (rpcbind, port 111) has no {program} version 3 over TCP registered; enable NFSv3 over TCP on the server, or configure the NFS and MOUNT ports explicitly")]
    NotRegistered { server: String, program: &'static str },

    /// The export does not exist on the server.
    #[error("NFS server {server}: export {export} not found; the server exports: {}; check the export path", list_or_none(.available))]
    ExportNotFound { server: String, export: String, available: Vec<String> },

    /// MNT was refused for an export that exists.
    #[error("NFS server {server}: mounting export {export} was refused ({status}); check the export's client list and access type (this appliance must be allowed, read access at least)")]
    MountDenied { server: String, export: String, status: NfsStatus },

    /// The path does not exist (NFS3ERR_NOENT).
    #[error("NFS server {server}: {path}: no such file or directory; check the path, relative to the export")]
    NotFound { server: String, path: String },

    /// NFS3ERR_ACCES or NFS3ERR_PERM.
    #[error("NFS server {server}: {path}: permission denied ({status}); does the export allow root access (no root squash)? are the configured uid/gid allowed to read it?")]
    PermissionDenied { server: String, path: String, status: NfsStatus },

    /// NFS3ERR_STALE / NFS3ERR_BADHANDLE.
    #[error("NFS server {server}: {what}: stale file handle; the file was deleted or the export changed, restart the backup")]
    Stale { server: String, what: String },

    /// End of file before the requested bytes.
    #[error("NFS server {what}: short read at offset {offset}: expected {expected} bytes, the file ended after {got}; the file shrank while it was read, or the requested range is past its end")]
    ShortRead { what: String, offset: u64, expected: u64, got: u64 },

    /// Any other non-OK NFS status.
    #[error("NFS server {server}: {procedure} of {what} failed with {status}; check the server's log")]
    Server { server: String, procedure: &'static str, what: String, status: NfsStatus },

    /// The RPC layer refused the call (program not available, version mismatch, ...).
    #[error("NFS server {server}: {program} call refused: {detail}; is NFSv3 enabled on the server?")]
    Rpc { server: String, program: &'static str, detail: String },

    /// A reply that does not decode: garbled or hostile.
    #[error("NFS server {server}: invalid reply: {detail}; the server or something between us is misbehaving; check its version and the network path")]
    Protocol { server: String, detail: String },

    /// A one-shot call (portmapper, MOUNT) got no reply in time.
    #[error("NFS server {server}: no reply to {procedure} within {after:?}; the server is overloaded or unreachable, retry later")]
    Timeout { server: String, procedure: &'static str, after: Duration },

    /// Reconnecting failed until the reconnect deadline.
    #[error("NFS server {server}: connection lost and not re-established within {deadline:?}: {detail}; check that the server is up and reachable, then retry")]
    ConnectionLost { server: String, deadline: Duration, detail: String },

    /// A directory was given where a file is needed (NFS3ERR_ISDIR, or not a regular file).
    #[error("NFS server {server}: {path}: not a regular file; give the path of a disk file")]
    NotAFile { server: String, path: String },

    /// A file was given where a directory is needed (NFS3ERR_NOTDIR).
    #[error("NFS server {server}: {path}: not a directory; check the path")]
    NotADirectory { server: String, path: String },

    /// The server denied our AUTH_SYS credentials.
    #[error("NFS server {server}: authentication rejected: {detail}; the export must allow AUTH_SYS (sec=sys) for this client")]
    AuthRejected { server: String, detail: String },

    /// A path argument we refuse to send.
    #[error("{path}: invalid path: {detail}")]
    InvalidPath { path: String, detail: String },

    /// The client was unmounted.
    #[error("NFS server {server}: the client was unmounted; mount again")]
    Unmounted { server: String },
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "(nothing)".to_string()
    } else {
        v.join(", ")
    }
}

impl NfsError {
    /// True when retrying later may succeed without an operator changing anything: network
    /// failures, timeouts, a server that is restarting or temporarily busy.
    pub fn is_transient(&self) -> bool {
        match self {
            NfsError::Connect { .. }
            | NfsError::NotRegistered { .. }
            | NfsError::Timeout { .. }
            | NfsError::ConnectionLost { .. } => true,
            NfsError::Server { status, .. } => {
                matches!(*status, NfsStatus::JUKEBOX | NfsStatus::SERVERFAULT | NfsStatus::IO)
            }
            NfsError::Rpc { detail, .. } => detail.contains("SYSTEM_ERR"),
            _ => false,
        }
    }
}
