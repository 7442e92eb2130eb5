//! The wire format: ONC RPC record marking and messages (RFC 5531), AUTH_SYS, and the
//! arguments and replies of the procedures this crate uses (RFC 1813, RFC 1833).
//!
//! Everything here is a pure function over bytes, so the reply decoders can be fuzzed
//! (`fuzz/`) and unit-tested with hand-made hostile replies. Nothing in this module panics
//! or allocates more than the reply it is given could justify.
//!
//! ## Record marking (RFC 5531 §11)
//! Over TCP a message is a *record*: one or more fragments, each preceded by a 4-byte
//! big-endian header whose top bit marks the last fragment and whose low 31 bits are the
//! fragment length. We send every call as one fragment. We accept replies of any number of
//! fragments (at most [`MAX_FRAGMENTS`]) up to [`MAX_RECORD`] bytes in total.
//!
//! ## Call
//! `xid, CALL(0), rpcvers 2, prog, vers, proc, cred, verf, args...`; `cred` is AUTH_SYS
//! (flavor 1: stamp, machine name, uid, gid, no auxiliary gids) or AUTH_NONE, `verf` is
//! AUTH_NONE.
//!
//! ## Reply
//! `xid, REPLY(1), MSG_ACCEPTED(0), verf, accept_stat [, mismatch_info], results...` or
//! `xid, REPLY(1), MSG_DENIED(1), reject_stat, (mismatch_info | auth_stat)`.

use std::io::Read;

use crate::types::{FileAttr, FileHandle, FileType, NfsStatus, MAX_FH_LEN};
use crate::xdr::{Decoder, Encoder, XdrError};

/// Largest reply record we accept: a 1 MiB READ plus headers fits many times over; anything
/// larger is a garbled stream or a hostile server.
pub const MAX_RECORD: usize = 16 << 20;
/// Most fragments in one record; real servers send one.
pub const MAX_FRAGMENTS: usize = 4096;
const LAST_FRAGMENT: u32 = 0x8000_0000;

pub const PMAP_PROG: u32 = 100_000;
pub const PMAP_VERS: u32 = 2;
pub const PMAPPROC_GETPORT: u32 = 3;
pub const IPPROTO_TCP: u32 = 6;

pub const MOUNT_PROG: u32 = 100_005;
pub const MOUNT_VERS: u32 = 3;
pub const MOUNTPROC3_MNT: u32 = 1;
pub const MOUNTPROC3_UMNT: u32 = 3;
pub const MOUNTPROC3_EXPORT: u32 = 5;
/// `MNTPATHLEN`
pub const MAX_MOUNT_PATH: usize = 1024;

pub const NFS_PROG: u32 = 100_003;
pub const NFS_VERS: u32 = 3;
pub const NFSPROC3_NULL: u32 = 0;
pub const NFSPROC3_GETATTR: u32 = 1;
pub const NFSPROC3_LOOKUP: u32 = 3;
pub const NFSPROC3_READ: u32 = 6;
pub const NFSPROC3_READDIRPLUS: u32 = 17;
pub const NFSPROC3_FSINFO: u32 = 19;

pub const AUTH_NONE: u32 = 0;
pub const AUTH_SYS: u32 = 1;

/// Longest name we accept in a directory entry (Linux NAME_MAX is 255; leave room).
pub const MAX_NAME: usize = 4096;

/// Name of an NFS procedure, for messages.
pub fn nfs_proc_name(proc_: u32) -> &'static str {
    match proc_ {
        NFSPROC3_NULL => "NULL",
        NFSPROC3_GETATTR => "GETATTR",
        NFSPROC3_LOOKUP => "LOOKUP",
        NFSPROC3_READ => "READ",
        NFSPROC3_READDIRPLUS => "READDIRPLUS",
        NFSPROC3_FSINFO => "FSINFO",
        _ => "NFS procedure",
    }
}

// ---- record marking -------------------------------------------------------------------------

/// Why a record could not be read.
#[derive(Debug)]
pub enum RecordError {
    /// The connection failed or closed (EOF is `UnexpectedEof`).
    Io(std::io::Error),
    /// The byte stream is not valid record marking.
    Bad(String),
}

/// Read one whole record (all fragments). The buffer grows only as bytes actually arrive, so
/// a lying length costs at most what the peer really sends, and never more than `max`.
pub fn read_record<R: Read>(r: &mut R, max: usize) -> Result<Vec<u8>, RecordError> {
    let mut rec = Vec::new();
    for _ in 0..MAX_FRAGMENTS {
        let mut hdr = [0u8; 4];
        r.read_exact(&mut hdr).map_err(RecordError::Io)?;
        let h = u32::from_be_bytes(hdr);
        let len = (h & !LAST_FRAGMENT) as usize;
        if len > max.saturating_sub(rec.len()) {
            return Err(RecordError::Bad(format!(
                "record fragment of {len} bytes would make the reply larger than the {max}-byte limit"
            )));
        }
        // Reserve up front for the common case (one fragment, a READ reply), capped so a
        // lie cannot make us allocate much before the bytes are there.
        rec.reserve(len.min(2 << 20));
        let got = r.by_ref().take(len as u64).read_to_end(&mut rec).map_err(RecordError::Io)?;
        if got != len {
            return Err(RecordError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a reply",
            )));
        }
        if h & LAST_FRAGMENT != 0 {
            return Ok(rec);
        }
    }
    Err(RecordError::Bad(format!("reply record has more than {MAX_FRAGMENTS} fragments")))
}

// ---- calls ----------------------------------------------------------------------------------

/// AUTH_SYS credential followed by an AUTH_NONE verifier, ready to paste into calls.
pub fn auth_sys(uid: u32, gid: u32, machine: &str) -> Vec<u8> {
    let mut body = Encoder::new();
    body.u32(0).opaque(&machine.as_bytes()[..machine.len().min(255)]).u32(uid).u32(gid).u32(0);
    let mut e = Encoder::new();
    e.u32(AUTH_SYS).opaque(&body.buf).u32(AUTH_NONE).u32(0);
    e.buf
}

/// AUTH_NONE credential and verifier.
pub fn auth_none() -> Vec<u8> {
    vec![0u8; 16]
}

/// A complete call record (record mark included): header, `auth` (credential and
/// verifier), `args`.
pub fn encode_call(xid: u32, prog: u32, vers: u32, proc_: u32, auth: &[u8], args: &[u8]) -> Vec<u8> {
    let len = 24 + auth.len() + args.len();
    let mut out = Vec::with_capacity(4 + len);
    // Calls are a few hundred bytes; the cast cannot truncate.
    out.extend_from_slice(&(LAST_FRAGMENT | len as u32).to_be_bytes());
    for v in [xid, 0, 2, prog, vers, proc_] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(auth);
    out.extend_from_slice(args);
    out
}

pub fn getport_args(prog: u32, vers: u32) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u32(prog).u32(vers).u32(IPPROTO_TCP).u32(0);
    e.buf
}

pub fn dirpath_args(path: &str) -> Vec<u8> {
    let mut e = Encoder::new();
    e.opaque(path.as_bytes());
    e.buf
}

pub fn fh_args(fh: &FileHandle) -> Vec<u8> {
    let mut e = Encoder::new();
    e.opaque(fh.as_bytes());
    e.buf
}

pub fn lookup_args(dir: &FileHandle, name: &str) -> Vec<u8> {
    let mut e = Encoder::new();
    e.opaque(dir.as_bytes()).opaque(name.as_bytes());
    e.buf
}

pub fn read_args(fh: &FileHandle, offset: u64, count: u32) -> Vec<u8> {
    let mut e = Encoder::new();
    e.opaque(fh.as_bytes()).u64(offset).u32(count);
    e.buf
}

pub fn readdirplus_args(dir: &FileHandle, cookie: u64, verf: [u8; 8], dircount: u32, maxcount: u32) -> Vec<u8> {
    let mut e = Encoder::new();
    e.opaque(dir.as_bytes()).u64(cookie).fixed(&verf).u32(dircount).u32(maxcount);
    e.buf
}

// ---- RPC reply header -----------------------------------------------------------------------

/// What the RPC layer said about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcOutcome {
    /// Accepted and executed; the procedure's results start at this byte offset.
    Success { body: usize },
    /// MSG_DENIED / AUTH_ERROR with this `auth_stat`.
    AuthError(u32),
    /// MSG_DENIED / RPC_MISMATCH: the server speaks RPC versions `low..=high`.
    RpcMismatch(u32, u32),
    /// PROG_UNAVAIL
    ProgUnavail,
    /// PROG_MISMATCH: the server has program versions `low..=high`.
    ProgMismatch(u32, u32),
    /// PROC_UNAVAIL
    ProcUnavail,
    /// GARBAGE_ARGS
    GarbageArgs,
    /// SYSTEM_ERR
    SystemErr,
}

/// The XID of a reply record (first word), if it has one.
pub fn reply_xid(rec: &[u8]) -> Option<u32> {
    rec.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Decode the RPC header of a reply record.
pub fn decode_rpc_reply(rec: &[u8]) -> Result<(u32, RpcOutcome), XdrError> {
    let mut d = Decoder::new(rec);
    let xid = d.u32("xid")?;
    let mtype = d.u32("msg_type")?;
    if mtype != 1 {
        return Err(XdrError(format!("expected an RPC REPLY, got msg_type {mtype}")));
    }
    let out = match d.u32("reply_stat")? {
        0 => {
            let _flavor = d.u32("verifier flavor")?;
            d.opaque(400, "verifier")?;
            match d.u32("accept_stat")? {
                0 => RpcOutcome::Success { body: d.position() },
                1 => RpcOutcome::ProgUnavail,
                2 => RpcOutcome::ProgMismatch(d.u32("low version")?, d.u32("high version")?),
                3 => RpcOutcome::ProcUnavail,
                4 => RpcOutcome::GarbageArgs,
                5 => RpcOutcome::SystemErr,
                v => return Err(XdrError(format!("unknown accept_stat {v}"))),
            }
        }
        1 => match d.u32("reject_stat")? {
            0 => RpcOutcome::RpcMismatch(d.u32("low version")?, d.u32("high version")?),
            1 => RpcOutcome::AuthError(d.u32("auth_stat")?),
            v => return Err(XdrError(format!("unknown reject_stat {v}"))),
        },
        v => return Err(XdrError(format!("unknown reply_stat {v}"))),
    };
    Ok((xid, out))
}

/// Name of an RPC `auth_stat`, for messages.
pub fn auth_stat_name(v: u32) -> &'static str {
    match v {
        1 => "AUTH_BADCRED (bogus credentials)",
        2 => "AUTH_REJECTEDCRED (client must begin a new session)",
        3 => "AUTH_BADVERF (bogus verifier)",
        4 => "AUTH_REJECTEDVERF",
        5 => "AUTH_TOOWEAK (the export requires a stronger flavor than AUTH_SYS, e.g. Kerberos)",
        _ => "unknown auth_stat",
    }
}

// ---- procedure results ----------------------------------------------------------------------

/// A procedure either succeeded with `T` or returned a non-OK status.
pub type Outcome<T> = Result<T, NfsStatus>;

pub fn decode_getport(body: &[u8]) -> Result<u32, XdrError> {
    Decoder::new(body).u32("port")
}

fn decode_fh(d: &mut Decoder<'_>, what: &str) -> Result<FileHandle, XdrError> {
    let b = d.opaque(MAX_FH_LEN, what)?;
    FileHandle::from_bytes(b).ok_or_else(|| XdrError(format!("{what}: file handle too long")))
}

/// MNT: the root handle and the accepted auth flavors.
pub fn decode_mnt(body: &[u8]) -> Result<Outcome<(FileHandle, Vec<u32>)>, XdrError> {
    let mut d = Decoder::new(body);
    let st = d.u32("mountstat3")?;
    if st != 0 {
        return Ok(Err(NfsStatus(st)));
    }
    let fh = decode_fh(&mut d, "mount file handle")?;
    let n = d.u32("auth flavor count")? as usize;
    if n > d.remaining() / 4 {
        return Err(XdrError(format!("{n} auth flavors claimed, reply too short")));
    }
    let flavors = (0..n).map(|_| d.u32("auth flavor")).collect::<Result<Vec<_>, _>>()?;
    Ok(Ok((fh, flavors)))
}

/// EXPORT: the exported paths (the client group lists are skipped).
pub fn decode_exports(body: &[u8]) -> Result<Vec<String>, XdrError> {
    let mut d = Decoder::new(body);
    let mut out = Vec::new();
    // Each iteration consumes at least 12 bytes, so the loop is bounded by the reply size.
    while d.bool("exports follows")? {
        let dir = d.opaque(MAX_MOUNT_PATH, "export path")?;
        out.push(String::from_utf8_lossy(dir).into_owned());
        while d.bool("groups follows")? {
            d.opaque(255, "export group")?;
        }
    }
    Ok(out)
}

pub fn decode_fattr(d: &mut Decoder<'_>) -> Result<FileAttr, XdrError> {
    let t = d.u32("ftype")?;
    let ftype = FileType::from_wire(t).ok_or_else(|| XdrError(format!("unknown file type {t}")))?;
    let mode = d.u32("mode")?;
    let nlink = d.u32("nlink")?;
    let uid = d.u32("uid")?;
    let gid = d.u32("gid")?;
    let size = d.u64("size")?;
    let used = d.u64("used")?;
    d.skip(8, "rdev")?;
    let fsid = d.u64("fsid")?;
    let fileid = d.u64("fileid")?;
    d.skip(8, "atime")?;
    let mtime = (d.u32("mtime")?, d.u32("mtime")?);
    let ctime = (d.u32("ctime")?, d.u32("ctime")?);
    Ok(FileAttr { ftype, mode, nlink, uid, gid, size, used, fsid, fileid, mtime, ctime })
}

pub fn decode_post_op_attr(d: &mut Decoder<'_>) -> Result<Option<FileAttr>, XdrError> {
    if d.bool("attributes_follow")? {
        decode_fattr(d).map(Some)
    } else {
        Ok(None)
    }
}

fn status(d: &mut Decoder<'_>) -> Result<NfsStatus, XdrError> {
    d.u32("nfsstat3").map(NfsStatus)
}

pub fn decode_getattr(body: &[u8]) -> Result<Outcome<FileAttr>, XdrError> {
    let mut d = Decoder::new(body);
    let st = status(&mut d)?;
    if st != NfsStatus::OK {
        return Ok(Err(st));
    }
    decode_fattr(&mut d).map(Ok)
}

/// LOOKUP: the object's handle and (optional) attributes.
pub fn decode_lookup(body: &[u8]) -> Result<Outcome<(FileHandle, Option<FileAttr>)>, XdrError> {
    let mut d = Decoder::new(body);
    let st = status(&mut d)?;
    if st != NfsStatus::OK {
        return Ok(Err(st));
    }
    let fh = decode_fh(&mut d, "object handle")?;
    let attr = decode_post_op_attr(&mut d)?;
    Ok(Ok((fh, attr)))
}

/// A successful READ.
#[derive(Debug)]
pub struct ReadReply<'a> {
    pub data: &'a [u8],
    pub eof: bool,
    pub attr: Option<FileAttr>,
}

/// READ: refuses a reply carrying more than `asked` bytes or whose `count` disagrees with
/// the data length.
pub fn decode_read(body: &[u8], asked: u32) -> Result<Outcome<ReadReply<'_>>, XdrError> {
    let mut d = Decoder::new(body);
    let st = status(&mut d)?;
    if st != NfsStatus::OK {
        return Ok(Err(st));
    }
    let attr = decode_post_op_attr(&mut d)?;
    let count = d.u32("count")?;
    let eof = d.bool("eof")?;
    let data = d.opaque(asked as usize, "READ data")?;
    if data.len() != count as usize {
        return Err(XdrError(format!("READ count {count} differs from the {} data bytes", data.len())));
    }
    Ok(Ok(ReadReply { data, eof, attr }))
}

/// One READDIRPLUS entry as received.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub fileid: u64,
    pub name: Vec<u8>,
    pub cookie: u64,
    pub attr: Option<FileAttr>,
    pub handle: Option<FileHandle>,
}

/// One READDIRPLUS page.
#[derive(Debug, Clone)]
pub struct DirPage {
    pub cookieverf: [u8; 8],
    pub entries: Vec<RawEntry>,
    pub eof: bool,
}

/// READDIRPLUS: at most `max_entries` entries per page are accepted.
pub fn decode_readdirplus(body: &[u8], max_entries: usize) -> Result<Outcome<DirPage>, XdrError> {
    let mut d = Decoder::new(body);
    let st = status(&mut d)?;
    if st != NfsStatus::OK {
        return Ok(Err(st));
    }
    decode_post_op_attr(&mut d)?;
    let mut cookieverf = [0u8; 8];
    cookieverf.copy_from_slice(d.fixed(8, "cookieverf")?);
    let mut entries = Vec::new();
    while d.bool("entry follows")? {
        if entries.len() >= max_entries {
            return Err(XdrError(format!("READDIRPLUS page has more than {max_entries} entries")));
        }
        let fileid = d.u64("fileid")?;
        let name = d.opaque(MAX_NAME, "entry name")?.to_vec();
        let cookie = d.u64("cookie")?;
        let attr = decode_post_op_attr(&mut d)?;
        let handle = if d.bool("handle follows")? { Some(decode_fh(&mut d, "entry handle")?) } else { None };
        entries.push(RawEntry { fileid, name, cookie, attr, handle });
    }
    let eof = d.bool("eof")?;
    Ok(Ok(DirPage { cookieverf, entries, eof }))
}

/// The parts of FSINFO we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsInfo {
    pub rtmax: u32,
    pub rtpref: u32,
    pub rtmult: u32,
    pub dtpref: u32,
    pub maxfilesize: u64,
}

pub fn decode_fsinfo(body: &[u8]) -> Result<Outcome<FsInfo>, XdrError> {
    let mut d = Decoder::new(body);
    let st = status(&mut d)?;
    if st != NfsStatus::OK {
        return Ok(Err(st));
    }
    decode_post_op_attr(&mut d)?;
    let rtmax = d.u32("rtmax")?;
    let rtpref = d.u32("rtpref")?;
    let rtmult = d.u32("rtmult")?;
    d.skip(12, "wtmax/wtpref/wtmult")?;
    let dtpref = d.u32("dtpref")?;
    let maxfilesize = d.u64("maxfilesize")?;
    Ok(Ok(FsInfo { rtmax, rtpref, rtmult, dtpref, maxfilesize }))
}

/// Run every decoder over `data` (the fuzz target's body). Must never panic.
pub fn fuzz_all_decoders(data: &[u8]) {
    let _ = read_record(&mut std::io::Cursor::new(data), 1 << 20);
    let _ = decode_rpc_reply(data);
    let _ = decode_getport(data);
    let _ = decode_mnt(data);
    let _ = decode_exports(data);
    let _ = decode_getattr(data);
    let _ = decode_lookup(data);
    let asked = data.first().map_or(0, |b| u32::from(*b) << 8);
    let _ = decode_read(data, asked);
    let _ = decode_readdirplus(data, 64);
    let _ = decode_fsinfo(data);
    // A whole reply record as the client sees it: header, then the READ results.
    if let Ok((_, RpcOutcome::Success { body })) = decode_rpc_reply(data) {
        let _ = decode_read(&data[body..], asked);
        let _ = decode_readdirplus(&data[body..], 1024);
    }
}

#[cfg(test)]
mod tests;
